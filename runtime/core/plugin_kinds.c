/* plugin_kinds.c — the plugin kinds table (see plugin_kinds.h). */
#include "core/plugin_kinds.h"

#include <stdio.h>
#include <string.h>

#include "fastserve/attention.h"
#include "fastserve/backend.h"
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

/* Everything through sample is called unchecked; the collectives only
 * when the plugin sets FS_BACKEND_COLLECTIVES. */
static const char *backend_missing(const void *vt, size_t size) {
    const fs_backend_vtable *b = vt;
    static const struct {
        size_t offset;
        const char *name;
    } required[] = {
#define REQ(m) {offsetof(fs_backend_vtable, m), #m}
        REQ(create), REQ(destroy), REQ(device_count), REQ(device_info), REQ(alloc), REQ(free), REQ(copy),
        REQ(memset), REQ(stream_create), REQ(stream_destroy), REQ(stream_synchronize), REQ(event_create),
        REQ(event_destroy), REQ(event_record), REQ(stream_wait_event), REQ(event_query), REQ(event_synchronize),
        REQ(synchronize), REQ(default_stream), REQ(gemm), REQ(bias_backward), REQ(encoder_forward),
        REQ(encoder_backward), REQ(layernorm_forward), REQ(layernorm_backward), REQ(gelu_forward),
        REQ(gelu_backward), REQ(residual_forward), REQ(residual_backward), REQ(attention_split_heads),
        REQ(attention_split_heads_backward), REQ(attention_merge_heads), REQ(attention_merge_heads_backward),
        REQ(crossentropy_forward_backward), REQ(softmax_forward), REQ(adamw_update), REQ(sumsq), REQ(scale),
        REQ(convert), REQ(sample),
    }, collectives[] = {
        REQ(coll_id), REQ(coll_create), REQ(coll_split), REQ(coll_destroy), REQ(coll_all_reduce),
        REQ(coll_broadcast), REQ(coll_all_gather), REQ(coll_reduce_scatter), REQ(coll_send), REQ(coll_recv),
        REQ(coll_group), REQ(coll_check), REQ(coll_abort),
#undef REQ
    };
    /* members are function pointers: read each as one */
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)b + required[i].offset, sizeof fn);
        if (!fn) return required[i].name;
    }
    if (!(b->flags & FS_BACKEND_COLLECTIVES)) return NULL;
    if (size < END_OF(fs_backend_vtable, coll_abort))
        return "coll_* (the plugin sets FS_BACKEND_COLLECTIVES but its vtable ends before them)";
    for (size_t i = 0; i < sizeof collectives / sizeof collectives[0]; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)b + collectives[i].offset, sizeof fn);
        if (!fn) return collectives[i].name;
    }
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
    {
        .kind = FS_PLUGIN_BACKEND,
        .name = "backend",
        .min_vtable_size = END_OF(fs_backend_vtable, sample),
        .missing_member = backend_missing,
        .schema = &fs_schema_backend,
        .sections = "[backend]",
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
