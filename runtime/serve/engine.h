/* engine.h — the serving engine: many requests over one loaded model,
 * batched at the iteration level (continuous batching).
 *
 * This header is the contract between the engine (serve/engine*.c: the
 * step loop, the paged KV block pool, swapping, prefix sharing and the
 * scheduler plugin) and its front ends: the HTTP server (serve/http*.c,
 * --mode serve) and --mode generate (a one-request use of the same
 * engine, so there is one decode path).
 *
 * Threads: the engine owns one thread that alone touches the model, the
 * KV pool and every sequence. Every function here except
 * fs_engine_run_until_idle is safe from any thread; sinks are called on
 * the engine thread and must not block (they copy what they need and
 * return: an HTTP front end queues the event for its connection).
 *
 * Tokens only: text (tokenising prompts, detokenising, UTF-8 assembly,
 * stop strings, chat templates) is the front end's. A front end that finds
 * a stop string ends the request with fs_engine_end(..., FS_FINISH_STOP). */
#ifndef FS_SERVE_ENGINE_H
#define FS_SERVE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "model/sampler.h"
#include "session/session.h"

typedef struct fs_engine fs_engine;

/* The [serve] keys the engine reads (the front end reads its own). */
typedef struct fs_engine_config {
    uint32_t struct_size;
    size_t kv_block;        /* tokens per KV block ([serve] kv_block) */
    size_t kv_cache_mb;     /* the block pool, all layers ([serve] kv_cache_mb) */
    size_t swap_mb;         /* host swap pool for preempted sequences; 0 = recompute only */
    size_t prefill_chunk;   /* prompt tokens one sequence adds per iteration */
    size_t max_running;     /* sequences in the running batch */
    size_t max_queue;       /* waiting requests before submit refuses (FS_ERR_BUSY) */
    size_t max_batch_tokens;/* tokens one iteration computes, all sequences (0 = automatic) */
    int prefix_sharing;     /* share full prompt blocks with equal content */
    int threads;            /* compute threads of the engine thread (0 = the process's) */
    const char *scheduler;  /* [serve] scheduler plugin name: "fcfs", "mlfq", ... (NULL or the graph's) */
    /* Added with the engine: the pool and the swap area in blocks, for
     * pools below a MiB (tests, tools); 0 = from kv_cache_mb / swap_mb. */
    size_t kv_blocks;
    size_t swap_blocks;
    int weights;            /* FS_WEIGHTS_* ([generate] weights): the format the projections are read in */
    /* Added with serving on a device: 1 runs the steps where the session's
     * [run] device and [backend] point (model/device_batch.h; --mode serve
     * and generate set it); 0 on the CPU whatever they say (the sample a
     * training run takes, whose model may hold the device). */
    int on_device;
} fs_engine_config;

/* Why a request ended. */
typedef enum fs_finish_reason {
    FS_FINISH_NONE = 0,      /* not finished (a token event) */
    FS_FINISH_LENGTH = 1,    /* max_tokens reached, or the context of an unbounded cache */
    FS_FINISH_STOP = 2,      /* the end-of-text token */
    FS_FINISH_CANCELLED = 3, /* fs_engine_cancel (client gone, timeout) */
    FS_FINISH_ERROR = 4,     /* the engine failed the request: message in the event */
    FS_FINISH_SHUTDOWN = 5,  /* the grace period of fs_engine_drain ran out */
} fs_finish_reason;

#define FS_ENGINE_MAX_LOGPROBS 5

/* One event of a request, in order: with prompt_logprobs, one prompt event
 * per prompt token from the second; then zero or more tokens, then exactly
 * one final event (finish != FS_FINISH_NONE, token -1 unless the final
 * event also carries the last token). FS_FINISH_LENGTH comes with the last
 * token; FS_FINISH_STOP comes alone: the end-of-text token is neither sent
 * nor counted in completion_tokens. */
typedef struct fs_request_event {
    uint64_t id;
    int32_t token;              /* the new token, or -1 */
    float logprob;              /* log p(token) under the request's sampling distribution's base (temperature 1);
                                 * 0 unless the request asked (logprobs, token_logprobs or a prompt event) */
    size_t n_top;               /* top alternatives filled (the request's logprobs) */
    int32_t top_token[FS_ENGINE_MAX_LOGPROBS];
    float top_logprob[FS_ENGINE_MAX_LOGPROBS];
    fs_finish_reason finish;
    size_t prompt_tokens, completion_tokens; /* usage so far */
    size_t cached_prompt_tokens;             /* prompt tokens whose KV came from shared prefix blocks */
    const char *error;                       /* FS_FINISH_ERROR: why */
    /* Added with prompt log-probabilities: 1 for a prompt event (token is
     * prompt[i], i = 1, 2, ... in order, logprob is log p(prompt[i] |
     * prompt[0..i)) with its top alternatives; not a completion token). */
    int prompt;
} fs_request_event;

/* Called on the engine thread for each event; must not block. */
typedef void (*fs_request_sink)(void *arg, const fs_request_event *ev);

