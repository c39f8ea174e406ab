/* step.c — the model's training forward and backward: activation slots,
 * the attention and MLP sublayers, chunks (pipeline stages), the head and
 * the loss. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "compute/blas.h"
#include "model/model_internal.h"
#include "compute/ops.h"

/* ---- activations ---- */

static void free_acts(fs_model *m) {
    for (size_t k = 0; m->act_blocks && k < m->n_slots; k++) {
        fs_free(m->act_blocks[k]);
        m->act_blocks[k] = NULL;
    }
}

void fs_model_release_activations(fs_model *m) {
    free_acts(m);
    for (size_t l = 0; m->attn && l < m->L; l++)
        for (size_t k = 0; m->attn[l].saved && k < m->n_slots; k++) {
            fs_free(m->attn[l].saved[k]);
            m->attn[l].saved[k] = NULL;
        }
    fs_free(m->grad_block);
    fs_free(m->rev_saved);
    m->grad_block = NULL;
    m->rev_saved = NULL;
}

enum { N_ACTS = 28 };

/* Sizes (floats) of the activation arrays of one slot, in block order. */
static void act_sizes(const fs_model *m, size_t B, size_t T, size_t *sizes) {
    size_t C = m->cfg.n_embd, V = m->cfg.vocab, BT = B * T, Ca = m->Ca, F = m->F;
    /* Reversible: one layer's activations, rebuilt per layer in backward.
     * ff_chunk: the MLP's wide activations exist one chunk at a time. */
    size_t LA = m->cfg.reversible ? 1 : m->L, chunked = m->cfg.ff_chunk > 0 && m->cfg.ff_chunk < BT;
    size_t FR = chunked ? m->cfg.ff_chunk : BT;
    size_t wide = chunked ? 0 : LA * BT * F, rev = m->cfg.reversible ? BT * C : 0, head = m->has_head;
    size_t scratch = 3 * Ca > C ? 3 * Ca : C;
    if (!chunked && F > scratch) scratch = F;
    size_t s[N_ACTS] = {
        m->n_chunks * BT * C,                    /* chunk_in */
        LA * BT * C, LA * BT, LA * BT,           /* ln1, mean, rstd */
        LA * BT * Ca, LA * BT * Ca, LA * BT * Ca, /* q k v */
        LA * BT * Ca, LA * BT * Ca,              /* atty attmerged */
        LA * BT * C,                             /* residual2 */
        LA * BT * C, LA * BT, LA * BT,           /* ln2 */
        wide, wide,                              /* fch fch_gelu */
        LA * BT * C,                             /* residual3 */
        head * BT * C, head * BT, head * BT,     /* lnf */
        head * BT * V, head * BT * V,            /* logits dlogits */
        BT * scratch,                            /* scratch */
        chunked ? FR * F : 0, chunked ? FR * F : 0, /* ff_h ff_hg */
        rev, rev, rev,                           /* rev_x1 rev_x2 rev_mean */
        BT,                                      /* inputs (int32) */
    };
    memcpy(sizes, s, sizeof s);
}

