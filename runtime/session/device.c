/* device.c — [run] device (see device.h). */
#include "session/device.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fastserve/backend.h"
#include "core/schema.h"
#include "dist/world.h"

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
        out->indexed = 1;
        return 0;
    }
    return -1;
}

static const char *fs_device_type_name(int32_t type) {
    for (size_t i = 0; i < sizeof device_names / sizeof device_names[0]; i++)
        if (device_names[i].type == type) return device_names[i].name;
    return "unknown";
}

/* [backend] plugin names one (not auto). */
static int plugin_named(const fs_config *cfg) { return strcmp(fs_config_string(cfg, "plugin"), "auto") != 0; }

/* The backend plugin serving `type`: [backend] plugin (cfg), `auto` being
 * the build's own for that type ("cpu", "cuda"); *p NULL (and *missing
 * set) when the build has none. A plugin the graph names must be there
 * and serve the type. */
static int find_backend(fs_session *s, const fs_config *cfg, int32_t type, const fs_plugin **p, fs_error *missing,
                        fs_error *err) {
    const char *name = fs_config_string(cfg, "plugin");
    int automatic = !plugin_named(cfg);
    *p = NULL;
    if (fs_plugin_registry_get(&s->registry, FS_PLUGIN_BACKEND, automatic ? fs_device_type_name(type) : name, p,
                               missing)) {
        *p = NULL;
        if (automatic) return FS_OK;
        return fs_error_set(err, FS_ERR_INVALID, "%s: %s", fs_config_where(cfg, "plugin"), missing->message);
    }
    const fs_backend_vtable *vt = (*p)->desc->vtable;
    if (vt->device_type != type)
        return fs_error_set(err, FS_ERR_INVALID, "%s: backend '%s' serves %s devices, and [run] device asks for %s",
                            fs_config_where(cfg, "plugin"), (*p)->desc->name, fs_device_type_name(vt->device_type),
                            fs_device_type_name(type));
    return FS_OK;
}

/* Under mpirun each rank of a machine takes its own GPU, its local rank's
 * (NCCL's communicators refuse two ranks on one device): `cuda` means that
 * one, and naming one GPU for all of them is an error. */
static int rank_device(const fs_device_request *want, int count, const char *where, int *index, fs_error *err) {
    int ranks = fs_world_local_size();
    *index = (int)want->device.index;
    if (ranks == 1) return FS_OK;
    if (want->indexed)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: cuda:%d names one GPU, but %d ranks run on this machine and each needs its own: "
                            "set device = cuda (rank r of the machine takes cuda:r)",
                            where, *index, ranks);
    if (ranks > count)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: %d ranks run on this machine but %d CUDA device%s visible: one GPU per rank; start "
                            "at most %d ranks per machine (mpirun -np, or --map-by ppr:%d:node)",
                            where, ranks, count, count == 1 ? " is" : "s are", count, count);
    *index = fs_world_local_rank();
    return FS_OK;
}

/* cuda[:N] asked: the backend and the device exist, or why not, as a
 * configuration error; the rank's device chosen. */
