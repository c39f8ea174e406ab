/* host.h — the services fsrun offers plugins (the fs_host_api table) and
 * the per-instance plugin context behind it.
 *
 * One fs_host per session: the run's seed, and where plugin tensors are
 * placed (its model's parameter block). */
#ifndef FS_HOST_H
#define FS_HOST_H

#include <stdio.h>

#include "fastserve/backend.h"
#include "fastserve/plugin.h"
#include "core/graph.h"
#include "core/threads.h"

/* Where the tensors plugins register go: the session points this at its
 * model's parameter block (fs_model_add_plugin_param), so plugin tensors
 * live in the one flat vector the optimizer, the strategies and
 * checkpoints walk. */
typedef int (*fs_param_place_fn)(void *arg, const char *name, int32_t ndim, const size_t *shape, int weight_decay,
                                 float **param, float **grad, fs_error *err);

typedef struct fs_host {
    fs_host_api api;
    uint64_t seed;
    int verbose;
    fs_param_place_fn place_param;
    void *place_arg;
} fs_host;

struct fs_plugin_ctx {
    fs_host *host;
    const fs_config *config; /* the instance's resolved keys (not owned) */
    char scope[96];          /* "plugin.layer3.attention" etc.: names params and logs */
    const char *plugin_name;
};

void fs_host_init(fs_host *h, uint64_t seed);
void fs_plugin_ctx_init(fs_plugin_ctx *ctx, fs_host *h, const fs_config *cfg, const char *scope,
                        const char *plugin_name);


int fs_error_set(fs_error *err, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void fs_log(int level, const char *who, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void fs_log_set_level(int level);

/* The backend instance that serves the host API's alloc, free and sgemm for
 * devices of vt->device_type (index `index`): plugins given device tensors
 * allocate their work memory and run their matmuls there. One per device
 * type and process ([run] device); NULL vt removes it. sgemm computes as
 * `compute` says (fs_gemm_compute: the run's [train] precision). */
void fs_host_set_backend(const fs_backend_vtable *vt, void *self, int32_t index, int32_t compute);
/* The instance fs_host_set_backend last installed, or NULL. */
const void *fs_host_backend(void);

/* Monotonic seconds. */
double fs_now(void);

/* 64-byte aligned host memory, NULL on failure; fs_free(NULL) is a no-op. */
void *fs_alloc(size_t bytes);
void *fs_calloc(size_t bytes);
void fs_free(void *p);

#endif
