/* abi_new.c — test plugin built against a newer SDK (ABI major + 1) */
#include "fastserve/attention.h"

extern const fs_attention_vtable fs_test_stub_vtable;

static const fs_plugin_descriptor desc = {
    .abi_version = FS_ABI_MAKE(FS_ABI_MAJOR + 1, 0),
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "broken_abi_new",
    .version = "0.0.1",
    .summary = "test plugin built against a newer SDK (ABI major + 1)",
    .vtable = &fs_test_stub_vtable,
    .vtable_size = sizeof(fs_attention_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(desc)
