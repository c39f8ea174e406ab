/* paged.h — what the attention plugins' paged steps share (attention.h,
 * "The paged KV cache"): finding a token's block, the row -> sequence map,
 * and the fixed-order kernels that make a row's output independent of the
 * step it is in (batch invariance). Header-only and private to
 * plugins/attention; not part of the SDK.
 *
 * Every sum here runs in an order fixed by the row's own sizes: dot
 * products in eight fused-multiply-add lanes (the order of the host's
 * sgemm_rows with B^T), softmax sums and weighted sums of values key by
 * key. fmaf is written out so vector and scalar code round alike. */
#ifndef FS_PAGED_H
#define FS_PAGED_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fastserve/attention.h"
#include "fastserve/fastmath.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#define PAGED_LANES 8

/* The eight lanes' fixed tree. */
static inline float paged_lanes_sum(const float *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* a . b over n, eight lanes then a fixed tree (fs_host_api.sgemm_rows' order). */
static inline float paged_dot(const float *a, const float *b, size_t n) {
    float l[PAGED_LANES] = {0};
    size_t n8 = n - n % PAGED_LANES, i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    /* the eight lanes in one register: GCC keeps fmaf's lanes scalar (eight
     * vfmadd231ss a step, 8x the instructions); the same chains, the same bits */
    __m256 acc = _mm256_setzero_ps();
    for (; i < n8; i += PAGED_LANES) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    _mm256_storeu_ps(l, acc);
#endif
    for (; i < n8; i += PAGED_LANES)
        for (size_t j = 0; j < PAGED_LANES; j++) l[j] = fmaf(a[i + j], b[i + j], l[j]);
    for (; i < n; i++) l[i - n8] = fmaf(a[i], b[i], l[i - n8]);
    return paged_lanes_sum(l);
}

/* w[t] = scale * (q . k_t) for the n keys k_t = k + t * ldk (D each), each
 * dot in paged_dot's order. Four keys at a time in four registers: one
 * dot's eight lanes are a chain of dependent fused multiply-adds, four
 * chains side by side keep the FMA units busy. */
static inline void paged_dots(float *w, const float *q, const float *k, size_t ldk, size_t n, size_t D, float scale) {
    size_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (D % PAGED_LANES == 0)
        for (; t + 4 <= n; t += 4) {
            const float *k0 = k + t * ldk, *k1 = k0 + ldk, *k2 = k1 + ldk, *k3 = k2 + ldk;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (size_t i = 0; i < D; i += PAGED_LANES) {
                __m256 x = _mm256_loadu_ps(q + i);
                a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k0 + i), a0);
                a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k1 + i), a1);
                a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k2 + i), a2);
                a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k3 + i), a3);
            }
            __m256 acc[4] = {a0, a1, a2, a3};
            for (size_t u = 0; u < 4; u++) {
                float l[PAGED_LANES];
                _mm256_storeu_ps(l, acc[u]);
                w[t + u] = paged_lanes_sum(l) * scale;
            }
        }
#endif
    for (; t < n; t++) w[t] = paged_dot(q, k + t * ldk, D) * scale;
}

/* The block holding position pos of sequence s, or NULL when released. */
static inline char *paged_block(const fs_attention_paged_args *a, const fs_attention_paged_seq *s, size_t pos) {
    size_t i = pos / a->kv_block;
    if (i >= s->n_blocks || s->blocks[i] < 0) return NULL;
    return (char *)a->pool + (size_t)s->blocks[i] * a->block_bytes;
}

