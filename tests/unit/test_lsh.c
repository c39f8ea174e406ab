/* test_lsh.c — the lsh (Reformer) attention plugin against an explicit
 * T x T union mask computed here in double from the hash assignments,
 * forward and gradients; exact shared-QK attention with the self mask when
 * one round's chunk covers the sequence; finite differences; reproducible
 * rotations; decode against the forward and against an explicit
 * same-bucket reference; a whole model trains; configuration errors. Sizes
 * are odd on purpose: T is never a multiple of the chunk. */
#include <string.h>

#include "../../plugins/attention/lsh.h"
#include "fastserve/attention.h"
#include "modes/modes.h"
#include "test_util.h"

typedef struct spec {
    size_t n_hashes, n_buckets, chunk, lookback, lookahead;
    int causal;
    int full; /* 1: the mask is every key (causal: every earlier key), independent of the hashing */
} spec;

typedef struct lx {
    fs_session *s;
    const fs_attention_vtable *vt;
    void *self;
    size_t B, H, T, D;
    float *q, *k, *v, *out, *dout, *dq, *dk, *dv;
    void *saved;
    float *rot; /* the registered rotations */
} lx;

static lx make_layer(int causal, const char *keys, size_t B, size_t H, size_t T, size_t D, size_t n_layer,
                     size_t layer, uint64_t fill) {
    lx a = {0};
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[model]\nn_layer = %zu\nn_head = %zu\nn_embd = %zu\nmax_seq = %zu\n"
             "[attention]\nplugin = lsh\ncausal = %s\n%s",
             n_layer, H, H * D, T, causal ? "true" : "false", keys ? keys : "");
    a.s = test_session(ini);
    a.vt = a.s->layers[layer].plugin->desc->vtable;
    a.self = a.s->layers[layer].self;
    a.B = B, a.H = H, a.T = T, a.D = D;
    size_t n = B * H * T * D;
    a.q = test_fvec(n), a.k = test_fvec(n), a.v = test_fvec(n), a.out = test_fvec(n), a.dout = test_fvec(n);
    a.dq = test_fvec(n), a.dk = test_fvec(n), a.dv = test_fvec(n);
    test_fill(a.q, n, 1.0f, fill + 1);
    test_fill(a.k, n, 1.0f, fill + 2);
    test_fill(a.v, n, 1.0f, fill + 3);
    test_fill(a.dout, n, 1.0f, fill + 4);
    a.saved = malloc(a.vt->saved_bytes(a.self, B, T));
    assert_non_null(a.saved);
    char name[96];
    snprintf(name, sizeof name, "plugin.layer%zu.attention.rotations", layer);
    const fs_param_view *rv = fs_model_find(a.s->model, name);
    if (rv) a.rot = fs_model_block(a.s->model)->params + rv->offset;
    assert_non_null(a.rot);
    return a;
}

static lx make(int causal, const char *keys, size_t B, size_t H, size_t T, size_t D) {
    return make_layer(causal, keys, B, H, T, D, 1, 0, 30);
}

static void release(lx *a) {
    free(a->q), free(a->k), free(a->v), free(a->out), free(a->dout);
    free(a->dq), free(a->dk), free(a->dv), free(a->saved);
    fs_session_close(a->s);
}

static fs_attention_args args(lx *a) {
    fs_attention_args x = test_attention_args(a->B, a->H, a->T, a->D, a->q, a->k, a->v, a->out, a->saved);
    test_attention_grads(&x, a->H, a->D, a->dout, a->dq, a->dk, a->dv);
    return x;
}

static void forward(lx *a) {
    fs_attention_args x = args(a);
    fs_error err = {0};
    int rc = a->vt->forward(a->self, &x, &err);
    if (rc) fprintf(stderr, "forward: %s\n", err.message);
    assert_int_equal(rc, 0);
}

