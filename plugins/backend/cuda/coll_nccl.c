/* coll_nccl.c — the cuda backend's collectives: NCCL on device buffers.
 *
 * The runtime bootstraps a communicator the NCCL way (runtime/dist/
 * comm_coll.c): one rank makes the unique id (coll_id), MPI broadcasts it,
 * every rank calls coll_create with its rank. Calls are queued on the
 * stream they are given (comm_coll.c gives them a stream of their own, so
 * an all-reduce of one bucket of gradients runs while backward computes the
 * next). Communicators are non-blocking (ncclConfig_t.blocking = 0): no
 * call waits for a peer on the host, coll_check reports a peer's failure
 * and coll_abort ends a communicator whose peer died, so a rank never
 * hangs in NCCL. */
#include <nccl.h>
#include <sched.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"
#include "fastserve/comm.h"

struct fs_backend_coll {
    ncclComm_t comm;
};

static int nccl_fail(const cuda_backend *cb, fs_error *err, ncclResult_t r, const char *what) {
    if (r == ncclSuccess || r == ncclInProgress) return FS_OK;
    return cb->host->error_set(err, r == ncclSystemError || r == ncclRemoteError ? FS_ERR_COMM : FS_ERR_RUNTIME,
                               "cuda backend: NCCL %s: %s%s%s", what, ncclGetErrorString(r),
                               ncclGetLastError(NULL) ? ": " : "", ncclGetLastError(NULL) ? ncclGetLastError(NULL) : "");
}

static int nccl_type(const cuda_backend *cb, int32_t dtype, ncclDataType_t *t, fs_error *err) {
    switch (dtype) {
    case FS_DTYPE_F32: *t = ncclFloat32; return FS_OK;
    case FS_DTYPE_BF16: *t = ncclBfloat16; return FS_OK;
    case FS_DTYPE_F16: *t = ncclFloat16; return FS_OK;
    case FS_DTYPE_F64: *t = ncclFloat64; return FS_OK;
    case FS_DTYPE_I32: *t = ncclInt32; return FS_OK;
    default: return cb->host->error_set(err, FS_ERR_UNSUPPORTED, "cuda backend: NCCL: dtype %d", (int)dtype);
    }
}

static int nccl_op(const cuda_backend *cb, int32_t op, ncclRedOp_t *o, fs_error *err) {
    switch (op) {
    case FS_REDUCE_SUM: *o = ncclSum; return FS_OK;
    case FS_REDUCE_MAX: *o = ncclMax; return FS_OK;
    case FS_REDUCE_MIN: *o = ncclMin; return FS_OK;
    default: return cb->host->error_set(err, FS_ERR_INVALID, "cuda backend: NCCL: reduction %d", (int)op);
    }
}

/* Seconds a non-blocking call may stay ncclInProgress before the peer is
 * taken for dead: the runtime's default [parallel] timeout. A set-up or a
 * queued call that never settles is then ncclRemoteError (FS_ERR_COMM),
 * and the caller aborts the communicator. */
#define FS_NCCL_SETTLE_S 300.0

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A non-blocking communicator returns ncclInProgress from its set-up and,
 * NCCL's rule, from any call whose kernel it has not queued yet (the first
 * use of a connection): nothing that depends on the call (an event, a
 * synchronisation) may be issued until it settles. Every rank makes the
 * same calls, so the wait is for the peers' matching ones. */
static ncclResult_t settle(ncclComm_t comm) {
    ncclResult_t state = ncclInProgress;
    double deadline = now_s() + FS_NCCL_SETTLE_S;
    while (state == ncclInProgress) {
        if (ncclCommGetAsyncError(comm, &state) != ncclSuccess) return ncclInternalError;
        if (state != ncclInProgress) break;
        if (now_s() > deadline) return ncclRemoteError;
        sched_yield();
    }
    return state;
}

/* A call's result, settled: at once outside a group; inside one, once
 * ncclGroupEnd has queued the group (fs_nccl_group). */
