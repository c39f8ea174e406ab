/* device.c — [run] device (see device.h). */
#include "session/device.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastserve/backend.h"
#include "core/schema.h"

/* The device types a graph names, and whether ":N" may follow. */
static const struct {
    const char *name;
    int32_t type;
    int indexed;
} device_names[] = {
    {"cpu", FS_DEVICE_CPU, 0},
    {"cuda", FS_DEVICE_CUDA, 1},
};

int fs_device_parse(const char *text, fs_device_request *out) {
    memset(out, 0, sizeof *out);
    if (strcmp(text, "auto") == 0) {
        out->automatic = 1;
        return 0;
    }
    for (size_t i = 0; i < sizeof device_names / sizeof device_names[0]; i++) {
        size_t n = strlen(device_names[i].name);
        if (strncmp(text, device_names[i].name, n) != 0) continue;
        out->device.type = device_names[i].type;
        const char *p = text + n;
        if (*p == '\0') return 0;
        if (!device_names[i].indexed || *p != ':' || !isdigit((unsigned char)p[1])) return -1;
        char *end;
        errno = 0;
        unsigned long index = strtoul(p + 1, &end, 10);
        if (*end || errno || index > INT32_MAX) return -1;
        out->device.index = (int32_t)index;
        return 0;
    }
    return -1;
}

/* The backend plugin CUDA would use: [backend] plugin (cfg), `auto` being
 * the build's cuda backend; *vt NULL (and *missing set) when the build has
 * none. A plugin the graph names must be there. */
static int cuda_backend(fs_session *s, const fs_config *cfg, const fs_backend_vtable **vt, fs_error *missing,
                        fs_error *err) {
    const char *name = fs_config_string(cfg, "plugin");
    int automatic = strcmp(name, "auto") == 0;
    const fs_plugin *p = NULL;
    *vt = NULL;
    if (fs_plugin_registry_get(&s->registry, FS_PLUGIN_BACKEND, automatic ? "cuda" : name, &p, missing)) {
        if (automatic) return FS_OK;
        return fs_error_set(err, FS_ERR_INVALID, "%s: %s", fs_config_where(cfg, "plugin"), missing->message);
    }
    *vt = p->desc->vtable;
    if ((*vt)->device_type != FS_DEVICE_CUDA)
        return fs_error_set(err, FS_ERR_INVALID, "%s: backend '%s' serves device type %d, not CUDA",
                            fs_config_where(cfg, "plugin"), p->desc->name, (int)(*vt)->device_type);
    return FS_OK;
}

/* cuda:N asked: why it cannot be had, as a configuration error. */
static int refuse_cuda(fs_session *s, const fs_config *cfg, const fs_device_request *want, fs_error *err) {
    const char *where = fs_config_where(s->run_cfg, "device");
    const fs_backend_vtable *vt;
    fs_error missing = {0};
    int rc = cuda_backend(s, cfg, &vt, &missing, err);
    if (rc) return rc;
    if (!vt)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: this fsrun has no cuda backend (it was built without the CUDA toolkit: %s); "
                            "install the toolkit and rebuild (cmake finds nvcc), or set device = cpu",
                            where, missing.message);
    int count = 0;
    fs_error perr = {0};
    if (vt->device_count(&count, &perr)) count = 0;
    int index = (int)want->device.index;
    if (count == 0)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: no CUDA device is visible (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them); "
                            "set device = cpu, or auto to use a GPU only where there is one",
                            where);
    if (index >= count)
        return fs_error_set(err, FS_ERR_INVALID, "%s: cuda:%d asked, but %d CUDA device%s visible (cuda:0 .. cuda:%d)",
                            where, index, count, count == 1 ? " is" : "s are", count - 1);
    /* the backend and the attention plugins' kernels exist, but model/step.c
     * and model/decode.c call compute/ on host memory: nothing would run on
     * the device, and pretending otherwise would hide it */
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: cuda:%d is visible, but the model's training and decoding steps do not run on CUDA yet "
                        "in this build (its kernels are built; the model does not call them); set device = cpu",
                        where, index);
}

int fs_session_device(fs_session *s, fs_device *out, fs_error *err) {
    const char *text = fs_config_string(s->run_cfg, "device");
    fs_device_request want;
    *out = (fs_device){FS_DEVICE_CPU, 0};
    if (fs_device_parse(text, &want))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: '%s' is not a device: use auto, cpu, cuda or cuda:N (N = 0, 1, ... counts the "
                            "visible CUDA devices)",
                            fs_config_where(s->run_cfg, "device"), text);
    /* [backend] is checked whatever the device, so a typo there never waits
     * for the day a GPU is asked for */
    const char *sec[] = {"backend"};
    fs_config *cfg = NULL;
    int rc = fs_config_resolve(&cfg, s->graph, sec, 1, fs_schema_backend.spec, fs_schema_backend.n, NULL, err);
    /* auto: the CPU while the model cannot use a GPU (see refuse_cuda), so
     * a default run never loads the cuda backend and its libraries */
    if (!rc && !want.automatic && want.device.type != FS_DEVICE_CPU) rc = refuse_cuda(s, cfg, &want, err);
    fs_config_destroy(cfg);
    return rc;
}