static void point_acts(fs_model *m, float *base, size_t B, size_t T) {
    size_t sizes[N_ACTS];
    act_sizes(m, B, T, sizes);
    float **ptrs[N_ACTS] = {&m->chunk_in,  &m->ln1,      &m->ln1_mean,  &m->ln1_rstd, &m->q,         &m->k,
                            &m->v,         &m->atty,     &m->attmerged, &m->residual2, &m->ln2,      &m->ln2_mean,
                            &m->ln2_rstd,  &m->fch,      &m->fch_gelu,  &m->residual3, &m->lnf,      &m->lnf_mean,
                            &m->lnf_rstd,  &m->logits,   &m->dlogits,   &m->scratch,   &m->ff_h,     &m->ff_hg,
                            &m->rev_x1,    &m->rev_x2,   &m->rev_mean,  NULL};
    float *p = base;
    for (size_t i = 0; i < N_ACTS; i++) {
        if (ptrs[i]) *ptrs[i] = sizes[i] ? p : NULL;
        else m->inputs = (int32_t *)p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    m->encoded = m->chunk_in;
}

int fs_model_set_slots(fs_model *m, size_t n, fs_error *err) {
    if (n == m->n_slots) return FS_OK;
    if (n == 0) return fs_error_set(err, FS_ERR_INVALID, "a model needs at least one activation slot");
    free_acts(m);
    float **blocks = calloc(n, sizeof *blocks);
    if (!blocks) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    free(m->act_blocks);
    m->act_blocks = blocks;
    for (size_t l = 0; l < m->L; l++) {
        fs_attention_slot *s = &m->attn[l];
        for (size_t k = 0; k < m->n_slots; k++) fs_free(s->saved[k]);
        free(s->saved);
        free(s->saved_cap);
        s->saved = calloc(n, sizeof(void *));
        s->saved_cap = calloc(n, sizeof(size_t));
        if (!s->saved || !s->saved_cap) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    m->n_slots = n;
    m->slot = 0;
    m->act_B = m->act_T = 0;
    return FS_OK;
}

void fs_model_use_slot(fs_model *m, size_t slot) {
    m->slot = slot;
    if (m->act_blocks[slot]) point_acts(m, m->act_blocks[slot], m->act_B, m->act_T);
}

static int ensure_acts(fs_model *m, size_t B, size_t T, fs_error *err) {
    if (B <= m->act_B && T <= m->act_T && B * T <= m->act_B * m->act_T) {
        point_acts(m, m->act_blocks[m->slot], m->act_B, m->act_T);
        return FS_OK;
    }
    size_t C = m->cfg.n_embd, BT = B * T, Ca = m->Ca, sizes[N_ACTS], total = 0;
    act_sizes(m, B, T, sizes);
    for (size_t i = 0; i < N_ACTS; i++) total += (sizes[i] + 15) & ~(size_t)15;
    size_t FR = m->cfg.ff_chunk > 0 && m->cfg.ff_chunk < BT ? m->cfg.ff_chunk : BT;
    free_acts(m);
    fs_free(m->grad_block);
    int ok = 1;
    for (size_t k = 0; k < m->n_slots; k++) ok = ok && (m->act_blocks[k] = fs_alloc(total * sizeof(float))) != NULL;
    /* backward scratch: dres dln dtmp (C each), dattmerged datty dq dk dv
     * (Ca each), dqkv (3Ca), dfch dfch_gelu (F each, one chunk's rows with
     * ff_chunk) */
    size_t gtotal = BT * C * 3 + BT * Ca * 5 + BT * 3 * Ca + 2 * FR * m->F;
    m->grad_block = fs_alloc(gtotal * sizeof(float));
    if (!ok || !m->grad_block) {
        m->act_B = m->act_T = 0;
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory for activations (B = %zu, T = %zu: %.1f MiB)", B, T,
                            (double)(total * m->n_slots + gtotal) * 4.0 / 1048576.0);
    }
    float *g = m->grad_block;
    m->dres = g, g += BT * C;
    m->dln = g, g += BT * C;
    m->dtmp = g, g += BT * C;
    float **gp[] = {&m->dattmerged, &m->datty, &m->dq, &m->dk, &m->dv};
    for (size_t i = 0; i < 5; i++, g += BT * Ca) *gp[i] = g;
    m->dqkv = g;
    g += BT * 3 * Ca;
    m->dfch = g;
    g += FR * m->F;
    m->dfch_gelu = g;
    m->act_B = B;
    m->act_T = T;
    m->ff_rows = FR;
    m->act_bytes = (total * m->n_slots + gtotal) * sizeof(float);
    point_acts(m, m->act_blocks[m->slot], B, T);
    return FS_OK;
}

size_t fs_model_activation_bytes(const fs_model *m) {
    size_t total = m->act_bytes + m->rev_saved_cap;
    for (size_t l = 0; l < m->L; l++)
        for (size_t k = 0; k < m->n_slots; k++) total += m->attn[l].saved_cap[k];
    return total;
}

/* out (N, OC) with row stride ldo = inp (N, C) @ w (C, OC) with row stride
 * ldw + bias: a block of columns of a wider matmul (shared-QK plugins use
 * the Q and V blocks of the QKV projection only). */
static void matmul_forward_strided(float *out, size_t ldo, const float *inp, const float *w, size_t ldw,
                                   const float *bias, size_t N, size_t C, size_t OC) {
    for (size_t n = 0; n < N; n++) memcpy(out + n * ldo, bias, OC * sizeof(float));
    fs_sgemm(0, 0, N, OC, C, 1.0f, inp, C, w, ldw, 1.0f, out, ldo);
}

/* Its backward: dinp (N, C) = beta * dinp + dout @ w^T; dw += inp^T @ dout;
 * dbias += colsum(dout); dout and w/dw have row strides ldd and ldw. */
static void matmul_backward_strided(float *dinp, float beta, float *dw, float *dbias, const float *dout, size_t ldd,
                                    const float *inp, const float *w, size_t ldw, size_t N, size_t C, size_t OC) {
    fs_sgemm(0, 1, N, C, OC, 1.0f, dout, ldd, w, ldw, beta, dinp, C);
    fs_sgemm(1, 0, C, OC, N, 1.0f, inp, C, dout, ldd, 1.0f, dw, ldw);
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < OC; o++) dbias[o] += dout[n * ldd + o];
}

