/* fastserve/scheduler.h — the serving engine's scheduler plugin vtable
 * (since ABI 1.2).
 *
 * The serving engine batches at the iteration level (Orca's continuous
 * batching): each iteration runs one step for a set of sequences, each
 * adding one token (decode) or a chunk of its prompt (chunked prefill), and
 * between iterations the set may change. The scheduler decides that set:
 * which live requests run in the next iteration, how many tokens each
 * computes, and which resident ones give their KV cache blocks back
 * (preemption: the engine swaps them to host memory or drops them to be
 * recomputed). It learns of arrivals and departures and is told what each
 * iteration cost, so it can keep queues and estimates of its own.
 *
 * A scheduler never reads a clock or touches a sequence's tokens: every
 * call carries `now` (the engine's monotonic seconds) and the numbers it
 * needs, so the same plugin runs on a simulated clock in a test as in a
 * server. Calls come from the engine's thread only, one at a time.
 *
 * The engine checks every plan (budgets, states, indexes) and trims one
 * that breaks them, logging the scheduler's name: a broken scheduler costs
 * throughput, never correctness. */
#ifndef FASTSERVE_SCHEDULER_H
#define FASTSERVE_SCHEDULER_H

#include "fastserve/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where a request's KV cache is. */
typedef enum fs_sched_state {
    FS_SCHED_WAITING = 0,  /* holds no blocks: not started yet, or preempted to be recomputed */
    FS_SCHED_RESIDENT = 1, /* its blocks are in the pool: it ran before and can run on */
    FS_SCHED_SWAPPED = 2,  /* its blocks are in the host swap pool: running means swapping them in */
} fs_sched_state;

/* One live request as the scheduler sees it. The engine fills the first
 * part before every call; `level` and `data` are the scheduler's. */
typedef struct fs_sched_seq {
    uint64_t id;          /* the request's id */
    double arrival;       /* when it was submitted (engine seconds) */
    double last_run;      /* when its last iteration ended (its arrival before it ran) */
    int32_t state;        /* fs_sched_state */
    size_t prompt_tokens;
    size_t generated;     /* tokens generated so far */
    size_t max_tokens;    /* tokens it may generate in all */
    size_t computed;      /* tokens whose keys and values are cached (0 when WAITING) */
    size_t tokens_next;   /* the most tokens its next iteration can compute: 1 when decoding, else the
                             rest of its prompt (or of its recompute) up to the prefill chunk */
    size_t blocks_next;   /* free blocks its next iteration takes at most with tokens_next tokens,
                             swapping in included (0 for a resident sequence with room in its last block) */
    size_t blocks_freed;  /* blocks preempting it returns to the pool (RESIDENT; blocks it shares stay) */
    int32_t level;        /* the scheduler's: its queue, 0 = highest priority (the engine's stats count them) */
    void *data;           /* the scheduler's: seq_bytes() bytes, zeroed at arrival, freed after finish */
} fs_sched_seq;

/* What the next iteration may use. */
typedef struct fs_sched_budget {
    uint32_t struct_size;
    size_t max_seqs;    /* sequences in one iteration ([serve] max_running) */
    size_t max_tokens;  /* tokens one iteration computes over all sequences ([serve] max_batch_tokens) */
    size_t free_blocks; /* blocks free in the pool now */
} fs_sched_budget;

/* The scheduler's answer: indexes into the seqs array of the call. The
 * arrays have room for n entries each (n = the number of sequences).
 *   - run[i] runs with run_tokens[i] tokens, 1 <= run_tokens[i] <=
 *     tokens_next; the sum is at most max_tokens, n_run at most max_seqs;
 *   - preempt[j] is a RESIDENT sequence not in run: its blocks go back
 *     before the iteration (swapped out, or dropped to be recomputed);
 *   - the blocks_next of the sequences run are at most free_blocks plus the
 *     blocks_freed of those preempted. */
typedef struct fs_sched_plan {
    uint32_t struct_size;
    size_t *run, *run_tokens;
    size_t n_run;
    size_t *preempt;
    size_t n_preempt;
} fs_sched_plan;

/* What an iteration cost, reported after it ran. */
typedef struct fs_sched_iteration {
    uint32_t struct_size;
    double start;              /* engine seconds */
    double seconds;            /* its duration */
    fs_sched_seq *const *ran;  /* (n_ran) the sequences it ran (finished ones included, before finish()) */
    const size_t *tokens;      /* (n_ran) the tokens each computed */
    size_t n_ran;
    size_t total_tokens;
} fs_sched_iteration;

/* Fixed at create. */
typedef struct fs_scheduler_config {
    uint32_t struct_size;
    size_t prefill_chunk; /* prompt tokens a sequence computes per iteration at most */
    size_t max_seqs;      /* sequences per iteration */
    size_t max_tokens;    /* tokens per iteration */
    size_t kv_block;      /* tokens per KV block */
    size_t max_levels;    /* the most queues the engine reports (a scheduler may use fewer) */
} fs_scheduler_config;

typedef struct fs_scheduler_vtable {
    uint32_t struct_size;

    int (*create)(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_scheduler_config *cfg,
                  fs_error *err);
    void (*destroy)(void *self); /* accepts NULL */

    /* Bytes of the scheduler's own state per request (fs_sched_seq.data). */
    size_t (*seq_bytes)(void *self);
    /* Queues (priority levels) it keeps, 1..cfg.max_levels: the engine's
     * stats count the requests in each (fs_sched_seq.level). */
    size_t (*levels)(void *self);

    /* A request arrived (state WAITING): place it (set level, data). */
    void (*arrive)(void *self, fs_sched_seq *seq, double now);
    /* The next iteration's plan over the n live requests (WAITING, RESIDENT
     * or SWAPPED, in arrival order). An empty plan with requests left is
     * allowed (the engine waits for an arrival or a departure). */
    int (*schedule)(void *self, double now, fs_sched_seq *const *seqs, size_t n, const fs_sched_budget *budget,
                    fs_sched_plan *plan, fs_error *err);
    /* Accounting after each iteration. */
    void (*account)(void *self, const fs_sched_iteration *it);
    /* A request left (finished, cancelled or failed); its data is freed after. */
    void (*finish)(void *self, fs_sched_seq *seq, double now);
} fs_scheduler_vtable;

#ifdef __cplusplus
}
#endif
#endif
