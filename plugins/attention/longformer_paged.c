/* longformer_paged.c — serving: the paged step (attention.h), the same
 * attention as longformer_decode.c with the cache in blocks of the pool.
 *
 * A token's entry holds its local key and value (C each) and, when the
 * layer has global tokens, the key and value of its global projection (2C
 * more): what decode's ring, sinks and occurrence slots hold, kept where
 * the token's block is. A row at position p reads:
 *   - local row, head h with dilation d: positions p - m d (m = 0..window),
 *     then the global tokens outside that band (their local K/V);
 *   - global row: positions mode, every position up to p (global K/V);
 *     token mode, the positions of the ring [p + 1 - R, p] and the kept
 *     occurrences before it (global K/V);
 * where R = window * max(dilation) + 1 (decode's ring) and, in token mode,
 * the kept occurrences are the last global_cache occurrences of a global
 * token before p. After each step paged_retain keeps the blocks of the
 * ring of the next token, of the global positions (and everything before
 * the last of them while a global row may still come), or of the kept
 * occurrences, and lets the rest go: a sequence streams on in at most
 * paged_max_blocks blocks. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "longformer.h"
#include "paged.h"

/* Stored elements of one token's entry. */
static size_t entry_elems(const lf_plugin *lf) {
    return (lf->gmode != LF_GLOBAL_NONE ? 4 : 2) * lf->cfg.n_embd;
}

size_t lf_paged_block_bytes(void *self, size_t kv_block) {
    const lf_plugin *lf = self;
    return kv_block * entry_elems(lf) * lf->kv_es;
}

/* Position p's entry: local K at elements [0, C), local V at [C, 2C),
 * global K and V at [2C, 4C). */
static void *entry_at(const lf_plugin *lf, const fs_attention_paged_args *a, const fs_attention_paged_seq *s,
                      size_t p) {
    char *blk = paged_block(a, s, p);
    return paged_kv_at(blk, (p % a->kv_block) * entry_elems(lf), lf->kv_es);
}

/* Element i of an entry. */
static const void *entry_elem(const lf_plugin *lf, const void *e, size_t i) { return paged_kv_at(e, i, lf->kv_es); }

/* Decode's ring: the positions a later token's band reaches back to. */
static size_t ring(const lf_plugin *lf) { return lf->window * lf->dmax + 1; }
/* Positions mode: one past the last global position. */
static size_t sink_end(const lf_plugin *lf) {
    return lf->gmode == LF_GLOBAL_POSITIONS ? (size_t)lf->gpos[lf->n_gpos - 1] + 1 : 0;
}

static int is_global_position(const lf_plugin *lf, size_t p) {
    size_t lo = 0, hi = lf->n_gpos;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((size_t)lf->gpos[mid] < p) lo = mid + 1;
        else hi = mid;
    }
    return lo < lf->n_gpos && (size_t)lf->gpos[lo] == p;
}

/* Token mode: the last `cap` occurrences of a global token before p, most
 * recent first; returns how many. */
static size_t occurrences_before(const lf_plugin *lf, const int32_t *tokens, size_t p, size_t *out, size_t cap) {
    size_t n = 0;
    for (size_t j = p; j-- > 0 && n < cap;)
        if (lf_is_global_token(lf, tokens[j])) out[n++] = j;
    return n;
}

/* The global projection (3C) of the rows that need it: every row in token
 * mode, rows at positions below the last global one in positions mode. */
static int project_globals(const lf_plugin *lf, const fs_attention_paged_args *a, float *qkvg) {
    size_t C = lf->cfg.n_embd, S = sink_end(lf);
    for (size_t i = 0; i < a->n_seqs; i++) {
        const fs_attention_paged_seq *s = &a->seqs[i];
        size_t rows = lf->gmode == LF_GLOBAL_TOKENS ? s->n_new : s->start >= S ? 0 : S - s->start;
        if (rows > s->n_new) rows = s->n_new;
        if (rows == 0) continue;
        int rc = lf->host->sgemm_rows(lf->cfg.device, 0, rows, 3 * C, C, (const float *)a->x.data + s->row * C, C,
                                      lf->wg, 3 * C, lf->bg, qkvg + s->row * 3 * C, 3 * C);
        if (rc) return rc;
    }
    return FS_OK;
}

static void store_entries(const lf_plugin *lf, const fs_attention_paged_args *a, const float *qkvg) {
    size_t C = lf->cfg.n_embd, S = sink_end(lf);
    for (size_t i = 0; i < a->n_seqs; i++) {
        const fs_attention_paged_seq *s = &a->seqs[i];
        for (size_t t = 0; t < s->n_new; t++) {
            size_t p = s->start + t, row = s->row + t, es = lf->kv_es;
            void *e = entry_at(lf, a, s, p);
            paged_kv_put(e, (const float *)a->k.data + row * C, C, es);
            paged_kv_put(paged_kv_at(e, C, es), (const float *)a->v.data + row * C, C, es);
            if (lf->gmode == LF_GLOBAL_TOKENS || (lf->gmode == LF_GLOBAL_POSITIONS && p < S))
                paged_kv_put(paged_kv_at(e, 2 * C, es), qkvg + row * 3 * C + C, 2 * C, es);
        }
    }
}

