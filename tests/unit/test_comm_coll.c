/* test_comm_coll.c — dist/comm_coll.c's engine on a fake backend.
 *
 * The fake is a compute backend whose device memory is host memory and
 * whose streams run at once; its coll_* members are MPI's (a dup of
 * MPI_COMM_WORLD, MPI_Comm_split; sends and receives buffered between
 * coll_group(1) and coll_group(0) and posted together there) when this
 * process is one of several ranks, and the identity of one rank otherwise.
 * It counts its calls, logs stream and event traffic (so the tests see the
 * engine's stream wait for the compute stream before a call and the compute
 * stream wait for it after), reports a failed peer from coll_check on
 * demand, and can keep every event from completing (the timeout).
 *
 * Run alone (ctest) the world is one rank on the self communicator: the
 * collectives are identities, and ordering, grouping and the failure paths
 * are checked all the same. tests/e2e/test_comm_coll.sh runs it under
 * mpirun with 2 and 3 ranks, where every value is checked against what
 * each rank computes by hand. A rank that fails leaves the others to the
 * engine's timeout (10 s here) rather than a hang. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/host.h"
#include "dist/comm_coll.h"
#include "test_world.h"

#if FS_WITH_MPI
#include <mpi.h>
#endif

/* ---- the fake backend ---- */

enum { C_ID, C_CREATE, C_SPLIT, C_DESTROY, C_ALL_REDUCE, C_BROADCAST, C_ALL_GATHER, C_REDUCE_SCATTER, C_SEND,
       C_RECV, C_GROUP_BEGIN, C_GROUP_END, C_CHECK, C_ABORT, C_QUERY, N_COUNTS };
enum { L_RECORD, L_WAIT, L_QUERY, L_COLL };
#define COMPUTE 0 /* the compute stream's id */
#define MAX_LOG 512
#define MAX_P2P 16

struct fs_backend_stream {
    int id, priority;
};
struct fs_backend_event {
    int id;
};
struct fs_backend_coll {
#if FS_WITH_MPI
    MPI_Comm comm;
#endif
    int mpi; /* 0: one rank, the identity */
    int color, key, aborted;
};

typedef struct log_entry {
    int kind, stream, event, call;
} log_entry;

typedef struct fake_p2p {
    int send;
    void *buf;
    size_t bytes;
    int peer;
    fs_backend_coll *c;
} fake_p2p;

static struct {
    int n[N_COUNTS];
    int fail_check;  /* coll_check reports a failed peer */
    int stall;       /* event_query never completes */
    int fail_create; /* coll_create fails (after its collectives: the peers still finish theirs) */
    int group_depth, max_group, p2p_outside_group;
    fake_p2p q[MAX_P2P];
    int nq;
    log_entry log[MAX_LOG];
    int n_log;
    int next_stream, next_event, own_stream, own_priority;
    int live_streams, live_events, live_colls, live_allocs;
    uint8_t id[FS_BACKEND_COLL_ID_BYTES]; /* what coll_id made */
    int id_ok;                            /* coll_create got rank 0's id */
    int create_ranks, create_rank;
    int32_t last_dtype, last_op;
    size_t last_count;
} F;

static struct fs_backend_stream compute = {COMPUTE, 0};

static void note(int kind, int stream, int event, int call) {
    if (F.n_log < MAX_LOG) F.log[F.n_log++] = (log_entry){kind, stream, event, call};
}

static void count(int call, fs_backend_coll *c) {
    F.n[call]++;
    note(L_COLL, -1, -1, call);
    if (c) assert_false(c->aborted); /* nothing is queued on an aborted communicator */
}

static size_t elem_size(int32_t d) { return d == FS_DTYPE_F64 ? 8 : d == FS_DTYPE_F16 || d == FS_DTYPE_BF16 ? 2 : 4; }

static int fake_alloc(void *self, void **ptr, size_t bytes, int32_t mem, fs_error *err) {
    (void)self, (void)mem, (void)err;
    *ptr = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    F.live_allocs++;
    return *ptr ? FS_OK : FS_ERR_NOMEM;
}
static void fake_free(void *self, void *ptr, int32_t mem) {
    (void)self, (void)mem;
    if (ptr) F.live_allocs--;
    free(ptr);
}
static int fake_copy(void *self, fs_backend_stream *s, void *dst, const void *src, size_t bytes, int32_t kind,
                     fs_error *err) {
    (void)self, (void)s, (void)kind, (void)err;
    memcpy(dst, src, bytes);
    return FS_OK;
}
static int fake_memset(void *self, fs_backend_stream *s, void *ptr, int value, size_t bytes, fs_error *err) {
    (void)self, (void)s, (void)err;
    memset(ptr, value, bytes);
    return FS_OK;
}
static int fake_stream_create(void *self, fs_backend_stream **s, int32_t priority, fs_error *err) {
    (void)self, (void)err;
    *s = malloc(sizeof **s);
    **s = (fs_backend_stream){++F.next_stream, priority};
    F.own_stream = (*s)->id;
    F.own_priority = priority;
    F.live_streams++;
    return FS_OK;
}
static void fake_stream_destroy(void *self, fs_backend_stream *s) {
    (void)self;
    F.live_streams--;
    free(s);
}
static int fake_ok(void *self, fs_error *err) { (void)self, (void)err; return FS_OK; }
static int fake_stream_synchronize(void *self, fs_backend_stream *s, fs_error *err) {
    (void)s;
    return fake_ok(self, err);
}
static int fake_event_create(void *self, fs_backend_event **e, fs_error *err) {
    (void)self, (void)err;
    *e = malloc(sizeof **e);
    (*e)->id = ++F.next_event;
    F.live_events++;
    return FS_OK;
}
static void fake_event_destroy(void *self, fs_backend_event *e) {
    (void)self;
    F.live_events--;
    free(e);
}
static int fake_event_record(void *self, fs_backend_event *e, fs_backend_stream *s, fs_error *err) {
    (void)self, (void)err;
    note(L_RECORD, s->id, e->id, -1);
    return FS_OK;
}
static int fake_stream_wait_event(void *self, fs_backend_stream *s, fs_backend_event *e, fs_error *err) {
    (void)self, (void)err;
    note(L_WAIT, s->id, e->id, -1);
    return FS_OK;
}
static int fake_event_query(void *self, fs_backend_event *e, int *done, fs_error *err) {
    (void)self, (void)err;
    F.n[C_QUERY]++;
    *done = !F.stall;
    if (*done) note(L_QUERY, -1, e->id, -1);
    return FS_OK;
}
static int fake_event_synchronize(void *self, fs_backend_event *e, fs_error *err) {
    (void)e;
    return fake_ok(self, err);
}
static fs_backend_stream *fake_default_stream(void *self) { (void)self; return &compute; }

