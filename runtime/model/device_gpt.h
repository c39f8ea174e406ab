/* device_gpt.h — the GPT-2 model on a compute backend: forward, loss,
 * backward and AdamW with every tensor in the backend's memory and every
 * op a vtable call (fastserve/backend.h).
 *
 * It is what `fsrun --mode train` runs when [run] device names a backend's
 * device (modes/train_device.c), and what the backends' tests and
 * bench_backend run:
 *   - tests/unit/test_backend_gpt.c checks it on the cpu backend against
 *     the PyTorch fixtures (logits, loss, every gradient, two AdamW steps);
 *   - tests/gpu runs the same on CUDA (fp32, tf32, bf16), two NCCL ranks
 *     against one, and bf16 training against fp32's loss curve;
 *   - bench/bench_backend.c measures GPT-2-small training on it.
 * The model is model/model.c's (make_fixtures.py's): learned positions,
 * pre-LayerNorm blocks, tanh-GELU, the head tied to wte or its own
 * lm_head.weight, and the tensors attention plugins register (longformer's
 * global projections, lsh's rotations). What model.c adds for the CPU
 * alone (reversible layers, tensor and pipeline shards, hidden-state hooks
 * for distillation) is not here: the trainer refuses those graphs on a
 * device.
 *
 * Attention goes through each layer's attention plugin, created for the
 * backend's device. Parameters are one flat f32 block in model.c's order
 * and Hugging Face's layout (Conv1D weights (in, out)); the tensors the
 * plugins register have device buffers of their own (their values,
 * gradients and moments) and, in the host's view, follow the block in
 * registration order, as in model.c's. So the trainer moves the whole
 * state to and from the CPU model's block in one call; with BF16 activations
 * the matrices are also kept as a bf16 copy GEMMs read, which AdamW
 * refreshes: f32 master weights, gradients and moments. */
#ifndef FS_DEVICE_GPT_H
#define FS_DEVICE_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "core/backend_handle.h"
#include "fastserve/attention.h"
#include "fastserve/backend.h"

/* One layer's attention when the caller has loaded its plugin (a
 * session's [attention] and [layer.*] sections). */
typedef struct fs_device_gpt_attention {
    const fs_attention_vtable *vt;
    const char *name;        /* the plugin's, for messages and its context */
    const fs_config *config; /* its resolved keys */
} fs_device_gpt_attention;

typedef struct fs_device_gpt_config {
    size_t V, maxT, L, H, C; /* the model */
    size_t B, T;             /* the batch: forward takes up to B rows of T tokens */
    int32_t dtype;           /* activations: FS_DTYPE_F32 or FS_DTYPE_BF16 */
    int32_t compute;         /* fs_gemm_compute of f32 GEMMs */
    const char *attention;   /* attention plugin, NULL: dense */
    const fs_config *attention_config; /* its keys (fs_config_resolve against its params), or NULL */
    /* since the trainer: each layer's own plugin (L entries; `attention`
     * is then unused) and the host their contexts see (NULL: the handle's) */
    const fs_device_gpt_attention *layers;
    fs_host *host;
    int untied_head; /* lm_head.weight (V, C) after ln_f instead of the tied wte */
} fs_device_gpt_config;

typedef struct fs_device_gpt fs_device_gpt;

int fs_device_gpt_create(fs_device_gpt **out, fs_backend_handle *b, const fs_device_gpt_config *cfg, fs_error *err);
void fs_device_gpt_destroy(fs_device_gpt *m); /* accepts NULL */

/* The parameter tensors in block order, then the plugins' in the order
 * they registered: Hugging Face names ("transformer.h.0.attn.c_attn.weight",
 * "plugin.layer0.attention.rotations"), offsets into the host's view and
 * sizes in floats, and whether AdamW decays them. n_params: all of them. */
size_t fs_device_gpt_n_tensors(const fs_device_gpt *m);
const char *fs_device_gpt_tensor_name(const fs_device_gpt *m, size_t i);
size_t fs_device_gpt_tensor_offset(const fs_device_gpt *m, size_t i);
size_t fs_device_gpt_tensor_numel(const fs_device_gpt *m, size_t i);
size_t fs_device_gpt_n_params(const fs_device_gpt *m);

