/* test_attention.c — the dense attention plugin: gradients against finite
 * differences, the decode step against the full forward, and forward and
 * backward against an explicit dense-mask reference computed here in double
 * (a T x T mask and softmax, as PyTorch eager does it). Odd sizes on
 * purpose: T below, at and past dense's 64-row query blocks and 256-key
 * blocks, with partial last blocks. The saved buffer starts as NaN, so a
 * read of an entry forward did not write shows. */
#include <string.h>

#include "fastserve/attention.h"
#include "test_util.h"

typedef struct att {
    fs_session *s;
    const fs_attention_vtable *vt;
    void *self;
    size_t B, H, T, D;
    float *q, *k, *v, *out, *w;
    void *saved;
} att;

static att make(int causal, size_t B, size_t H, size_t T, size_t D, size_t max_seq) {
    att a = {0};
    char ini[256];
    snprintf(ini, sizeof ini, "[model]\nn_layer = 1\nn_head = %zu\nn_embd = %zu\nmax_seq = %zu\n[attention]\ncausal = %s\n",
             H, H * D, max_seq, causal ? "true" : "false");
    a.s = test_session(ini);
    a.vt = a.s->layers[0].plugin->desc->vtable;
    fs_attention_config cfg = {sizeof cfg, 0, H, D, H * D, max_seq, causal, {FS_DEVICE_CPU, 0}, FS_DTYPE_F32};
    fs_error err = {0};
    assert_int_equal(a.vt->create(&a.self, &a.s->host.api, &a.s->layers[0].ctx, &cfg, &err), 0);
    a.B = B, a.H = H, a.T = T, a.D = D;
    size_t n = B * H * T * D;
    a.q = malloc(n * 4), a.k = malloc(n * 4), a.v = malloc(n * 4), a.out = malloc(n * 4), a.w = malloc(n * 4);
    test_fill(a.q, n, 1.0f, 21);
    test_fill(a.k, n, 1.0f, 22);
    test_fill(a.v, n, 1.0f, 23);
    test_fill(a.w, n, 1.0f, 24);
    size_t saved = a.vt->saved_bytes(a.self, B, T);
    a.saved = malloc(saved);
    memset(a.saved, 0xff, saved); /* NaN */
    return a;
}

static void release(att *a) {
    a->vt->destroy(a->self);
    free(a->q), free(a->k), free(a->v), free(a->out), free(a->w), free(a->saved);
    fs_session_close(a->s);
}

static fs_attention_args args(att *a) {
    return test_attention_args(a->B, a->H, a->T, a->D, a->q, a->k, a->v, a->out, a->saved);
}

static double loss(void *p) {
    att *a = p;
    fs_attention_args x = args(a);
    fs_error err = {0};
    assert_int_equal(a->vt->forward(a->self, &x, &err), 0);
    double s = 0;
    for (size_t i = 0; i < a->B * a->H * a->T * a->D; i++) s += (double)a->out[i] * a->w[i];
    return s;
}

