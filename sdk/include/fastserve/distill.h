/* fastserve/distill.h — the distillation-loss vtable.
 *
 * For one batch the runtime runs the teacher (no gradients) and the student
 * on the same tokens and hands both outputs to the plugin, which returns the
 * loss (a mean over tokens) and its gradient with respect to every student
 * output it used. A plugin asks for more than logits through `needs`:
 * hidden states (embedding output plus every layer's output) and attention
 * maps; the runtime then fills those fields. A plugin may own trainable
 * parameters (register_param in create), such as a projection of the
 * student's width to the teacher's. */
#ifndef FASTSERVE_DISTILL_H
#define FASTSERVE_DISTILL_H

#include "fastserve/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FS_DISTILL_NEEDS_HIDDEN 0x1u    /* hidden states of both models */
#define FS_DISTILL_NEEDS_ATTENTION 0x2u /* attention scores of both models */
/* With FS_DISTILL_NEEDS_ATTENTION: post-softmax probabilities (masked
 * entries 0) instead of pre-softmax scores. */
#define FS_DISTILL_NEEDS_ATTENTION_PROBS 0x4u

typedef struct fs_distill_config {
    uint32_t struct_size;
    size_t vocab;
    size_t student_layers, teacher_layers;
    size_t student_embd, teacher_embd;
    size_t student_heads, teacher_heads;
    size_t max_seq;
    fs_device device;
} fs_distill_config;

typedef struct fs_distill_args {
    uint32_t struct_size;
    size_t B, T, V;                /* N = B * T positions */
    /* (B, T, V). With [distill] teacher_cache only each position's top k
     * are the teacher's; the rest are -1e30, probability 0 at any
     * temperature (skip them rather than form 0 * log 0). */
    fs_tensor teacher_logits;
    fs_tensor student_logits;      /* (B, T, V) */
    const int32_t *labels;         /* (B, T) next-token targets */
    fs_tensor dstudent_logits;     /* (B, T, V): written, d loss / d student logits */
    /* FS_DISTILL_NEEDS_HIDDEN: index 0 is the embedding output, i the output
     * of layer i (before the final LayerNorm); (B, T, C) each. The plugin
     * writes d loss / d hidden into dstudent_hidden (zeroed by the host). */
    const fs_tensor *teacher_hidden; /* teacher_layers + 1 */
    const fs_tensor *student_hidden; /* student_layers + 1 */
    fs_tensor *dstudent_hidden;      /* student_layers + 1 */
    /* FS_DISTILL_NEEDS_ATTENTION: per layer (B, H, T, T) pre-softmax scores
     * with masked entries 0 (probabilities with ..._PROBS); dstudent_attention
     * as dstudent_hidden. Each model's own H: heads may differ. */
    const fs_tensor *teacher_attention; /* teacher_layers */
    const fs_tensor *student_attention; /* student_layers */
    fs_tensor *dstudent_attention;      /* student_layers */
} fs_distill_args;

typedef struct fs_distill_vtable {
    uint32_t struct_size;
    int (*create)(void **self, const fs_host_api *host, fs_plugin_ctx *ctx,
                  const fs_distill_config *cfg, fs_error *err);
    void (*destroy)(void *self);
    uint32_t (*needs)(void *self); /* FS_DISTILL_NEEDS_* */
    /* Returns the mean loss over the B * T positions in *loss. */
    int (*loss)(void *self, fs_distill_args *args, double *loss, fs_error *err);

    /* Optional: training in phases, each a run of its own (its own steps,
     * lr schedule and optimizer state; the student's weights carry over),
     * as TinyBERT distils the intermediate layers first and the prediction
     * layer after. phases() returns how many there are (1 when absent) and
     * writes up to `cap` names (static strings) and step counts for a run
     * whose [train] steps are `total_steps`; set_phase() selects one before
     * its training starts, and needs() may answer differently afterwards. */
    size_t (*phases)(void *self, uint64_t total_steps, const char **names, uint64_t *steps, size_t cap);
    int (*set_phase)(void *self, size_t phase, fs_error *err);
} fs_distill_vtable;

#ifdef __cplusplus
}
#endif
#endif
