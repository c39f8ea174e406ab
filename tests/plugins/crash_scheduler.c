/* crash_scheduler.c — a scheduler plugin that crashes when the engine asks
 * for its first plan (tests/e2e/test_plugin_crash.sh: the serving path's
 * calls are named too). Until then it is a scheduler of one queue. */
#include <stdint.h>

#include "fastserve/scheduler.h"

static int crash_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_scheduler_config *cfg,
                        fs_error *err) {
    static int instance;
    *self = &instance;
    return FS_OK;
}

static void crash_destroy(void *self) {}
static size_t crash_seq_bytes(void *self) { return 0; }
static size_t crash_levels(void *self) { return 1; }
static void crash_arrive(void *self, fs_sched_seq *seq, double now) { seq->level = 0; }

static int crash_schedule(void *self, double now, fs_sched_seq *const *seqs, size_t n, const fs_sched_budget *budget,
                          fs_sched_plan *plan, fs_error *err) {
    /* the first page is never mapped; not NULL, which UBSan would stop at
     * before any signal */
    volatile int *volatile nowhere = (volatile int *)(uintptr_t)64;
    *nowhere = 1; /* SIGSEGV */
    return FS_OK;
}

static void crash_account(void *self, const fs_sched_iteration *it) {}
static void crash_finish(void *self, fs_sched_seq *seq, double now) {}

static const fs_scheduler_vtable vtable = {
    .struct_size = sizeof(fs_scheduler_vtable),
    .create = crash_create,
    .destroy = crash_destroy,
    .seq_bytes = crash_seq_bytes,
    .levels = crash_levels,
    .arrive = crash_arrive,
    .schedule = crash_schedule,
    .account = crash_account,
    .finish = crash_finish,
};

static const fs_plugin_descriptor descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_SCHEDULER,
    .name = "test_crash",
    .version = "0",
    .summary = "test plugin: crashes in schedule",
    .vtable = &vtable,
    .vtable_size = sizeof vtable,
};

FS_PLUGIN_DEFINE_ENTRY(descriptor)