/* out (B, H, T, D); probs (B, H, T, T) with zeros where masked, may be NULL */
static void reference(const att *a, int causal, double *out, double *probs) {
    size_t T = a->T, D = a->D;
    double *sc = malloc(T * sizeof(double));
    for (size_t bh = 0; bh < a->B * a->H; bh++)
        for (size_t i = 0; i < T; i++) {
            double mx = -1e300, sum = 0;
            size_t n = causal ? i + 1 : T;
            for (size_t j = 0; j < n; j++) {
                double s = 0;
                for (size_t d = 0; d < D; d++) s += (double)a->q[(bh * T + i) * D + d] * a->k[(bh * T + j) * D + d];
                sc[j] = s / sqrt((double)D);
                mx = fmax(mx, sc[j]);
            }
            for (size_t j = 0; j < n; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (size_t d = 0; d < D; d++) {
                double o = 0;
                for (size_t j = 0; j < n; j++) o += sc[j] / sum * a->v[(bh * T + j) * D + d];
                out[(bh * T + i) * D + d] = o;
            }
            if (probs)
                for (size_t j = 0; j < T; j++) probs[(bh * T + i) * T + j] = j < n ? sc[j] / sum : 0.0;
        }
    free(sc);
}

/* Every `stride`-th element of x: analytic g against central differences. */
static void fd_check_fn(const char *what, att *a, float *x, const float *g, size_t stride, double (*fn)(void *)) {
    size_t n = a->B * a->H * a->T * a->D;
    for (size_t i = 0; i < n; i += stride) {
        float keep = x[i];
        x[i] = keep + 1e-2f;
        double lp = fn(a);
        x[i] = keep - 1e-2f;
        double lm = fn(a);
        x[i] = keep;
        double fd = (lp - lm) / 2e-2;
        if (fabs(fd - g[i]) > 2e-3 * fmax(1.0, fabs(fd))) {
            fprintf(stderr, "%s[%zu]: analytic %.7g, finite difference %.7g\n", what, i, g[i], fd);
            fail();
        }
    }
}

static void fd_check(const char *what, att *a, float *x, const float *g, size_t stride) {
    fd_check_fn(what, a, x, g, stride, loss);
}

static void check_dense(int causal, size_t B, size_t H, size_t T, size_t D, size_t max_seq, size_t stride) {
    att a = make(causal, B, H, T, D, max_seq);
    loss(&a);
    size_t n = a.B * a.H * a.T * a.D;
    double *ref = malloc(n * sizeof(double));
    reference(&a, causal, ref, NULL);
    for (size_t i = 0; i < n; i++) assert_true(fabs(ref[i] - a.out[i]) < 1e-5);
    float *dq = malloc(n * 4), *dk = malloc(n * 4), *dv = malloc(n * 4);
    fs_attention_args x = args(&a);
    test_attention_grads(&x, a.H, a.D, a.w, dq, dk, dv);
    fs_error err = {0};
    memset(dq, 0xff, n * 4), memset(dk, 0xff, n * 4), memset(dv, 0xff, n * 4); /* NaN: backward overwrites */
    assert_int_equal(a.vt->forward(a.self, &x, &err), 0);
    assert_int_equal(a.vt->backward(a.self, &x, &err), 0);
    for (size_t i = 0; i < n; i++) assert_true(isfinite(dq[i]) && isfinite(dk[i]) && isfinite(dv[i]));
    fd_check("dq", &a, a.q, dq, stride);
    fd_check("dk", &a, a.k, dk, stride);
    fd_check("dv", &a, a.v, dv, stride);
    free(ref), free(dq), free(dk), free(dv);
    release(&a);
}

/* T < max_seq, nothing a multiple of anything */
static void test_dense_noncausal(void **state) { (void)state; check_dense(0, 2, 3, 7, 5, 9, 1); }
static void test_dense_causal(void **state) { (void)state; check_dense(1, 2, 3, 7, 5, 9, 1); }
/* 150 = two 64-row blocks and a partial one; every 7th element by finite differences */
static void test_dense_blocks_noncausal(void **state) { (void)state; check_dense(0, 1, 2, 150, 4, 160, 7); }
static void test_dense_blocks_causal(void **state) { (void)state; check_dense(1, 1, 2, 150, 4, 160, 7); }

/* The reference: the mask as a T x T matrix, scores, softmax, output, and
 * backward by the textbook formulas, all in double:
 *   P = softmax(mask(scale Q K^T)), O = P V,
 *   dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)),
 *   dQ = scale dS K, dK = scale dS^T Q. */
static void reference_dense_mask(const att *a, int causal, const float *dout, double *out, double *dq, double *dk,
                                 double *dv) {
    size_t T = a->T, D = a->D;
    double scale = 1.0 / sqrt((double)D);
    unsigned char *mask = malloc(T * T);
    double *P = malloc(T * T * sizeof(double)), *dS = malloc(T * T * sizeof(double));
    for (size_t i = 0; i < T; i++)
        for (size_t j = 0; j < T; j++) mask[i * T + j] = !causal || j <= i;
    for (size_t bh = 0; bh < a->B * a->H; bh++) {
        const float *q = a->q + bh * T * D, *k = a->k + bh * T * D, *v = a->v + bh * T * D, *g = dout + bh * T * D;
        size_t o = bh * T * D;
        for (size_t i = 0; i < T; i++) {
            double mx = -INFINITY, sum = 0;
            for (size_t j = 0; j < T; j++) {
                double s = 0;
                for (size_t c = 0; c < D; c++) s += (double)q[i * D + c] * k[j * D + c];
                P[i * T + j] = mask[i * T + j] ? s * scale : -INFINITY;
                mx = fmax(mx, P[i * T + j]);
            }
            for (size_t j = 0; j < T; j++) sum += P[i * T + j] = exp(P[i * T + j] - mx);
            for (size_t j = 0; j < T; j++) P[i * T + j] /= sum;
        }
        for (size_t i = 0; i < T; i++)
            for (size_t c = 0; c < D; c++) {
                double s = 0;
                for (size_t j = 0; j < T; j++) s += P[i * T + j] * v[j * D + c];
                out[o + i * D + c] = s;
            }
        for (size_t i = 0; i < T; i++) {
            double dot = 0;
            for (size_t j = 0; j < T; j++) {
                double dp = 0;
                for (size_t c = 0; c < D; c++) dp += (double)g[i * D + c] * v[j * D + c];
                dS[i * T + j] = dp;
                dot += dp * P[i * T + j];
            }
            for (size_t j = 0; j < T; j++) dS[i * T + j] = P[i * T + j] * (dS[i * T + j] - dot);
        }
        for (size_t i = 0; i < T; i++)
            for (size_t c = 0; c < D; c++) {
                double sq = 0, sk = 0, sv = 0;
                for (size_t j = 0; j < T; j++) {
                    sq += dS[i * T + j] * k[j * D + c];
                    sk += dS[j * T + i] * q[j * D + c];
                    sv += P[j * T + i] * g[j * D + c];
                }
                dq[o + i * D + c] = scale * sq;
                dk[o + i * D + c] = scale * sk;
                dv[o + i * D + c] = sv;
            }
    }
    free(mask), free(P), free(dS);
}

static void close_to(const char *what, size_t T, const float *got, const double *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= 2e-5 + 2e-4 * fabs(want[i]))) {
            fprintf(stderr, "T = %zu, %s[%zu]: got %.8g, reference %.8g\n", T, what, i, got[i], want[i]);
            fail();
        }
}