static void forward_backward(lx *a) {
    forward(a);
    for (size_t i = 0; i < a->B * a->H * a->T * a->D; i++) a->dk[i] = 1e9f; /* must be overwritten */
    fs_attention_args x = args(a);
    fs_error err = {0};
    int rc = a->vt->backward(a->self, &x, &err);
    if (rc) fprintf(stderr, "backward: %s\n", err.message);
    assert_int_equal(rc, 0);
}

static const int32_t *saved_buckets(const lx *a, size_t n_hashes, size_t bh) {
    lsh_saved_layout l;
    lsh_saved_layout_for(n_hashes, a->T, &l);
    return (const int32_t *)((const char *)a->saved + bh * l.per_bh + l.bucket);
}

/* The test's own hashing, in double: the bucket of row x under round r.
 * Returns the gap between the best and second-best value (for ties). */
static int32_t ref_bucket(const lx *a, const spec *sp, size_t r, const float *x, double *gap) {
    size_t half = sp->n_buckets / 2, D = a->D;
    double best = -1e300, second = -1e300;
    int32_t arg = 0;
    for (size_t c = 0; c < 2 * half; c++) {
        double p = 0;
        for (size_t d = 0; d < D; d++) p += (double)x[d] * a->rot[(r * D + d) * half + c % half];
        if (c >= half) p = -p;
        if (p > best) second = best, best = p, arg = (int32_t)c;
        else if (p > second) second = p;
    }
    *gap = best - second;
    return arg;
}

/* mask[i * T + j] = 1 when query i sees key j: the union over rounds. */
static void build_mask(const lx *a, const spec *sp, size_t bh, const int32_t *bk, uint8_t *mask) {
    size_t T = a->T;
    memset(mask, 0, T * T);
    if (sp->full) {
        for (size_t i = 0; i < T; i++)
            for (size_t j = 0; j < T; j++) mask[i * T + j] = !sp->causal || j <= i;
        return;
    }
    (void)bh;
    size_t *ord = malloc(T * sizeof *ord), *where = malloc(T * sizeof *where);
    for (size_t r = 0; r < sp->n_hashes; r++) {
        const int32_t *b = bk + r * T;
        size_t n = 0; /* stable order by (bucket, position) */
        for (int32_t bucket = 0; bucket < (int32_t)sp->n_buckets; bucket++)
            for (size_t t = 0; t < T; t++)
                if (b[t] == bucket) where[t] = n, ord[n++] = t;
        assert_int_equal(n, T);
        for (size_t i = 0; i < T; i++) {
            long ci = (long)(where[i] / sp->chunk);
            for (size_t u = 0; u < T; u++) {
                long cu = (long)(u / sp->chunk);
                if (cu < ci - (long)sp->lookback || cu > ci + (long)sp->lookahead) continue;
                size_t j = ord[u];
                if (sp->causal && j > i) continue;
                mask[i * T + j] = 1;
            }
        }
    }
    free(ord), free(where);
}

typedef struct ref {
    double *out, *dq, *dv;
} ref;

