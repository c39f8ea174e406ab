/* mlfq.c — FastServe's skip-join multi-level feedback queue (Wu et al.,
 * "Fast Distributed Inference Serving for Large Language Models", 2023):
 * iteration-level preemptive scheduling that approximates shortest job
 * first without knowing output lengths.
 *
 *   - K queues (`queues`); queue k's quantum is quantum_ms * ratio^k.
 *   - Skip-join: an arrival joins the highest-priority queue whose quantum
 *     covers its estimated first iteration, the prefill (its prompt's
 *     chunks), so a long prompt does not enter at the top only to be
 *     demoted at once. The estimate comes from measured iterations: a
 *     least-squares fit of iteration time against the tokens computed,
 *     exponentially weighted (the last ~64 iterations), gives a per-
 *     iteration cost a and a per-token cost b; a prompt of P tokens in
 *     chunks of c costs a ceil(P / c) + b P.
 *   - Every iteration a running request spends counts against its queue's
 *     quantum; one that has used it up moves down a queue.
 *   - A request that has waited longer than starvation_ms since it last
 *     ran goes back to the top queue.
 *   - Each iteration runs the highest-priority requests (queue, then time
 *     of joining it) that fit; a request of higher priority preempts lower
 *     ones between iterations (they stay resident unless their blocks are
 *     needed, then the lowest-priority ones are swapped out or dropped).
 *
 * The defaults (queues 6, quantum_ms 25, ratio 2, starvation_ms 5000) come
 * from iterations measured on the two-core machine this was built on with
 * the quickstart model; README "Serving" gives the numbers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastserve/scheduler.h"
#include "pick.h"

/* Weight each past iteration keeps in the fit after one more: ~64 iterations of memory. */
#define FIT_DECAY (1.0 - 1.0 / 64.0)

typedef struct mlfq_seq {
    double attained; /* iteration seconds spent in its current queue */
    double joined;   /* when it joined its current queue: FIFO within a queue */
} mlfq_seq;

typedef struct mlfq {
    const fs_host_api *host;
    size_t K;                       /* queues */
    double quantum0, ratio, starve; /* seconds, factor, seconds */
    size_t chunk;                   /* the engine's prefill chunk */
    double sw, sx, sy, sxx, sxy;    /* the weighted least-squares sums of (tokens, seconds) */
    struct key { int32_t level; double joined; uint64_t id; size_t idx; } *keys;
    size_t *order;
    unsigned char *mark;
    size_t cap;
} mlfq;

static int mlfq_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_scheduler_config *cfg,
                       fs_error *err) {
    fs_device cpu = {FS_DEVICE_CPU, 0};
    int64_t K = host->config_int(ctx, "queues");
    if ((size_t)K > cfg->max_levels)
        return host->error_set(err, FS_ERR_INVALID, "%s: the engine reports at most %zu queues",
                               host->config_where(ctx, "queues"), cfg->max_levels);
    mlfq *q = host->alloc(cpu, sizeof *q);
    if (!q) return host->error_set(err, FS_ERR_NOMEM, "mlfq scheduler: out of memory");
    memset(q, 0, sizeof *q);
    q->host = host;
    q->K = (size_t)K;
    q->quantum0 = host->config_float(ctx, "quantum_ms") / 1000.0;
    q->ratio = host->config_float(ctx, "ratio");
    q->starve = host->config_float(ctx, "starvation_ms") / 1000.0;
    q->chunk = cfg->prefill_chunk ? cfg->prefill_chunk : 1;
    *self = q;
    return FS_OK;
}

static void mlfq_destroy(void *self) {
    mlfq *q = self;
    if (!q) return;
    fs_device cpu = {FS_DEVICE_CPU, 0};
    q->host->free(cpu, q->keys);
    q->host->free(cpu, q->order);
    q->host->free(cpu, q->mark);
    q->host->free(cpu, q);
}

static size_t mlfq_seq_bytes(void *self) {
    (void)self;
    return sizeof(mlfq_seq);
}

static size_t mlfq_levels(void *self) { return ((mlfq *)self)->K; }

static double quantum(const mlfq *q, size_t level) { return q->quantum0 * pow(q->ratio, (double)level); }

/* Seconds the prefill of `tokens` prompt tokens is expected to take. */
static double prefill_estimate(const mlfq *q, size_t tokens) {
    if (q->sw <= 0.0 || q->sx <= 0.0) return 0.0;
    double det = q->sw * q->sxx - q->sx * q->sx, a, b;
    if (det > 1e-12 * q->sw * q->sxx) {
        b = (q->sw * q->sxy - q->sx * q->sy) / det;
        a = (q->sy - b * q->sx) / q->sw;
    } else { /* every iteration the same size: all of it per token */
        a = 0.0;
        b = q->sy / q->sx;
    }
    if (b < 0.0) b = 0.0, a = q->sy / q->sw;
    if (a < 0.0) a = 0.0;
    size_t chunks = (tokens + q->chunk - 1) / q->chunk;
    return a * (double)chunks + b * (double)tokens;
}

