/* pipeline.c — the `pipeline` parallel plugin: strategy.c with pipeline as the
 * dimension that takes the ranks the graph leaves unassigned (see
 * strategy.h; all three plugins accept the same keys, so they compose). */
#include "strategy.h"

static int pipeline_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_parallel_config *cfg,
                           fs_error *err) {
    return fs_strategy_create(FS_GRID_PIPELINE, self, host, ctx, cfg, err);
}

static const fs_parallel_vtable pipeline_vtable = {
    FS_STRATEGY_MEMBERS,
    .create = pipeline_create,
};

static const fs_plugin_descriptor pipeline_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_PARALLEL,
    .name = "pipeline",
    .version = "1.0.0",
    .summary = "pipeline parallelism: layers in stages, micro-batches, GPipe / 1F1B / interleaved schedules",
    .params = fs_strategy_params,
    .n_params = FS_STRATEGY_N_PARAMS,
    .vtable = &pipeline_vtable,
    .vtable_size = sizeof(pipeline_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(pipeline_descriptor)
