/* test_plan.c — `fsrun --plan`'s estimates (runtime/dist/plan.c) against
 * numbers worked out by hand in the comments, its reasons for invalid
 * splits, the enumeration and recommendation, and reading the graph.
 *
 * The small model used throughout: L = 2 layers, H = 2 heads, C = 8,
 * T = 4, V = 16, global batch B = 4. Per layer (model.c's layout)
 * 12 C^2 + 13 C = 872 parameters; the whole model V C + T C + L x 872 +
 * 2 C = 128 + 32 + 1744 + 16 = 1920. Activations with t = 1, per layer and
 * token: 17 C + 4 + H = 136 + 4 + 2 = 142 floats (H: dense attention's
 * log-sum-exp of each row); per slot and token
 * besides: v C chunk inputs + 1 token id + max(C, 4C) = 32 forward scratch
 * = 41 (v = 1), and on the head's rank C + 2 + 2 V = 42; once per rank
 * 3 C + 16 C = 152 per token of backward scratch.
 *
 * test_real_model compares the activation estimate with what the model
 * actually allocates (fs_model_activation_bytes). */
#include <string.h>

#include "pipe_schedule.h"
#include "dist/plan.h"
#include "test_util.h"

static fs_plan_model small(size_t n_layer) {
    fs_plan_model m = {.n_layer = n_layer, .n_head = 2, .n_embd = 8, .seq = 4, .vocab = 16, .batch = 4};
    return m;
}

static fs_plan_parallel defaults(void) {
    fs_plan_parallel p;
    memset(&p, 0, sizeof p);
    p.interleave = 1;
    p.schedule = -1;
    return p;
}

static void near(const char *what, double got, double want) {
    if (!(fabs(got - want) <= 1e-9 * fabs(want) + 1e-15)) fail_msg("%s: got %.10g, want %.10g", what, got, want);
}

/* d = 2, t = 1, p = 1, one micro-batch of b = 2 sequences, N = 8 tokens.
 *   parameters 1920 floats = 7680 bytes, gradients 7680, moments 15360
 *   activations: one slot of 2 layers x 8 tokens x 142 = 2272, 8 x 41 =
 *   328, ln_f and logits 8 x 42 = 336 -> 2936; backward scratch 8 x 152 =
 *   1216; no pipeline buffers -> 4152 floats = 16608 bytes
 *   total 30720 + 16608 = 47328 bytes
 *   data all-reduce 2 (2-1)/2 x 7680 = 7680 bytes
 *   FLOPs 3 x (2 x 4 tokens) x (2 x (24*64 + 4*4*8) + 2*8*16)
 *       = 24 x (2 x 1664 + 256) = 86016
 *   step: compute 86016 / 1e11 = 8.6016e-7; all-reduce 7680 / 1e10 =
 *   7.68e-7, of which 2/3 x 8.6016e-7 = 5.7344e-7 hides behind backward:
 *   8.6016e-7 + 1.9456e-7 = 1.05472e-6 */
static void test_data_parallel(void **state) {
    (void)state;
    fs_plan_model mo = small(2);
    fs_plan_parallel par = defaults();
    fs_plan_row r;
    fs_plan_evaluate(&mo, &par, 2, 1, 1, &r);
    if (!r.valid) fail_msg("invalid: %s", r.reason);
    assert_int_equal(r.microbatches, 1);
    near("params", r.mem_params, 7680);
    near("grads", r.mem_grads, 7680);
    near("optim", r.mem_optim, 15360);
    near("acts", r.mem_acts, 16608);
    near("total", r.mem_total, 47328);
    near("comm data", r.comm_data, 7680);
    near("comm tensor", r.comm_tensor, 0);
    near("comm pipe", r.comm_pipe, 0);
    near("comm total", r.comm_total, 7680);
    near("flops", r.flops, 86016);
    near("bubble", r.bubble, 0);
    near("step", r.step_s, 1.05472e-6);
}

