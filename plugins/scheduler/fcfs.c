/* fcfs.c — first come, first served: iteration-level batching, every
 * request run to completion in arrival order (what Orca and vLLM do by
 * default).
 *
 * Each iteration takes the live requests oldest first while the iteration
 * has room (sequences, tokens, blocks): the running ones go on, new ones
 * join as room frees up, and no request starts before an older one that
 * is still waiting for room. When blocks run short an older request takes
 * them from the newest resident one (preempted: swapped out or
 * recomputed), as vLLM does. One queue. */
#include <string.h>

#include "fastserve/scheduler.h"
#include "pick.h"

typedef struct fcfs {
    const fs_host_api *host;
    unsigned char *mark;
    size_t *order;
    size_t cap;
} fcfs;

static int fcfs_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_scheduler_config *cfg,
                       fs_error *err) {
    (void)ctx;
    (void)cfg;
    fs_device cpu = {FS_DEVICE_CPU, 0};
    fcfs *f = host->alloc(cpu, sizeof *f);
    if (!f) return host->error_set(err, FS_ERR_NOMEM, "fcfs scheduler: out of memory");
    memset(f, 0, sizeof *f);
    f->host = host;
    *self = f;
    return FS_OK;
}

static void fcfs_destroy(void *self) {
    fcfs *f = self;
    if (!f) return;
    fs_device cpu = {FS_DEVICE_CPU, 0};
    f->host->free(cpu, f->mark);
    f->host->free(cpu, f->order);
    f->host->free(cpu, f);
}

static size_t fcfs_seq_bytes(void *self) {
    (void)self;
    return 0;
}

static size_t fcfs_levels(void *self) {
    (void)self;
    return 1;
}

static void fcfs_arrive(void *self, fs_sched_seq *seq, double now) {
    (void)self;
    (void)now;
    seq->level = 0;
}

static int grow(fcfs *f, size_t n, fs_error *err) {
    if (n <= f->cap) return FS_OK;
    fs_device cpu = {FS_DEVICE_CPU, 0};
    f->host->free(cpu, f->mark);
    f->host->free(cpu, f->order);
    f->mark = f->host->alloc(cpu, n);
    f->order = f->host->alloc(cpu, n * sizeof *f->order);
    f->cap = f->mark && f->order ? n : 0;
    return f->cap ? FS_OK : f->host->error_set(err, FS_ERR_NOMEM, "fcfs scheduler: out of memory");
}

static int fcfs_schedule(void *self, double now, fs_sched_seq *const *seqs, size_t n, const fs_sched_budget *b,
                         fs_sched_plan *plan, fs_error *err) {
    fcfs *f = self;
    (void)now;
    int rc = grow(f, n, err);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) f->order[i] = i; /* the engine lists them in arrival order */
    sched_pick(seqs, n, f->order, b, PICK_HOLD_STARTS, f->mark, plan);
    return FS_OK;
}

static void fcfs_account(void *self, const fs_sched_iteration *it) {
    (void)self;
    (void)it;
}

static void fcfs_finish(void *self, fs_sched_seq *seq, double now) {
    (void)self;
    (void)seq;
    (void)now;
}

static const fs_scheduler_vtable fcfs_vtable = {
    .struct_size = sizeof(fs_scheduler_vtable),
    .create = fcfs_create,
    .destroy = fcfs_destroy,
    .seq_bytes = fcfs_seq_bytes,
    .levels = fcfs_levels,
    .arrive = fcfs_arrive,
    .schedule = fcfs_schedule,
    .account = fcfs_account,
    .finish = fcfs_finish,
};

static const fs_plugin_descriptor fcfs_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_SCHEDULER,
    .name = "fcfs",
    .version = "1.0.0",
    .summary = "first come, first served: iteration-level batching, run to completion in arrival order (Orca, vLLM)",
    .params = NULL,
    .n_params = 0,
    .vtable = &fcfs_vtable,
    .vtable_size = sizeof(fcfs_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(fcfs_descriptor)
