/* model.c — GPT-2 forward, backward and decode over the attention plugins. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "host.h"
#include "ops.h"
#include "rng.h"

static void add_view(fs_model *m, size_t *off, const char *name, int ndim, size_t d0, size_t d1, int decay) {
    fs_param_view *v = &m->views[m->n_views++];
    snprintf(v->name, sizeof v->name, "%s", name);
    v->ndim = ndim;
    v->shape[0] = d0;
    v->shape[1] = ndim > 1 ? d1 : 1;
    v->numel = d0 * (ndim > 1 ? d1 : 1);
    v->offset = *off;
    v->weight_decay = decay;
    *off += v->numel;
}

/* Builds the name table and the total size; the order is the block layout. */
static void layout(fs_model *m) {
    size_t V = m->cfg.vocab, C = m->cfg.n_embd, L = m->cfg.n_layer, off = 0;
    char name[96];
    m->n_views = 0;
    add_view(m, &off, "transformer.wte.weight", 2, V, C, 1);
    add_view(m, &off, "transformer.wpe.weight", 2, m->cfg.max_seq, C, 1);
    for (size_t l = 0; l < L; l++) {
        static const struct {
            const char *suffix;
            int ndim, decay;
            size_t r, c; /* in units of C; c == 0 means 1-D */
        } t[FS_LAYER_TENSORS] = {
            {"ln_1.weight", 1, 0, 1, 0},        {"ln_1.bias", 1, 0, 1, 0},
            {"attn.c_attn.weight", 2, 1, 1, 3}, {"attn.c_attn.bias", 1, 0, 3, 0},
            {"attn.c_proj.weight", 2, 1, 1, 1}, {"attn.c_proj.bias", 1, 0, 1, 0},
            {"ln_2.weight", 1, 0, 1, 0},        {"ln_2.bias", 1, 0, 1, 0},
            {"mlp.c_fc.weight", 2, 1, 1, 4},    {"mlp.c_fc.bias", 1, 0, 4, 0},
            {"mlp.c_proj.weight", 2, 1, 4, 1},  {"mlp.c_proj.bias", 1, 0, 1, 0},
        };
        for (int i = 0; i < FS_LAYER_TENSORS; i++) {
            snprintf(name, sizeof name, "transformer.h.%zu.%s", l, t[i].suffix);
            add_view(m, &off, name, t[i].ndim, t[i].r * C, t[i].c * C, t[i].decay);
        }
    }
    add_view(m, &off, "transformer.ln_f.weight", 1, C, 0, 0);
    add_view(m, &off, "transformer.ln_f.bias", 1, C, 0, 0);
    m->n_params = off;
}

static void point_layers(fs_model *m, float *base, fs_layer_params *lp, float **wte, float **wpe, float **lnfw,
                         float **lnfb) {
    size_t L = m->cfg.n_layer;
    *wte = base + m->views[0].offset;
    *wpe = base + m->views[1].offset;
    for (size_t l = 0; l < L; l++) {
        float **dst = (float **)&lp[l];
        for (int i = 0; i < FS_LAYER_TENSORS; i++) dst[i] = base + m->views[2 + l * FS_LAYER_TENSORS + i].offset;
    }
    *lnfw = base + m->views[2 + L * FS_LAYER_TENSORS].offset;
    *lnfb = base + m->views[3 + L * FS_LAYER_TENSORS].offset;
}