/* Layer l's attention call on activation slot a (l, or 0 when reversible). */
static fs_attention_args attention_args(fs_model *m, size_t l, size_t a_slot) {
    size_t B = m->B, T = m->T, H = m->Ha, C = m->cfg.n_embd, D = C / m->cfg.n_head, BTA = B * T * m->Ca;
    size_t o = a_slot * BTA;
    fs_attention_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.B = B;
    a.T = T;
    a.q = fs_bhtd(m->q + o, B, H, T, D);
    a.k = fs_bhtd(m->k + o, B, H, T, D);
    a.v = fs_bhtd(m->v + o, B, H, T, D);
    a.out = fs_bhtd(m->atty + o, B, H, T, D);
    a.saved = m->cfg.reversible ? m->rev_saved : m->attn[l].saved[m->slot];
    a.tokens = m->inputs;
    if (m->attn[l].vt->flags & FS_ATTENTION_USES_INPUT)
        a.x = fs_tensor_cpu_f32(m->ln1 + a_slot * B * T * C, 3, B, T, C, 0);
    return a;
}

static int ensure_saved(fs_model *m, size_t l, fs_error *err) {
    fs_attention_slot *s = &m->attn[l];
    size_t need;
    ATTN_CALL(m, l, "saved_bytes", need = s->vt->saved_bytes(s->self, m->B, m->T));
    void **buf = m->cfg.reversible ? &m->rev_saved : &s->saved[m->slot];
    size_t *cap = m->cfg.reversible ? &m->rev_saved_cap : &s->saved_cap[m->slot];
    if (need <= *cap) return FS_OK;
    fs_free(*buf);
    *buf = fs_alloc(need);
    *cap = *buf ? need : 0;
    if (!*buf) return fs_error_set(err, FS_ERR_NOMEM, "layer %zu attention: out of memory for %zu saved bytes", l, need);
    return FS_OK;
}

static int shared_qk(const fs_model *m, size_t l) {
    return (m->attn[l].vt->flags & FS_ATTENTION_SHARED_QK) != 0;
}

/* Megatron's all-reduce of a row-parallel output (forward) or a
 * column-parallel input gradient (backward). */
static int tp_sum(fs_model *m, float *x, size_t n, fs_error *err) {
    if (m->tp_size == 1 || !m->tensor_reduce) return FS_OK;
    return m->tensor_reduce(m->tensor_reduce_arg, x, n, err);
}

/* out (B,T,C) = attproj(merge(attention(split(qkv(ln1(in)))))), keeping
 * what backward needs in activation slot a. out may be m->scratch. A
 * shared-QK plugin ignores K, so its columns of the projection are skipped
 * (forward and backward): their weights stay in the checkpoint, untouched. */
static int attn_forward(fs_model *m, size_t l, size_t a, const float *in, float *out, fs_error *err) {
    size_t B = m->B, T = m->T, C = m->cfg.n_embd, Ca = m->Ca, H = m->Ha, D = C / m->cfg.n_head, BT = B * T;
    size_t BTC = BT * C, BTA = BT * Ca;
    fs_layer_params *p = &m->lp[l];
    fs_attention_slot *s = &m->attn[l];
    float *ln1 = m->ln1 + a * BTC;
    layernorm_forward(ln1, m->ln1_mean + a * BT, m->ln1_rstd + a * BT, in, p->ln1w, p->ln1b, BT, C);
    if (shared_qk(m, l)) {
        for (size_t part = 0; part < 3; part += 2) /* Q and V column blocks of the (C, 3Ca) weight */
            matmul_forward_strided(m->scratch + part * Ca, 3 * Ca, ln1, p->qkvw + part * Ca, 3 * Ca,
                                   p->qkvb + part * Ca, BT, C, Ca);
    } else {
        matmul_forward(m->scratch, ln1, p->qkvw, p->qkvb, BT, C, 3 * Ca);
    }
    /* with a shared-QK plugin K's columns were not computed: it never reads them */
    attention_split_heads(m->q + a * BTA, m->k + a * BTA, m->v + a * BTA, m->scratch, B, T, H, D);
    int rc = ensure_saved(m, l, err);
    if (rc) return rc;
    fs_attention_args args = attention_args(m, l, a);
    ATTN_CALL(m, l, "forward", rc = s->vt->forward(s->self, &args, err));
    if (rc) return rc;
    attention_merge_heads(m->attmerged + a * BTA, m->atty + a * BTA, B, T, H, D);
    /* row-parallel: the bias is added once, by tensor rank 0 */
    matmul_forward(out, m->attmerged + a * BTA, p->attprojw, m->tp_rank == 0 ? p->attprojb : NULL, BT, Ca, C);
    return tp_sum(m, out, BTC, err);
}

