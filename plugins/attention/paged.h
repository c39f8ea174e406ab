/* paged.h — what the attention plugins' paged steps share (attention.h,
 * "The paged KV cache"): finding a token's block, the row -> sequence map,
 * and the fixed-order kernels that make a row's output independent of the
 * step it is in (batch invariance). Header-only and private to
 * plugins/attention; not part of the SDK.
 *
 * Every sum here runs in an order fixed by the row's own sizes: dot
 * products in eight fused-multiply-add lanes (the order of the host's
 * sgemm_rows with B^T), softmax sums and weighted sums of values key by
 * key. fmaf is written out so vector and scalar code round alike. Keys and
 * values are stored f32 or bf16 (es, below). */
#ifndef FS_PAGED_H
#define FS_PAGED_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <string.h>

#include "fastserve/attention.h"
#include "fastserve/bf16.h"
#include "fastserve/fastmath.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#define PAGED_LANES 8
#define PAGED_INLINE static inline __attribute__((always_inline))

/* ---- keys and values as the blocks store them ----
 *
 * f32, or bf16 with FS_ATTENTION_PAGED_BF16 (fs_attention_config.kv_dtype):
 * `es` is the bytes of one stored element, 4 or 2. A bf16 element widens
 * to f32 exactly, so every sum below is the same chain of operations on
 * the same values whichever sequences share the step. Each kernel takes
 * es at run time and calls a body inlined for es = 4 and es = 2, so the
 * loops carry no test. */

/* The element size the instance stores (F32 unless the config, new
 * enough to have the member, asks BF16). */
static inline size_t paged_kv_es(const fs_attention_config *cfg) {
    return FS_HAS_MEMBER(cfg, cfg->struct_size, fs_attention_config, kv_dtype) && cfg->kv_dtype == FS_DTYPE_BF16
               ? sizeof(fs_bf16)
               : sizeof(float);
}

/* *dst = the host's config as far as its struct_size goes, zeros after: a
 * host older than the plugin passes a shorter struct (the plugins keep a
 * copy; paged_kv_es reads kv_dtype from the original). */
static inline void paged_config_copy(fs_attention_config *dst, const fs_attention_config *src) {
    memset(dst, 0, sizeof *dst);
    memcpy(dst, src, src->struct_size < sizeof *dst ? src->struct_size : sizeof *dst);
}

/* The address of element i of stored entries starting at p. */
static inline void *paged_kv_at(const void *p, size_t i, size_t es) { return (char *)p + i * es; }

static inline float paged_kv_get(const void *p, size_t i, size_t es) {
    return es == sizeof(fs_bf16) ? fs_bf16_to_f32(((const fs_bf16 *)p)[i]) : ((const float *)p)[i];
}

/* dst (n stored elements) = src, rounded to bf16 when es = 2. */
static inline void paged_kv_put(void *dst, const float *src, size_t n, size_t es) {
    if (es == sizeof(float)) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    fs_bf16 *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = fs_bf16_from_f32(src[i]);
}

