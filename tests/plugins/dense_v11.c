/* dense_v11.c — dense attention as a plugin built against SDK 1.1 was:
 * ABI 1.1, a vtable that ends after scores_backward, no paged step. It must
 * still load, train and generate (through its decode step); the serving
 * engine refuses it, naming it and what it lacks (tests/unit/test_paged.c,
 * test_engine.c). */
#include "fastserve/plugin.h"

/* dense.c's own entry point is left out: this file exports the 1.1 one */
#undef FS_PLUGIN_DEFINE_ENTRY
#define FS_PLUGIN_DEFINE_ENTRY(d) __attribute__((unused)) static const fs_plugin_descriptor *const newest_ = &(d);
#include "../../plugins/attention/dense.c"

#define V11_VTABLE_SIZE offsetof(fs_attention_vtable, paged_block_bytes)

static const fs_attention_vtable v11_vtable = {
    .struct_size = V11_VTABLE_SIZE,
    .flags = FS_ATTENTION_CAUSAL | FS_ATTENTION_BIDIRECTIONAL | FS_ATTENTION_DECODE | FS_ATTENTION_SCORES,
    .create = dense_create,
    .destroy = dense_destroy,
    .saved_bytes = dense_saved_bytes,
    .forward = dense_forward,
    .backward = dense_backward,
    .cache_bytes = dense_cache_bytes,
    .cache_reset = dense_cache_reset,
    .decode = dense_decode,
    .scores = dense_scores,
    .scores_backward = dense_scores_backward,
};

static const fs_plugin_descriptor v11_descriptor = {
    .abi_version = FS_ABI_MAKE(1, 1),
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "dense_v11",
    .version = "1.0.0",
    .summary = "dense attention as built against SDK 1.1 (no paged step): for the compatibility tests",
    .params = NULL,
    .n_params = 0,
    .vtable = &v11_vtable,
    .vtable_size = V11_VTABLE_SIZE,
};

FS_PLUGIN_EXPORT const fs_plugin_descriptor *fs_plugin_entry(void);
FS_PLUGIN_EXPORT const fs_plugin_descriptor *fs_plugin_entry(void) { return &v11_descriptor; }
