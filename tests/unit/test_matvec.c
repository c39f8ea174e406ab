/* test_matvec.c — the decoding kernels (compute/matvec.c, compute/qweights.c)
 * against a naive double-precision reference written here: every format
 * (f32, bf16, q8), 1 to 9 input rows, sizes that are not multiples of the
 * vector width or of the 4-output tiles, both source layouts, 1 to 3
 * threads (the same bits where each output is one thread's, the same sums
 * to rounding where threads add partial sums),
 * and the fused top-k of the vocabulary projection against a full sort.
 *
 * The reference multiplies what the format stores: bf16-rounded weights,
 * dequantized Q8_0 blocks (d q) with x quantized the same way, so the
 * kernels are checked to float rounding; the conversions themselves are
 * checked against their definitions (IEEE round to nearest even, Q8_0's
 * scale and rounding). */
#include <string.h>

#include "compute/matvec.h"
#include "compute/qweights.h"
#include "test_util.h"

static double dot_ref(const float *w, size_t ws, const float *x, size_t in) {
    double s = 0;
    for (size_t i = 0; i < in; i++) s += (double)w[i * ws] * x[i];
    return s;
}

/* the value the format keeps for w */
static float stored(fs_wformat f, float w) { return f == FS_WEIGHTS_BF16 ? fs_bf16_to_f32(fs_bf16_from_f32(w)) : w; }

/* x as the kernel multiplies it: Q8_0-dequantized for q8, bf16 when the CPU does bf16 natively */
static void x_as_used(fs_wformat f, float *xu, const float *x, size_t n, size_t in) {
    memcpy(xu, x, n * in * sizeof(float));
    if (f == FS_WEIGHTS_BF16 && fs_bf16_native())
        for (size_t i = 0; i < n * in; i++) xu[i] = fs_bf16_to_f32(fs_bf16_from_f32(x[i]));
    if (f == FS_WEIGHTS_Q8) {
        fs_q8_block *q = malloc(in / 32 * sizeof *q);
        for (size_t r = 0; r < n; r++) {
            fs_q8_quantize(q, x + r * in, in);
            for (size_t i = 0; i < in; i++) xu[r * in + i] = fs_fp16_to_f32(q[i / 32].d) * q[i / 32].q[i % 32];
        }
        free(q);
    }
}

/* W's stored values, (out, in), as the reference sees them */
static void w_as_stored(const fs_qweight *qw, float *wr) {
    for (size_t o = 0; o < qw->out; o++)
        for (size_t i = 0; i < qw->in; i++) wr[o * qw->in + i] = fs_qweight_at(qw, o, i);
}

static void check_format(fs_wformat f, size_t out, size_t in, size_t n, int transposed) {
    float *w = malloc(out * in * 4), *x = malloc(n * in * 4), *bias = malloc(out * 4), *wr = malloc(out * in * 4);
    float *xu = malloc(n * in * 4), *y = malloc(n * out * 4), *y1 = malloc(n * out * 4);
    test_fill(w, out * in, 0.5f, 100 + out + in);
    test_fill(x, n * in, 1.0f, 200 + n);
    test_fill(bias, out, 0.3f, 300);
    fs_qweight qw;
    fs_error err = {0};
    /* transposed: the same matrix given as Conv1D's (in, out) */
    float *src = w;
    if (transposed) {
        src = malloc(out * in * 4);
        for (size_t o = 0; o < out; o++)
            for (size_t i = 0; i < in; i++) src[i * out + o] = w[o * in + i];
    }
    assert_int_equal(fs_qweight_create(&qw, f, src, transposed ? out : in, transposed, out, in, &err), 0);
    w_as_stored(&qw, wr);
    /* storing is the format's rounding of w */
    for (size_t e = 0; e < out * in; e++) {
        if (f != FS_WEIGHTS_Q8) assert_true(wr[e] == stored(f, w[e]));
        else {
            float amax = 0;
            size_t b0 = e / 32 * 32;
            for (size_t i = b0; i < b0 + 32; i++) amax = fmaxf(amax, fabsf(w[i]));
            /* half a step, plus the fp16 rounding of the scale (2^-11 of d) times |q| <= 127 */
            assert_true(fabs(wr[e] - w[e]) <= amax / 127 * (0.5 + 127.0 / 2048) * 1.001 + 1e-7);
        }
    }
    x_as_used(f, xu, x, n, in);
    size_t work = fs_qweight_work_bytes(f, n, in);
    void *ws = malloc(work ? work : 1);
    for (int threads = 1; threads <= 3; threads++) {
        memset(y, 0xff, n * out * 4);
        fs_qweight_matvec(&qw, y, x, bias, n, ws, threads);
        for (size_t r = 0; r < n; r++)
            for (size_t o = 0; o < out; o++) {
                double want = dot_ref(wr + o * in, 1, xu + r * in, in) + bias[o], got = y[r * out + o];
                double scale = sqrt((double)in) * 1.0;
                if (!(fabs(got - want) <= 2e-6 * scale + 1e-6 * fabs(want))) {
                    fprintf(stderr, "%s out %zu in %zu n %zu threads %d: y[%zu][%zu] = %.9g, reference %.9g\n",
                            fs_wformat_name(f), out, in, n, threads, r, o, got, want);
                    fail();
                }
            }
        if (threads == 1) memcpy(y1, y, n * out * 4);
        else if (qw.layout == FS_LAYOUT_IN_OUT)
            test_close("threads", y, y1, n * out, 2e-6 * sqrt((double)in), 1e-6); /* partial sums over rows of W */
        else
            assert_memory_equal(y, y1, n * out * 4); /* each output is one thread's */
    }
    fs_qweight_destroy(&qw);
    if (transposed) free(src);
    free(w), free(x), free(bias), free(wr), free(xu), free(y), free(y1), free(ws);
}

