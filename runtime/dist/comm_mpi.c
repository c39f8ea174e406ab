/* comm_mpi.c — see comm_mpi.h. */
#include "dist/comm_mpi.h"

#include "core/host.h"

#if FS_WITH_MPI

#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


typedef struct mpi_world {
    MPI_Comm world;
    int local_size, local_rank; /* this machine's ranks, and this one among them */
} mpi_world;

struct fs_comm_group {
    MPI_Comm comm;
};

struct fs_comm_request {
    MPI_Request req;
    const char *what; /* for the timeout message */
};

int fs_comm_mpi_available(void) { return 1; }

const char *fs_comm_mpi_version(void) {
    static char text[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(text, &len);
    text[len < (int)sizeof text ? len : (int)sizeof text - 1] = '\0';
    char *nl = strpbrk(text, "\r\n"); /* Open MPI appends build details on more lines */
    if (nl) *nl = '\0';
    return text;
}

static MPI_Comm comm_of(const fs_comm *c, const fs_comm_group *g) {
    return g ? g->comm : ((const mpi_world *)c->impl)->world;
}

static int mpi_fail(fs_error *err, int code, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) len = snprintf(msg, sizeof msg, "error %d", code);
    msg[len < (int)sizeof msg ? len : (int)sizeof msg - 1] = '\0';
    return fs_error_set(err, FS_ERR_COMM, "MPI %s failed: %s", what, msg);
}

static int count_of(const fs_tensor *t, const char *what, int *count, MPI_Datatype *dt, fs_error *err) {
    if (t->device.type != FS_DEVICE_CPU)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: the MPI engine moves host memory; this tensor is on a "
                            "device (a GPU engine such as NCCL is needed)", what);
    switch (t->dtype) {
    case FS_DTYPE_F32: *dt = MPI_FLOAT; break;
    case FS_DTYPE_F64: *dt = MPI_DOUBLE; break;
    case FS_DTYPE_I32: *dt = MPI_INT32_T; break;
    default: return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: dtype %d is not supported by the MPI engine", what,
                                 (int)t->dtype);
    }
    size_t n = fs_tensor_numel(t);
    if (n > (size_t)INT_MAX)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: %zu elements in one message; MPI counts are int", what, n);
    *count = (int)n;
    return FS_OK;
}

static int op_of(int op, MPI_Op *out, fs_error *err) {
    switch (op) {
    case FS_REDUCE_SUM: *out = MPI_SUM; return FS_OK;
    case FS_REDUCE_MAX: *out = MPI_MAX; return FS_OK;
    case FS_REDUCE_MIN: *out = MPI_MIN; return FS_OK;
    default: return fs_error_set(err, FS_ERR_INVALID, "unknown reduction %d", op);
    }
}

/* Polls until the request completes. MPI progresses non-blocking calls only
 * inside MPI calls (no progress thread), so the first millisecond spins on
 * MPI_Test; after that it sleeps a little between tests, so a rank waiting
 * on a slow peer leaves the core to ranks that share it. */
static int wait_request(fs_comm *c, MPI_Request *req, const char *what, fs_error *err) {
    double t0 = fs_now();
    for (unsigned long spin = 0;; spin++) {
        int done = 0, rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(err, rc, what);
        if (done) return FS_OK;
        if (spin < 2000) {
            sched_yield();
            continue;
        }
        if (c->timeout_s > 0 && fs_now() - t0 > c->timeout_s)
            return fs_error_set(err, FS_ERR_COMM,
                                "%s: no answer from the other ranks in %g s (a rank died or hangs?); "
                                "[parallel] timeout sets the limit",
                                what, c->timeout_s);
        struct timespec ts = {0, spin < 20000 ? 20000 : 200000};
        nanosleep(&ts, NULL);
    }
}

static int start(fs_comm_request **out, const char *what, fs_error *err) {
    fs_comm_request *r = malloc(sizeof *r);
    if (!r) return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", what);
    r->req = MPI_REQUEST_NULL;
    r->what = what;
    *out = r;
    return FS_OK;
}

/* Hands a started MPI request back as an fs_comm_request, or frees it. */
static int started(int rc, fs_comm_request *r, fs_comm_request **out, fs_error *err) {
    if (rc != MPI_SUCCESS) {
        const char *what = r->what;
        free(r);
        *out = NULL;
        return mpi_fail(err, rc, what);
    }
    *out = r;
    return FS_OK;
}

static int mpi_wait(fs_comm *c, fs_comm_request *r, fs_error *err) {
    if (!r) return FS_OK;
    int rc = wait_request(c, &r->req, r->what, err);
    /* after a timeout the request is abandoned: the run is ending */
    free(r);
    return rc;
}

static int mpi_test(fs_comm *c, fs_comm_request *r, int *done, fs_error *err) {
    (void)c;
    *done = 1;
    if (!r || r->req == MPI_REQUEST_NULL) return FS_OK; /* complete: MPI_Test set it to NULL */
    int rc = MPI_Test(&r->req, done, MPI_STATUS_IGNORE);
    return rc == MPI_SUCCESS ? FS_OK : mpi_fail(err, rc, r->what);
}

