/* test_parallel_mpi.c — the communicator and the parallel strategy on
 * whatever world this process is in.
 *
 * Run alone (ctest), the world is one rank and the self communicator:
 * every call must be the identity. Run under mpirun
 * (tests/e2e/test_parallel_mpi.sh: 2, 3 and 4 ranks) it exercises the MPI
 * engine's collectives and point-to-point calls against values every rank
 * computes by hand, then the `data` and `pipeline` plugins through real
 * groups: gradient buckets and ZeRO shards against the explicit sum, the
 * tensor and embedding groups' all-reduces, and the pipeline schedules
 * (GPipe, 1F1B, interleaved) over MPI with toy stages out = a_vs * in whose
 * loss and gradients are known in closed form. A failure on one rank can
 * leave the others waiting: the communicator's timeout (10 s here) turns
 * that into failures rather than a hang. */
#include <string.h>

#include "fastserve/parallel.h"
#include "core/host.h"
#include "core/schema.h"
#include "session/session.h"
#include "test_util.h"
#include "test_world.h"


static fs_tensor f32(float *x, size_t n) { return fs_tensor_cpu_f32(x, 1, n, 0, 0, 0); }

/* ---- the engine ---- */

static void test_collectives(void **state) {
    (void)state;
    fs_error err = {0};
    assert_int_equal(g_world->rank(g_world, NULL), g_rank);
    assert_int_equal(g_world->size(g_world, NULL), g_size);
    /* rank r holds r + 1 + i / 10: sum over ranks = W (W + 1) / 2 + W i / 10 */
    float x[5], want[5];
    for (int i = 0; i < 5; i++) {
        x[i] = (float)(g_rank + 1) + 0.1f * (float)i;
        want[i] = (float)(g_size * (g_size + 1) / 2) + 0.1f * (float)(g_size * i);
    }
    fs_tensor t = f32(x, 5);
    assert_int_equal(g_world->all_reduce(g_world, NULL, &t, FS_REDUCE_SUM, &err), 0);
    test_close("all_reduce sum", x, want, 5, 1e-5, 1e-6);
    float mx = (float)g_rank;
    t = f32(&mx, 1);
    assert_int_equal(g_world->all_reduce(g_world, NULL, &t, FS_REDUCE_MAX, &err), 0);
    assert_float_equal(mx, (float)(g_size - 1), 0);
    mx = (float)(g_rank + 3);
    assert_int_equal(g_world->all_reduce(g_world, NULL, &t, FS_REDUCE_MIN, &err), 0);
    assert_float_equal(mx, 3.0f, 0);
    /* doubles and ints (the runtime's loss sums and agreements) */
    double d = 0.25 * (g_rank + 1);
    fs_tensor td = fs_tensor_cpu_f32(NULL, 1, 1, 0, 0, 0);
    td.data = &d;
    td.dtype = FS_DTYPE_F64;
    assert_int_equal(g_world->all_reduce(g_world, NULL, &td, FS_REDUCE_SUM, &err), 0);
    assert_true(d == 0.25 * g_size * (g_size + 1) / 2);
    int32_t k = g_rank * 10;
    td.data = &k;
    td.dtype = FS_DTYPE_I32;
    assert_int_equal(g_world->all_reduce(g_world, NULL, &td, FS_REDUCE_MAX, &err), 0);
    assert_int_equal(k, (g_size - 1) * 10);

    /* all_gather: rank r contributes [r, -r] */
    float mine[2] = {(float)g_rank, (float)-g_rank}, all[2 * 8];
    fs_tensor in = f32(mine, 2), out = f32(all, 2 * (size_t)g_size);
    assert_int_equal(g_world->all_gather(g_world, NULL, &in, &out, &err), 0);
    for (int r = 0; r < g_size; r++) {
        assert_float_equal(all[2 * r], (float)r, 0);
        assert_float_equal(all[2 * r + 1], (float)-r, 0);
    }
    /* reduce_scatter: in[j] = r + j over W * 2 elements; rank r gets block r
     * summed: sum_q (q + j) = W (W - 1) / 2 + W j, j = 2 r, 2 r + 1 */
    float big[2 * 8], part[2];
    for (int j = 0; j < 2 * g_size; j++) big[j] = (float)(g_rank + j);
    in = f32(big, 2 * (size_t)g_size);
    out = f32(part, 2);
    assert_int_equal(g_world->reduce_scatter(g_world, NULL, &in, &out, &err), 0);
    for (int j = 0; j < 2; j++)
        assert_float_equal(part[j], (float)(g_size * (g_size - 1) / 2 + g_size * (2 * g_rank + j)), 0);
    /* broadcast from the last rank */
    float b = (float)(100 + g_rank);
    t = f32(&b, 1);
    assert_int_equal(g_world->broadcast(g_world, NULL, &t, g_size - 1, &err), 0);
    assert_float_equal(b, (float)(100 + g_size - 1), 0);
    /* wrong sizes are refused, not sent */
    if (g_size > 1) {
        out = f32(all, 3);
        assert_int_equal(g_world->all_gather(g_world, NULL, &in, &out, &err), FS_ERR_INVALID);
    }
    assert_int_equal(g_world->barrier(g_world, NULL, &err), 0);
}

