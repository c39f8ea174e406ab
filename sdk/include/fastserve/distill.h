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
    fs_tensor teacher_logits;      /* (B, T, V) */
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
     * with masked entries 0; dstudent_attention as dstudent_hidden. */
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
} fs_distill_vtable;

#ifdef __cplusplus
}
#endif
#endif
