/* pipe_schedule.c — see pipe_schedule.h. */
#include "pipe_schedule.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- messages ---- */

static int msg_set(char *msg, size_t cap, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int msg_set(char *msg, size_t cap, int status, const char *fmt, ...) {
    if (msg && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, cap, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* Plugins reach the host's error_set through their host table; this file
 * has none (the runtime links it too), and fs_error is a plain struct. */
static int err_set(fs_error *err, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int err_set(fs_error *err, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fs_error_vset(err, status, fmt, ap);
    va_end(ap);
    return status;
}

/* ---- schedules ---- */

int fs_pipe_schedule_parse(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "gpipe")) return FS_PIPE_GPIPE;
    if (!strcmp(name, "1f1b")) return FS_PIPE_1F1B;
    if (!strcmp(name, "interleaved")) return FS_PIPE_INTERLEAVED;
    return -1;
}

const char *fs_pipe_schedule_name(int type) {
    switch (type) {
    case FS_PIPE_GPIPE: return "gpipe";
    case FS_PIPE_1F1B: return "1f1b";
    case FS_PIPE_INTERLEAVED: return "interleaved";
    default: return "?";
    }
}

size_t fs_pipe_default_microbatches(size_t local_batch, size_t pipeline, int interleaved) {
    if (pipeline <= 1) return 1;
    for (size_t m = 4 * pipeline; m >= 1; m--)
        if (local_batch % m == 0 && (!interleaved || m % pipeline == 0)) return m;
    return 0;
}

static void push(fs_pipe_schedule *s, int kind, size_t chunk, size_t micro) {
    fs_pipe_op *o = &s->ops[s->n_ops++];
    o->kind = kind;
    o->chunk = chunk;
    o->micro = micro;
    o->slot = 0;
}

/* Megatron-LM's mapping of the k-th forward (or backward) of a stage to a
 * (chunk, micro): micro-batches go through the chunks in groups of p, so
 * chunk 0 sees micro 0..p-1, then chunk 1 the same ones, and so on; the
 * backwards visit the chunks in reverse. */
static size_t il_chunk(size_t k, size_t p, size_t v, int forward) {
    size_t c = (k % (p * v)) / p;
    return forward ? c : v - 1 - c;
}
static size_t il_micro(size_t k, size_t p, size_t v) {
    return (k / (p * v)) * p + k % p;
}

static void order_interleaved(fs_pipe_schedule *s) {
    size_t p = s->stages, v = s->interleave, m = s->micro, total = m * v;
    /* With m == p every forward comes first (Megatron-LM does the same). */
    size_t warm = m == p ? total : (p - s->stage - 1) * 2 + (v - 1) * p;
    if (warm > total) warm = total;
    for (size_t k = 0; k < warm; k++) push(s, FS_PIPE_FWD, il_chunk(k, p, v, 1), il_micro(k, p, v));
    for (size_t i = 0; i + warm < total; i++) {
        size_t k = i + warm;
        push(s, FS_PIPE_FWD, il_chunk(k, p, v, 1), il_micro(k, p, v));
        push(s, FS_PIPE_BWD, il_chunk(i, p, v, 0), il_micro(i, p, v));
    }
    for (size_t k = total - warm; k < total; k++) push(s, FS_PIPE_BWD, il_chunk(k, p, v, 0), il_micro(k, p, v));
}

static void order_1f1b(fs_pipe_schedule *s) {
    size_t m = s->micro, warm = s->stages - s->stage - 1;
    if (warm > m) warm = m;
    for (size_t k = 0; k < warm; k++) push(s, FS_PIPE_FWD, 0, k);
    for (size_t i = 0; i + warm < m; i++) {
        push(s, FS_PIPE_FWD, 0, i + warm);
        push(s, FS_PIPE_BWD, 0, i);
    }
    for (size_t k = m - warm; k < m; k++) push(s, FS_PIPE_BWD, 0, k);
}

static void order_gpipe(fs_pipe_schedule *s) {
    for (size_t k = 0; k < s->micro; k++) push(s, FS_PIPE_FWD, 0, k);
    for (size_t k = 0; k < s->micro; k++) push(s, FS_PIPE_BWD, 0, k);
}

/* Slots from a free list per chunk, lowest first, as the ops run. */
static int assign_slots(fs_pipe_schedule *s, char *msg, size_t cap) {
    size_t v = s->interleave, m = s->micro;
    size_t *slot_of = malloc(v * m * sizeof *slot_of);
    unsigned char *busy = calloc(v * m, 1); /* (chunk, slot): a chunk never holds more than m */
    if (!slot_of || !busy) {
        free(slot_of);
        free(busy);
        return msg_set(msg, cap, FS_ERR_NOMEM, "out of memory for a pipeline schedule");
    }
    size_t most = 0;
    for (size_t i = 0; i < s->n_ops; i++) {
        fs_pipe_op *o = &s->ops[i];
        unsigned char *b = busy + o->chunk * m;
        if (o->kind == FS_PIPE_FWD) {
            size_t k = 0;
            while (b[k]) k++; /* at most m - 1 others are in flight, so k < m */
            b[k] = 1;
            o->slot = slot_of[o->chunk * m + o->micro] = k;
            if (k + 1 > most) most = k + 1;
        } else {
            o->slot = slot_of[o->chunk * m + o->micro];
            b[o->slot] = 0;
        }
    }
    s->slots = most;
    free(slot_of);
    free(busy);
    return FS_OK;
}

int fs_pipe_schedule_build(fs_pipe_schedule *s, int type, size_t stages, size_t stage, size_t micro, size_t interleave,
                           char *msg, size_t cap) {
    memset(s, 0, sizeof *s);
    if (!stages || !micro || !interleave)
        return msg_set(msg, cap, FS_ERR_INVALID,
                       "pipeline = %zu, microbatches = %zu, interleave = %zu: each must be >= 1", stages, micro,
                       interleave);
    if (stage >= stages)
        return msg_set(msg, cap, FS_ERR_INVALID, "pipeline rank %zu outside 0..%zu", stage, stages - 1);
    switch (type) {
    case FS_PIPE_GPIPE:
    case FS_PIPE_1F1B:
        if (interleave != 1)
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "schedule %s runs one model chunk per stage, but interleave = %zu; "
                           "use schedule = interleaved or interleave = 1",
                           fs_pipe_schedule_name(type), interleave);
        break;
    case FS_PIPE_INTERLEAVED:
        if (stages < 2)
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "schedule interleaved needs pipeline >= 2 (got %zu): one stage has nothing to interleave",
                           stages);
        if (interleave < 2)
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "schedule interleaved needs interleave >= 2 model chunks per stage (got %zu); "
                           "use schedule = 1f1b for one",
                           interleave);
        if (micro % stages)
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "schedule interleaved needs microbatches (%zu) to be a multiple of pipeline (%zu), "
                           "as Megatron-LM does",
                           micro, stages);
        break;
    default: return msg_set(msg, cap, FS_ERR_INVALID, "unknown pipeline schedule %d", type);
    }
    s->ops = malloc(2 * micro * interleave * sizeof *s->ops);
    if (!s->ops) return msg_set(msg, cap, FS_ERR_NOMEM, "out of memory for a pipeline schedule");
    s->type = type;
    s->stages = stages;
    s->stage = stage;
    s->micro = micro;
    s->interleave = interleave;
    if (type == FS_PIPE_GPIPE)
        order_gpipe(s);
    else if (type == FS_PIPE_1F1B)
        order_1f1b(s);
    else
        order_interleaved(s);
    int rc = assign_slots(s, msg, cap);
    if (rc) fs_pipe_schedule_release(s);
    return rc;
}