static void test_nonblocking(void **state) {
    (void)state;
    fs_error err = {0};
    /* a large all-reduce started, tested, then waited */
    size_t n = 1 << 18;
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(g_rank + 1) * (float)(i % 7);
    fs_tensor t = f32(x, n);
    fs_comm_request *req;
    assert_int_equal(g_world->all_reduce_start(g_world, NULL, &t, FS_REDUCE_SUM, &req, &err), 0);
    int done = 0;
    assert_int_equal(g_world->test(g_world, req, &done, &err), 0);
    assert_int_equal(g_world->wait(g_world, req, &err), 0);
    for (size_t i = 0; i < n; i += 4099)
        assert_float_equal(x[i], (float)(g_size * (g_size + 1) / 2) * (float)(i % 7), 0);
    if (g_size == 1) {
        free(x);
        return;
    }
    /* a ring where every rank sends 1 MB to the next and receives from the
     * previous at the same time: with blocking rendezvous sends this would
     * deadlock; started non-blocking it must not */
    float *sbuf = malloc(n * sizeof *sbuf);
    for (size_t i = 0; i < n; i++) sbuf[i] = (float)g_rank + 1e-3f * (float)(i % 1000);
    fs_tensor ts = f32(sbuf, n), tr = f32(x, n);
    fs_comm_request *rs, *rr;
    int next = (g_rank + 1) % g_size, prev = (g_rank + g_size - 1) % g_size;
    assert_int_equal(g_world->recv_start(g_world, NULL, &tr, prev, 7, &rr, &err), 0);
    assert_int_equal(g_world->send_start(g_world, NULL, &ts, next, 7, &rs, &err), 0);
    assert_int_equal(g_world->wait(g_world, rr, &err), 0);
    assert_int_equal(g_world->wait(g_world, rs, &err), 0);
    for (size_t i = 0; i < n; i += 997) assert_float_equal(x[i], (float)prev + 1e-3f * (float)(i % 1000), 0);
    /* blocking send/recv: rank 0 -> rank 1 */
    if (g_rank == 0) assert_int_equal(g_world->send(g_world, NULL, &ts, 1, 9, &err), 0);
    if (g_rank == 1) {
        assert_int_equal(g_world->recv(g_world, NULL, &tr, 0, 9, &err), 0);
        assert_float_equal(x[5], 5e-3f, 0);
    }
    free(sbuf);
    free(x);
}

