/* test_gemm_rows.c — the fixed-order products (compute/gemm_rows.h).
 *
 * The reference is the definition the header states, written here from it:
 * an nn element is acc = fmaf(a_i, b_i, acc) for i = 0..k-1 from 0, plus
 * the bias; an nt element sums eight fma lanes and reduces them pairwise.
 * Every shape is checked bit for bit against it, whatever path the kernel
 * takes (streamed for few rows, tiles for more, scalar edges), on one and
 * two threads, and against a double-precision product within rounding. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "compute/gemm_rows.h"
#include "test_util.h"

static float nn_ref(const float *a, const float *b, size_t ldb, size_t k, const float *bias, size_t o) {
    float acc = 0.0f;
    for (size_t i = 0; i < k; i++) acc = fmaf(a[i], b[i * ldb + o], acc);
    return bias ? acc + bias[o] : acc;
}

static void fill(float *x, size_t n, unsigned salt) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u + salt * 40503u) % 2001) / 1000.0f - 1.0f;
}

/* c (m, n) against the definition bit for bit and a double product within
 * k float roundings of its magnitude. */
static void check_nn(size_t m, size_t n, size_t k, int with_bias, int packed) {
    float *a = malloc(m * k * sizeof *a), *b = malloc(k * n * sizeof *b), *bias = malloc(n * sizeof *bias);
    float *c = malloc(m * n * sizeof *c), *pk = fs_alloc(fs_gemm_rows_packed_floats(k, n) * sizeof *pk);
    fill(a, m * k, 1), fill(b, k * n, 2), fill(bias, n, 3);
    if (packed) { /* W packed once (the serving step's weights) */
        fs_gemm_rows_pack(pk, b, n, k, n);
        fs_gemm_rows_nn_packed(c, n, a, k, pk, with_bias ? bias : NULL, m, n, k);
    } else {
        fs_gemm_rows_nn(c, n, a, k, b, n, with_bias ? bias : NULL, m, n, k);
    }
    for (size_t r = 0; r < m; r++)
        for (size_t o = 0; o < n; o++) {
            float want = nn_ref(a + r * k, b, n, k, with_bias ? bias : NULL, o);
            if (memcmp(&want, &c[r * n + o], sizeof want))
                fail_msg("nn%s m=%zu n=%zu k=%zu: c[%zu][%zu] = %.9g, the definition gives %.9g",
                         packed ? " packed" : "", m, n, k, r, o, (double)c[r * n + o], (double)want);
            double d = with_bias ? bias[o] : 0.0, mag = fabs(d);
            for (size_t i = 0; i < k; i++) d += (double)a[r * k + i] * b[i * n + o], mag += fabs(a[r * k + i] * b[i * n + o]);
            assert_true(fabs(d - c[r * n + o]) <= 1e-6 * (double)k * mag + 1e-30);
        }
    free(a), free(b), free(bias), free(c);
    fs_free(pk);
}

static void check_nt(size_t m, size_t n, size_t k) {
    float *a = malloc(m * k * sizeof *a), *b = malloc(n * k * sizeof *b), *c = malloc(m * n * sizeof *c);
    fill(a, m * k, 4), fill(b, n * k, 5);
    fs_gemm_rows_nt(c, n, a, k, b, k, NULL, m, n, k);
    for (size_t r = 0; r < m; r++)
        for (size_t o = 0; o < n; o++) {
            float want = test_dot_lanes(a + r * k, b + o * k, k);
            if (memcmp(&want, &c[r * n + o], sizeof want))
                fail_msg("nt m=%zu n=%zu k=%zu: c[%zu][%zu] differs from the definition", m, n, k, r, o);
        }
    free(a), free(b), free(c);
}

static const size_t rows[] = {1, 2, 3, 4, 5, 6, 7, 9, 13, 32};
static const size_t cols[][2] = {{1, 3}, {8, 8}, {37, 19}, {64, 64}, {300, 96}, {2304, 96}, {1030, 770}};

/* Every shape at 1 and 2 threads: nn (plain or packed W) or nt. */
enum { NN, NN_PACKED, NT };

static void every_shape(int kind) {
    for (int threads = 1; threads <= 2; threads++) {
        omp_set_num_threads(threads);
        for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
            for (size_t s = 0; s < sizeof cols / sizeof *cols; s++) {
                if (kind == NT) check_nt(rows[r], cols[s][0], cols[s][1]);
                else check_nn(rows[r], cols[s][0], cols[s][1], (int)s % 2, kind == NN_PACKED);
            }
    }
}

static void test_nn_every_path(void **state) {
    (void)state;
    every_shape(NN);
}

static void test_nn_packed_every_path(void **state) {
    (void)state;
    every_shape(NN_PACKED);
}

static void test_nt_every_path(void **state) {
    (void)state;
    every_shape(NT);
}

/* A row's result alone equals the same row among others (the property the
 * serving step relies on), across the few-rows and many-rows paths. */
static void test_row_alone_equals_row_in_a_batch(void **state) {
    (void)state;
    size_t n = 1030, k = 770, m = 11;
    float *a = malloc(m * k * sizeof *a), *b = malloc(k * n * sizeof *b), *bias = malloc(n * sizeof *bias);
    float *all = malloc(m * n * sizeof *all), *one = malloc(n * sizeof *one);
    fill(a, m * k, 6), fill(b, k * n, 7), fill(bias, n, 8);
    fs_gemm_rows_nn(all, n, a, k, b, n, bias, m, n, k);
    for (size_t r = 0; r < m; r++) {
        fs_gemm_rows_nn(one, n, a + r * k, k, b, n, bias, 1, n, k);
        assert_memory_equal(one, all + r * n, n * sizeof *one);
    }
    free(a), free(b), free(bias), free(all), free(one);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nn_every_path),
        cmocka_unit_test(test_nn_packed_every_path),
        cmocka_unit_test(test_nt_every_path),
        cmocka_unit_test(test_row_alone_equals_row_in_a_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
