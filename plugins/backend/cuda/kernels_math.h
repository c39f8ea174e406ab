/* kernels_math.h — the arithmetic of the cuda backend's kernels, in
 * functions both nvcc (device) and a plain C compiler (host) compile.
 *
 * Every kernel in ops_*.cu is a loop over these: per element (GELU,
 * AdamW, the head permutations, bf16 rounding), per lane of a row (the
 * partial sums a warp or block reduces: layer norm, cross-entropy, softmax,
 * argmax), per row (the sampler's choice among sorted probabilities). The
 * reductions across lanes go in a fixed tree (fs_tree_*), so a CPU test
 * that runs the lanes one after another and combines them by the same tree
 * reproduces the GPU's order of additions: tests/unit/test_cuda_math.c
 * checks these against runtime/compute/ (ops.c, update.c, sample.c) and
 * finite differences. What only a GPU can check (launch geometry, shared
 * memory, streams) is in tests/gpu.
 *
 * No CUDA types: bf16 is its bit pattern (uint16_t), converted with
 * round-to-nearest-even by fastserve/bf16.h, exactly as
 * __float2bfloat16_rn does. */
#ifndef FS_CUDA_KERNELS_MATH_H
#define FS_CUDA_KERNELS_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fastserve/bf16.h"
#include "fastserve/tensor.h"

#if defined(__CUDACC__)
#define FS_HD static __host__ __device__ __forceinline__
#else
#define FS_HD static inline
#endif

#define FS_LN_EPS 1e-5f
#define FS_GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */
#define FS_WARP 32

/* ---- fixed-order reductions ----
 * A warp reduces by butterfly (__shfl_xor_sync with offsets 16, 8, 4, 2,
 * 1): after step `offset` lane l holds v[l] op v[l ^ offset]. A block of W
 * warps reduces each warp, then warp 0 reduces the W warp results the same
 * way, padded with the identity (ops_rows.cu: block_sum, block_max).
 * fs_tree_reduce emulates exactly that on the n per-thread values of a
 * block (n a multiple of 32, at most 1024) for the CPU tests. */
#if !defined(__CUDACC__)
static inline float fs_tree_op(float a, float b, int is_max) { return is_max ? fmaxf(a, b) : a + b; }

static inline void fs_tree_warp(float *v, int is_max) {
    for (unsigned off = FS_WARP / 2; off > 0; off /= 2) {
        float t[FS_WARP];
        for (unsigned l = 0; l < FS_WARP; l++) t[l] = fs_tree_op(v[l], v[l ^ off], is_max);
        memcpy(v, t, sizeof t);
    }
}

static inline float fs_tree_reduce(float *v, unsigned n, int is_max) {
    float warps[FS_WARP];
    for (unsigned l = 0; l < FS_WARP; l++) warps[l] = is_max ? -INFINITY : 0.0f;
    for (unsigned w = 0; w < n / FS_WARP; w++) {
        fs_tree_warp(v + w * FS_WARP, is_max);
        warps[w] = v[w * FS_WARP];
    }
    if (n == FS_WARP) return warps[0];
    fs_tree_warp(warps, is_max);
    return warps[0];
}
#endif

/* ---- per element ---- */