static void each_shape(fs_wformat f) {
    /* out: below, at and past the 4-output tiles and the 16-row thread split;
     * in: a multiple of 32 (q8 needs it), and for f32/bf16 odd ones too */
    static const size_t outs[] = {1, 3, 4, 17, 64, 130}, ins[] = {32, 96, 768, 7, 45};
    for (size_t a = 0; a < sizeof outs / sizeof outs[0]; a++)
        for (size_t b = 0; b < sizeof ins / sizeof ins[0]; b++) {
            if (f == FS_WEIGHTS_Q8 && ins[b] % 32) continue;
            for (size_t n = 1; n <= 9; n += (n < 5 ? 1 : 4)) check_format(f, outs[a], ins[b], n, (a + b + n) % 2);
        }
}

static void test_f32(void **state) { (void)state; each_shape(FS_WEIGHTS_F32); }
static void test_bf16(void **state) { (void)state; each_shape(FS_WEIGHTS_BF16); }
static void test_q8(void **state) { (void)state; each_shape(FS_WEIGHTS_Q8); }

/* fs_matvec_f32 directly, on a GPT-2-sized row (a block of weight rows per pass) */
static void test_f32_wide(void **state) {
    (void)state;
    check_format(FS_WEIGHTS_F32, 300, 3072, 6, 0);
}

/* a block of columns of a wider Conv1D matrix (as K of c_attn's Q|K|V):
 * every format from the strided source, against the same block copied out */
static void test_column_block(void **state) {
    (void)state;
    size_t in = 64, out = 24, ld = 3 * out;
    float *wide = malloc(in * ld * 4), *x = malloc(2 * in * 4), *y = malloc(2 * out * 4);
    test_fill(wide, in * ld, 0.5f, 41);
    test_fill(x, 2 * in, 1.0f, 42);
    for (int f = 0; f < 3; f++) {
        fs_qweight qw;
        fs_error err = {0};
        assert_int_equal(fs_qweight_create(&qw, (fs_wformat)f, wide + out, ld, 1, out, in, &err), 0);
        if (f == FS_WEIGHTS_F32) assert_true(qw.owned && qw.ld == out); /* packed, not borrowed */
        for (size_t o = 0; o < out; o++)
            for (size_t i = 0; i < in; i++) {
                float w = wide[i * ld + out + o], got = fs_qweight_at(&qw, o, i);
                assert_true(f == FS_WEIGHTS_Q8 ? fabsf(got - w) < 0.02f : got == stored((fs_wformat)f, w));
            }
        void *ws = malloc(fs_qweight_work_bytes((fs_wformat)f, 2, in) + 1);
        fs_qweight_matvec(&qw, y, x, NULL, 2, ws, 2);
        for (size_t r = 0; r < 2; r++)
            for (size_t o = 0; o < out; o++) assert_true(fabs(y[r * out + o] - dot_ref(wide + out + o, ld, x + r * in, in)) < 0.1);
        free(ws);
        fs_qweight_destroy(&qw);
    }
    free(wide), free(x), free(y);
}

