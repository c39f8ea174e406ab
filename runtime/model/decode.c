/* decode.c — a decoding sequence (seq.h): the owner of B rows' caches
 * that runs each decode step as one ragged step (batch.h) of B sequences
 * of one new token each. Layers with a paged step keep their keys and
 * values in blocks of a pool private to the sequence, sized for its
 * context (or, with bounded caches, for what paged_retain keeps); layers
 * whose plugin predates the paged cache keep the plugin's own decode cache
 * per row. */
#include "model/seq.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "core/rng.h"
#include "model/batch.h"
#include "model/kv_pool.h"
#include "model/model_internal.h"

/* Tokens per block of a sequence's private pool. */
#define SEQ_KV_BLOCK 16

typedef struct seq_row {
    int32_t *tokens;  /* every token so far */
    int32_t *blocks;  /* its block table (FS_PAGED_NO_BLOCK once released) */
    void **caches;    /* (L) decode caches of layers without a paged step */
} seq_row;

struct fs_seq {
    const fs_model *m; /* borrowed: outlives the sequence */
    size_t B, pos, context;
    int bounded, threads;
    size_t cap;        /* tokens each row's history holds before it grows */
    seq_row *rows;     /* (B) */
    fs_kv_pool *pool;  /* NULL when no layer is paged */
    fs_batch *batch;
    fs_step_weights *sw; /* the model's projections as the step reads them */
    fs_batch_seq *bseq; /* (B) */
    uint8_t *keep;      /* retain scratch, one per block of a row's table */
    size_t cache_bytes;
    fs_sampler sampler;
    fs_rng *rng;       /* (B) */
    float *work;       /* 2 V floats of sampling scratch */
};

int fs_model_cache_bounded(const fs_model *m) {
    for (size_t l = 0; l < m->L; l++)
        if (!(m->attn[l].vt->flags & FS_ATTENTION_BOUNDED_CACHE)) return 0;
    return 1;
}

static int check_decodable(const fs_model *m, fs_error *err) {
    if (m->L != m->cfg.n_layer || m->tp_size != 1 || !m->has_embed || !m->has_head)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "generation needs the whole model in one process (no tensor or "
                            "pipeline split): load the checkpoint without [parallel]");
    for (size_t l = 0; l < m->L; l++) {
        const fs_attention_slot *s = &m->attn[l];
        if (!fs_model_layer_paged(m, l) && (!s->vt->decode || !(s->vt->flags & FS_ATTENTION_DECODE)))
            return fs_error_set(err, FS_ERR_UNSUPPORTED, "layer %zu: the attention plugin has no decode step", l);
    }
    return FS_OK;
}

/* The pool: every row's blocks for the whole context, or for what a
 * bounded cache keeps plus the block of the next token. */
static int make_pool(fs_seq *s, fs_error *err) {
    const fs_model *m = s->m;
    size_t l = 0;
    while (l < m->L && !fs_model_layer_paged(m, l)) l++;
    if (l == m->L) return FS_OK; /* no paged layer */
    size_t per_row = s->bounded ? fs_model_paged_max_blocks(m, SEQ_KV_BLOCK) + 1
                                : (s->context + SEQ_KV_BLOCK - 1) / SEQ_KV_BLOCK;
    int rc = fs_kv_pool_create(&s->pool, m, SEQ_KV_BLOCK, s->B * per_row, 0, err);
    if (!rc) s->cache_bytes += s->B * per_row * fs_kv_block_bytes(m, SEQ_KV_BLOCK);
    return rc;
}

static int make_caches(fs_seq *s, seq_row *r, fs_error *err) {
    const fs_model *m = s->m;
    size_t plugin_context = s->bounded ? 0 : s->context;
    for (size_t l = 0; l < m->L; l++) {
        if (fs_model_layer_paged(m, l)) continue;
        const fs_attention_slot *a = &m->attn[l];
        size_t bytes;
        ATTN_CALL(m, l, "cache_bytes", bytes = a->vt->cache_bytes(a->self, 1, plugin_context));
        if (!(r->caches[l] = fs_alloc(bytes)))
            return fs_error_set(err, FS_ERR_NOMEM, "layer %zu: out of memory for a %zu-byte KV cache", l, bytes);
        s->cache_bytes += bytes;
        int rc;
        ATTN_CALL(m, l, "cache_reset", rc = a->vt->cache_reset(a->self, r->caches[l], 1, plugin_context, err));
        if (rc) return rc;
    }
    return FS_OK;
}