typedef struct fs_request_params {
    uint32_t struct_size;
    const int32_t *prompt; /* copied by submit */
    size_t n_prompt;
    size_t max_tokens;
    fs_sampler sampler;    /* temperature 0 = greedy; seed: the request's own stream */
    size_t logprobs;       /* 0..FS_ENGINE_MAX_LOGPROBS alternatives per token */
    int32_t eos;           /* token that ends the request (finish STOP), or -1 */
    double timeout_s;      /* 0 = none: past it the engine cancels the request */
    /* 1: the prompt's log-probabilities too, as prompt events before the
     * generated tokens (completions' echo with logprobs); max_tokens may
     * then be 0. */
    int prompt_logprobs;
    /* 1: each generated token's log-probability in its event even when
     * `logprobs` is 0 (OpenAI's logprobs = 0). Without it and without
     * alternatives the engine skips the softmax over the vocabulary that
     * costs every token (50,257 exponentials at GPT-2's). */
    int token_logprobs;
} fs_request_params;

/* Whether a sampled token ends a request whose end-of-text token is eos
 * (-1: none): the rule of the engine's requests, and of --mode generate
 * over a model the engine cannot run. The token is not part of the text. */
static inline int fs_request_ends_at(int32_t eos, int32_t token) { return eos >= 0 && token == eos; }

/* Starts the engine thread over session s's model (whole, loaded: the
 * caller has loaded the checkpoint). Refuses, naming the plugin and what
 * it lacks, a layer whose attention plugin cannot serve (no ragged paged
 * step), and a configuration that cannot hold one sequence. The scheduler
 * is the session's [serve] scheduler, with its keys (cfg->scheduler, when
 * set, must name it). s must outlive the engine. */
int fs_engine_create(fs_engine **out, fs_session *s, const fs_engine_config *cfg, fs_error *err);
/* Stops the thread; requests still in flight end with FS_FINISH_SHUTDOWN.
 * Accepts NULL. */
void fs_engine_destroy(fs_engine *e);

/* Queues a request; *id names it in events and fs_engine_cancel.
 * Refusals queue nothing and send no event: FS_ERR_BUSY when max_queue
 * requests already wait (an HTTP front end answers 429 with Retry-After),
 * FS_ERR_INVALID for a prompt plus max_tokens past the context of an
 * unbounded cache or past what the pool can ever hold (400),
 * FS_ERR_UNSUPPORTED while draining (503). */
int fs_engine_submit(fs_engine *e, const fs_request_params *p, fs_request_sink sink, void *arg, uint64_t *id,
                     fs_error *err);
/* Ends a request at the next iteration boundary: its blocks return to the
 * pool and its sink gets a final FS_FINISH_CANCELLED event. Unknown or
 * finished ids are ignored. */
void fs_engine_cancel(fs_engine *e, uint64_t id);
/* The same, ending it with `why`: FS_FINISH_STOP for a stop string the
 * front end found (counted as a stop, not a cancellation); any other reason
 * is FS_FINISH_CANCELLED. */
void fs_engine_end(fs_engine *e, uint64_t id, fs_finish_reason why);

/* Stops accepting, lets running and queued requests finish for up to
 * grace_s seconds, then ends the rest with FS_FINISH_SHUTDOWN. Returns when
 * no request is left. */
void fs_engine_drain(fs_engine *e, double grace_s);

/* Loads the checkpoint at `path` into a new copy of the weights and swaps
 * it in between iterations; requests in flight finish on the weights they
 * started with. */
int fs_engine_reload(fs_engine *e, const char *path, fs_error *err);

/* What /metrics shows. Counters are totals since start; histograms are
 * cumulative Prometheus buckets (seconds). */
#define FS_ENGINE_MAX_QUEUES 16
#define FS_ENGINE_HIST_BUCKETS 16
typedef struct fs_engine_histogram {
    double le[FS_ENGINE_HIST_BUCKETS]; /* upper bounds; the last is +Inf */
    uint64_t count[FS_ENGINE_HIST_BUCKETS];
    uint64_t total;
    double sum;
} fs_engine_histogram;

typedef struct fs_engine_stats {
    uint32_t struct_size;
    size_t waiting, running, swapped;
    size_t n_queues;                        /* scheduler levels (1 for fcfs) */
    size_t queue_len[FS_ENGINE_MAX_QUEUES]; /* waiting + running per level */
    size_t kv_blocks_total, kv_blocks_used, swap_blocks_total, swap_blocks_used;
    uint64_t prefix_hits, prefix_lookups;   /* full prompt blocks found shared / looked up */
    uint64_t tokens_in, tokens_out, preemptions, swaps_out, swaps_in, recomputes;
    uint64_t finished[6];                   /* by fs_finish_reason */
    uint64_t iterations;
    fs_engine_histogram ttft, itl, e2e, iteration;
    uint64_t prompt_computed;               /* prompt tokens run through the model (not found shared) */
} fs_engine_stats;

void fs_engine_stats_get(fs_engine *e, fs_engine_stats *st);
/* The backend plugin the steps run through ("cuda", "cpu"), or "none": the
 * runtime's own CPU kernels (the summaries' "backend", as training's). */
const char *fs_engine_backend(const fs_engine *e);

/* For --mode generate and tests: an engine without its own thread; calls
 * run iterations on the calling thread until no request is left. */
int fs_engine_create_inline(fs_engine **out, fs_session *s, const fs_engine_config *cfg, fs_error *err);
int fs_engine_run_until_idle(fs_engine *e, fs_error *err);

/* The defaults of fs_engine_config from [serve] (and [generate] for
 * --mode generate's one request). */
void fs_engine_config_from(fs_engine_config *cfg, const fs_session *s);

#endif