// GPT-2's tanh approximation of GELU and its derivative times dy
FS_HD float fs_gelu_forward(float x) {
    float u = FS_GELU_SCALE * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

FS_HD float fs_gelu_backward(float x, float dy) {
    float u = FS_GELU_SCALE * (x + 0.044715f * x * x * x);
    float th = tanhf(u), sech2 = 1.0f - th * th;
    float local = 0.5f * (1.0f + th) + 0.5f * x * sech2 * FS_GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return local * dy;
}

/* AdamW on one element with the bias corrections bc1 = 1 - beta1^t and
 * bc2 = 1 - beta2^t (computed once per call, as update.c does) and
 * decay = 1 - lr * weight_decay. Returns the new parameter. */
FS_HD float fs_adamw_element(float p, float g, float *m, float *v, float lr, float beta1, float beta2, float eps,
                             float decay, float bc1, float bc2) {
    float mi = beta1 * *m + (1.0f - beta1) * g;
    float vi = beta2 * *v + (1.0f - beta2) * g * g;
    *m = mi;
    *v = vi;
    float mhat = mi / bc1, vhat = vi / bc2;
    return p * decay - lr * mhat / (sqrtf(vhat) + eps);
}

/* Head permutations: element o of q (B, H, T, D) comes from qkv (B, T, 3C)
 * at this index (k: + C, v: + 2C); element o of y (B, H, T, D) goes to out
 * (B, T, C) at fs_merged_index. */
FS_HD size_t fs_qkv_index(size_t o, size_t T, size_t H, size_t D) {
    size_t d = o % D, t = (o / D) % T, h = (o / (D * T)) % H, b = o / (D * T * H), C = H * D;
    return (b * T + t) * 3 * C + h * D + d;
}

FS_HD size_t fs_merged_index(size_t o, size_t T, size_t H, size_t D) {
    size_t d = o % D, t = (o / D) % T, h = (o / (D * T)) % H, b = o / (D * T * H), C = H * D;
    return (b * T + t) * C + h * D + d;
}

/* ---- per lane of a row: elements lane, lane + lanes, ... ---- */

FS_HD float fs_lane_sum(const void *x, int dt, size_t n, unsigned lane, unsigned lanes) {
    float s = 0.0f;
    for (size_t i = lane; i < n; i += lanes) s += fs_load(x, i, dt);
    return s;
}

FS_HD float fs_lane_sqdev(const void *x, int dt, size_t n, float mean, unsigned lane, unsigned lanes) {
    float s = 0.0f;
    for (size_t i = lane; i < n; i += lanes) {
        float d = fs_load(x, i, dt) - mean;
        s += d * d;
    }
    return s;
}

FS_HD float fs_lane_max(const void *x, int dt, size_t n, unsigned lane, unsigned lanes) {
    float m = -INFINITY;
    for (size_t i = lane; i < n; i += lanes) m = fmaxf(m, fs_load(x, i, dt));
    return m;
}

/* sum of e^((x - mx) * inv_t) */
FS_HD float fs_lane_sumexp(const void *x, int dt, size_t n, float mx, float inv_t, unsigned lane, unsigned lanes) {
    float s = 0.0f;
    for (size_t i = lane; i < n; i += lanes) s += expf((fs_load(x, i, dt) - mx) * inv_t);
    return s;
}

/* An online softmax's running state, (max, sum of e^(x - max)), after one
 * more element x (-inf adds nothing). */
FS_HD void fs_online_add(float *m, float *s, float x) {
    if (x == -INFINITY) return;
    if (x > *m) {
        *s = *s * expf(*m - x) + 1.0f; /* e^(-inf) = 0 for the first element */
        *m = x;
    } else {
        *s += expf(x - *m);
    }
}

/* A lane's state over a row of n in chunks of w consecutive elements:
 * chunks lane, lane + lanes, ..., then the last n % w elements one by one
 * from lane (the order the cross-entropy kernel reads them in, 16 bytes a
 * chunk). Lanes combine through the block's max: sum s e^(m - max). */
FS_HD void fs_lane_online(const void *x, int dt, size_t n, size_t w, unsigned lane, unsigned lanes, float *m,
                          float *s) {
    *m = -INFINITY;
    *s = 0.0f;
    size_t full = n / w;
    for (size_t c = lane; c < full; c += lanes)
        for (size_t i = 0; i < w; i++) fs_online_add(m, s, fs_load(x, c * w + i, dt));
    for (size_t i = full * w + lane; i < n; i += lanes) fs_online_add(m, s, fs_load(x, i, dt));
}

/* A lane's sum rescaled to the block's max. */
FS_HD float fs_online_rescale(float m, float s, float max) { return m == -INFINITY ? 0.0f : s * expf(m - max); }

/* The first maximum of a lane's elements: *best the value, *arg its index
 * (n when the lane has none). Lanes combine with fs_argmax_combine. */
FS_HD void fs_lane_argmax(const void *x, int dt, size_t n, unsigned lane, unsigned lanes, float *best, size_t *arg) {
    *best = -INFINITY;
    *arg = n;
    for (size_t i = lane; i < n; i += lanes) {
        float v = fs_load(x, i, dt);
        if (v > *best || *arg == n) *best = v, *arg = i;
    }
}

/* Of two candidates the larger, the smaller index among equals. */
FS_HD void fs_argmax_combine(float *best, size_t *arg, float other, size_t other_arg) {
    if (other > *best || (other == *best && other_arg < *arg)) *best = other, *arg = other_arg;
}

/* ---- layer norm ---- */

FS_HD float fs_ln_rstd(float var) { return 1.0f / sqrtf(var + FS_LN_EPS); }

FS_HD float fs_ln_forward(float x, float mean, float rstd, float w, float b) { return (x - mean) * rstd * w + b; }

/* A lane's share of the two row sums backward needs: sum(w * dy) and
 * sum(w * dy * norm), norm = (x - mean) * rstd. */
FS_HD void fs_ln_backward_lane(const void *dy, const void *x, int dt, const float *w, size_t C, float mean, float rstd,
                               unsigned lane, unsigned lanes, float *dnorm_sum, float *dnorm_norm_sum) {
    float s1 = 0.0f, s2 = 0.0f;
    for (size_t i = lane; i < C; i += lanes) {
        float norm = (fs_load(x, i, dt) - mean) * rstd, dnorm = w[i] * fs_load(dy, i, dt);
        s1 += dnorm;
        s2 += dnorm * norm;
    }
    *dnorm_sum = s1;
    *dnorm_norm_sum = s2;
}

/* dx of one element, given the row means of dnorm and dnorm * norm. */
FS_HD float fs_ln_backward_dx(float dy, float x, float w, float mean, float rstd, float mean_dnorm,
                              float mean_dnorm_norm) {
    float norm = (x - mean) * rstd, dnorm = w * dy;
    return (dnorm - mean_dnorm - norm * mean_dnorm_norm) * rstd;
}

/* Its parameters' gradients and a bias's: column sums over rows, split in
 * chunks of rows (each a block, FS_COL_ROWS threads down a column, their
 * partials added in thread order), the chunks' sums then added in chunk
 * order: no atomics, the same bits every run. */
#define FS_COL_ROWS 8
#define FS_COL_MAX_CHUNKS 64

FS_HD void fs_column_chunks(size_t N, size_t *chunks, size_t *rows_per_chunk) {
    size_t c = (N + 255) / 256;
    if (c > FS_COL_MAX_CHUNKS) c = FS_COL_MAX_CHUNKS;
    if (c == 0) c = 1;
    *chunks = c;
    *rows_per_chunk = (N + c - 1) / c;
}

/* dweight's term of one element: the normalised input times dy. */
FS_HD float fs_ln_dweight(float x, float mean, float rstd, float dy) { return (x - mean) * rstd * dy; }

/* ---- cross-entropy ---- */

/* d loss / d logit of one element of a row with max mx and 1 / sum(e^(z - mx)). */
FS_HD float fs_ce_dlogit(float z, float mx, float inv_sum, int is_target, float scale) {
    return expf(z - mx) * inv_sum * scale - (is_target ? scale : 0.0f);
}

/* The row's loss: log-sum-exp minus the target's logit. */
FS_HD float fs_ce_loss(float mx, float sum, float z_target) { return mx + logf(sum) - z_target; }

/* ---- sampling ---- */

/* Probabilities sorted descending as a 64-bit key that sorts ascending:
 * the complement of the float's bits (p >= 0, so the bits order like the
 * values) above the id, so equal probabilities keep ids ascending. */
FS_HD uint64_t fs_sample_key(float p, uint32_t id) {
    return ((uint64_t)(0xffffffffu - fs_f32_bits(p)) << 32) | (uint64_t)id;
}
FS_HD float fs_sample_key_p(uint64_t key) { return fs_bits_f32(0xffffffffu - (uint32_t)(key >> 32)); }
FS_HD uint32_t fs_sample_key_id(uint64_t key) { return (uint32_t)(key & 0xffffffffu); }

/* How many of the sorted probabilities p (n, descending) survive top-k
 * (0: off) and then top-p (>= 1: off): the first k, then the shortest
 * prefix whose sum reaches top_p (at least one). Sequential; the kernel
 * finds the same index with a block scan. */
FS_HD size_t fs_sample_keep(const float *p, size_t n, size_t top_k, double top_p) {
    size_t keep = n;
    if (top_k > 0 && top_k < keep) keep = top_k;
    if (top_p < 1.0) {
        double cum = 0.0;
        size_t k = 0;
        while (k < keep) {
            cum += p[k++];
            if (cum >= top_p) break;
        }
        keep = k ? k : 1;
    }
    return keep;
}

/* The position among the kept where u * mass falls (mass: their sum). */
FS_HD size_t fs_sample_pick(const float *p, size_t keep, float u) {
    double mass = 0.0;
    for (size_t i = 0; i < keep; i++) mass += p[i];
    double x = (double)u * mass, cum = 0.0;
    for (size_t i = 0; i < keep; i++) {
        cum += p[i];
        if (x < cum) return i;
    }
    return keep - 1;
}

/* ---- determinism of scattered sums ---- */

/* In keys sorted ascending, whether position i starts a run of equal keys
 * (encoder_backward: one thread block sums each token's rows in order). */
FS_HD int fs_run_start(const int32_t *keys, size_t i) { return i == 0 || keys[i - 1] != keys[i]; }

#endif
