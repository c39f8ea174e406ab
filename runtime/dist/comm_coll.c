/* comm_coll.c — see comm_coll.h.
 *
 * Why it is built the way it is:
 *   - One stream carries every communicator of the engine (the world and
 *     its groups): their calls reach the device in the order the program
 *     made them, which is what NCCL needs of ranks that make the same calls
 *     in the same order, and a blocking call has one event to poll.
 *   - A failure seen while polling (a peer's, a timeout, a device fault)
 *     aborts every communicator of the engine, not only the one polled: a
 *     kernel stuck waiting for a dead peer would hold the shared stream,
 *     and all queued behind it (destroy's wait too), forever. The engine
 *     then refuses calls with FS_ERR_COMM; the run is ending.
 *   - Requests keep their event when released and are reused: a training
 *     step starts an all-reduce per gradient bucket, and a CUDA event per
 *     call would be created and destroyed every time.
 *   - NCCL has no tags: messages between two ranks match in the order they
 *     were sent, so `tag` is not used (a pipeline sends one message each
 *     way per exchange). */
#include "dist/comm_coll.h"

#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/host.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

struct fs_comm_group {
    fs_comm_group *host;   /* the host communicator's group (NULL under the self communicator) */
    fs_backend_coll *coll; /* the device communicator of the same ranks */
    int rank, size;        /* from the host's group: no need to ask the device */
    fs_comm_group *next;   /* the engine's open groups */
};

struct fs_comm_request {
    /* A deferred send or recv: recorded on the compute stream at start
     * (what it must see); once issued, on the engine's stream after it. */
    fs_backend_event *done;
    fs_backend_coll *coll; /* whose peers it waits for */
    const char *what;      /* names the call in errors */
    int deferred;          /* a send_start or recv_start not issued yet */
    int send;              /* the deferred call: send or recv of count elements with peer */
    void *buf;
    size_t count;
    int32_t dtype;
    int peer;
    fs_comm_request *next;     /* in the pending queue or the spare list */
    fs_comm_request *all_next; /* every request the engine made: destroy frees them */
};

typedef struct coll_engine {
    fs_comm comm; /* what create hands out; comm.impl points back here */
    const fs_backend_vtable *vt;
    void *self;
    fs_comm *host;
    fs_backend_coll *world;
    fs_backend_stream *stream; /* the engine's own, priority 1 */
    fs_backend_event *ready;   /* recorded on the compute stream at each call; the stream waits for it */
    int32_t *token;            /* one device int the barrier all-reduces */
    int rank, size;
    int failed; /* every communicator aborted: calls are refused */
    fs_comm_group *groups;
    fs_comm_request *pending, **pending_tail; /* deferred sends and receives, in call order */
    fs_comm_request *spare, *all;
} coll_engine;

/* One call of the backend's, as start() queues it: the output (or in-place)
 * buffer, the input, elements per rank, and the op, root or peer. */
typedef struct coll_call {
    const char *what;
    fs_backend_coll *coll;
    void *out;
    const void *in;
    size_t count;
    int32_t dtype;
    int arg;
} coll_call;

typedef int (*queue_fn)(coll_engine *e, const coll_call *k, fs_error *err);

/* What the collectives carry (every fs_dtype: backend.h's coll_* take all
 * five), reductions that pass through to the backend, engine names by
 * device type ("coll" for any other). */
static const char *const dtype_names[] = {
    [FS_DTYPE_F32] = "f32", [FS_DTYPE_F16] = "f16", [FS_DTYPE_BF16] = "bf16",
    [FS_DTYPE_I32] = "i32", [FS_DTYPE_F64] = "f64",
};
static const char *const op_names[] = {[FS_REDUCE_SUM] = "sum", [FS_REDUCE_MAX] = "max", [FS_REDUCE_MIN] = "min"};
static const char *const engine_names[] = {[FS_DEVICE_CPU] = "coll", [FS_DEVICE_CUDA] = "nccl"};