typedef struct paged_job {
    const lf_plugin *lf;
    const fs_attention_paged_args *a;
    const float *qkvg;
    size_t max_keys;
    atomic_int failed;
} paged_job;

typedef struct row_scratch {
    float *w;
    const void **vp;
    size_t *occ;
} row_scratch;

/* A global row of head h at position p (decode's attend_global_row). */
static void global_row(const paged_job *j, const fs_attention_paged_seq *s, size_t p, size_t h, const float *qg,
                       const size_t *occ, size_t n_occ, row_scratch *sc, float *out) {
    const lf_plugin *lf = j->lf;
    size_t C = lf->cfg.n_embd, D = lf->cfg.head_dim, R = ring(lf), n = 0;
    size_t first = lf->gmode == LF_GLOBAL_TOKENS && p + 1 > R ? p + 1 - R : 0;
    for (size_t q = first; q <= p; q++) {
        const void *e = entry_at(lf, j->a, s, q);
        sc->w[n] = paged_dot(qg, entry_elem(lf, e, 2 * C + h * D), D, lf->kv_es) * lf->scale;
        sc->vp[n++] = entry_elem(lf, e, 3 * C + h * D);
    }
    for (size_t c = n_occ; c-- > 0;) /* oldest first, as decode's slots */
        if (occ[c] < first) {
            const void *e = entry_at(lf, j->a, s, occ[c]);
            sc->w[n] = paged_dot(qg, entry_elem(lf, e, 2 * C + h * D), D, lf->kv_es) * lf->scale;
            sc->vp[n++] = entry_elem(lf, e, 3 * C + h * D);
        }
    paged_softmax_values(out, sc->w, sc->vp, n, D, lf->kv_es);
}

/* A local row of head h at position p (decode's attend_local_row). */
static void local_row(const paged_job *j, const fs_attention_paged_seq *s, size_t p, size_t h, const float *q,
                      const size_t *occ, size_t n_occ, row_scratch *sc, float *out) {
    const lf_plugin *lf = j->lf;
    size_t C = lf->cfg.n_embd, D = lf->cfg.head_dim, w = lf->window, d = lf->dil[h], n = 0;
    for (size_t m = 0; m <= w && m * d <= p; m++) {
        const void *e = entry_at(lf, j->a, s, p - m * d);
        sc->w[n] = paged_dot(q, entry_elem(lf, e, h * D), D, lf->kv_es) * lf->scale;
        sc->vp[n++] = entry_elem(lf, e, C + h * D);
    }
    size_t ng = lf->gmode == LF_GLOBAL_TOKENS ? n_occ : lf->gmode == LF_GLOBAL_POSITIONS ? lf->n_gpos : 0;
    for (size_t c = 0; c < ng; c++) {
        size_t g = lf->gmode == LF_GLOBAL_TOKENS ? occ[n_occ - 1 - c] : (size_t)lf->gpos[c];
        if (g >= p || ((p - g) % d == 0 && (p - g) / d <= w)) continue;
        const void *e = entry_at(lf, j->a, s, g);
        sc->w[n] = paged_dot(q, entry_elem(lf, e, h * D), D, lf->kv_es) * lf->scale;
        sc->vp[n++] = entry_elem(lf, e, C + h * D);
    }
    paged_softmax_values(out, sc->w, sc->vp, n, D, lf->kv_es);
}

/* Items are rows; a row's heads share its kind (global or local) and its
 * kept occurrences. */
static void paged_rows(void *arg, size_t begin, size_t end) {
    paged_job *j = arg;
    const lf_plugin *lf = j->lf;
    const fs_attention_paged_args *a = j->a;
    size_t H = lf->cfg.n_head, D = lf->cfg.head_dim, C = lf->cfg.n_embd, NG = lf->global_cache;
    row_scratch sc = {lf->host->alloc(lf->cfg.device, j->max_keys * sizeof(float)),
                      lf->host->alloc(lf->cfg.device, j->max_keys * sizeof(void *)),
                      lf->host->alloc(lf->cfg.device, (NG + 1) * sizeof(size_t))};
    if (!sc.w || !sc.vp || !sc.occ) {
        atomic_store(&j->failed, 1);
        begin = end;
    }
    for (size_t row = begin; row < end; row++) {
        const fs_attention_paged_seq *s = &a->seqs[paged_seq_of_row(a, row)];
        size_t p = s->start + (row - s->row), n_occ = 0;
        int global = 0;
        if (lf->gmode == LF_GLOBAL_TOKENS) {
            n_occ = occurrences_before(lf, s->tokens, p, sc.occ, NG);
            global = lf_is_global_token(lf, s->tokens[p]);
        } else if (lf->gmode == LF_GLOBAL_POSITIONS) {
            global = p < sink_end(lf) && is_global_position(lf, p);
        }
        for (size_t h = 0; h < H; h++) {
            float *out = (float *)a->out.data + (row * H + h) * D;
            if (global)
                global_row(j, s, p, h, j->qkvg + row * 3 * C + h * D, sc.occ, n_occ, &sc, out);
            else
                local_row(j, s, p, h, (const float *)a->q.data + (row * H + h) * D, sc.occ, n_occ, &sc, out);
        }
    }
    lf->host->free(lf->cfg.device, sc.w);
    lf->host->free(lf->cfg.device, (void *)sc.vp);
    lf->host->free(lf->cfg.device, sc.occ);
}