/* the conversions against their definitions */
static void test_conversions(void **state) {
    (void)state;
    /* bf16: round to nearest, ties to even, on the 16 bits dropped */
    assert_int_equal(fs_bf16_from_f32(1.0f), 0x3f80);
    union { float f; uint32_t u; } v;
    v.u = 0x3f808000u; /* exactly halfway between 0x3f80 and 0x3f81: to even (0x3f80) */
    assert_int_equal(fs_bf16_from_f32(v.f), 0x3f80);
    v.u = 0x3f818000u; /* halfway, odd below: up */
    assert_int_equal(fs_bf16_from_f32(v.f), 0x3f82);
    v.u = 0x3f808001u;
    assert_int_equal(fs_bf16_from_f32(v.f), 0x3f81);
    assert_true(isnan(fs_bf16_to_f32(fs_bf16_from_f32(NAN))));
    /* fp16: against values worked out by hand */
    assert_int_equal(fs_f32_to_fp16(1.0f), 0x3c00);
    assert_int_equal(fs_f32_to_fp16(-2.0f), 0xc000);
    assert_int_equal(fs_f32_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(fs_f32_to_fp16(1e6f), 0x7c00);
    assert_int_equal(fs_f32_to_fp16(5.9604644775390625e-8f), 0x0001); /* smallest subnormal */
    assert_int_equal(fs_f32_to_fp16(1.0f + 1.0f / 2048), 0x3c00);     /* halfway: to even */
    assert_int_equal(fs_f32_to_fp16(1.0f + 3.0f / 2048), 0x3c02);
    for (int h = 0; h < 0x7c00; h += 7) assert_int_equal(fs_f32_to_fp16(fs_fp16_to_f32((uint16_t)h)), h);
    /* Q8_0: d = max|x| / 127, q = round(x / d) */
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = (float)(i - 16) * 0.25f;
    fs_q8_block b;
    fs_q8_quantize(&b, x, 32);
    float d = fs_fp16_to_f32(b.d);
    assert_true(fabsf(d - 4.0f / 127) < 4.0f / 127 / 1000);
    assert_int_equal(b.q[0], -127);
    assert_int_equal(b.q[16], 0);
    for (int i = 0; i < 32; i++) assert_int_equal(b.q[i], (int)lroundf(x[i] * (127.0f / 4.0f)));
    float z[32] = {0};
    fs_q8_quantize(&b, z, 32);
    for (int i = 0; i < 32; i++) assert_int_equal(b.q[i], 0);
    assert_int_equal(fs_wformat_parse("q8"), FS_WEIGHTS_Q8);
    assert_int_equal(fs_wformat_parse("int8"), -1);
}

static void test_q8_needs_blocks(void **state) {
    (void)state;
    float w[40 * 2] = {0};
    fs_qweight qw;
    fs_error err = {0};
    assert_int_equal(fs_qweight_create(&qw, FS_WEIGHTS_Q8, w, 40, 0, 2, 40, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "multiple of 32"));
    fs_qweight_destroy(&qw);
}

/* top-k of the vocabulary projection against sorting the reference logits;
 * duplicated rows give equal logits, which must come lower id first */
static void test_topk(void **state) {
    (void)state;
    size_t V = 1000, C = 70;
    float *W = malloc(V * C * 4), *x = malloc(C * 4);
    test_fill(W, V * C, 1.0f, 7);
    test_fill(x, C, 1.0f, 8);
    memcpy(W + 500 * C, W + 20 * C, C * 4); /* rows 20 and 500 tie */
    double *lg = malloc(V * sizeof(double));
    int *order = malloc(V * sizeof(int));
    for (size_t v = 0; v < V; v++) lg[v] = dot_ref(W + v * C, 1, x, C), order[v] = (int)v;
    for (size_t i = 1; i < V; i++) /* insertion sort, descending, ties by id */
        for (size_t j = i; j > 0 && (lg[order[j - 1]] < lg[order[j]] ||
                                      (lg[order[j - 1]] == lg[order[j]] && order[j - 1] > order[j]));
             j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (size_t k = 1; k <= FS_TOPK_MAX; k *= 2)
        for (int threads = 1; threads <= 3; threads++) {
            int ids[FS_TOPK_MAX];
            float vals[FS_TOPK_MAX];
            fs_matvec_topk_f32(ids, vals, k, x, W, C, V, threads);
            for (size_t i = 0; i < k; i++) {
                if (fabs(vals[i] - lg[ids[i]]) > 1e-4) fail_msg("top-%zu: logit %zu wrong", k, i);
                /* the same set as the sort, up to logits equal within float rounding */
                if (ids[i] != order[i] && fabs(lg[ids[i]] - lg[order[i]]) > 1e-5)
                    fail_msg("top-%zu, %d threads: place %zu has id %d, want %d", k, threads, i, ids[i], order[i]);
                if (i) assert_true(vals[i - 1] >= vals[i]);
            }
        }
    /* the exact tie: both rows at the top */
    for (size_t c = 0; c < C; c++) W[20 * C + c] = W[500 * C + c] = x[c] * 10;
    int ids[3];
    float vals[3];
    fs_matvec_topk_f32(ids, vals, 3, x, W, C, V, 2);
    assert_int_equal(ids[0], 20);
    assert_int_equal(ids[1], 500);
    assert_true(vals[0] == vals[1]);
    free(W), free(x), free(lg), free(order);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conversions), cmocka_unit_test(test_f32),           cmocka_unit_test(test_f32_wide),
        cmocka_unit_test(test_bf16),        cmocka_unit_test(test_q8),            cmocka_unit_test(test_q8_needs_blocks), cmocka_unit_test(test_column_block),
        cmocka_unit_test(test_topk),
    };
    fprintf(stderr, "bf16 products: %s\n", fs_bf16_native() ? "native AVX512-BF16" : "widened to f32 in registers");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
