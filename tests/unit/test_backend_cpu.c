/* test_backend_cpu.c — the cpu backend's vtable beyond what the composed
 * GPT (test_backend_gpt.c) reaches, each against a reference computed here
 * in double: strided and batched GEMM with a bias and beta, the bias
 * gradient over padded rows, cross-entropy over padded rows and in place,
 * softmax, sums of squares and scaling, AdamW with a gradient scale,
 * sampling against hand-worked rows, memory and streams, and the bf16
 * refusal that names the fix. */
#include <string.h>

#include "model/device_gpt.h"
#include "test_util.h"

static fs_backend_handle g_b;

static int setup(void **state) {
    (void)state;
    fs_error err = {0};
    if (fs_backend_handle_open(&g_b, "cpu", 0, NULL, &err)) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    fs_backend_handle_close(&g_b);
    return 0;
}

#define VT g_b.vt
#define BE g_b.self

/* C = alpha op(A) op(B) + beta C + bias in double, one matrix. */
static void ref_gemm(double *c, const float *a, const float *b, const float *c0, const float *bias, int ta, int tb,
                     size_t m, size_t n, size_t k, size_t lda, size_t ldb, size_t ldc, float alpha, float beta) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t p = 0; p < k; p++)
                s += (double)(ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
            c[i * n + j] = alpha * s + beta * c0[i * ldc + j] + (bias ? bias[j] : 0.0);
        }
}

static void check_gemm(int ta, int tb, float beta, int with_bias, size_t batch) {
    size_t m = 5, n = 7, k = 3, lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
    size_t sa = (ta ? k : m) * lda + 4, sb = (tb ? n : k) * ldb, sc = m * ldc + 1;
    float *a = test_fvec(batch * sa), *b = test_fvec(batch * sb), *c = test_fvec(batch * sc), *c0 = test_fvec(batch * sc);
    float bias[7];
    test_fill(a, batch * sa, 1.0f, 1);
    test_fill(b, batch * sb, 1.0f, 2);
    test_fill(c0, batch * sc, 1.0f, 3);
    test_fill(bias, 7, 1.0f, 4);
    memcpy(c, c0, batch * sc * sizeof(float));
    fs_gemm_args g = {.struct_size = sizeof g, .c = c, .a = a, .b = b, .trans_a = ta, .trans_b = tb, .m = m, .n = n,
                      .k = k, .lda = lda, .ldb = ldb, .ldc = ldc, .batch = batch, .stride_a = sa, .stride_b = sb,
                      .stride_c = sc, .alpha = 0.5f, .beta = beta, .bias = with_bias ? bias : NULL};
    fs_error err = {0};
    assert_int_equal(VT->gemm(BE, NULL, &g, &err), 0);
    double want[35];
    for (size_t i = 0; i < batch; i++) {
        ref_gemm(want, a + i * sa, b + i * sb, c0 + i * sc, with_bias ? bias : NULL, ta, tb, m, n, k, lda, ldb, ldc,
                 0.5f, beta);
        for (size_t r = 0; r < m; r++)
            for (size_t j = 0; j < n; j++) assert_true(fabs(c[i * sc + r * ldc + j] - want[r * n + j]) < 1e-5);
        /* the padding between rows is untouched */
        for (size_t r = 0; r < m; r++)
            for (size_t j = n; j < ldc && r * ldc + j < sc; j++)
                assert_true(c[i * sc + r * ldc + j] == c0[i * sc + r * ldc + j]);
    }
    free(a), free(b), free(c), free(c0);
}

static void test_gemm(void **state) {
    (void)state;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            check_gemm(ta, tb, 0.0f, 0, 1);
            check_gemm(ta, tb, 0.0f, 1, 3);
            check_gemm(ta, tb, 0.75f, 1, 2);
        }
}

static void test_bias_backward_padded_rows(void **state) {
    (void)state;
    size_t N = 9, OC = 70, ld = 75;
    float *dout = test_fvec(N * ld), db[70];
    test_fill(dout, N * ld, 1.0f, 5);
    for (size_t o = 0; o < OC; o++) db[o] = 1.0f;
    fs_error err = {0};
    assert_int_equal(VT->bias_backward(BE, NULL, db, dout, N, OC, ld, FS_DTYPE_F32, &err), 0);
    for (size_t o = 0; o < OC; o++) {
        double s = 1.0;
        for (size_t i = 0; i < N; i++) s += dout[i * ld + o];
        assert_true(fabs(db[o] - s) < 1e-5);
    }
    free(dout);
}

/* Softmax cross-entropy in double: the summed loss and (p - onehot) * scale. */
static double ref_ce(double *d, const float *z, int32_t y, size_t V, double scale) {
    double mx = z[0], sum = 0;
    for (size_t i = 1; i < V; i++) mx = z[i] > mx ? z[i] : mx;
    for (size_t i = 0; i < V; i++) sum += exp(z[i] - mx);
    for (size_t i = 0; i < V; i++) d[i] = exp(z[i] - mx) / sum * scale - (i == (size_t)y ? scale : 0.0);
    return mx + log(sum) - z[y];
}

