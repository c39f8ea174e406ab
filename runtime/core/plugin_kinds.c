/* plugin_kinds.c — the plugin kinds table (see plugin_kinds.h). */
#include "core/plugin_kinds.h"

#include <stdio.h>
#include <string.h>

#include "fastserve/attention.h"
#include "fastserve/distill.h"
#include "fastserve/parallel.h"
#include "fastserve/scheduler.h"

#define END_OF(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))

static const char *attention_missing(const void *vt, size_t size) {
    const fs_attention_vtable *a = vt;
    if (!a->create) return "create";
    if (!a->destroy) return "destroy";
    if (!a->saved_bytes) return "saved_bytes";
    if (!a->forward) return "forward";
    if (!a->backward) return "backward";
    if ((a->flags & FS_ATTENTION_DECODE) && (!a->cache_bytes || !a->cache_reset || !a->decode))
        return "cache_bytes/cache_reset/decode (the plugin sets FS_ATTENTION_DECODE)";
    if (a->flags & FS_ATTENTION_PAGED) {
        if (!FS_HAS_MEMBER(a, size, fs_attention_vtable, paged_step) || !a->paged_block_bytes || !a->paged_step)
            return "paged_block_bytes/paged_step (the plugin sets FS_ATTENTION_PAGED)";
        if ((a->flags & FS_ATTENTION_BOUNDED_CACHE) &&
            (!FS_HAS_MEMBER(a, size, fs_attention_vtable, paged_max_blocks) || !a->paged_retain ||
             !a->paged_max_blocks))
            return "paged_retain/paged_max_blocks (the plugin sets FS_ATTENTION_PAGED with FS_ATTENTION_BOUNDED_CACHE)";
    }
    return NULL;
}

static const char *parallel_missing(const void *vt, size_t size) {
    (void)size;
    const fs_parallel_vtable *p = vt;
    if (!p->create) return "create";
    if (!p->destroy) return "destroy";
    if (!p->topology) return "topology";
    if (!p->batch_slice) return "batch_slice";
    if (!p->grads_ready) return "grads_ready";
    if (!p->grads_finish) return "grads_finish";
    if (!p->reduce_sum) return "reduce_sum";
    return NULL;
}

static const char *distill_missing(const void *vt, size_t size) {
    (void)size;
    const fs_distill_vtable *d = vt;
    if (!d->create) return "create";
    if (!d->destroy) return "destroy";
    if (!d->needs) return "needs";
    if (!d->loss) return "loss";
    return NULL;
}

static const char *scheduler_missing(const void *vt, size_t size) {
    const fs_scheduler_vtable *s = vt;
    (void)size;
    if (!s->create) return "create";
    if (!s->destroy) return "destroy";
    if (!s->seq_bytes) return "seq_bytes";
    if (!s->levels) return "levels";
    if (!s->arrive) return "arrive";
    if (!s->schedule) return "schedule";
    if (!s->account) return "account";
    if (!s->finish) return "finish";
    return NULL;
}

const fs_plugin_kind_info fs_plugin_kinds[] = {
    {
        .kind = FS_PLUGIN_ATTENTION,
        .name = "attention",
        .min_vtable_size = END_OF(fs_attention_vtable, decode),
        .missing_member = attention_missing,
        .schema = &fs_schema_attention,
        .sections = "[attention] and [layer.N]",
    },
    {
        .kind = FS_PLUGIN_PARALLEL,
        .name = "parallel",
        .min_vtable_size = END_OF(fs_parallel_vtable, reduce_sum),
        .missing_member = parallel_missing,
        .schema = &fs_schema_parallel,
        .sections = "[parallel]",
    },
    {
        .kind = FS_PLUGIN_DISTILL,
        .name = "distill",
        .min_vtable_size = END_OF(fs_distill_vtable, loss),
        .missing_member = distill_missing,
        .schema = &fs_schema_distill,
        .sections = "[distill]",
    },
    {
        .kind = FS_PLUGIN_SCHEDULER,
        .name = "scheduler",
        .min_vtable_size = END_OF(fs_scheduler_vtable, finish),
        .missing_member = scheduler_missing,
        .schema = &fs_schema_serve,
        .sections = "[serve]",
    },
};
const size_t fs_n_plugin_kinds = sizeof fs_plugin_kinds / sizeof fs_plugin_kinds[0];

const fs_plugin_kind_info *fs_plugin_kind_info_of(int kind) {
    for (size_t i = 0; i < fs_n_plugin_kinds; i++)
        if (fs_plugin_kinds[i].kind == kind) return &fs_plugin_kinds[i];
    return NULL;
}

const char *fs_plugin_kind_name(int kind) {
    const fs_plugin_kind_info *k = fs_plugin_kind_info_of(kind);
    return k ? k->name : "unknown";
}

int fs_plugin_kind_from_name(const char *name) {
    for (size_t i = 0; i < fs_n_plugin_kinds; i++)
        if (strcmp(name, fs_plugin_kinds[i].name) == 0) return fs_plugin_kinds[i].kind;
    return 0;
}

size_t fs_plugin_min_vtable_size(int kind) {
    const fs_plugin_kind_info *k = fs_plugin_kind_info_of(kind);
    return k ? k->min_vtable_size : 0;
}

void fs_plugin_kind_names(char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < fs_n_plugin_kinds && used < cap; i++) {
        const char *sep = i == 0 ? "" : i + 1 == fs_n_plugin_kinds ? " or " : ", ";
        int n = snprintf(buf + used, cap - used, "%s%s", sep, fs_plugin_kinds[i].name);
        if (n < 0) break;
        used += (size_t)n;
    }
}