void fs_pipe_schedule_release(fs_pipe_schedule *s) {
    if (!s) return;
    free(s->ops);
    memset(s, 0, sizeof *s);
}

/* ---- partition ---- */

void fs_pipe_default_costs(size_t n_embd, size_t seq, size_t vocab, double *embed_cost, double *head_cost) {
    double C = (double)n_embd, T = (double)seq, V = (double)vocab;
    double layer = 24.0 * C * C + 4.0 * T * C;
    *embed_cost = 0.0;
    *head_cost = layer > 0 ? 2.0 * C * V / layer : 0.0;
}

/* Can k stages of cost at most M hold the n layers? Filling from the back,
 * each stage as full as it can be while leaving a layer for each earlier
 * one, leaves the smallest possible first stage: if this greedy split does
 * not fit, none does. */
static int greedy_fits(size_t n, size_t k, double e, double h, double M, size_t *first, size_t *count) {
    const double eps = 1e-9;
    size_t end = n;
    for (size_t i = k; i-- > 0;) {
        double extra = (i == k - 1 ? h : 0.0) + (i == 0 ? e : 0.0);
        size_t c;
        if (i == 0) {
            c = end;
            if ((double)c + extra > M + eps) return 0;
        } else {
            double room = floor(M - extra + eps);
            if (room < 1.0) return 0;
            c = room >= (double)(end - i) ? end - i : (size_t)room;
        }
        first[i] = end - c;
        count[i] = c;
        end -= c;
    }
    return 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int partition_balanced(size_t n, size_t k, double e, double h, size_t *first, size_t *count, char *msg,
                              size_t cap) {
    /* The largest stage cost is some stage's layer count plus the extras it
     * carries: try those values in increasing order (binary search, since
     * fitting is monotone in M). */
    size_t nc = 4 * n;
    double *cand = malloc(nc * sizeof *cand);
    if (!cand) return msg_set(msg, cap, FS_ERR_NOMEM, "out of memory partitioning %zu layers", n);
    for (size_t j = 1; j <= n; j++) {
        cand[4 * (j - 1) + 0] = (double)j;
        cand[4 * (j - 1) + 1] = (double)j + e;
        cand[4 * (j - 1) + 2] = (double)j + h;
        cand[4 * (j - 1) + 3] = (double)j + e + h;
    }
    qsort(cand, nc, sizeof *cand, cmp_double);
    size_t lo = 0, hi = nc - 1; /* cand[hi] = n + e + h always fits */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (greedy_fits(n, k, e, h, cand[mid], first, count))
            hi = mid;
        else
            lo = mid + 1;
    }
    greedy_fits(n, k, e, h, cand[lo], first, count);
    free(cand);
    return FS_OK;
}