static void test_groups(void **state) {
    (void)state;
    fs_error err = {0};
    /* split by parity, ordered by descending rank */
    fs_comm_group *g;
    assert_int_equal(g_world->group_split(g_world, g_rank % 2, -g_rank, &g, &err), 0);
    int n = (g_size + 1 - g_rank % 2) / 2; /* ranks of my parity */
    assert_int_equal(g_world->size(g_world, g), n);
    float x = (float)g_rank;
    fs_tensor t = f32(&x, 1);
    assert_int_equal(g_world->all_reduce(g_world, g, &t, FS_REDUCE_SUM, &err), 0);
    float want = 0;
    for (int q = g_rank % 2; q < g_size; q += 2) want += (float)q;
    assert_float_equal(x, want, 0);
    if (g_size > 1) { /* the highest rank of my parity is 0 within the group */
        int top = g_rank % 2 + 2 * (n - 1);
        assert_int_equal(g_world->rank(g_world, g), (top - g_rank) / 2);
    }
    g_world->group_free(g_world, g);
    assert_int_equal(g_world->group_split(g_world, -1, 0, &g, &err), g_size > 1 ? FS_ERR_INVALID : 0);
}

/* ---- the strategy through its plugin ---- */

typedef struct strat {
    fs_session *s; /* just a graph and a plugin registry */
    fs_host host;
    fs_plugin_instance inst;
    const fs_parallel_vtable *vt;
    void *self;
} strat;

/* The plugin `name` created on this world with [parallel] keys `keys`
 * (INI lines) for a model of n_layer layers, 4 heads, global batch 24
 * (divisible by 1 to 4 data ranks). */
static int strat_open(strat *st, const char *name, const char *keys, size_t n_layer, fs_error *err) {
    memset(st, 0, sizeof *st);
    char ini[512];
    snprintf(ini, sizeof ini, "[parallel]\nplugin = %s\ntimeout = 10\n%s\n", name, keys);
    fs_graph *g;
    if (fs_graph_load_string(&g, "strategy.ini", ini, err)) return err->status;
    st->s = calloc(1, sizeof *st->s);
    st->s->graph = g;
    const char *sec[] = {"parallel"};
    int rc = fs_session_plugin_config(st->s, &st->inst, FS_PLUGIN_PARALLEL, sec, 1, fs_schema_parallel.spec,
                                      fs_schema_parallel.n, err);
    if (rc) return rc;
    fs_host_init(&st->host, 1);
    fs_plugin_ctx_init(&st->inst.ctx, &st->host, st->inst.config, "plugin.parallel", name);
    fs_parallel_config pc = {.struct_size = sizeof pc, .comm = g_world, .n_params = 0, .n_layer = n_layer,
                             .n_head = 4, .batch = 24, .device = {FS_DEVICE_CPU, 0}, .seq = 16, .n_embd = 32,
                             .vocab = 64};
    st->vt = st->inst.plugin->desc->vtable;
    return st->vt->create(&st->self, &st->host.api, &st->inst.ctx, &pc, err);
}

static void strat_close(strat *st) {
    if (st->self) st->vt->destroy(st->self);
    fs_config_destroy(st->inst.config);
    free(st->inst.spec);
    if (st->s) {
        fs_plugin_registry_release(&st->s->registry);
        fs_graph_destroy(st->s->graph);
        free(st->s);
    }
    g_world->timeout_s = 10; /* create sets [parallel] timeout */
}

/* grads on rank r: g[i] = (r + 1) * sin(i); the data group's mean is
 * (D + 1) / 2 * sin(i) for a group of all ranks */