static ncclResult_t queued(cuda_backend *cb, fs_backend_coll *c, ncclResult_t r) {
    if (r != ncclInProgress) return r;
    if (cb->group_depth == 0) return settle(c->comm);
    for (size_t i = 0; i < cb->n_group_colls; i++)
        if (cb->group_colls[i] == c) return ncclSuccess;
    if (cb->n_group_colls == FS_NCCL_GROUP_COLLS) return ncclInvalidUsage;
    cb->group_colls[cb->n_group_colls++] = c;
    return ncclSuccess;
}

int fs_nccl_id(void *self, uint8_t id[FS_BACKEND_COLL_ID_BYTES], fs_error *err) {
    cuda_backend *cb = self;
    ncclUniqueId u;
    _Static_assert(sizeof u <= FS_BACKEND_COLL_ID_BYTES, "NCCL's unique id fits FS_BACKEND_COLL_ID_BYTES");
    int rc = nccl_fail(cb, err, ncclGetUniqueId(&u), "ncclGetUniqueId");
    if (!rc) {
        memset(id, 0, FS_BACKEND_COLL_ID_BYTES);
        memcpy(id, &u, sizeof u);
    }
    return rc;
}

int fs_nccl_create(void *self, fs_backend_coll **out, const uint8_t id[FS_BACKEND_COLL_ID_BYTES], int n_ranks, int rank,
                   fs_error *err) {
    cuda_backend *cb = self;
    *out = NULL;
    int rc = fs_cuda_enter(cb, err);
    if (rc) return rc;
    fs_backend_coll *c = calloc(1, sizeof *c);
    if (!c) return cb->host->error_set(err, FS_ERR_NOMEM, "cuda backend: out of memory");
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&c->comm, n_ranks, u, rank, &config);
    if (r == ncclSuccess || r == ncclInProgress) r = settle(c->comm);
    if ((rc = nccl_fail(cb, err, r, "ncclCommInitRankConfig"))) {
        if (c->comm) ncclCommAbort(c->comm);
        free(c);
        return rc;
    }
    *out = c;
    return FS_OK;
}

int fs_nccl_split(void *self, fs_backend_coll *c, int color, int key, fs_backend_coll **out, fs_error *err) {
    cuda_backend *cb = self;
    *out = NULL;
    int rc = fs_cuda_enter(cb, err);
    if (rc) return rc;
    fs_backend_coll *n = calloc(1, sizeof *n);
    if (!n) return cb->host->error_set(err, FS_ERR_NOMEM, "cuda backend: out of memory");
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommSplit(c->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &n->comm, &config);
    if (r == ncclSuccess || r == ncclInProgress) r = settle(c->comm);
    if (r == ncclSuccess && n->comm) r = settle(n->comm);
    if ((rc = nccl_fail(cb, err, r, "ncclCommSplit")) || !n->comm) {
        if (n->comm) ncclCommAbort(n->comm);
        free(n);
        return rc;
    }
    *out = n;
    return FS_OK;
}

void fs_nccl_destroy(void *self, fs_backend_coll *c) {
    cuda_backend *cb = self;
    if (!c) return;
    cudaSetDevice(cb->device);
    if (c->comm) { /* an aborted one is gone already */
        ncclResult_t r = ncclCommFinalize(c->comm);
        if (r == ncclSuccess || r == ncclInProgress) settle(c->comm);
        ncclCommDestroy(c->comm);
    }
    free(c);
}

/* Validates the element type, enters the device and converts the op. */
#define PREP(cb, err, dtype, t)                                          \
    do {                                                                 \
        int rc_ = nccl_type((cb), (dtype), &(t), (err));                 \
        if (!rc_) rc_ = fs_cuda_enter((cb), (err));                      \
        if (rc_) return rc_;                                             \
    } while (0)

int fs_nccl_all_reduce(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count, int32_t dtype,
                       int32_t op, fs_error *err) {
    cuda_backend *cb = self;
    ncclDataType_t t = ncclFloat32;
    ncclRedOp_t o = ncclSum;
    PREP(cb, err, dtype, t);
    int rc = nccl_op(cb, op, &o, err);
    if (rc) return rc;
    return nccl_fail(cb, err, queued(cb, c, ncclAllReduce(buf, buf, count, t, o, c->comm, fs_cuda_stream(cb, s))), "ncclAllReduce");
}