static coll_engine *engine_of(const fs_comm *c) { return c->impl; }
static fs_backend_coll *coll_of(const coll_engine *e, const fs_comm_group *g) { return g ? g->coll : e->world; }
static fs_backend_stream *compute_stream(const coll_engine *e) { return e->vt->default_stream(e->self); }

/* A backend's failure with the engine's call named in front of its message. */
static int named(fs_error *err, int rc, const char *what) {
    if (!rc || !err) return rc;
    char inner[sizeof err->message];
    memcpy(inner, err->message, sizeof inner);
    inner[sizeof inner - 1] = '\0';
    return fs_error_set(err, rc, "%s: %s", what, inner);
}

/* After a failure every communicator is aborted (see the top of the file). */
static void fail_all(coll_engine *e) {
    if (e->failed) return;
    e->failed = 1;
    e->vt->coll_abort(e->self, e->world);
    for (fs_comm_group *g = e->groups; g; g = g->next) e->vt->coll_abort(e->self, g->coll);
}

static int aborted(coll_engine *e, fs_error *err, int rc, const char *what) {
    fail_all(e);
    rc = named(err, rc, what);
    if (err && strlen(err->message) + 40 < sizeof err->message)
        strcat(err->message, " (the communicator was aborted)");
    return rc;
}

static int refuse_failed(const coll_engine *e, const char *what, fs_error *err) {
    if (!e->failed) return FS_OK;
    return fs_error_set(err, FS_ERR_COMM, "%s: the communicator was aborted after an earlier failure", what);
}

static int check_tensor(const fs_tensor *t, const char *what, fs_error *err) {
    if (!t || t->ndim < 0 || t->ndim > FS_TENSOR_MAX_DIMS)
        return fs_error_set(err, FS_ERR_INVALID, "%s: no tensor, or one of %d dimensions", what, t ? t->ndim : 0);
    if (t->dtype < 0 || (size_t)t->dtype >= COUNT_OF(dtype_names) || !dtype_names[t->dtype])
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: dtype %d is none of f32, bf16, f16, f64, i32", what,
                            (int)t->dtype);
    if (!t->data && fs_tensor_numel(t) > 0) return fs_error_set(err, FS_ERR_INVALID, "%s: a tensor without data", what);
    return FS_OK;
}

static int check_op(int op, const char *what, fs_error *err) {
    if (op >= 0 && (size_t)op < COUNT_OF(op_names) && op_names[op]) return FS_OK;
    return fs_error_set(err, FS_ERR_INVALID, "%s: unknown reduction %d", what, op);
}

static int check_rank(int r, int size, const char *what, const char *role, fs_error *err) {
    if (r >= 0 && r < size) return FS_OK;
    return fs_error_set(err, FS_ERR_INVALID, "%s: %s %d outside a group of %d ranks", what, role, r, size);
}

/* ---- requests and polling ---- */

static int acquire(coll_engine *e, const char *what, fs_backend_coll *coll, fs_comm_request **out, fs_error *err) {
    fs_comm_request *r = e->spare;
    if (r) {
        e->spare = r->next;
    } else {
        if (!(r = calloc(1, sizeof *r))) return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", what);
        int rc = e->vt->event_create(e->self, &r->done, err);
        if (rc) {
            free(r);
            return named(err, rc, what);
        }
        r->all_next = e->all;
        e->all = r;
    }
    *r = (fs_comm_request){.done = r->done, .coll = coll, .what = what, .all_next = r->all_next};
    *out = r;
    return FS_OK;
}

static void release(coll_engine *e, fs_comm_request *r) {
    r->next = e->spare;
    e->spare = r;
}

/* One look at a call in flight: *done once its event has run. A device
 * fault or a failed peer ends the engine. */
