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
 * Since ABI 1.1 a strategy may also shard the model and run the step itself
 * (all members below are optional; the host checks vtable_size):
 *
 *   optimizer_shard / params_updated   ZeRO stage 1: this rank keeps the
 *                    optimizer state of one range of the flat vector, steps
 *                    it, then the strategy gathers the updated parameters
 *   tensor_all_reduce  Megatron's "g" operator: the model calls it after each
 *                    row-parallel matmul in forward and after each
 *                    column-parallel matmul's input gradient in backward
 *   embedding_all_reduce  sums the tied embedding's gradient between the
 *                    first and the last pipeline stage
 *   stage_layers     which layers a virtual pipeline stage holds
 *   pipeline_slots / run_schedule  the pipeline schedule (GPipe, 1F1B,
 *                    interleaved 1F1B) driven through the runtime's
 *                    fs_stage_ops, moving activations with comm send/recv
 *   grads_extra      gradients outside the flat vector, combined like the
 *                    flat vector's. Kept for the ABI: since the host places
 *                    plugin-registered tensors in the flat vector itself
 *                    (plugin.h, register_param), fsrun no longer calls it
 *   stats            counters for the summary and benchmarks
 *
 * Step order the runtime follows (every rank the same):
 *   backward of each accumulation micro-step; grads_ready fires only in the
 *   last one (earlier micro-steps accumulate locally, as DDP's no_sync)
 *   -> grads_finish(the flat vector, plugin-owned tensors included)
 *   -> reduce_sum(loss, rows, squared norm) -> clip and step [lo, hi) from
 *   optimizer_shard -> params_updated.
 *   Before a checkpoint the runtime also passes the optimizer's moments
 *   through params_updated: it gathers any vector whose rank-owned ranges
 *   ([lo, hi) as optimizer_shard gave them) hold the valid values.
 *
 * Rank layout (Megatron's): tensor fastest, then pipeline, then data:
 *   rank = (data_rank * pipeline + pipeline_rank) * tensor + tensor_rank.
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
    /* since ABI 1.1 */
    int32_t data_rank, tensor_rank, pipeline_rank;
    int32_t interleave;   /* model chunks (virtual stages) per pipeline rank; 1 = plain */
    int32_t microbatches; /* micro-batches per step through the pipeline; 1 without one */
} fs_parallel_topology;

/* The runtime's half of a pipeline step. A micro-batch is `batch /
 * microbatches` rows of this data rank's slice; `slot` (< the count the
 * strategy asked for with pipeline_slots) names the activation storage the
 * runtime keeps for that micro-batch between its forward and its backward,
 * so a schedule with few micro-batches in flight (1F1B) needs little. */
typedef struct fs_stage_ops {
    uint32_t struct_size;
    void *ctx;
    size_t act_numel; /* floats in one micro-batch's activation between stages: B_micro * T * C */
    /* Forward of model chunk `chunk` (virtual stage chunk * pipeline +
     * pipeline_rank) on micro-batch `micro`. `in` is NULL on virtual stage 0,
     * which reads the micro-batch's tokens; `out` is NULL on the last, which
     * computes the loss. */
    int (*forward)(void *ctx, size_t chunk, size_t micro, size_t slot, const float *in, float *out,
                   fs_error *err);
    /* Backward of the same: `dout` is NULL on the last virtual stage (the
     * gradient starts at the loss), `din` NULL on virtual stage 0. Parameter
     * gradients accumulate over micro-batches; after the micro-batch's
     * backward its slot may be reused. */
    int (*backward)(void *ctx, size_t chunk, size_t micro, size_t slot, const float *dout, float *din,
                    fs_error *err);
} fs_stage_ops;

typedef struct fs_parallel_config {
    uint32_t struct_size;
    fs_comm *comm;
    size_t n_params;   /* length of the runtime's flat gradient buffer; 0 = not known
                        * yet (the strategy is created before the model, whose
                        * shape may depend on the topology): size lazily from
                        * the n passed to grads_finish / optimizer_shard */
    size_t n_layer, n_head;
    size_t batch;      /* global batch (sequences per optimizer micro-step) */
    fs_device device;
    /* since ABI 1.1 */
    size_t seq, n_embd, vocab; /* for the plan and message sizes */
} fs_parallel_config;

/* What a strategy measured since create, for the run summary and the
 * benchmarks. Times are wall-clock seconds on this rank. */
typedef struct fs_parallel_stats {
    uint32_t struct_size;
    uint64_t steps;       /* grads_finish calls */
    uint64_t collectives; /* gradient collectives started (buckets, shards) */
    double bytes;         /* payload bytes handed to gradient collectives
                           * (an all-reduce of n floats counts 4 n) */
    double comm_s;        /* from each gradient collective's start to the
                           * moment it was seen complete, summed */
    double wait_s;        /* of the runtime's time blocked in grads_finish and
                           * params_updated waiting for collectives: the part
                           * of comm_s backward did not hide */
} fs_parallel_stats;

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

    /* ---- since ABI 1.1 ---- */
    /* ZeRO-1: [lo, hi) of the flat vector of n floats whose optimizer state
     * this rank keeps (the whole vector without sharding). */
    int (*optimizer_shard)(void *self, size_t n, size_t *lo, size_t *hi, fs_error *err);
    /* After the optimizer stepped [lo, hi): make every rank's params whole. */
    int (*params_updated)(void *self, float *params, size_t n, fs_error *err);
    /* Sums x over this rank's tensor-parallel group (no-op when tensor = 1). */
    int (*tensor_all_reduce)(void *self, float *x, size_t n, fs_error *err);
    /* Sums the tied embedding's gradient (n floats) between the first and
     * the last pipeline stage (no-op when pipeline = 1). */
    int (*embedding_all_reduce)(void *self, float *grad, size_t n, fs_error *err);
    /* Layers [first, first + count) of virtual stage `vstage` (0 .. pipeline *
     * interleave - 1); the stages partition 0 .. n_layer - 1 in order. */
    int (*stage_layers)(void *self, size_t vstage, size_t *first, size_t *count, fs_error *err);
    /* Activation slots per model chunk the schedule needs at most. */
    int (*pipeline_slots)(void *self, size_t *slots, fs_error *err);
    /* One step's forwards and backwards of every micro-batch, in schedule
     * order, exchanging activations and their gradients with the
     * neighbouring stages. */
    int (*run_schedule)(void *self, const fs_stage_ops *ops, fs_error *err);
    /* Gradients of parameters outside the flat vector (those plugins
     * registered with the host: Longformer's global projections, TinyBERT's
     * projection), packed by the runtime into one buffer of n floats: make
     * them final as grads_finish does for the flat vector, in full on every
     * rank that holds them (never sharded). Called after grads_finish, only
     * when such parameters exist; a plugin without it runs on one rank. */
    int (*grads_extra)(void *self, float *grads, size_t n, fs_error *err);
    /* Counters since create (see fs_parallel_stats). */
    int (*stats)(void *self, fs_parallel_stats *out, fs_error *err);
} fs_parallel_vtable;

#ifdef __cplusplus
}
#endif
#endif