int fs_model_create(fs_model **out, const fs_model_config *cfg, fs_error *err) {
    *out = NULL;
    if (!cfg->n_head || cfg->n_embd % cfg->n_head)
        return fs_error_set(err, FS_ERR_INVALID, "[model] n_embd = %zu must be a multiple of n_head = %zu",
                            cfg->n_embd, cfg->n_head);
    fs_model *m = calloc(1, sizeof *m);
    if (!m) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    size_t L = cfg->n_layer;
    m->views = calloc(4 + L * FS_LAYER_TENSORS, sizeof *m->views);
    m->lp = calloc(L, sizeof *m->lp);
    m->lg = calloc(L, sizeof *m->lg);
    m->attn = calloc(L, sizeof *m->attn);
    if (!m->views || !m->lp || !m->lg || !m->attn) goto nomem;
    layout(m);
    m->params = fs_calloc(m->n_params * sizeof(float));
    m->grads = fs_calloc(m->n_params * sizeof(float));
    if (!m->params || !m->grads) goto nomem;
    point_layers(m, m->params, m->lp, &m->wte, &m->wpe, &m->lnfw, &m->lnfb);
    point_layers(m, m->grads, m->lg, &m->dwte, &m->dwpe, &m->dlnfw, &m->dlnfb);
    *out = m;
    return FS_OK;
nomem:
    fs_model_destroy(m);
    return fs_error_set(err, FS_ERR_NOMEM, "out of memory for a model of %zu parameters", m ? m->n_params : 0);
}

void fs_model_destroy(fs_model *m) {
    if (!m) return;
    for (size_t l = 0; m->attn && l < m->cfg.n_layer; l++) {
        fs_attention_slot *s = &m->attn[l];
        if (s->vt && s->self) s->vt->destroy(s->self);
        fs_free(s->saved);
        fs_free(s->cache);
    }
    fs_free(m->params);
    fs_free(m->grads);
    fs_free(m->act_block);
    fs_free(m->grad_block);
    fs_free(m->dec_block);
    free(m->inputs);
    free(m->views);
    free(m->lp);
    free(m->lg);
    free(m->attn);
    free(m);
}

void fs_model_attach_attention(fs_model *m, size_t layer, const fs_attention_vtable *vt, void *self) {
    m->attn[layer].vt = vt;
    m->attn[layer].self = self;
}

int fs_model_init_plugin_params(fs_model *m, fs_error *err) {
    size_t C = m->cfg.n_embd;
    for (size_t l = 0; l < m->cfg.n_layer; l++) {
        fs_attention_slot *s = &m->attn[l];
        if (!FS_HAS_MEMBER(s->vt, s->vt->struct_size, fs_attention_vtable, init_params) || !s->vt->init_params)
            continue;
        fs_tensor w = fs_tensor_cpu_f32(m->lp[l].qkvw, 2, C, 3 * C, 0, 0);
        fs_tensor b = fs_tensor_cpu_f32(m->lp[l].qkvb, 1, 3 * C, 0, 0, 0);
        int rc = s->vt->init_params(s->self, &w, &b, err);
        if (rc) return rc;
    }
    return FS_OK;
}

void fs_model_init_weights(fs_model *m, uint64_t seed) {
    fs_rng rng;
    fs_rng_seed(&rng, seed);
    float proj_std = 0.02f / sqrtf(2.0f * (float)m->cfg.n_layer);
    for (size_t i = 0; i < m->n_views; i++) {
        const fs_param_view *v = &m->views[i];
        float *p = m->params + v->offset;
        const char *n = v->name;
        if (strstr(n, "ln_") && strstr(n, ".weight")) {
            for (size_t j = 0; j < v->numel; j++) p[j] = 1.0f;
        } else if (v->ndim == 1) {
            memset(p, 0, v->numel * sizeof(float));
        } else {
            float std = strstr(n, "c_proj.weight") ? proj_std : 0.02f;
            for (size_t j = 0; j < v->numel; j++) p[j] = std * fs_rng_normal(&rng);
        }
    }
}

/* ---- activations ---- */