/* d = 2, t = 2, p = 1, zero = 1.
 *   per layer per tensor rank (12*64 + 7*8) / 2 + 6*8 = 412 + 48 = 460;
 *   2 layers + 160 embeddings + 16 ln_f = 1096 floats: params 4384 bytes,
 *   grads 4384, moments 8 x 1096 / 2 = 4384
 *   activations per layer and token 4*8 + 4 + (13*8 + 2) / 2 = 89; per
 *   slot 2 x 8 x 89 = 1424, 8 x (8 + 1 + max(8, 32 / 2)) = 200, head 336
 *   -> 1960; backward scratch 8 x (24 + 8*8/2) + 2 x 8 x 16 = 704 -> 2664
 *   floats = 10656 bytes; total 13152 + 10656 = 23808
 *   data 4384; tensor 2 layers x 4 x 1 micro x 2 (2-1)/2 x 64 floats x 4 = 2048
 *   FLOPs 3 x 8 x (2 x 1664 / 2 + 256) = 46080
 *   step: compute 4.608e-7 + tensor 2.048e-7 = 6.656e-7; all-reduce
 *   4.384e-7 - 2/3 x 4.608e-7 = 1.312e-7 exposed: 7.968e-7 */
static void test_tensor_zero(void **state) {
    (void)state;
    fs_plan_model mo = small(2);
    fs_plan_parallel par = defaults();
    par.zero = 1;
    fs_plan_row r;
    fs_plan_evaluate(&mo, &par, 2, 2, 1, &r);
    if (!r.valid) fail_msg("invalid: %s", r.reason);
    near("params", r.mem_params, 4384);
    near("optim", r.mem_optim, 4384);
    near("acts", r.mem_acts, 10656);
    near("total", r.mem_total, 23808);
    near("comm data", r.comm_data, 4384);
    near("comm tensor", r.comm_tensor, 2048);
    near("comm total", r.comm_total, 6432);
    near("flops", r.flops, 46080);
    near("step", r.step_s, 7.968e-7);
}

/* d = 1, t = 1, p = 2, microbatches = 2, 1F1B; b = 2, N = 8, N C = 64.
 * The head costs 2 C V / (24 C^2 + 4 T C) = 256 / 1664 layers: one layer
 * per stage.
 *   stage 0: 872 + 160 = 1032 floats -> 4128 + 4128 + 8256; 1F1B keeps
 *   min(2, 2 - 0) = 2 slots of 8 x 142 + 8 x 41 = 1464 -> 2928, backward
 *   scratch 1216, executor buffers 4 x 1 chunk x 2 slots x 64 = 512 ->
 *   4656 floats = 18624 bytes; total 35136
 *   stage 1: 872 + 16 + 128 = 1016 floats -> 16256 bytes; 1 slot of 1464 +
 *   336, 1216, 4 x 1 x 1 x 64 = 256 -> 3272 floats = 13088; total 29344
 *   sent: stage 0 the activations 2 x 64 floats, stage 1 the gradients,
 *   each also the embedding's gradient 128 floats: 256 floats = 1024 bytes
 *   FLOPs: stage 0 3 x 16 x 1664 = 79872, stage 1 3 x 16 x 1920 = 92160
 *   step: stage 1 9.216e-7 + 1.024e-7 = 1.024e-6, / (1 - 1/3) = 1.536e-6 */
