/* gemm_rows.h — matrix products whose every element is summed in one fixed
 * order ("batch invariant"), for the serving step.
 *
 * A BLAS sgemm picks its kernel, blocking and reduction split from the
 * shape: the same row multiplied alone and among 30 others can come out
 * different in the last bits, and then a greedy request's tokens depend on
 * what else the server was doing. Here an element of C depends only on its
 * row of A, its column of B, k and the bias:
 *
 *   nn: C = A (m, k) B (k, n) + bias      acc = 0; acc = fma(a_i, b_i, acc) for i = 0..k-1; acc + bias
 *   nt: C = A (m, k) B^T + bias, B (n, k) eight lanes, lane j = fma chain over i = 8t + j (t in order),
 *                                         the k % 8 left over into lanes 0.. in order, then
 *                                         ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) + bias
 *
 * Fused multiply-adds round once, so the AVX2 tiles, the scalar edges and
 * the portable fallback (fmaf) give the same bits; tiles differ only in how
 * many independent elements they carry in registers; they read W from
 * packed copies of k blocks of a column panel (an element's chain pauses
 * in memory between blocks, exactly). Up to 4 rows (a decoding step)
 * stream W instead, eight weight rows side by side, each output held in a
 * register for their eight fused multiply-adds: the loops swapped, each
 * element's chain unchanged. Work is split among the calling thread's
 * OpenMP threads by columns (inside a parallel region it runs on the
 * calling thread), which changes who computes an element, never how.
 *
 * bench/bench_step compares them with OpenBLAS (products=1): on a two-core
 * Zen 3 at one thread the unpacked kernels are 3-5x faster than sgemm for
 * one row and within 0.9-1.2x of it for 8-256 rows; the packed ones
 * (fs_gemm_rows_nn_packed, what generation and serving read) are 1.0-1.7x
 * faster again at 1-32 rows: from 1 to 32 rows as fast as sgemm or faster. */
#ifndef FS_GEMM_ROWS_H
#define FS_GEMM_ROWS_H

#include <stddef.h>

/* c (m, n), row stride ldc = a (m, k) [lda] b (k, n) [ldb] + bias (n, may be NULL). */
void fs_gemm_rows_nn(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb, const float *bias,
                     size_t m, size_t n, size_t k);
/* c (m, n) = a (m, k) b^T + bias, b (n, k) [ldb]. */
void fs_gemm_rows_nt(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb, const float *bias,
                     size_t m, size_t n, size_t k);
/* W (k, n) [ldb] packed for fs_gemm_rows_nn_packed: column panels of 64
 * (the last narrower), each panel's k rows side by side, every row padded
 * to a multiple of 8 floats (zeros) so that each starts 32-byte aligned;
 * panel p at p * 64 * k floats. `packed` holds fs_gemm_rows_packed_floats
 * floats and is 64-byte aligned. Made once (serving's weights do not
 * change), it spares every product the copy of each k block of a panel and
 * streams W in memory order; the elements are the same fma chains, the
 * same bits as fs_gemm_rows_nn. */
size_t fs_gemm_rows_packed_floats(size_t k, size_t n);
void fs_gemm_rows_pack(float *packed, const float *b, size_t ldb, size_t k, size_t n);
void fs_gemm_rows_nn_packed(float *c, size_t ldc, const float *a, size_t lda, const float *packed, const float *bias,
                            size_t m, size_t n, size_t k);
/* One element of fs_gemm_rows_nt: the dot product of a and b (k) in its order. */
float fs_dot_rows(const float *a, const float *b, size_t k);

#endif