static int ensure_acts(fs_model *m, size_t B, size_t T, fs_error *err) {
    if (B <= m->act_B && T <= m->act_T && B * T <= m->act_B * m->act_T) return FS_OK;
    size_t L = m->cfg.n_layer, C = m->cfg.n_embd, V = m->cfg.vocab, BT = B * T;
    size_t sizes[] = {
        BT * C,                               /* encoded */
        L * BT * C, L * BT, L * BT,           /* ln1, mean, rstd */
        L * BT * C, L * BT * C, L * BT * C,   /* q k v */
        L * BT * C, L * BT * C,               /* atty attmerged */
        L * BT * C,                           /* residual2 */
        L * BT * C, L * BT, L * BT,           /* ln2 */
        L * BT * 4 * C, L * BT * 4 * C,       /* fch fch_gelu */
        L * BT * C,                           /* residual3 */
        BT * C, BT, BT,                       /* lnf */
        BT * V, BT * V,                       /* logits dlogits */
        BT * 4 * C,                           /* scratch */
    };
    float **ptrs[] = {&m->encoded,  &m->ln1,       &m->ln1_mean, &m->ln1_rstd,  &m->q,         &m->k,
                      &m->v,        &m->atty,      &m->attmerged, &m->residual2, &m->ln2,       &m->ln2_mean,
                      &m->ln2_rstd, &m->fch,       &m->fch_gelu,  &m->residual3, &m->lnf,       &m->lnf_mean,
                      &m->lnf_rstd, &m->logits,    &m->dlogits,   &m->scratch};
    size_t n = sizeof sizes / sizeof sizes[0], total = 0;
    for (size_t i = 0; i < n; i++) total += (sizes[i] + 15) & ~(size_t)15;
    fs_free(m->act_block);
    fs_free(m->grad_block);
    free(m->inputs);
    m->act_block = fs_alloc(total * sizeof(float));
    m->inputs = malloc(BT * sizeof(int32_t));
    /* backward scratch: dres dln dtmp dattmerged datty dq dk dv (C each),
     * dqkv (3C), dfch dfch_gelu (4C each) */
    size_t gtotal = BT * C * 8 + BT * 3 * C + 2 * BT * 4 * C;
    m->grad_block = fs_alloc(gtotal * sizeof(float));
    if (!m->act_block || !m->grad_block || !m->inputs) {
        m->act_B = m->act_T = 0;
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory for activations (B = %zu, T = %zu: %.1f MiB)", B, T,
                            (double)(total + gtotal) * 4.0 / 1048576.0);
    }
    float *p = m->act_block;
    for (size_t i = 0; i < n; i++) {
        *ptrs[i] = p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    float *g = m->grad_block;
    float **gp[] = {&m->dres, &m->dln, &m->dtmp, &m->dattmerged, &m->datty, &m->dq, &m->dk, &m->dv};
    for (size_t i = 0; i < 8; i++, g += BT * C) *gp[i] = g;
    m->dqkv = g;
    g += BT * 3 * C;
    m->dfch = g;
    g += BT * 4 * C;
    m->dfch_gelu = g;
    m->act_B = B;
    m->act_T = T;
    return FS_OK;
}

static fs_tensor bhtd(float *p, size_t B, size_t H, size_t T, size_t D) {
    return fs_tensor_cpu_f32(p, 4, B, H, T, D);
}

static fs_attention_args attention_args(fs_model *m, size_t l) {
    size_t B = m->B, T = m->T, H = m->cfg.n_head, C = m->cfg.n_embd, D = C / H, BTC = B * T * C;
    fs_attention_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.B = B;
    a.T = T;
    a.q = bhtd(m->q + l * BTC, B, H, T, D);
    a.k = bhtd(m->k + l * BTC, B, H, T, D);
    a.v = bhtd(m->v + l * BTC, B, H, T, D);
    a.out = bhtd(m->atty + l * BTC, B, H, T, D);
    a.saved = m->attn[l].saved;
    a.tokens = m->inputs;
    if (m->attn[l].vt->flags & FS_ATTENTION_USES_INPUT)
        a.x = fs_tensor_cpu_f32(m->ln1 + l * BTC, 3, B, T, C, 0);
    return a;
}

