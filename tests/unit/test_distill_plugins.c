/* test_distill_plugins.c — distilbert and tinybert against hand-computed
 * values and finite differences, through their vtables as fsrun loads them.
 *
 * The logits are soft_kd's worked example (test_distill.c):
 * z_t = [[2,1],[1,3],[4,2]], z_s = [[1,2],[3,1],[2,4]], labels [0, 1, 1].
 *   mean KL(p_t^T || p_s^T): T = 1: 1.169498, T = 2: 0.348898, T = 4: 0.092002
 *   (teacher soft labels of row 0: T = 2 [0.622459, 0.377541], T = 4
 *   [0.562177, 0.437823]); times T^2: 1.169498, 1.395592, 1.472037.
 *   mean soft cross-entropy -sum p_t^T log p_s^T: T = 1: 1.607122,
 *   T = 2: 0.957982 (= KL + the teacher's entropy).
 *   mean hard cross-entropy of softmax(z_s): 1.189039.
 * distilbert's defaults (5, 2, 1 at T = 2) with a cosine term of 1.0:
 *   5 * 1.395592 + 2 * 1.189039 + 1.0 = 10.356038. */
#include <string.h>

#include "fastserve/distill.h"
#include "test_util.h"

#define MAXL 8

typedef struct inst {
    fs_session *s;
    const fs_distill_vtable *vt;
    void *self;
    fs_plugin_ctx ctx;
} inst;

static fs_distill_config dims(size_t Ls, size_t Lt, size_t Cs, size_t Ct, size_t Hs, size_t Ht) {
    fs_distill_config c = {.struct_size = sizeof c, .vocab = 2, .student_layers = Ls, .teacher_layers = Lt,
                           .student_embd = Cs, .teacher_embd = Ct, .student_heads = Hs, .teacher_heads = Ht,
                           .max_seq = 4, .device = {FS_DEVICE_CPU, 0}};
    return c;
}

/* Creates `plugin` with extra [distill] lines; returns create's status. */
static int make(inst *k, const char *plugin, const char *keys, fs_distill_config cfg, fs_error *err) {
    char ini[1024];
    snprintf(ini, sizeof ini, "[model]\nn_layer = 1\nn_head = 1\nn_embd = 8\nmax_seq = 4\n[distill]\nplugin = %s\n%s",
             plugin, keys);
    k->s = test_session(ini);
    k->vt = k->s->distill.plugin->desc->vtable;
    k->self = NULL;
    fs_plugin_ctx_init(&k->ctx, &k->s->host, k->s->distill.config, "plugin.distill", plugin);
    return k->vt->create(&k->self, &k->s->host.api, &k->ctx, &cfg, err);
}

static void make_ok(inst *k, const char *plugin, const char *keys, fs_distill_config cfg) {
    fs_error err = {0};
    int rc = make(k, plugin, keys, cfg, &err);
    if (rc) fprintf(stderr, "create: %s\n", err.message);
    assert_int_equal(rc, 0);
}

static void release(inst *k) {
    if (k->self) k->vt->destroy(k->self);
    fs_session_close(k->s);
}

/* A registered parameter as a test reads it: its view in the model's block. */
typedef struct tparam {
    int ndim;
    size_t shape[4], numel;
    float *data, *grad;
} tparam;

/* the plugin's registered parameter `name` (plugin.distill.<name>), or NULL */
static tparam *param(inst *k, const char *name) {
    static tparam slots[4];
    static size_t next;
    char full[128];
    snprintf(full, sizeof full, "plugin.distill.%s", name);
    const fs_param_view *v = fs_model_find(k->s->model, full);
    if (!v) return NULL;
    const fs_param_block *pb = fs_model_block(k->s->model);
    tparam *p = &slots[next++ % 4];
    p->ndim = v->ndim;
    memcpy(p->shape, v->shape, sizeof p->shape);
    p->numel = v->numel;
    p->data = pb->params + v->offset;
    p->grad = pb->grads + v->offset;
    return p;
}

/* One batch of everything a distill plugin may read. */
typedef struct batch {
    size_t B, T, V, Ls, Lt, Cs, Ct, Hs, Ht;
    float zt[64], zs[64], dz[64];
    int32_t labels[16];
    float th[MAXL + 1][64], sh[MAXL + 1][64], dsh[MAXL + 1][64];
    float ta[MAXL][64], sa[MAXL][64], dsa[MAXL][64];
    fs_tensor tht[MAXL + 1], sht[MAXL + 1], dsht[MAXL + 1], tat[MAXL], sat[MAXL], dsat[MAXL];
} batch;

