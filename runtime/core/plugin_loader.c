/* plugin_loader.c — see plugin_loader.h for the order of checks. */
#include "core/plugin_loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/crash.h"
#include "core/host.h"

#define END_OF(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))

static const char *article(const char *word) { return strchr("aeiou", word[0]) ? "an" : "a"; }

static int kind_mismatch(fs_error *err, const char *path, const char *name, int have, int want) {
    const char *h = fs_plugin_kind_name(have), *w = fs_plugin_kind_name(want);
    return fs_error_set(err, FS_ERR_INVALID, "%s: plugin '%s' is %s %s plugin, but %s %s plugin is needed here", path,
                        name ? name : "?", article(h), h, article(w), w);
}

static void version_text(char *buf, size_t cap, uint32_t v) {
    snprintf(buf, cap, "%u.%u", FS_ABI_VERSION_MAJOR_OF(v), FS_ABI_VERSION_MINOR_OF(v));
}

/* ---- opening: one function per check, in the order plugin_loader.h gives ---- */

/* dlopen: the file must exist and be a shared object for this system. */
static int load_shared_object(void **handle, const char *path, fs_error *err) {
    if (access(path, R_OK) != 0) return fs_error_set(err, FS_ERR_NOT_FOUND, "%s: plugin file not found", path);
    *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!*handle)
        return fs_error_set(err, FS_ERR_ABI,
                            "%s: cannot load plugin (not a shared object built for this system, or a library it "
                            "needs is missing): %s",
                            path, dlerror());
    return FS_OK;
}

/* dlsym(fs_plugin_entry), the call, and a descriptor back from it. */
static int call_entry(const fs_plugin_descriptor **d, void *handle, const char *path, fs_error *err) {
    dlerror();
    fs_plugin_entry_fn entry;
    *(void **)&entry = dlsym(handle, FS_PLUGIN_ENTRY_SYMBOL);
    if (!entry)
        return fs_error_set(err, FS_ERR_ABI,
                            "%s: not a FastServe plugin: it exports no '%s' symbol (define it with "
                            "FS_PLUGIN_DEFINE_ENTRY from <fastserve/plugin.h>)",
                            path, FS_PLUGIN_ENTRY_SYMBOL);
    FS_PLUGIN_CALL(NULL, path, FS_PLUGIN_ENTRY_SYMBOL, -1, *d = entry());
    if (!*d)
        return fs_error_set(err, FS_ERR_ABI, "%s: %s() returned NULL; it must return its static descriptor", path,
                            FS_PLUGIN_ENTRY_SYMBOL);
    return FS_OK;
}

/* What the checks of a descriptor see. */
typedef struct opening {
    const char *path;
    const fs_plugin_descriptor *d;
    int want_kind;                          /* 0: any */
    const fs_plugin_kind_info *kind;        /* set by check_kind */
    char host_v[16], min_v[16], plug_v[16]; /* ABI versions as text */
} opening;

static int check_abi_range(opening *o, fs_error *err) {
    if (o->d->abi_version > FS_ABI_VERSION)
        return fs_error_set(err, FS_ERR_ABI,
                            "%s: plugin ABI %s is newer than this fsrun's ABI %s (accepted %s to %s); upgrade "
                            "fsrun or rebuild the plugin against SDK %s",
                            o->path, o->plug_v, o->host_v, o->min_v, o->host_v, o->host_v);
    if (o->d->abi_version < FS_ABI_VERSION_MIN)
        return fs_error_set(err, FS_ERR_ABI,
                            "%s: plugin ABI %s is older than this fsrun accepts (%s to %s); rebuild the plugin "
                            "against SDK %s",
                            o->path, o->plug_v, o->min_v, o->host_v, o->host_v);
    return FS_OK;
}

static int check_descriptor_size(opening *o, fs_error *err) {
    size_t need = END_OF(fs_plugin_descriptor, vtable_size);
    if (o->d->struct_size < need)
        return fs_error_set(err, FS_ERR_ABI,
                            "%s: plugin descriptor is %u bytes, ABI %s needs at least %zu; rebuild the plugin "
                            "against SDK %s",
                            o->path, o->d->struct_size, o->host_v, need, o->host_v);
    return FS_OK;
}

/* A kind of the table, the one wanted; then a name and a parameter table. */
static int check_kind(opening *o, fs_error *err) {
    const fs_plugin_descriptor *d = o->d;
    o->kind = fs_plugin_kind_info_of(d->kind);
    if (!o->kind) {
        char kinds[128];
        fs_plugin_kind_names(kinds, sizeof kinds);
        return fs_error_set(err, FS_ERR_ABI, "%s: plugin declares unknown kind %d (expected %s)", o->path,
                            (int)d->kind, kinds);
    }
    if (o->want_kind && d->kind != o->want_kind) return kind_mismatch(err, o->path, d->name, d->kind, o->want_kind);
    if (!d->name || !*d->name || (d->n_params && !d->params))
        return fs_error_set(err, FS_ERR_ABI, "%s: plugin descriptor has no name or a NULL parameter table", o->path);
    return FS_OK;
}

