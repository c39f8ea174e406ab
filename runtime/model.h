/* model.h — the GPT-2 model: parameters, forward, backward, decode.
 *
 * Architecture: token + learned position embeddings, pre-LayerNorm blocks
 * (eps 1e-5) of causal multi-head attention through each layer's attention
 * plugin and a 4x MLP with tanh-GELU, a final LayerNorm and an LM head tied
 * to the token embedding. fp32.
 *
 * All parameters live in one block (and their gradients in another) laid
 * out as [wte][wpe][layer 0]...[layer L-1][ln_f], each layer's tensors
 * contiguous, so the gradients of a layer form one range that becomes final
 * as soon as that layer's backward is done: the hook a data-parallel
 * strategy overlaps its all-reduce with. Tensor layouts follow Hugging
 * Face's GPT2LMHeadModel (Conv1D weights stored (in, out)), so checkpoints
 * need no transposes. */
#ifndef FS_MODEL_H
#define FS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/attention.h"

typedef struct fs_model_config {
    size_t vocab, max_seq, n_layer, n_head, n_embd;
} fs_model_config;

/* The tensors of one block; the same struct points into params or grads. */
typedef struct fs_layer_params {
    float *ln1w, *ln1b;         // (C)
    float *qkvw, *qkvb;         // (C, 3C), (3C)
    float *attprojw, *attprojb; // (C, C), (C)
    float *ln2w, *ln2b;         // (C)
    float *fcw, *fcb;           // (C, 4C), (4C)
    float *fcprojw, *fcprojb;   // (4C, C), (C)
} fs_layer_params;

#define FS_LAYER_TENSORS 12

/* One named tensor of the parameter block, for checkpoints and tests. */
typedef struct fs_param_view {
    char name[96]; /* Hugging Face name, e.g. transformer.h.0.attn.c_attn.weight */
    int ndim;
    size_t shape[2];
    size_t offset, numel; /* into the block, in floats */
    int weight_decay;     /* matrices and embeddings yes; biases and LayerNorm no */
} fs_param_view;

typedef struct fs_attention_slot {
    const fs_attention_vtable *vt;
    void *self;
    void *saved;
    size_t saved_cap;
    void *cache;
} fs_attention_slot;

typedef void (*fs_grads_ready_fn)(void *arg, size_t offset, size_t count);

typedef struct fs_model {
    fs_model_config cfg;
    size_t n_params;
    float *params, *grads;
    float *wte, *wpe, *lnfw, *lnfb;     /* into params */
    float *dwte, *dwpe, *dlnfw, *dlnfb; /* into grads */
    fs_layer_params *lp, *lg;           /* (L) into params / grads */
    fs_param_view *views;
    size_t n_views;
    fs_attention_slot *attn; /* (L) */

    /* Activations for the last forward, sized for act_B x act_T. */
    size_t act_B, act_T, B, T;
    float *act_block;
    float *encoded;                    // (B,T,C)
    float *ln1, *ln1_mean, *ln1_rstd;  // (L,B,T,C), (L,B,T)
    float *q, *k, *v;                  // (L,B,H,T,D) each
    float *atty, *attmerged;           // (L,B,H,T,D), (L,B,T,C)
    float *residual2;                  // (L,B,T,C)
    float *ln2, *ln2_mean, *ln2_rstd;  // (L,B,T,C), (L,B,T)
    float *fch, *fch_gelu;             // (L,B,T,4C)
    float *residual3;                  // (L,B,T,C): layer outputs
    float *lnf, *lnf_mean, *lnf_rstd;  // (B,T,C), (B,T)
    float *logits, *dlogits;           // (B,T,V)
    float *scratch;                    // (B,T,4C) forward scratch
    int32_t *inputs;                   // (B,T)
    /* backward scratch, one layer's worth */
    float *grad_block;
    float *dres, *dln, *dtmp, *dattmerged, *datty, *dq, *dk, *dv, *dqkv, *dfch, *dfch_gelu;

    /* decode (generation) state */
    size_t dec_B, dec_context;
    float *dec_block;

    fs_grads_ready_fn grads_ready;
    void *grads_ready_arg;
} fs_model;

int fs_model_create(fs_model **out, const fs_model_config *cfg, fs_error *err);
void fs_model_destroy(fs_model *m); /* also destroys attached attention instances */

/* Hands layer `layer`'s attention instance to the model (it destroys it). */
void fs_model_attach_attention(fs_model *m, size_t layer, const fs_attention_vtable *vt, void *self);

/* GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by
 * 1/sqrt(2 L), zero biases, unit LayerNorm weights. */
void fs_model_init_weights(fs_model *m, uint64_t seed);

/* Lets attention plugins initialise their own parameters from the freshly
 * initialised layer weights (fs_attention_vtable.init_params). */
int fs_model_init_plugin_params(fs_model *m, fs_error *err);

/* inputs (B,T) token ids < vocab, T <= max_seq. Fills m->logits. */
int fs_model_forward(fs_model *m, const int32_t *inputs, size_t B, size_t T, fs_error *err);
/* Mean cross-entropy of the last forward against targets (B,T); writes
 * m->dlogits = d(loss * dscale) / dlogits. Returns the mean loss. */
double fs_model_loss(fs_model *m, const int32_t *targets, float dscale);
void fs_model_zero_grad(fs_model *m);
/* Backward from m->dlogits, accumulating into m->grads. dhidden, when not
 * NULL, holds L + 1 extra gradients (B,T,C) for the embedding output and each
 * layer's output (NULL entries are skipped): distillation losses on hidden
 * states enter here. */
int fs_model_backward(fs_model *m, const float *const *dhidden, fs_error *err);
/* The same with, when dscores is not NULL, d loss / d attention scores
 * (B,H,T,T) per layer (NULL entries skipped; `probs` as in
 * fs_model_attention_scores), sent through the layer's plugin's
 * scores_backward: distillation losses on attention maps enter here. */
int fs_model_backward_ex(fs_model *m, const float *const *dhidden, const float *const *dscores, int probs,
                         fs_error *err);
/* Layer `layer`'s attention map of the last forward through its plugin's
 * scores(): (B,H,T,T) pre-softmax scores with masked entries 0, or
 * probabilities when probs is 1. FS_ERR_UNSUPPORTED when the plugin has
 * no FS_ATTENTION_SCORES. */
int fs_model_attention_scores(fs_model *m, size_t layer, int probs, float *out, fs_error *err);

/* Hidden state i of the last forward: 0 = embedding output, l = output of
 * layer l - 1 (B,T,C). */
const float *fs_model_hidden(const fs_model *m, size_t i);

/* Generation: caches for B sequences of up to `context` tokens (0 = the
 * plugins' own bound), then one token per call at consecutive positions. */
int fs_model_decode_begin(fs_model *m, size_t B, size_t context, fs_error *err);
/* tokens (B) at position pos -> logits (B,V). */
int fs_model_decode_step(fs_model *m, const int32_t *tokens, size_t pos, float *logits, fs_error *err);
size_t fs_model_cache_bytes(const fs_model *m);
/* 1 when every layer's plugin keeps a bounded cache
 * (FS_ATTENTION_BOUNDED_CACHE): decoding may then go past max_seq. */
int fs_model_cache_bounded(const fs_model *m);

#endif
