/* decode.c — generation: per-sequence state (seq.h) and the one-token
 * decode step over the model's shared weights. */
#include "model/seq.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "core/rng.h"
#include "compute/blas.h"
#include "compute/ops.h"
#include "core/threads.h"
#include "model/model_internal.h"
#include "compute/qweights.h"

struct fs_seq {
    const fs_model *m; /* borrowed: outlives the sequence */
    size_t B, pos, context;
    int bounded, threads, weights;
    void **cache;      /* (L) each layer's plugin cache */
    size_t *cache_len; /* (L) its bytes */
    float *block;      /* decode buffers, B rows: x, ln, y, proj (C each), qkv (3C), fch and fch_gelu (4C each) */
    fs_sampler sampler;
    fs_rng *rng;       /* (B) */
    float *work;       /* 2 V floats of sampling scratch */
    /* The projections as decoding reads them ([generate] weights; f32
     * borrows the model's own): per layer qkv, attention proj, fc, mlp
     * proj, then the head (V x C: wte, or lm_head when untied). */
    fs_qweight *w;
    void *mv_work;     /* the kernels' scratch for the converted inputs */
};

enum { W_QKV, W_ATTPROJ, W_FC, W_FCPROJ, W_PER_LAYER };

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
        if (!s->vt->decode || !(s->vt->flags & FS_ATTENTION_DECODE))
            return fs_error_set(err, FS_ERR_UNSUPPORTED, "layer %zu: the attention plugin has no decode step", l);
    }
    return FS_OK;
}

/* The decoding copies of every projection in the sequence's format, and
 * the scratch their products need for B rows (compute/qweights.h). */
static int make_weights(fs_seq *s, fs_error *err) {
    const fs_model *m = s->m;
    size_t C = m->cfg.n_embd, V = m->cfg.vocab, n = m->L * W_PER_LAYER + 1, work = 0;
    s->w = calloc(n, sizeof *s->w);
    if (!s->w) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
    for (size_t l = 0; l < m->L; l++) {
        const fs_layer_params *p = &m->lp[l];
        /* Conv1D (in, out): transposed sources */
        const struct { const float *w; size_t in, out; } mat[W_PER_LAYER] = {
            [W_QKV] = {p->qkvw, C, 3 * C}, [W_ATTPROJ] = {p->attprojw, C, C},
            [W_FC] = {p->fcw, C, 4 * C}, [W_FCPROJ] = {p->fcprojw, 4 * C, C}};
        for (size_t k = 0; k < W_PER_LAYER; k++) {
            int rc = fs_qweight_create(&s->w[l * W_PER_LAYER + k], (fs_wformat)s->weights, mat[k].w, mat[k].out, 1,
                                       mat[k].out, mat[k].in, err);
            if (rc) return rc;
            size_t b = fs_qweight_work_bytes((fs_wformat)s->weights, s->B, mat[k].in);
            work = b > work ? b : work;
        }
    }
    int rc = fs_qweight_create(&s->w[n - 1], (fs_wformat)s->weights, m->head, C, 0, V, C, err);
    if (rc) return rc;
    size_t b = fs_qweight_work_bytes((fs_wformat)s->weights, s->B, C);
    work = b > work ? b : work;
    s->mv_work = fs_alloc(work ? work : 64);
    return s->mv_work ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
}

static int alloc_caches(fs_seq *s, fs_error *err) {
    const fs_model *m = s->m;
    size_t plugin_context = s->bounded ? 0 : s->context;
    for (size_t l = 0; l < m->L; l++) {
        const fs_attention_slot *a = &m->attn[l];
        size_t bytes = a->vt->cache_bytes(a->self, s->B, plugin_context);
        s->cache[l] = fs_alloc(bytes);
        s->cache_len[l] = bytes;
        if (!s->cache[l])
            return fs_error_set(err, FS_ERR_NOMEM, "layer %zu: out of memory for a %zu-byte KV cache", l, bytes);
        int rc = a->vt->cache_reset(a->self, s->cache[l], s->B, plugin_context, err);
        if (rc) return rc;
    }
    return FS_OK;
}

int fs_seq_create(fs_seq **out, const fs_model *m, const fs_seq_config *cfg, fs_error *err) {
    *out = NULL;
    int rc = check_decodable(m, err);
    if (rc) return rc;
    fs_seq *s = calloc(1, sizeof *s);
    if (!s) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    size_t C = m->cfg.n_embd, V = m->cfg.vocab;
    s->m = m;
    s->B = cfg->B ? cfg->B : 1;
    s->bounded = cfg->context == 0 && fs_model_cache_bounded(m);
    s->context = s->bounded ? SIZE_MAX : cfg->context ? cfg->context : m->cfg.max_seq;
    s->threads = cfg->threads;
    s->sampler = cfg->sampler;
    s->weights = cfg->weights;
    s->cache = calloc(m->L, sizeof *s->cache);
    s->cache_len = calloc(m->L, sizeof *s->cache_len);
    s->block = fs_alloc(s->B * 15 * C * sizeof(float));
    s->rng = calloc(s->B, sizeof *s->rng);
    s->work = fs_alloc(2 * V * sizeof(float) + 16);
    if (!s->cache || !s->cache_len || !s->block || !s->rng || !s->work)
        rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
    if (!rc) rc = alloc_caches(s, err);
    if (!rc) rc = make_weights(s, err);
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
    for (size_t l = 0; s->cache && l < s->m->L; l++) fs_free(s->cache[l]);
    free(s->cache);
    free(s->cache_len);
    fs_free(s->block);
    free(s->rng);
    fs_free(s->work);
    for (size_t i = 0; s->w && i < s->m->L * W_PER_LAYER + 1; i++) fs_qweight_destroy(&s->w[i]);
    free(s->w);
    fs_free(s->mv_work);
    free(s);
}