/* Shared-QK attention under a mask, forward and gradients, in double. */
static ref reference(const lx *a, const spec *sp) {
    size_t B = a->B, H = a->H, T = a->T, D = a->D, n = B * H * T * D;
    ref r = {calloc(n, sizeof(double)), calloc(n, sizeof(double)), calloc(n, sizeof(double))};
    double *kn = calloc(T * D, sizeof(double)), *dkn = calloc(T * D, sizeof(double)), *inv = calloc(T, sizeof(double));
    double *p = calloc(T, sizeof(double)), *dp = calloc(T, sizeof(double));
    uint8_t *mask = malloc(T * T);
    double scale = 1.0 / sqrt((double)D);
    for (size_t bh = 0; bh < B * H; bh++) {
        const float *q = a->q + bh * T * D, *v = a->v + bh * T * D, *dout = a->dout + bh * T * D;
        double *out = r.out + bh * T * D, *dq = r.dq + bh * T * D, *dv = r.dv + bh * T * D;
        if (!sp->full) {
            /* the plugin's saved buckets must be the test's own, except at a near tie */
            const int32_t *bk = saved_buckets(a, sp->n_hashes, bh);
            for (size_t rr = 0; rr < sp->n_hashes; rr++)
                for (size_t t = 0; t < T; t++) {
                    double gap;
                    int32_t want = ref_bucket(a, sp, rr, q + t * D, &gap);
                    if (bk[rr * T + t] != want && gap > 1e-4) {
                        fprintf(stderr, "bucket of token %zu round %zu: %d, want %d\n", t, rr, bk[rr * T + t], want);
                        fail();
                    }
                }
            build_mask(a, sp, bh, bk, mask);
        } else {
            build_mask(a, sp, bh, NULL, mask);
        }
        for (size_t t = 0; t < T; t++) {
            double s = 1e-12;
            for (size_t c = 0; c < D; c++) s += (double)q[t * D + c] * q[t * D + c];
            inv[t] = 1.0 / sqrt(s);
            for (size_t c = 0; c < D; c++) kn[t * D + c] = q[t * D + c] * inv[t];
        }
        memset(dkn, 0, T * D * sizeof(double));
        for (size_t i = 0; i < T; i++) {
            double mx = -1e300, sum = 0, Di = 0;
            for (size_t j = 0; j < T; j++) {
                if (!mask[i * T + j]) continue;
                double s = 0;
                for (size_t c = 0; c < D; c++) s += (double)q[i * D + c] * kn[j * D + c];
                p[j] = j == i ? -1e5 : s * scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (size_t j = 0; j < T; j++)
                if (mask[i * T + j]) sum += (p[j] = exp(p[j] - mx));
            for (size_t j = 0; j < T; j++) {
                if (!mask[i * T + j]) continue;
                p[j] /= sum;
                dp[j] = 0;
                for (size_t c = 0; c < D; c++) {
                    out[i * D + c] += p[j] * v[j * D + c];
                    dv[j * D + c] += p[j] * dout[i * D + c];
                    dp[j] += (double)dout[i * D + c] * v[j * D + c];
                }
                Di += p[j] * dp[j];
            }
            for (size_t j = 0; j < T; j++) {
                if (!mask[i * T + j] || j == i) continue;
                double ds = p[j] * (dp[j] - Di) * scale;
                for (size_t c = 0; c < D; c++) {
                    dq[i * D + c] += ds * kn[j * D + c];
                    dkn[j * D + c] += ds * q[i * D + c];
                }
            }
        }
        for (size_t t = 0; t < T; t++) {
            double qd = 0;
            for (size_t c = 0; c < D; c++) qd += (double)q[t * D + c] * dkn[t * D + c];
            for (size_t c = 0; c < D; c++)
                dq[t * D + c] += inv[t] * dkn[t * D + c] - inv[t] * inv[t] * inv[t] * qd * q[t * D + c];
        }
    }
    free(kn), free(dkn), free(inv), free(p), free(dp), free(mask);
    return r;
}

static void close_d(const char *what, const float *got, const double *want, size_t n, double atol, double rtol) {
    float *w = test_fvec(n);
    for (size_t i = 0; i < n; i++) w[i] = (float)want[i];
    test_close(what, got, w, n, atol, rtol);
    free(w);
}

static void check(int causal, const char *keys, const spec *sp, size_t B, size_t H, size_t T, size_t D) {
    lx a = make(causal, keys, B, H, T, D);
    forward_backward(&a);
    ref r = reference(&a, sp);
    size_t n = B * H * T * D;
    close_d("out", a.out, r.out, n, 2e-5, 1e-4);
    close_d("dq", a.dq, r.dq, n, 2e-5, 1e-4);
    close_d("dv", a.dv, r.dv, n, 2e-5, 1e-4);
    for (size_t i = 0; i < n; i++) assert_true(a.dk[i] == 0.0f);
    free(r.out), free(r.dq), free(r.dv);
    release(&a);
}

/* One round whose chunk covers the sequence: every query sees every
 * earlier token, whatever the buckets — dense shared-QK with the self mask. */
static void test_equals_full_causal(void **state) {
    (void)state;
    spec sp = {.causal = 1, .full = 1};
    check(1, "n_hashes = 1\nn_buckets = 4\nchunk = 19\n", &sp, 2, 3, 19, 5);
    check(1, "n_hashes = 1\nn_buckets = 2\nchunk = 64\nlookback = 0\n", &sp, 1, 2, 23, 8);
}

static void test_equals_full_bidirectional(void **state) {
    (void)state;
    spec sp = {.causal = 0, .full = 1};
    check(0, "n_hashes = 1\nn_buckets = 6\nchunk = 21\n", &sp, 2, 2, 21, 7);
}

static void test_rounds_causal(void **state) {
    (void)state;
    spec sp = {.n_hashes = 3, .n_buckets = 4, .chunk = 4, .lookback = 1, .causal = 1};
    check(1, "n_hashes = 3\nn_buckets = 4\nchunk = 4\n", &sp, 2, 2, 29, 6);
    spec s2 = {.n_hashes = 2, .n_buckets = 8, .chunk = 5, .lookback = 2, .causal = 1};
    check(1, "n_hashes = 2\nn_buckets = 8\nchunk = 5\nlookback = 2\n", &s2, 1, 3, 37, 8);
    spec s3 = {.n_hashes = 4, .n_buckets = 2, .chunk = 3, .lookback = 0, .causal = 1};
    check(1, "n_hashes = 4\nn_buckets = 2\nchunk = 3\nlookback = 0\n", &s3, 1, 2, 17, 4);
}

static void test_rounds_bidirectional(void **state) {
    (void)state;
    spec sp = {.n_hashes = 2, .n_buckets = 6, .chunk = 4, .lookback = 1, .lookahead = 1, .causal = 0};
    check(0, "n_hashes = 2\nn_buckets = 6\nchunk = 4\nlookahead = 1\n", &sp, 2, 2, 31, 5);
    spec s2 = {.n_hashes = 3, .n_buckets = 4, .chunk = 3, .lookback = 0, .lookahead = 2, .causal = 0};
    check(0, "n_hashes = 3\nn_buckets = 4\nchunk = 3\nlookback = 0\nlookahead = 2\n", &s2, 1, 2, 25, 6);
}

static void test_threads(void **state) {
    (void)state;
    fs_threads_set(2);
    spec sp = {.n_hashes = 2, .n_buckets = 4, .chunk = 6, .lookback = 1, .causal = 1};
    check(1, "n_hashes = 2\nn_buckets = 4\nchunk = 6\n", &sp, 3, 3, 41, 4);
    fs_threads_set(1);
}

/* bucket_size derives n_buckets from max_seq: ceil(T / (2 * size)) * 2. */
static void test_bucket_size(void **state) {
    (void)state;
    lx a = make(1, "n_hashes = 2\nbucket_size = 4\nchunk = 4\n", 1, 2, 27, 4);
    lsh_plugin *l = a.self;
    assert_int_equal(l->n_buckets, 8); /* 27 / 4 rounded up to even */
    spec sp = {.n_hashes = 2, .n_buckets = 8, .chunk = 4, .lookback = 1, .causal = 1};
    forward_backward(&a);
    ref r = reference(&a, &sp);
    close_d("out", a.out, r.out, 2 * 27 * 4, 2e-5, 1e-4);
    free(r.out), free(r.dq), free(r.dv);
    release(&a);
}

/* ---- finite differences on the plugin itself (float, central) ---- */

static double loss_of(lx *a) {
    forward(a);
    double s = 0;
    for (size_t i = 0; i < a->B * a->H * a->T * a->D; i++) s += (double)a->out[i] * a->dout[i];
    return s;
}

static void check_fd(int causal, const char *keys, size_t n_hashes, size_t B, size_t H, size_t T, size_t D) {
    lx a = make(causal, keys, B, H, T, D);
    size_t n = B * H * T * D, nb = B * H * n_hashes * T;
    forward_backward(&a);
    float *dq = test_fvec(n), *dv = test_fvec(n);
    memcpy(dq, a.dq, n * sizeof(float));
    memcpy(dv, a.dv, n * sizeof(float));
    int32_t *b0 = malloc(nb * sizeof(int32_t));
    for (size_t bh = 0; bh < B * H; bh++) memcpy(b0 + bh * n_hashes * T, saved_buckets(&a, n_hashes, bh), n_hashes * T * sizeof(int32_t));
    const float h = 2e-3f;
    size_t checked = 0;
    for (size_t i = 0; i < n; i += 3) {
        for (int which = 0; which < 2; which++) {
            float *x = which ? a.v : a.q, x0 = x[i];
            x[i] = x0 + h;
            double lp = loss_of(&a);
            int same = 1;
            for (size_t bh = 0; bh < B * H; bh++)
                same &= memcmp(b0 + bh * n_hashes * T, saved_buckets(&a, n_hashes, bh), n_hashes * T * sizeof(int32_t)) == 0;
            x[i] = x0 - h;
            double lm = loss_of(&a);
            for (size_t bh = 0; bh < B * H; bh++)
                same &= memcmp(b0 + bh * n_hashes * T, saved_buckets(&a, n_hashes, bh), n_hashes * T * sizeof(int32_t)) == 0;
            x[i] = x0;
            if (!same) continue; /* the hash moved: the loss is not differentiable there */
            double fd = (lp - lm) / (2.0 * h), g = which ? dv[i] : dq[i];
            if (fabs(fd - g) > 5e-3 + 2e-2 * fabs(g)) {
                fprintf(stderr, "d%s[%zu]: analytic %.6g, finite difference %.6g\n", which ? "v" : "q", i, g, fd);
                fail();
            }
            checked++;
        }
    }
    assert_true(checked > n / 2);
    free(dq), free(dv), free(b0);
    release(&a);
}

static void test_fd(void **state) {
    (void)state;
    check_fd(1, "n_hashes = 2\nn_buckets = 4\nchunk = 3\n", 2, 1, 2, 13, 5);
    check_fd(0, "n_hashes = 3\nn_buckets = 2\nchunk = 4\nlookahead = 1\n", 3, 2, 3, 11, 3);
    check_fd(1, "n_hashes = 1\nn_buckets = 2\nchunk = 15\n", 1, 1, 2, 15, 7);
}

/* ---- rotations ---- */

static void test_rotations_reproducible(void **state) {
    (void)state;
    const char *keys = "n_hashes = 2\nn_buckets = 6\n";
    lx a = make_layer(1, keys, 1, 2, 8, 4, 2, 0, 1), b = make_layer(1, keys, 1, 2, 8, 4, 2, 0, 1);
    lx c = make_layer(1, keys, 1, 2, 8, 4, 2, 1, 1);
    size_t n = 2 * 4 * 3;
    assert_memory_equal(a.rot, b.rot, n * sizeof(float));
    assert_memory_not_equal(a.rot, c.rot, n * sizeof(float)); /* each layer its own */
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) s += a.rot[i], s2 += (double)a.rot[i] * a.rot[i];
    assert_true(fabs(s / n) < 1.0 && s2 / n > 0.2 && s2 / n < 3.0); /* roughly standard normal */
    release(&a), release(&b), release(&c);
}