static void check_against_mask(int causal, size_t T) {
    att a = make(causal, 2, 2, T, 8, T + 3);
    size_t n = a.B * a.H * T * a.D;
    float *dq = malloc(n * 4), *dk = malloc(n * 4), *dv = malloc(n * 4);
    double *ro = malloc(n * sizeof(double)), *rq = malloc(n * sizeof(double)), *rk = malloc(n * sizeof(double));
    double *rv = malloc(n * sizeof(double));
    fs_attention_args x = args(&a);
    test_attention_grads(&x, a.H, a.D, a.w, dq, dk, dv);
    memset(dq, 0xff, n * 4), memset(dk, 0xff, n * 4), memset(dv, 0xff, n * 4); /* NaN: backward overwrites */
    fs_error err = {0};
    assert_int_equal(a.vt->forward(a.self, &x, &err), 0);
    assert_int_equal(a.vt->backward(a.self, &x, &err), 0);
    reference_dense_mask(&a, causal, a.w, ro, rq, rk, rv);
    close_to("out", T, a.out, ro, n);
    close_to("dq", T, dq, rq, n);
    close_to("dk", T, dk, rk, n);
    close_to("dv", T, dv, rv, n);
    free(dq), free(dk), free(dv), free(ro), free(rq), free(rk), free(rv);
    release(&a);
}