/* out (B,T,C) = fcproj(gelu(fc(ln2(in)))), ff_rows rows at a time. out may
 * be m->scratch. */
static int mlp_forward(fs_model *m, size_t l, size_t a, const float *in, float *out, fs_error *err) {
    size_t BT = m->B * m->T, C = m->cfg.n_embd, BTC = BT * C, FR = m->ff_rows, F = m->F;
    fs_layer_params *p = &m->lp[l];
    const float *bias = m->tp_rank == 0 ? p->fcprojb : NULL;
    float *ln2 = m->ln2 + a * BTC;
    layernorm_forward(ln2, m->ln2_mean + a * BT, m->ln2_rstd + a * BT, in, p->ln2w, p->ln2b, BT, C);
    if (m->fch) { /* whole: kept for backward */
        float *fch = m->fch + a * BT * F, *fchg = m->fch_gelu + a * BT * F;
        matmul_forward(fch, ln2, p->fcw, p->fcb, BT, C, F);
        gelu_forward(fchg, fch, BT * F);
        matmul_forward(out, fchg, p->fcprojw, bias, BT, F, C);
    } else {
        for (size_t r0 = 0; r0 < BT; r0 += FR) {
            size_t n = r0 + FR <= BT ? FR : BT - r0;
            matmul_forward(m->ff_h, ln2 + r0 * C, p->fcw, p->fcb, n, C, F);
            gelu_forward(m->ff_hg, m->ff_h, n * F);
            matmul_forward(out + r0 * C, m->ff_hg, p->fcprojw, bias, n, F, C);
        }
    }
    return tp_sum(m, out, BTC, err);
}

/* Backward of attn_forward from dout (gradient of out): parameter
 * gradients accumulate, d(in) is ADDED to din (din may alias dout: dout is
 * consumed first). */
static int attn_backward(fs_model *m, size_t l, size_t a, const float *in, const float *dout, float *din,
                         const float *dscores, int probs, fs_error *err) {
    size_t B = m->B, T = m->T, C = m->cfg.n_embd, Ca = m->Ca, H = m->Ha, D = C / m->cfg.n_head, BT = B * T;
    size_t BTC = BT * C, BTA = BT * Ca;
    fs_layer_params *p = &m->lp[l], *g = &m->lg[l];
    fs_attention_slot *s = &m->attn[l];
    float *ln1 = m->ln1 + a * BTC;
    matmul_backward(m->dattmerged, g->attprojw, g->attprojb, dout, m->attmerged + a * BTA, p->attprojw, BT, Ca, C);
    attention_merge_heads_backward(m->datty, m->dattmerged, B, T, H, D);
    fs_attention_args args = attention_args(m, l, a);
    args.dout = fs_bhtd(m->datty, B, H, T, D);
    args.dq = fs_bhtd(m->dq, B, H, T, D);
    args.dk = fs_bhtd(m->dk, B, H, T, D);
    args.dv = fs_bhtd(m->dv, B, H, T, D);
    int uses_input = (s->vt->flags & FS_ATTENTION_USES_INPUT) != 0, sqk = shared_qk(m, l);
    if (uses_input) {
        memset(m->dtmp, 0, BTC * sizeof(float));
        args.dx = fs_tensor_cpu_f32(m->dtmp, 3, B, T, C, 0);
    }
    int rc;
    ATTN_CALL(m, l, "backward", rc = s->vt->backward(s->self, &args, err));
    if (rc) return rc;
    if (dscores) { /* a loss on this layer's attention map (distillation) */
        if (!FS_HAS_MEMBER(s->vt, s->vt->struct_size, fs_attention_vtable, scores_backward) || !s->vt->scores_backward)
            return fs_error_set(err, FS_ERR_UNSUPPORTED, "layer %zu: the attention plugin has no backward for its scores",
                                l);
        fs_attention_scores_args sa;
        memset(&sa, 0, sizeof sa);
        sa.struct_size = sizeof sa;
        sa.fwd = &args;
        sa.probs = probs;
        sa.scores = fs_tensor_cpu_f32((float *)dscores, 4, B, H, T, T);
        ATTN_CALL(m, l, "scores_backward", rc = s->vt->scores_backward(s->self, &sa, err));
        if (rc) return rc;
    }
    attention_split_heads_backward(m->dqkv, m->dq, m->dk, m->dv, B, T, H, D);
    if (sqk) { /* K's block of dqkv is not used */
        for (size_t part = 0; part < 3; part += 2)
            matmul_backward_strided(m->dln, part ? 1.0f : 0.0f, g->qkvw + part * Ca, g->qkvb + part * Ca,
                                    m->dqkv + part * Ca, 3 * Ca, ln1, p->qkvw + part * Ca, 3 * Ca, BT, C, Ca);
    } else {
        matmul_backward(m->dln, g->qkvw, g->qkvb, m->dqkv, ln1, p->qkvw, BT, C, 3 * Ca);
    }
    if (uses_input) add_inplace(m->dln, m->dtmp, BTC); /* this rank's heads' share of it, too */
    if ((rc = tp_sum(m, m->dln, BTC, err))) return rc;
    layernorm_backward(m->dtmp, g->ln1w, g->ln1b, m->dln, in, p->ln1w, m->ln1_mean + a * BT, m->ln1_rstd + a * BT, BT,
                       C);
    add_inplace(din, m->dtmp, BTC);
    return FS_OK;
}