static void batch_init(batch *b, size_t B, size_t T, size_t V, fs_distill_config c) {
    memset(b, 0, sizeof *b);
    b->B = B, b->T = T, b->V = V;
    b->Ls = c.student_layers, b->Lt = c.teacher_layers, b->Cs = c.student_embd, b->Ct = c.teacher_embd;
    b->Hs = c.student_heads, b->Ht = c.teacher_heads;
    assert_true(B * T * V <= 64 && B * T * b->Cs <= 64 && B * T * b->Ct <= 64);
    assert_true(B * b->Hs * T * T <= 64 && B * b->Ht * T * T <= 64);
}

static double run(inst *k, batch *b) {
    size_t B = b->B, T = b->T;
    for (size_t i = 0; i <= b->Lt; i++) b->tht[i] = fs_tensor_cpu_f32(b->th[i], 3, B, T, b->Ct, 0);
    for (size_t i = 0; i <= b->Ls; i++) {
        b->sht[i] = fs_tensor_cpu_f32(b->sh[i], 3, B, T, b->Cs, 0);
        b->dsht[i] = fs_tensor_cpu_f32(b->dsh[i], 3, B, T, b->Cs, 0);
        memset(b->dsh[i], 0, sizeof b->dsh[i]);
    }
    for (size_t i = 0; i < b->Lt; i++) b->tat[i] = fs_tensor_cpu_f32(b->ta[i], 4, B, b->Ht, T, T);
    for (size_t i = 0; i < b->Ls; i++) {
        b->sat[i] = fs_tensor_cpu_f32(b->sa[i], 4, B, b->Hs, T, T);
        b->dsat[i] = fs_tensor_cpu_f32(b->dsa[i], 4, B, b->Hs, T, T);
        memset(b->dsa[i], 0, sizeof b->dsa[i]);
    }
    const fs_param_block *pb = fs_model_block(k->s->model);
    for (size_t i = 0; i < pb->n_views; i++)
        if (pb->views[i].plugin) memset(pb->grads + pb->views[i].offset, 0, pb->views[i].numel * sizeof(float));
    fs_distill_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.B = B, a.T = T, a.V = b->V;
    a.teacher_logits = fs_tensor_cpu_f32(b->zt, 3, B, T, b->V, 0);
    a.student_logits = fs_tensor_cpu_f32(b->zs, 3, B, T, b->V, 0);
    a.dstudent_logits = fs_tensor_cpu_f32(b->dz, 3, B, T, b->V, 0);
    a.labels = b->labels;
    a.teacher_hidden = b->tht, a.student_hidden = b->sht, a.dstudent_hidden = b->dsht;
    a.teacher_attention = b->tat, a.student_attention = b->sat, a.dstudent_attention = b->dsat;
    double loss;
    fs_error err = {0};
    int rc = k->vt->loss(k->self, &a, &loss, &err);
    if (rc) fprintf(stderr, "loss: %s\n", err.message);
    assert_int_equal(rc, 0);
    return loss;
}

static void worked_logits(batch *b) {
    static const float zt[6] = {2, 1, 1, 3, 4, 2}, zs[6] = {1, 2, 3, 1, 2, 4};
    static const int32_t y[3] = {0, 1, 1};
    memcpy(b->zt, zt, sizeof zt);
    memcpy(b->zs, zs, sizeof zs);
    memcpy(b->labels, y, sizeof y);
}

static void expect(const char *what, double got, double want, double tol) {
    if (fabs(got - want) > tol) {
        fprintf(stderr, "%s: got %.9g, want %.9g\n", what, got, want);
        fail();
    }
}

/* ---- distilbert ---- */

/* Hidden states for a 2-layer student and a 4-layer teacher, width 2,
 * B = 1, T = 3, with 1 - cos per position:
 *   s1 vs t1: equal (0, 0, 0)      s1 vs t2: 0, 1, 2 (sum 3)
 *   s2 vs t3: equal (sum 0)        s2 vs t4: 0, 1, 2 (sum 3) */