/* ---- the fake's collectives ---- */

static int fake_id(void *self, uint8_t id[FS_BACKEND_COLL_ID_BYTES], fs_error *err) {
    (void)self, (void)err;
    count(C_ID, NULL);
    /* rank 0's own: its pid and rank in front of a fixed pattern */
    uint32_t pid = (uint32_t)getpid();
    for (int i = 0; i < FS_BACKEND_COLL_ID_BYTES; i++) id[i] = (uint8_t)(i * 37 + 11);
    memcpy(id, &pid, sizeof pid);
    id[4] = (uint8_t)g_rank;
    memcpy(F.id, id, sizeof F.id);
    return FS_OK;
}

static int fake_create(void *self, fs_backend_coll **out, const uint8_t id[FS_BACKEND_COLL_ID_BYTES], int n_ranks,
                       int rank, fs_error *err) {
    (void)self;
    count(C_CREATE, NULL);
    F.create_ranks = n_ranks;
    F.create_rank = rank;
    fs_backend_coll *c = calloc(1, sizeof *c);
    /* the id must be rank 0's: every rank compares it with what rank 0 made,
     * sent again over MPI behind the engine's back */
    uint8_t want[FS_BACKEND_COLL_ID_BYTES];
    memcpy(want, F.id, sizeof want);
#if FS_WITH_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    c->mpi = inited;
    if (c->mpi) {
        MPI_Bcast(want, FS_BACKEND_COLL_ID_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD);
        MPI_Comm_dup(MPI_COMM_WORLD, &c->comm);
    }
#endif
    F.id_ok = memcmp(want, id, sizeof want) == 0 && id[4] == 0;
    if (F.fail_create) { /* as NCCL's: nothing made */
#if FS_WITH_MPI
        if (c->mpi) MPI_Comm_free(&c->comm);
#endif
        free(c);
        *out = NULL;
        return fs_error_set(err, FS_ERR_RUNTIME, "fake: coll_create failed on rank %d", g_rank);
    }
    F.live_colls++;
    *out = c;
    return FS_OK;
}

static int fake_split(void *self, fs_backend_coll *c, int color, int key, fs_backend_coll **out, fs_error *err) {
    (void)self, (void)err;
    count(C_SPLIT, c);
    fs_backend_coll *n = calloc(1, sizeof *n);
    n->mpi = c->mpi;
    n->color = color;
    n->key = key;
#if FS_WITH_MPI
    if (c->mpi) MPI_Comm_split(c->comm, color, key, &n->comm);
#endif
    F.live_colls++;
    *out = n;
    return FS_OK;
}

static void fake_destroy(void *self, fs_backend_coll *c) {
    (void)self;
    count(C_DESTROY, NULL);
#if FS_WITH_MPI
    if (c->mpi) MPI_Comm_free(&c->comm);
#endif
    F.live_colls--;
    free(c);
}

#if FS_WITH_MPI
static MPI_Datatype mpi_type(int32_t d) {
    return d == FS_DTYPE_F32 ? MPI_FLOAT : d == FS_DTYPE_F64 ? MPI_DOUBLE : d == FS_DTYPE_I32 ? MPI_INT32_T
                                                                                            : MPI_DATATYPE_NULL;
}
static MPI_Op mpi_op(int32_t op) { return op == FS_REDUCE_MAX ? MPI_MAX : op == FS_REDUCE_MIN ? MPI_MIN : MPI_SUM; }

/* bf16 through f32 (the test's values are small integers: exact) */
static void bf16_all_reduce(fs_backend_coll *c, uint16_t *x, size_t n, int32_t op) {
    float *f = malloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)x[i] << 16;
        memcpy(&f[i], &u, sizeof u);
    }
    MPI_Allreduce(MPI_IN_PLACE, f, (int)n, MPI_FLOAT, mpi_op(op), c->comm);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &f[i], sizeof u);
        x[i] = (uint16_t)(u >> 16);
    }
    free(f);
}
#endif

static void note_args(size_t n, int32_t dtype, int32_t op) {
    F.last_count = n;
    F.last_dtype = dtype;
    F.last_op = op;
}

static int fake_all_reduce(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t n, int32_t dtype,
                           int32_t op, fs_error *err) {
    (void)self, (void)err;
    count(C_ALL_REDUCE, c);
    note(L_COLL, s->id, -1, C_ALL_REDUCE);
    note_args(n, dtype, op);
#if FS_WITH_MPI
    if (c->mpi && dtype == FS_DTYPE_BF16) bf16_all_reduce(c, buf, n, op);
    else if (c->mpi) MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, mpi_type(dtype), mpi_op(op), c->comm);