static int check_cuda(fs_session *s, const fs_config *cfg, const fs_device_request *want, fs_error *err) {
    const char *where = fs_config_where(s->run_cfg, "device");
    const fs_plugin *p;
    fs_error missing = {0};
    int rc = find_backend(s, cfg, FS_DEVICE_CUDA, &p, &missing, err);
    if (rc) return rc;
    if (!p)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: this fsrun has no cuda backend (it was built without the CUDA toolkit: %s); "
                            "install the toolkit and rebuild (cmake finds nvcc), or set device = cpu",
                            where, missing.message);
    const fs_backend_vtable *vt = p->desc->vtable;
    int count = 0, index;
    fs_error perr = {0};
    if (vt->device_count(&count, &perr)) count = 0;
    if (count == 0)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: no CUDA device is visible (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them); "
                            "set device = cpu, or auto to use a GPU only where there is one",
                            where);
    if ((rc = rank_device(want, count, where, &index, err))) return rc;
    if (index >= count)
        return fs_error_set(err, FS_ERR_INVALID, "%s: cuda:%d asked, but %d CUDA device%s visible (cuda:0 .. cuda:%d)",
                            where, index, count, count == 1 ? " is" : "s are", count - 1);
    s->backend.device.index = index;
    return FS_OK;
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
    s->backend.automatic = want.automatic;
    s->backend.device = want.device;
    /* [backend] is checked whatever the device, so a typo there never waits
     * for the day a GPU is asked for */
    const char *sec[] = {"backend"};
    int rc = fs_config_resolve(&s->backend.config, s->graph, sec, 1, fs_schema_backend.spec, fs_schema_backend.n,
                               NULL, err);
    if (rc || want.automatic) return rc;
    if (want.device.type != FS_DEVICE_CPU) return check_cuda(s, s->backend.config, &want, err);
    if (!plugin_named(s->backend.config)) return FS_OK;
    const fs_plugin *p;
    fs_error missing = {0};
    return find_backend(s, s->backend.config, FS_DEVICE_CPU, &p, &missing, err);
}

int fs_session_backend_asked(const fs_session *s) {
    if (plugin_named(s->backend.config)) return 1;
    return !s->backend.automatic && s->backend.device.type != FS_DEVICE_CPU;
}

const char *fs_session_backend_where(const fs_session *s) {
    if (plugin_named(s->backend.config)) return fs_config_where(s->backend.config, "plugin");
    return fs_config_where(s->run_cfg, "device");
}

/* The NVIDIA driver's device nodes (Linux, containers given a GPU, WSL's
 * /dev/dxg): without them no CUDA device can be visible, and auto need not
 * load the cuda backend and its libraries (0.15 s and 150 MB of mappings)
 * to hear so. */
static int nvidia_driver_present(void) {
    return access("/dev/nvidiactl", F_OK) == 0 || access("/dev/dxg", F_OK) == 0;
}

int fs_session_backend(fs_session *s, const fs_plugin **plugin, fs_device *device, fs_error *err) {
    *plugin = NULL;
    *device = (fs_device){FS_DEVICE_CPU, 0};
    fs_error missing = {0};
    if (!s->backend.automatic) {
        if (!fs_session_backend_asked(s)) return FS_OK;
        *device = s->backend.device;
        return find_backend(s, s->backend.config, device->type, plugin, &missing, err);
    }
    /* auto: the named backend, else the cuda one, where it is built and
     * sees a device */
    const fs_plugin *p = NULL;
    int rc = FS_OK;
    if (plugin_named(s->backend.config)) {
        if (fs_plugin_registry_get(&s->registry, FS_PLUGIN_BACKEND, fs_config_string(s->backend.config, "plugin"), &p,
                                   &missing))
            return fs_error_set(err, FS_ERR_INVALID, "%s: %s", fs_config_where(s->backend.config, "plugin"),
                                missing.message);
    } else if (nvidia_driver_present()) {
        rc = find_backend(s, s->backend.config, FS_DEVICE_CUDA, &p, &missing, err);
    }
    int count = 0;
    if (!rc && p && ((const fs_backend_vtable *)p->desc->vtable)->device_count(&count, &missing)) count = 0;
    if (rc || count == 0) return rc;
    /* a GPU for each rank of the machine, or none of them takes one: ranks
     * that chose differently would not be one job (CPU ranks share it) */
    int32_t type = ((const fs_backend_vtable *)p->desc->vtable)->device_type;
    if (type != FS_DEVICE_CPU && count < fs_world_local_size()) return FS_OK;
    *plugin = p;
    *device = (fs_device){type, type == FS_DEVICE_CPU ? 0 : fs_world_local_rank()};
    return FS_OK;
}
