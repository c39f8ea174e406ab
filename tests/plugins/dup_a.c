/* dup_a.c — test plugin: first of two files declaring the name broken_dup */
#include "fastserve/attention.h"

extern const fs_attention_vtable fs_test_stub_vtable;

static const fs_plugin_descriptor desc = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "broken_dup",
    .version = "0.0.1",
    .summary = "test plugin: first of two files declaring the name broken_dup",
    .vtable = &fs_test_stub_vtable,
    .vtable_size = sizeof(fs_attention_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(desc)
