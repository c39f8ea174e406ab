/* qweights.h — inference copies of a weight matrix in a compact format,
 * and their matrix-vector products (issue 14: [generate] weights = f32 |
 * bf16 | q8).
 *
 * A qweight is W, output o's weights over inputs i, made once from the
 * training weights (fp32, Conv1D's (in, out) or (out, in) as wte is) in
 * the layout each format streams fastest (matvec.h):
 *   f32   the training weights themselves, not copied (a packed copy only
 *         for a block of columns of a wider matrix), 4 bytes a weight;
 *   bf16  2 bytes: the top half of the f32 (round to nearest even), laid
 *         out (in, out) with rows in pairs: a 32-bit word holds W[2p][c]
 *         and W[2p + 1][c], the operand layout of AVX512-BF16;
 *   q8    Q8_0 as llama.cpp lays it out: (out, in) in blocks of 32 inputs,
 *         each an fp16 scale d = max|w| / 127 and 32 int8 q = round(w / d),
 *         34 bytes (1.0625 a weight); `in` must be a multiple of 32.
 * Training never sees them: they are for decoding.
 *
 * fs_qweight_matvec is y (n, out) = x (n, in) W^T + bias for n input rows
 * (a token, or one per sequence of a batched step), each weight read from
 * memory once for all n rows, split among `threads` threads (f32 and bf16:
 * contiguous ranges of weight rows adding partial sums; q8: output rows). The formats' products:
 *   f32   f32 FMAs;
 *   bf16  with AVX512-BF16 (checked at run time with cpuid) x is rounded to
 *         bf16 once per call and the pairs are multiplied with VDPBF16PS,
 *         as llama.cpp does; elsewhere each pair is widened to two floats
 *         in registers (a shift and a mask) and multiplied with the f32 x,
 *         which is exact;
 *   q8    x is quantized per block of 32 the same way (Q8_0), and each
 *         block's dot product is an int8 x int8 sum in int32 (AVX2:
 *         VPMADDUBSW/VPMADDWD) scaled by d_w d_x, as llama.cpp's Q8_0 does.
 * They need `work` bytes of scratch (fs_qweight_work_bytes) for the
 * converted x; nothing is allocated per call. */
#ifndef FS_QWEIGHTS_H
#define FS_QWEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "core/host.h"
#include "fastserve/bf16.h"

typedef enum fs_wformat { FS_WEIGHTS_F32 = 0, FS_WEIGHTS_BF16 = 1, FS_WEIGHTS_Q8 = 2 } fs_wformat;

#define FS_Q8_BLOCK 32

/* One Q8_0 block: 34 bytes, no padding (llama.cpp's block_q8_0). */
typedef struct fs_q8_block {
    uint16_t d; /* fp16 scale */
    int8_t q[FS_Q8_BLOCK];
} fs_q8_block;

enum { FS_LAYOUT_OUT_IN = 0, FS_LAYOUT_IN_OUT = 1 };

typedef struct fs_qweight {
    fs_wformat format;
    int layout;  /* FS_LAYOUT_*: f32 either, bf16 IN_OUT (in pairs), q8 OUT_IN */
    size_t out, in;
    size_t ld;   /* f32: row stride of data */
    void *data;  /* f32: float; bf16: uint32_t pairs (ceil(in / 2), out); q8: fs_q8_block (out, in / 32) */
    size_t bytes;
    int owned;   /* data is this object's (0: f32 borrowing the training weights) */
} fs_qweight;

/* "f32", "bf16", "q8" <-> fs_wformat; -1 for an unknown name. */
int fs_wformat_parse(const char *name);
const char *fs_wformat_name(fs_wformat f);

/* w from src: `transposed` = 0 for src (out, in) (row o at src + o * ld),
 * 1 for Conv1D's (in, out) (row i at src + i * ld). f32 keeps pointing at
 * src (which must outlive w) unless ld says it is part of a wider matrix.
 * Fails (FS_ERR_INVALID) for q8 when in is not a multiple of 32,
 * FS_ERR_NOMEM without memory. */
int fs_qweight_create(fs_qweight *w, fs_wformat format, const float *src, size_t ld, int transposed, size_t out,
                      size_t in, fs_error *err);
void fs_qweight_destroy(fs_qweight *w); /* accepts an all-zero w */

/* Scratch bytes fs_qweight_matvec needs for n rows of `in` inputs. */
size_t fs_qweight_work_bytes(fs_wformat format, size_t n, size_t in);
void fs_qweight_matvec(const fs_qweight *w, float *y, const float *x, const float *bias, size_t n, void *work,
                       int threads);

/* The value w keeps for weight (o, i), as a float (for tests and tools). */
float fs_qweight_at(const fs_qweight *w, size_t o, size_t i);

/* 1 when bf16 products run as native VDPBF16PS on this CPU. */
int fs_bf16_native(void);

/* The conversions, exposed for tests and for quantizing activations (bf16:
 * fs_bf16_from_f32 and fs_bf16_to_f32 of fastserve/bf16.h). */
uint16_t fs_f32_to_fp16(float x);          /* round to nearest even, IEEE half */
float fs_fp16_to_f32(uint16_t h);
void fs_q8_quantize(fs_q8_block *dst, const float *x, size_t n); /* n a multiple of 32 */

#endif