int fs_model_forward(fs_model *m, const int32_t *inputs, size_t B, size_t T, fs_error *err) {
    size_t L = m->cfg.n_layer, C = m->cfg.n_embd, V = m->cfg.vocab, H = m->cfg.n_head, D = C / H;
    if (T > m->cfg.max_seq || T == 0 || B == 0)
        return fs_error_set(err, FS_ERR_INVALID, "sequence of %zu tokens: must be 1..max_seq = %zu", T,
                            m->cfg.max_seq);
    for (size_t i = 0; i < B * T; i++)
        if (inputs[i] < 0 || (size_t)inputs[i] >= V)
            return fs_error_set(err, FS_ERR_INVALID, "token id %d at position %zu outside the vocabulary [0, %zu)",
                                (int)inputs[i], i, V);
    int rc = ensure_acts(m, B, T, err);
    if (rc) return rc;
    m->B = B;
    m->T = T;
    memcpy(m->inputs, inputs, B * T * sizeof(int32_t));
    size_t BT = B * T, BTC = BT * C;
    encoder_forward(m->encoded, inputs, m->wte, m->wpe, B, T, C, 0);
    for (size_t l = 0; l < L; l++) {
        fs_layer_params *p = &m->lp[l];
        fs_attention_slot *s = &m->attn[l];
        const float *res = l == 0 ? m->encoded : m->residual3 + (l - 1) * BTC;
        float *ln1 = m->ln1 + l * BTC, *atty = m->atty + l * BTC, *merged = m->attmerged + l * BTC;
        float *res2 = m->residual2 + l * BTC, *ln2 = m->ln2 + l * BTC, *res3 = m->residual3 + l * BTC;
        float *fch = m->fch + l * BT * 4 * C, *fchg = m->fch_gelu + l * BT * 4 * C;
        layernorm_forward(ln1, m->ln1_mean + l * BT, m->ln1_rstd + l * BT, res, p->ln1w, p->ln1b, BT, C);
        matmul_forward(m->scratch, ln1, p->qkvw, p->qkvb, BT, C, 3 * C);
        attention_split_heads(m->q + l * BTC, m->k + l * BTC, m->v + l * BTC, m->scratch, B, T, H, D);
        size_t need = s->vt->saved_bytes(s->self, B, T);
        if (need > s->saved_cap) {
            fs_free(s->saved);
            s->saved = fs_alloc(need);
            s->saved_cap = s->saved ? need : 0;
            if (!s->saved)
                return fs_error_set(err, FS_ERR_NOMEM, "layer %zu attention: out of memory for %zu saved bytes", l,
                                    need);
        }
        fs_attention_args a = attention_args(m, l);
        rc = s->vt->forward(s->self, &a, err);
        if (rc) return rc;
        (void)atty;
        attention_merge_heads(merged, m->atty + l * BTC, B, T, H, D);
        matmul_forward(m->scratch, merged, p->attprojw, p->attprojb, BT, C, C);
        residual_forward(res2, res, m->scratch, BTC);
        layernorm_forward(ln2, m->ln2_mean + l * BT, m->ln2_rstd + l * BT, res2, p->ln2w, p->ln2b, BT, C);
        matmul_forward(fch, ln2, p->fcw, p->fcb, BT, C, 4 * C);
        gelu_forward(fchg, fch, BT * 4 * C);
        matmul_forward(m->scratch, fchg, p->fcprojw, p->fcprojb, BT, 4 * C, C);
        residual_forward(res3, res2, m->scratch, BTC);
    }
    layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, m->residual3 + (L - 1) * BTC, m->lnfw, m->lnfb, BT, C);
    /* tied head: logits = lnf @ wte^T */
    fs_sgemm(0, 1, BT, V, C, 1.0f, m->lnf, C, m->wte, C, 0.0f, m->logits, V);
    return FS_OK;
}

double fs_model_loss(fs_model *m, const int32_t *targets, float dscale) {
    size_t N = m->B * m->T;
    double sum = crossentropy_softmax_forward_backward(m->dlogits, m->logits, targets, N, m->cfg.vocab,
                                                       dscale / (float)N);
    return sum / (double)N;
}

void fs_model_zero_grad(fs_model *m) {
    memset(m->grads, 0, m->n_params * sizeof(float));
}