static void worked_hidden(batch *b) {
    static const float s1[6] = {3, 4, 1, 0, 0, 2}, t2[6] = {3, 4, 0, 5, 0, -1};
    static const float s2[6] = {1, 0, 0, 1, 1, 1}, t4[6] = {2, 0, 1, 0, -1, -1};
    memcpy(b->sh[1], s1, sizeof s1);
    memcpy(b->th[1], s1, sizeof s1);
    memcpy(b->th[2], t2, sizeof t2);
    memcpy(b->sh[2], s2, sizeof s2);
    memcpy(b->th[3], s2, sizeof s2);
    memcpy(b->th[4], t4, sizeof t4);
    test_fill(b->sh[0], 6, 1.0f, 5);
    test_fill(b->th[0], 6, 1.0f, 6);
}

static void test_distilbert_values(void **state) {
    (void)state;
    fs_distill_config c = dims(2, 4, 2, 2, 1, 1);
    batch b;
    inst k;
    struct {
        const char *keys;
        double want;
    } cases[] = {
        {"", 10.356038},                                                      /* defaults, cos on the last layer */
        {"alpha_clm = 0\nalpha_cos = 0\ntemperature = 1\n", 5 * 1.169498},   /* T = 1: T^2 = 1 */
        {"alpha_clm = 0\nalpha_cos = 0\n", 5 * 1.395592},                     /* T = 2 */
        {"alpha_clm = 0\nalpha_cos = 0\ntemperature = 4\n", 5 * 1.472037},   /* T = 4: 16 * 0.092002 */
        {"alpha_ce = 0\nalpha_cos = 0\n", 2 * 1.189039},                      /* hard labels only */
        {"alpha_ce = 0\nalpha_clm = 0\n", 1.0},                               /* last: s2 vs t4 */
        {"alpha_ce = 0\nalpha_clm = 0\ncos_layers = mapped\n", 1.0},          /* (s1,t2) (s2,t4): 6 / 6 */
        {"alpha_ce = 0\nalpha_clm = 0\ncos_layers = mapped\nlayer_map = 0,3\n", 0.5}, /* (s1,t1) (s2,t4) */
        {"alpha_ce = 0\nalpha_clm = 0\ncos_layers = mapped\nlayer_map = 0,2\n", 0.0}, /* (s1,t1) (s2,t3) */
        {"alpha_ce = 0.5\nalpha_clm = 0.25\nalpha_cos = 3\n", 0.5 * 1.395592 + 0.25 * 1.189039 + 3.0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        batch_init(&b, 1, 3, 2, c);
        worked_logits(&b);
        worked_hidden(&b);
        make_ok(&k, "distilbert", cases[i].keys, c);
        uint32_t needs = k.vt->needs(k.self);
        assert_int_equal(needs, strstr(cases[i].keys, "alpha_cos = 0\n") ? 0u : FS_DISTILL_NEEDS_HIDDEN);
        expect(cases[i].keys, run(&k, &b), cases[i].want, 3e-6);
        release(&k);
    }
}

/* analytic gradient against a central difference of the loss */
static void fd_check(const char *what, inst *k, batch *b, float *x, const float *analytic, size_t n, float h,
                     double atol) {
    for (size_t i = 0; i < n; i++) {
        float keep = x[i];
        x[i] = keep + h;
        float up = x[i];
        double lp = run(k, b);
        x[i] = keep - h;
        float dn = x[i];
        double lm = run(k, b);
        x[i] = keep;
        double fd = (lp - lm) / ((double)up - (double)dn);
        if (fabs(fd - analytic[i]) > atol + 1e-3 * fabs(fd)) {
            fprintf(stderr, "%s[%zu]: analytic %.7g, finite difference %.7g\n", what, i, analytic[i], fd);
            fail();
        }
    }
}

static void test_distilbert_gradients(void **state) {
    (void)state;
    const char *keys[] = {"temperature = 1\n", "temperature = 2\ncos_layers = mapped\n", "temperature = 4.5\n"};
    for (int t = 0; t < 3; t++) {
        fs_distill_config c = dims(2, 4, 4, 4, 1, 1);
        batch b;
        batch_init(&b, 2, 3, 5, c);
        test_fill(b.zt, 30, 2.0f, 11 + (uint64_t)t);
        test_fill(b.zs, 30, 2.0f, 12 + (uint64_t)t);
        for (size_t i = 0; i < 6; i++) b.labels[i] = (int32_t)((i * 3 + (size_t)t) % 5);
        for (size_t l = 0; l <= 4; l++) test_fill(b.th[l], 24, 1.0f, 20 + l);
        for (size_t l = 0; l <= 2; l++) test_fill(b.sh[l], 24, 1.0f, 30 + l);
        inst k;
        make_ok(&k, "distilbert", keys[t], c);
        run(&k, &b);
        float dz[64], dh1[64], dh2[64];
        memcpy(dz, b.dz, sizeof dz);
        memcpy(dh1, b.dsh[1], sizeof dh1);
        memcpy(dh2, b.dsh[2], sizeof dh2);
        fd_check("d student logits", &k, &b, b.zs, dz, 30, 1e-2f, 2e-5);
        fd_check("d student hidden 2", &k, &b, b.sh[2], dh2, 24, 1e-2f, 2e-5);
        if (t == 1) fd_check("d student hidden 1 (mapped)", &k, &b, b.sh[1], dh1, 24, 1e-2f, 2e-5);
        release(&k);
    }
}

static void test_distilbert_refuses(void **state) {
    (void)state;
    inst k;
    fs_error err = {0};
    /* different widths: no cosine without a projection */
    assert_int_equal(make(&k, "distilbert", "", dims(2, 4, 16, 32, 1, 1), &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "widths must match"));
    assert_non_null(strstr(err.message, "alpha_cos = 0"));
    release(&k);
    /* ... which alpha_cos = 0 allows */
    assert_int_equal(make(&k, "distilbert", "alpha_cos = 0\n", dims(2, 4, 16, 32, 1, 1), &err), 0);
    release(&k);
    assert_int_equal(make(&k, "distilbert", "cos_layers = mapped\nlayer_map = 0,4\n", dims(2, 4, 8, 8, 1, 1), &err),
                     FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "teacher layer 4"));
    assert_non_null(strstr(err.message, "test.ini:"));
    release(&k);
    assert_int_equal(make(&k, "distilbert", "cos_layers = mapped\nlayer_map = 1\n", dims(2, 4, 8, 8, 1, 1), &err),
                     FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "lists 1 teacher layers for a student of 2"));
    release(&k);
}