/* Parses "A" or "A-B" at *p (spaces allowed around the numbers). */
static int parse_range(const char **p, size_t *a, size_t *b) {
    const char *s = *p;
    char *end;
    while (*s == ' ' || *s == '\t') s++;
    if (*s < '0' || *s > '9') return -1;
    unsigned long long x = strtoull(s, &end, 10), y;
    s = end;
    while (*s == ' ' || *s == '\t') s++;
    if (*s == '-') {
        s++;
        while (*s == ' ' || *s == '\t') s++;
        if (*s < '0' || *s > '9') return -1;
        y = strtoull(s, &end, 10);
        s = end;
        while (*s == ' ' || *s == '\t') s++;
    } else {
        y = x;
    }
    if (*s != ',' && *s != '\0') return -1;
    if (x > SIZE_MAX / 2 || y > SIZE_MAX / 2) return -1;
    *a = (size_t)x;
    *b = (size_t)y;
    *p = s;
    return 0;
}

static int partition_spec(size_t n, size_t k, const char *spec, size_t *first, size_t *count, char *msg, size_t cap) {
    const char *p = spec;
    size_t i = 0, prev_a = 0, prev_b = 0;
    for (;;) {
        const char *item = p;
        size_t a, b;
        if (parse_range(&p, &a, &b)) {
            size_t len = strcspn(item, ",");
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "range %zu '%.*s' is not a layer range: write A-B (inclusive) or A, comma-separated", i + 1,
                           (int)(len > 40 ? 40 : len), item);
        }
        if (b < a)
            return msg_set(msg, cap, FS_ERR_INVALID, "range %zu '%zu-%zu' runs backwards: write %zu-%zu", i + 1, a, b,
                           b, a);
        if (b >= n)
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "range %zu '%zu-%zu': layer %zu is out of range (layers are 0..%zu)", i + 1, a, b, b, n - 1);
        if (i == 0 && a != 0)
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "layers 0..%zu belong to no stage: the first range must start at layer 0", a - 1);
        if (i > 0 && a <= prev_b)
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "range %zu '%zu-%zu' overlaps range %zu '%zu-%zu': each layer belongs to one stage", i + 1,
                           a, b, i, prev_a, prev_b);
        if (i > 0 && a > prev_b + 1)
            return msg_set(msg, cap, FS_ERR_INVALID,
                           "layers %zu..%zu belong to no stage (gap between '%zu-%zu' and '%zu-%zu')", prev_b + 1,
                           a - 1, prev_a, prev_b, a, b);
        if (i < k) {
            first[i] = a;
            count[i] = b - a + 1;
        }
        i++;
        prev_a = a;
        prev_b = b;
        if (*p == '\0') break;
        p++; /* the comma */
    }
    if (prev_b != n - 1)
        return msg_set(msg, cap, FS_ERR_INVALID,
                       "layers %zu..%zu belong to no stage: the last range must end at layer %zu", prev_b + 1, n - 1,
                       n - 1);
    if (i != k)
        return msg_set(msg, cap, FS_ERR_INVALID,
                       "%zu ranges for %zu virtual stages (pipeline x interleave): give one range per virtual stage", i,
                       k);
    return FS_OK;
}

