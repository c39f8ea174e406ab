/* batch.c — the ragged step (see batch.h). */
#include "model/batch.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "compute/gemm_rows.h"
#include "compute/qweights.h"
#include "compute/ops.h"
#include "core/host.h"
#include "core/plugin_loader.h"
#include "model/model_internal.h"

#define LN_EPS 1e-5f
#define LANES 8
/* Rows x width below which a row-wise loop stays on one thread. */
#define ROWS_PARALLEL_MIN 32768

struct fs_batch {
    size_t max_rows, max_logits, C, V;
    float *x, *x2;         // (R, C): the residual stream (x2: a reversible model's second)
    float *ln;             // (R, C)
    float *qkv;            // (R, 3C)
    float *q, *k, *v, *y;  // (R, C) each: per token (H, D), as the plugins take them
    float *proj;           // (R, C)
    float *fch;            // (R, 4C)
    float *last;           // (S, C): final hidden state of each sequence asking for logits
    fs_attention_paged_seq *pseq; /* (max_rows) */
    const fs_step_weights *sw;    /* the step's weights while it runs (NULL: the model's own) */
};

enum { W_QKV, W_ATTPROJ, W_FC, W_FCPROJ, W_PER_LAYER };

/* The projections as the step reads them (batch.h): f32 packed for
 * fs_gemm_rows_nn_packed, or bf16 / q8 copies (compute/qweights.h). */
struct fs_step_weights {
    const fs_model *m;  /* the model they were made from */
    int format;
    size_t n_w;         /* L * W_PER_LAYER (+ 1: the head, compact formats only) */
    float **packed;     /* f32: (n_w) packed projections; the head reads the model's own */
    fs_qweight *w;      /* bf16, q8: (n_w) each layer's four, then the head */
    void *work;         /* the compact formats' converted rows */
    size_t max_rows, max_logits;
};

int fs_model_layer_paged(const fs_model *m, size_t l) {
    const fs_attention_slot *a = &m->attn[l];
    return (a->vt->flags & FS_ATTENTION_PAGED) &&
           FS_HAS_MEMBER(a->vt, a->vt->struct_size, fs_attention_vtable, paged_step) && a->vt->paged_step &&
           a->vt->paged_block_bytes;
}

int fs_model_paged(const fs_model *m) {
    for (size_t l = 0; l < m->L; l++)
        if (!fs_model_layer_paged(m, l)) return 0;
    return 1;
}

static int has_retain(const fs_attention_slot *a) {
    return (a->vt->flags & FS_ATTENTION_BOUNDED_CACHE) &&
           FS_HAS_MEMBER(a->vt, a->vt->struct_size, fs_attention_vtable, paged_max_blocks) && a->vt->paged_retain &&
           a->vt->paged_max_blocks;
}

int fs_model_servable(const fs_model *m, fs_error *err) {
    for (size_t l = 0; l < m->L; l++) {
        const fs_attention_slot *a = &m->attn[l];
        const fs_plugin *p = a->origin.plugin;
        const fs_plugin_descriptor *d = p->desc;
        size_t g = m->layer_ids[l];
        if (!fs_model_layer_paged(m, l))
            return fs_error_set(err, FS_ERR_UNSUPPORTED,
                                "%s: layer %zu: attention plugin '%s' (ABI %u.%u, %s) cannot serve: it has no paged KV "
                                "cache step (FS_ATTENTION_PAGED with paged_block_bytes and paged_step, ABI 1.2); "
                                "rebuild it against SDK 1.2 with them, or use dense, longformer or lsh",
                                fs_config_where(a->origin.config, "plugin"), g, d->name,
                                FS_ABI_VERSION_MAJOR_OF(d->abi_version), FS_ABI_VERSION_MINOR_OF(d->abi_version),
                                p->path);
        if ((a->vt->flags & FS_ATTENTION_BOUNDED_CACHE) && !has_retain(a))
            return fs_error_set(err, FS_ERR_UNSUPPORTED,
                                "layer %zu: attention plugin '%s' keeps a bounded cache but has no paged_retain: it "
                                "cannot serve",
                                g, d->name);
        if (!a->origin.causal)
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: layer %zu is bidirectional; serving generates causally: set causal = true",
                                fs_config_where(a->origin.config, "causal"), g);
    }
    return FS_OK;
}

