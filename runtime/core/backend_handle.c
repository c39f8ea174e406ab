/* backend_handle.c — see backend_handle.h. */
#include "core/backend_handle.h"

#include <string.h>

int fs_backend_handle_open_plugin(fs_backend_handle *b, const fs_plugin *plugin, int index, int32_t compute,
                                  fs_error *err) {
    b->plugin = plugin;
    b->vt = plugin->desc->vtable;
    int count = 0, rc = b->vt->device_count(&count, err);
    if (rc) return rc;
    if (index >= count)
        return fs_error_set(err, FS_ERR_NOT_FOUND, "backend %s: device %d asked, %d present", plugin->desc->name,
                            index, count);
    b->device.type = b->vt->device_type;
    b->device.index = index;
    /* a second would take the host API's device memory and stream from
     * under the first's attention plugins: their kernels would run on the
     * other instance's stream, unordered with the first's ops */
    if (b->device.type != FS_DEVICE_CPU && fs_host_backend())
        return fs_error_set(err, FS_ERR_INVALID,
                            "backend %s: another device backend is open in this process; one at a time (the host "
                            "API's device memory and stream are process-wide): close it first",
                            plugin->desc->name);
    fs_host_init(&b->host, 1234);
    fs_plugin_ctx_init(&b->ctx, &b->host, NULL, "backend", plugin->desc->name);
    fs_backend_config cfg = {sizeof cfg, b->device};
    if ((rc = b->vt->create(&b->self, &b->host.api, &b->ctx, &cfg, err))) return rc;
    if (b->device.type != FS_DEVICE_CPU) fs_host_set_backend(b->vt, b->self, index, compute);
    return FS_OK;
}

int fs_backend_handle_open(fs_backend_handle *b, const char *name, int index, int *n_devices, fs_error *err) {
    memset(b, 0, sizeof *b);
    if (n_devices) *n_devices = 0;
    const fs_plugin *p = NULL;
    int rc = fs_plugin_registry_get(&b->reg, FS_PLUGIN_BACKEND, name, &p, err);
    if (rc) return rc;
    if (n_devices) {
        fs_error ignored = {0};
        if (((const fs_backend_vtable *)p->desc->vtable)->device_count(n_devices, &ignored)) *n_devices = 0;
    }
    return fs_backend_handle_open_plugin(b, p, index, FS_GEMM_COMPUTE_F32, err);
}

void fs_backend_handle_close(fs_backend_handle *b) {
    if (b->self) {
        if (b->device.type != FS_DEVICE_CPU && fs_host_backend() == b->self) fs_host_set_backend(NULL, NULL, 0, 0);
        b->vt->destroy(b->self);
    }
    fs_plugin_registry_release(&b->reg);
    memset(b, 0, sizeof *b);
}