int fs_nccl_broadcast(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count, int32_t dtype,
                      int root, fs_error *err) {
    cuda_backend *cb = self;
    ncclDataType_t t = ncclFloat32;
    PREP(cb, err, dtype, t);
    return nccl_fail(cb, err, queued(cb, c, ncclBroadcast(buf, buf, count, t, root, c->comm, fs_cuda_stream(cb, s))), "ncclBroadcast");
}

int fs_nccl_all_gather(void *self, fs_backend_coll *c, fs_backend_stream *s, void *out, const void *in, size_t count,
                       int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    ncclDataType_t t = ncclFloat32;
    PREP(cb, err, dtype, t);
    return nccl_fail(cb, err, queued(cb, c, ncclAllGather(in, out, count, t, c->comm, fs_cuda_stream(cb, s))), "ncclAllGather");
}

int fs_nccl_reduce_scatter(void *self, fs_backend_coll *c, fs_backend_stream *s, void *out, const void *in,
                           size_t count, int32_t dtype, int32_t op, fs_error *err) {
    cuda_backend *cb = self;
    ncclDataType_t t = ncclFloat32;
    ncclRedOp_t o = ncclSum;
    PREP(cb, err, dtype, t);
    int rc = nccl_op(cb, op, &o, err);
    if (rc) return rc;
    return nccl_fail(cb, err, queued(cb, c, ncclReduceScatter(in, out, count, t, o, c->comm, fs_cuda_stream(cb, s))),
                     "ncclReduceScatter");
}

int fs_nccl_send(void *self, fs_backend_coll *c, fs_backend_stream *s, const void *buf, size_t count, int32_t dtype,
                 int peer, fs_error *err) {
    cuda_backend *cb = self;
    ncclDataType_t t = ncclFloat32;
    PREP(cb, err, dtype, t);
    return nccl_fail(cb, err, queued(cb, c, ncclSend(buf, count, t, peer, c->comm, fs_cuda_stream(cb, s))), "ncclSend");
}

int fs_nccl_recv(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count, int32_t dtype, int peer,
                 fs_error *err) {
    cuda_backend *cb = self;
    ncclDataType_t t = ncclFloat32;
    PREP(cb, err, dtype, t);
    return nccl_fail(cb, err, queued(cb, c, ncclRecv(buf, count, t, peer, c->comm, fs_cuda_stream(cb, s))), "ncclRecv");
}

int fs_nccl_group(void *self, int begin, fs_error *err) {
    cuda_backend *cb = self;
    if (begin) {
        if (cb->group_depth++ == 0) cb->n_group_colls = 0;
        return nccl_fail(cb, err, ncclGroupStart(), "ncclGroupStart");
    }
    if (cb->group_depth == 0)
        return cb->host->error_set(err, FS_ERR_INVALID, "cuda backend: coll_group(0) without coll_group(1)");
    ncclResult_t r = ncclGroupEnd();
    if (--cb->group_depth > 0) return nccl_fail(cb, err, r, "ncclGroupEnd");
    for (size_t i = 0; i < cb->n_group_colls && (r == ncclSuccess || r == ncclInProgress); i++)
        r = settle(cb->group_colls[i]->comm);
    cb->n_group_colls = 0;
    return nccl_fail(cb, err, r, "ncclGroupEnd");
}

int fs_nccl_check(void *self, fs_backend_coll *c, fs_error *err) {
    cuda_backend *cb = self;
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(c->comm, &state);
    if (r != ncclSuccess) return nccl_fail(cb, err, r, "ncclCommGetAsyncError");
    return nccl_fail(cb, err, state, "a peer");
}

void fs_nccl_abort(void *self, fs_backend_coll *c) {
    cuda_backend *cb = self;
    if (!c) return;
    cudaSetDevice(cb->device);
    ncclCommAbort(c->comm);
    c->comm = NULL;
}