/* The vtable covers what the host calls unchecked (by the smaller of the
 * descriptor's vtable_size and the vtable's own struct_size). */
static int check_vtable_size(opening *o, fs_error *err) {
    const fs_plugin_descriptor *d = o->d;
    size_t need = o->kind->min_vtable_size;
    size_t vt_self = d->vtable ? *(const uint32_t *)d->vtable : 0; /* the vtable's own struct_size */
    size_t vt_have = d->vtable_size < vt_self ? d->vtable_size : vt_self;
    if (vt_have < need)
        return fs_error_set(err, FS_ERR_ABI,
                            "%s: %s vtable of plugin '%s' is %zu bytes, fsrun (ABI %s) needs at least %zu; the "
                            "plugin was built against an older SDK: rebuild it against SDK %s",
                            o->path, o->kind->name, d->name, vt_have, o->host_v, need, o->host_v);
    return FS_OK;
}

static int check_required_members(opening *o, fs_error *err) {
    size_t vt_self = *(const uint32_t *)o->d->vtable, size = o->d->vtable_size < vt_self ? o->d->vtable_size : vt_self;
    const char *miss = o->kind->missing_member(o->d->vtable, size);
    if (miss)
        return fs_error_set(err, FS_ERR_ABI, "%s: %s plugin '%s' leaves vtable member %s NULL", o->path,
                            o->kind->name, o->d->name, miss);
    return FS_OK;
}

/* Each reads what the ones before it established. */
static int (*const descriptor_checks[])(opening *, fs_error *) = {
    check_abi_range, check_descriptor_size, check_kind, check_vtable_size, check_required_members,
};

static int check_descriptor(opening *o, fs_error *err) {
    version_text(o->host_v, sizeof o->host_v, FS_ABI_VERSION);
    version_text(o->min_v, sizeof o->min_v, FS_ABI_VERSION_MIN);
    version_text(o->plug_v, sizeof o->plug_v, o->d->abi_version);
    int rc = FS_OK;
    for (size_t i = 0; !rc && i < sizeof descriptor_checks / sizeof descriptor_checks[0]; i++)
        rc = descriptor_checks[i](o, err);
    return rc;
}

int fs_plugin_open(fs_plugin **out, const char *path, int want_kind, fs_error *err) {
    *out = NULL;
    void *handle;
    opening o = {.path = path, .want_kind = want_kind};
    int rc = load_shared_object(&handle, path, err);
    if (rc) return rc;
    rc = call_entry(&o.d, handle, path, err);
    /* a bad pointer from the entry crashes here, reading the descriptor: named as the entry's */
    if (!rc)
        FS_PLUGIN_CALL(NULL, path, FS_PLUGIN_ENTRY_SYMBOL " (reading the descriptor it returned)", -1,
                       rc = check_descriptor(&o, err));
    fs_plugin *p = NULL;
    if (!rc && (!(p = calloc(1, sizeof *p)) || !(p->path = strdup(path)))) {
        free(p);
        rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory loading %s", path);
    }
    if (rc) {
        dlclose(handle);
        return rc;
    }
    p->handle = handle;
    p->desc = o.d;
    *out = p;
    return FS_OK;
}

void fs_plugin_close(fs_plugin *p) {
    if (!p) return;
    if (p->handle) dlclose(p->handle);
    free(p->path);
    free(p);
}

/* ---- search ---- */

/* Where an installed fsrun finds the installed plugins, relative to its own
 * directory (CMake passes the real layout: bin/ to lib/ or lib64/ or
 * lib/<multiarch>/). */
#ifndef FS_PLUGIN_INSTALL_RELDIR
#define FS_PLUGIN_INSTALL_RELDIR "../lib/fastserve/plugins"
#endif

/* A growable list of strings, NULL-terminated once it holds one. */
typedef struct str_list {
    char **items;
    size_t n, cap;
} str_list;

/* Appends a copy of `s`; -1 when out of memory (the list is unchanged). */
static int str_list_add(str_list *l, const char *s) {
    if (l->n + 2 > l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        char **items = realloc(l->items, cap * sizeof *items);
        if (!items) return -1;
        l->items = items;
        l->cap = cap;
    }
    if (!(l->items[l->n] = strdup(s))) return -1;
    l->items[++l->n] = NULL;
    return 0;
}

static int str_list_has(const str_list *l, const char *s) {
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i], s) == 0) return 1;
    return 0;
}

