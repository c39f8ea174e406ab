/* engine_internal.h — the serving engine's state, for serve/engine*.c only:
 *
 *   engine.c         the public functions (engine.h), the thread, the inbox
 *                    other threads write into, drain, reload, stats;
 *   engine_iter.c    one iteration: the scheduler's plan, preemption, the
 *                    ragged step per weights generation, sampling, events;
 *   engine_blocks.c  a sequence's blocks: prefix sharing, allocation,
 *                    copy-on-write, swapping, recomputation, release.
 *
 * Everything below `inbox` belongs to the engine thread (or, inline, to
 * the caller of fs_engine_run_until_idle): no lock. */
#ifndef FS_ENGINE_INTERNAL_H
#define FS_ENGINE_INTERNAL_H

#include "core/crash.h"
#include <pthread.h>

#include "core/rng.h"
#include "fastserve/scheduler.h"
#include "model/batch.h"
#include "model/device_batch.h"
#include "model/kv_pool.h"
#include "serve/engine.h"

/* Table entries besides pool blocks: a block the plugins let go, and a
 * block in swap slot s (SWAPPED_SLOT(s) <= -2). */
#define ENTRY_RELEASED FS_PAGED_NO_BLOCK
#define SWAPPED_SLOT(s) (-2 - (int32_t)(s))
#define SLOT_OF(entry) ((int32_t)(-2 - (entry)))

/* One generation of weights: the model a request runs on from its first
 * step to its last (fs_engine_reload adds one; a generation goes when no
 * request uses it and a newer one is current). */
typedef struct weights_gen {
    fs_session *session; /* owned (NULL for the creator's, which is borrowed) */
    const fs_model *model;
    fs_step_weights *sw; /* its projections as the step reads them ([generate] weights) */
    fs_device_batch *db; /* on a device: its weights there and the step (sw is then NULL) */
    uint64_t seed;       /* the prefix-hash chain's start: blocks of other weights never match */
    size_t users;        /* live requests bound to it */
    struct weights_gen *next;
} weights_gen;

typedef struct eseq {
    uint64_t id;
    fs_request_params p;
    fs_request_sink sink;
    void *arg;
    int32_t *tokens;       /* the prompt, then every generated token */
    size_t n_tokens, cap;
    size_t n_prompt, generated;
    size_t computed;       /* tokens whose keys and values are in its blocks */
    int32_t *table;        /* block table: pool block, ENTRY_RELEASED or SWAPPED_SLOT */
    size_t n_table, table_cap; /* entries [0, n_table) are set */
    size_t chained;        /* full blocks whose hash is in `chain` (prefix sharing) */
    uint64_t chain;
    size_t cached_prompt;  /* prompt tokens whose keys and values came from shared blocks */
    size_t prompt_lp;      /* the next prompt token whose log-probabilities are to be sent
                            * (prompt_logprobs: from 1; n_prompt once all are, and without) */
    fs_rng rng;
    weights_gen *w;        /* bound at its first step */
    fs_sched_seq view;     /* what the scheduler sees */
    int started;           /* counted out of the waiting queue */
    int cancel;            /* 0, or the fs_finish_reason it ends with at the next iteration (fs_engine_end) */
    double t_submit, t_last_token;
} eseq;

/* How a sequence that ran came out of the iteration. */
typedef struct eng_outcome {
    fs_finish_reason reason; /* NONE: it goes on */
    int sent;                /* its final event went out with its last token */
    const char *error;
} eng_outcome;

typedef struct engine_counters {
    uint64_t prefix_hits, prefix_lookups, tokens_in, tokens_out, preemptions, swaps_out, swaps_in, recomputes;
    uint64_t prompt_computed;
    uint64_t finished[6], iterations;
    fs_engine_histogram ttft, itl, e2e, iteration;
} engine_counters;

struct fs_engine {
    fs_session *s; /* the creator's: configuration, plugins, the first weights */
    fs_backend_handle *bk;   /* the device the steps run on, or NULL: the CPU's own kernels */
    fs_backend_handle bk_open;
    fs_engine_config cfg;
    size_t max_tokens_step; /* [serve] max_batch_tokens, or prefill_chunk + max_running */
    int inline_mode;
    int threads;
    int adaptive;          /* [run] threads = 0: the count is looked at again each iteration (core/threads.h) */