size_t fs_model_paged_max_blocks(const fs_model *m, size_t kv_block) {
    size_t sum = 0, first = 0;
    int same = 1;
    for (size_t l = 0; l < m->L; l++) {
        const fs_attention_slot *a = &m->attn[l];
        if (!fs_model_layer_paged(m, l) || !has_retain(a)) return 0;
        size_t n;
        ATTN_CALL(m, l, "paged_max_blocks", n = a->vt->paged_max_blocks(a->self, kv_block));
        if (l == 0) first = n;
        same &= n == first && a->vt == m->attn[0].vt;
        sum += n;
    }
    return same ? first : sum;
}

int fs_model_paged_retain(const fs_model *m, size_t len, const int32_t *tokens, size_t kv_block, uint8_t *keep,
                          size_t n_blocks, fs_error *err) {
    memset(keep, 0, n_blocks);
    for (size_t l = 0; l < m->L; l++) {
        const fs_attention_slot *a = &m->attn[l];
        if (!has_retain(a)) {
            memset(keep, 1, n_blocks);
            return FS_OK;
        }
        fs_attention_retain_args ra = {.struct_size = sizeof ra, .len = len, .tokens = tokens, .kv_block = kv_block,
                                       .n_blocks = n_blocks, .keep = keep};
        fs_error perr = {0};
        int rc;
        ATTN_CALL(m, l, "paged_retain", rc = a->vt->paged_retain(a->self, &ra, &perr));
        if (rc) return fs_error_set(err, rc, "layer %zu: %s", l, perr.message);
    }
    return FS_OK;
}

size_t fs_model_embed_position(const fs_model *m, size_t pos) {
    if (pos < m->cfg.max_seq) return pos;
    size_t h = m->cfg.max_seq / 2;
    return h + (pos - h) % (m->cfg.max_seq - h);
}

int fs_batch_create(fs_batch **out, const fs_model *m, size_t max_rows, size_t max_logits, fs_error *err) {
    *out = NULL;
    if (m->L != m->cfg.n_layer || m->tp_size != 1 || !m->has_embed || !m->has_head)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "generation needs the whole model in one process (no tensor or "
                            "pipeline split): load the checkpoint without [parallel]");
    fs_batch *b = calloc(1, sizeof *b);
    if (!b) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    size_t R = max_rows ? max_rows : 1, S = max_logits ? max_logits : 1, C = m->cfg.n_embd;
    b->max_rows = R;
    b->max_logits = S;
    b->C = C;
    b->V = m->cfg.vocab;
    float **bufs[] = {&b->x, &b->x2, &b->ln, &b->qkv, &b->q, &b->k, &b->v, &b->y, &b->proj, &b->fch, &b->last};
    size_t widths[] = {C, m->cfg.reversible ? C : 1, C, 3 * C, C, C, C, C, C, 4 * C, C};
    int ok = 1;
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++)
        ok &= (*bufs[i] = fs_alloc((bufs[i] == &b->last ? S : R) * widths[i] * sizeof(float))) != NULL;
    ok &= (b->pseq = calloc(R, sizeof *b->pseq)) != NULL;
    if (!ok) {
        fs_batch_destroy(b);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory for a step of %zu tokens", R);
    }
    *out = b;
    return FS_OK;
}

void fs_batch_destroy(fs_batch *b) {
    if (!b) return;
    float *bufs[] = {b->x, b->x2, b->ln, b->qkv, b->q, b->k, b->v, b->y, b->proj, b->fch, b->last};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) fs_free(bufs[i]);
    free(b->pseq);
    free(b);
}

size_t fs_batch_max_rows(const fs_batch *b) { return b->max_rows; }

/* Layer l's four projections in Conv1D's (in, out) layout. */
typedef struct projection { const float *w; size_t in, out; } projection;

static projection layer_projection(const fs_model *m, size_t l, size_t k) {
    const fs_layer_params *p = &m->lp[l];
    size_t C = m->cfg.n_embd;
    const projection mat[W_PER_LAYER] = {[W_QKV] = {p->qkvw, C, 3 * C}, [W_ATTPROJ] = {p->attprojw, C, C},
                                         [W_FC] = {p->fcw, C, 4 * C}, [W_FCPROJ] = {p->fcprojw, 4 * C, C}};
    return mat[k];
}

