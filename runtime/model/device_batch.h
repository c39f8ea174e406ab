/* device_batch.h — the ragged step (batch.h) on a compute backend: what
 * the serving engine runs when [run] device names a backend's device
 * (--mode serve, and --mode generate's inline engine).
 *
 * The same step as fs_batch_run, with the same sequences, the same pool
 * bookkeeping and the same logits on the host: the weights are copied
 * once to the device (f32), every row of the step goes through the
 * backend's ops (LayerNorm, cuBLAS GEMMs with their bias, GELU, the
 * residual), and each layer's attention plugin, created here for the
 * device, runs its paged step over a pool in device memory
 * (fs_kv_pool_create_on). Only the logits the step asks for come back to
 * the host, so the engine samples, penalises and reports log-probabilities
 * exactly as on the CPU.
 *
 * What differs from the CPU step: batch invariance. cuBLAS chooses its
 * kernels by the shape of a product, so a row's logits may change in the
 * last bits with the rows around it (the attention plugins' paged steps
 * keep their own rows independent; the products do not). A request's
 * tokens are then reproducible run to run for the same schedule, not
 * bitwise alone versus among others as on the CPU (vLLM and TGI behave
 * the same on GPUs). tests/gpu/test_gpu_batch.c compares the step with the
 * CPU's fs_batch_run within a tolerance, on CUDA and (its _cpu run, on any
 * machine) through the cpu backend. */
#ifndef FS_DEVICE_BATCH_H
#define FS_DEVICE_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/backend_handle.h"
#include "model/batch.h"

typedef struct fs_device_batch fs_device_batch;

typedef struct fs_device_batch_config {
    uint32_t struct_size;
    fs_backend_handle *backend; /* open on its device; outlives the step */
    fs_host *host;              /* what the attention plugins' contexts see (the session's) */
    int32_t kv_dtype;           /* the blocks' element type, as the model's own instances were created */
    size_t max_rows, max_logits; /* the largest step: tokens, and rows of logits */
} fs_device_batch_config;

/* FS_OK when every layer of m can run its paged step on `device`: on
 * CUDA its plugin declares FS_ATTENTION_CUDA_PAGED; anywhere, it registers
 * no parameters of its own (a step here holds the model's tensors only).
 * Else the first layer that cannot, with its plugin's name, in `why`. */
int fs_device_batch_supported(const fs_model *m, fs_device device, char *why, size_t cap);

/* m's weights on the backend's device, each layer's attention plugin
 * created there, and work memory for steps of up to max_rows tokens and
 * max_logits logits (the model must be whole and every layer paged). */
int fs_device_batch_create(fs_device_batch **out, const fs_model *m, const fs_device_batch_config *cfg, fs_error *err);
void fs_device_batch_destroy(fs_device_batch *db); /* accepts NULL; waits for queued work */

/* One step over the n sequences, as fs_batch_run (batch.h): pool made by
 * fs_kv_pool_create_on on the same backend; logits (n_logits, V) f32 in
 * host memory, ready when this returns. */
int fs_device_batch_run(fs_device_batch *db, fs_kv_pool *pool, const fs_batch_seq *seqs, size_t n, float *logits,
                        fs_error *err);

#endif