#else
    (void)buf;
#endif
    return FS_OK;
}

static int fake_broadcast(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t n, int32_t dtype,
                          int root, fs_error *err) {
    (void)self, (void)err, (void)buf, (void)root;
    count(C_BROADCAST, c);
    note(L_COLL, s->id, -1, C_BROADCAST);
    note_args(n, dtype, -1);
#if FS_WITH_MPI
    if (c->mpi) MPI_Bcast(buf, (int)(n * elem_size(dtype)), MPI_BYTE, root, c->comm);
#endif
    return FS_OK;
}

static int fake_all_gather(void *self, fs_backend_coll *c, fs_backend_stream *s, void *out, const void *in, size_t n,
                           int32_t dtype, fs_error *err) {
    (void)self, (void)err;
    count(C_ALL_GATHER, c);
    note(L_COLL, s->id, -1, C_ALL_GATHER);
    note_args(n, dtype, -1);
    int bytes = (int)(n * elem_size(dtype));
#if FS_WITH_MPI
    if (c->mpi) {
        MPI_Allgather(in, bytes, MPI_BYTE, out, bytes, MPI_BYTE, c->comm);
        return FS_OK;
    }
#endif
    memcpy(out, in, (size_t)bytes);
    return FS_OK;
}

static int fake_reduce_scatter(void *self, fs_backend_coll *c, fs_backend_stream *s, void *out, const void *in,
                               size_t n, int32_t dtype, int32_t op, fs_error *err) {
    (void)self, (void)err;
    count(C_REDUCE_SCATTER, c);
    note(L_COLL, s->id, -1, C_REDUCE_SCATTER);
    note_args(n, dtype, op);
#if FS_WITH_MPI
    if (c->mpi) {
        MPI_Reduce_scatter_block(in, out, (int)n, mpi_type(dtype), mpi_op(op), c->comm);
        return FS_OK;
    }
#endif
    memcpy(out, in, n * elem_size(dtype));
    return FS_OK;
}

/* Outside a group a send or recv would block (NCCL's would block the
 * stream): counted, so the tests see the engine never does it. */
static int queue_p2p(fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t n, int32_t dtype, int peer, int send) {
    count(send ? C_SEND : C_RECV, c);
    note(L_COLL, s->id, -1, send ? C_SEND : C_RECV);
    if (F.group_depth == 0) {
        F.p2p_outside_group++;
        return FS_ERR_INVALID;
    }
    if (F.nq == MAX_P2P) return FS_ERR_RUNTIME;
    F.q[F.nq++] = (fake_p2p){send, buf, n * elem_size(dtype), peer, c};
    return FS_OK;
}
static int fake_send(void *self, fs_backend_coll *c, fs_backend_stream *s, const void *buf, size_t n, int32_t dtype,
                     int peer, fs_error *err) {
    (void)self, (void)err;
    return queue_p2p(c, s, (void *)buf, n, dtype, peer, 1);
}
static int fake_recv(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t n, int32_t dtype, int peer,
                     fs_error *err) {
    (void)self, (void)err;
    return queue_p2p(c, s, buf, n, dtype, peer, 0);
}

/* The group's sends and receives, posted together: MPI's non-blocking
 * calls and one Waitall, or on one rank the i-th send to oneself into the
 * i-th receive. */
static void post_group(void) {
#if FS_WITH_MPI
    if (F.nq && F.q[0].c->mpi) {
        MPI_Request reqs[MAX_P2P];
        for (int i = 0; i < F.nq; i++) {
            fake_p2p *p = &F.q[i];
            if (p->send) MPI_Isend(p->buf, (int)p->bytes, MPI_BYTE, p->peer, 0, p->c->comm, &reqs[i]);
            else MPI_Irecv(p->buf, (int)p->bytes, MPI_BYTE, p->peer, 0, p->c->comm, &reqs[i]);
        }
        MPI_Waitall(F.nq, reqs, MPI_STATUSES_IGNORE);
        return;
    }
#endif
    int next_send = 0;
    for (int i = 0; i < F.nq; i++) {
        if (F.q[i].send) continue;
        while (next_send < F.nq && !F.q[next_send].send) next_send++;
        assert_true(next_send < F.nq); /* a receive from oneself with no send to match */
        memcpy(F.q[i].buf, F.q[next_send].buf, F.q[i].bytes);
        next_send++;
    }
}

static int fake_group(void *self, int begin, fs_error *err) {
    (void)self, (void)err;
    count(begin ? C_GROUP_BEGIN : C_GROUP_END, NULL);
    if (begin) {
        if (F.group_depth++ == 0) F.nq = 0;
        return FS_OK;
    }
    assert_true(F.group_depth > 0);
    if (--F.group_depth == 0) {
        if (F.nq > F.max_group) F.max_group = F.nq;
        post_group();
        F.nq = 0;
    }
    return FS_OK;
}

static int fake_check(void *self, fs_backend_coll *c, fs_error *err) {
    (void)self, (void)c;
    F.n[C_CHECK]++;
    return F.fail_check ? fs_error_set(err, FS_ERR_COMM, "fake: a peer failed") : FS_OK;
}

static void fake_abort(void *self, fs_backend_coll *c) {
    (void)self;
    F.n[C_ABORT]++;
    c->aborted = 1;
}