static int mpi_rank(const fs_comm *c, const fs_comm_group *g) {
    int r = 0;
    MPI_Comm_rank(comm_of(c, g), &r);
    return r;
}

static int mpi_size(const fs_comm *c, const fs_comm_group *g) {
    int n = 1;
    MPI_Comm_size(comm_of(c, g), &n);
    return n;
}

static int mpi_group_split(fs_comm *c, int color, int key, fs_comm_group **out, fs_error *err) {
    *out = NULL;
    if (color < 0) return fs_error_set(err, FS_ERR_INVALID, "group_split: color %d must be >= 0", color);
    fs_comm_group *g = malloc(sizeof *g);
    if (!g) return fs_error_set(err, FS_ERR_NOMEM, "group_split: out of memory");
    /* MPI_Comm_split has no non-blocking form; the strategies call it at
     * create, where every rank has just agreed the set-up succeeded. */
    int rc = MPI_Comm_split(comm_of(c, NULL), color, key, &g->comm);
    if (rc != MPI_SUCCESS) {
        free(g);
        return mpi_fail(err, rc, "MPI_Comm_split");
    }
    MPI_Comm_set_errhandler(g->comm, MPI_ERRORS_RETURN);
    *out = g;
    return FS_OK;
}

static void mpi_group_free(fs_comm *c, fs_comm_group *g) {
    (void)c;
    if (!g) return;
    MPI_Comm_free(&g->comm);
    free(g);
}

static int mpi_all_reduce_start(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int op, fs_comm_request **req,
                                fs_error *err) {
    int n = 0, rc;
    MPI_Datatype dt = MPI_FLOAT;
    MPI_Op mop = MPI_SUM;
    fs_comm_request *r = NULL;
    if ((rc = count_of(t, "all_reduce", &n, &dt, err)) || (rc = op_of(op, &mop, err)) ||
        (rc = start(&r, "all_reduce", err)))
        return rc;
    return started(MPI_Iallreduce(MPI_IN_PLACE, t->data, n, dt, mop, comm_of(c, g), &r->req), r, req, err);
}

static int mpi_all_reduce(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int op, fs_error *err) {
    fs_comm_request *r = NULL;
    int rc = mpi_all_reduce_start(c, g, t, op, &r, err);
    return rc ? rc : mpi_wait(c, r, err);
}

static int mpi_broadcast(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int root, fs_error *err) {
    int n = 0, rc;
    MPI_Datatype dt = MPI_FLOAT;
    fs_comm_request *r = NULL;
    if ((rc = count_of(t, "broadcast", &n, &dt, err)) || (rc = start(&r, "broadcast", err))) return rc;
    if ((rc = started(MPI_Ibcast(t->data, n, dt, root, comm_of(c, g), &r->req), r, &r, err))) return rc;
    return mpi_wait(c, r, err);
}

static int mpi_all_gather(fs_comm *c, const fs_comm_group *g, const fs_tensor *in, fs_tensor *out, fs_error *err) {
    int n = 0, n_out = 0, rc;
    MPI_Datatype dt = MPI_FLOAT, dt_out = MPI_FLOAT;
    fs_comm_request *r = NULL;
    if ((rc = count_of(in, "all_gather", &n, &dt, err)) || (rc = count_of(out, "all_gather", &n_out, &dt_out, err)))
        return rc;
    int size = mpi_size(c, g);
    if (dt != dt_out || (size_t)n_out != (size_t)n * (size_t)size)
        return fs_error_set(err, FS_ERR_INVALID, "all_gather: out holds %d elements, needs %d x %d of in's dtype",
                            n_out, size, n);
    if ((rc = start(&r, "all_gather", err))) return rc;
    if ((rc = started(MPI_Iallgather(in->data, n, dt, out->data, n, dt, comm_of(c, g), &r->req), r, &r, err)))
        return rc;
    return mpi_wait(c, r, err);
}

static int mpi_reduce_scatter(fs_comm *c, const fs_comm_group *g, const fs_tensor *in, fs_tensor *out,
                              fs_error *err) {
    int n_in = 0, n = 0, rc;
    MPI_Datatype dt = MPI_FLOAT, dt_in = MPI_FLOAT;
    fs_comm_request *r = NULL;
    if ((rc = count_of(in, "reduce_scatter", &n_in, &dt_in, err)) ||
        (rc = count_of(out, "reduce_scatter", &n, &dt, err)))
        return rc;
    int size = mpi_size(c, g);
    if (dt != dt_in || (size_t)n_in != (size_t)n * (size_t)size)
        return fs_error_set(err, FS_ERR_INVALID, "reduce_scatter: in holds %d elements, needs %d x %d of out's dtype",
                            n_in, size, n);
    if ((rc = start(&r, "reduce_scatter", err))) return rc;
    rc = MPI_Ireduce_scatter_block(in->data, out->data, n, dt, MPI_SUM, comm_of(c, g), &r->req);
    if ((rc = started(rc, r, &r, err))) return rc;
    return mpi_wait(c, r, err);
}