static int make_rows(fs_seq *s, fs_error *err) {
    s->cap = s->bounded ? 256 : s->context;
    for (size_t b = 0; b < s->B; b++) {
        seq_row *r = &s->rows[b];
        r->tokens = malloc(s->cap * sizeof *r->tokens);
        r->blocks = malloc(((s->cap + SEQ_KV_BLOCK - 1) / SEQ_KV_BLOCK) * sizeof *r->blocks);
        r->caches = calloc(s->m->L, sizeof *r->caches);
        if (!r->tokens || !r->blocks || !r->caches) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
        int rc = make_caches(s, r, err);
        if (rc) return rc;
    }
    s->keep = malloc((s->cap + SEQ_KV_BLOCK - 1) / SEQ_KV_BLOCK);
    return s->keep ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
}

int fs_seq_create(fs_seq **out, const fs_model *m, const fs_seq_config *cfg, fs_error *err) {
    *out = NULL;
    int rc = check_decodable(m, err);
    if (rc) return rc;
    fs_seq *s = calloc(1, sizeof *s);
    if (!s) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    s->m = m;
    s->B = cfg->B ? cfg->B : 1;
    s->bounded = cfg->context == 0 && fs_model_cache_bounded(m);
    s->context = s->bounded ? SIZE_MAX : cfg->context ? cfg->context : m->cfg.max_seq;
    s->threads = cfg->threads;
    s->sampler = cfg->sampler;
    s->rows = calloc(s->B, sizeof *s->rows);
    s->bseq = calloc(s->B, sizeof *s->bseq);
    s->rng = calloc(s->B, sizeof *s->rng);
    s->work = fs_alloc(2 * m->cfg.vocab * sizeof(float) + 16);
    if (!s->rows || !s->bseq || !s->rng || !s->work) rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
    if (!rc) rc = fs_batch_create(&s->batch, m, s->B, s->B, err);
    if (!rc) rc = fs_step_weights_create(&s->sw, m, cfg->weights, s->B, s->B, err);
    if (!rc) rc = make_pool(s, err);
    if (!rc) rc = make_rows(s, err);
    if (rc) {
        fs_seq_destroy(s);
        return rc;
    }
    for (size_t r = 0; r < s->B; r++) fs_seq_seed_row(s, r, r ? fs_rng_mix(s->sampler.seed, r) : s->sampler.seed);
    *out = s;
    return FS_OK;
}

void fs_seq_destroy(fs_seq *s) {
    if (!s) return;
    for (size_t b = 0; s->rows && b < s->B; b++) {
        seq_row *r = &s->rows[b];
        for (size_t l = 0; r->caches && l < s->m->L; l++) fs_free(r->caches[l]);
        free(r->caches);
        free(r->tokens);
        free(r->blocks);
    }
    free(s->rows);
    fs_kv_pool_destroy(s->pool);
    fs_batch_destroy(s->batch);
    fs_step_weights_destroy(s->sw);
    free(s->bseq);
    free(s->keep);
    free(s->rng);
    fs_free(s->work);
    free(s);
}

const fs_model *fs_seq_model(const fs_seq *s) { return s->m; }
size_t fs_seq_rows(const fs_seq *s) { return s->B; }
size_t fs_seq_pos(const fs_seq *s) { return s->pos; }
size_t fs_seq_context(const fs_seq *s) { return s->context; }
size_t fs_seq_cache_bytes(const fs_seq *s) { return s->cache_bytes; }

void fs_seq_seed_row(fs_seq *s, size_t r, uint64_t seed) { fs_rng_seed(&s->rng[r], seed); }

int32_t fs_seq_sample(fs_seq *s, size_t r, const float *logits) {
    return fs_sample_token(logits, s->m->cfg.vocab, &s->sampler, s->rng[r].s, s->work);
}

/* A bounded sequence streams on: its history (token ids, 4 bytes each, and
 * one table entry per block) grows; its keys and values do not. */