/* ---- tinybert ---- */

static void test_tinybert_hidden_values(void **state) {
    (void)state;
    /* equal widths: W = I. Embedding: s0 = [[1,2],[3,4],[0,0]], t0 = [[0,2],[3,6],[1,1]]:
     * squared errors 1 + 0 + 0 + 4 + 1 + 1 = 7, MSE 7/6. Layer: student
     * hidden 1 against teacher hidden 2 (k = 2: teacher layer 1):
     * s1 = [[1,1],[1,1],[1,1]], t2 = [[1,3],[1,1],[0,1]]: 4 + 1 = 5, MSE 5/6. */
    fs_distill_config c = dims(1, 2, 2, 2, 1, 1);
    batch b;
    batch_init(&b, 1, 3, 2, c);
    worked_logits(&b);
    static const float s0[6] = {1, 2, 3, 4, 0, 0}, t0[6] = {0, 2, 3, 6, 1, 1};
    static const float s1[6] = {1, 1, 1, 1, 1, 1}, t2[6] = {1, 3, 1, 1, 0, 1};
    memcpy(b.sh[0], s0, sizeof s0);
    memcpy(b.th[0], t0, sizeof t0);
    memcpy(b.sh[1], s1, sizeof s1);
    memcpy(b.th[2], t2, sizeof t2);
    test_fill(b.th[1], 6, 5.0f, 3); /* not mapped: must not count */
    inst k;
    make_ok(&k, "tinybert", "stages = intermediate\nw_attention = 0\n", c);
    assert_int_equal(k.vt->needs(k.self), FS_DISTILL_NEEDS_HIDDEN);
    expect("embedding + hidden MSE", run(&k, &b), 7.0 / 6 + 5.0 / 6, 1e-6);
    for (size_t i = 0; i < 6; i++) assert_true(b.dz[i] == 0.0f); /* no logits loss in this stage */
    release(&k);
    make_ok(&k, "tinybert", "stages = intermediate\nw_attention = 0\nw_embedding = 2\nw_hidden = 0.5\n", c);
    assert_null(param(&k, "proj_nothing"));
    expect("weighted", run(&k, &b), 2 * 7.0 / 6 + 0.5 * 5.0 / 6, 1e-6);
    release(&k);
    /* an explicit map: teacher layer 0 (hidden 1) instead */
    make_ok(&k, "tinybert", "stages = intermediate\nw_attention = 0\nw_embedding = 0\nlayer_map = 0\n", c);
    memcpy(b.th[1], t2, sizeof t2);
    test_fill(b.th[2], 6, 5.0f, 4);
    expect("layer_map = 0", run(&k, &b), 5.0 / 6, 1e-6);
    release(&k);
}