/* ---- generation ---- */

static void decode_all(lx *a, float *got) {
    size_t B = a->B, H = a->H, T = a->T, D = a->D;
    fs_error err = {0};
    void *cache = malloc(a->vt->cache_bytes(a->self, B, T));
    assert_int_equal(a->vt->cache_reset(a->self, cache, B, T, &err), 0);
    float *q1 = test_fvec(B * H * D), *k1 = test_fvec(B * H * D), *v1 = test_fvec(B * H * D), *o1 = test_fvec(B * H * D);
    for (size_t t = 0; t < T; t++) {
        for (size_t bh = 0; bh < B * H; bh++) {
            memcpy(q1 + bh * D, a->q + (bh * T + t) * D, D * sizeof(float));
            memcpy(k1 + bh * D, a->k + (bh * T + t) * D, D * sizeof(float));
            memcpy(v1 + bh * D, a->v + (bh * T + t) * D, D * sizeof(float));
        }
        fs_attention_decode_args d = {0};
        d.struct_size = sizeof d;
        d.B = B;
        d.pos = t;
        d.q = fs_tensor_cpu_f32(q1, 4, B, H, 1, D);
        d.k = fs_tensor_cpu_f32(k1, 4, B, H, 1, D);
        d.v = fs_tensor_cpu_f32(v1, 4, B, H, 1, D);
        d.out = fs_tensor_cpu_f32(o1, 4, B, H, 1, D);
        d.token = -1;
        int rc = a->vt->decode(a->self, cache, &d, &err);
        if (rc) fprintf(stderr, "decode: %s\n", err.message);
        assert_int_equal(rc, 0);
        for (size_t bh = 0; bh < B * H; bh++) memcpy(got + (bh * T + t) * D, o1 + bh * D, D * sizeof(float));
    }
    free(q1), free(k1), free(v1), free(o1), free(cache);
}