static int mpi_send_start(fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag,
                          fs_comm_request **req, fs_error *err) {
    int n = 0, rc;
    MPI_Datatype dt = MPI_FLOAT;
    fs_comm_request *r = NULL;
    if ((rc = count_of(t, "send", &n, &dt, err)) || (rc = start(&r, "send", err))) return rc;
    return started(MPI_Isend(t->data, n, dt, peer, tag, comm_of(c, g), &r->req), r, req, err);
}

static int mpi_recv_start(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag,
                          fs_comm_request **req, fs_error *err) {
    int n = 0, rc;
    MPI_Datatype dt = MPI_FLOAT;
    fs_comm_request *r = NULL;
    if ((rc = count_of(t, "recv", &n, &dt, err)) || (rc = start(&r, "recv", err))) return rc;
    return started(MPI_Irecv(t->data, n, dt, peer, tag, comm_of(c, g), &r->req), r, req, err);
}

static int mpi_send(fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag, fs_error *err) {
    fs_comm_request *r = NULL;
    int rc = mpi_send_start(c, g, t, peer, tag, &r, err);
    return rc ? rc : mpi_wait(c, r, err);
}

static int mpi_recv(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag, fs_error *err) {
    fs_comm_request *r = NULL;
    int rc = mpi_recv_start(c, g, t, peer, tag, &r, err);
    return rc ? rc : mpi_wait(c, r, err);
}

static int mpi_barrier(fs_comm *c, const fs_comm_group *g, fs_error *err) {
    fs_comm_request *r = NULL;
    int rc = start(&r, "barrier", err);
    if (rc || (rc = started(MPI_Ibarrier(comm_of(c, g), &r->req), r, &r, err))) return rc;
    return mpi_wait(c, r, err);
}

int fs_comm_mpi_start(fs_comm *c, double timeout_s, fs_error *err) {
    memset(c, 0, sizeof *c);
    int inited = 0, provided = 0, rc;
    MPI_Initialized(&inited);
    if (!inited && (rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS)
        return mpi_fail(err, rc, "MPI_Init_thread");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    mpi_world *w = calloc(1, sizeof *w);
    if (!w) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    /* a communicator of our own: nothing else in the process (a library
     * that also uses MPI) can mix its messages with ours */
    if ((rc = MPI_Comm_dup(MPI_COMM_WORLD, &w->world)) != MPI_SUCCESS) {
        free(w);
        return mpi_fail(err, rc, "MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(w->world, MPI_ERRORS_RETURN);
    MPI_Comm local;
    w->local_size = 1;
    if (MPI_Comm_split_type(w->world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
        MPI_Comm_size(local, &w->local_size);
        MPI_Comm_rank(local, &w->local_rank);
        MPI_Comm_free(&local);
    }
    c->struct_size = sizeof *c;
    c->engine = "mpi";
    c->impl = w;
    c->rank = mpi_rank;
    c->size = mpi_size;
    c->group_split = mpi_group_split;
    c->group_free = mpi_group_free;
    c->all_reduce = mpi_all_reduce;
    c->all_reduce_start = mpi_all_reduce_start;
    c->wait = mpi_wait;
    c->broadcast = mpi_broadcast;
    c->all_gather = mpi_all_gather;
    c->send = mpi_send;
    c->recv = mpi_recv;
    c->barrier = mpi_barrier;
    c->send_start = mpi_send_start;
    c->recv_start = mpi_recv_start;
    c->reduce_scatter = mpi_reduce_scatter;
    c->timeout_s = timeout_s;
    c->test = mpi_test;
    return FS_OK;
}

int fs_comm_mpi_local_size(const fs_comm *c) { return c && c->impl ? ((const mpi_world *)c->impl)->local_size : 1; }
int fs_comm_mpi_local_rank(const fs_comm *c) { return c && c->impl ? ((const mpi_world *)c->impl)->local_rank : 0; }

void fs_comm_mpi_finish(fs_comm *c) {
    if (!c || !c->impl) return;
    mpi_world *w = c->impl;
    MPI_Comm_free(&w->world);
    free(w);
    c->impl = NULL;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

void fs_comm_mpi_abort(fs_comm *c, int code) {
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, code);
}

#else /* !FS_WITH_MPI */

#include <string.h>

int fs_comm_mpi_available(void) { return 0; }
const char *fs_comm_mpi_version(void) { return "not built (install libopenmpi-dev and rebuild)"; }
int fs_comm_mpi_start(fs_comm *c, double timeout_s, fs_error *err) {
    (void)timeout_s;
    memset(c, 0, sizeof *c);
    return fs_error_set(err, FS_ERR_UNSUPPORTED,
                        "this fsrun was built without MPI: install libopenmpi-dev (scripts/setup.sh does) and "
                        "rebuild");
}
int fs_comm_mpi_local_size(const fs_comm *c) { (void)c; return 1; }
int fs_comm_mpi_local_rank(const fs_comm *c) { (void)c; return 0; }
void fs_comm_mpi_finish(fs_comm *c) { (void)c; }
void fs_comm_mpi_abort(fs_comm *c, int code) { (void)c, (void)code; }

#endif