static void test_data_buckets_and_zero(void **state) {
    (void)state;
    fs_error err = {0};
    size_t n = 1000;
    for (int zero = 0; zero <= 1; zero++) {
        strat st;
        char keys[128];
        snprintf(keys, sizeof keys, "bucket_mb = 0.001\nzero = %d", zero); /* 262 floats a bucket */
        int rc = strat_open(&st, "data", keys, 4, &err);
        if (rc) fail_msg("create: %s", err.message);
        fs_parallel_topology t;
        assert_int_equal(st.vt->topology(st.self, &t, &err), 0);
        assert_int_equal(t.data, g_size);
        assert_int_equal(t.data_rank, g_rank);
        assert_int_equal(t.tensor, 1);
        assert_int_equal(t.pipeline, 1);
        size_t off, cnt;
        assert_int_equal(st.vt->batch_slice(st.self, 24, &off, &cnt, &err), 0);
        assert_int_equal(cnt, 24 / (size_t)g_size);
        assert_int_equal(off, (size_t)g_rank * cnt);
        float *g = malloc(n * sizeof *g), *want = malloc(n * sizeof *want);
        for (int step = 0; step < 2; step++) { /* buckets re-form every step */
            for (size_t i = 0; i < n; i++) {
                g[i] = (float)(g_rank + 1) * sinf((float)i + (float)step);
                want[i] = 0.5f * (float)(g_size + 1) * sinf((float)i + (float)step);
            }
            /* backward order: [700, 1000), [400, 700), [0, 100), and
             * [100, 400) never reported: grads_finish sends it */
            assert_int_equal(st.vt->grads_ready(st.self, g, 700, 300, &err), 0);
            assert_int_equal(st.vt->grads_ready(st.self, g, 400, 300, &err), 0);
            assert_int_equal(st.vt->grads_ready(st.self, g, 0, 100, &err), 0);
            assert_int_equal(st.vt->grads_finish(st.self, g, n, &err), 0);
            size_t lo, hi;
            assert_int_equal(st.vt->optimizer_shard(st.self, n, &lo, &hi, &err), 0);
            if (!zero || g_size == 1) {
                assert_int_equal(lo, 0);
                assert_int_equal(hi, n);
            } else { /* ceil(1000 / W) a shard */
                size_t S = (n + (size_t)g_size - 1) / (size_t)g_size;
                assert_int_equal(lo, (size_t)g_rank * S < n ? (size_t)g_rank * S : n);
            }
            test_close("mean gradient (owned range)", g + lo, want + lo, hi - lo, 1e-6, 1e-5);
            /* params_updated: each rank's shard to all */
            float *p = malloc(n * sizeof *p);
            for (size_t i = 0; i < n; i++) p[i] = (i >= lo && i < hi) ? (float)i : -1.0f;
            assert_int_equal(st.vt->params_updated(st.self, p, n, &err), 0);
            if (zero || g_size == 1)
                for (size_t i = 0; i < n; i++) assert_float_equal(p[i], (float)i, 0);
            free(p);
        }
        /* extra (plugin-owned) gradients: in full on every rank */
        float e[3] = {(float)g_rank, 1.0f, 2.0f * (float)g_rank};
        assert_int_equal(st.vt->grads_extra(st.self, e, 3, &err), 0);
        assert_float_equal(e[0], 0.5f * (float)(g_size - 1), 1e-6);
        assert_float_equal(e[1], 1.0f, 1e-6);
        assert_float_equal(e[2], (float)(g_size - 1), 1e-6);
        double sums[2] = {1.0, (double)g_rank};
        assert_int_equal(st.vt->reduce_sum(st.self, sums, 2, &err), 0);
        assert_true(sums[0] == (double)g_size && sums[1] == (double)(g_size * (g_size - 1) / 2));
        fs_parallel_stats stats = {.struct_size = sizeof stats};
        assert_int_equal(st.vt->stats(st.self, &stats, &err), 0);
        assert_int_equal(stats.steps, 2);
        if (g_size > 1) assert_true(stats.collectives >= (zero ? 2u : 8u) + 1u);
        free(g);
        free(want);
        strat_close(&st);
    }
}

/* Toy pipeline: virtual stage v multiplies by a_v = 1 + v / 8; micro-batch
 * m enters as x_m[i] = 1 + m + i / 16 and the last stage's loss is
 * sum_i out[i] * w[i], w[i] = 1 + i / 32. Everything is linear, so with
 * A = prod a_v the loss of m is L_m = A * sum_i x_m[i] w[i], and
 * dL / da_v = L / a_v. */
#define K 16
typedef struct toy {
    size_t P, V, stage, slots;
    float saved[8][8][K]; /* (chunk, slot) input kept for backward */
    double da[8];         /* by chunk */
    double loss;
} toy;