/* Backward of mlp_forward; same contract as attn_backward. With ff_chunk
 * each chunk's fc and GELU are recomputed from the stored ln2 output. */
static int mlp_backward(fs_model *m, size_t l, size_t a, const float *in, const float *dout, float *din,
                        fs_error *err) {
    size_t BT = m->B * m->T, C = m->cfg.n_embd, BTC = BT * C, FR = m->ff_rows, F = m->F;
    fs_layer_params *p = &m->lp[l], *g = &m->lg[l];
    float *ln2 = m->ln2 + a * BTC;
    for (size_t r0 = 0; r0 < BT; r0 += FR) {
        size_t n = r0 + FR <= BT ? FR : BT - r0;
        const float *fch, *fchg;
        if (m->fch) {
            fch = m->fch + a * BT * F;
            fchg = m->fch_gelu + a * BT * F;
        } else {
            matmul_forward(m->ff_h, ln2 + r0 * C, p->fcw, p->fcb, n, C, F);
            gelu_forward(m->ff_hg, m->ff_h, n * F);
            fch = m->ff_h;
            fchg = m->ff_hg;
        }
        matmul_backward(m->dfch_gelu, g->fcprojw, g->fcprojb, dout + r0 * C, fchg, p->fcprojw, n, F, C);
        gelu_backward(m->dfch, fch, m->dfch_gelu, n * F);
        matmul_backward(m->dln + r0 * C, g->fcw, g->fcb, m->dfch, ln2 + r0 * C, p->fcw, n, C, F);
    }
    int rc = tp_sum(m, m->dln, BTC, err);
    if (rc) return rc;
    layernorm_backward(m->dtmp, g->ln2w, g->ln2b, m->dln, in, p->ln2w, m->ln2_mean + a * BT, m->ln2_rstd + a * BT, BT,
                       C);
    add_inplace(din, m->dtmp, BTC);
    return FS_OK;
}

/* ---- forward ---- */

static int check_batch(fs_model *m, const int32_t *tokens, size_t B, size_t T, fs_error *err) {
    if (T > m->cfg.max_seq || T == 0 || B == 0)
        return fs_error_set(err, FS_ERR_INVALID, "sequence of %zu tokens: must be 1..max_seq = %zu", T,
                            m->cfg.max_seq);
    for (size_t i = 0; tokens && i < B * T; i++)
        if (tokens[i] < 0 || (size_t)tokens[i] >= m->cfg.vocab)
            return fs_error_set(err, FS_ERR_INVALID, "token id %d at position %zu outside the vocabulary [0, %zu)",
                                (int)tokens[i], i, m->cfg.vocab);
    int rc = ensure_acts(m, B, T, err);
    if (rc) return rc;
    m->B = B;
    m->T = T;
    return FS_OK;
}

int fs_model_chunk_embeds(const fs_model *m, size_t chunk) { return chunk == 0 && m->has_embed; }
int fs_model_chunk_has_head(const fs_model *m, size_t chunk) { return chunk + 1 == m->n_chunks && m->has_head; }