static int probe(coll_engine *e, fs_backend_coll *coll, fs_backend_event *ev, const char *what, int *done,
                 fs_error *err) {
    *done = 0;
    int rc = e->vt->event_query(e->self, ev, done, err);
    if (rc) return aborted(e, err, rc, what);
    if (*done) return FS_OK;
    if (e->vt->coll_check(e->self, coll, err)) return aborted(e, err, FS_ERR_COMM, what);
    return FS_OK;
}

/* Polls until the event has run rather than blocking in the driver, so a
 * failed peer and the timeout are seen. The first thousands of looks spin
 * (a bucket's all-reduce is often that short); then it sleeps a little
 * between them, leaving the core to ranks that share it, as comm_mpi.c's
 * wait does. timeout_s is read at each call: a strategy may set it. */
static int poll_event(coll_engine *e, fs_backend_coll *coll, fs_backend_event *ev, const char *what, fs_error *err) {
    double t0 = fs_now(), limit = e->comm.timeout_s;
    for (unsigned long spin = 0;; spin++) {
        int done = 0, rc = probe(e, coll, ev, what, &done, err);
        if (rc || done) return rc;
        if (spin < 2000) {
            sched_yield();
            continue;
        }
        if (limit > 0 && fs_now() - t0 > limit) {
            fail_all(e);
            return fs_error_set(err, FS_ERR_COMM,
                                "%s: no progress from the other ranks in %g s (a rank died or hangs?); the "
                                "communicator was aborted; [parallel] timeout sets the limit",
                                what, limit);
        }
        struct timespec ts = {0, spin < 20000 ? 20000 : 200000};
        nanosleep(&ts, NULL);
    }
}

/* Queues one call on the engine's stream after everything queued on the
 * compute stream so far, and its completion event after it. */
static int start(coll_engine *e, queue_fn queue, const coll_call *k, fs_comm_request **out, fs_error *err) {
    const fs_backend_vtable *vt = e->vt;
    fs_comm_request *r = NULL;
    *out = NULL;
    int rc = refuse_failed(e, k->what, err);
    if (!rc) rc = acquire(e, k->what, k->coll, &r, err);
    if (!rc) rc = vt->event_record(e->self, e->ready, compute_stream(e), err);
    if (!rc) rc = vt->stream_wait_event(e->self, e->stream, e->ready, err);
    if (!rc) rc = queue(e, k, err);
    if (!rc) rc = vt->event_record(e->self, r->done, e->stream, err);
    if (rc) {
        if (r) release(e, r);
        return named(err, rc, k->what);
    }
    *out = r;
    return FS_OK;
}

/* A blocking call's end, and wait()'s: the call has run, and the compute
 * stream waits for it, so work queued there from now on sees its result. */
static int complete(coll_engine *e, fs_comm_request *r, fs_error *err) {
    int rc = refuse_failed(e, r->what, err);
    if (!rc) rc = poll_event(e, r->coll, r->done, r->what, err);
    if (!rc) rc = named(err, e->vt->stream_wait_event(e->self, compute_stream(e), r->done, err), r->what);
    release(e, r);
    return rc;
}

static int run(coll_engine *e, queue_fn queue, const coll_call *k, fs_error *err) {
    fs_comm_request *r = NULL;
    int rc = start(e, queue, k, &r, err);
    return rc ? rc : complete(e, r, err);
}

/* Issues every deferred send and receive in one coll_group (comm_coll.h):
 * NCCL matches a pipeline's simultaneous exchange only when both sides are
 * queued before either can block. A failure part-way leaves peers waiting
 * for calls that never come, so it ends the engine. */
