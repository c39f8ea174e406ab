/* model_internal.h — the model's state, for the model's own files only
 * (model.c: the parameter block and its table; step.c: training forward
 * and backward; decode.c: generation over per-sequence state). Everything
 * else goes through model.h and seq.h. */
#ifndef FS_MODEL_INTERNAL_H
#define FS_MODEL_INTERNAL_H

#include "core/crash.h"
#include "model/model.h"

/* A call into layer l's attention plugin, named if it crashes (crash.h). */
#define ATTN_CALL(m, l, call, statement) \
    FS_PLUGIN_CALL("attention", (m)->attn[l].name, call, (int)(m)->layer_ids[l], statement)

/* The tensors of one block; the same struct points into params or grads. */
typedef struct fs_layer_params {
    float *ln1w, *ln1b;         // (C)
    float *qkvw, *qkvb;         // (C, 3C), (3C)
    float *attprojw, *attprojb; // (C, C), (C)
    float *ln2w, *ln2b;         // (C)
    float *fcw, *fcb;           // (C, 4C), (4C)
    float *fcprojw, *fcprojb;   // (4C, C), (C)
} fs_layer_params;

typedef struct fs_attention_slot {
    const fs_attention_vtable *vt;
    void *self;
    const char *name; /* the plugin's, for the crash report */
    fs_attention_origin origin;
    void **saved; /* (n_slots) what forward saved for backward, per activation slot */
    size_t *saved_cap;
} fs_attention_slot;

/* One float block of reserved address space that grows in place: the
 * parameters (or gradients) of the model, then plugin tensors appended
 * after creation without moving what came before. */
typedef struct fs_float_arena {
    float *base;
    size_t used, committed, reserved; /* floats */
} fs_float_arena;

struct fs_model {
    fs_model_config cfg;
    fs_model_part part;
    size_t L;                 /* layers held (= part.n_layers) */
    size_t *layer_ids;        /* (L) their global indices */
    size_t n_chunks, *chunk_first;
    int has_embed, has_head;
    size_t tp_rank, tp_size;  /* tensor split (1 = none) */
    size_t Ha, Ca, F;         /* heads, attention width and MLP width held: H, C, 4C over tp_size */
    fs_float_arena param_arena, grad_arena;
    fs_param_block block;     /* what fs_model_block returns; views point into `views` */
    float *wte, *wpe, *lnfw, *lnfb;     /* into params */
    float *dwte, *dwpe, *dlnfw, *dlnfb; /* into grads */
    float *head, *dhead;                /* the LM head (V, C): wte, or lm_head.weight when untied */
    fs_layer_params *lp, *lg;           /* (L) into params / grads */
    fs_param_view *views;
    size_t n_views, cap_views;
    size_t n_model_views;      /* views[0, n_model_views) are the model's own, the rest plugins' */
    fs_param_view *full_views; /* the whole, unsharded model's table: what a checkpoint holds */
    size_t n_full_views, n_full_params;
    fs_attention_slot *attn; /* (L) */

    /* Activations for the last forward, sized for act_B x act_T, in n_slots
     * independent blocks (a pipeline keeps several micro-batches between
     * their forward and backward); the pointers below are the current
     * slot's. Widths are the held ones (Ca, F) under tensor parallelism. */
    size_t act_B, act_T, B, T;
    size_t n_slots, slot;
    float **act_blocks;
    float *chunk_in;                   // (n_chunks,B,T,C): each chunk's input
    float *encoded;                    // (B,T,C) = chunk_in of chunk 0
    float *ln1, *ln1_mean, *ln1_rstd;  // (L,B,T,C), (L,B,T)
    float *q, *k, *v;                  // (L,B,H,T,D) each
    float *atty, *attmerged;           // (L,B,H,T,D), (L,B,T,C)
    float *residual2;                  // (L,B,T,C)
    float *ln2, *ln2_mean, *ln2_rstd;  // (L,B,T,C), (L,B,T)
    float *fch, *fch_gelu;             // (L,B,T,4C)
    float *residual3;                  // (L,B,T,C): layer outputs
    float *lnf, *lnf_mean, *lnf_rstd;  // (B,T,C), (B,T)
    float *logits, *dlogits;           // (B,T,V)
    float *scratch;                    // (B,T,4C) forward scratch ((B,T,3C) with ff_chunk)
    size_t ff_rows;                    /* rows of one MLP chunk: ff_chunk, or B*T */
    float *ff_h, *ff_hg;               // (ff_rows,4C) each: one chunk's fc and GELU outputs (ff_chunk)
    float *rev_x1, *rev_x2, *rev_mean; // (B,T,C) each: the reversible stream and its final mean
    void *rev_saved;                   /* one attention saved buffer shared by all layers (reversible) */
    size_t rev_saved_cap;
    size_t act_bytes;                  /* activations + backward scratch, for the memory benchmark */
    int32_t *inputs;                   // (B,T)
    /* backward scratch, one layer's worth */
    float *grad_block;
    float *dres, *dln, *dtmp, *dattmerged, *datty, *dq, *dk, *dv, *dqkv, *dfch, *dfch_gelu;

    fs_grads_ready_fn grads_ready;
    void *grads_ready_arg;
    fs_tensor_reduce_fn tensor_reduce;
    void *tensor_reduce_arg;
};

/* step.c: frees the activation blocks and the attention plugins' saved
 * buffers (fs_model_destroy). */
void fs_model_release_activations(fs_model *m);

/* A (B, H, T, D) CPU tensor. */
static inline fs_tensor fs_bhtd(float *p, size_t B, size_t H, size_t T, size_t D) {
    return fs_tensor_cpu_f32(p, 4, B, H, T, D);
}

#endif