static void test_pipeline(void **state) {
    (void)state;
    fs_plan_model mo = small(2);
    fs_plan_parallel par = defaults();
    par.microbatches = 2;
    fs_plan_row r;
    fs_plan_evaluate(&mo, &par, 1, 1, 2, &r);
    if (!r.valid) fail_msg("invalid: %s", r.reason);
    assert_int_equal(r.schedule, FS_PIPE_1F1B);
    near("params", r.mem_params, 4128);
    near("optim", r.mem_optim, 8256);
    near("acts", r.mem_acts, 18624);
    near("total", r.mem_total, 35136);
    near("comm pipe", r.comm_pipe, 1024);
    near("comm total", r.comm_total, 1024);
    near("flops", r.flops, 92160);
    near("bubble", r.bubble, 1.0 / 3.0);
    near("step", r.step_s, 1.536e-6);
    /* GPipe keeps both micro-batches on the last stage too: stage 1 gains a
     * slot of 1800 floats and 256 floats of buffers -> 29344 + 4 x 2056 =
     * 37568 bytes, now the busiest */
    par.schedule = FS_PIPE_GPIPE;
    fs_plan_evaluate(&mo, &par, 1, 1, 2, &r);
    near("gpipe total", r.mem_total, 37568);
    /* not set: the most up to 4 x pipeline dividing batch / data */
    par = defaults();
    fs_plan_evaluate(&mo, &par, 1, 1, 2, &r); /* divisors of 4 up to 8 */
    assert_int_equal(r.microbatches, 4);
    fs_plan_evaluate(&mo, &par, 2, 1, 1, &r); /* no pipeline */
    assert_int_equal(r.microbatches, 1);
    fs_plan_model wide = small(2);
    wide.batch = 36;
    fs_plan_evaluate(&wide, &par, 1, 1, 2, &r); /* 8 does not divide 36, 6 does */
    assert_int_equal(r.microbatches, 6);
}

static void expect_invalid(const fs_plan_model *mo, const fs_plan_parallel *par, size_t d, size_t t, size_t p,
                           const char *fragment);

/* 4 layers, p = 2, v = 2, m = 2 (interleaved; m == p runs every forward
 * first, so each chunk keeps 2 slots); one layer per virtual stage.
 *   stage 1 holds vstages 1 and 3: 2 x 872 + 16 + 128 = 1888 floats ->
 *   30208 bytes of states; a slot holds 2 layers x 8 x 142 = 2272, 8 x
 *   (2 chunks x 8 + 1 + 32) = 392 and the head's 336 = 3000; 2 slots 6000,
 *   backward scratch 1216, buffers 4 x 2 x 2 x 64 = 1024 -> 8240 floats =
 *   32960 bytes; total 63168 (stage 0: 1904 floats -> 30464 + (2 x 2664 +
 *   1216 + 1024) x 4 = 30272 -> 60736)
 *   sent per stage: 3 boundary crossings x 2 micro x 64 + 128 = 512 floats
 *   bubble (2-1) / (2*2 + 2 - 1) = 0.2 */
static void test_interleaved(void **state) {
    (void)state;
    fs_plan_model mo = small(4);
    fs_plan_parallel par = defaults();
    par.microbatches = 2;
    par.interleave = 2;
    par.schedule = FS_PIPE_INTERLEAVED;
    fs_plan_row r;
    fs_plan_evaluate(&mo, &par, 1, 1, 2, &r);
    if (!r.valid) fail_msg("invalid: %s", r.reason);
    near("total", r.mem_total, 63168);
    near("states", r.mem_params + r.mem_grads + r.mem_optim, 30208);
    near("comm pipe", r.comm_pipe, 2048);
    near("bubble", r.bubble, 0.2);
    /* as the plugins have it: one pipeline rank has nothing to interleave */
    expect_invalid(&mo, &par, 2, 1, 1, "schedule interleaved needs pipeline >= 2");
    /* interleave without schedule = interleaved */
    par.schedule = -1;
    expect_invalid(&mo, &par, 1, 1, 2, "use schedule = interleaved or interleave = 1");
}

/* [model] reversible and ff_chunk, d = t = p = 1, N = 16 tokens.
 *   standard: a slot of 2 x 16 x 142 + 16 x 41 + 16 x 42 = 5872, backward
 *   scratch 16 x 152 = 2432 -> 8304 floats
 *   reversible: one layer per slot, 16 x (4 C + 4 + 5 C + 8 C = 140, plus
 *   the two-stream state 3 C = 24) = 2624, + 656 + 672 = 3952; one
 *   attention buffer 16 x 2 = 32; 2432 -> 6416 floats = 25664 bytes
 *   ff_chunk = 4: per layer and token 4 C + 4 + 5 C + H = 78 -> 2 x 16 x
 *   78 = 2496, 16 x (8 + 1 + max(C, 3 C) = 24) = 528, the chunk's MLP
 *   2 x 4 x 32 = 256, head 672 -> 3952; backward 16 x (24 + 64) + 256 =
 *   1664 -> 5616 floats = 22464 bytes */