const float *fs_model_hidden(const fs_model *m, size_t i) {
    if (i == 0) return m->encoded;
    return m->residual3 + (i - 1) * m->B * m->T * m->cfg.n_embd;
}

static void ready(fs_model *m, const float *first, const float *end) {
    if (m->grads_ready) m->grads_ready(m->grads_ready_arg, (size_t)(first - m->grads), (size_t)(end - first));
}

int fs_model_attention_scores(fs_model *m, size_t layer, int probs, float *out, fs_error *err) {
    fs_attention_slot *s = &m->attn[layer];
    if (!(s->vt->flags & FS_ATTENTION_SCORES) || !s->vt->scores)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "layer %zu: the attention plugin cannot expose its scores",
                            layer);
    fs_attention_args a = attention_args(m, layer);
    fs_attention_scores_args sa;
    memset(&sa, 0, sizeof sa);
    sa.struct_size = sizeof sa;
    sa.fwd = &a;
    sa.probs = probs;
    sa.scores = fs_tensor_cpu_f32(out, 4, m->B, m->cfg.n_head, m->T, m->T);
    return s->vt->scores(s->self, &sa, err);
}

int fs_model_backward(fs_model *m, const float *const *dhidden, fs_error *err) {
    return fs_model_backward_ex(m, dhidden, NULL, 0, err);
}

int fs_model_backward_ex(fs_model *m, const float *const *dhidden, const float *const *dscores, int probs,
                         fs_error *err) {
    size_t L = m->cfg.n_layer, C = m->cfg.n_embd, V = m->cfg.vocab, H = m->cfg.n_head, D = C / H;
    size_t B = m->B, T = m->T, BT = B * T, BTC = BT * C;
    /* head: dlnf = dlogits @ wte; dwte += dlogits^T @ lnf */
    fs_sgemm(0, 0, BT, C, V, 1.0f, m->dlogits, V, m->wte, C, 0.0f, m->dln, C);
    fs_sgemm(1, 0, V, C, BT, 1.0f, m->dlogits, V, m->lnf, C, 1.0f, m->dwte, C);
    layernorm_backward(m->dres, m->dlnfw, m->dlnfb, m->dln, m->residual3 + (L - 1) * BTC, m->lnfw, m->lnf_mean,
                       m->lnf_rstd, BT, C);
    ready(m, m->dlnfw, m->dlnfb + C);
    for (size_t l = L; l-- > 0;) {
        fs_layer_params *p = &m->lp[l], *g = &m->lg[l];
        fs_attention_slot *s = &m->attn[l];
        if (dhidden && dhidden[l + 1]) add_inplace(m->dres, dhidden[l + 1], BTC);
        const float *res = l == 0 ? m->encoded : m->residual3 + (l - 1) * BTC;
        float *res2 = m->residual2 + l * BTC, *ln1 = m->ln1 + l * BTC, *ln2 = m->ln2 + l * BTC;
        float *fch = m->fch + l * BT * 4 * C, *fchg = m->fch_gelu + l * BT * 4 * C;
        /* MLP: res3 = res2 + fcproj(gelu(fc(ln2(res2)))) */
        matmul_backward(m->dfch_gelu, g->fcprojw, g->fcprojb, m->dres, fchg, p->fcprojw, BT, 4 * C, C);
        gelu_backward(m->dfch, fch, m->dfch_gelu, BT * 4 * C);
        matmul_backward(m->dln, g->fcw, g->fcb, m->dfch, ln2, p->fcw, BT, C, 4 * C);
        layernorm_backward(m->dtmp, g->ln2w, g->ln2b, m->dln, res2, p->ln2w, m->ln2_mean + l * BT,
                           m->ln2_rstd + l * BT, BT, C);
        add_inplace(m->dres, m->dtmp, BTC);
        /* attention: res2 = res + attproj(merge(attn(split(qkv(ln1(res)))))) */
        matmul_backward(m->dattmerged, g->attprojw, g->attprojb, m->dres, m->attmerged + l * BTC, p->attprojw, BT,
                        C, C);
        attention_merge_heads_backward(m->datty, m->dattmerged, B, T, H, D);
        fs_attention_args a = attention_args(m, l);
        a.dout = bhtd(m->datty, B, H, T, D);
        a.dq = bhtd(m->dq, B, H, T, D);
        a.dk = bhtd(m->dk, B, H, T, D);
        a.dv = bhtd(m->dv, B, H, T, D);
        int uses_input = (s->vt->flags & FS_ATTENTION_USES_INPUT) != 0;
        if (uses_input) {
            memset(m->dtmp, 0, BTC * sizeof(float));
            a.dx = fs_tensor_cpu_f32(m->dtmp, 3, B, T, C, 0);
        }
        int rc = s->vt->backward(s->self, &a, err);
        if (rc) return rc;
        if (dscores && dscores[l]) { /* a loss on this layer's attention map (distillation) */
            if (!FS_HAS_MEMBER(s->vt, s->vt->struct_size, fs_attention_vtable, scores_backward) ||
                !s->vt->scores_backward)
                return fs_error_set(err, FS_ERR_UNSUPPORTED,
                                    "layer %zu: the attention plugin has no backward for its scores", l);
            fs_attention_scores_args sa;
            memset(&sa, 0, sizeof sa);
            sa.struct_size = sizeof sa;
            sa.fwd = &a;
            sa.probs = probs;
            sa.scores = fs_tensor_cpu_f32((float *)dscores[l], 4, B, H, T, T);
            if ((rc = s->vt->scores_backward(s->self, &sa, err))) return rc;
        }
        attention_split_heads_backward(m->dqkv, m->dq, m->dk, m->dv, B, T, H, D);
        matmul_backward(m->dln, g->qkvw, g->qkvb, m->dqkv, ln1, p->qkvw, BT, C, 3 * C);
        if (uses_input) add_inplace(m->dln, m->dtmp, BTC);
        layernorm_backward(m->dtmp, g->ln1w, g->ln1b, m->dln, res, p->ln1w, m->ln1_mean + l * BT,
                           m->ln1_rstd + l * BT, BT, C);
        add_inplace(m->dres, m->dtmp, BTC);
        ready(m, g->ln1w, g->fcprojb + C);
    }
    if (dhidden && dhidden[0]) add_inplace(m->dres, dhidden[0], BTC);
    encoder_backward(m->dwte, m->dwpe, m->dres, m->inputs, B, T, C, 0);
    ready(m, m->dwte, m->dwpe + m->cfg.max_seq * C);
    return FS_OK;
}