/* The layers of `chunk` from its input in chunk_in; returns the output. */
static int chunk_forward(fs_model *m, size_t chunk, const float **final, fs_error *err) {
    size_t BTC = m->B * m->T * m->cfg.n_embd, l0 = m->chunk_first[chunk], l1 = m->chunk_first[chunk + 1];
    const float *x = m->chunk_in + chunk * BTC;
    int rc;
    if (m->cfg.reversible) {
        float *x1 = m->rev_x1, *x2 = m->rev_x2;
        memcpy(x1, x, BTC * sizeof(float));
        memcpy(x2, x, BTC * sizeof(float));
        for (size_t l = l0; l < l1; l++) {
            if ((rc = attn_forward(m, l, 0, x2, m->scratch, err))) return rc;
            add_inplace(x1, m->scratch, BTC); /* y1 = x1 + Attention(x2) */
            if ((rc = mlp_forward(m, l, 0, x1, m->scratch, err))) return rc;
            add_inplace(x2, m->scratch, BTC); /* y2 = x2 + MLP(y1) */
        }
        for (size_t i = 0; i < BTC; i++) m->rev_mean[i] = 0.5f * (x1[i] + x2[i]);
        *final = m->rev_mean;
        return FS_OK;
    }
    for (size_t l = l0; l < l1; l++) {
        const float *res = l == l0 ? x : m->residual3 + (l - 1) * BTC;
        float *res2 = m->residual2 + l * BTC, *res3 = m->residual3 + l * BTC;
        if ((rc = attn_forward(m, l, l, res, m->scratch, err))) return rc;
        residual_forward(res2, res, m->scratch, BTC);
        if ((rc = mlp_forward(m, l, l, res2, m->scratch, err))) return rc;
        residual_forward(res3, res2, m->scratch, BTC);
    }
    *final = l1 > l0 ? m->residual3 + (l1 - 1) * BTC : x;
    return FS_OK;
}

static void head_forward(fs_model *m, const float *final) {
    size_t BT = m->B * m->T, C = m->cfg.n_embd, V = m->cfg.vocab;
    layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, final, m->lnfw, m->lnfb, BT, C);
    /* logits = lnf @ head^T (head = wte when tied) */
    fs_sgemm(0, 1, BT, V, C, 1.0f, m->lnf, C, m->head, C, 0.0f, m->logits, V);
}

int fs_model_forward(fs_model *m, const int32_t *inputs, size_t B, size_t T, fs_error *err) {
    if (!m->has_embed || !m->has_head || m->n_chunks != 1)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "this model is one pipeline stage: use its stage steps");
    int rc = check_batch(m, inputs, B, T, err);
    if (rc) return rc;
    memcpy(m->inputs, inputs, B * T * sizeof(int32_t));
    encoder_forward(m->encoded, inputs, m->wte, m->wpe, B, T, m->cfg.n_embd, 0);
    const float *final;
    if ((rc = chunk_forward(m, 0, &final, err))) return rc;
    head_forward(m, final);
    return FS_OK;
}

int fs_model_stage_forward(fs_model *m, size_t chunk, const int32_t *tokens, const float *x_in,
                           const int32_t *targets, size_t B, size_t T, float dscale, double *loss, float *x_out,
                           fs_error *err) {
    int embeds = fs_model_chunk_embeds(m, chunk), head = fs_model_chunk_has_head(m, chunk);
    if (chunk >= m->n_chunks || !tokens || (!embeds && !x_in) || (head ? !targets || !loss : !x_out))
        return fs_error_set(err, FS_ERR_INVALID, "stage forward of chunk %zu: wrong inputs for this chunk", chunk);
    int rc = check_batch(m, tokens, B, T, err);
    if (rc) return rc;
    size_t BTC = B * T * m->cfg.n_embd;
    memcpy(m->inputs, tokens, B * T * sizeof(int32_t)); /* plugins may read token ids in any chunk */
    if (embeds) {
        encoder_forward(m->chunk_in, tokens, m->wte, m->wpe, B, T, m->cfg.n_embd, 0);
    } else {
        memcpy(m->chunk_in + chunk * BTC, x_in, BTC * sizeof(float));
    }
    const float *final;
    if ((rc = chunk_forward(m, chunk, &final, err))) return rc;
    if (head) {
        head_forward(m, final);
        *loss = fs_model_loss(m, targets, dscale);
    } else {
        memcpy(x_out, final, BTC * sizeof(float));
    }
    return FS_OK;
}