static void check_ce(size_t ld, int in_place) {
    size_t N = 4, V = 11;
    float *z = test_fvec(N * ld), *d = in_place ? z : test_fvec(N * ld);
    test_fill(z, N * ld, 3.0f, 6);
    float *z0 = test_fvec(N * ld);
    memcpy(z0, z, N * ld * sizeof(float));
    int32_t y[4] = {0, 10, 3, 3};
    double loss = 0, want = 0, dref[11];
    fs_error err = {0};
    assert_int_equal(VT->crossentropy_forward_backward(BE, NULL, &loss, d, z, y, N, V, ld, 0.25f, FS_DTYPE_F32, &err),
                     0);
    for (size_t n = 0; n < N; n++) {
        want += ref_ce(dref, z0 + n * ld, y[n], V, 0.25);
        for (size_t i = 0; i < V; i++) assert_true(fabs(d[n * ld + i] - dref[i]) < 1e-6);
    }
    assert_true(fabs(loss - want) < 1e-5);
    free(z), free(z0);
    if (!in_place) free(d);
}

static void test_crossentropy(void **state) {
    (void)state;
    check_ce(11, 0);
    check_ce(11, 1);
    check_ce(16, 0); /* rows padded to 16 (a vocabulary rounded up) */
    check_ce(16, 1);
}

static void test_softmax(void **state) {
    (void)state;
    float z[6] = {1, 2, 3, -1, 0, 5}, p[6];
    fs_error err = {0};
    assert_int_equal(VT->softmax_forward(BE, NULL, p, z, 2, 3, 0.5f, FS_DTYPE_F32, &err), 0);
    for (size_t r = 0; r < 2; r++) {
        double s = 0;
        for (size_t i = 0; i < 3; i++) s += exp((z[r * 3 + i] - z[r * 3 + 2]) / 0.5);
        for (size_t i = 0; i < 3; i++) assert_true(fabs(p[r * 3 + i] - exp((z[r * 3 + i] - z[r * 3 + 2]) / 0.5) / s) < 1e-6);
    }
}

static void test_sumsq_scale_adamw(void **state) {
    (void)state;
    size_t n = 100000; /* above FS_PARALLEL_MIN: the threaded loops */
    float *x = test_fvec(n), *p = test_fvec(n), *mm = test_fvec(n), *vv = test_fvec(n);
    test_fill(x, n, 1.0f, 7);
    test_fill(p, n, 1.0f, 8);
    double want = 0, got = 3.0;
    for (size_t i = 0; i < n; i++) want += (double)x[i] * x[i];
    fs_error err = {0};
    assert_int_equal(VT->sumsq(BE, NULL, &got, x, n, &err), 0);
    assert_true(fabs(got - (3.0 + want)) < 1e-9 * want); /* accumulates */
    float p0 = p[17], g = x[17];
    assert_int_equal(VT->adamw_update(BE, NULL, p, NULL, mm, vv, x, n, 0.1f, 0.9f, 0.95f, 1e-8f, 0.5f, 0.25f, 1,
                                      FS_DTYPE_F32, &err),
                     0);
    /* step 1 from zero moments: mhat = g', vhat = g'^2, g' = 0.25 g */
    double gs = 0.25 * g, want_p = p0 * (1 - 0.1 * 0.5) - 0.1 * gs / (fabs(gs) + 1e-8);
    assert_true(fabs(p[17] - want_p) < 1e-5);
    assert_true(fabs(mm[17] - 0.1 * gs) < 1e-7);
    float x17 = x[17];
    assert_int_equal(VT->scale(BE, NULL, x, -2.0f, n, &err), 0);
    assert_true(x[17] == -2.0f * x17);
    free(x), free(p), free(mm), free(vv);
}

/* Rows worked by hand: probabilities of logits log(w) at temperature 1 are
 * w / sum(w). */