static const fs_backend_vtable fake_vt = {
    .struct_size = sizeof(fs_backend_vtable),
    .flags = FS_BACKEND_ASYNC | FS_BACKEND_COLLECTIVES,
    .device_type = FS_DEVICE_CPU,
    .alloc = fake_alloc,
    .free = fake_free,
    .copy = fake_copy,
    .memset = fake_memset,
    .stream_create = fake_stream_create,
    .stream_destroy = fake_stream_destroy,
    .stream_synchronize = fake_stream_synchronize,
    .event_create = fake_event_create,
    .event_destroy = fake_event_destroy,
    .event_record = fake_event_record,
    .stream_wait_event = fake_stream_wait_event,
    .event_query = fake_event_query,
    .event_synchronize = fake_event_synchronize,
    .synchronize = fake_ok,
    .default_stream = fake_default_stream,
    .coll_id = fake_id,
    .coll_create = fake_create,
    .coll_split = fake_split,
    .coll_destroy = fake_destroy,
    .coll_all_reduce = fake_all_reduce,
    .coll_broadcast = fake_broadcast,
    .coll_all_gather = fake_all_gather,
    .coll_reduce_scatter = fake_reduce_scatter,
    .coll_send = fake_send,
    .coll_recv = fake_recv,
    .coll_group = fake_group,
    .coll_check = fake_check,
    .coll_abort = fake_abort,
};

/* ---- helpers ---- */

static fs_backend_handle B;

static fs_comm *open_on(const fs_backend_vtable *vt, int32_t device_type, int *rc, fs_error *err) {
    memset(&F, 0, sizeof F);
    memset(&B, 0, sizeof B);
    B.vt = vt;
    B.self = &F;
    B.device.type = device_type;
    fs_comm *c = NULL;
    *rc = fs_comm_coll_create(&c, &B, g_world, err);
    return c;
}

static fs_comm *open_engine(void) {
    fs_error err = {0};
    int rc;
    fs_comm *c = open_on(&fake_vt, FS_DEVICE_CPU, &rc, &err);
    if (rc) fail_msg("fs_comm_coll_create: %s", err.message);
    c->timeout_s = 10;
    return c;
}

/* Destroys it and checks nothing of the fake's was left behind. */
static void close_engine(fs_comm *c) {
    F.stall = F.fail_check = 0;
    fs_comm_coll_destroy(c);
    assert_int_equal(F.live_streams, 0);
    assert_int_equal(F.live_events, 0);
    assert_int_equal(F.live_colls, 0);
    assert_int_equal(F.live_allocs, 0);
}

static fs_tensor tensor(void *data, int32_t dtype, size_t n) {
    return (fs_tensor){.data = data, .dtype = dtype, .device = {FS_DEVICE_CPU, 0}, .ndim = 1, .shape = {n}};
}

static int find_log(int from, int kind, int stream, int event, int call) {
    for (int i = from < 0 ? 0 : from; i < F.n_log; i++) {
        const log_entry *l = &F.log[i];
        if (l->kind == kind && (stream < 0 || l->stream == stream) && (event < 0 || l->event == event) &&
            (call < 0 || l->call == call))
            return i;
    }
    return -1;
}

/* A blocking call's order: an event recorded on the compute stream, the
 * engine's stream waiting for it, the call on the engine's stream, its
 * event recorded there, seen complete, then the compute stream waiting
 * for it. */
static void check_blocking_order(int call) {
    int q = find_log(0, L_COLL, F.own_stream, -1, call);
    assert_true(q >= 0);
    int rec = -1; /* the last record on the compute stream before the call */
    for (int i = 0; i < q; i++)
        if (F.log[i].kind == L_RECORD && F.log[i].stream == COMPUTE) rec = i;
    assert_true(rec >= 0);
    int w = find_log(rec + 1, L_WAIT, F.own_stream, F.log[rec].event, -1);
    assert_true(w > rec && w < q);
    int done = find_log(q + 1, L_RECORD, F.own_stream, -1, -1);
    assert_true(done > q);
    int seen = find_log(done + 1, L_QUERY, -1, F.log[done].event, -1);
    int back = find_log(done + 1, L_WAIT, COMPUTE, F.log[done].event, -1);
    assert_true(seen > done && back > seen);
}

/* ---- create ---- */

static void test_create(void **state) {
    (void)state;
    g_world->timeout_s = 7;
    fs_comm *c = open_engine();
    g_world->timeout_s = 10;
    assert_int_equal(c->struct_size, sizeof(fs_comm));
    assert_string_equal(c->engine, "coll");
    assert_int_equal(c->rank(c, NULL), g_rank);
    assert_int_equal(c->size(c, NULL), g_size);
    /* the bootstrap: rank 0 alone makes the id, every rank creates with it */
    assert_int_equal(F.n[C_ID], g_rank == 0);
    assert_int_equal(F.n[C_CREATE], 1);
    assert_true(F.id_ok);
    assert_int_equal(F.create_ranks, g_size);
    assert_int_equal(F.create_rank, g_rank);
    assert_int_equal(F.own_priority, 1);
    assert_int_equal(F.live_streams, 1);
    close_engine(c);
    /* create copies the host's timeout (open_engine sets its own after) */
    int rc;
    fs_error err = {0};
    g_world->timeout_s = 7;
    c = open_on(&fake_vt, FS_DEVICE_CUDA, &rc, &err);
    g_world->timeout_s = 10;
    assert_int_equal(rc, 0);
    assert_true(c->timeout_s == 7);
    assert_string_equal(c->engine, "nccl");
    close_engine(c);
}

