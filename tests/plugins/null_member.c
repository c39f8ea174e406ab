/* null_member.c — a full-size attention vtable that leaves backward NULL. */
#include "fastserve/attention.h"

static int nm_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                     fs_error *err) {
    *self = NULL;
    return host->error_set(err, FS_ERR_UNSUPPORTED, "test stub: not a working plugin");
}
static void nm_destroy(void *self) {}
static size_t nm_saved_bytes(void *self, size_t B, size_t T) { return 0; }
static int nm_forward(void *self, fs_attention_args *args, fs_error *err) { return FS_ERR_UNSUPPORTED; }

static const fs_attention_vtable vtable = {
    .struct_size = sizeof(fs_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL,
    .create = nm_create,
    .destroy = nm_destroy,
    .saved_bytes = nm_saved_bytes,
    .forward = nm_forward,
    .backward = NULL,
};

static const fs_plugin_descriptor desc = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "broken_null_member",
    .version = "0.0.1",
    .summary = "test plugin whose vtable leaves backward NULL",
    .vtable = &vtable,
    .vtable_size = sizeof(vtable),
};

FS_PLUGIN_DEFINE_ENTRY(desc)
