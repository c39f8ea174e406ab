/* lsh_math.h — Reformer LSH attention's rules as the CUDA kernels
 * (lsh_cuda.cu) ask them, in functions nvcc and a plain C compiler both
 * compile: the bucket of a projection, the chunks a sorted slot sees, and
 * how the rounds combine.
 *
 * The CPU plugin (lsh.c) takes, for each query, the union of the keys of
 * its windows in every round and runs one softmax over it. The kernels run
 * one round at a time, each a chunked attention over the round's sorted
 * order (a contiguous range of slots per chunk) in which a key counts only
 * if no earlier round showed it to the query: the rounds' softmaxes merged
 * by their log-sum-exps are then exactly the union's softmax (Reformer's
 * section 2.3 corrects duplicates with a log-count instead; next to the
 * self score of -1e5 that loses f32 precision). A round that shows a query
 * nothing new has log-sum-exp -inf and weight 0.
 * tests/unit/test_attention_tiles.c checks that against lsh.c. */
#ifndef FS_LSH_MATH_H
#define FS_LSH_MATH_H

#include "flash_math.h"

#define FS_LSH_EPS 1e-12f          /* lsh.h's LSH_EPS */
#define FS_LSH_SELF_SCORE (-1e5f)  /* lsh.h's LSH_SELF_SCORE */

/* argmax over [p; -p] (half values each), the first maximum winning. */
FS_HD int32_t fs_lsh_bucket(const float *p, size_t half) {
    size_t best = 0;
    float bv = p[0];
    for (size_t c = 1; c < half; c++)
        if (p[c] > bv) bv = p[c], best = c;
    for (size_t c = 0; c < half; c++)
        if (-p[c] > bv) bv = -p[c], best = half + c;
    return (int32_t)best;
}

/* Slots [lo, hi) of chunks c - back .. c + ahead of T slots (no wrap). */
FS_HD void fs_lsh_window(size_t c, size_t back, size_t ahead, size_t chunk, size_t T, size_t *lo, size_t *hi) {
    *lo = (c >= back ? c - back : 0) * chunk;
    size_t end = c + ahead + 1;
    *hi = end * chunk;
    if (*hi > T || *hi / chunk != end) *hi = T;
}

/* The query in chunk ci sees chunk cj. */
FS_HD int fs_lsh_sees(size_t ci, size_t cj, size_t back, size_t ahead) { return cj + back >= ci && cj <= ci + ahead; }

/* The first of the nh rounds in which the query at position pi sees the
 * key at position pj (nh: none); where (nh, T) holds each position's
 * sorted slot per round. A pair belongs to that round alone: every key of
 * the union is counted exactly once. */
FS_HD size_t fs_lsh_first_round(const int32_t *where, size_t nh, size_t T, size_t chunk, size_t back, size_t ahead,
                                size_t pi, size_t pj) {
    for (size_t r = 0; r < nh; r++)
        if (fs_lsh_sees((size_t)where[r * T + pi] / chunk, (size_t)where[r * T + pj] / chunk, back, ahead)) return r;
    return nh;
}

/* The score of key pj for query pi: q . k / sqrt(D), or the self score for
 * the token itself (a constant: no gradient flows through it). */
FS_HD float fs_lsh_score(float raw, float scale, int self) { return self ? FS_LSH_SELF_SCORE : raw * scale; }

/* The union's log-sum-exp from the rounds' (nh values, stride apart). */
FS_HD float fs_lsh_combine_lse(const float *lse, size_t nh, size_t stride) {
    float m = -INFINITY, s = 0.0f;
    for (size_t r = 0; r < nh; r++) m = fmaxf(m, lse[r * stride]);
    for (size_t r = 0; r < nh; r++) s += expf(lse[r * stride] - m);
    return m + logf(s);
}

/* 1 / |q| with the epsilon the keys are normalised with. */
FS_HD float fs_lsh_inv_norm(float sumsq) { return 1.0f / sqrtf(sumsq + FS_LSH_EPS); }

/* Through k = q inv, inv = (|q|^2 + eps)^(-1/2): dq = inv dk - inv^3 q (q . dk). */
FS_HD float fs_lsh_normalize_backward(float q, float dk, float inv, float q_dot_dk) {
    return inv * dk - inv * inv * inv * q * q_dot_dk;
}

#endif