static void test_tinybert_projection_values(void **state) {
    (void)state;
    /* student width 2, teacher 3: W_h = [[1,0,1],[0,2,0]]. One position,
     * s1 = [1,2] -> s1 W = [1,4,1]; t2 = [1,3,0]: errors 0,1,1, MSE 2/3.
     * Second position s1 = [0,1] -> [0,2,0]; t2 = [0,0,0]: 4, so MSE over
     * both = (2 + 4) / 6 = 1. */
    fs_distill_config c = dims(1, 2, 2, 3, 1, 1);
    batch b;
    batch_init(&b, 1, 2, 2, c);
    static const float s1[4] = {1, 2, 0, 1}, t2[6] = {1, 3, 0, 0, 0, 0};
    memcpy(b.sh[1], s1, sizeof s1);
    memcpy(b.th[2], t2, sizeof t2);
    inst k;
    make_ok(&k, "tinybert", "stages = intermediate\nw_attention = 0\nw_embedding = 0\n", c);
    tparam *w = param(&k, "proj_hidden");
    assert_non_null(w);
    assert_null(param(&k, "proj_embedding")); /* w_embedding = 0: none registered */
    assert_int_equal(w->ndim, 2);
    assert_int_equal(w->shape[0], 2);
    assert_int_equal(w->shape[1], 3);
    static const float W[6] = {1, 0, 1, 0, 2, 0};
    memcpy(w->data, W, sizeof W);
    expect("projected hidden MSE", run(&k, &b), 1.0, 1e-6);
    /* dW = 2/(N Ct) s^T R: R = [[0,1,1],[0,2,0]] -> s^T R = [[0,1,1],[0,4,2]], / 3 */
    static const float dW[6] = {0, 1.0f / 3, 1.0f / 3, 0, 4.0f / 3, 2.0f / 3};
    test_close("d W_h", w->grad, dW, 6, 1e-6, 1e-6);
    release(&k);
    /* equal widths start at the identity, other widths at random values */
    make_ok(&k, "tinybert", "", dims(1, 2, 3, 3, 1, 1));
    w = param(&k, "proj_embedding");
    assert_non_null(w);
    for (size_t i = 0; i < 9; i++) assert_true(w->data[i] == (i % 4 == 0 ? 1.0f : 0.0f));
    release(&k);
}

static void test_tinybert_attention_values(void **state) {
    (void)state;
    /* T = 2, causal maps (upper right masked to 0). Student 1 head, teacher
     * 2 heads: the student head learns their mean.
     *   student   [[1,0],[2,3]]
     *   teacher 0 [[3,0],[1,1]], teacher 1 [[1,0],[3,5]], mean [[2,0],[2,3]]
     * error [[-1,0],[0,0]]: MSE over B H T T = 4 elements: 1/4. */
    fs_distill_config c = dims(1, 2, 2, 2, 1, 2);
    batch b;
    batch_init(&b, 1, 2, 2, c);
    static const float sa[4] = {1, 0, 2, 3}, ta[8] = {3, 0, 1, 1, 1, 0, 3, 5};
    memcpy(b.sa[0], sa, sizeof sa);
    memcpy(b.ta[1], ta, sizeof ta); /* layer 1: k = 2 maps student layer 0 to teacher layer 1 */
    test_fill(b.ta[0], 8, 9.0f, 7);
    inst k;
    make_ok(&k, "tinybert", "stages = intermediate\nw_embedding = 0\nw_hidden = 0\n", c);
    assert_int_equal(k.vt->needs(k.self), FS_DISTILL_NEEDS_ATTENTION);
    expect("attention MSE, 2 teacher heads -> 1", run(&k, &b), 0.25, 1e-7);
    /* d/dA_s = 2 (A_s - mean) / 4 */
    static const float da[4] = {-0.5f, 0, 0, 0};
    test_close("d attention", b.dsa[0], da, 4, 1e-7, 0);
    release(&k);
    /* student 2 heads, teacher 1: both student heads learn teacher head 0
     * [[3,0],[1,1]]: errors [[-2,0],[1,2]] and [[-3,0],[-1,-1]]: (9 + 11) / 8 */
    c = dims(1, 1, 2, 2, 2, 1);
    batch_init(&b, 1, 2, 2, c);
    static const float sa2[8] = {1, 0, 2, 3, 0, 0, 0, 0};
    memcpy(b.sa[0], sa2, sizeof sa2);
    memcpy(b.ta[0], ta, 4 * sizeof(float));
    make_ok(&k, "tinybert", "stages = intermediate\nw_embedding = 0\nw_hidden = 0\nattention = probs\n", c);
    assert_int_equal(k.vt->needs(k.self), FS_DISTILL_NEEDS_ATTENTION | FS_DISTILL_NEEDS_ATTENTION_PROBS);
    expect("attention MSE, 1 teacher head -> 2", run(&k, &b), 20.0 / 8, 1e-6);
    release(&k);
}