const fs_model *fs_seq_model(const fs_seq *s) { return s->m; }
size_t fs_seq_rows(const fs_seq *s) { return s->B; }
size_t fs_seq_pos(const fs_seq *s) { return s->pos; }
size_t fs_seq_context(const fs_seq *s) { return s->context; }

size_t fs_seq_cache_bytes(const fs_seq *s) {
    size_t total = 0;
    for (size_t l = 0; l < s->m->L; l++) total += s->cache_len[l];
    return total;
}

void fs_seq_seed_row(fs_seq *s, size_t r, uint64_t seed) { fs_rng_seed(&s->rng[r], seed); }

int32_t fs_seq_sample(fs_seq *s, size_t r, const float *logits) {
    return fs_sample_token(logits, s->m->cfg.vocab, &s->sampler, s->rng[r].s, s->work);
}

/* The row of wpe position pos embeds with: past max_seq (bounded caches
 * only) it cycles through the table's second half (attention.h). */
static size_t embed_position(const fs_model *m, size_t pos) {
    if (pos < m->cfg.max_seq) return pos;
    size_t h = m->cfg.max_seq / 2;
    return h + (pos - h) % (m->cfg.max_seq - h);
}

/* Layer l's attention for the B new tokens: qkv (B,3C) -> y (B,C). */
static int decode_attention(const fs_seq *s, size_t l, const int32_t *tokens, const float *ln, float *qkv,
                            float *scratch, float *y, fs_error *err) {
    const fs_model *m = s->m;
    const fs_attention_slot *a = &m->attn[l];
    size_t B = s->B, C = m->cfg.n_embd, H = m->cfg.n_head, D = C / H;
    float *q = scratch, *k = q + B * C, *v = k + B * C, *out = v + B * C;
    attention_split_heads(q, k, v, qkv, B, 1, H, D);
    fs_attention_decode_args da;
    memset(&da, 0, sizeof da);
    da.struct_size = sizeof da;
    da.B = B;
    da.pos = s->pos;
    da.q = fs_bhtd(q, B, H, 1, D);
    da.k = fs_bhtd(k, B, H, 1, D);
    da.v = fs_bhtd(v, B, H, 1, D);
    da.out = fs_bhtd(out, B, H, 1, D);
    da.token = B == 1 ? tokens[0] : -1;
    if (a->vt->flags & FS_ATTENTION_USES_INPUT) da.x = fs_tensor_cpu_f32((float *)ln, 3, B, 1, C, 0);
    int rc = a->vt->decode(a->self, s->cache[l], &da, err);
    if (!rc) attention_merge_heads(y, out, B, 1, H, D);
    return rc;
}

/* The step itself: the projections through the sequence's weight copies
 * (matrix-vector kernels, each weight read once for the B rows) on
 * `threads` threads, the rest of the ops on the calling thread's count. */
static int decode_tokens(fs_seq *s, const int32_t *tokens, float *logits, int threads, fs_error *err) {
    const fs_model *m = s->m;
    size_t C = m->cfg.n_embd, B = s->B;
    float *x = s->block, *ln = x + B * C, *y = ln + B * C, *proj = y + B * C, *qkv = proj + B * C;
    float *fch = qkv + B * 3 * C, *fchg = fch + B * 4 * C;
    encoder_forward(x, tokens, m->wte, m->wpe, B, 1, C, embed_position(m, s->pos));
    for (size_t l = 0; l < m->L; l++) {
        const fs_layer_params *p = &m->lp[l];
        const fs_qweight *w = s->w + l * W_PER_LAYER;
        layernorm_forward(ln, NULL, NULL, x, p->ln1w, p->ln1b, B, C);
        fs_qweight_matvec(&w[W_QKV], qkv, ln, p->qkvb, B, s->mv_work, threads);
        int rc = decode_attention(s, l, tokens, ln, qkv, fch, y, err); /* fch is free until the MLP */
        if (rc) return rc;
        fs_qweight_matvec(&w[W_ATTPROJ], proj, y, p->attprojb, B, s->mv_work, threads);
        add_inplace(x, proj, B * C);
        layernorm_forward(ln, NULL, NULL, x, p->ln2w, p->ln2b, B, C);
        fs_qweight_matvec(&w[W_FC], fch, ln, p->fcb, B, s->mv_work, threads);
        gelu_forward(fchg, fch, B * 4 * C);
        fs_qweight_matvec(&w[W_FCPROJ], proj, fchg, p->fcprojb, B, s->mv_work, threads);
        add_inplace(x, proj, B * C);
    }
    layernorm_forward(ln, NULL, NULL, x, m->lnfw, m->lnfb, B, C);
    fs_qweight_matvec(&s->w[m->L * W_PER_LAYER], logits, ln, NULL, B, s->mv_work, threads);
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
    /* The sequence's own thread count, for this thread only: OpenMP keeps
     * it per thread and the OpenMP build of OpenBLAS follows it, so the
     * process's setting (and other threads' steps) are left alone. */
    int outer = omp_get_max_threads();
    if (s->threads > 0) omp_set_num_threads(s->threads);
    /* the kernels take the count explicitly: the sequence's, or the
     * process's adaptive one (core/threads.h), looked at again now */
    int threads = s->threads > 0 ? s->threads : omp_in_parallel() ? 1 : fs_threads_adapt();
    int rc = decode_tokens(s, tokens, logits, threads, err);
    if (s->threads > 0) omp_set_num_threads(outer);
    if (!rc) s->pos++;
    return rc;
}
