/* fastserve/attention.h — the attention plugin vtable.
 *
 * The runtime projects each layer's input to Q, K and V, one (B, H, T, D)
 * tensor each, and hands them to the layer's attention plugin, which
 * computes the (B, H, T, D) output and, in training, the gradients of Q, K
 * and V. The runtime then merges heads and applies the output projection.
 *
 * Memory the plugin needs between forward and backward ("saved") and for
 * generation ("cache") is allocated by the host at the size the plugin asks
 * for, on the model's device, so the plugin owns the layout but not the
 * allocation. One instance serves one layer.
 *
 * Arguments travel in structs that open with their size, so they can grow at
 * the end like the vtable. */
#ifndef FASTSERVE_ATTENTION_H
#define FASTSERVE_ATTENTION_H

#include "fastserve/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Capabilities, in fs_attention_vtable.flags. */
#define FS_ATTENTION_CAUSAL 0x1u        /* supports causal masking */
#define FS_ATTENTION_BIDIRECTIONAL 0x2u /* supports non-causal attention */
#define FS_ATTENTION_DECODE 0x4u        /* implements the decode step */
#define FS_ATTENTION_SHARED_QK 0x8u     /* ignores K (keys derived from Q) */
#define FS_ATTENTION_SCORES 0x10u       /* implements scores() */
#define FS_ATTENTION_USES_INPUT 0x20u   /* reads the layer input x (own projections) */
/* The decode cache is bounded: cache_bytes does not depend on max_context
 * and decode accepts any position. When every layer's plugin says so, the
 * runtime generates past [model] max_seq (cache_reset gets max_context 0).
 * Learned position embeddings end at max_seq, so past it the runtime feeds
 * the embedding of a position that cycles through the second half of the
 * table: position p >= max_seq embeds as h + (p - h) mod (max_seq - h),
 * h = max_seq / 2. A window shorter than max_seq - h then sees positions in
 * trained order except across one wrap. decode_args.pos stays absolute. */
#define FS_ATTENTION_BOUNDED_CACHE 0x40u

/* What the instance is for; fixed at create. */
typedef struct fs_attention_config {
    uint32_t struct_size;
    int32_t layer;      /* 0-based layer index */
    size_t n_head;      /* H */
    size_t head_dim;    /* D */
    size_t n_embd;      /* C = H * D */
    size_t max_seq;     /* longest T forward will see */
    int32_t causal;     /* 1: token t sees tokens <= t only */
    fs_device device;
} fs_attention_config;

typedef struct fs_attention_args {
    uint32_t struct_size;
    size_t B, T;             /* batch, tokens (T <= max_seq) */
    fs_tensor q, k, v;       /* (B, H, T, D) */
    fs_tensor out;           /* (B, H, T, D), written by forward; backward gets it back as
                              * forward left it (dense reads it: rowsum(dout * out)) */
    void *saved;             /* saved_bytes(B, T) bytes: forward writes, backward reads */
    const int32_t *tokens;   /* (B, T) token ids, may be NULL */
    /* backward only: dq, dk, dv are overwritten (not accumulated). */
    fs_tensor dout;          /* (B, H, T, D) */
    fs_tensor dq, dk, dv;    /* (B, H, T, D) */
    /* FS_ATTENTION_USES_INPUT: the normalised layer input the runtime
     * projected Q, K, V from, and in backward its gradient, which the plugin
     * accumulates into (+=); otherwise both are empty (data NULL). */
    fs_tensor x;             /* (B, T, C) */
    fs_tensor dx;            /* (B, T, C) */
} fs_attention_args;

typedef struct fs_attention_decode_args {
    uint32_t struct_size;
    size_t B;
    size_t pos;            /* absolute position of the new token, 0-based */
    fs_tensor q, k, v;     /* (B, H, 1, D) for the new token */
    fs_tensor out;         /* (B, H, 1, D) */
    int32_t token;         /* the new token's id when B == 1, else -1 */
    fs_tensor x;           /* (B, 1, C) normalised input (FS_ATTENTION_USES_INPUT) */
} fs_attention_decode_args;

/* Attention probabilities or scores for distillation: (B, H, T, T) dense
 * pre-softmax scores with masked entries set to 0 (`probs` = 0) or
 * post-softmax probabilities (`probs` = 1). Written from the saved state
 * of the last forward with the same args. */
typedef struct fs_attention_scores_args {
    uint32_t struct_size;
    const fs_attention_args *fwd;
    int32_t probs;
    fs_tensor scores; /* (B, H, T, T) */
} fs_attention_scores_args;

typedef struct fs_attention_vtable {
    uint32_t struct_size;
    uint32_t flags; /* FS_ATTENTION_* */

    int (*create)(void **self, const fs_host_api *host, fs_plugin_ctx *ctx,
                  const fs_attention_config *cfg, fs_error *err);
    void (*destroy)(void *self); /* accepts NULL */

    size_t (*saved_bytes)(void *self, size_t B, size_t T);
    int (*forward)(void *self, fs_attention_args *args, fs_error *err);
    int (*backward)(void *self, fs_attention_args *args, fs_error *err);

    /* Generation. cache_bytes may be independent of max_context for plugins
     * with a bounded cache. Positions in decode are consecutive from 0 after
     * cache_reset. `max_context` of 0 asks for the plugin's bounded size. */
    size_t (*cache_bytes)(void *self, size_t B, size_t max_context);
    int (*cache_reset)(void *self, void *cache, size_t B, size_t max_context, fs_error *err);
    int (*decode)(void *self, void *cache, fs_attention_decode_args *args, fs_error *err);

    /* Optional (FS_ATTENTION_SCORES). */
    int (*scores)(void *self, fs_attention_scores_args *args, fs_error *err);

    /* Optional: initialise plugin-owned parameters from the layer's own
     * QKV projection, c_attn_weight (C, 3C) and c_attn_bias (3C), Hugging
     * Face layout. Called once for a fresh run, after the runtime
     * initialised its weights; not called when weights come from a
     * checkpoint (which holds the plugin's parameters too). */
    int (*init_params)(void *self, const fs_tensor *c_attn_weight, const fs_tensor *c_attn_bias, fs_error *err);

    /* Optional (with FS_ATTENTION_SCORES), for distillation losses on
     * attention maps: the backward of scores(). args->scores holds
     * d loss / d scores (B, H, T, T) in the layout scores() writes, for the
     * forward args->fwd and the same `probs`; entries scores() masks are
     * ignored. The plugin ADDS the resulting gradients into fwd->dq and
     * fwd->dk (and fwd->dx for FS_ATTENTION_USES_INPUT plugins): the runtime
     * calls it right after backward() of the same layer, so the buffers
     * already hold the output's gradients. */
    int (*scores_backward)(void *self, const fs_attention_scores_args *args, fs_error *err);
} fs_attention_vtable;

#ifdef __cplusplus
}
#endif
#endif