/* The sequence whose rows include `row` (seqs are in row order). */
static inline size_t paged_seq_of_row(const fs_attention_paged_args *a, size_t row) {
    size_t lo = 0, hi = a->n_seqs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (a->seqs[mid].row <= row) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* The largest position any row of the step attends from, plus one. */
static inline size_t paged_max_len(const fs_attention_paged_args *a) {
    size_t n = 0;
    for (size_t s = 0; s < a->n_seqs; s++)
        if (a->seqs[s].start + a->seqs[s].n_new > n) n = a->seqs[s].start + a->seqs[s].n_new;
    return n;
}

/* Checks the host kept the contract (tensors, rows, tables). */
static inline int paged_check(const fs_host_api *host, const char *who, const fs_attention_paged_args *a,
                              fs_error *err) {
    if (a->q.device.type != FS_DEVICE_CPU || a->q.dtype != FS_DTYPE_F32)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "%s attention: the paged step expects f32 CPU tensors", who);
    size_t row = 0;
    for (size_t i = 0; i < a->n_seqs; i++) {
        const fs_attention_paged_seq *s = &a->seqs[i];
        size_t need = (s->start + s->n_new + a->kv_block - 1) / a->kv_block;
        if (s->row != row || s->n_new == 0 || s->n_blocks < need || !s->tokens)
            return host->error_set(err, FS_ERR_INVALID,
                                   "%s attention: paged step sequence %zu: row %zu (expected %zu), %zu new tokens, "
                                   "%zu blocks for %zu positions",
                                   who, i, s->row, row, s->n_new, s->n_blocks, s->start + s->n_new);
        for (size_t p = s->start; p < s->start + s->n_new; p += a->kv_block - p % a->kv_block)
            if (s->blocks[p / a->kv_block] < 0)
                return host->error_set(err, FS_ERR_INVALID,
                                       "%s attention: paged step sequence %zu has no block for position %zu", who, i,
                                       p);
        row += s->n_new;
    }
    if (row != a->n_rows)
        return host->error_set(err, FS_ERR_INVALID, "%s attention: the sequences have %zu rows, the step %zu", who,
                               row, a->n_rows);
    return FS_OK;
}

/* out (D) = sum_j softmax(w)_j v_j over the n keys whose scores are in w
 * (overwritten with exp(w - max)); entries of -INFINITY take no part.
 * Sums key by key in order; one division at the end. The exponentials
 * come first (their sum in key order), then the values, PAGED_VCHUNK
 * columns at a time with those columns' sums in registers: each out[c] is
 * the same chain of fused multiply-adds in key order as element by element. */
#define PAGED_VCHUNK 64
static inline void paged_softmax_values(float *out, float *w, const float *const *vp, size_t n, size_t D) {
    float mx = -INFINITY, sum = 0.0f;
    for (size_t j = 0; j < n; j++) mx = w[j] > mx ? w[j] : mx;
    for (size_t j = 0; j < n; j++)
        if (w[j] != -INFINITY) sum += (w[j] = fs_fast_expf(w[j] - mx));
    size_t c0 = 0;
#if defined(__AVX2__) && defined(__FMA__)
    for (; c0 + PAGED_VCHUNK <= D; c0 += PAGED_VCHUNK) {
        __m256 acc[PAGED_VCHUNK / 8];
        for (size_t v = 0; v < PAGED_VCHUNK / 8; v++) acc[v] = _mm256_setzero_ps();
        for (size_t j = 0; j < n; j++) {
            if (w[j] == -INFINITY) continue;
            __m256 e = _mm256_set1_ps(w[j]);
            for (size_t v = 0; v < PAGED_VCHUNK / 8; v++)
                acc[v] = _mm256_fmadd_ps(e, _mm256_loadu_ps(vp[j] + c0 + 8 * v), acc[v]);
        }
        for (size_t v = 0; v < PAGED_VCHUNK / 8; v++) _mm256_storeu_ps(out + c0 + 8 * v, acc[v]);
    }
#endif
    for (size_t c = c0; c < D; c++) out[c] = 0.0f;
    if (c0 < D)
        for (size_t j = 0; j < n; j++) {
            if (w[j] == -INFINITY) continue;
            for (size_t c = c0; c < D; c++) out[c] = fmaf(w[j], vp[j][c], out[c]);
        }
    float inv = 1.0f / sum;
    for (size_t c = 0; c < D; c++) out[c] *= inv;
}

#endif