/* With a decode window covering the context, decode is full shared-QK
 * attention: the forward of one round whose chunk covers the sequence. */
static void test_decode_equals_forward(void **state) {
    (void)state;
    lx a = make(1, "n_hashes = 1\nn_buckets = 4\nchunk = 17\ndecode_window = 17\n", 2, 2, 17, 6);
    size_t n = 2 * 2 * 17 * 6;
    float *got = test_fvec(n);
    forward(&a);
    decode_all(&a, got);
    test_close("decoded vs forward", got, a.out, n, 1e-5, 1e-4);
    free(got);
    release(&a);
}

/* With decode_window = 0 a new token sees exactly the earlier tokens that
 * share one of its buckets (and itself): an explicit reference. */
static void test_decode_buckets(void **state) {
    (void)state;
    size_t B = 1, H = 2, T = 23, D = 5;
    lx a = make(1, "n_hashes = 2\nn_buckets = 4\ndecode_window = 0\n", B, H, T, D);
    spec sp = {.n_hashes = 2, .n_buckets = 4};
    float *got = test_fvec(B * H * T * D), *want = test_fvec(B * H * T * D);
    decode_all(&a, got);
    int32_t *bk = malloc(2 * T * sizeof(int32_t));
    for (size_t bh = 0; bh < B * H; bh++) {
        const float *q = a.q + bh * T * D, *v = a.v + bh * T * D;
        for (size_t r = 0; r < 2; r++)
            for (size_t t = 0; t < T; t++) {
                double gap;
                bk[r * T + t] = ref_bucket(&a, &sp, r, q + t * D, &gap);
                assert_true(gap > 1e-5); /* no near ties in this data */
            }
        for (size_t i = 0; i < T; i++) {
            double w[64], mx = -1e300, sum = 0, ni = 0;
            for (size_t c = 0; c < D; c++) ni += (double)q[i * D + c] * q[i * D + c];
            (void)ni;
            for (size_t j = 0; j <= i; j++) {
                int see = j == i || bk[j] == bk[i] || bk[T + j] == bk[T + i];
                w[j] = -1e300;
                if (!see) continue;
                double s = 0, nj = 1e-12;
                for (size_t c = 0; c < D; c++) s += (double)q[i * D + c] * q[j * D + c], nj += (double)q[j * D + c] * q[j * D + c];
                w[j] = j == i ? -1e5 : s / sqrt(nj) / sqrt((double)D);
                mx = w[j] > mx ? w[j] : mx;
            }
            double o[8] = {0};
            for (size_t j = 0; j <= i; j++) {
                if (w[j] == -1e300) continue;
                double e = exp(w[j] - mx);
                sum += e;
                for (size_t c = 0; c < D; c++) o[c] += e * v[j * D + c];
            }
            for (size_t c = 0; c < D; c++) want[(bh * T + i) * D + c] = (float)(o[c] / sum);
        }
    }
    test_close("decoded vs same-bucket reference", got, want, B * H * T * D, 1e-5, 1e-4);
    free(got), free(want), free(bk);
    release(&a);
}

