/* data.c — the `data` parallel plugin: strategy.c with data as the
 * dimension that takes the ranks the graph leaves unassigned (see
 * strategy.h; all three plugins accept the same keys, so they compose). */
#include "strategy.h"

static int data_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_parallel_config *cfg,
                       fs_error *err) {
    return fs_strategy_create(FS_GRID_DATA, self, host, ctx, cfg, err);
}

static const fs_parallel_vtable data_vtable = {
    FS_STRATEGY_MEMBERS,
    .create = data_create,
};

static const fs_plugin_descriptor data_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_PARALLEL,
    .name = "data",
    .version = "1.0.0",
    .summary = "data parallelism: replicas, gradients all-reduced in buckets overlapped with backward, optional ZeRO-1",
    .params = fs_strategy_params,
    .n_params = FS_STRATEGY_N_PARAMS,
    .vtable = &data_vtable,
    .vtable_size = sizeof(data_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(data_descriptor)