#if defined(__AVX2__) && defined(__FMA__)
/* Eight stored elements as floats (bf16: the 16 bits moved to the top). */
PAGED_INLINE __m256 paged_kv_load8(const void *p, size_t es) {
    if (es == sizeof(float)) return _mm256_loadu_ps((const float *)p);
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#endif

/* The eight lanes' fixed tree. */
static inline float paged_lanes_sum(const float *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* a . b over n (b stored), eight lanes then a fixed tree (fs_host_api.sgemm_rows' order). */
PAGED_INLINE float paged_dot_es(const float *a, const void *b, size_t n, size_t es) {
    float l[PAGED_LANES] = {0};
    size_t n8 = n - n % PAGED_LANES, i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    /* the eight lanes in one register: GCC keeps fmaf's lanes scalar (eight
     * vfmadd231ss a step, 8x the instructions); the same chains, the same bits */
    __m256 acc = _mm256_setzero_ps();
    for (; i < n8; i += PAGED_LANES)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), paged_kv_load8(paged_kv_at(b, i, es), es), acc);
    _mm256_storeu_ps(l, acc);
#endif
    for (; i < n8; i += PAGED_LANES)
        for (size_t j = 0; j < PAGED_LANES; j++) l[j] = fmaf(a[i + j], paged_kv_get(b, i + j, es), l[j]);
    for (; i < n; i++) l[i - n8] = fmaf(a[i], paged_kv_get(b, i, es), l[i - n8]);
    return paged_lanes_sum(l);
}

static inline float paged_dot(const float *a, const void *b, size_t n, size_t es) {
    return es == sizeof(float) ? paged_dot_es(a, b, n, sizeof(float)) : paged_dot_es(a, b, n, sizeof(fs_bf16));
}

/* w[t] = scale * (q . k_t) for the n keys k_t at element t * ldk of k (D
 * each), each dot in paged_dot's order. Four keys at a time in four
 * registers: one dot's eight lanes are a chain of dependent fused
 * multiply-adds, four chains side by side keep the FMA units busy. */
PAGED_INLINE void paged_dots_es(float *w, const float *q, const void *k, size_t ldk, size_t n, size_t D, float scale,
                                size_t es) {
    size_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (D % PAGED_LANES == 0)
        for (; t + 4 <= n; t += 4) {
            const char *k0 = paged_kv_at(k, t * ldk, es), *k1 = k0 + ldk * es, *k2 = k1 + ldk * es,
                       *k3 = k2 + ldk * es;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (size_t i = 0; i < D; i += PAGED_LANES) {
                __m256 x = _mm256_loadu_ps(q + i);
                a0 = _mm256_fmadd_ps(x, paged_kv_load8(k0 + i * es, es), a0);
                a1 = _mm256_fmadd_ps(x, paged_kv_load8(k1 + i * es, es), a1);
                a2 = _mm256_fmadd_ps(x, paged_kv_load8(k2 + i * es, es), a2);
                a3 = _mm256_fmadd_ps(x, paged_kv_load8(k3 + i * es, es), a3);
            }
            /* the four lane trees at once: hadd pairs lanes (l0 + l1, l2 + l3 ...),
             * the second hadd adds those pairs, and the halves' sum is the
             * tree's last addition: ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 +
             * l7)) for each key, the bits of paged_lanes_sum without four trips
             * through memory */
            __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            __m128 sum = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(w + t, _mm_mul_ps(sum, _mm_set1_ps(scale)));
        }
#endif
    for (; t < n; t++) w[t] = paged_dot_es(q, paged_kv_at(k, t * ldk, es), D, es) * scale;
}

static inline void paged_dots(float *w, const float *q, const void *k, size_t ldk, size_t n, size_t D, float scale,
                              size_t es) {
    if (es == sizeof(float)) paged_dots_es(w, q, k, ldk, n, D, scale, sizeof(float));
    else paged_dots_es(w, q, k, ldk, n, D, scale, sizeof(fs_bf16));
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
 * (overwritten with exp(w - max)) and whose values (stored, D each) are at
 * vp[j]; entries of -INFINITY take no part. Sums key by key in order; one
 * division at the end. The exponentials come first (their sum in key
 * order), then the values, PAGED_VCHUNK columns at a time with those
 * columns' sums in registers: each out[c] is the same chain of fused
 * multiply-adds in key order as element by element. */
#define PAGED_VCHUNK 64
PAGED_INLINE void paged_softmax_values_es(float *out, float *w, const void *const *vp, size_t n, size_t D,
                                          size_t es) {
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
            const char *v0 = paged_kv_at(vp[j], c0, es);
            for (size_t v = 0; v < PAGED_VCHUNK / 8; v++)
                acc[v] = _mm256_fmadd_ps(e, paged_kv_load8(v0 + 8 * v * es, es), acc[v]);
        }
        for (size_t v = 0; v < PAGED_VCHUNK / 8; v++) _mm256_storeu_ps(out + c0 + 8 * v, acc[v]);
    }
#endif
    for (size_t c = c0; c < D; c++) out[c] = 0.0f;
    if (c0 < D)
        for (size_t j = 0; j < n; j++) {
            if (w[j] == -INFINITY) continue;
            for (size_t c = c0; c < D; c++) out[c] = fmaf(w[j], paged_kv_get(vp[j], c, es), out[c]);
        }
    float inv = 1.0f / sum;
    for (size_t c = 0; c < D; c++) out[c] *= inv;
}

static inline void paged_softmax_values(float *out, float *w, const void *const *vp, size_t n, size_t D, size_t es) {
    if (es == sizeof(float)) paged_softmax_values_es(out, w, vp, n, D, sizeof(float));
    else paged_softmax_values_es(out, w, vp, n, D, sizeof(fs_bf16));
}

#endif
