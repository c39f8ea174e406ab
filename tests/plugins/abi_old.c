/* abi_old.c — test plugin built against an old SDK (ABI 0.3) */
#include "fastserve/attention.h"

extern const fs_attention_vtable fs_test_stub_vtable;

static const fs_plugin_descriptor desc = {
    .abi_version = FS_ABI_MAKE(0, 3),
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "broken_abi_old",
    .version = "0.0.1",
    .summary = "test plugin built against an old SDK (ABI 0.3)",
    .vtable = &fs_test_stub_vtable,
    .vtable_size = sizeof(fs_attention_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(desc)