static void test_tinybert_prediction_values(void **state) {
    (void)state;
    fs_distill_config c = dims(1, 2, 2, 2, 1, 1);
    batch b;
    batch_init(&b, 1, 3, 2, c);
    worked_logits(&b);
    inst k;
    make_ok(&k, "tinybert", "stages = prediction\n", c);
    assert_int_equal(k.vt->needs(k.self), 0u);
    assert_null(param(&k, "proj_hidden")); /* the prediction stage alone needs no projection */
    expect("soft CE, tau = 1", run(&k, &b), 1.607122, 2e-6);
    release(&k);
    make_ok(&k, "tinybert", "stages = prediction\ntemperature = 2\n", c);
    expect("soft CE, tau = 2 (no tau^2)", run(&k, &b), 0.957982, 2e-6);
    release(&k);
    make_ok(&k, "tinybert", "stages = prediction\ntemperature = 2\nw_prediction = 3\nw_hard = 0.5\n", c);
    expect("3 soft CE + 0.5 CE", run(&k, &b), 3 * 0.957982 + 0.5 * 1.189039, 5e-6);
    release(&k);
}

static void test_tinybert_gradients(void **state) {
    (void)state;
    /* every loss at once, widths 3 -> 4, heads 2 -> 4, 2 -> 4 layers */
    const char *keys[] = {"stages = joint\ntemperature = 1.5\nw_hard = 0.7\n",
                          "stages = joint\nattention = probs\nlayer_map = 3,0\nw_embedding = 0.5\n"};
    for (int t = 0; t < 2; t++) {
        fs_distill_config c = dims(2, 4, 3, 4, 2, 4);
        batch b;
        batch_init(&b, 1, 3, 4, c);
        test_fill(b.zt, 12, 2.0f, 41);
        test_fill(b.zs, 12, 2.0f, 42);
        for (size_t i = 0; i < 3; i++) b.labels[i] = (int32_t)((i + 1) % 4);
        for (size_t l = 0; l <= 4; l++) test_fill(b.th[l], 12, 1.0f, 50 + l);
        for (size_t l = 0; l <= 2; l++) test_fill(b.sh[l], 9, 1.0f, 60 + l);
        for (size_t l = 0; l < 4; l++) test_fill(b.ta[l], 36, 1.0f, 70 + l);
        for (size_t l = 0; l < 2; l++) test_fill(b.sa[l], 18, 1.0f, 80 + l);
        inst k;
        make_ok(&k, "tinybert", keys[t], c);
        tparam *we = param(&k, "proj_embedding"), *wh = param(&k, "proj_hidden");
        assert_non_null(we);
        assert_non_null(wh);
        run(&k, &b);
        float dz[64], dh[3][64], da[2][64], dwe[16], dwh[16];
        memcpy(dz, b.dz, sizeof dz);
        memcpy(dh, b.dsh, sizeof dh);
        memcpy(da, b.dsa, sizeof da);
        memcpy(dwe, we->grad, sizeof dwe);
        memcpy(dwh, wh->grad, sizeof dwh);
        /* the projections are trained: their gradients are not zero */
        double nwe = 0, nwh = 0;
        for (size_t i = 0; i < 12; i++) nwe += fabs(dwe[i]), nwh += fabs(dwh[i]);
        assert_true(nwe > 1e-3 && nwh > 1e-3);
        fd_check("d student logits", &k, &b, b.zs, dz, 12, 1e-2f, 2e-5);
        for (size_t l = 0; l <= 2; l++) fd_check("d student hidden", &k, &b, b.sh[l], dh[l], 9, 1e-2f, 2e-5);
        for (size_t l = 0; l < 2; l++) fd_check("d student attention", &k, &b, b.sa[l], da[l], 18, 1e-2f, 2e-5);
        fd_check("d W_e", &k, &b, we->data, dwe, 12, 1e-2f, 2e-5);
        fd_check("d W_h", &k, &b, wh->data, dwh, 12, 1e-2f, 2e-5);
        release(&k);
    }
}

