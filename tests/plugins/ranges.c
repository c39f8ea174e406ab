/* ranges.c — an attention plugin (refusing to run) whose keys have every
 * kind of range, for `fsrun --describe`: closed, open above, open below,
 * open both ways (FS_PARAM_UNBOUNDED), none (min > max), and a bound beyond
 * FS_PARAM_UNBOUNDED as a plugin built before the name might write it. */
#include "fastserve/attention.h"

extern const fs_attention_vtable fs_test_stub_vtable;

static const fs_param_spec params[] = {
    {"closed", FS_PARAM_INT, "4", 1, 8, NULL, "a closed range"},
    {"at_least", FS_PARAM_INT, "1", 1, FS_PARAM_UNBOUNDED, NULL, "open above"},
    {"at_most", FS_PARAM_INT, "0", -FS_PARAM_UNBOUNDED, 8, NULL, "open below"},
    {"any_float", FS_PARAM_FLOAT, "0", -FS_PARAM_UNBOUNDED, FS_PARAM_UNBOUNDED, NULL, "open both ways"},
    {"no_range", FS_PARAM_INT, "0", 1, 0, NULL, "min > max: no range"},
    {"legacy_big", FS_PARAM_INT_LIST, "2", 2, 1e18, NULL, "a bound beyond FS_PARAM_UNBOUNDED"},
    {"wide", FS_PARAM_INT, "2", 2, 1048576, NULL, "integers printed whole"},
};

static const fs_plugin_descriptor descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "test_ranges",
    .version = "0",
    .summary = "test plugin: keys with every kind of range",
    .params = params,
    .n_params = sizeof params / sizeof params[0],
    .vtable = &fs_test_stub_vtable,
    .vtable_size = sizeof(fs_attention_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(descriptor)