static int pack_f32(fs_step_weights *sw, fs_error *err) {
    if (!(sw->packed = calloc(sw->n_w, sizeof *sw->packed)))
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
    for (size_t i = 0; i < sw->n_w; i++) {
        projection p = layer_projection(sw->m, i / W_PER_LAYER, i % W_PER_LAYER);
        if (!(sw->packed[i] = fs_alloc(fs_gemm_rows_packed_floats(p.in, p.out) * sizeof(float))))
            return fs_error_set(err, FS_ERR_NOMEM, "out of memory for the packed weights (%zu x %zu)", p.in, p.out);
        fs_gemm_rows_pack(sw->packed[i], p.w, p.out, p.in, p.out);
    }
    return FS_OK;
}

static int copy_compact(fs_step_weights *sw, fs_error *err) {
    const fs_model *m = sw->m;
    size_t C = m->cfg.n_embd, work = 0;
    if (!(sw->w = calloc(sw->n_w, sizeof *sw->w))) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
    for (size_t i = 0; i + 1 < sw->n_w; i++) {
        projection p = layer_projection(m, i / W_PER_LAYER, i % W_PER_LAYER); /* transposed sources */
        int rc = fs_qweight_create(&sw->w[i], (fs_wformat)sw->format, p.w, p.out, 1, p.out, p.in, err);
        if (rc) return rc;
        size_t need = fs_qweight_work_bytes((fs_wformat)sw->format, sw->max_rows, p.in);
        work = need > work ? need : work;
    }
    int rc = fs_qweight_create(&sw->w[sw->n_w - 1], (fs_wformat)sw->format, m->head, C, 0, m->cfg.vocab, C, err);
    if (rc) return rc;
    size_t need = fs_qweight_work_bytes((fs_wformat)sw->format, sw->max_logits, C);
    sw->work = fs_alloc((need > work ? need : work) + 64);
    return sw->work ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
}

int fs_step_weights_create(fs_step_weights **out, const fs_model *m, int format, size_t max_rows, size_t max_logits,
                           fs_error *err) {
    *out = NULL;
    if (format != FS_WEIGHTS_F32 && format != FS_WEIGHTS_BF16 && format != FS_WEIGHTS_Q8)
        return fs_error_set(err, FS_ERR_INVALID, "weights format %d: f32, bf16 or q8", format);
    fs_step_weights *sw = calloc(1, sizeof *sw);
    if (!sw) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
    *sw = (fs_step_weights){.m = m, .format = format, .max_rows = max_rows ? max_rows : 1,
                            .max_logits = max_logits ? max_logits : 1,
                            .n_w = m->L * W_PER_LAYER + (format != FS_WEIGHTS_F32)};
    int rc = format == FS_WEIGHTS_F32 ? pack_f32(sw, err) : copy_compact(sw, err);
    if (rc) {
        fs_step_weights_destroy(sw);
        return rc;
    }
    *out = sw;
    return FS_OK;
}

void fs_step_weights_destroy(fs_step_weights *sw) {
    if (!sw) return;
    for (size_t i = 0; sw->packed && i < sw->n_w; i++) fs_free(sw->packed[i]);
    for (size_t i = 0; sw->w && i < sw->n_w; i++) fs_qweight_destroy(&sw->w[i]);
    free(sw->packed);
    free(sw->w);
    fs_free(sw->work);
    free(sw);
}

/* ---- row-wise kernels: a row's numbers never depend on the others ---- */

/* The one place the step multiplies by a weight: y (n, out) = x (n, in) W
 * + bias, W in Conv1D's (in, out) layout, each element in a fixed order. */
static void project(const fs_batch *b, size_t widx, float *y, const float *x, const float *w, const float *bias,
                    size_t n, size_t in, size_t out) {
    const fs_step_weights *sw = b->sw;
    if (sw && sw->w) /* a row's products in a copy depend on that row only too (qweights.h) */
        fs_qweight_matvec(&sw->w[widx], y, x, bias, n, sw->work, omp_in_parallel() ? 1 : omp_get_max_threads());
    else if (sw)
        fs_gemm_rows_nn_packed(y, out, x, in, sw->packed[widx], bias, n, out, in);
    else
        fs_gemm_rows_nn(y, out, x, in, w, out, bias, n, out, in);
}