int fs_pipe_partition(size_t n_layer, size_t n_vstages, const char *spec, double embed_cost, double head_cost,
                      size_t *first, size_t *count, char *msg, size_t cap) {
    if (!n_layer || !n_vstages)
        return msg_set(msg, cap, FS_ERR_INVALID, "%zu layers into %zu virtual stages: both must be >= 1", n_layer,
                       n_vstages);
    if (spec && *spec) return partition_spec(n_layer, n_vstages, spec, first, count, msg, cap);
    if (n_vstages > n_layer)
        return msg_set(msg, cap, FS_ERR_INVALID,
                       "%zu virtual stages (pipeline x interleave) for n_layer = %zu: every stage needs a layer",
                       n_vstages, n_layer);
    if (!(embed_cost >= 0) || !(head_cost >= 0) || !isfinite(embed_cost) || !isfinite(head_cost))
        return msg_set(msg, cap, FS_ERR_INVALID, "stage costs must be finite and >= 0 (embed %g, head %g)", embed_cost,
                       head_cost);
    return partition_balanced(n_layer, n_vstages, embed_cost, head_cost, first, count, msg, cap);
}

/* ---- executor ---- */

enum { BUF_IN = 0, BUF_OUT = 1, BUF_DOUT = 2, BUF_DIN = 3, BUF_KINDS = 4 };

typedef struct pipe_run {
    const fs_pipe_schedule *s;
    const fs_stage_ops *ops;
    fs_comm *comm;
    const fs_comm_group *group;
    size_t p, v, m, n_vs, n;
    float *buf;
    /* One tensor per buffer: engines may keep the descriptor until wait. */
    fs_tensor *tensors;
    fs_comm_request **send_req; /* per buffer: the send from it still in flight */
    fs_comm_request **recv_req; /* per op: its posted receive */
    unsigned char *posted;      /* per op */
} pipe_run;

static size_t vstage_of(const pipe_run *r, const fs_pipe_op *o) {
    return o->chunk * r->p + r->s->stage;
}

static size_t buf_index(const pipe_run *r, size_t chunk, size_t slot, int kind) {
    return (chunk * r->s->slots + slot) * BUF_KINDS + (size_t)kind;
}

static float *buf_at(const pipe_run *r, size_t index) {
    return r->buf + index * r->n;
}

static int needs_recv(const pipe_run *r, const fs_pipe_op *o) {
    size_t vs = vstage_of(r, o);
    return o->kind == FS_PIPE_FWD ? vs > 0 : vs + 1 < r->n_vs;
}

/* Tag of the message virtual stage `from` sends for micro in direction kind. */
static int tag_of(const pipe_run *r, size_t from, size_t micro, int kind) {
    return (int)(2 * (from * r->m + micro) + (size_t)kind);
}

static const char *what(int kind) {
    return kind == FS_PIPE_FWD ? "forward" : "backward";
}

/* Prefixes err's message with where in the schedule it happened. */
static int located(const pipe_run *r, const fs_pipe_op *o, const char *doing, int rc, fs_error *err) {
    char inner[sizeof err->message];
    snprintf(inner, sizeof inner, "%s", err->message);
    return err_set(err, rc, "pipeline stage %zu, %s of chunk %zu micro-batch %zu: %s: %s", r->s->stage, what(o->kind),
                   o->chunk, o->micro, doing, inner);
}