/* Host <-> device: every tensor, in the host's view (n_params floats). */
int fs_device_gpt_set_params(fs_device_gpt *m, const float *params, fs_error *err);
int fs_device_gpt_get_params(fs_device_gpt *m, float *params, fs_error *err);
int fs_device_gpt_get_grads(fs_device_gpt *m, float *grads, fs_error *err);
int fs_device_gpt_set_grads(fs_device_gpt *m, const float *grads, fs_error *err);
/* (B, T, V) f32 logits of the last forward. */
int fs_device_gpt_get_logits(fs_device_gpt *m, float *logits, fs_error *err);

/* Forward over inputs (B, T) host ids; with targets (host) the mean
 * cross-entropy into *loss and the logits' gradient for backward. */
int fs_device_gpt_forward(fs_device_gpt *m, const int32_t *inputs, const int32_t *targets, double *loss, fs_error *err);
/* The same over the first B rows (B <= the config's), with the loss's
 * gradient scaled by dscale (1 / micro-batches: gradients accumulate). */
int fs_device_gpt_forward_rows(fs_device_gpt *m, const int32_t *inputs, const int32_t *targets, size_t B, float dscale,
                               double *loss, fs_error *err);
int fs_device_gpt_zero_grad(fs_device_gpt *m, fs_error *err);
/* Accumulates every parameter's gradient (needs a forward with targets). */
int fs_device_gpt_backward(fs_device_gpt *m, fs_error *err);
/* Told by backward, as it queues them, that the gradients of block floats
 * [lo, hi) are complete: ln_f with an untied head first, then each layer
 * from the last, then the embeddings (the tied wte takes the head's share
 * before). Queued, not run: what uses them goes on the model's stream or
 * after an event recorded there, as DDP's buckets do. The plugins' own
 * tensors are not reported. NULL: nothing called. */
typedef int (*fs_device_gpt_grads_ready_fn)(void *arg, size_t lo, size_t hi, fs_error *err);
void fs_device_gpt_on_grads_ready(fs_device_gpt *m, fs_device_gpt_grads_ready_fn fn, void *arg);
/* One AdamW step (t 1-based), decay on the matrices and embeddings, of the
 * gradients scaled by grad_scale first (global-norm clipping). */
int fs_device_gpt_adamw(fs_device_gpt *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                        float grad_scale, uint64_t t, fs_error *err);
/* AdamW's moments (fs_device_gpt_n_params floats each), host <-> device: what a
 * checkpoint saves and a resumed run starts from. */
int fs_device_gpt_get_moments(fs_device_gpt *m, float *m1, float *m2, fs_error *err);
int fs_device_gpt_set_moments(fs_device_gpt *m, const float *m1, const float *m2, fs_error *err);
/* The device's name and sizes, for the trainer's log and summary. */
int fs_device_gpt_device_info(fs_device_gpt *m, fs_backend_device_info *info, fs_error *err);
/* The global L2 norm of the gradients. */
int fs_device_gpt_grad_norm(fs_device_gpt *m, double *norm, fs_error *err);
/* The gradient block on the device (the model's own tensors, without the
 * plugins'), for collectives. */
float *fs_device_gpt_device_grads(fs_device_gpt *m);
/* Every gradient buffer on the device, for collectives: 0 is the block,
 * then each plugin tensor that has its own; *n gets its floats. */
size_t fs_device_gpt_n_grad_buffers(const fs_device_gpt *m);
float *fs_device_gpt_grad_buffer(fs_device_gpt *m, size_t i, size_t *n);
/* Waits for everything queued. */
int fs_device_gpt_sync(fs_device_gpt *m, fs_error *err);
/* Flops of one training step (forward + backward) by the standard count:
 * 6 per parameter per token plus attention's 12 * L * C * T per token
 * (causal attention does half: PaLM's appendix). */
double fs_device_gpt_train_flops(const fs_device_gpt *m);

#endif