static void str_list_release(str_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* The search directories, made once per process and kept: as many as
 * FS_PLUGIN_PATH names, each once. */
static str_list g_dirs;
static int g_dirs_made;

/* Appends `dir` (canonical when it exists, so messages show plain paths)
 * unless it is already listed. */
static void add_dir(const char *dir) {
    char *real = realpath(dir, NULL);
    const char *d = real ? real : dir;
    if (!str_list_has(&g_dirs, d) && str_list_add(&g_dirs, d))
        fs_log(FS_LOG_WARN, "fsrun", "out of memory: plugin directory %s is not searched", d);
    free(real);
}

const char *const *fs_plugin_dirs(void) {
    static const char *const none[] = {NULL};
    if (g_dirs_made) return g_dirs.n ? (const char *const *)g_dirs.items : none;
    g_dirs_made = 1;
    const char *env = getenv("FS_PLUGIN_PATH");
    char *path = env && *env ? strdup(env) : NULL;
    if (env && *env && !path) fs_log(FS_LOG_WARN, "fsrun", "out of memory: FS_PLUGIN_PATH is not searched");
    for (char *save = NULL, *tok = path ? strtok_r(path, ":", &save) : NULL; tok; tok = strtok_r(NULL, ":", &save))
        add_dir(tok);
    free(path);
    char exe[PATH_MAX], buf[PATH_MAX + 64];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *dir = dirname(exe);
        snprintf(buf, sizeof buf, "%s/plugins", dir);
        add_dir(buf);
        snprintf(buf, sizeof buf, "%s/%s", dir, FS_PLUGIN_INSTALL_RELDIR);
        add_dir(buf);
    }
    add_dir(FS_PLUGIN_INSTALL_DIR);
    add_dir(FS_PLUGIN_BUILD_DIR);
    return g_dirs.n ? (const char *const *)g_dirs.items : none;
}

/* True when the ", "-separated `list` holds the `len` bytes of `name`. */
static int list_has(const char *list, const char *name, size_t len) {
    for (const char *p = list; *p;) {
        const char *end = strstr(p, ", ");
        size_t l = end ? (size_t)(end - p) : strlen(p);
        if (l == len && strncmp(p, name, len) == 0) return 1;
        if (!end) break;
        p = end + 2;
    }
    return 0;
}

/* The names of `kind`'s plugin files in `dirs`, each once, as "a, b, c";
 * ", ..." ends a list too long for buf. Returns how many were written. */
static size_t available_names(char *buf, size_t cap, int kind, const char *const *dirs) {
    size_t used = 0, n = 0;
    int more = 0;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "fsplugin_%s_", fs_plugin_kind_name(kind));
    size_t lp = strlen(prefix);
    buf[0] = '\0';
    for (size_t i = 0; dirs[i]; i++) {
        DIR *dir = opendir(dirs[i]);
        if (!dir) continue;
        struct dirent *e;
        while ((e = readdir(dir))) {
            size_t l = strlen(e->d_name);
            if (l <= lp + 3 || strncmp(e->d_name, prefix, lp) != 0 || strcmp(e->d_name + l - 3, ".so") != 0)
                continue;
            const char *nm = e->d_name + lp;
            size_t nl = l - lp - 3;
            if (list_has(buf, nm, nl)) continue;
            if (used + 2 + nl + 6 > cap) { /* keep room for ", ..." */
                more = 1;
                continue;
            }
            used += (size_t)snprintf(buf + used, cap - used, "%s%.*s", used ? ", " : "", (int)nl, nm);
            n++;
        }
        closedir(dir);
    }
    if (more) snprintf(buf + used, cap - used, ", ...");
    return n;
}

/* "A, B, C", or "A, B and 7 more directories" when all would not fit in
 * buf ("9 directories" when not even the first does). */
static void searched_text(char *buf, size_t cap, const char *const *dirs) {
    size_t n = 0, used = 0;
    while (dirs[n]) n++;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        /* this one, with room after it to say how many follow */
        char tail[48] = "";
        if (i + 1 < n) snprintf(tail, sizeof tail, " and %zu more directories", n - i - 1);
        if (used + 2 + strlen(dirs[i]) + strlen(tail) >= cap) {
            snprintf(buf + used, cap - used, i ? " and %zu more directories" : "%zu directories", n - i);
            return;
        }
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", dirs[i]);
    }
}