static int issue_pending(coll_engine *e, const char *what, fs_error *err) {
    const fs_backend_vtable *vt = e->vt;
    fs_comm_request *first = e->pending;
    e->pending = NULL;
    e->pending_tail = &e->pending;
    for (fs_comm_request *r = first; r; r = r->next) r->deferred = 0;
    if (!first) return FS_OK;
    int rc = refuse_failed(e, what, err);
    if (rc) return rc;
    for (fs_comm_request *r = first; r && !rc; r = r->next)
        rc = vt->stream_wait_event(e->self, e->stream, r->done, err);
    if (!rc && !(rc = vt->coll_group(e->self, 1, err))) {
        for (fs_comm_request *r = first; r && !rc; r = r->next)
            rc = r->send ? vt->coll_send(e->self, r->coll, e->stream, r->buf, r->count, r->dtype, r->peer, err)
                         : vt->coll_recv(e->self, r->coll, e->stream, r->buf, r->count, r->dtype, r->peer, err);
        fs_error ignored = {0};
        int end = vt->coll_group(e->self, 0, rc ? &ignored : err); /* a group begun is always ended */
        if (!rc) rc = end;
    }
    for (fs_comm_request *r = first; r && !rc; r = r->next) rc = vt->event_record(e->self, r->done, e->stream, err);
    return rc ? aborted(e, err, rc, what) : FS_OK;
}

/* ---- the calls ---- */

static int queue_all_reduce(coll_engine *e, const coll_call *k, fs_error *err) {
    return e->vt->coll_all_reduce(e->self, k->coll, e->stream, k->out, k->count, k->dtype, k->arg, err);
}
static int queue_broadcast(coll_engine *e, const coll_call *k, fs_error *err) {
    return e->vt->coll_broadcast(e->self, k->coll, e->stream, k->out, k->count, k->dtype, k->arg, err);
}
static int queue_all_gather(coll_engine *e, const coll_call *k, fs_error *err) {
    return e->vt->coll_all_gather(e->self, k->coll, e->stream, k->out, k->in, k->count, k->dtype, err);
}
static int queue_reduce_scatter(coll_engine *e, const coll_call *k, fs_error *err) {
    return e->vt->coll_reduce_scatter(e->self, k->coll, e->stream, k->out, k->in, k->count, k->dtype, k->arg, err);
}

static int cc_rank(const fs_comm *c, const fs_comm_group *g) { return g ? g->rank : engine_of(c)->rank; }
static int cc_size(const fs_comm *c, const fs_comm_group *g) { return g ? g->size : engine_of(c)->size; }

static int cc_all_reduce_start(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int op, fs_comm_request **req,
                               fs_error *err) {
    coll_engine *e = engine_of(c);
    *req = NULL;
    int rc = check_tensor(t, "all_reduce", err);
    if (rc || (rc = check_op(op, "all_reduce", err))) return rc;
    coll_call k = {"all_reduce", coll_of(e, g), t->data, NULL, fs_tensor_numel(t), t->dtype, op};
    return start(e, queue_all_reduce, &k, req, err);
}

static int cc_all_reduce(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int op, fs_error *err) {
    fs_comm_request *r = NULL;
    int rc = cc_all_reduce_start(c, g, t, op, &r, err);
    return rc ? rc : complete(engine_of(c), r, err);
}

static int cc_broadcast(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int root, fs_error *err) {
    coll_engine *e = engine_of(c);
    int rc = check_tensor(t, "broadcast", err);
    if (rc || (rc = check_rank(root, cc_size(c, g), "broadcast", "root", err))) return rc;
    coll_call k = {"broadcast", coll_of(e, g), t->data, NULL, fs_tensor_numel(t), t->dtype, root};
    return run(e, queue_broadcast, &k, err);
}

/* all_gather (out = size blocks of in) and reduce_scatter (in = size blocks
 * of out): `small` is the one-block tensor, `big` the other. */
static int check_blocks(const fs_comm *c, const fs_comm_group *g, const fs_tensor *small, const fs_tensor *big,
                        const char *what, const char *big_name, fs_error *err) {
    int rc = check_tensor(small, what, err);
    if (rc || (rc = check_tensor(big, what, err))) return rc;
    size_t n = fs_tensor_numel(small), size = (size_t)cc_size(c, g);
    if (small->dtype != big->dtype || fs_tensor_numel(big) != n * size)
        return fs_error_set(err, FS_ERR_INVALID, "%s: %s holds %zu %s elements, needs %zu x %zu %s", what, big_name,
                            fs_tensor_numel(big), dtype_names[big->dtype], size, n, dtype_names[small->dtype]);
    return FS_OK;
}

