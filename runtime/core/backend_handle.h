/* backend_handle.h — a compute backend plugin (fastserve/backend.h) loaded
 * and instantiated on one device: what the model on a device
 * (model/device_gpt.h), its tests and bench_backend hold.
 *
 * While a handle drives a device other than the CPU, the host API's device
 * memory, sgemm and device_stream serve that device (fs_host_set_backend),
 * so attention plugins handed its tensors allocate there and queue their
 * kernels on the model's stream. One such handle at a time per process:
 * the device is process-wide, as CUDA's current device is; opening a second
 * while one is open is refused (FS_ERR_INVALID). */
#ifndef FS_BACKEND_HANDLE_H
#define FS_BACKEND_HANDLE_H

#include "core/host.h"
#include "core/plugin_loader.h"
#include "fastserve/backend.h"

typedef struct fs_backend_handle {
    fs_plugin_registry reg; /* its own plugins (fs_backend_handle_open), else empty */
    const fs_plugin *plugin;
    const fs_backend_vtable *vt;
    void *self;
    fs_device device;
    fs_host host; /* what the backend's context and standalone attention plugins see */
    fs_plugin_ctx ctx;
} fs_backend_handle;

/* Loads backend `name` ("cpu", "cuda", a path) and creates it on device
 * `index`. FS_ERR_NOT_FOUND when the plugin is not built; *n_devices (when
 * not NULL) gets device_count() either way, 0 when the plugin is missing. */
int fs_backend_handle_open(fs_backend_handle *b, const char *name, int index, int *n_devices, fs_error *err);
/* The same with a plugin already loaded (a session's registry owns it);
 * GEMMs the host API runs for plugins compute as `compute` (fs_gemm_compute). */
int fs_backend_handle_open_plugin(fs_backend_handle *b, const fs_plugin *plugin, int index, int32_t compute,
                                  fs_error *err);
/* Destroys the instance (waiting for its queued work); accepts a handle
 * that never opened. */
void fs_backend_handle_close(fs_backend_handle *b);

#endif