static void join(mlfq_seq *d, fs_sched_seq *seq, int32_t level, double now) {
    seq->level = level;
    d->attained = 0.0;
    d->joined = now;
}

/* Skip-join: the highest queue whose quantum covers the prefill. */
static void mlfq_arrive(void *self, fs_sched_seq *seq, double now) {
    mlfq *q = self;
    double est = prefill_estimate(q, seq->prompt_tokens);
    size_t k = 0;
    while (k + 1 < q->K && quantum(q, k) < est) k++;
    join(seq->data, seq, (int32_t)k, now);
}

static int by_priority(const void *a, const void *b) {
    const struct key *x = a, *y = b;
    if (x->level != y->level) return x->level < y->level ? -1 : 1;
    if (x->joined != y->joined) return x->joined < y->joined ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int grow(mlfq *q, size_t n, fs_error *err) {
    if (n <= q->cap) return FS_OK;
    fs_device cpu = {FS_DEVICE_CPU, 0};
    q->host->free(cpu, q->keys);
    q->host->free(cpu, q->order);
    q->host->free(cpu, q->mark);
    q->keys = q->host->alloc(cpu, n * sizeof *q->keys);
    q->order = q->host->alloc(cpu, n * sizeof *q->order);
    q->mark = q->host->alloc(cpu, n);
    q->cap = q->keys && q->order && q->mark ? n : 0;
    return q->cap ? FS_OK : q->host->error_set(err, FS_ERR_NOMEM, "mlfq scheduler: out of memory");
}

static int mlfq_schedule(void *self, double now, fs_sched_seq *const *seqs, size_t n, const fs_sched_budget *b,
                         fs_sched_plan *plan, fs_error *err) {
    mlfq *q = self;
    int rc = grow(q, n, err);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        fs_sched_seq *s = seqs[i];
        mlfq_seq *d = s->data;
        if (s->level > 0 && now - s->last_run > q->starve) join(d, s, 0, now); /* starving: back to the top */
        q->keys[i] = (struct key){s->level, d->joined, s->id, i};
    }
    qsort(q->keys, n, sizeof *q->keys, by_priority);
    for (size_t i = 0; i < n; i++) q->order[i] = q->keys[i].idx;
    sched_pick(seqs, n, q->order, b, PICK_SKIP, q->mark, plan);
    return FS_OK;
}

/* The fit learns from every iteration; each request that ran spends the
 * iteration's time from its quantum and moves down when it is used up. */
static void mlfq_account(void *self, const fs_sched_iteration *it) {
    mlfq *q = self;
    double x = (double)it->total_tokens, y = it->seconds;
    q->sw = q->sw * FIT_DECAY + 1.0;
    q->sx = q->sx * FIT_DECAY + x;
    q->sy = q->sy * FIT_DECAY + y;
    q->sxx = q->sxx * FIT_DECAY + x * x;
    q->sxy = q->sxy * FIT_DECAY + x * y;
    double end = it->start + it->seconds;
    for (size_t i = 0; i < it->n_ran; i++) {
        fs_sched_seq *s = it->ran[i];
        mlfq_seq *d = s->data;
        d->attained += it->seconds;
        if (d->attained >= quantum(q, (size_t)s->level) && (size_t)s->level + 1 < q->K) join(d, s, s->level + 1, end);
    }
}

static void mlfq_finish(void *self, fs_sched_seq *seq, double now) {
    (void)self;
    (void)seq;
    (void)now;
}

static const fs_scheduler_vtable mlfq_vtable = {
    .struct_size = sizeof(fs_scheduler_vtable),
    .create = mlfq_create,
    .destroy = mlfq_destroy,
    .seq_bytes = mlfq_seq_bytes,
    .levels = mlfq_levels,
    .arrive = mlfq_arrive,
    .schedule = mlfq_schedule,
    .account = mlfq_account,
    .finish = mlfq_finish,
};

static const fs_param_spec mlfq_params[] = {
    {"queues", FS_PARAM_INT, "6", 1, 16, NULL, "priority queues K (skip-join MLFQ)"},
    {"quantum_ms", FS_PARAM_FLOAT, "25", 0.001, FS_PARAM_UNBOUNDED, NULL,
     "the top queue's quantum in ms of iteration time; queue k's is quantum_ms * ratio^k"},
    {"ratio", FS_PARAM_FLOAT, "2", 1, 1000, NULL, "growth of the quantum from one queue to the next"},
    {"starvation_ms", FS_PARAM_FLOAT, "5000", 0, FS_PARAM_UNBOUNDED, NULL,
     "a request waiting longer than this since it last ran goes back to the top queue"},
};

static const fs_plugin_descriptor mlfq_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_SCHEDULER,
    .name = "mlfq",
    .version = "1.0.0",
    .summary = "FastServe's skip-join MLFQ: preemptive priority queues, arrivals placed by their prefill time",
    .params = mlfq_params,
    .n_params = sizeof mlfq_params / sizeof mlfq_params[0],
    .vtable = &mlfq_vtable,
    .vtable_size = sizeof(mlfq_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(mlfq_descriptor)