static int cc_all_gather(fs_comm *c, const fs_comm_group *g, const fs_tensor *in, fs_tensor *out, fs_error *err) {
    coll_engine *e = engine_of(c);
    int rc = check_blocks(c, g, in, out, "all_gather", "out", err);
    if (rc) return rc;
    coll_call k = {"all_gather", coll_of(e, g), out->data, in->data, fs_tensor_numel(in), in->dtype, 0};
    return run(e, queue_all_gather, &k, err);
}

static int cc_reduce_scatter(fs_comm *c, const fs_comm_group *g, const fs_tensor *in, fs_tensor *out,
                             fs_error *err) {
    coll_engine *e = engine_of(c);
    int rc = check_blocks(c, g, out, in, "reduce_scatter", "in", err);
    if (rc) return rc;
    coll_call k = {"reduce_scatter", coll_of(e, g), out->data, in->data, fs_tensor_numel(out), out->dtype,
                   FS_REDUCE_SUM};
    return run(e, queue_reduce_scatter, &k, err);
}

/* Only recorded (comm_coll.h); the event marks what on the compute stream
 * the call must see, however much later it is issued. */
static int p2p_start(fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int send,
                     fs_comm_request **req, fs_error *err) {
    coll_engine *e = engine_of(c);
    const char *what = send ? "send" : "recv";
    fs_comm_request *r = NULL;
    *req = NULL;
    int rc = refuse_failed(e, what, err);
    if (!rc) rc = check_tensor(t, what, err);
    if (!rc) rc = check_rank(peer, cc_size(c, g), what, "peer", err);
    if (!rc) rc = acquire(e, what, coll_of(e, g), &r, err);
    if (!rc) rc = named(err, e->vt->event_record(e->self, r->done, compute_stream(e), err), what);
    if (rc) {
        if (r) release(e, r);
        return rc;
    }
    r->deferred = 1;
    r->send = send;
    r->buf = t->data;
    r->count = fs_tensor_numel(t);
    r->dtype = t->dtype;
    r->peer = peer;
    *e->pending_tail = r;
    e->pending_tail = &r->next;
    *req = r;
    return FS_OK;
}

static int cc_send_start(fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag,
                         fs_comm_request **req, fs_error *err) {
    (void)tag;
    return p2p_start(c, g, t, peer, 1, req, err);
}

static int cc_recv_start(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag, fs_comm_request **req,
                         fs_error *err) {
    (void)tag;
    return p2p_start(c, g, t, peer, 0, req, err);
}

static int cc_wait(fs_comm *c, fs_comm_request *r, fs_error *err) {
    if (!r) return FS_OK;
    coll_engine *e = engine_of(c);
    int rc = issue_pending(e, "wait", err);
    if (rc) {
        release(e, r);
        return rc;
    }
    return complete(e, r, err);
}

/* After a failure *done is 1: wait() then returns the failure at once. */
static int cc_test(fs_comm *c, fs_comm_request *r, int *done, fs_error *err) {
    *done = 1;
    if (!r) return FS_OK;
    coll_engine *e = engine_of(c);
    int rc = issue_pending(e, "test", err);
    if (!rc) rc = refuse_failed(e, r->what, err);
    if (!rc && (rc = probe(e, r->coll, r->done, r->what, done, err))) *done = 1;
    return rc;
}

/* A blocking send or recv is a deferred one and its wait: it goes out in a
 * group with any others pending, as NCCL needs for a message to oneself. */
static int cc_send(fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag, fs_error *err) {
    fs_comm_request *r = NULL;
    int rc = cc_send_start(c, g, t, peer, tag, &r, err);
    return rc ? rc : cc_wait(c, r, err);
}