/* T around both block sizes (64 query rows, 256 keys) and past two key blocks */
static const size_t mask_Ts[] = {1, 2, 63, 64, 65, 130, 255, 256, 257, 300, 513};

static void test_dense_mask_causal(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof mask_Ts / sizeof mask_Ts[0]; i++) check_against_mask(1, mask_Ts[i]);
}

static void test_dense_mask_bidirectional(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof mask_Ts / sizeof mask_Ts[0]; i++) check_against_mask(0, mask_Ts[i]);
}

/* Saved state between forward and backward is O(B H T): one float a row,
 * so 16 times the tokens is 16 times the bytes (a T x T buffer would be
 * 256 times). */
static void test_saved_is_linear(void **state) {
    (void)state;
    att a = make(1, 1, 2, 4, 8, 65536);
    size_t s1 = a.vt->saved_bytes(a.self, 3, 4096), s2 = a.vt->saved_bytes(a.self, 3, 65536);
    assert_true(s2 <= 16 * s1 + 4096);
    assert_true(s1 <= 3 * 2 * 4096 * 2 * sizeof(float));
    release(&a);
}

/* scores(): probabilities and pre-softmax scores over several blocks
 * against the double reference, zeros where masked; scores_backward()
 * against finite differences of L = sum G * scores for G nonzero on the
 * masked entries too (which must not count). */
static float *g_G;
static int g_probs;

static double scores_loss(void *p) {
    att *a = p;
    fs_attention_args x = args(a);
    fs_error err = {0};
    assert_int_equal(a->vt->forward(a->self, &x, &err), 0);
    size_t n = a->B * a->H * a->T * a->T;
    float *s = malloc(n * sizeof(float));
    fs_attention_scores_args sa = {sizeof sa, &x, g_probs, fs_tensor_cpu_f32(s, 4, a->B, a->H, a->T, a->T)};
    assert_int_equal(a->vt->scores(a->self, &sa, &err), 0);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)g_G[i] * s[i];
    free(s);
    return sum;
}

static void check_scores(int causal, int probs) {
    att a = make(causal, 1, 2, 150, 4, 150);
    size_t T = a.T, D = a.D, nq = a.B * a.H * T * D, ns = a.B * a.H * T * T;
    float *s = malloc(ns * sizeof(float));
    double *ref = malloc(nq * sizeof(double)), *rp = malloc(ns * sizeof(double));
    fs_attention_args x = args(&a);
    fs_error err = {0};
    assert_int_equal(a.vt->forward(a.self, &x, &err), 0);
    fs_attention_scores_args sa = {sizeof sa, &x, probs, fs_tensor_cpu_f32(s, 4, a.B, a.H, T, T)};
    assert_int_equal(a.vt->scores(a.self, &sa, &err), 0);
    reference(&a, causal, ref, rp);
    for (size_t bh = 0; bh < a.B * a.H; bh++)
        for (size_t i = 0; i < T; i++)
            for (size_t j = 0; j < T; j++) {
                size_t e = (bh * T + i) * T + j;
                double want = rp[e];
                if (!probs) { /* scale * q_i . k_j, 0 where masked */
                    want = 0;
                    if (!causal || j <= i)
                        for (size_t d = 0; d < D; d++)
                            want += (double)a.q[(bh * T + i) * D + d] * a.k[(bh * T + j) * D + d] / sqrt((double)D);
                }
                if (causal && j > i) assert_true(s[e] == 0.0f);
                assert_true(fabs(s[e] - want) < 1e-5 * (1 + fabs(want)));
            }
    /* backward of the scores: dq, dk accumulate into zeros here */
    g_G = malloc(ns * sizeof(float));
    g_probs = probs;
    test_fill(g_G, ns, 1.0f, 31);
    float *dq = calloc(nq, 4), *dk = calloc(nq, 4);
    x.dq = fs_tensor_cpu_f32(dq, 4, a.B, a.H, T, D);
    x.dk = fs_tensor_cpu_f32(dk, 4, a.B, a.H, T, D);
    sa.scores = fs_tensor_cpu_f32(g_G, 4, a.B, a.H, T, T);
    assert_int_equal(a.vt->scores_backward(a.self, &sa, &err), 0);
    fd_check_fn("scores dq", &a, a.q, dq, 11, scores_loss);
    fd_check_fn("scores dk", &a, a.k, dk, 11, scores_loss);
    free(g_G), free(dq), free(dk), free(s), free(ref), free(rp);
    release(&a);
}