/* Refused before any collective, so every rank refuses alike. */
static void test_refuses_backend(void **state) {
    (void)state;
    fs_error err = {0};
    int rc;
    fs_backend_vtable vt = fake_vt;
    vt.flags = FS_BACKEND_ASYNC;
    assert_null(open_on(&vt, FS_DEVICE_CPU, &rc, &err));
    assert_int_equal(rc, FS_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "FS_BACKEND_COLLECTIVES"));
    vt = fake_vt;
    vt.struct_size = (uint32_t)offsetof(fs_backend_vtable, coll_id);
    assert_null(open_on(&vt, FS_DEVICE_CPU, &rc, &err));
    assert_int_equal(rc, FS_ERR_ABI);
    vt = fake_vt;
    vt.coll_check = NULL;
    assert_null(open_on(&vt, FS_DEVICE_CPU, &rc, &err));
    assert_int_equal(rc, FS_ERR_ABI);
    assert_non_null(strstr(err.message, "coll_check"));
    assert_int_equal(F.n[C_ID] + F.n[C_CREATE], 0);
    assert_int_equal(F.live_streams + F.live_events + F.live_allocs, 0);
}

/* The last rank's coll_create fails: every rank fails, none hangs, and
 * nothing is left behind. */
static void test_create_fails_on_one_rank(void **state) {
    (void)state;
    fs_error err = {0};
    memset(&F, 0, sizeof F);
    memset(&B, 0, sizeof B);
    B.vt = &fake_vt;
    B.self = &F;
    F.fail_create = g_rank == g_size - 1;
    fs_comm *c = NULL;
    int rc = fs_comm_coll_create(&c, &B, g_world, &err);
    assert_null(c);
    if (g_rank == g_size - 1) {
        assert_int_equal(rc, FS_ERR_RUNTIME);
        assert_non_null(strstr(err.message, "coll_create"));
    } else {
        assert_int_equal(rc, FS_ERR_COMM);
        assert_non_null(strstr(err.message, "another rank"));
    }
    /* a communicator made is aborted, not finalized with failed peers */
    assert_int_equal(F.n[C_ABORT], g_rank != g_size - 1);
    assert_int_equal(F.live_streams + F.live_events + F.live_allocs + F.live_colls, 0);
}

/* ---- collectives ---- */

static void test_all_reduce(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    /* f32: rank r holds r + 1 + i / 4: the sum is W (W + 1) / 2 + W i / 4 */
    float x[6];
    for (int i = 0; i < 6; i++) x[i] = (float)(g_rank + 1) + 0.25f * (float)i;
    fs_tensor t = tensor(x, FS_DTYPE_F32, 6);
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), 0);
    for (int i = 0; i < 6; i++)
        assert_float_equal(x[i], (float)(g_size * (g_size + 1) / 2) + 0.25f * (float)(g_size * i), 0);
    assert_int_equal(F.last_op, FS_REDUCE_SUM);
    assert_int_equal(F.last_count, 6);
    x[0] = (float)g_rank;
    t.shape[0] = 1;
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_MAX, &err), 0);
    assert_float_equal(x[0], (float)(g_size - 1), 0);
    x[0] = (float)(g_rank + 3);
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_MIN, &err), 0);
    assert_float_equal(x[0], 3.0f, 0);
    /* f64: 0.5 (r + 1) sums to W (W + 1) / 4; max 0.5 W, min 0.5 */
    double d[3] = {0.5 * (g_rank + 1), 0.5 * (g_rank + 1), 0.5 * (g_rank + 1)};
    t = tensor(d, FS_DTYPE_F64, 1);
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), 0);
    assert_true(d[0] == 0.25 * g_size * (g_size + 1));
    t.data = &d[1];
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_MAX, &err), 0);
    assert_true(d[1] == 0.5 * g_size);
    t.data = &d[2];
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_MIN, &err), 0);
    assert_true(d[2] == 0.5);
    assert_int_equal(F.last_dtype, FS_DTYPE_F64);
    /* i32: r^2 + i sums to (W - 1) W (2W - 1) / 6 + W i; max 10 (W - 1), min -(W - 1) */
    int32_t k[4];
    for (int i = 0; i < 4; i++) k[i] = g_rank * g_rank + i;
    t = tensor(k, FS_DTYPE_I32, 4);
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), 0);
    for (int i = 0; i < 4; i++) assert_int_equal(k[i], (g_size - 1) * g_size * (2 * g_size - 1) / 6 + g_size * i);
    k[0] = 10 * g_rank;
    k[1] = -g_rank;
    t = tensor(k, FS_DTYPE_I32, 1);
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_MAX, &err), 0);
    assert_int_equal(k[0], 10 * (g_size - 1));
    t.data = &k[1];
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_MIN, &err), 0);
    assert_int_equal(k[1], -(g_size - 1));
    /* bf16 passes through as bf16: r + 1 (exact) sums to W (W + 1) / 2 */
    float one = (float)(g_rank + 1);
    uint32_t bits;
    memcpy(&bits, &one, sizeof bits);
    uint16_t h = (uint16_t)(bits >> 16);
    t = tensor(&h, FS_DTYPE_BF16, 1);
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), 0);
    assert_int_equal(F.last_dtype, FS_DTYPE_BF16);
    bits = (uint32_t)h << 16;
    memcpy(&one, &bits, sizeof one);
    assert_float_equal(one, (float)(g_size * (g_size + 1) / 2), 0);
    /* refused on every rank alike, before the backend sees them */
    int before = F.n[C_ALL_REDUCE];
    t = tensor(x, FS_DTYPE_F32, 1);
    assert_int_equal(c->all_reduce(c, NULL, &t, 7, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "all_reduce"));
    t.dtype = 9;
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), FS_ERR_UNSUPPORTED);
    assert_int_equal(F.n[C_ALL_REDUCE], before);
    close_engine(c);
}

