/* short_vtable.c — an attention plugin built against an imagined older SDK
 * whose vtable ended after backward (no generation members): its
 * vtable_size is smaller than fs_plugin_min_vtable_size(attention). */
#include "fastserve/attention.h"

typedef struct old_attention_vtable {
    uint32_t struct_size;
    uint32_t flags;
    int (*create)(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                  fs_error *err);
    void (*destroy)(void *self);
    size_t (*saved_bytes)(void *self, size_t B, size_t T);
    int (*forward)(void *self, fs_attention_args *args, fs_error *err);
    int (*backward)(void *self, fs_attention_args *args, fs_error *err);
} old_attention_vtable;

static int old_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                      fs_error *err) {
    *self = NULL;
    return FS_ERR_UNSUPPORTED;
}
static void old_destroy(void *self) {}
static size_t old_saved_bytes(void *self, size_t B, size_t T) { return 0; }
static int old_run(void *self, fs_attention_args *args, fs_error *err) { return FS_ERR_UNSUPPORTED; }

static const old_attention_vtable vtable = {
    .struct_size = sizeof(old_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL,
    .create = old_create,
    .destroy = old_destroy,
    .saved_bytes = old_saved_bytes,
    .forward = old_run,
    .backward = old_run,
};

static const fs_plugin_descriptor desc = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "broken_short_vtable",
    .version = "0.0.1",
    .summary = "test plugin whose attention vtable is too short",
    .vtable = &vtable,
    .vtable_size = sizeof(vtable),
};

FS_PLUGIN_DEFINE_ENTRY(desc)
