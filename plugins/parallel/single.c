/* single.c — one process holds everything: the strategy every other one
 * must reproduce. Gradients are final when backward ends, so the hooks
 * have nothing to do; they exist so the runtime has one code path. */
#include "fastserve/parallel.h"

typedef struct single {
    const fs_host_api *host;
    fs_device device;
} single;

static int single_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_parallel_config *cfg,
                         fs_error *err) {
    (void)ctx;
    if (cfg->comm && cfg->comm->size(cfg->comm, NULL) != 1)
        return host->error_set(err, FS_ERR_INVALID,
                               "[parallel] plugin = single runs on one rank, but the world has %d; "
                               "choose data, tensor or pipeline",
                               cfg->comm->size(cfg->comm, NULL));
    fs_device cpu = {FS_DEVICE_CPU, 0};
    single *s = host->alloc(cpu, sizeof *s);
    if (!s) return host->error_set(err, FS_ERR_NOMEM, "single: out of memory");
    s->host = host;
    s->device = cpu;
    *self = s;
    return FS_OK;
}

static void single_destroy(void *self) {
    single *s = self;
    if (s) s->host->free(s->device, s);
}

static int single_topology(void *self, fs_parallel_topology *out, fs_error *err) {
    (void)self;
    (void)err;
    out->struct_size = sizeof *out;
    out->rank = 0;
    out->world = out->data = out->tensor = out->pipeline = 1;
    return FS_OK;
}

static int single_batch_slice(void *self, size_t global_batch, size_t *offset, size_t *count, fs_error *err) {
    (void)self;
    (void)err;
    *offset = 0;
    *count = global_batch;
    return FS_OK;
}

static int single_grads_ready(void *self, float *grads, size_t offset, size_t count, fs_error *err) {
    (void)self, (void)grads, (void)offset, (void)count, (void)err;
    return FS_OK;
}

static int single_grads_finish(void *self, float *grads, size_t n, fs_error *err) {
    (void)self, (void)grads, (void)n, (void)err;
    return FS_OK;
}

static int single_reduce_sum(void *self, double *values, size_t n, fs_error *err) {
    (void)self, (void)values, (void)n, (void)err;
    return FS_OK;
}

static const fs_parallel_vtable single_vtable = {
    .struct_size = sizeof(fs_parallel_vtable),
    .create = single_create,
    .destroy = single_destroy,
    .topology = single_topology,
    .batch_slice = single_batch_slice,
    .grads_ready = single_grads_ready,
    .grads_finish = single_grads_finish,
    .reduce_sum = single_reduce_sum,
};

static const fs_plugin_descriptor single_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_PARALLEL,
    .name = "single",
    .version = "1.0.0",
    .summary = "one process, no communication (the reference for every other strategy)",
    .params = NULL,
    .n_params = 0,
    .vtable = &single_vtable,
    .vtable_size = sizeof(single_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(single_descriptor)
