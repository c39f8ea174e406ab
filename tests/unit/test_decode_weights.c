/* test_decode_weights.c — decoding through compact weight copies
 * ([generate] weights, compute/qweights.h wired into model/decode.c).
 *
 * The kernels are checked exactly in test_matvec.c; here the wiring: each
 * format's decoded logits against the training forward of the same prefix
 * (an independent path: batched sgemm in f32). f32 must agree to float
 * rounding; bf16 and q8 to their rounding of the weights, measured as the
 * largest difference over the largest logit, far below what a wrong matrix,
 * layout or bias gives (order 1), and not bitwise equal to f32 (the copies
 * are really used). Batched rows (B = 3) must each equal their own B = 1
 * sequence. q8 refuses widths that are not multiples of 32, saying so. */
#include <string.h>

#include "compute/qweights.h"
#include "test_util.h"

#define SMALL "[model]\nvocab_size = 64\nn_layer = 2\nn_head = 2\nn_embd = %d\nmax_seq = 24\n"

static fs_session *session_of(int C) {
    char ini[256];
    snprintf(ini, sizeof ini, SMALL, C);
    fs_session *s = test_session(ini);
    fs_model_init_weights(s->model, 5);
    /* biases and LayerNorms start at 0 and 1: move every parameter, so a
     * bias left out or taken from the wrong place shows */
    const fs_param_block *b = fs_model_block(s->model);
    float *noise = test_fvec(b->n);
    test_fill(noise, b->n, 0.05f, 6);
    for (size_t i = 0; i < b->n; i++) b->params[i] += noise[i];
    free(noise);
    return s;
}

static fs_seq *seq_of(const fs_model *m, size_t B, int format) {
    fs_seq_config sc = {.B = B, .weights = format};
    fs_seq *seq = NULL;
    fs_error err = {0};
    int rc = fs_seq_create(&seq, m, &sc, &err);
    if (rc) fprintf(stderr, "fs_seq_create: %s\n", err.message);
    assert_int_equal(rc, 0);
    return seq;
}

enum { N = 16, V = 64 };

/* max |got - want| / max |want| over the N tokens' logits */
static double rel_error(const float *got, const float *want, size_t n) {
    double d = 0, w = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)got[i] - want[i]));
        w = fmax(w, fabs((double)want[i]));
    }
    return d / w;
}

static void decode_all(fs_seq *seq, const int32_t *tokens, float *logits) {
    fs_error err = {0};
    for (size_t t = 0; t < N; t++) assert_int_equal(fs_seq_decode(seq, &tokens[t], logits + t * V, &err), 0);
}

static void test_formats_against_forward(void **state) {
    (void)state;
    fs_session *s = session_of(64);
    int32_t tok[N];
    for (size_t i = 0; i < N; i++) tok[i] = (int32_t)((i * 11 + 5) % V);
    fs_error err = {0};
    float *want = test_fvec(N * V), *got = test_fvec(N * V), *f32 = test_fvec(N * V);
    assert_int_equal(fs_model_forward(s->model, tok, 1, N, &err), 0);
    memcpy(want, fs_model_logits(s->model), N * V * sizeof(float));
    const double bound[] = {[FS_WEIGHTS_F32] = 1e-5, [FS_WEIGHTS_BF16] = 2e-2, [FS_WEIGHTS_Q8] = 5e-2};
    for (int f = FS_WEIGHTS_F32; f <= FS_WEIGHTS_Q8; f++) {
        fs_seq *seq = seq_of(s->model, 1, f);
        decode_all(seq, tok, got);
        double e = rel_error(got, want, N * V);
        fprintf(stderr, "weights = %s: largest logit difference %.2e of the largest logit\n", fs_wformat_name(f), e);
        if (e > bound[f]) fail_msg("weights = %s: %.3g > %.3g", fs_wformat_name(f), e, bound[f]);
        if (f == FS_WEIGHTS_F32) memcpy(f32, got, N * V * sizeof(float));
        else assert_true(memcmp(f32, got, N * V * sizeof(float)) != 0);
        fs_seq_destroy(seq);
    }
    free(want), free(got), free(f32);
    fs_session_close(s);
}

/* three rows in lockstep read each weight once for all: each row equals
 * its own sequence, in every format */
static void test_rows_equal_single(void **state) {
    (void)state;
    fs_session *s = session_of(64);
    for (int f = FS_WEIGHTS_F32; f <= FS_WEIGHTS_Q8; f++) {
        fs_seq *three = seq_of(s->model, 3, f);
        fs_error err = {0};
        float got[3 * V], one[V];
        fs_seq *single[3];
        for (int r = 0; r < 3; r++) single[r] = seq_of(s->model, 1, f);
        for (size_t t = 0; t < N; t++) {
            int32_t tk[3] = {(int32_t)(t * 3 % V), (int32_t)((t * 5 + 1) % V), (int32_t)((t * 7 + 2) % V)};
            assert_int_equal(fs_seq_decode(three, tk, got, &err), 0);
            for (int r = 0; r < 3; r++) {
                assert_int_equal(fs_seq_decode(single[r], &tk[r], one, &err), 0);
                test_close("row against its own sequence", got + r * V, one, V, 1e-6, 1e-5);
            }
        }
        for (int r = 0; r < 3; r++) fs_seq_destroy(single[r]);
        fs_seq_destroy(three);
    }
    fs_session_close(s);
}

static void test_q8_needs_multiples_of_32(void **state) {
    (void)state;
    fs_session *s = session_of(48);
    fs_seq_config sc = {.B = 1, .weights = FS_WEIGHTS_Q8};
    fs_seq *seq = NULL;
    fs_error err = {0};
    assert_int_equal(fs_seq_create(&seq, s->model, &sc, &err), FS_ERR_INVALID);
    assert_null(seq);
    assert_non_null(strstr(err.message, "weights = q8"));
    assert_non_null(strstr(err.message, "multiple of 32"));
    fs_session_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats_against_forward),
        cmocka_unit_test(test_rows_equal_single),
        cmocka_unit_test(test_q8_needs_multiples_of_32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