/* ---- a whole model: trains and generates ---- */

static void test_model(void **state) {
    (void)state;
    fs_session *s = test_session("[model]\nvocab_size = 32\nn_layer = 2\nn_head = 2\nn_embd = 8\nmax_seq = 24\n"
                                 "[attention]\nplugin = lsh\nn_hashes = 2\nn_buckets = 4\nchunk = 4\n");
    fs_model_init_weights(s->model, 7);
    fs_error err = {0};
    assert_int_equal(fs_model_init_plugin_params(s->model, &err), 0);
    fs_model *m = s->model;
    int32_t in[2 * 21], tg[2 * 21];
    for (size_t i = 0; i < 42; i++) in[i] = (int32_t)((i * 7 + 3) % 32), tg[i] = (int32_t)((i * 5 + 1) % 32);
    fs_model_zero_grad(m);
    assert_int_equal(fs_model_forward(m, in, 2, 21, &err), 0);
    double loss = fs_model_loss(m, tg, 1.0f);
    assert_true(isfinite(loss) && loss > 0);
    assert_int_equal(fs_model_backward(m, NULL, &err), 0);
    const fs_param_block *pb = fs_model_block(m);
    size_t n_plugin = 0;
    for (size_t i = 0; i < pb->n_views; i++) {
        if (!pb->views[i].plugin) continue;
        n_plugin++; /* the rotations of both layers: not trained */
        for (size_t j = 0; j < pb->views[i].numel; j++) assert_true(pb->grads[pb->views[i].offset + j] == 0.0f);
    }
    assert_int_equal(n_plugin, 2);
    float logits[32];
    fs_seq *seq = test_seq(m, 1, 0);
    for (size_t t = 0; t < 24; t++) {
        assert_int_equal(fs_seq_decode(seq, &in[t], logits, &err), 0);
        for (size_t i = 0; i < 32; i++) assert_true(isfinite(logits[i]));
    }
    fs_seq_destroy(seq);
    fs_session_close(s);
}