static int post_recv(pipe_run *r, size_t i, fs_error *err) {
    const fs_pipe_op *o = &r->s->ops[i];
    size_t vs = vstage_of(r, o), from = o->kind == FS_PIPE_FWD ? vs - 1 : vs + 1;
    size_t b = buf_index(r, o->chunk, o->slot, o->kind == FS_PIPE_FWD ? BUF_IN : BUF_DOUT);
    int rc = r->comm->recv_start(r->comm, r->group, &r->tensors[b], (int)(from % r->p),
                                 tag_of(r, from, o->micro, o->kind), &r->recv_req[i], err);
    if (rc)
        return located(r, o,
                       o->kind == FS_PIPE_FWD ? "posting the receive of the input"
                                              : "posting the receive of the output gradient",
                       rc, err);
    r->posted[i] = 1;
    return FS_OK;
}

/* The receive of op j may be posted before op i runs unless it lands in
 * the input buffer op i's backward may still read (the runtime can keep a
 * pointer to `in` until then): the slot op j takes is the one op i frees. */
static int may_prefetch(const pipe_run *r, size_t i, size_t j) {
    const fs_pipe_op *a = &r->s->ops[i], *b = &r->s->ops[j];
    return !(b->kind == FS_PIPE_FWD && a->kind == FS_PIPE_BWD && a->chunk == b->chunk && a->slot == b->slot);
}

static int finish_send(pipe_run *r, size_t b, const fs_pipe_op *o, fs_error *err) {
    if (!r->send_req[b]) return FS_OK;
    fs_comm_request *q = r->send_req[b];
    r->send_req[b] = NULL;
    int rc = r->comm->wait(r->comm, q, err);
    if (rc) return located(r, o, "completing an earlier send from the same buffer", rc, err);
    return FS_OK;
}

static int run_op(pipe_run *r, size_t i, fs_error *err) {
    const fs_pipe_op *o = &r->s->ops[i];
    size_t vs = vstage_of(r, o), p = r->p;
    int first = vs == 0, last = vs + 1 == r->n_vs, rc;
    int recv = needs_recv(r, o);
    if (recv && !r->posted[i] && (rc = post_recv(r, i, err))) return rc;
    if (i + 1 < r->s->n_ops && needs_recv(r, &r->s->ops[i + 1]) && !r->posted[i + 1] && may_prefetch(r, i, i + 1) &&
        (rc = post_recv(r, i + 1, err)))
        return rc;
    if (recv) {
        fs_comm_request *q = r->recv_req[i];
        r->recv_req[i] = NULL;
        if ((rc = r->comm->wait(r->comm, q, err)))
            return located(r, o, o->kind == FS_PIPE_FWD ? "receiving the input" : "receiving the output gradient", rc,
                           err);
    }
    if (o->kind == FS_PIPE_FWD) {
        size_t bi = buf_index(r, o->chunk, o->slot, BUF_IN), bo = buf_index(r, o->chunk, o->slot, BUF_OUT);
        if (!last && (rc = finish_send(r, bo, o, err))) return rc;
        rc = r->ops->forward(r->ops->ctx, o->chunk, o->micro, o->slot, first ? NULL : buf_at(r, bi),
                             last ? NULL : buf_at(r, bo), err);
        if (rc) return rc;
        if (!last) {
            rc = r->comm->send_start(r->comm, r->group, &r->tensors[bo], (int)((vs + 1) % p),
                                     tag_of(r, vs, o->micro, FS_PIPE_FWD), &r->send_req[bo], err);
            if (rc) return located(r, o, "sending the output", rc, err);
        }
    } else {
        size_t bd = buf_index(r, o->chunk, o->slot, BUF_DOUT), bg = buf_index(r, o->chunk, o->slot, BUF_DIN);
        if (!first && (rc = finish_send(r, bg, o, err))) return rc;
        rc = r->ops->backward(r->ops->ctx, o->chunk, o->micro, o->slot, last ? NULL : buf_at(r, bd),
                              first ? NULL : buf_at(r, bg), err);
        if (rc) return rc;
        if (!first) {
            rc = r->comm->send_start(r->comm, r->group, &r->tensors[bg], (int)((vs - 1) % p),
                                     tag_of(r, vs, o->micro, FS_PIPE_BWD), &r->send_req[bg], err);
            if (rc) return located(r, o, "sending the input gradient", rc, err);
        }
    }
    return FS_OK;
}

size_t fs_pipe_workspace_floats(const fs_pipe_schedule *s, size_t act_numel) {
    if (!s || s->stages < 2) return 0;
    return BUF_KINDS * s->interleave * s->slots * act_numel;
}