static void test_tinybert_stages(void **state) {
    (void)state;
    fs_distill_config c = dims(2, 6, 8, 8, 2, 2);
    inst k;
    const char *names[8];
    uint64_t steps[8];
    fs_error err = {0};
    make_ok(&k, "tinybert", "", c);
    assert_int_equal(k.vt->phases(k.self, 11, names, steps, 8), 2);
    assert_string_equal(names[0], "intermediate");
    assert_string_equal(names[1], "prediction");
    assert_int_equal(steps[0], 5);
    assert_int_equal(steps[1], 6);
    assert_int_equal(k.vt->set_phase(k.self, 0, &err), 0);
    assert_int_equal(k.vt->needs(k.self), FS_DISTILL_NEEDS_HIDDEN | FS_DISTILL_NEEDS_ATTENTION);
    assert_int_equal(k.vt->set_phase(k.self, 1, &err), 0);
    assert_int_equal(k.vt->needs(k.self), 0u);
    assert_int_not_equal(k.vt->set_phase(k.self, 2, &err), 0);
    release(&k);
    make_ok(&k, "tinybert", "intermediate_steps = 3\n", c);
    k.vt->phases(k.self, 10, names, steps, 8);
    assert_int_equal(steps[0], 3);
    assert_int_equal(steps[1], 7);
    release(&k);
    make_ok(&k, "tinybert", "intermediate_steps = 3\nprediction_steps = 4\n", c);
    k.vt->phases(k.self, 10, names, steps, 8);
    assert_int_equal(steps[0], 3);
    assert_int_equal(steps[1], 4);
    release(&k);
    make_ok(&k, "tinybert", "stages = joint\nw_hidden = 0\nw_embedding = 0\n", c);
    assert_int_equal(k.vt->phases(k.self, 10, names, steps, 8), 1);
    assert_int_equal(steps[0], 10);
    assert_int_equal(k.vt->needs(k.self), FS_DISTILL_NEEDS_ATTENTION);
    release(&k);
}

static void test_tinybert_layer_map_errors(void **state) {
    (void)state;
    inst k;
    fs_error err = {0};
    assert_int_equal(make(&k, "tinybert", "layer_map = 2,6\n", dims(2, 6, 8, 8, 1, 1), &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "test.ini:"));
    assert_non_null(strstr(err.message, "teacher layer 6 (for student layer 1) does not exist"));
    assert_non_null(strstr(err.message, "0-5"));
    release(&k);
    assert_int_equal(make(&k, "tinybert", "layer_map = 2,3,5\n", dims(2, 6, 8, 8, 1, 1), &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "lists 3 teacher layers for a student of 2"));
    release(&k);
    /* no uniform map into a shallower teacher */
    assert_int_equal(make(&k, "tinybert", "", dims(4, 2, 8, 8, 1, 1), &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "no uniform map"));
    release(&k);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distilbert_values),        cmocka_unit_test(test_distilbert_gradients),
        cmocka_unit_test(test_distilbert_refuses),       cmocka_unit_test(test_tinybert_hidden_values),
        cmocka_unit_test(test_tinybert_projection_values), cmocka_unit_test(test_tinybert_attention_values),
        cmocka_unit_test(test_tinybert_prediction_values), cmocka_unit_test(test_tinybert_gradients),
        cmocka_unit_test(test_tinybert_stages),          cmocka_unit_test(test_tinybert_layer_map_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
