/* model.h — the GPT-2 model: its weights, forward, backward and the
 * pieces a parallel strategy cuts it into.
 *
 * Architecture: token + learned position embeddings, pre-LayerNorm blocks
 * (eps 1e-5) of causal multi-head attention through each layer's attention
 * plugin and a 4x MLP with tanh-GELU, a final LayerNorm and an LM head tied
 * to the token embedding (or its own matrix, cfg.untied_head). fp32.
 *
 * All parameters live in one block (and their gradients in another) laid
 * out as [wte][wpe][layer 0]...[layer L-1][ln_f][plugin-owned tensors],
 * each layer's tensors contiguous, so the gradients of a layer form one
 * range that becomes final as soon as that layer's backward is done: the
 * hook a data-parallel strategy overlaps its all-reduce with. Tensors that
 * plugins register (fs_host_api.register_param) are placed at the end of
 * the same block, so the optimizer, the strategies and checkpoints treat
 * them like the model's own. Tensor layouts follow Hugging Face's
 * GPT2LMHeadModel (Conv1D weights stored (in, out)), so checkpoints need no
 * transposes.
 *
 * fs_model is opaque: the rest of the runtime reads the parameter block
 * through fs_model_block() and the shape through fs_model_cfg() and
 * fs_model_held(). The weights are read-only while generating: each
 * sequence keeps its own decoding state (seq.h), so several sequences run
 * over one model. Training state (activations of the last forward) is the
 * model's, one forward/backward at a time. */
#ifndef FS_MODEL_H
#define FS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/attention.h"

/* How a parallel strategy cuts the model; all zero = the whole model.
 * Tensor parallelism (Megatron-LM): each layer's heads and MLP hidden units
 * are split tp_size ways (c_attn and c_fc by columns — c_attn's Q, K and V
 * blocks each —, both c_proj by rows); LayerNorms, the row-parallel biases,
 * the embeddings and the tied head are replicated. The model sums the
 * partial outputs of the row-parallel matmuls in forward and the partial
 * input gradients of the column-parallel ones in backward through the
 * tensor_reduce hook. Pipeline parallelism: the model holds only some
 * layers, grouped in chunks (virtual stages); the first chunk of the first
 * stage embeds tokens, the last of the last stage holds ln_f and the head
 * (and its own copy of the tied wte). */
typedef struct fs_model_shard {
    size_t tp_rank, tp_size;   /* 0 and 0 or 1: no split */
    size_t n_local;            /* layers held; 0 = all */
    const size_t *layer_ids;   /* (n_local) their global indices, increasing */
    size_t n_chunks;           /* chunks the held layers form (0 = 1) */
    const size_t *chunk_first; /* (n_chunks + 1) local index where chunk c starts; the last = n_local */
    int has_embed, has_head;   /* with n_local != 0: this model embeds tokens / computes the loss */
} fs_model_shard;

typedef struct fs_model_config {
    size_t vocab, max_seq, n_layer, n_head, n_embd;
    fs_model_shard shard; /* copied by fs_model_create */
    /* Reversible residual layers (Reformer): the stream is a pair (x1, x2),
     * both the embedding output at the start; a layer computes
     *   y1 = x1 + Attention(x2),  y2 = x2 + MLP(y1)
     * with GPT-2's sublayers (same tensors, so checkpoints keep Hugging
     * Face's names and shapes), and the final LayerNorm reads (y1 + y2) / 2.
     * Backward rebuilds x2 = y2 - MLP(y1), then x1 = y1 - Attention(x2),
     * recomputing each sublayer just before its backward: only one layer's
     * activations exist at a time, so activation memory does not grow with
     * n_layer. Hidden states and attention maps of inner layers are not
     * kept (no hidden-state distillation losses on a reversible student). */
    int reversible;
    /* MLP applied ff_chunk tokens (rows of B*T) at a time, forward and
     * backward (which recomputes the chunk's fc and GELU): its (B,T,4C)
     * activations never exist whole. 0 = all rows at once. */
    size_t ff_chunk;
    /* The LM head is its own tensor, lm_head.weight (V, C), after ln_f in
     * the block, rather than wte (GPT-2 ties them; Hugging Face configs say
     * tie_word_embeddings = false). 0 = tied. */
    int untied_head;
} fs_model_config;

#define FS_LAYER_TENSORS 12

