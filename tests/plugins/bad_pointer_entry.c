/* bad_pointer_entry.c — fs_plugin_entry returns a pointer to nothing: the
 * loader's first look at the descriptor faults (test_plugin_crash.sh). */
#include <stdint.h>

#include "fastserve/plugin.h"

FS_PLUGIN_EXPORT const fs_plugin_descriptor *fs_plugin_entry(void);
FS_PLUGIN_EXPORT const fs_plugin_descriptor *fs_plugin_entry(void) {
    return (const fs_plugin_descriptor *)(uintptr_t)64; /* the first page is never mapped */
}
