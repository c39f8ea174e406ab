/* test_ops.c — every kernel's backward against central finite differences.
 *
 * Each check builds a scalar L = sum(out * w) with fixed random w, so
 * dL/dout = w, runs the kernel's backward with dout = w and compares each
 * input gradient with (L(x + h) - L(x - h)) / 2h, L summed in double. */
#include <string.h>

#include "compute/ops.h"
#include "test_util.h"

typedef double (*loss_fn)(void *ctx);

/* Checks grad (n) of *x against finite differences of fn, on every
 * `stride`-th element. */
static void check_fd_every(const char *what, float *x, const float *grad, size_t n, loss_fn fn, void *ctx,
                           float h, double tol, size_t stride) {
    for (size_t i = 0; i < n; i += stride) {
        float keep = x[i];
        x[i] = keep + h;
        double lp = fn(ctx);
        x[i] = keep - h;
        double lm = fn(ctx);
        x[i] = keep;
        double fd = (lp - lm) / (2.0 * (double)h);
        double err = fabs(fd - grad[i]), scale = fabs(fd) > 1.0 ? fabs(fd) : 1.0;
        if (err > tol * scale) {
            fprintf(stderr, "%s[%zu]: analytic %.7g, finite difference %.7g\n", what, i, grad[i], fd);
            fail();
        }
    }
}

/* On every element (the sizes here are small). */
static void check_fd(const char *what, float *x, const float *grad, size_t n, loss_fn fn, void *ctx, float h,
                     double tol) {
    check_fd_every(what, x, grad, n, fn, ctx, h, tol, 1);
}

static double dot(const float *a, const float *w, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * w[i];
    return s;
}

/* ---- layernorm ---- */
typedef struct ln_ctx {
    float *out, *mean, *rstd, *x, *w, *b, *dout;
    size_t N, C;
} ln_ctx;

static double ln_loss(void *p) {
    ln_ctx *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->x, c->w, c->b, c->N, c->C);
    return dot(c->out, c->dout, c->N * c->C);
}

/* Every `stride`-th element by finite differences. */
static void check_layernorm(size_t N, size_t C, size_t stride) {
    ln_ctx c = {malloc(N * C * 4), malloc(N * 4), malloc(N * 4), malloc(N * C * 4), malloc(C * 4), malloc(C * 4),
                malloc(N * C * 4), N, C};
    test_fill(c.x, N * C, 1.0f, 1);
    test_fill(c.w, C, 1.0f, 2);
    test_fill(c.b, C, 1.0f, 3);
    test_fill(c.dout, N * C, 1.0f, 4);
    float *dx = malloc(N * C * 4), *dw = calloc(C, 4), *db = calloc(C, 4);
    ln_loss(&c);
    /* the forward itself: mean 0, variance 1 before the affine part */
    for (size_t n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (size_t i = 0; i < C; i++) m += c.x[n * C + i];
        m /= C;
        for (size_t i = 0; i < C; i++) v += (c.x[n * C + i] - m) * (c.x[n * C + i] - m);
        v /= C;
        for (size_t i = 0; i < C; i++) {
            double want = (c.x[n * C + i] - m) / sqrt(v + 1e-5) * c.w[i] + c.b[i];
            assert_true(fabs(want - c.out[n * C + i]) < 1e-5);
        }
    }
    layernorm_backward(dx, dw, db, c.dout, c.x, c.w, c.mean, c.rstd, N, C);
    check_fd_every("layernorm dx", c.x, dx, N * C, ln_loss, &c, 1e-2f, 2e-3, stride);
    check_fd("layernorm dw", c.w, dw, C, ln_loss, &c, 1e-2f, 2e-3);
    check_fd("layernorm db", c.b, db, C, ln_loss, &c, 1e-2f, 2e-3);
    free(dx), free(dw), free(db);
    free(c.out), free(c.mean), free(c.rstd), free(c.x), free(c.w), free(c.b), free(c.dout);
}

static void test_layernorm(void **state) {
    (void)state;
    check_layernorm(5, 7, 1);
}

/* Rows of vector lanes and a tail (37 = 2 x 16 + 5), enough rows that the
 * kernels run multi-threaded (N * C >= FS_PARALLEL_MIN): per-thread partial
 * sums of dweight and dbias. dw, db summed over all rows: checked on every
 * element, dx on a sample. */
static void test_layernorm_wide(void **state) {
    (void)state;
    assert_true(1000 * 37 >= FS_PARALLEL_MIN);
    check_layernorm(1000, 37, 97);
}

/* ---- matmul ---- */
typedef struct mm_ctx {
    float *out, *x, *w, *b, *dout;
    size_t N, C, OC;
} mm_ctx;

static double mm_loss(void *p) {
    mm_ctx *c = p;
    matmul_forward(c->out, c->x, c->w, c->b, c->N, c->C, c->OC);
    return dot(c->out, c->dout, c->N * c->OC);
}

