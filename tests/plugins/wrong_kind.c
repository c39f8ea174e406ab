/* wrong_kind.c — a valid distill plugin in a file named like an attention
 * plugin: loading it where attention is needed must fail on the kind. */
#include "fastserve/distill.h"

static int wk_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_distill_config *cfg,
                     fs_error *err) {
    *self = NULL;
    return host->error_set(err, FS_ERR_UNSUPPORTED, "test stub: not a working plugin");
}
static void wk_destroy(void *self) {}
static uint32_t wk_needs(void *self) { return 0; }
static int wk_loss(void *self, fs_distill_args *args, double *loss, fs_error *err) { return FS_ERR_UNSUPPORTED; }

static const fs_distill_vtable vtable = {
    .struct_size = sizeof(fs_distill_vtable),
    .create = wk_create,
    .destroy = wk_destroy,
    .needs = wk_needs,
    .loss = wk_loss,
};

static const fs_plugin_descriptor desc = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_DISTILL,
    .name = "broken_kind",
    .version = "0.0.1",
    .summary = "test plugin: a distill plugin named like an attention plugin",
    .vtable = &vtable,
    .vtable_size = sizeof(vtable),
};

FS_PLUGIN_DEFINE_ENTRY(desc)
