/* fastserve/parallel.h — the parallel-strategy vtable.
 *
 * A strategy decides which rank holds which part of the batch and of the
 * weights, and when gradients are combined. The runtime calls it at fixed
 * points of a training step:
 *
 *   batch_slice      which rows of the global batch this rank computes
 *   grads_ready      during backward, each time a contiguous range of the
 *                    parameter gradients is final (last layer first), so a
 *                    data-parallel strategy can start a bucket's all-reduce
 *   grads_finish     after backward: every gradient must be final (summed
 *                    over the global batch's rows and divided as the
 *                    runtime's loss is) when it returns
 *   reduce_sum       sums a few scalars (loss, token counts) over ranks
 *
 * All collectives go through the fs_comm handed to create. */
#ifndef FASTSERVE_PARALLEL_H
#define FASTSERVE_PARALLEL_H

#include "fastserve/comm.h"
#include "fastserve/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fs_parallel_topology {
    uint32_t struct_size;
    int32_t rank, world;
    int32_t data, tensor, pipeline; /* degrees; their product is world */
} fs_parallel_topology;

typedef struct fs_parallel_config {
    uint32_t struct_size;
    fs_comm *comm;
    size_t n_params;   /* length of the runtime's flat gradient buffer */
    size_t n_layer, n_head;
    size_t batch;      /* global batch (sequences per optimizer micro-step) */
    fs_device device;
} fs_parallel_config;

typedef struct fs_parallel_vtable {
    uint32_t struct_size;
    int (*create)(void **self, const fs_host_api *host, fs_plugin_ctx *ctx,
                  const fs_parallel_config *cfg, fs_error *err);
    void (*destroy)(void *self);
    int (*topology)(void *self, fs_parallel_topology *out, fs_error *err);
    int (*batch_slice)(void *self, size_t global_batch, size_t *offset, size_t *count, fs_error *err);
    int (*grads_ready)(void *self, float *grads, size_t offset, size_t count, fs_error *err);
    int (*grads_finish)(void *self, float *grads, size_t n, fs_error *err);
    int (*reduce_sum)(void *self, double *values, size_t n, fs_error *err);
} fs_parallel_vtable;

#ifdef __cplusplus
}
#endif
#endif