static void test_matmul(void **state) {
    (void)state;
    size_t N = 6, C = 5, OC = 9;
    mm_ctx c = {malloc(N * OC * 4), malloc(N * C * 4), malloc(C * OC * 4), malloc(OC * 4), malloc(N * OC * 4), N, C,
                OC};
    test_fill(c.x, N * C, 1.0f, 5);
    test_fill(c.w, C * OC, 1.0f, 6);
    test_fill(c.b, OC, 1.0f, 7);
    test_fill(c.dout, N * OC, 1.0f, 8);
    mm_loss(&c);
    /* forward against a naive triple loop: out = x @ w + b, w stored (C, OC) */
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < OC; o++) {
            double s = c.b[o];
            for (size_t i = 0; i < C; i++) s += (double)c.x[n * C + i] * c.w[i * OC + o];
            assert_true(fabs(s - c.out[n * OC + o]) < 1e-4);
        }
    float *dx = malloc(N * C * 4), *dw = calloc(C * OC, 4), *db = calloc(OC, 4);
    matmul_backward(dx, dw, db, c.dout, c.x, c.w, N, C, OC);
    check_fd("matmul dx", c.x, dx, N * C, mm_loss, &c, 1e-2f, 1e-3);
    check_fd("matmul dw", c.w, dw, C * OC, mm_loss, &c, 1e-2f, 1e-3);
    check_fd("matmul db", c.b, db, OC, mm_loss, &c, 1e-2f, 1e-3);
    /* parameter gradients accumulate */
    matmul_backward(NULL, dw, db, c.dout, c.x, c.w, N, C, OC);
    float *dw1 = calloc(C * OC, 4), *db1 = calloc(OC, 4);
    matmul_backward(NULL, dw1, db1, c.dout, c.x, c.w, N, C, OC);
    for (size_t i = 0; i < C * OC; i++) assert_true(fabsf(dw[i] - 2 * dw1[i]) < 1e-4f * (1 + fabsf(dw[i])));
    for (size_t i = 0; i < OC; i++) assert_true(fabsf(db[i] - 2 * db1[i]) < 1e-4f * (1 + fabsf(db[i])));
    free(dx), free(dw), free(db), free(dw1), free(db1);
    free(c.out), free(c.x), free(c.w), free(c.b), free(c.dout);
}

/* ---- gelu ---- */
typedef struct gelu_ctx {
    float *out, *x, *dout;
    size_t n;
} gelu_ctx;

static double gelu_loss(void *p) {
    gelu_ctx *c = p;
    gelu_forward(c->out, c->x, c->n);
    return dot(c->out, c->dout, c->n);
}

static void test_gelu(void **state) {
    (void)state;
    size_t n = 64;
    gelu_ctx c = {malloc(n * 4), malloc(n * 4), malloc(n * 4), n};
    test_fill(c.x, n, 3.0f, 9);
    c.x[0] = 0.0f, c.x[1] = 1e-4f, c.x[2] = -12.0f, c.x[3] = 12.0f, c.x[4] = 60.0f, c.x[5] = -60.0f;
    test_fill(c.dout, n, 1.0f, 10);
    gelu_loss(&c);
    for (size_t i = 0; i < n; i++) { /* GPT-2's tanh approximation, in double */
        double x = c.x[i], want = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        assert_true(fabs(want - c.out[i]) < 1e-6 * (1 + fabs(want)));
    }
    float *dx = malloc(n * 4);
    gelu_backward(dx, c.x, c.dout, n);
    check_fd("gelu dx", c.x, dx, n, gelu_loss, &c, 1e-3f, 2e-3);
    free(dx), free(c.out), free(c.x), free(c.dout);
}

/* ---- encoder ---- */
typedef struct enc_ctx {
    float *out, *wte, *wpe, *dout;
    int32_t *tok;
    size_t B, T, C;
} enc_ctx;

static double enc_loss(void *p) {
    enc_ctx *c = p;
    encoder_forward(c->out, c->tok, c->wte, c->wpe, c->B, c->T, c->C, 0);
    return dot(c->out, c->dout, c->B * c->T * c->C);
}

static void test_encoder(void **state) {
    (void)state;
    size_t B = 2, T = 3, C = 4, V = 5;
    int32_t tok[6] = {1, 4, 1, 0, 1, 3}; /* token 1 three times: gradients add */
    enc_ctx c = {malloc(B * T * C * 4), malloc(V * C * 4), malloc(T * C * 4), malloc(B * T * C * 4), tok, B, T, C};
    test_fill(c.wte, V * C, 1.0f, 11);
    test_fill(c.wpe, T * C, 1.0f, 12);
    test_fill(c.dout, B * T * C, 1.0f, 13);
    float *dwte = calloc(V * C, 4), *dwpe = calloc(T * C, 4);
    encoder_backward(dwte, dwpe, c.dout, tok, B, T, C, 0);
    check_fd("encoder dwte", c.wte, dwte, V * C, enc_loss, &c, 1e-2f, 1e-3);
    check_fd("encoder dwpe", c.wpe, dwpe, T * C, enc_loss, &c, 1e-2f, 1e-3);
    free(dwte), free(dwpe), free(c.out), free(c.wte), free(c.wpe), free(c.dout);
}