static void test_all_reduce_start(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    size_t n = 1000;
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(g_rank + 1) * (float)(i % 5);
    fs_tensor t = tensor(x, FS_DTYPE_F32, n);
    fs_comm_request *req = NULL;
    F.n_log = 0;
    assert_int_equal(c->all_reduce_start(c, NULL, &t, FS_REDUCE_SUM, &req, &err), 0);
    assert_non_null(req);
    /* started, not completed: the compute stream waits only at wait() */
    int done_ev = find_log(find_log(0, L_COLL, F.own_stream, -1, C_ALL_REDUCE), L_RECORD, F.own_stream, -1, -1);
    assert_true(done_ev >= 0);
    assert_int_equal(find_log(0, L_WAIT, COMPUTE, -1, -1), -1);
    int done = 0;
    assert_int_equal(c->test(c, req, &done, &err), 0);
    assert_int_equal(done, 1); /* the fake's streams run at once */
    assert_int_equal(c->wait(c, req, &err), 0);
    assert_true(find_log(0, L_WAIT, COMPUTE, F.log[done_ev].event, -1) > done_ev);
    for (size_t i = 0; i < n; i++) assert_float_equal(x[i], (float)(g_size * (g_size + 1) / 2) * (float)(i % 5), 0);
    /* requests are reused: a second round makes no new events */
    int events = F.live_events;
    for (int round = 0; round < 3; round++) {
        assert_int_equal(c->all_reduce_start(c, NULL, &t, FS_REDUCE_MAX, &req, &err), 0);
        assert_int_equal(c->wait(c, req, &err), 0);
    }
    assert_int_equal(F.live_events, events);
    assert_int_equal(c->wait(c, NULL, &err), 0);
    free(x);
    close_engine(c);
}

static void test_ordering(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    float x = 1;
    fs_tensor t = tensor(&x, FS_DTYPE_F32, 1);
    F.n_log = 0;
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), 0);
    check_blocking_order(C_ALL_REDUCE);
    F.n_log = 0;
    assert_int_equal(c->broadcast(c, NULL, &t, 0, &err), 0);
    check_blocking_order(C_BROADCAST);
    /* deferred: the event on the compute stream at start; at wait, the
     * engine's stream waits for it, the group, the event re-recorded on the
     * engine's stream, then the compute stream waits */
    float s = (float)g_rank, r = -1;
    fs_tensor ts = tensor(&s, FS_DTYPE_F32, 1), tr = tensor(&r, FS_DTYPE_F32, 1);
    fs_comm_request *rs, *rr;
    F.n_log = 0;
    assert_int_equal(c->send_start(c, NULL, &ts, g_rank, 0, &rs, &err), 0);
    assert_int_equal(c->recv_start(c, NULL, &tr, g_rank, 0, &rr, &err), 0);
    int e_send = find_log(0, L_RECORD, COMPUTE, -1, -1);
    assert_true(e_send >= 0);
    int ev = F.log[e_send].event;
    assert_int_equal(F.n[C_SEND] + F.n[C_RECV], 0);
    assert_int_equal(c->wait(c, rs, &err), 0);
    int w = find_log(e_send, L_WAIT, F.own_stream, ev, -1);
    int begin = find_log(0, L_COLL, -1, -1, C_GROUP_BEGIN), end = find_log(0, L_COLL, -1, -1, C_GROUP_END);
    int sent = find_log(0, L_COLL, F.own_stream, -1, C_SEND), rec = find_log(end, L_RECORD, F.own_stream, ev, -1);
    int back = find_log(rec, L_WAIT, COMPUTE, ev, -1);
    assert_true(w > e_send && begin > w && sent > begin && end > sent && rec > end && back > rec);
    assert_int_equal(c->wait(c, rr, &err), 0);
    assert_float_equal(r, (float)g_rank, 0);
    close_engine(c);
}

static void test_broadcast_gather_scatter(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    /* broadcast from the last rank (not 0 when there are several) */
    float b[3] = {(float)(100 + g_rank), (float)(200 + g_rank), (float)g_rank};
    fs_tensor t = tensor(b, FS_DTYPE_F32, 3);
    assert_int_equal(c->broadcast(c, NULL, &t, g_size - 1, &err), 0);
    for (int i = 0; i < 3; i++) assert_float_equal(b[i], (float)(100 * (i + 1) * (i < 2) + g_size - 1), 0);
    /* f16 passes through (as bytes, here) */
    uint16_t h = (uint16_t)(0x3c00 + g_rank);
    t = tensor(&h, FS_DTYPE_F16, 1);
    assert_int_equal(c->broadcast(c, NULL, &t, g_size - 1, &err), 0);
    assert_int_equal(F.last_dtype, FS_DTYPE_F16);
    assert_int_equal(h, 0x3c00 + g_size - 1);
    assert_int_equal(c->broadcast(c, NULL, &t, g_size, &err), FS_ERR_INVALID);
    /* all_gather: rank r gives [r, -r] */
    float mine[2] = {(float)g_rank, (float)-g_rank}, all[2 * 8];
    fs_tensor in = tensor(mine, FS_DTYPE_F32, 2), out = tensor(all, FS_DTYPE_F32, 2 * (size_t)g_size);
    assert_int_equal(c->all_gather(c, NULL, &in, &out, &err), 0);
    for (int r = 0; r < g_size; r++) {
        assert_float_equal(all[2 * r], (float)r, 0);
        assert_float_equal(all[2 * r + 1], (float)-r, 0);
    }
    out.shape[0] = 2 * (size_t)g_size + 1;
    assert_int_equal(c->all_gather(c, NULL, &in, &out, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "all_gather"));
    /* reduce_scatter: in[j] = r + j over 2W elements; rank r gets block r
     * summed: sum_q (q + j) = W (W - 1) / 2 + W j, j = 2r, 2r + 1 */
    float big[2 * 8], part[2];
    for (int j = 0; j < 2 * g_size; j++) big[j] = (float)(g_rank + j);
    in = tensor(big, FS_DTYPE_F32, 2 * (size_t)g_size);
    out = tensor(part, FS_DTYPE_F32, 2);
    assert_int_equal(c->reduce_scatter(c, NULL, &in, &out, &err), 0);
    for (int j = 0; j < 2; j++)
        assert_float_equal(part[j], (float)(g_size * (g_size - 1) / 2 + g_size * (2 * g_rank + j)), 0);
    assert_int_equal(F.last_op, FS_REDUCE_SUM);
    assert_int_equal(F.last_count, 2);
    close_engine(c);
}

