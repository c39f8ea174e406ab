/* crash_attention.c — an attention plugin that crashes where [attention]
 * crash says: in forward on the calling thread, or in a parallel_for body
 * it hands the host, on a worker thread (tests/e2e/test_plugin_crash.sh).
 * Until then it is dense attention's shape without its arithmetic: create,
 * saved_bytes and backward work. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fastserve/attention.h"

typedef struct crash {
    const fs_host_api *host;
    int on_worker;
    pthread_t caller;
} crash;

static int crash_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                        fs_error *err) {
    crash *c = calloc(1, sizeof *c);
    if (!c) return host->error_set(err, FS_ERR_NOMEM, "out of memory");
    c->host = host;
    c->on_worker = !strcmp(host->config_string(ctx, "crash"), "worker");
    *self = c;
    return FS_OK;
}

static void crash_destroy(void *self) { free(self); }
static size_t crash_saved_bytes(void *self, size_t B, size_t T) { return 0; }

static void fault(void) {
    /* the first page is never mapped; not NULL, which UBSan would stop at
     * before any signal */
    volatile int *volatile nowhere = (volatile int *)(uintptr_t)64;
    *nowhere = 1; /* SIGSEGV */
}

/* A worker's chunk faults; the calling thread's take a while, so the
 * workers get chunks of their own. */
static void body(void *arg, size_t begin, size_t end) {
    crash *c = arg;
    if (!pthread_equal(pthread_self(), c->caller)) fault();
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static int crash_forward(void *self, fs_attention_args *args, fs_error *err) {
    crash *c = self;
    if (!c->on_worker) fault();
    c->caller = pthread_self();
    c->host->parallel_for(64, 1, body, c);
    return c->host->error_set(err, FS_ERR_UNSUPPORTED, "crash = worker: no worker thread ran a chunk (threads = 1?)");
}

static int crash_backward(void *self, fs_attention_args *args, fs_error *err) { return FS_ERR_UNSUPPORTED; }

static const fs_attention_vtable vtable = {
    .struct_size = sizeof(fs_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL,
    .create = crash_create,
    .destroy = crash_destroy,
    .saved_bytes = crash_saved_bytes,
    .forward = crash_forward,
    .backward = crash_backward,
};

static const fs_param_spec params[] = {
    {"crash", FS_PARAM_ENUM, "forward", 0, 0, "forward|worker", "where to crash"},
};

static const fs_plugin_descriptor descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "test_crash",
    .version = "0",
    .summary = "test plugin: crashes in forward, or in a parallel_for body on a worker thread",
    .params = params,
    .n_params = sizeof params / sizeof params[0],
    .vtable = &vtable,
    .vtable_size = sizeof vtable,
};

FS_PLUGIN_DEFINE_ENTRY(descriptor)