/* ---- cross-entropy ---- */
typedef struct ce_ctx {
    float *logits;
    int32_t *y;
    size_t N, V;
} ce_ctx;

static double ce_loss(void *p) {
    ce_ctx *c = p;
    return crossentropy_softmax_forward_backward(NULL, c->logits, c->y, c->N, c->V, 0) / (double)c->N;
}

static void test_crossentropy(void **state) {
    (void)state;
    size_t N = 4, V = 6;
    int32_t y[4] = {0, 5, 2, 2};
    ce_ctx c = {malloc(N * V * 4), y, N, V};
    test_fill(c.logits, N * V, 2.0f, 14);
    c.logits[0] = 80.0f; /* large logits must not overflow */
    float *d = malloc(N * V * 4);
    double total = crossentropy_softmax_forward_backward(d, c.logits, y, N, V, 1.0f / (float)N);
    double want = 0;
    for (size_t n = 0; n < N; n++) {
        double mx = -1e30, s = 0;
        for (size_t i = 0; i < V; i++) mx = fmax(mx, c.logits[n * V + i]);
        for (size_t i = 0; i < V; i++) s += exp(c.logits[n * V + i] - mx);
        want += mx + log(s) - c.logits[n * V + y[n]];
    }
    assert_true(fabs(total - want) < 1e-4);
    check_fd("cross-entropy dlogits", c.logits, d, N * V, ce_loss, &c, 1e-2f, 1e-3);
    free(d), free(c.logits);
}

/* Rows longer than the vector lanes with a tail (V = 300), multi-threaded
 * (N * V >= FS_PARALLEL_MIN): loss and every gradient against softmax in
 * double, dlogits = (softmax - onehot) * scale; finite differences on a
 * sample. */
static void test_crossentropy_wide(void **state) {
    (void)state;
    size_t N = 130, V = 300;
    assert_true(N * V >= FS_PARALLEL_MIN);
    int32_t *y = malloc(N * sizeof(int32_t));
    for (size_t n = 0; n < N; n++) y[n] = (int32_t)((n * 37) % V);
    ce_ctx c = {malloc(N * V * 4), y, N, V};
    test_fill(c.logits, N * V, 3.0f, 15);
    c.logits[5 * V + 7] = 90.0f;
    float scale = 0.37f, *d = malloc(N * V * 4);
    double total = crossentropy_softmax_forward_backward(d, c.logits, y, N, V, scale), want = 0;
    for (size_t n = 0; n < N; n++) {
        const float *z = c.logits + n * V;
        double mx = -1e30, s = 0;
        for (size_t i = 0; i < V; i++) mx = fmax(mx, z[i]);
        for (size_t i = 0; i < V; i++) s += exp(z[i] - mx);
        want += mx + log(s) - z[y[n]];
        for (size_t i = 0; i < V; i++) {
            double g = (exp(z[i] - mx) / s - (i == (size_t)y[n])) * scale;
            if (fabs(d[n * V + i] - g) > 1e-6) {
                fprintf(stderr, "dlogits[%zu][%zu]: got %.9g, want %.9g\n", n, i, d[n * V + i], g);
                fail();
            }
        }
    }
    assert_true(fabs(total - want) < 1e-5 * want);
    /* the gradient of the mean loss is scale = 1 / N */
    crossentropy_softmax_forward_backward(d, c.logits, y, N, V, 1.0f / (float)N);
    check_fd_every("cross-entropy dlogits", c.logits, d, N * V, ce_loss, &c, 1e-2f, 1e-3, 101);
    free(d), free(c.logits), free(y);
}

static void test_head_permutations(void **state) {
    (void)state;
    size_t B = 2, T = 3, H = 2, D = 4, C = H * D;
    float qkv[2 * 3 * 3 * 8], q[48], k[48], v[48], back[2 * 3 * 3 * 8], merged[48], y[48];
    for (size_t i = 0; i < sizeof qkv / 4; i++) qkv[i] = (float)i;
    attention_split_heads(q, k, v, qkv, B, T, H, D);
    /* q[b,h,t,d] = qkv[b,t,h*D+d], k at offset C, v at 2C */
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t t = 0; t < T; t++)
                for (size_t d = 0; d < D; d++) {
                    size_t o = ((b * H + h) * T + t) * D + d, r = (b * T + t) * 3 * C + h * D + d;
                    assert_true(q[o] == qkv[r] && k[o] == qkv[r + C] && v[o] == qkv[r + 2 * C]);
                }
    attention_split_heads_backward(back, q, k, v, B, T, H, D);
    assert_memory_equal(back, qkv, sizeof qkv);
    attention_merge_heads(merged, q, B, T, H, D);
    attention_merge_heads_backward(y, merged, B, T, H, D);
    assert_memory_equal(y, q, sizeof q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm),  cmocka_unit_test(test_matmul),       cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_encoder),    cmocka_unit_test(test_crossentropy), cmocka_unit_test(test_head_permutations),
        cmocka_unit_test(test_layernorm_wide), cmocka_unit_test(test_crossentropy_wide),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
