/* gpt_backend.h — GPT-2 training (forward, loss, backward, AdamW) composed
 * from a compute backend's ops alone, for the tests and benchmarks of
 * backends.
 *
 * It runs the model exactly as make_fixtures.py writes it down (and as
 * runtime/model/step.c computes it on the CPU) with every tensor in the
 * backend's memory and every op a vtable call, so:
 *   - tests/unit/test_backend_gpt.c checks the cpu backend's ops, composed,
 *     against the PyTorch fixtures (logits, loss, every gradient, two AdamW
 *     steps) on any machine;
 *   - tests/gpu runs the same on CUDA (fp32, tf32, bf16), two NCCL ranks
 *     against one, and bf16 training against fp32's loss curve;
 *   - bench/gpu measures GPT-2-small training on it (tokens/s, MFU).
 * Until the model itself calls its ops through the backend (after the
 * serving work lands: ARCHITECTURE.md, "A compute backend"), this is the
 * one place where a whole GPT runs on a device.
 *
 * Attention goes through an attention plugin (default dense) created for
 * the backend's device. Parameters are one flat f32 block in Hugging
 * Face's order and layout (Conv1D weights (in, out)); with BF16
 * activations the matrices are also kept as a bf16 copy GEMMs read, which
 * AdamW refreshes: f32 master weights, gradients and moments. */
#ifndef FS_GPT_BACKEND_H
#define FS_GPT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/host.h"
#include "core/plugin_loader.h"
#include "fastserve/attention.h"
#include "fastserve/backend.h"

/* A loaded backend plugin, one instance on one device, and the host its
 * attention plugins see (fs_host_set_backend points the host API's device
 * memory and sgemm at it). */
typedef struct gb_backend {
    fs_plugin_registry reg;
    const fs_plugin *plugin;
    const fs_backend_vtable *vt;
    void *self;
    fs_device device;
    fs_host host;
    fs_plugin_ctx ctx;
} gb_backend;

/* Loads backend `name` ("cpu", "cuda") and creates it on device `index`.
 * FS_ERR_NOT_FOUND when the plugin is not built; *n_devices (when not NULL)
 * gets device_count() either way, 0 when the plugin is missing. */
int gb_backend_open(gb_backend *b, const char *name, int index, int *n_devices, fs_error *err);
void gb_backend_close(gb_backend *b);

typedef struct gb_config {
    size_t V, maxT, L, H, C; /* the model */
    size_t B, T;             /* the batch */
    int32_t dtype;           /* activations: FS_DTYPE_F32 or FS_DTYPE_BF16 */
    int32_t compute;         /* fs_gemm_compute of f32 GEMMs */
    const char *attention;   /* attention plugin, NULL: dense */
    const fs_config *attention_config; /* its keys (fs_config_resolve against its params), or NULL */
} gb_config;

typedef struct gb_model gb_model;

int gb_model_create(gb_model **out, gb_backend *b, const gb_config *cfg, fs_error *err);
void gb_model_destroy(gb_model *m); /* accepts NULL */

/* The parameter tensors in block order: Hugging Face names
 * ("transformer.h.0.attn.c_attn.weight"), offsets and sizes in floats, and
 * whether AdamW decays them (the matrices and embeddings). */
size_t gb_n_tensors(const gb_model *m);
const char *gb_tensor_name(const gb_model *m, size_t i);
size_t gb_tensor_offset(const gb_model *m, size_t i);
size_t gb_tensor_numel(const gb_model *m, size_t i);
size_t gb_n_params(const gb_model *m);

/* Host <-> device: the whole f32 block. */
int gb_set_params(gb_model *m, const float *params, fs_error *err);
int gb_get_params(gb_model *m, float *params, fs_error *err);
int gb_get_grads(gb_model *m, float *grads, fs_error *err);
/* (B, T, V) f32 logits of the last forward. */
int gb_get_logits(gb_model *m, float *logits, fs_error *err);

/* Forward over inputs (B, T) host ids; with targets (host) the mean
 * cross-entropy into *loss and the logits' gradient for backward. */
int gb_forward(gb_model *m, const int32_t *inputs, const int32_t *targets, double *loss, fs_error *err);
int gb_zero_grad(gb_model *m, fs_error *err);
/* Accumulates every parameter's gradient (needs a forward with targets). */
int gb_backward(gb_model *m, fs_error *err);
/* One AdamW step (t 1-based), decay on the matrices and embeddings. */
int gb_adamw(gb_model *m, float lr, float beta1, float beta2, float eps, float weight_decay, uint64_t t,
             fs_error *err);
/* The global L2 norm of the gradients. */
int gb_grad_norm(gb_model *m, double *norm, fs_error *err);
/* The gradient block on the device, for collectives (f32, gb_n_params). */
float *gb_device_grads(gb_model *m);
/* Waits for everything queued. */
int gb_sync(gb_model *m, fs_error *err);
/* Flops of one training step (forward + backward) by the standard count:
 * 6 per parameter per token plus attention's 12 * L * C * T per token
 * (causal attention does half: PaLM's appendix). */
double gb_train_flops(const gb_model *m);

#endif