static int cc_recv(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag, fs_error *err) {
    fs_comm_request *r = NULL;
    int rc = cc_recv_start(c, g, t, peer, tag, &r, err);
    return rc ? rc : cc_wait(c, r, err);
}

/* An all-reduce (max, so it stays 0) of the engine's one-int token, polled
 * like any blocking call, rather than the host communicator's barrier
 * after the stream is idle: it returns once every rank of the group has
 * reached it and the device work each queued before it has run, it keeps
 * its place among the device calls (the same calls in the same order on
 * every rank), and a dead peer ends it through the one failure path
 * (coll_check, timeout_s, abort) instead of the host's. */
static int cc_barrier(fs_comm *c, const fs_comm_group *g, fs_error *err) {
    coll_engine *e = engine_of(c);
    coll_call k = {"barrier", coll_of(e, g), e->token, NULL, 1, FS_DTYPE_I32, FS_REDUCE_MAX};
    return run(e, queue_all_reduce, &k, err);
}

/* Waits (polling, bounded by the timeout) for everything queued on the
 * engine's stream; a failure aborts every communicator, so it drains. */
static int drain(coll_engine *e, fs_backend_coll *coll, const char *what, fs_error *err) {
    if (e->failed) return FS_OK;
    int rc = e->vt->event_record(e->self, e->ready, e->stream, err);
    return rc ? aborted(e, err, rc, what) : poll_event(e, coll, e->ready, what, err);
}

/* The host's group first (a failure there leaves no device split half
 * made), then the device's: both order ranks by key, so their ranks agree. */
static int cc_group_split(fs_comm *c, int color, int key, fs_comm_group **out, fs_error *err) {
    coll_engine *e = engine_of(c);
    *out = NULL;
    int rc = refuse_failed(e, "group_split", err);
    if (rc) return rc;
    if (color < 0) return fs_error_set(err, FS_ERR_INVALID, "group_split: color %d must be >= 0", color);
    fs_comm_group *g = calloc(1, sizeof *g);
    if (!g) return fs_error_set(err, FS_ERR_NOMEM, "group_split: out of memory");
    rc = e->host->group_split(e->host, color, key, &g->host, err);
    if (!rc) rc = named(err, e->vt->coll_split(e->self, e->world, color, key, &g->coll, err), "group_split");
    if (!rc && !g->coll)
        rc = fs_error_set(err, FS_ERR_RUNTIME, "group_split: the backend's coll_split made no communicator");
    if (rc) {
        if (g->coll) e->vt->coll_destroy(e->self, g->coll);
        e->host->group_free(e->host, g->host);
        free(g);
        return rc;
    }
    g->rank = e->host->rank(e->host, g->host);
    g->size = e->host->size(e->host, g->host);
    g->next = e->groups;
    e->groups = g;
    *out = g;
    return FS_OK;
}

/* Its calls share the engine's stream: they finish before it goes. */
static void cc_group_free(fs_comm *c, fs_comm_group *g) {
    if (!g) return;
    coll_engine *e = engine_of(c);
    fs_error ignored = {0};
    drain(e, g->coll, "group_free", &ignored);
    for (fs_comm_group **p = &e->groups; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            break;
        }
    e->vt->coll_destroy(e->self, g->coll);
    e->host->group_free(e->host, g->host);
    free(g);
}

/* ---- create and destroy ---- */

static const char *backend_name(const fs_backend_handle *b) {
    return b->plugin && b->plugin->desc && b->plugin->desc->name ? b->plugin->desc->name : "(unnamed)";
}

/* The members the engine calls, read as function pointers by offset as
 * core/plugin_kinds.c does (a handle made without the loader is checked too). */