    /* ---- shared with other threads, under mu ---- */
    pthread_mutex_t mu;
    pthread_cond_t wake;  /* the engine thread waits for work */
    pthread_cond_t quiet; /* drain and reload wait for the engine */
    eseq **inbox;
    size_t n_inbox, cap_inbox;
    uint64_t *cancels;
    fs_finish_reason *cancel_why; /* (cap_cancels) beside cancels */
    size_t n_cancels, cap_cancels;
    weights_gen *reload;  /* to be swapped in at the next iteration */
    uint64_t reloads_done;
    uint64_t next_id;
    size_t waiting;       /* submitted, not started: what max_queue bounds */
    size_t live_count;    /* submitted and not finished */
    int draining, stop;
    int at_rest;          /* the engine thread found nothing to do and published its stats */
    double drain_deadline;
    fs_engine_stats shown; /* what fs_engine_stats_get returns, refreshed each iteration */
    pthread_t thread;
    int has_thread;

    /* ---- the engine thread's ---- */
    eseq **live; /* arrival order */
    size_t n_live, cap_live;
    weights_gen *gens, *current;
    uint64_t n_gens;
    fs_kv_pool *pool;
    fs_batch *batch;
    const fs_scheduler_vtable *svt; /* called through SCHED_CALL */
    void *sself;
    fs_plugin_ctx sctx;
    size_t levels, sched_bytes;
    /* per live request, grown with them (eng_grow) */
    size_t cap_live_arrays;
    fs_sched_seq **views;
    size_t *run, *run_tokens, *preempt;
    fs_batch_seq *bseq;
    eseq **ran;
    const float **rows;     /* a sequence's first row of logits in the step, or NULL */
    size_t *n_rows;         /* its rows: 1 (its next token's), or one per new position (prompt logprobs) */
    eng_outcome *out;
    uint8_t *mark;
    float *logits, *work;   /* (max_running + prompt_rows_max, V), 2 V */
    size_t prompt_rows_max; /* rows of logits for prompt positions one iteration computes */
    size_t prompt_rows;     /* ... and those this iteration's plan has taken so far */
    uint8_t *keep;
    size_t keep_cap;
    size_t kv_max_blocks;   /* bounded caches: blocks a sequence holds between steps; 0 = all */
    engine_counters c;
    int empty_plans;
};

/* s still owes prompt log-probabilities: its step wants the logits of
 * every new position. */
static inline int eng_wants_prompt_rows(const eseq *s) { return s->prompt_lp < s->n_prompt; }

/* engine_blocks.c */
size_t eng_blocks_for(const fs_engine *e, size_t tokens);
/* Pool blocks of s that preempting it would free (those it alone holds). */
size_t eng_blocks_own(const fs_engine *e, const eseq *s);
/* Free blocks s's next step takes at most with `tokens` new tokens. */
size_t eng_blocks_next(const fs_engine *e, const eseq *s, size_t tokens);
/* A fresh sequence: its full blocks found shared, as far as they go. */
void eng_prefix_lookup(fs_engine *e, eseq *s);
/* Blocks for positions [computed, computed + tokens), private where the
 * step writes. FS_ERR_BUSY when the pool has too few. */
int eng_blocks_place(fs_engine *e, eseq *s, size_t tokens, fs_error *err);
/* After a step: full blocks published, released ones freed (bounded caches). */
int eng_blocks_settle(fs_engine *e, eseq *s, fs_error *err);
/* Preemption: the blocks only s holds go to the swap area (returns 1), or,
 * when it is full or off, every block goes and s will be recomputed (0). */
int eng_blocks_evict(fs_engine *e, eseq *s);
/* A swapped sequence's blocks back into the pool; FS_ERR_BUSY when it is full. */
int eng_blocks_swap_in(fs_engine *e, eseq *s, fs_error *err);
/* Every block and slot of s back (finished or cancelled). */
void eng_blocks_free(fs_engine *e, eseq *s);
/* Blocks and swap slots in use, for the stats. */
void eng_blocks_count(const fs_engine *e, size_t *used, size_t *swap_used);

/* engine_iter.c */
/* One iteration; *idle set when there was nothing to run. */
int eng_iteration(fs_engine *e, int *idle, fs_error *err);
/* Ends s with `reason` (its final event, its blocks back) and drops it from live. */
void eng_finish(fs_engine *e, eseq *s, fs_finish_reason reason, const char *error);
void eng_histogram_add(fs_engine_histogram *h, double seconds);

/* engine.c */
/* Room in the per-request arrays for n live requests. */
int eng_grow(fs_engine *e, size_t n);
/* Takes what other threads left in the inbox: arrivals, cancellations,
 * a reload, drain's deadline. */
void eng_take_inbox(fs_engine *e);
void eng_publish_stats(fs_engine *e);
void eng_gen_release(fs_engine *e, weights_gen *w);

/* A call through the scheduler plugin's vtable, named if it crashes
 * (core/crash.h). */
#define SCHED_CALL(e, call, statement) \
    FS_PLUGIN_CALL("scheduler", (e)->s->scheduler.plugin->desc->name, call, -1, statement)

#endif
