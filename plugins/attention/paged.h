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

#define PAGED_LANES 8

/* a . b over n, eight lanes then a fixed tree (fs_host_api.sgemm_rows' order). */
static inline float paged_dot(const float *a, const float *b, size_t n) {
    float l[PAGED_LANES] = {0};
    size_t n8 = n - n % PAGED_LANES, i = 0;
    for (; i < n8; i += PAGED_LANES)
        for (size_t j = 0; j < PAGED_LANES; j++) l[j] = fmaf(a[i + j], b[i + j], l[j]);
    for (; i < n; i++) l[i - n8] = fmaf(a[i], b[i], l[i - n8]);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
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
 * Sums key by key in order; one division at the end. */
static inline void paged_softmax_values(float *out, float *w, const float *const *vp, size_t n, size_t D) {
    float mx = -INFINITY, sum = 0.0f;
    for (size_t j = 0; j < n; j++) mx = w[j] > mx ? w[j] : mx;
    for (size_t c = 0; c < D; c++) out[c] = 0.0f;
    for (size_t j = 0; j < n; j++) {
        if (w[j] == -INFINITY) continue;
        float e = fs_fast_expf(w[j] - mx);
        sum += e;
        const float *v = vp[j];
        for (size_t c = 0; c < D; c++) out[c] = fmaf(e, v[c], out[c]);
    }
    float inv = 1.0f / sum;
    for (size_t c = 0; c < D; c++) out[c] *= inv;
}

#endif