/* Keys one row can see at most, for the scratch. */
static size_t max_keys(const lf_plugin *lf, const fs_attention_paged_args *a) {
    size_t band = lf->window + 1 + (lf->gmode == LF_GLOBAL_POSITIONS ? lf->n_gpos : 0);
    if (lf->gmode == LF_GLOBAL_TOKENS) band += lf->global_cache + ring(lf);
    if (lf->gmode == LF_GLOBAL_POSITIONS) band += sink_end(lf);
    size_t len = paged_max_len(a);
    return band < len + lf->global_cache ? band : len + lf->global_cache;
}

int lf_paged_step(void *self, fs_attention_paged_args *a, fs_error *err) {
    lf_plugin *lf = self;
    if (lf->cfg.device.type != FS_DEVICE_CPU)
        return lf->host->error_set(err, FS_ERR_UNSUPPORTED,
                                   "longformer attention: serving runs on the CPU ([run] device = cpu); its CUDA "
                                   "kernels are for training");
    if (!lf->cfg.causal)
        return lf->host->error_set(err, FS_ERR_UNSUPPORTED,
                                   "longformer attention: the paged step is causal; this layer has causal = false");
    int rc = paged_check(lf->host, "longformer", a, err);
    if (rc) return rc;
    if (lf->gmode != LF_GLOBAL_NONE && !a->x.data)
        return lf->host->error_set(err, FS_ERR_INVALID, "longformer attention: global tokens need the layer input x");
    float *qkvg = NULL;
    if (lf->gmode != LF_GLOBAL_NONE) {
        qkvg = lf->host->alloc(lf->cfg.device, a->n_rows * 3 * lf->cfg.n_embd * sizeof(float));
        if (!qkvg) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory");
        if ((rc = project_globals(lf, a, qkvg))) {
            lf->host->free(lf->cfg.device, qkvg);
            return lf->host->error_set(err, rc, "longformer attention: the global projection failed");
        }
    }
    store_entries(lf, a, qkvg);
    paged_job job = {lf, a, qkvg, max_keys(lf, a), 0};
    lf->host->parallel_for(a->n_rows, 1, paged_rows, &job);
    lf->host->free(lf->cfg.device, qkvg);
    if (atomic_load(&job.failed))
        return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory for %zu scores",
                                   job.max_keys);
    return FS_OK;
}

static void keep_range(const fs_attention_retain_args *a, size_t p0, size_t p1) {
    for (size_t b = p0 / a->kv_block; b < a->n_blocks && b * a->kv_block < p1; b++) a->keep[b] = 1;
}

int lf_paged_retain(void *self, fs_attention_retain_args *a, fs_error *err) {
    lf_plugin *lf = self;
    size_t len = a->len, R = ring(lf), S = sink_end(lf);
    keep_range(a, len + 1 > R ? len + 1 - R : 0, len);
    if (lf->gmode == LF_GLOBAL_POSITIONS) {
        if (len < S) keep_range(a, 0, len); /* a global row to come reads every position before it */
        for (size_t i = 0; i < lf->n_gpos; i++) keep_range(a, (size_t)lf->gpos[i], (size_t)lf->gpos[i] + 1);
    } else if (lf->gmode == LF_GLOBAL_TOKENS) {
        size_t *occ = lf->host->alloc(lf->cfg.device, (lf->global_cache + 1) * sizeof(size_t));
        if (!occ) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory");
        size_t n = occurrences_before(lf, a->tokens, len, occ, lf->global_cache);
        for (size_t i = 0; i < n; i++) keep_range(a, occ[i], occ[i] + 1);
        lf->host->free(lf->cfg.device, occ);
    }
    return FS_OK;
}

size_t lf_paged_max_blocks(void *self, size_t kv_block) {
    lf_plugin *lf = self;
    size_t ring_blocks = (ring(lf) - 1 + kv_block - 1) / kv_block + 1;
    size_t extra = lf->gmode == LF_GLOBAL_POSITIONS ? (sink_end(lf) + kv_block - 1) / kv_block
                   : lf->gmode == LF_GLOBAL_TOKENS  ? lf->global_cache
                                                    : 0;
    return ring_blocks + extra;
}