/* ---- decode ---- */

int fs_model_decode_begin(fs_model *m, size_t B, size_t context, fs_error *err) {
    size_t C = m->cfg.n_embd;
    for (size_t l = 0; l < m->cfg.n_layer; l++) {
        fs_attention_slot *s = &m->attn[l];
        if (!s->vt->decode || !(s->vt->flags & FS_ATTENTION_DECODE))
            return fs_error_set(err, FS_ERR_UNSUPPORTED, "layer %zu: the attention plugin has no decode step", l);
        fs_free(s->cache);
        size_t bytes = s->vt->cache_bytes(s->self, B, context);
        s->cache = fs_alloc(bytes);
        if (!s->cache)
            return fs_error_set(err, FS_ERR_NOMEM, "layer %zu: out of memory for a %zu-byte KV cache", l, bytes);
        int rc = s->vt->cache_reset(s->self, s->cache, B, context, err);
        if (rc) return rc;
    }
    fs_free(m->dec_block);
    /* per sequence: x, ln, y, proj (C each), qkv (3C), fch and fch_gelu (4C each) */
    m->dec_block = fs_alloc(B * 15 * C * sizeof(float));
    if (!m->dec_block) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for decoding");
    m->dec_B = B;
    m->dec_context = context;
    return FS_OK;
}

