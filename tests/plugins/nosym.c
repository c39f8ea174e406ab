/* nosym.c — a plugin that forgot FS_PLUGIN_DEFINE_ENTRY: its entry function
 * has hidden visibility (as everything does under -fvisibility=hidden), so
 * the shared object exports no fs_plugin_entry symbol. */
#include "fastserve/attention.h"

extern const fs_attention_vtable fs_test_stub_vtable;

static const fs_plugin_descriptor desc = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "broken_nosym",
    .version = "0.0.1",
    .summary = "test plugin that exports no entry symbol",
    .vtable = &fs_test_stub_vtable,
    .vtable_size = sizeof(fs_attention_vtable),
};

__attribute__((visibility("hidden"))) const fs_plugin_descriptor *fs_plugin_entry(void);
__attribute__((visibility("hidden"))) const fs_plugin_descriptor *fs_plugin_entry(void) { return &desc; }