static float sum_lanes(const float *x, size_t C) {
    float l[LANES] = {0};
    size_t c8 = C - C % LANES, i = 0;
    for (; i < c8; i += LANES)
        for (size_t j = 0; j < LANES; j++) l[j] += x[i + j];
    for (; i < C; i++) l[i - c8] += x[i];
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static float sq_dev_lanes(const float *x, float m, size_t C) {
    float l[LANES] = {0};
    size_t c8 = C - C % LANES, i = 0;
    for (; i < c8; i += LANES)
        for (size_t j = 0; j < LANES; j++) l[j] = fmaf(x[i + j] - m, x[i + j] - m, l[j]);
    for (; i < C; i++) l[i - c8] = fmaf(x[i] - m, x[i] - m, l[i - c8]);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// out, inp (n, C): LayerNorm of each row, eps 1e-5
static void layernorm_rows(float *out, const float *inp, const float *w, const float *bias, size_t n, size_t C) {
#pragma omp parallel for schedule(static) if (n * C >= ROWS_PARALLEL_MIN)
    for (size_t r = 0; r < n; r++) {
        const float *x = inp + r * C;
        float m = sum_lanes(x, C) / (float)C;
        float s = 1.0f / sqrtf(sq_dev_lanes(x, m, C) / (float)C + LN_EPS);
        float *o = out + r * C;
        for (size_t i = 0; i < C; i++) o[i] = fmaf((x[i] - m) * s, w[i], bias[i]);
    }
}

static void gelu_rows(float *x, size_t n, size_t F) {
#pragma omp parallel for schedule(static) if (n * F >= ROWS_PARALLEL_MIN)
    for (size_t r = 0; r < n; r++) gelu_forward(x + r * F, x + r * F, F);
}

/* x (rows, C) = wte[token] + wpe[position] of each new token. */
static void embed(float *x, const fs_model *m, const fs_batch_seq *seqs, size_t n) {
    size_t C = m->cfg.n_embd, row = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < seqs[i].n_new; t++, row++) {
            size_t p = seqs[i].start + t;
            const float *e = m->wte + (size_t)seqs[i].tokens[p] * C, *w = m->wpe + fs_model_embed_position(m, p) * C;
            for (size_t c = 0; c < C; c++) x[row * C + c] = e[c] + w[c];
        }
}

/* ---- attention: the layer's plugin, per sequence ---- */

static int attend_paged(fs_batch *b, const fs_model *m, size_t l, fs_kv_pool *pool, const fs_batch_seq *seqs,
                        size_t n, size_t rows, fs_error *err) {
    const fs_attention_slot *a = &m->attn[l];
    size_t C = m->cfg.n_embd, H = m->cfg.n_head, D = C / H, row = 0;
    if (!pool) return fs_error_set(err, FS_ERR_INVALID, "layer %zu: a paged layer needs a KV pool", l);
    for (size_t i = 0; i < n; i++) {
        b->pseq[i] = (fs_attention_paged_seq){.start = seqs[i].start, .n_new = seqs[i].n_new, .row = row,
                                              .blocks = seqs[i].blocks, .n_blocks = seqs[i].n_blocks,
                                              .tokens = seqs[i].tokens};
        row += seqs[i].n_new;
    }
    fs_attention_paged_args pa;
    memset(&pa, 0, sizeof pa);
    pa.struct_size = sizeof pa;
    pa.n_seqs = n;
    pa.seqs = b->pseq;
    pa.n_rows = rows;
    pa.q = fs_tensor_cpu_f32(b->q, 3, rows, H, D, 0);
    pa.k = fs_tensor_cpu_f32(b->k, 3, rows, H, D, 0);
    pa.v = fs_tensor_cpu_f32(b->v, 3, rows, H, D, 0);
    pa.out = fs_tensor_cpu_f32(b->y, 3, rows, H, D, 0);
    if (a->vt->flags & FS_ATTENTION_USES_INPUT) pa.x = fs_tensor_cpu_f32(b->ln, 2, rows, C, 0, 0);
    pa.pool = fs_kv_pool_layer(pool, l);
    pa.kv_block = fs_kv_pool_kv_block(pool);
    pa.block_bytes = fs_kv_pool_layer_bytes(pool, l);
    fs_error perr = {0};
    int rc;
    ATTN_CALL(m, l, "paged_step", rc = a->vt->paged_step(a->self, &pa, &perr));
    if (rc) return fs_error_set(err, rc, "layer %zu: %s", l, perr.message);
    return FS_OK;
}

/* A plugin without the paged step: its decode step, token by token, over
 * each sequence's own cache (one row). */
static int attend_decode(fs_batch *b, const fs_model *m, size_t l, const fs_batch_seq *seqs, size_t n,
                         fs_error *err) {
    const fs_attention_slot *a = &m->attn[l];
    size_t C = m->cfg.n_embd, H = m->cfg.n_head, D = C / H, row = 0;
    for (size_t i = 0; i < n; i++) {
        if (!seqs[i].caches)
            return fs_error_set(err, FS_ERR_UNSUPPORTED,
                                "layer %zu: the attention plugin has no paged step (ABI 1.2), and the sequence no "
                                "decode cache of its own",
                                l);
        for (size_t t = 0; t < seqs[i].n_new; t++, row++) {
            fs_attention_decode_args da;
            memset(&da, 0, sizeof da);
            da.struct_size = sizeof da;
            da.B = 1;
            da.pos = seqs[i].start + t;
            da.q = fs_bhtd(b->q + row * C, 1, H, 1, D);
            da.k = fs_bhtd(b->k + row * C, 1, H, 1, D);
            da.v = fs_bhtd(b->v + row * C, 1, H, 1, D);
            da.out = fs_bhtd(b->y + row * C, 1, H, 1, D);
            da.token = seqs[i].tokens[da.pos];
            if (a->vt->flags & FS_ATTENTION_USES_INPUT) da.x = fs_tensor_cpu_f32(b->ln + row * C, 3, 1, 1, C, 0);
            int rc;
            ATTN_CALL(m, l, "decode", rc = a->vt->decode(a->self, seqs[i].caches[l], &da, err));
            if (rc) return rc;
        }
    }
    return FS_OK;
}

/* y = Attention(LN1(in)) of layer l for every row. */
static int attention_rows(fs_batch *b, const fs_model *m, size_t l, fs_kv_pool *pool, const fs_batch_seq *seqs,
                          size_t n, size_t rows, const float *in, fs_error *err) {
    const fs_layer_params *p = &m->lp[l];
    size_t C = m->cfg.n_embd;
    layernorm_rows(b->ln, in, p->ln1w, p->ln1b, rows, C);
    project(b, l * W_PER_LAYER + W_QKV, b->qkv, b->ln, p->qkvw, p->qkvb, rows, C, 3 * C);
    for (size_t r = 0; r < rows; r++) { /* (H, D) per token is the qkv row's own order */
        memcpy(b->q + r * C, b->qkv + r * 3 * C, C * sizeof(float));
        memcpy(b->k + r * C, b->qkv + r * 3 * C + C, C * sizeof(float));
        memcpy(b->v + r * C, b->qkv + r * 3 * C + 2 * C, C * sizeof(float));
    }
    int rc = fs_model_layer_paged(m, l) ? attend_paged(b, m, l, pool, seqs, n, rows, err)
                                        : attend_decode(b, m, l, seqs, n, err);
    if (rc) return rc;
    project(b, l * W_PER_LAYER + W_ATTPROJ, b->proj, b->y, p->attprojw, p->attprojb, rows, C, C);
    return FS_OK;
}

/* proj = MLP(LN2(in)) of layer l. */
static void mlp_rows(fs_batch *b, const fs_model *m, size_t l, size_t rows, const float *in) {
    const fs_layer_params *p = &m->lp[l];
    size_t C = m->cfg.n_embd;
    layernorm_rows(b->ln, in, p->ln2w, p->ln2b, rows, C);
    project(b, l * W_PER_LAYER + W_FC, b->fch, b->ln, p->fcw, p->fcb, rows, C, 4 * C);
    gelu_rows(b->fch, rows, 4 * C);
    project(b, l * W_PER_LAYER + W_FCPROJ, b->proj, b->fch, p->fcprojw, p->fcprojb, rows, 4 * C, C);
}

int fs_batch_check(const fs_batch_seq *seqs, size_t n, size_t vocab, size_t max_rows, size_t max_logits,
                   size_t *rows, size_t *n_logits, fs_error *err) {
    *rows = *n_logits = 0;
    for (size_t i = 0; i < n; i++) {
        if (seqs[i].n_new == 0) return fs_error_set(err, FS_ERR_INVALID, "step sequence %zu: no new tokens", i);
        for (size_t t = seqs[i].start; t < seqs[i].start + seqs[i].n_new; t++)
            if (seqs[i].tokens[t] < 0 || (size_t)seqs[i].tokens[t] >= vocab)
                return fs_error_set(err, FS_ERR_INVALID, "token id %d outside the vocabulary [0, %zu)",
                                    (int)seqs[i].tokens[t], vocab);
        *rows += seqs[i].n_new;
        *n_logits += fs_batch_logit_rows(&seqs[i]);
    }
    if (*rows > max_rows || *n_logits > max_logits)
        return fs_error_set(err, FS_ERR_INVALID, "step of %zu tokens and %zu logits: room for %zu and %zu", *rows,
                            *n_logits, max_rows, max_logits);
    return FS_OK;
}

static int check_step(const fs_batch *b, const fs_model *m, const fs_step_weights *sw, const fs_batch_seq *seqs,
                      size_t n, size_t *rows, size_t *n_logits, fs_error *err) {
    if (sw && sw->m != m) return fs_error_set(err, FS_ERR_INVALID, "step weights made from another model");
    int rc = fs_batch_check(seqs, n, m->cfg.vocab, b->max_rows, b->max_logits, rows, n_logits, err);
    if (rc) return rc;
    if (sw && sw->w && (*rows > sw->max_rows || *n_logits > sw->max_logits))
        return fs_error_set(err, FS_ERR_INVALID, "step of %zu tokens and %zu logits: the weights' work has room for "
                            "%zu and %zu", *rows, *n_logits, sw->max_rows, sw->max_logits);
    return FS_OK;
}

int fs_batch_run(fs_batch *b, const fs_model *m, const fs_step_weights *sw, fs_kv_pool *pool, const fs_batch_seq *seqs,
                 size_t n, float *logits, fs_error *err) {
    size_t rows, n_logits, C = m->cfg.n_embd;
    int rc = check_step(b, m, sw, seqs, n, &rows, &n_logits, err);
    if (rc || rows == 0) return rc;
    b->sw = sw;
    embed(b->x, m, seqs, n);
    float *x1 = b->x, *x2 = m->cfg.reversible ? b->x2 : b->x;
    if (m->cfg.reversible) memcpy(x2, x1, rows * C * sizeof(float));
    /* standard: x += Attention(x); x += MLP(x). Reversible: y1 = x1 +
     * Attention(x2); y2 = x2 + MLP(y1) (model.h). */
    for (size_t l = 0; l < m->L; l++) {
        if ((rc = attention_rows(b, m, l, pool, seqs, n, rows, x2, err))) return rc;
        add_inplace(x1, b->proj, rows * C);
        mlp_rows(b, m, l, rows, x1);
        add_inplace(x2, b->proj, rows * C);
    }
    /* the last new row of each sequence that asks (every new row with
     * FS_BATCH_LOGITS_ALL), through ln_f and the head: a row's logits do
     * not depend on which other rows go with it */
    size_t row = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        row += seqs[i].n_new;
        for (size_t r = row - fs_batch_logit_rows(&seqs[i]); r < row; r++) {
            float *dst = b->last + k++ * C;
            const float *a = x1 + r * C, *c = x2 + r * C;
            for (size_t j = 0; j < C; j++) dst[j] = m->cfg.reversible ? 0.5f * (a[j] + c[j]) : a[j];
        }
    }
    layernorm_rows(b->ln, b->last, m->lnfw, m->lnfb, n_logits, C);
    if (sw && sw->w)
        fs_qweight_matvec(&sw->w[sw->n_w - 1], logits, b->ln, NULL, n_logits, sw->work,
                          omp_in_parallel() ? 1 : omp_get_max_threads());
    else
        fs_gemm_rows_nt(logits, m->cfg.vocab, b->ln, C, m->head, C, NULL, n_logits, m->cfg.vocab, C);
    return FS_OK;
}