static void test_memory_options(void **state) {
    (void)state;
    fs_plan_model mo = small(2);
    fs_plan_parallel par = defaults();
    fs_plan_row r;
    fs_plan_evaluate(&mo, &par, 1, 1, 1, &r);
    near("standard", r.mem_acts, 4 * 8304);
    mo.reversible = 1;
    fs_plan_evaluate(&mo, &par, 1, 1, 1, &r);
    near("reversible", r.mem_acts, 25664);
    mo.reversible = 0;
    mo.ff_chunk = 4;
    fs_plan_evaluate(&mo, &par, 1, 1, 1, &r);
    near("ff_chunk", r.mem_acts, 22464);
    mo.ff_chunk = 16; /* not smaller than the micro-batch: all at once */
    fs_plan_evaluate(&mo, &par, 1, 1, 1, &r);
    near("ff_chunk = N", r.mem_acts, 4 * 8304);
}

/* The estimate against the model's own allocation after a forward and
 * backward of one batch of [train] batch x max_seq tokens: equal up to
 * model.c's padding of each activation array to 16 floats. */
static void check_real(const char *model_keys) {
    char ini[512];
    snprintf(ini, sizeof ini,
             "[model]\nvocab_size = 64\nn_layer = 3\nn_head = 4\nn_embd = 32\nmax_seq = 16\n%s"
             "[train]\nbatch = 3\n[run]\nthreads = 1\n",
             model_keys);
    fs_graph *g;
    fs_error err = {0};
    fs_plan_model mo;
    fs_plan_parallel par;
    assert_int_equal(fs_graph_load_string(&g, "g.ini", ini, &err), 0);
    assert_int_equal(fs_plan_read_graph(g, &mo, &par, &err), 0);
    fs_graph_destroy(g);
    fs_plan_row r;
    fs_plan_evaluate(&mo, &par, 1, 1, 1, &r);
    assert_true(r.valid);

    fs_session *s = test_session(ini);
    enum { B = 3, T = 16 };
    int32_t in[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) in[i] = (i * 7) % 64, tg[i] = (i * 5 + 1) % 64;
    assert_int_equal(fs_model_forward(s->model, in, B, T, &err), 0);
    fs_model_loss(s->model, tg, 1.0f);
    assert_int_equal(fs_model_backward(s->model, NULL, &err), 0);
    double real = (double)fs_model_activation_bytes(s->model);
    fs_session_close(s);
    /* at most 15 floats of padding for each of model.c's ~30 arrays */
    if (fabs(r.mem_acts - real) > 32 * 15 * 4)
        fail_msg("%s: plan %.0f bytes of activations, the model %.0f", model_keys, r.mem_acts, real);
}

static void test_real_model(void **state) {
    (void)state;
    check_real("");
    check_real("reversible = true\n");
    check_real("ff_chunk = 8\n");
}

static void expect_invalid(const fs_plan_model *mo, const fs_plan_parallel *par, size_t d, size_t t, size_t p,
                           const char *fragment) {
    fs_plan_row r;
    fs_plan_evaluate(mo, par, d, t, p, &r);
    if (r.valid) fail_msg("%zu x %zu x %zu should be invalid (%s)", d, t, p, fragment);
    if (!strstr(r.reason, fragment)) fail_msg("%zu x %zu x %zu: '%s' lacks '%s'", d, t, p, r.reason, fragment);
}