size_t fs_model_cache_bytes(const fs_model *m) {
    size_t total = 0;
    for (size_t l = 0; l < m->cfg.n_layer; l++)
        if (m->attn[l].cache) total += m->attn[l].vt->cache_bytes(m->attn[l].self, m->dec_B, m->dec_context);
    return total;
}

int fs_model_cache_bounded(const fs_model *m) {
    for (size_t l = 0; l < m->cfg.n_layer; l++)
        if (!(m->attn[l].vt->flags & FS_ATTENTION_BOUNDED_CACHE)) return 0;
    return 1;
}

int fs_model_decode_step(fs_model *m, const int32_t *tokens, size_t pos, float *logits, fs_error *err) {
    size_t C = m->cfg.n_embd, V = m->cfg.vocab, H = m->cfg.n_head, D = C / H, B = m->dec_B;
    size_t pe = pos; /* the row of wpe the token gets */
    if (pos >= m->cfg.max_seq) {
        if (!fs_model_cache_bounded(m))
            return fs_error_set(err, FS_ERR_INVALID, "position %zu is past [model] max_seq = %zu", pos,
                                m->cfg.max_seq);
        /* cycle through the second half of the table (attention.h) */
        size_t h = m->cfg.max_seq / 2;
        pe = h + (pos - h) % (m->cfg.max_seq - h);
    }
    float *x = m->dec_block, *ln = x + B * C, *y = ln + B * C, *proj = y + B * C, *qkv = proj + B * C;
    float *fch = qkv + B * 3 * C, *fchg = fch + B * 4 * C;
    for (size_t b = 0; b < B; b++)
        if (tokens[b] < 0 || (size_t)tokens[b] >= V)
            return fs_error_set(err, FS_ERR_INVALID, "token id %d outside the vocabulary [0, %zu)", (int)tokens[b], V);
    encoder_forward(x, tokens, m->wte, m->wpe, B, 1, C, pe);
    float *q = fch, *k = q + B * C, *v = k + B * C; /* fch is free until the MLP */
    for (size_t l = 0; l < m->cfg.n_layer; l++) {
        fs_layer_params *p = &m->lp[l];
        fs_attention_slot *s = &m->attn[l];
        layernorm_forward(ln, NULL, NULL, x, p->ln1w, p->ln1b, B, C);
        matmul_forward(qkv, ln, p->qkvw, p->qkvb, B, C, 3 * C);
        attention_split_heads(q, k, v, qkv, B, 1, H, D);
        fs_attention_decode_args a;
        memset(&a, 0, sizeof a);
        a.struct_size = sizeof a;
        a.B = B;
        a.pos = pos;
        a.q = bhtd(q, B, H, 1, D);
        a.k = bhtd(k, B, H, 1, D);
        a.v = bhtd(v, B, H, 1, D);
        a.out = bhtd(proj, B, H, 1, D);
        a.token = B == 1 ? tokens[0] : -1;
        if (s->vt->flags & FS_ATTENTION_USES_INPUT) a.x = fs_tensor_cpu_f32(ln, 3, B, 1, C, 0);
        int rc = s->vt->decode(s->self, s->cache, &a, err);
        if (rc) return rc;
        attention_merge_heads(y, proj, B, 1, H, D);
        matmul_forward(proj, y, p->attprojw, p->attprojb, B, C, C);
        add_inplace(x, proj, B * C);
        layernorm_forward(ln, NULL, NULL, x, p->ln2w, p->ln2b, B, C);
        matmul_forward(fch, ln, p->fcw, p->fcb, B, C, 4 * C);
        gelu_forward(fchg, fch, B * 4 * C);
        matmul_forward(proj, fchg, p->fcprojw, p->fcprojb, B, 4 * C, C);
        add_inplace(x, proj, B * C);
    }
    layernorm_forward(ln, NULL, NULL, x, m->lnfw, m->lnfb, B, C);
    fs_sgemm(0, 1, B, V, C, 1.0f, ln, C, m->wte, C, 0.0f, logits, V);
    return FS_OK;
}