/* Blocking sends and receives round a ring: rank 0 sends first, every other
 * rank receives first, so no two wait for each other. */
static void test_send_recv_ring(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    float s[4], r[4];
    for (int i = 0; i < 4; i++) s[i] = (float)(1000 * g_rank + i);
    fs_tensor ts = tensor(s, FS_DTYPE_F32, 4), tr = tensor(r, FS_DTYPE_F32, 4);
    assert_int_equal(c->send(c, NULL, &ts, g_size, 0, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "send"));
    assert_int_equal(c->recv(c, NULL, &tr, -1, 0, &err), FS_ERR_INVALID);
    assert_int_equal(F.n[C_SEND] + F.n[C_RECV], 0);
    if (g_size > 1) {
        int next = (g_rank + 1) % g_size, prev = (g_rank + g_size - 1) % g_size;
        if (g_rank == 0) assert_int_equal(c->send(c, NULL, &ts, next, 0, &err), 0);
        assert_int_equal(c->recv(c, NULL, &tr, prev, 0, &err), 0);
        if (g_rank != 0) assert_int_equal(c->send(c, NULL, &ts, next, 0, &err), 0);
        for (int i = 0; i < 4; i++) assert_float_equal(r[i], (float)(1000 * prev + i), 0);
        assert_int_equal(F.n[C_GROUP_BEGIN], 2); /* each its own group */
        assert_int_equal(F.max_group, 1);
    }
    assert_int_equal(F.p2p_outside_group, 0);
    close_engine(c);
}

/* A pipeline's exchange: each rank receives from both neighbours and sends
 * to both at once, all started before any wait; they must go out in one
 * group, or blocking sends would wait for each other's receives. */
static void test_exchange(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    int next = (g_rank + 1) % g_size, prev = (g_rank + g_size - 1) % g_size;
    float fwd[3], bwd[3], from_prev[3] = {0}, from_next[3] = {0};
    for (int i = 0; i < 3; i++) {
        fwd[i] = (float)(10 * g_rank + i);
        bwd[i] = (float)(-10 * g_rank - i);
    }
    fs_tensor tf = tensor(fwd, FS_DTYPE_F32, 3), tb = tensor(bwd, FS_DTYPE_F32, 3);
    fs_tensor tp = tensor(from_prev, FS_DTYPE_F32, 3), tn = tensor(from_next, FS_DTYPE_F32, 3);
    fs_comm_request *req[4];
    assert_int_equal(c->recv_start(c, NULL, &tp, prev, 1, &req[0], &err), 0);
    assert_int_equal(c->recv_start(c, NULL, &tn, next, 2, &req[1], &err), 0);
    assert_int_equal(c->send_start(c, NULL, &tf, next, 1, &req[2], &err), 0);
    assert_int_equal(c->send_start(c, NULL, &tb, prev, 2, &req[3], &err), 0);
    assert_int_equal(F.n[C_SEND] + F.n[C_RECV] + F.n[C_GROUP_BEGIN], 0); /* only recorded */
    int done = 0;
    assert_int_equal(c->test(c, req[2], &done, &err), 0); /* the first test issues them all */
    assert_int_equal(F.n[C_GROUP_BEGIN], 1);
    assert_int_equal(F.n[C_GROUP_END], 1);
    assert_int_equal(F.max_group, 4);
    assert_int_equal(F.p2p_outside_group, 0);
    for (int i = 0; i < 4; i++) assert_int_equal(c->wait(c, req[i], &err), 0);
    assert_int_equal(F.n[C_GROUP_BEGIN], 1);
    for (int i = 0; i < 3; i++) {
        assert_float_equal(from_prev[i], (float)(10 * prev + i), 0);
        assert_float_equal(from_next[i], (float)(-10 * next - i), 0);
    }
    close_engine(c);
}

/* Even and odd ranks, ordered by key -r (highest rank first): the host's
 * and the device's groups must agree on that order. */
static void test_group_split(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    fs_comm_group *g = NULL;
    int color = g_rank % 2;
    assert_int_equal(c->group_split(c, -1, 0, &g, &err), FS_ERR_INVALID);
    assert_int_equal(c->group_split(c, color, -g_rank, &g, &err), 0);
    assert_non_null(g);
    assert_int_equal(F.n[C_SPLIT], 1);
    int size = 0, rank = 0, top = -1;
    float sum = 0;
    for (int r = color; r < g_size; r += 2) {
        size++;
        rank += r > g_rank;
        sum += (float)(r + 1);
        top = r;
    }
    assert_int_equal(c->size(c, g), size);
    assert_int_equal(c->rank(c, g), rank);
    float x = (float)(g_rank + 1);
    fs_tensor t = tensor(&x, FS_DTYPE_F32, 1);
    assert_int_equal(c->all_reduce(c, g, &t, FS_REDUCE_SUM, &err), 0);
    assert_float_equal(x, sum, 0);
    /* the group's rank 0 is its highest world rank */
    float b = (float)(100 + g_rank);
    t = tensor(&b, FS_DTYPE_F32, 1);
    assert_int_equal(c->broadcast(c, g, &t, 0, &err), 0);
    assert_float_equal(b, (float)(100 + top), 0);
    float mine = (float)g_rank, all[8];
    fs_tensor in = tensor(&mine, FS_DTYPE_F32, 1), out = tensor(all, FS_DTYPE_F32, (size_t)size);
    assert_int_equal(c->all_gather(c, g, &in, &out, &err), 0);
    for (int i = 0; i < size; i++) assert_float_equal(all[i], (float)(top - 2 * i), 0);
    assert_int_equal(c->barrier(c, g, &err), 0);
    /* the world is still whole beside it */
    x = 1;
    t = tensor(&x, FS_DTYPE_F32, 1);
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), 0);
    assert_float_equal(x, (float)g_size, 0);
    int destroyed = F.n[C_DESTROY];
    c->group_free(c, g);
    assert_int_equal(F.n[C_DESTROY], destroyed + 1);
    c->group_free(c, NULL);
    close_engine(c);
}