static int grow_rows(fs_seq *s, fs_error *err) {
    if (s->pos < s->cap) return FS_OK;
    size_t cap = 2 * s->cap, nb = (cap + SEQ_KV_BLOCK - 1) / SEQ_KV_BLOCK;
    for (size_t b = 0; b < s->B; b++) {
        seq_row *r = &s->rows[b];
        int32_t *t = realloc(r->tokens, cap * sizeof *t);
        if (t) r->tokens = t;
        int32_t *k = realloc(r->blocks, nb * sizeof *k);
        if (k) r->blocks = k;
        if (!t || !k) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for a sequence of %zu tokens", cap);
    }
    uint8_t *keep = realloc(s->keep, nb);
    if (!keep) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for a sequence of %zu tokens", cap);
    s->keep = keep;
    s->cap = cap;
    return FS_OK;
}

/* Each row's block for the new position (a fresh one at a block's start). */
static int place_rows(fs_seq *s, const int32_t *tokens, fs_error *err) {
    for (size_t b = 0; b < s->B; b++) {
        seq_row *r = &s->rows[b];
        r->tokens[s->pos] = tokens[b];
        size_t i = s->pos / SEQ_KV_BLOCK;
        if (s->pool && s->pos % SEQ_KV_BLOCK == 0 && (r->blocks[i] = fs_kv_pool_alloc(s->pool)) < 0)
            return fs_error_set(err, FS_ERR_RUNTIME, "the sequence's KV pool is full at position %zu", s->pos);
        s->bseq[b] = (fs_batch_seq){.start = s->pos, .n_new = 1, .tokens = r->tokens, .blocks = r->blocks,
                                    .n_blocks = i + 1, .caches = r->caches, .logits = 1};
    }
    return FS_OK;
}

/* Bounded caches: the blocks no later token reads go back to the pool. */
static int release_blocks(fs_seq *s, fs_error *err) {
    if (!s->bounded || !s->pool) return FS_OK;
    size_t len = s->pos + 1, nb = (len + SEQ_KV_BLOCK - 1) / SEQ_KV_BLOCK;
    for (size_t b = 0; b < s->B; b++) {
        seq_row *r = &s->rows[b];
        int rc = fs_model_paged_retain(s->m, len, r->tokens, SEQ_KV_BLOCK, s->keep, nb, err);
        if (rc) return rc;
        for (size_t i = 0; i < nb; i++)
            if (!s->keep[i] && r->blocks[i] >= 0) {
                fs_kv_pool_unref(s->pool, r->blocks[i]);
                r->blocks[i] = FS_PAGED_NO_BLOCK;
            }
    }
    return FS_OK;
}

int fs_seq_decode(fs_seq *s, const int32_t *tokens, float *logits, fs_error *err) {
    const fs_model *m = s->m;
    if (!s->bounded && s->pos >= s->context)
        return fs_error_set(err, FS_ERR_INVALID, "position %zu is past the context of %zu positions%s", s->pos,
                            s->context, s->context == m->cfg.max_seq ? " ([model] max_seq)" : "");
    for (size_t b = 0; b < s->B; b++)
        if (tokens[b] < 0 || (size_t)tokens[b] >= m->cfg.vocab)
            return fs_error_set(err, FS_ERR_INVALID, "token id %d outside the vocabulary [0, %zu)", (int)tokens[b],
                                m->cfg.vocab);
    int rc = grow_rows(s, err);
    if (!rc) rc = place_rows(s, tokens, err);
    if (rc) return rc;
    /* The sequence's own thread count, for this thread only: OpenMP keeps
     * it per thread, so the process's setting (and other threads' steps)
     * are left alone. */
    int outer = omp_get_max_threads();
    if (s->threads > 0) omp_set_num_threads(s->threads);
    rc = fs_batch_run(s->batch, m, s->sw, s->pool, s->bseq, s->B, logits, err);
    if (s->threads > 0) omp_set_num_threads(outer);
    if (rc && s->pool && s->pos % SEQ_KV_BLOCK == 0) /* the position's fresh blocks go back */
        for (size_t b = 0; b < s->B; b++) fs_kv_pool_unref(s->pool, s->rows[b].blocks[s->pos / SEQ_KV_BLOCK]);
    if (!rc) rc = release_blocks(s, err);
    if (!rc) s->pos++;
    return rc;
}