double fs_model_loss(fs_model *m, const int32_t *targets, float dscale) {
    size_t N = m->B * m->T;
    double sum = crossentropy_softmax_forward_backward(m->dlogits, m->logits, targets, N, m->cfg.vocab,
                                                       dscale / (float)N);
    return sum / (double)N;
}

void fs_model_zero_grad(fs_model *m) {
    memset(m->grad_arena.base, 0, m->grad_arena.used * sizeof(float));
}

const float *fs_model_logits(const fs_model *m) { return m->logits; }
float *fs_model_dlogits(fs_model *m) { return m->dlogits; }

const float *fs_model_hidden(const fs_model *m, size_t i) {
    if (i == 0) return m->encoded;
    if (m->cfg.reversible) return i == m->L ? m->rev_mean : NULL; /* inner layers are not kept */
    return m->residual3 + (i - 1) * m->B * m->T * m->cfg.n_embd;
}

static void ready(fs_model *m, const float *first, const float *end) {
    if (m->grads_ready) m->grads_ready(m->grads_ready_arg, (size_t)(first - m->grad_arena.base), (size_t)(end - first));
}

int fs_model_attention_scores(fs_model *m, size_t layer, int probs, float *out, fs_error *err) {
    fs_attention_slot *s = &m->attn[layer];
    if (!(s->vt->flags & FS_ATTENTION_SCORES) || !s->vt->scores)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "layer %zu: the attention plugin cannot expose its scores",
                            layer);
    if (m->cfg.reversible)
        return fs_error_set(err, FS_ERR_UNSUPPORTED,
                            "layer %zu: a reversible model keeps no attention maps: set [model] reversible = false",
                            layer);
    fs_attention_args a = attention_args(m, layer, layer);
    fs_attention_scores_args sa;
    memset(&sa, 0, sizeof sa);
    sa.struct_size = sizeof sa;
    sa.fwd = &a;
    sa.probs = probs;
    sa.scores = fs_tensor_cpu_f32(out, 4, m->B, m->Ha, m->T, m->T);
    int rc;
    ATTN_CALL(m, layer, "scores", rc = s->vt->scores(s->self, &sa, err));
    return rc;
}

/* ---- backward ---- */

/* Reversible backward of a chunk: dres holds d(y1 + y2)/2. */
static int reversible_backward(fs_model *m, size_t l0, size_t l1, fs_error *err) {
    size_t BTC = m->B * m->T * m->cfg.n_embd;
    float *y1 = m->rev_x1, *y2 = m->rev_x2, *dy1 = m->dres, *dy2 = m->residual2; /* slot 0 is free now */
    for (size_t i = 0; i < BTC; i++) dy2[i] = dy1[i] = 0.5f * dy1[i];
    int rc;
    for (size_t l = l1; l-- > l0;) {
        fs_layer_params *g = &m->lg[l];
        /* y2 = x2 + MLP(y1): recompute, rebuild x2, backward (dy1 += dMLP^T dy2) */
        if ((rc = mlp_forward(m, l, 0, y1, m->scratch, err))) return rc;
        for (size_t i = 0; i < BTC; i++) y2[i] -= m->scratch[i];
        if ((rc = mlp_backward(m, l, 0, y1, dy2, dy1, err))) return rc;
        /* y1 = x1 + Attention(x2): the same with x2 now in y2 */
        if ((rc = attn_forward(m, l, 0, y2, m->scratch, err))) return rc;
        for (size_t i = 0; i < BTC; i++) y1[i] -= m->scratch[i];
        if ((rc = attn_backward(m, l, 0, y2, dy1, dy2, NULL, 0, err))) return rc;
        ready(m, g->ln1w, g->fcprojb + m->cfg.n_embd);
    }
    add_inplace(m->dres, dy2, BTC); /* both halves started as the chunk's input */
    return FS_OK;
}

/* Backward of a chunk's layers from m->dres (d of its output); leaves d of
 * its input in m->dres. */