int fs_plugin_find(char *path, size_t cap, int kind, const char *name, fs_error *err) {
    if (strchr(name, '/')) {
        if (access(name, R_OK) != 0)
            return fs_error_set(err, FS_ERR_NOT_FOUND, "%s: plugin file not found", name);
        snprintf(path, cap, "%s", name);
        return FS_OK;
    }
    const char *const *dirs = fs_plugin_dirs();
    const char *kn = fs_plugin_kind_name(kind);
    for (size_t i = 0; dirs[i]; i++) {
        snprintf(path, cap, "%s/fsplugin_%s_%s.so", dirs[i], kn, name);
        if (access(path, R_OK) == 0) return FS_OK;
    }
    /* Say what exists so a typo is easy to spot, and where it looked, in
     * the room the message has, less what a caller puts before it
     * ("graph.ini:3: [attention] plugin = x: "). */
    char avail[160], head[sizeof err->message], where[sizeof err->message];
    if (!available_names(avail, sizeof avail, kind, dirs)) snprintf(avail, sizeof avail, "none");
    int lh = snprintf(head, sizeof head,
                      "no %s plugin named '%s' (available: %s); put fsplugin_%s_%s.so in a directory of "
                      "FS_PLUGIN_PATH or give the file's path; searched ",
                      kn, name, avail, kn, name);
    size_t prefix_room = 96, room = 96;
    if (lh > 0 && (size_t)lh + prefix_room + room < sizeof where) room = sizeof where - (size_t)lh - prefix_room;
    searched_text(where, room, dirs);
    return fs_error_set(err, FS_ERR_NOT_FOUND, "%s%s", head, where);
}

int fs_plugin_registry_get(fs_plugin_registry *r, int kind, const char *name, const fs_plugin **out,
                           fs_error *err) {
    char path[PATH_MAX];
    int rc = fs_plugin_find(path, sizeof path, kind, name, err);
    if (rc) return rc;
    char real[PATH_MAX];
    if (!realpath(path, real)) snprintf(real, sizeof real, "%s", path);
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->items[i]->path, real) == 0) {
            if (r->items[i]->desc->kind != kind)
                return kind_mismatch(err, real, r->items[i]->desc->name, r->items[i]->desc->kind, kind);
            *out = r->items[i];
            return FS_OK;
        }
    fs_plugin *p;
    rc = fs_plugin_open(&p, real, kind, err);
    if (rc) return rc;
    for (size_t i = 0; i < r->n; i++)
        if (r->items[i]->desc->kind == p->desc->kind && strcmp(r->items[i]->desc->name, p->desc->name) == 0) {
            fs_error_set(err, FS_ERR_INVALID,
                         "%s: duplicate %s plugin name '%s', already loaded from %s; rename one of them or remove "
                         "it from the plugin path",
                         real, fs_plugin_kind_name(kind), p->desc->name, r->items[i]->path);
            fs_plugin_close(p);
            return FS_ERR_INVALID;
        }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 8;
        fs_plugin **items = realloc(r->items, cap * sizeof *items);
        if (!items) {
            fs_plugin_close(p);
            return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        }
        r->items = items;
        r->cap = cap;
    }
    r->items[r->n++] = p;
    *out = p;
    return FS_OK;
}

void fs_plugin_registry_release(fs_plugin_registry *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) fs_plugin_close(r->items[i]);
    free(r->items);
    r->items = NULL;
    r->n = r->cap = 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The plugin file names in `dir`, sorted; -1 when out of memory. */
static int plugin_files(str_list *names, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, "fsplugin_", 9) == 0 && l > 3 && strcmp(e->d_name + l - 3, ".so") == 0)
            rc = str_list_add(names, e->d_name);
    }
    closedir(d);
    if (names->n) qsort(names->items, names->n, sizeof *names->items, cmp_str);
    return rc;
}

void fs_plugin_scan(fs_plugin_visit_fn fn, void *arg) {
    const char *const *dirs = fs_plugin_dirs();
    str_list seen = {0}; /* real paths visited: a file reached twice is listed once */
    for (size_t i = 0; dirs[i]; i++) {
        str_list names = {0};
        if (plugin_files(&names, dirs[i])) {
            fs_error err = {FS_ERR_NOMEM, ""};
            snprintf(err.message, sizeof err.message, "%s: out of memory listing its plugins", dirs[i]);
            fn(arg, dirs[i], NULL, &err);
        }
        for (size_t j = 0; j < names.n; j++) {
            char path[PATH_MAX], real[PATH_MAX];
            snprintf(path, sizeof path, "%s/%s", dirs[i], names.items[j]);
            if (!realpath(path, real) || str_list_has(&seen, real)) continue;
            fs_plugin *p = NULL;
            fs_error err = {0};
            if (str_list_add(&seen, real))
                fs_error_set(&err, FS_ERR_NOMEM, "%s: out of memory", real);
            else
                fs_plugin_open(&p, real, 0, &err);
            fn(arg, real, p, p ? NULL : &err);
            fs_plugin_close(p);
        }
        str_list_release(&names);
    }
    str_list_release(&seen);
}
