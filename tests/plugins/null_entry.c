/* null_entry.c — fs_plugin_entry returns NULL instead of its descriptor. */
#include "fastserve/plugin.h"

FS_PLUGIN_EXPORT const fs_plugin_descriptor *fs_plugin_entry(void);
FS_PLUGIN_EXPORT const fs_plugin_descriptor *fs_plugin_entry(void) { return NULL; }