static float a_of(size_t v) { return 1.0f + (float)v / 8.0f; }
static float x_of(size_t m, size_t i) { return 1.0f + (float)m + (float)i / 16.0f; }
static float w_of(size_t i) { return 1.0f + (float)i / 32.0f; }

static int toy_forward(void *ctx, size_t chunk, size_t micro, size_t slot, const float *in, float *out,
                       fs_error *err) {
    (void)err;
    toy *t = ctx;
    size_t v = chunk * t->P + t->stage;
    float *keep = t->saved[chunk][slot];
    for (size_t i = 0; i < K; i++) keep[i] = in ? in[i] : x_of(micro, i);
    if (out)
        for (size_t i = 0; i < K; i++) out[i] = a_of(v) * keep[i];
    else
        for (size_t i = 0; i < K; i++) t->loss += (double)(a_of(v) * keep[i]) * w_of(i);
    return 0;
}

static int toy_backward(void *ctx, size_t chunk, size_t micro, size_t slot, const float *dout, float *din,
                        fs_error *err) {
    (void)err, (void)micro;
    toy *t = ctx;
    size_t v = chunk * t->P + t->stage;
    const float *keep = t->saved[chunk][slot];
    for (size_t i = 0; i < K; i++) {
        float d = dout ? dout[i] : w_of(i);
        t->da[chunk] += (double)d * keep[i];
        if (din) din[i] = a_of(v) * d;
    }
    return 0;
}

static void run_pipeline(const char *schedule, size_t interleave, size_t micro, size_t n_layer) {
    fs_error err = {0};
    strat st;
    char keys[160];
    snprintf(keys, sizeof keys, "pipeline = %d\nschedule = %s\ninterleave = %zu\nmicrobatches = %zu", g_size, schedule,
             interleave, micro);
    if (strat_open(&st, "pipeline", keys, n_layer, &err)) fail_msg("create (%s): %s", schedule, err.message);
    fs_parallel_topology t;
    assert_int_equal(st.vt->topology(st.self, &t, &err), 0);
    assert_int_equal(t.pipeline, g_size);
    assert_int_equal(t.pipeline_rank, g_rank);
    assert_int_equal((size_t)t.microbatches, micro);
    size_t P = (size_t)g_size, V = P * interleave, slots;
    /* the stages partition the layers in order */
    size_t at = 0, first, count;
    for (size_t v = 0; v < V; v++) {
        assert_int_equal(st.vt->stage_layers(st.self, v, &first, &count, &err), 0);
        assert_int_equal(first, at);
        assert_true(count >= 1);
        at += count;
    }
    assert_int_equal(at, n_layer);
    assert_int_equal(st.vt->pipeline_slots(st.self, &slots, &err), 0);
    assert_true(slots >= 1 && slots <= 8);
    toy *ty = calloc(1, sizeof *ty);
    ty->P = P;
    ty->V = V;
    ty->stage = (size_t)g_rank;
    fs_stage_ops ops = {.struct_size = sizeof ops, .ctx = ty, .act_numel = K, .forward = toy_forward,
                        .backward = toy_backward};
    for (int step = 0; step < 2; step++) { /* buffers are reused across steps */
        memset(ty->da, 0, sizeof ty->da);
        ty->loss = 0;
        if (st.vt->run_schedule(st.self, &ops, &err)) fail_msg("run_schedule (%s): %s", schedule, err.message);
        double A = 1, L = 0;
        for (size_t v = 0; v < V; v++) A *= a_of(v);
        for (size_t m = 0; m < micro; m++)
            for (size_t i = 0; i < K; i++) L += A * x_of(m, i) * w_of(i);
        if ((size_t)g_rank == P - 1) assert_true(fabs(ty->loss - L) <= 1e-5 * L);
        for (size_t c = 0; c < interleave; c++) {
            double want = L / a_of(c * P + (size_t)g_rank);
            if (fabs(ty->da[c] - want) > 1e-5 * want)
                fail_msg("%s: rank %d chunk %zu: dL/da = %g, want %g", schedule, g_rank, c, ty->da[c], want);
        }
    }
    /* the tied embedding's gradient: summed between the first and last stage */
    float e = (float)(g_rank + 1);
    assert_int_equal(st.vt->embedding_all_reduce(st.self, &e, 1, &err), 0);
    if (g_size == 1)
        assert_float_equal(e, 1.0f, 0);
    else if (g_rank == 0 || g_rank == g_size - 1)
        assert_float_equal(e, (float)(1 + g_size), 0);
    else
        assert_float_equal(e, (float)(g_rank + 1), 0); /* a middle stage holds none */
    free(ty);
    strat_close(&st);
}

