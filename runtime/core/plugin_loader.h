/* plugin_loader.h — finding, opening and checking plugin shared objects.
 *
 * Checks run in a fixed order and stop at the first failure, each with one
 * message naming the file: dlopen, dlsym(fs_plugin_entry), the call, a NULL
 * descriptor, the ABI range, the descriptor size, the kind, the vtable size
 * (and its required members), and, in a registry, a second file claiming a
 * name already loaded.
 *
 * Search order for a name (a name containing '/' is a file path and is not
 * searched): each directory of FS_PLUGIN_PATH, then <dir of fsrun>/plugins
 * (the build tree), then <dir of fsrun>/../lib/fastserve/plugins and the
 * configured install directory. The current directory is never searched.
 * Files are named fsplugin_<kind>_<name>.so. */
#ifndef FS_PLUGIN_LOADER_H
#define FS_PLUGIN_LOADER_H

#include <stddef.h>

#include "core/plugin_kinds.h"
#include "fastserve/plugin.h"

typedef struct fs_plugin {
    char *path;
    void *handle;
    const fs_plugin_descriptor *desc;
} fs_plugin;

/* want_kind 0 accepts any kind. */
int fs_plugin_open(fs_plugin **out, const char *path, int want_kind, fs_error *err);
void fs_plugin_close(fs_plugin *p); /* accepts NULL */

/* The directories searched, in order (NULL-terminated, static storage). */
const char *const *fs_plugin_dirs(void);
/* Resolves `name` of `kind` to a file; FS_ERR_NOT_FOUND lists where it looked
 * and what is available. */
int fs_plugin_find(char *path, size_t cap, int kind, const char *name, fs_error *err);

/* Plugins loaded by this process, each once. */
typedef struct fs_plugin_registry {
    fs_plugin **items;
    size_t n, cap;
} fs_plugin_registry;

int fs_plugin_registry_get(fs_plugin_registry *r, int kind, const char *name, const fs_plugin **out,
                           fs_error *err);
void fs_plugin_registry_release(fs_plugin_registry *r);

/* Calls fn for every plugin file in the search directories, each real file
 * once, with the opened plugin or (p NULL) the error that stopped it. */
typedef void (*fs_plugin_visit_fn)(void *arg, const char *path, const fs_plugin *p, const fs_error *err);
void fs_plugin_scan(fs_plugin_visit_fn fn, void *arg);

#endif