static int check_backend(const fs_backend_handle *b, fs_error *err) {
    static const struct {
        size_t offset;
        const char *name;
    } needed[] = {
#define NEED(m) {offsetof(fs_backend_vtable, m), #m}
        NEED(alloc), NEED(free), NEED(memset), NEED(stream_create), NEED(stream_destroy), NEED(stream_synchronize),
        NEED(event_create), NEED(event_destroy), NEED(event_record), NEED(stream_wait_event), NEED(event_query),
        NEED(default_stream), NEED(coll_id), NEED(coll_create), NEED(coll_split), NEED(coll_destroy),
        NEED(coll_all_reduce), NEED(coll_broadcast), NEED(coll_all_gather), NEED(coll_reduce_scatter),
        NEED(coll_send), NEED(coll_recv), NEED(coll_group), NEED(coll_check), NEED(coll_abort),
#undef NEED
    };
    const fs_backend_vtable *vt = b->vt;
    size_t size = b->plugin && b->plugin->desc ? b->plugin->desc->vtable_size : vt->struct_size;
    if (!(vt->flags & FS_BACKEND_COLLECTIVES))
        return fs_error_set(err, FS_ERR_UNSUPPORTED,
                            "comm_coll: backend %s has no collectives on device buffers (FS_BACKEND_COLLECTIVES)",
                            backend_name(b));
    if (!FS_HAS_MEMBER(vt, size, fs_backend_vtable, coll_abort))
        return fs_error_set(err, FS_ERR_ABI,
                            "comm_coll: backend %s sets FS_BACKEND_COLLECTIVES but its vtable (%zu bytes) ends "
                            "before coll_abort",
                            backend_name(b), size);
    for (size_t i = 0; i < COUNT_OF(needed); i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)vt + needed[i].offset, sizeof fn);
        if (!fn)
            return fs_error_set(err, FS_ERR_ABI, "comm_coll: backend %s lacks %s", backend_name(b), needed[i].name);
    }
    return FS_OK;
}

/* The engine's own stream, events and barrier token: what a rank can fail
 * to make alone, before any collective. */
static int make_local(coll_engine *e, fs_error *err) {
    const fs_backend_vtable *vt = e->vt;
    void *token = NULL;
    int rc = vt->stream_create(e->self, &e->stream, 1, err);
    if (!rc) rc = vt->event_create(e->self, &e->ready, err);
    if (!rc) rc = vt->alloc(e->self, &token, sizeof(int32_t), FS_MEM_DEVICE, err);
    e->token = token;
    if (!rc) rc = vt->memset(e->self, e->stream, token, 0, sizeof(int32_t), err);
    return named(err, rc, "comm_coll create");
}

static fs_tensor host_i32(int32_t *x, size_t n) {
    return (fs_tensor){.data = x, .dtype = FS_DTYPE_I32, .device = {FS_DEVICE_CPU, 0}, .ndim = 1, .shape = {n}};
}

/* Every rank's status, agreed over the host: 0 when all succeeded. A rank
 * that failed keeps its own message; the others are told one did. */
static int agree(coll_engine *e, int rc, const char *step, fs_error *err) {
    int32_t failed = rc != 0;
    fs_tensor t = host_i32(&failed, 1);
    fs_error ignored = {0};
    int hrc = e->host->all_reduce(e->host, NULL, &t, FS_REDUCE_MAX, rc ? &ignored : err);
    if (rc || hrc) return rc ? rc : hrc;
    if (failed) return fs_error_set(err, FS_ERR_COMM, "comm_coll create: another rank failed to %s", step);
    return FS_OK;
}

/* NCCL's bootstrap over the host: rank 0 makes the id, the host broadcasts
 * it (as int32 words, which every host engine carries), every rank creates
 * its end. Agreements before and after keep a rank that failed alone from
 * leaving the others waiting in a collective it will never join. */