static void test_pipeline_schedules(void **state) {
    (void)state;
    run_pipeline("gpipe", 1, 4, 4);
    run_pipeline("1f1b", 1, 4, 4);
    run_pipeline("1f1b", 1, 1, 4);
    if (g_size >= 2) run_pipeline("interleaved", 2, (size_t)(2 * g_size) <= 8 ? (size_t)(2 * g_size) : 8, 8);
}

static void test_tensor_group(void **state) {
    (void)state;
    fs_error err = {0};
    if (g_size % 2 || 4 % g_size) { /* tensor must divide n_head = 4 */
        print_message("tensor group: skipped for %d ranks\n", g_size);
        return;
    }
    /* tensor = W / 2 ... or W when W == 2: plugin tensor takes the rest over data = 2 */
    strat st;
    const char *keys = g_size == 4 ? "data = 2" : "";
    if (strat_open(&st, "tensor", keys, 4, &err)) fail_msg("create: %s", err.message);
    fs_parallel_topology t;
    assert_int_equal(st.vt->topology(st.self, &t, &err), 0);
    int T = g_size == 4 ? 2 : g_size;
    assert_int_equal(t.tensor, T);
    assert_int_equal(t.tensor_rank, g_rank % T); /* Megatron: tensor fastest */
    assert_int_equal(t.data_rank, g_rank / T);
    float x[2] = {(float)g_rank, 1.0f};
    assert_int_equal(st.vt->tensor_all_reduce(st.self, x, 2, &err), 0);
    int base = g_rank - g_rank % T;
    float want = 0;
    for (int q = base; q < base + T; q++) want += (float)q;
    assert_float_equal(x[0], want, 0);
    assert_float_equal(x[1], (float)T, 0);
    strat_close(&st);
    if (g_size != 4) return;
    /* tensor 2 x pipeline 2: tensor fastest, so the tensor pairs are {0, 1}
     * and {2, 3}, the pipelines (and embedding groups) {0, 2} and {1, 3} */
    if (strat_open(&st, "tensor", "pipeline = 2", 4, &err)) fail_msg("create: %s", err.message);
    assert_int_equal(st.vt->topology(st.self, &t, &err), 0);
    assert_int_equal(t.tensor, 2);
    assert_int_equal(t.pipeline, 2);
    assert_int_equal(t.tensor_rank, g_rank % 2);
    assert_int_equal(t.pipeline_rank, g_rank / 2);
    x[0] = (float)(1 << g_rank);
    assert_int_equal(st.vt->tensor_all_reduce(st.self, x, 1, &err), 0);
    assert_float_equal(x[0], (g_rank < 2 ? 3.0f : 12.0f), 0);
    x[0] = (float)(1 << g_rank);
    assert_int_equal(st.vt->embedding_all_reduce(st.self, x, 1, &err), 0);
    assert_float_equal(x[0], (g_rank % 2 == 0 ? 5.0f : 10.0f), 0);
    strat_close(&st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_collectives),       cmocka_unit_test(test_nonblocking),
        cmocka_unit_test(test_groups),            cmocka_unit_test(test_data_buckets_and_zero),
        cmocka_unit_test(test_pipeline_schedules), cmocka_unit_test(test_tensor_group),
    };
    return cmocka_run_group_tests(tests, test_world_setup, test_world_teardown);
}