static void test_invalid(void **state) {
    (void)state;
    fs_plan_model mo = small(2);
    fs_plan_parallel par = defaults();
    expect_invalid(&mo, &par, 1, 4, 1, "tensor = 4 does not divide n_head = 2");
    expect_invalid(&mo, &par, 3, 1, 1, "data = 3 does not divide [train] batch = 4");
    expect_invalid(&mo, &par, 1, 1, 3, "pipeline = 3 > n_layer = 2");
    par.microbatches = 4;
    expect_invalid(&mo, &par, 2, 1, 1, "microbatches = 4 does not divide batch / data = 2");
    par.microbatches = 2;
    par.interleave = 2;
    expect_invalid(&mo, &par, 1, 1, 2, "pipeline x interleave = 2 x 2 = 4 virtual stages > n_layer = 2");
    fs_plan_model big = small(4);
    big.batch = 6;
    par.microbatches = 3;
    par.schedule = FS_PIPE_INTERLEAVED;
    expect_invalid(&big, &par, 1, 1, 2, "microbatches (3) to be a multiple of pipeline (2)");
    /* the plugins' default micro-batch count: interleaved p = 4 needs a
     * multiple of 4 dividing batch / data = 6: there is none */
    fs_plan_model eight = small(8);
    eight.batch = 6;
    par.microbatches = 0;
    expect_invalid(&eight, &par, 1, 1, 4, "no micro-batch count divides batch / data = 6");
    par = defaults();
    par.microbatches = 2;
    snprintf(par.stages, sizeof par.stages, "0-0,2-3");
    expect_invalid(&big, &par, 1, 1, 2, "[parallel] stages = 0-0,2-3: layers 1..1 belong to no stage");
    /* a hand partition is taken as written: stage 1 holds 3 layers,
     * 3 x 872 + 16 + 128 = 2760 floats = 11040 bytes */
    snprintf(par.stages, sizeof par.stages, "0-0,1-3");
    fs_plan_row r;
    fs_plan_evaluate(&big, &par, 3, 1, 2, &r);
    if (!r.valid) fail_msg("invalid: %s", r.reason);
    near("hand partition params", r.mem_params, 11040);
    expect_invalid(&big, &par, 1, 1, 4, "2 ranges for 4 virtual stages");
}

static void test_enumerate(void **state) {
    (void)state;
    fs_plan_model mo = small(2);
    fs_plan_parallel par = defaults();
    fs_plan_row *rows;
    size_t n;
    fs_error err = {0};
    assert_int_equal(fs_plan_enumerate(&mo, &par, 4, 1e12, &rows, &n, &err), 0);
    /* d x t x p = 4: d descending, then t ascending */
    static const size_t want[6][3] = {{4, 1, 1}, {2, 1, 2}, {2, 2, 1}, {1, 1, 4}, {1, 2, 2}, {1, 4, 1}};
    assert_int_equal(n, 6);
    size_t recommended = 0, best = n;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(rows[i].data, want[i][0]);
        assert_int_equal(rows[i].tensor, want[i][1]);
        assert_int_equal(rows[i].pipeline, want[i][2]);
        recommended += rows[i].recommended;
        if (rows[i].valid && (best == n || rows[i].step_s < rows[best].step_s)) best = i;
    }
    assert_int_equal(rows[3].valid, 0); /* p = 4 > 2 layers */
    assert_int_equal(rows[5].valid, 0); /* t = 4 does not divide 2 heads */
    assert_int_equal(recommended, 1);
    assert_int_equal(rows[best].recommended, 1);
    /* a limit only the smallest candidate meets moves the recommendation */
    double smallest = 1e300;
    size_t si = n;
    for (size_t i = 0; i < n; i++)
        if (rows[i].valid && rows[i].mem_total < smallest) smallest = rows[i].mem_total, si = i;
    free(rows);
    assert_int_equal(fs_plan_enumerate(&mo, &par, 4, smallest, &rows, &n, &err), 0);
    for (size_t i = 0; i < n; i++) assert_int_equal(rows[i].recommended, i == si);
    free(rows);
    /* nothing fits: no recommendation */
    assert_int_equal(fs_plan_enumerate(&mo, &par, 4, 1000, &rows, &n, &err), 0);
    for (size_t i = 0; i < n; i++) assert_int_equal(rows[i].recommended, 0);
    free(rows);
    assert_int_equal(fs_plan_enumerate(&mo, &par, 1, 1e12, &rows, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].recommended, 1);
    free(rows);
    /* 12 ranks: (d, t) pairs with d | 12 and t | 12 / d: 1+2+2+3+4+6 = 18 */
    assert_int_equal(fs_plan_enumerate(&mo, &par, 12, 1e12, &rows, &n, &err), 0);
    assert_int_equal(n, 18);
    free(rows);
}