/* How a tensor is cut by tensor parallelism. */
enum {
    FS_SPLIT_NONE = 0, /* replicated */
    FS_SPLIT_COLS = 1, /* columns (the only axis of a 1-D tensor) in tp_size contiguous parts */
    FS_SPLIT_QKV = 2,  /* c_attn: its Q, K and V column blocks, each cut like FS_SPLIT_COLS */
    FS_SPLIT_ROWS = 3, /* rows in tp_size contiguous parts */
};

/* One named tensor of the parameter block, for checkpoints and tests. */
typedef struct fs_param_view {
    char name[96]; /* Hugging Face name, e.g. transformer.h.0.attn.c_attn.weight */
    int ndim;      /* 1..4 (the model's own tensors: 1 or 2) */
    size_t shape[4];      /* what this model holds (unused trailing dimensions 1) */
    size_t offset, numel; /* into the block, in floats */
    int weight_decay;     /* matrices and embeddings yes; biases and LayerNorm no */
    size_t full_shape[4]; /* the whole tensor (= shape without tensor parallelism) */
    int split;            /* FS_SPLIT_* */
    int plugin;           /* registered by a plugin (fs_host_api.register_param) */
} fs_param_view;

/* The parameter block as the rest of the runtime sees it: parameters and
 * gradients (n floats each, 64-byte aligned), the table of the tensors this
 * model holds in block order, and the table of the whole, unsharded model
 * (what a checkpoint holds; the same as views without a split). */
typedef struct fs_param_block {
    float *params, *grads;
    size_t n;
    const fs_param_view *views;
    size_t n_views;
    const fs_param_view *full_views;
    size_t n_full_views, n_full;
    size_t n_plugin; /* floats of plugin-registered tensors (the block's tail) */
} fs_param_block;

/* What this process holds of the model under a parallel split. */
typedef struct fs_model_part {
    size_t n_layers;          /* layers held (cfg.n_layer unless pipelined) */
    const size_t *layer_ids;  /* (n_layers) their global indices */
    size_t n_chunks;          /* model chunks (virtual pipeline stages) held */
    int has_embed, has_head;  /* embeds tokens / holds ln_f, the head and the loss */
    size_t tp_rank, tp_size;  /* tensor split (tp_size 1 = none) */
    size_t n_head, attn_width, ff_width; /* heads, attention width and MLP width held: H, C, 4C over tp_size */
} fs_model_part;

/* FS_SPLIT_* of a tensor by its name under tensor parallelism. */
int fs_model_tensor_split(const char *name);
/* The view of one tensor rank's part of `whole` (an unsharded view). */
void fs_param_view_part(const fs_param_view *whole, int split, size_t tp_size, fs_param_view *part);

/* This rank's part (v->shape) of the whole tensor (v->full_shape), and back. */
void fs_param_view_extract(const fs_param_view *v, size_t tp_rank, size_t tp_size, const float *full, float *part);
void fs_param_view_insert(const fs_param_view *v, size_t tp_rank, size_t tp_size, const float *part, float *full);

typedef struct fs_model fs_model;

typedef void (*fs_grads_ready_fn)(void *arg, size_t offset, size_t count);
/* Sums x (n floats) over the tensor-parallel group, in place. */
typedef int (*fs_tensor_reduce_fn)(void *arg, float *x, size_t n, fs_error *err);

int fs_model_create(fs_model **out, const fs_model_config *cfg, fs_error *err);
void fs_model_destroy(fs_model *m); /* accepts NULL; also destroys attached attention instances */

const fs_model_config *fs_model_cfg(const fs_model *m);
/* What this process holds of the model. */
const fs_model_part *fs_model_held(const fs_model *m);
const fs_param_block *fs_model_block(const fs_model *m);
/* A held tensor by name (NULL when this model does not hold it). */
const fs_param_view *fs_model_find(const fs_model *m, const char *name);

/* Where a layer's attention instance comes from: its plugin (core/
 * plugin_loader.h: its name names the layer's calls in a crash report; its
 * ABI version and file, fs_model_servable's refusals), the layer's
 * configuration (the file:line messages point to) and whether the
 * instance was created causal. Both pointers outlive the model. */
struct fs_plugin;
struct fs_config;
typedef struct fs_attention_origin {
    const struct fs_plugin *plugin;
    const struct fs_config *config;
    int causal;
} fs_attention_origin;