static void test_sample(void **state) {
    (void)state;
    float w[5] = {0.1f, 0.4f, 0.2f, 0.2f, 0.1f}, z[10];
    for (size_t i = 0; i < 5; i++) z[i] = z[5 + i] = logf(w[i]);
    fs_sample_params p[2] = {{0.0f, 1.0f, 0, 0.99f}, {1.0f, 1.0f, 0, 0.0f}};
    int32_t tok[2];
    fs_error err = {0};
    /* greedy: the maximum; sampling with u = 0: the most likely */
    assert_int_equal(VT->sample(BE, NULL, tok, z, 2, 5, 5, p, FS_DTYPE_F32, &err), 0);
    assert_int_equal(tok[0], 1);
    assert_int_equal(tok[1], 1);
    /* sorted: 1 (0.4), 2 (0.2), 3 (0.2, tie after 2), 0 (0.1), 4 (0.1) */
    struct {
        float u, top_p;
        uint32_t top_k;
        int32_t want;
    } cases[] = {
        {0.45f, 1.0f, 0, 2},  /* cumulative 0.4 | 0.6 */
        {0.65f, 1.0f, 0, 3},  /* 0.6 | 0.8 */
        {0.85f, 1.0f, 0, 0},  /* 0.8 | 0.9 */
        {0.95f, 1.0f, 0, 4},
        {0.95f, 1.0f, 2, 2},  /* top 2 keep mass 0.6: u * 0.6 = 0.57 */
        {0.5f, 0.5f, 0, 1},   /* top_p 0.5 keeps {1, 2} (0.4, then 0.6): u * 0.6 = 0.3 < 0.4 */
        {0.9f, 0.5f, 0, 2},   /* u * 0.6 = 0.54 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fs_sample_params q = {1.0f, cases[i].top_p, cases[i].top_k, cases[i].u};
        assert_int_equal(VT->sample(BE, NULL, tok, z, 1, 5, 5, &q, FS_DTYPE_F32, &err), 0);
        if (tok[0] != cases[i].want) fprintf(stderr, "case %zu: token %d, want %d\n", i, tok[0], cases[i].want);
        assert_int_equal(tok[0], cases[i].want);
    }
}

static void test_memory_and_streams(void **state) {
    (void)state;
    fs_error err = {0};
    void *d = NULL;
    assert_int_equal(VT->alloc(BE, &d, 0, FS_MEM_DEVICE, &err), 0);
    assert_non_null(d);
    VT->free(BE, d, FS_MEM_DEVICE);
    assert_int_equal(VT->alloc(BE, &d, 1000, FS_MEM_HOST_PINNED, &err), 0);
    assert_true(((uintptr_t)d & 255) == 0);
    char src[1000];
    for (size_t i = 0; i < sizeof src; i++) src[i] = (char)i;
    fs_backend_stream *s = NULL;
    fs_backend_event *e = NULL;
    assert_int_equal(VT->stream_create(BE, &s, 1, &err), 0);
    assert_int_equal(VT->event_create(BE, &e, &err), 0);
    assert_int_equal(VT->memset(BE, s, d, 7, 1000, &err), 0);
    assert_int_equal(VT->copy(BE, s, d, src, 500, FS_COPY_HOST_TO_DEVICE, &err), 0);
    assert_int_equal(VT->event_record(BE, e, s, &err), 0);
    assert_int_equal(VT->stream_wait_event(BE, VT->default_stream(BE), e, &err), 0);
    int done = 0;
    assert_int_equal(VT->event_query(BE, e, &done, &err), 0);
    assert_int_equal(done, 1);
    assert_int_equal(VT->stream_synchronize(BE, s, &err), 0);
    assert_memory_equal(d, src, 500);
    assert_int_equal(((char *)d)[700], 7);
    assert_int_equal(VT->copy(BE, s, d, src, 10, 9, &err), FS_ERR_INVALID);
    VT->event_destroy(BE, e);
    VT->stream_destroy(BE, s);
    VT->free(BE, d, FS_MEM_HOST_PINNED);
    VT->free(BE, NULL, FS_MEM_DEVICE);
    fs_backend_device_info info;
    assert_int_equal(VT->device_info(BE, &info, &err), 0);
    assert_non_null(strstr(info.name, "CPU"));
    assert_true(info.total_bytes > 0);
}

/* bf16 is CUDA's: the CPU says so instead of computing something else. */
static void test_bf16_refused(void **state) {
    (void)state;
    float x[4] = {0}, y[4];
    fs_error err = {0};
    assert_int_equal(VT->gelu_forward(BE, NULL, y, x, 4, FS_DTYPE_BF16, &err), FS_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "gelu_forward"));
    assert_non_null(strstr(err.message, "device = cuda"));
    assert_int_equal(VT->convert(BE, NULL, y, FS_DTYPE_BF16, x, FS_DTYPE_F32, 4, &err), FS_ERR_UNSUPPORTED);
    assert_int_equal(VT->convert(BE, NULL, y, FS_DTYPE_F32, x, FS_DTYPE_F32, 4, &err), 0);
    assert_false(VT->flags & FS_BACKEND_BF16);
    int n = 0;
    assert_int_equal(VT->device_count(&n, &err), 0);
    assert_int_equal(n, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_bias_backward_padded_rows),
        cmocka_unit_test(test_crossentropy),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_sumsq_scale_adamw),
        cmocka_unit_test(test_sample),
        cmocka_unit_test(test_memory_and_streams),
        cmocka_unit_test(test_bf16_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