static int check_call(const fs_pipe_schedule *s, const fs_stage_ops *ops, fs_comm *comm, const fs_comm_group *g,
                      fs_error *err) {
    if (!s || !s->ops || !s->n_ops) return err_set(err, FS_ERR_INVALID, "fs_pipe_run: no schedule (build one first)");
    if (!ops || !ops->forward || !ops->backward)
        return err_set(err, FS_ERR_INVALID, "fs_pipe_run: the stage ops need forward and backward");
    if (s->stages < 2) return FS_OK;
    if (!ops->act_numel) return err_set(err, FS_ERR_INVALID, "fs_pipe_run: act_numel is 0");
    if (!comm || !FS_HAS_MEMBER(comm, comm->struct_size, fs_comm, recv_start) || !comm->send_start ||
        !comm->recv_start || !comm->wait)
        return err_set(
            err, FS_ERR_UNSUPPORTED,
            "the '%s' communicator has no non-blocking send/receive (comm ABI 1.1), which the pipeline needs",
            comm && comm->engine ? comm->engine : "?");
    int size = comm->size(comm, g), rank = comm->rank(comm, g);
    if (size != (int)s->stages || rank != (int)s->stage)
        return err_set(err, FS_ERR_INVALID,
                       "fs_pipe_run: the pipeline group has %d ranks and this is rank %d, but the schedule is for "
                       "stage %zu of %zu",
                       size, rank, s->stage, s->stages);
    if (2 * s->stages * s->interleave * s->micro > (size_t)INT32_MAX)
        return err_set(err, FS_ERR_INVALID, "fs_pipe_run: too many micro-batches for message tags");
    return FS_OK;
}

int fs_pipe_run_ws(const fs_pipe_schedule *s, const fs_stage_ops *ops, fs_comm *comm, const fs_comm_group *pipe_group,
                   float *workspace, fs_error *err) {
    int rc = check_call(s, ops, comm, pipe_group, err);
    if (rc) return rc;
    pipe_run r;
    memset(&r, 0, sizeof r);
    r.s = s;
    r.ops = ops;
    r.comm = comm;
    r.group = pipe_group;
    r.p = s->stages;
    r.v = s->interleave;
    r.m = s->micro;
    r.n_vs = r.p * r.v;
    r.n = ops->act_numel;
    if (r.p == 1) { /* nothing crosses a stage boundary */
        for (size_t i = 0; i < s->n_ops && !rc; i++) rc = run_op(&r, i, err);
        return rc;
    }
    size_t n_buf = BUF_KINDS * r.v * s->slots;
    r.buf = workspace ? workspace : malloc(fs_pipe_workspace_floats(s, r.n) * sizeof(float));
    r.tensors = malloc(n_buf * sizeof *r.tensors);
    r.send_req = calloc(n_buf, sizeof *r.send_req);
    r.recv_req = calloc(s->n_ops, sizeof *r.recv_req);
    r.posted = calloc(s->n_ops, 1);
    if (!r.buf || !r.tensors || !r.send_req || !r.recv_req || !r.posted) {
        rc = err_set(err, FS_ERR_NOMEM, "out of memory for the pipeline's buffers (%zu x %zu floats)", n_buf, r.n);
        goto done;
    }
    for (size_t b = 0; b < n_buf; b++) r.tensors[b] = fs_tensor_cpu_f32(buf_at(&r, b), 1, r.n, 0, 0, 0);
    for (size_t i = 0; i < s->n_ops && !rc; i++) rc = run_op(&r, i, err);
    for (size_t b = 0; b < n_buf && !rc; b++)
        if (r.send_req[b]) {
            fs_comm_request *q = r.send_req[b];
            r.send_req[b] = NULL;
            if ((rc = comm->wait(comm, q, err))) {
                char inner[sizeof err->message];
                snprintf(inner, sizeof inner, "%s", err->message);
                rc = err_set(err, err->status ? err->status : FS_ERR_COMM,
                             "pipeline stage %zu: completing the step's last sends: %s", s->stage, inner);
            }
        }
done:
    if (!workspace) free(r.buf);
    free(r.tensors);
    free(r.send_req);
    free(r.recv_req);
    free(r.posted);
    return rc;
}

int fs_pipe_run(const fs_pipe_schedule *s, const fs_stage_ops *ops, fs_comm *comm, const fs_comm_group *pipe_group,
                fs_error *err) {
    return fs_pipe_run_ws(s, ops, comm, pipe_group, NULL, err);
}