/* Hands layer `layer` (local index) its attention instance (the model
 * destroys it), and reads it back. */
void fs_model_attach_attention(fs_model *m, size_t layer, const fs_attention_vtable *vt, void *self,
                               const fs_attention_origin *origin);
const fs_attention_vtable *fs_model_attention(const fs_model *m, size_t layer, void **self);

/* Places a plugin's tensor in the block's tail (zero-filled; param and
 * grad point into the parameter and gradient blocks). For the host's
 * register_param: the block reserves address space up front, so the
 * tensors of earlier calls never move. */
int fs_model_add_plugin_param(fs_model *m, const char *name, int32_t ndim, const size_t *shape, int weight_decay,
                              float **param, float **grad, fs_error *err);

/* Called with each range of the gradient block as soon as backward has
 * made it final (NULL: nobody listens). */
void fs_model_on_grads_ready(fs_model *m, fs_grads_ready_fn fn, void *arg);
/* The tensor-parallel all-reduce (required when tp_size > 1). */
void fs_model_set_tensor_reduce(fs_model *m, fs_tensor_reduce_fn fn, void *arg);

/* Bytes of activation storage the last forward/backward used: the
 * activation block, backward scratch and the attention plugins' saved
 * buffers (parameters, gradients and optimizer state excluded). */
size_t fs_model_activation_bytes(const fs_model *m);

/* Activation slots (default 1); call before the first forward. */
int fs_model_set_slots(fs_model *m, size_t n, fs_error *err);
void fs_model_use_slot(fs_model *m, size_t slot);

/* Pipeline stage steps on the current slot. Forward of chunk `chunk`: the
 * micro-batch's tokens (B,T) always (plugins may read token ids); it embeds
 * them when the chunk is the first, else starts from x_in (B,T,C); then, when it holds
 * the head, the loss against targets (mean over B*T, returned in *loss,
 * d loss * dscale kept for backward), else its output into x_out (B,T,C).
 * Backward: from the loss or from dout (B,T,C); d input into din (B,T,C)
 * unless the chunk embeds. */
int fs_model_stage_forward(fs_model *m, size_t chunk, const int32_t *tokens, const float *x_in,
                           const int32_t *targets, size_t B, size_t T, float dscale, double *loss, float *x_out,
                           fs_error *err);
int fs_model_stage_backward(fs_model *m, size_t chunk, const float *dout, float *din, fs_error *err);
/* 1 when the chunk embeds tokens / holds the head. */
int fs_model_chunk_embeds(const fs_model *m, size_t chunk);
int fs_model_chunk_has_head(const fs_model *m, size_t chunk);

/* GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by
 * 1/sqrt(2 L), zero biases, unit LayerNorm weights. A sharded model draws
 * the whole model's numbers in the same order and keeps its part, so every
 * split starts from the weights of the single-process run. Plugin tensors
 * are left to their plugins. */
void fs_model_init_weights(fs_model *m, uint64_t seed);

/* Lets attention plugins initialise their own parameters from the freshly
 * initialised layer weights (fs_attention_vtable.init_params). */
int fs_model_init_plugin_params(fs_model *m, fs_error *err);

/* inputs (B,T) token ids < vocab, T <= max_seq. Fills the logits. */
int fs_model_forward(fs_model *m, const int32_t *inputs, size_t B, size_t T, fs_error *err);
/* The last forward's logits (B,T,V), and d loss / d logits for backward
 * (written by fs_model_loss, or by a caller with its own loss). */
const float *fs_model_logits(const fs_model *m);
float *fs_model_dlogits(fs_model *m);
/* Mean cross-entropy of the last forward against targets (B,T); writes
 * dlogits = d(loss * dscale) / dlogits. Returns the mean loss. */
double fs_model_loss(fs_model *m, const int32_t *targets, float dscale);
void fs_model_zero_grad(fs_model *m);
/* Backward from the dlogits, accumulating into the gradient block.
 * dhidden, when not NULL, holds L + 1 extra gradients (B,T,C) for the
 * embedding output and each layer's output (NULL entries are skipped):
 * distillation losses on hidden states enter here. */
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

/* 1 when every layer's plugin keeps a bounded cache
 * (FS_ATTENTION_BOUNDED_CACHE): decoding may then go past max_seq. */
int fs_model_cache_bounded(const fs_model *m);

#endif