/* ---- configuration errors ---- */

static void expect_error(const char *keys, const char *a, const char *b) {
    char ini[512];
    snprintf(ini, sizeof ini,
             "[model]\nn_layer = 2\nn_head = 2\nn_embd = 8\nmax_seq = 256\n[attention]\nplugin = lsh\n%s", keys);
    test_session_error(ini, a, b);
}

static void test_bad_config(void **state) {
    (void)state;
    expect_error("n_buckets = 3\n", "[attention] n_buckets = 3", "even");
    expect_error("n_buckets = 1\n", "[attention] n_buckets = 1", ">= 2");
    expect_error("n_buckets = -4\n", "[attention] n_buckets = -4", "even");
    expect_error("chunk = 0\n", "[attention] chunk = 0", "positive");
    expect_error("chunk = -2\n", "[attention] chunk = -2", "positive");
    expect_error("n_hashes = 0\n", "[attention] n_hashes = 0", "positive");
    expect_error("n_hashes = -1\n", "[attention] n_hashes = -1", "positive");
    expect_error("bucket_size = 0\n", "[attention] bucket_size = 0", "positive");
    expect_error("lookback = -1\n", "[attention] lookback = -1", NULL);
    expect_error("[layer.1]\nn_buckets = 5\n", "[layer.1] n_buckets = 5", "even");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equals_full_causal),
        cmocka_unit_test(test_equals_full_bidirectional),
        cmocka_unit_test(test_rounds_causal),
        cmocka_unit_test(test_rounds_bidirectional),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_bucket_size),
        cmocka_unit_test(test_fd),
        cmocka_unit_test(test_rotations_reproducible),
        cmocka_unit_test(test_decode_equals_forward),
        cmocka_unit_test(test_decode_buckets),
        cmocka_unit_test(test_model),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