static int bootstrap(coll_engine *e, int rc, fs_error *err) {
    uint8_t id[FS_BACKEND_COLL_ID_BYTES] = {0};
    int32_t words[FS_BACKEND_COLL_ID_BYTES / sizeof(int32_t)];
    if (!rc && e->rank == 0) rc = named(err, e->vt->coll_id(e->self, id, err), "comm_coll create: coll_id");
    if ((rc = agree(e, rc, "set up", err))) return rc;
    memcpy(words, id, sizeof words);
    fs_tensor t = host_i32(words, COUNT_OF(words));
    if ((rc = e->host->broadcast(e->host, NULL, &t, 0, err))) return rc;
    memcpy(id, words, sizeof id);
    rc = named(err, e->vt->coll_create(e->self, &e->world, id, e->size, e->rank, err), "comm_coll create: coll_create");
    return agree(e, rc, "create its communicator", err);
}

static void fill_table(fs_comm *c, coll_engine *e, const fs_backend_handle *b, const fs_comm *host) {
    int32_t type = b->device.type;
    *c = (fs_comm){
        .struct_size = sizeof(fs_comm),
        .engine = type >= 0 && (size_t)type < COUNT_OF(engine_names) ? engine_names[type] : "coll",
        .impl = e,
        .rank = cc_rank,
        .size = cc_size,
        .group_split = cc_group_split,
        .group_free = cc_group_free,
        .all_reduce = cc_all_reduce,
        .all_reduce_start = cc_all_reduce_start,
        .wait = cc_wait,
        .broadcast = cc_broadcast,
        .all_gather = cc_all_gather,
        .send = cc_send,
        .recv = cc_recv,
        .barrier = cc_barrier,
        .send_start = cc_send_start,
        .recv_start = cc_recv_start,
        .reduce_scatter = cc_reduce_scatter,
        .timeout_s = FS_HAS_MEMBER(host, host->struct_size, fs_comm, timeout_s) ? host->timeout_s : 0,
        .test = cc_test,
    };
}

int fs_comm_coll_create(fs_comm **out, fs_backend_handle *b, fs_comm *host, fs_error *err) {
    *out = NULL;
    if (!b || !b->vt || !host)
        return fs_error_set(err, FS_ERR_INVALID, "comm_coll create: no backend or no host communicator");
    int rc = check_backend(b, err);
    if (rc) return rc;
    coll_engine *e = calloc(1, sizeof *e);
    if (!e) return fs_error_set(err, FS_ERR_NOMEM, "comm_coll create: out of memory");
    e->vt = b->vt;
    e->self = b->self;
    e->host = host;
    e->rank = host->rank(host, NULL);
    e->size = host->size(host, NULL);
    e->pending_tail = &e->pending;
    fill_table(&e->comm, e, b, host);
    if ((rc = bootstrap(e, make_local(e, err), err))) {
        if (e->world) e->vt->coll_abort(e->self, e->world); /* its peers may have failed: no finalize with them */
        e->failed = 1;
        fs_comm_coll_destroy(&e->comm);
        return rc;
    }
    *out = &e->comm;
    return FS_OK;
}

/* Requests never waited for and still pending go with it: nothing can wait
 * for them once it is gone. So do groups still open. */
void fs_comm_coll_destroy(fs_comm *c) {
    if (!c) return;
    coll_engine *e = engine_of(c);
    const fs_backend_vtable *vt = e->vt;
    fs_error ignored = {0};
    e->pending = NULL;
    if (e->stream) {
        drain(e, e->world, "destroy", &ignored);
        vt->stream_synchronize(e->self, e->stream, &ignored); /* after an abort: its kernels have left */
    }
    while (e->groups) {
        fs_comm_group *g = e->groups;
        e->groups = g->next;
        vt->coll_destroy(e->self, g->coll);
        e->host->group_free(e->host, g->host);
        free(g);
    }
    if (e->world) vt->coll_destroy(e->self, e->world);
    for (fs_comm_request *r = e->all, *next; r; r = next) {
        next = r->all_next;
        vt->event_destroy(e->self, r->done);
        free(r);
    }
    if (e->ready) vt->event_destroy(e->self, e->ready);
    if (e->token) vt->free(e->self, e->token, FS_MEM_DEVICE);
    if (e->stream) vt->stream_destroy(e->self, e->stream);
    free(e);
}