static void test_barrier(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    F.n_log = 0;
    assert_int_equal(c->barrier(c, NULL, &err), 0);
    /* one int, max: an all-reduce in order with the rest */
    assert_int_equal(F.n[C_ALL_REDUCE], 1);
    assert_int_equal(F.last_dtype, FS_DTYPE_I32);
    assert_int_equal(F.last_count, 1);
    assert_int_equal(F.last_op, FS_REDUCE_MAX);
    check_blocking_order(C_ALL_REDUCE);
    assert_int_equal(c->barrier(c, NULL, &err), 0);
    close_engine(c);
}

/* ---- failures ---- */

static void test_failed_peer(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    float x = 1;
    fs_tensor t = tensor(&x, FS_DTYPE_F32, 1);
    /* test() sees it too */
    fs_comm_request *req = NULL;
    assert_int_equal(c->all_reduce_start(c, NULL, &t, FS_REDUCE_SUM, &req, &err), 0);
    F.stall = 1;
    int done = 1;
    assert_int_equal(c->test(c, req, &done, &err), 0);
    assert_int_equal(done, 0);
    F.fail_check = 1;
    assert_int_equal(c->test(c, req, &done, &err), FS_ERR_COMM);
    assert_int_equal(done, 1);
    assert_non_null(strstr(err.message, "all_reduce"));
    assert_non_null(strstr(err.message, "a peer failed"));
    assert_int_equal(F.n[C_ABORT], 1);
    assert_int_equal(c->wait(c, req, &err), FS_ERR_COMM);
    /* the engine is done: calls are refused, not queued on an aborted communicator */
    int queued = F.n[C_ALL_REDUCE];
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), FS_ERR_COMM);
    assert_non_null(strstr(err.message, "aborted"));
    assert_int_equal(c->barrier(c, NULL, &err), FS_ERR_COMM);
    assert_int_equal(F.n[C_ALL_REDUCE], queued); /* refused at once: nothing queued, nothing polled */
    assert_null(strstr(err.message, "timeout sets the limit"));
    close_engine(c);

    /* a blocking call on a fresh engine, while the peer is dead */
    c = open_engine();
    F.stall = F.fail_check = 1;
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), FS_ERR_COMM);
    assert_non_null(strstr(err.message, "all_reduce"));
    assert_int_equal(F.n[C_ABORT], 1);
    close_engine(c);
}

static void test_timeout(void **state) {
    (void)state;
    fs_comm *c = open_engine();
    fs_error err = {0};
    fs_comm_group *g = NULL;
    assert_int_equal(c->group_split(c, 0, g_rank, &g, &err), 0);
    c->timeout_s = 0.3;
    F.stall = 1;
    float x = 1;
    fs_tensor t = tensor(&x, FS_DTYPE_F32, 1);
    double t0 = fs_now();
    assert_int_equal(c->all_reduce(c, NULL, &t, FS_REDUCE_SUM, &err), FS_ERR_COMM);
    /* not before the limit; how long after depends on the machine's load
     * (a hang would meet ctest's timeout, not this test) */
    assert_true(fs_now() - t0 >= 0.3);
    assert_non_null(strstr(err.message, "all_reduce"));
    assert_non_null(strstr(err.message, "[parallel] timeout sets the limit"));
    assert_true(F.n[C_CHECK] > 0); /* polled, with the peers checked, not blocked */
    assert_int_equal(F.n[C_ABORT], 2); /* the world and the group: one stream carries both */
    c->group_free(c, g);
    close_engine(c);

    /* the same through wait() */
    c = open_engine();
    c->timeout_s = 0.3;
    fs_comm_request *req = NULL;
    assert_int_equal(c->all_reduce_start(c, NULL, &t, FS_REDUCE_MAX, &req, &err), 0);
    F.stall = 1;
    assert_int_equal(c->wait(c, req, &err), FS_ERR_COMM);
    assert_non_null(strstr(err.message, "[parallel] timeout"));
    assert_int_equal(F.n[C_ABORT], 1);
    close_engine(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create),         cmocka_unit_test(test_refuses_backend),
        cmocka_unit_test(test_create_fails_on_one_rank),
        cmocka_unit_test(test_all_reduce),     cmocka_unit_test(test_all_reduce_start),
        cmocka_unit_test(test_ordering),       cmocka_unit_test(test_broadcast_gather_scatter),
        cmocka_unit_test(test_send_recv_ring), cmocka_unit_test(test_exchange),
        cmocka_unit_test(test_group_split),    cmocka_unit_test(test_barrier),
        cmocka_unit_test(test_failed_peer),    cmocka_unit_test(test_timeout),
    };
    return cmocka_run_group_tests(tests, test_world_setup, test_world_teardown);
}