static void read_fails(const char *ini, const char *fragment) {
    fs_graph *g;
    fs_error err = {0};
    fs_plan_model mo;
    fs_plan_parallel par;
    if (fs_graph_load_string(&g, "g.ini", ini, &err)) fail_msg("graph: %s", err.message);
    assert_int_equal(fs_plan_read_graph(g, &mo, &par, &err), FS_ERR_INVALID);
    if (!strstr(err.message, fragment)) fail_msg("'%s' lacks '%s'", err.message, fragment);
    fs_graph_destroy(g);
}

static void test_read_graph(void **state) {
    (void)state;
    fs_graph *g;
    fs_error err = {0};
    assert_int_equal(fs_graph_load_string(&g, "g.ini",
                                          "[model]\nn_layer = 6\nn_head = 3\nn_embd = 48\nmax_seq = 64\n"
                                          "[train]\nbatch = 12\n"
                                          "[parallel]\nplugin = single\nmicrobatches = 6\ninterleave = 3\n"
                                          "schedule = interleaved\nzero = 1\nstages = 0-1,2-3,4-5\n",
                                          &err),
                     0);
    fs_plan_model mo;
    fs_plan_parallel par;
    if (fs_plan_read_graph(g, &mo, &par, &err)) fail_msg("%s", err.message);
    assert_int_equal(mo.n_layer, 6);
    assert_int_equal(mo.n_head, 3);
    assert_int_equal(mo.n_embd, 48);
    assert_int_equal(mo.seq, 64);
    assert_int_equal(mo.vocab, 256); /* the schema's default */
    assert_int_equal(mo.batch, 12);
    assert_int_equal(par.microbatches, 6);
    assert_int_equal(par.interleave, 3);
    assert_int_equal(par.schedule, FS_PIPE_INTERLEAVED);
    assert_int_equal(par.zero, 1);
    assert_string_equal(par.stages, "0-1,2-3,4-5");
    fs_graph_destroy(g);
    /* nothing set: defaults */
    assert_int_equal(fs_graph_load_string(&g, "g.ini", "[model]\nn_layer = 2\n", &err), 0);
    assert_int_equal(fs_plan_read_graph(g, &mo, &par, &err), 0);
    assert_int_equal(par.microbatches, 0);
    assert_int_equal(par.interleave, 1);
    assert_int_equal(par.schedule, -1);
    assert_int_equal(mo.batch, 8);
    fs_graph_destroy(g);

    read_fails("[parallel]\nmicrobatches = x\n", "g.ini:2: [parallel] microbatches = x: must be an integer in [1, ");
    read_fails("[parallel]\n\ninterleave = 0\n", "g.ini:3: [parallel] interleave = 0: must be an integer in [1, 64]");
    read_fails("[parallel]\nzero = 2\n", "[parallel] zero = 2: must be an integer in [0, 1]");
    read_fails("[parallel]\nschedule = pipedream\n",
               "g.ini:2: [parallel] schedule = pipedream: must be gpipe, 1f1b or interleaved");
    read_fails("[model]\nn_head = 3\nn_embd = 32\n", "must be a multiple of [model] n_head = 3");
    read_fails("[model]\nn_layer = 0\n", "n_layer");
    read_fails("[train]\nbatchh = 3\n", "batchh");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_parallel), cmocka_unit_test(test_tensor_zero),    cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_interleaved),   cmocka_unit_test(test_invalid),        cmocka_unit_test(test_enumerate),
        cmocka_unit_test(test_read_graph),    cmocka_unit_test(test_memory_options), cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
