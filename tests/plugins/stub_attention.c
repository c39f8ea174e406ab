/* stub_attention.c — a complete attention vtable whose functions refuse to
 * run, so a test plugin fails only the check it is meant to fail. */
#include "fastserve/attention.h"

static int stub_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                       fs_error *err) {
    *self = NULL;
    return host->error_set(err, FS_ERR_UNSUPPORTED, "test stub: not a working plugin");
}
static void stub_destroy(void *self) {}
static size_t stub_saved_bytes(void *self, size_t B, size_t T) { return 0; }
static int stub_run(void *self, fs_attention_args *args, fs_error *err) { return FS_ERR_UNSUPPORTED; }

const fs_attention_vtable fs_test_stub_vtable = {
    .struct_size = sizeof(fs_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL,
    .create = stub_create,
    .destroy = stub_destroy,
    .saved_bytes = stub_saved_bytes,
    .forward = stub_run,
    .backward = stub_run,
};
