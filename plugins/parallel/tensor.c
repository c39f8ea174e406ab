/* tensor.c — the `tensor` parallel plugin: strategy.c with tensor as the
 * dimension that takes the ranks the graph leaves unassigned (see
 * strategy.h; all three plugins accept the same keys, so they compose). */
#include "strategy.h"

static int tensor_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_parallel_config *cfg,
                         fs_error *err) {
    return fs_strategy_create(FS_GRID_TENSOR, self, host, ctx, cfg, err);
}

static const fs_parallel_vtable tensor_vtable = {
    FS_STRATEGY_MEMBERS,
    .create = tensor_create,
};

static const fs_plugin_descriptor tensor_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_PARALLEL,
    .name = "tensor",
    .version = "1.0.0",
    .summary = "tensor parallelism (Megatron): heads and MLP split over ranks; composes with data and pipeline",
    .params = fs_strategy_params,
    .n_params = FS_STRATEGY_N_PARAMS,
    .vtable = &tensor_vtable,
    .vtable_size = sizeof(tensor_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(tensor_descriptor)