static void test_scores_causal(void **state) { (void)state; check_scores(1, 0); }
static void test_probs_causal(void **state) { (void)state; check_scores(1, 1); }
static void test_probs_noncausal(void **state) { (void)state; check_scores(0, 1); }

/* Decoding token by token reproduces the causal forward, row by row. */
static void test_decode_equals_forward(void **state) {
    (void)state;
    att a = make(1, 1, 3, 7, 5, 7);
    loss(&a);
    size_t H = a.H, T = a.T, D = a.D;
    fs_error err = {0};
    void *cache = malloc(a.vt->cache_bytes(a.self, 1, T));
    assert_int_equal(a.vt->cache_reset(a.self, cache, 1, T, &err), 0);
    float q[15], k[15], v[15], o[15];
    for (size_t t = 0; t < T; t++) {
        for (size_t h = 0; h < H; h++) {
            memcpy(q + h * D, a.q + (h * T + t) * D, D * 4);
            memcpy(k + h * D, a.k + (h * T + t) * D, D * 4);
            memcpy(v + h * D, a.v + (h * T + t) * D, D * 4);
        }
        fs_attention_decode_args d = {0};
        d.struct_size = sizeof d;
        d.B = 1;
        d.pos = t;
        d.q = fs_tensor_cpu_f32(q, 4, 1, H, 1, D);
        d.k = fs_tensor_cpu_f32(k, 4, 1, H, 1, D);
        d.v = fs_tensor_cpu_f32(v, 4, 1, H, 1, D);
        d.out = fs_tensor_cpu_f32(o, 4, 1, H, 1, D);
        d.token = -1;
        assert_int_equal(a.vt->decode(a.self, cache, &d, &err), 0);
        for (size_t h = 0; h < H; h++) test_close("decode row", o + h * D, a.out + (h * T + t) * D, D, 1e-5, 1e-5);
    }
    /* the cache is full: one more token is a clear error, not a overflow */
    fs_attention_decode_args d = {0};
    d.struct_size = sizeof d;
    d.B = 1;
    d.pos = T;
    d.q = d.k = d.v = d.out = fs_tensor_cpu_f32(q, 4, 1, H, 1, D);
    assert_int_equal(a.vt->decode(a.self, cache, &d, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "context full"));
    free(cache);
    release(&a);
}

/* In generation the cache is K and V only: linear in the context. */
static void test_cache_is_linear(void **state) {
    (void)state;
    att a = make(1, 1, 2, 4, 8, 1024);
    size_t c1 = a.vt->cache_bytes(a.self, 1, 512), c2 = a.vt->cache_bytes(a.self, 1, 1024);
    assert_true(c2 < 2 * c1 + 128 && c2 > 2 * c1 - 4096);
    release(&a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_noncausal),
        cmocka_unit_test(test_dense_causal),
        cmocka_unit_test(test_dense_blocks_noncausal),
        cmocka_unit_test(test_dense_blocks_causal),
        cmocka_unit_test(test_dense_mask_causal),
        cmocka_unit_test(test_dense_mask_bidirectional),
        cmocka_unit_test(test_saved_is_linear),
        cmocka_unit_test(test_scores_causal),
        cmocka_unit_test(test_probs_causal),
        cmocka_unit_test(test_probs_noncausal),
        cmocka_unit_test(test_decode_equals_forward),
        cmocka_unit_test(test_cache_is_linear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
