/* matvec.h — matrix-vector products for decoding: one token, or a few
 * (a server's batched step), through an f32 weight laid out (out, in).
 *
 * Decoding one token is y = W x + b for every projection: each weight is
 * used once per token, so the time is the time to read the weights. A
 * 1-row sgemm packs its operands first and OpenBLAS's sgemv splits the work
 * its own way; these kernels stream each weight once and use it for every
 * input row of the step (a server's batched decode reads the weights once
 * for all its sequences), with the output columns split among `threads`
 * threads (an explicit count: the caller decides, the global pool setting
 * is not touched). Nothing is allocated per call (fs_matvec_f32_io's
 * partial sums use a buffer of the calling thread that only grows).
 *
 * Two layouts: (in, out), the training (Conv1D) layout, is read in its
 * memory order, row after row of weights, as axpy-style updates of y,
 * threads taking contiguous ranges of rows (fs_matvec_f32_io); (out, in),
 * as the tied head's wte (V, C) is laid out, as dot products of rows with x
 * (fs_matvec_f32). On one core of this machine the first streamed 17-18.6
 * GB/s, the second 10-14 even with the next rows prefetched (OpenBLAS's
 * sgemv: 16-18). */
#ifndef FS_MATVEC_H
#define FS_MATVEC_H

#include <stddef.h>

/* Input rows the dot-product kernels hold in registers at once; more rows
 * take more passes over a block of weights that stays in cache. */
#define FS_MATVEC_MAX_ROWS 4

/* y (n, out) = x (n, in) W + bias; W (in, out); bias may be NULL; any n is
 * one pass over W. y and x have row strides out and in. */
void fs_matvec_f32_io(float *y, const float *x, const float *W, const float *bias, size_t n, size_t in, size_t out,
                      int threads);

/* y (n, out) = x (n, in) W^T + bias; W (out, in); bias may be NULL. */
void fs_matvec_f32(float *y, const float *x, const float *W, const float *bias, size_t n, size_t in, size_t out,
                   int threads);

/* The vocabulary projection fused with the pick of the next token: the k
 * largest of the V logits W x (W (V, C), no bias) without writing the
 * logits out, ids and values in descending order (ties: lower id first);
 * k <= FS_TOPK_MAX. k = 1 is greedy decoding's argmax. */
#define FS_TOPK_MAX 64
void fs_matvec_topk_f32(int *ids, float *vals, size_t k, const float *x, const float *W, size_t C, size_t V,
                        int threads);

/* ---- shared with qweights.c ---- */

/* fn(arg, part, o0, o1) for output rows [o0, o1), split among `threads`
 * threads into parts of multiples of `align` rows (the last takes the
 * rest); returns the number of parts, each numbered 0.. that. Runs as one
 * part on the calling thread when threads <= 1 or inside a parallel region. */
#define FS_MATVEC_MAX_THREADS 64
typedef void (*fs_rows_fn)(void *arg, int part, size_t o0, size_t o1);
int fs_matvec_split(size_t out, size_t align, int threads, fs_rows_fn fn, void *arg);

/* Products split by rows of W (threads adding partial sums): room for
 * `floats` partial floats in a buffer of the calling thread that only grows
 * (NULL without memory), and y += the parts - 1 partials of `count` floats
 * each, laid end to end. */
float *fs_matvec_partials(size_t floats);
void fs_matvec_add_partials(float *y, const float *part, int parts, size_t count);

#endif
