/* strategy.h — the one parallel strategy behind the `data`, `tensor` and
 * `pipeline` plugins.
 *
 * The three plugins are the same code with a different default: every one
 * accepts the keys data, tensor and pipeline (the degrees), and 0 means
 * "automatic": the plugin's own dimension takes world / the product of
 * the others, any other dimension 1. So `plugin = data` on 4 ranks is 4-way
 * data parallelism, `plugin = tensor` with `data = 2` on 8 ranks is data 2 x
 * tensor 4, and any plugin with all three degrees written is the same 3D
 * split. The descriptor files (data.c, tensor.c, pipeline.c) only say
 * which dimension is theirs.
 *
 * What each dimension does:
 *   data      gradient all-reduce in buckets overlapped with backward, or
 *             ZeRO-1 (data_sync.h)
 *   tensor    the tensor group for the model's Megatron all-reduces
 *             (tensor_all_reduce)
 *   pipeline  the layer partition (stage_layers), the schedule
 *             (pipeline_slots, run_schedule; pipe_schedule.h) and the
 *             embedding group that sums the tied embedding's gradient
 *             between the first and last stage (embedding_all_reduce).
 *
 * Every check of the configuration happens in create, before any
 * collective, with a message naming the key, its value and the fix. */
#ifndef FS_PARALLEL_STRATEGY_H
#define FS_PARALLEL_STRATEGY_H

#include "fastserve/parallel.h"
#include "grid.h"

#define FS_STRATEGY_N_PARAMS 10
extern const fs_param_spec fs_strategy_params[FS_STRATEGY_N_PARAMS];

/* create with the plugin's own dimension (FS_GRID_DATA, _TENSOR, _PIPELINE). */
int fs_strategy_create(int own, void **self, const fs_host_api *host, fs_plugin_ctx *ctx,
                       const fs_parallel_config *cfg, fs_error *err);

void fs_strategy_destroy(void *self);
int fs_strategy_topology(void *self, fs_parallel_topology *out, fs_error *err);
int fs_strategy_batch_slice(void *self, size_t global_batch, size_t *offset, size_t *count, fs_error *err);
int fs_strategy_grads_ready(void *self, float *grads, size_t offset, size_t count, fs_error *err);
int fs_strategy_grads_finish(void *self, float *grads, size_t n, fs_error *err);
int fs_strategy_reduce_sum(void *self, double *values, size_t n, fs_error *err);
int fs_strategy_optimizer_shard(void *self, size_t n, size_t *lo, size_t *hi, fs_error *err);
int fs_strategy_params_updated(void *self, float *params, size_t n, fs_error *err);
int fs_strategy_tensor_all_reduce(void *self, float *x, size_t n, fs_error *err);
int fs_strategy_embedding_all_reduce(void *self, float *grad, size_t n, fs_error *err);
int fs_strategy_stage_layers(void *self, size_t vstage, size_t *first, size_t *count, fs_error *err);
int fs_strategy_pipeline_slots(void *self, size_t *slots, fs_error *err);
int fs_strategy_run_schedule(void *self, const fs_stage_ops *ops, fs_error *err);
int fs_strategy_grads_extra(void *self, float *grads, size_t n, fs_error *err);
int fs_strategy_stats(void *self, fs_parallel_stats *out, fs_error *err);

/* Every vtable member but create, for the descriptor files. */
#define FS_STRATEGY_MEMBERS                                                                              \
    .struct_size = sizeof(fs_parallel_vtable), .destroy = fs_strategy_destroy,                           \
    .topology = fs_strategy_topology, .batch_slice = fs_strategy_batch_slice,                            \
    .grads_ready = fs_strategy_grads_ready, .grads_finish = fs_strategy_grads_finish,                    \
    .reduce_sum = fs_strategy_reduce_sum, .optimizer_shard = fs_strategy_optimizer_shard,                \
    .params_updated = fs_strategy_params_updated, .tensor_all_reduce = fs_strategy_tensor_all_reduce,    \
    .embedding_all_reduce = fs_strategy_embedding_all_reduce, .stage_layers = fs_strategy_stage_layers,  \
    .pipeline_slots = fs_strategy_pipeline_slots, .run_schedule = fs_strategy_run_schedule,              \
    .grads_extra = fs_strategy_grads_extra, .stats = fs_strategy_stats

#endif
