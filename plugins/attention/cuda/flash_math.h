/* flash_math.h — the arithmetic of the attention plugins' CUDA kernels, in
 * functions nvcc (device) and a plain C compiler (host) both compile.
 *
 * The three plugins share one tiled attention engine (flash.cuh):
 * FlashAttention-2's forward (a tile of FS_FA_BR query rows against tiles
 * of FS_FA_BC keys, an online softmax, the log-sum-exp of each row saved)
 * and backward (rowsum(dO * O) per row; dQ by query tiles; dK and dV by key
 * tiles, each recomputing the probabilities from the saved log-sum-exp), no
 * T x T buffer anywhere. What differs between the plugins is which keys a
 * query sees and how a score is made: the masks and tile ranges below
 * (dense), in longformer_math.h and in lsh_math.h.
 *
 * tests/unit/test_attention_tiles.c runs the engine's loops on the CPU with
 * these functions and compares with each plugin's CPU forward and
 * backward. */
#ifndef FS_FLASH_MATH_H
#define FS_FLASH_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FS_HD static __host__ __device__ __forceinline__
#else
#define FS_HD static inline
#endif

#define FS_FA_BR 16 /* query rows of a forward / dQ tile (4 warps x 4 rows) */
#define FS_FA_BC 32 /* keys of a tile: one per lane */
#define FS_FA_BQ 32 /* query rows of a dK/dV tile: one per lane */
#define FS_FA_RPW 4 /* query rows per warp in forward / dQ */
#define FS_FA_KPW 8 /* keys per warp in dK/dV */
#define FS_FA_DECODE_WARPS 4 /* warps of a decode block, one (b, h) each */

/* ---- the online softmax ---- */

/* The factor the running sums are multiplied by when the running max goes
 * from m_old to m_new (0 when nothing was seen yet). */
FS_HD float fs_fa_rescale(float m_old, float m_new) { return m_old == -INFINITY ? 0.0f : expf(m_old - m_new); }

/* e^(s - m) for a score, 0 for a masked one (-inf). */
FS_HD float fs_fa_prob(float s, float m) { return s == -INFINITY ? 0.0f : expf(s - m); }

/* The row's log-sum-exp from its running max and sum. */
FS_HD float fs_fa_lse(float m, float l) { return m + logf(l); }

/* d loss / d score from the probability, d loss / d probability and the
 * row's rowsum(dO * O) (= sum over keys of p * dp). */
FS_HD float fs_fa_dscore(float p, float dp, float delta) { return p * (dp - delta); }

/* ---- dense ---- */

FS_HD int fs_dense_visible(size_t i, size_t j, int causal) { return !causal || j <= i; }

/* Keys a query tile [i0, i1) needs: [0, end). */
FS_HD size_t fs_dense_key_end(size_t i1, size_t T, int causal) { return causal ? (i1 < T ? i1 : T) : T; }

/* Queries that may see a key tile starting at j0: [begin, T). */
FS_HD size_t fs_dense_query_begin(size_t j0, int causal) { return causal ? j0 : 0; }

/* ---- decode: one query against a cache of n keys, split among warps ----
 * Warp w takes the 32-key tiles w, w + W, ... with its own online
 * softmax; the W partial (max, sum, accumulator) triples then merge. */

/* The merged max of partials with maxima m and m2, and the factors each
 * partial's sum and accumulator are multiplied by (the kernel applies them
 * lane by lane). */
FS_HD float fs_fa_merge_scales(float m, float m2, float *a, float *b) {
    float mn = fmaxf(m, m2);
    *a = fs_fa_rescale(m, mn), *b = fs_fa_rescale(m2, mn);
    return mn;
}

/* (m, l, acc) absorbs (m2, l2, acc2); nothing happens while both are empty. */
FS_HD void fs_fa_merge(float *m, float *l, float *acc, float m2, float l2, const float *acc2, size_t D) {
    float a, b, mn = fs_fa_merge_scales(*m, m2, &a, &b);
    if (mn == -INFINITY) return;
    *l = *l * a + l2 * b;
    for (size_t d = 0; d < D; d++) acc[d] = acc[d] * a + acc2[d] * b;
    *m = mn;
}

#endif