static int chunk_backward(fs_model *m, size_t chunk, const float *const *dhidden, const float *const *dscores,
                          int probs, fs_error *err) {
    size_t C = m->cfg.n_embd, BTC = m->B * m->T * C, l0 = m->chunk_first[chunk], l1 = m->chunk_first[chunk + 1];
    int rc;
    if (m->cfg.reversible) {
        if (dhidden && dhidden[l1]) add_inplace(m->dres, dhidden[l1], BTC);
        return reversible_backward(m, l0, l1, err);
    }
    for (size_t l = l1; l-- > l0;) {
        fs_layer_params *g = &m->lg[l];
        if (dhidden && dhidden[l + 1]) add_inplace(m->dres, dhidden[l + 1], BTC);
        const float *res = l == l0 ? m->chunk_in + chunk * BTC : m->residual3 + (l - 1) * BTC;
        /* res3 = res2 + mlp(res2); res2 = res + attn(res): dres accumulates both paths */
        if ((rc = mlp_backward(m, l, l, m->residual2 + l * BTC, m->dres, m->dres, err))) return rc;
        if ((rc = attn_backward(m, l, l, res, m->dres, m->dres, dscores ? dscores[l] : NULL, probs, err))) return rc;
        ready(m, g->ln1w, g->fcprojb + C);
    }
    return FS_OK;
}

/* dres = d loss / d (the final hidden state), from m->dlogits. */
static void head_backward(fs_model *m, const float *final) {
    size_t BT = m->B * m->T, C = m->cfg.n_embd, V = m->cfg.vocab;
    /* dlnf = dlogits @ head; dhead += dlogits^T @ lnf */
    fs_sgemm(0, 0, BT, C, V, 1.0f, m->dlogits, V, m->head, C, 0.0f, m->dln, C);
    fs_sgemm(1, 0, V, C, BT, 1.0f, m->dlogits, V, m->lnf, C, 1.0f, m->dhead, C);
    layernorm_backward(m->dres, m->dlnfw, m->dlnfb, m->dln, final, m->lnfw, m->lnf_mean, m->lnf_rstd, BT, C);
    /* an untied head follows ln_f in the block: final with it */
    ready(m, m->dlnfw, m->cfg.untied_head ? m->dhead + V * C : m->dlnfb + C);
}

static const float *chunk_output(const fs_model *m, size_t chunk) {
    size_t BTC = m->B * m->T * m->cfg.n_embd, l0 = m->chunk_first[chunk], l1 = m->chunk_first[chunk + 1];
    if (m->cfg.reversible) return m->rev_mean;
    return l1 > l0 ? m->residual3 + (l1 - 1) * BTC : m->chunk_in + chunk * BTC;
}

static void embed_backward(fs_model *m) {
    size_t C = m->cfg.n_embd;
    encoder_backward(m->dwte, m->dwpe, m->dres, m->inputs, m->B, m->T, C, 0);
    ready(m, m->dwte, m->dwpe + m->cfg.max_seq * C);
}

int fs_model_backward(fs_model *m, const float *const *dhidden, fs_error *err) {
    return fs_model_backward_ex(m, dhidden, NULL, 0, err);
}

int fs_model_backward_ex(fs_model *m, const float *const *dhidden, const float *const *dscores, int probs,
                         fs_error *err) {
    size_t L = m->L, BTC = m->B * m->T * m->cfg.n_embd;
    if (!m->has_embed || !m->has_head || m->n_chunks != 1)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "this model is one pipeline stage: use its stage steps");
    if (m->cfg.reversible) {
        for (size_t i = 0; i < L; i++)
            if ((dhidden && dhidden[i + 1] && i + 1 < L) || (dscores && dscores[i]))
                return fs_error_set(err, FS_ERR_UNSUPPORTED,
                                    "a reversible model keeps no inner hidden states or attention maps: a loss on "
                                    "layer %zu needs [model] reversible = false",
                                    i);
    }
    head_backward(m, chunk_output(m, 0));
    int rc = chunk_backward(m, 0, dhidden, dscores, probs, err);
    if (rc) return rc;
    if (dhidden && dhidden[0]) add_inplace(m->dres, dhidden[0], BTC);
    embed_backward(m);
    return FS_OK;
}

int fs_model_stage_backward(fs_model *m, size_t chunk, const float *dout, float *din, fs_error *err) {
    int embeds = fs_model_chunk_embeds(m, chunk), head = fs_model_chunk_has_head(m, chunk);
    if (chunk >= m->n_chunks || (head ? 0 : !dout) || (embeds ? 0 : !din))
        return fs_error_set(err, FS_ERR_INVALID, "stage backward of chunk %zu: wrong inputs for this chunk", chunk);
    size_t BTC = m->B * m->T * m->cfg.n_embd;
    if (head)
        head_backward(m, chunk_output(m, chunk));
    else
        memcpy(m->dres, dout, BTC * sizeof(float));
    int rc = chunk_backward(m, chunk, NULL, NULL, 0, err);
    if (rc) return rc;
    if (embeds)
        embed_backward(m);
    else
        memcpy(din, m->dres, BTC * sizeof(float));
    return FS_OK;
}

