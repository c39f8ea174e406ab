/* test_loader.c — the plugin loader: each check of fs_plugin_open against a
 * plugin built to fail it (tests/plugins/), the search path, the registry and
 * the scan behind `fsrun --list-plugins`.
 *
 * Every failure must come back as one status and one line naming the file,
 * what is wrong and the fix. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>

#include <cmocka.h>

#include "fastserve/attention.h"
#include "fastserve/distill.h"
#include "fastserve/parallel.h"
#include "core/plugin_loader.h"

#define GOOD_DIR FS_BINARY_DIR "/plugins"
#define BROKEN_DIR FS_BINARY_DIR "/tests/plugins"
#define BROKEN(name) BROKEN_DIR "/fsplugin_attention_" name ".so"
#define GOOD(kind, name) GOOD_DIR "/fsplugin_" kind "_" name ".so"

static char host_v[16], newer_v[16];

#define assert_contains(text, part)                                                                        \
    do {                                                                                                   \
        if (!strstr((text), (part))) fail_msg("'%s' is not in the message:\n  %s", (part), (text));        \
    } while (0)

/* fs_plugin_open(path, want_kind) must fail with `status` and a one-line
 * message that names the file. Returns the message. */
static const char *open_fails(const char *path, int want_kind, int status, fs_error *err) {
    fs_plugin *p = (fs_plugin *)0x1;
    memset(err, 0, sizeof *err);
    int rc = fs_plugin_open(&p, path, want_kind, err);
    if (rc != status) fail_msg("%s: expected status %d, got %d: %s", path, status, rc, err->message);
    assert_int_equal(err->status, status);
    assert_null(p);
    assert_null(strchr(err->message, '\n'));
    assert_true(strlen(err->message) < sizeof err->message - 1); /* not truncated */
    assert_contains(err->message, path);
    return err->message;
}

/* ---- one plugin per check, in the loader's order ---- */

static void test_missing_file(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("does_not_exist"), FS_PLUGIN_ATTENTION, FS_ERR_NOT_FOUND, &err);
    assert_contains(m, "not found");
}

static void test_not_a_shared_object(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("notaplugin"), FS_PLUGIN_ATTENTION, FS_ERR_ABI, &err);
    assert_contains(m, "cannot load plugin");
    assert_contains(m, "not a shared object");
}

static void test_no_entry_symbol(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("broken_nosym"), FS_PLUGIN_ATTENTION, FS_ERR_ABI, &err);
    assert_contains(m, "not a FastServe plugin");
    assert_contains(m, "'fs_plugin_entry'");
    assert_contains(m, "FS_PLUGIN_DEFINE_ENTRY"); /* the fix */
}

static void test_entry_returns_null(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("broken_null"), FS_PLUGIN_ATTENTION, FS_ERR_ABI, &err);
    assert_contains(m, "fs_plugin_entry() returned NULL");
    assert_contains(m, "static descriptor");
}

static void test_abi_too_new(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("broken_abi_new"), FS_PLUGIN_ATTENTION, FS_ERR_ABI, &err);
    char want[256];
    snprintf(want, sizeof want, "plugin ABI %s is newer than this fsrun's ABI %s", newer_v, host_v);
    assert_contains(m, want);
    assert_contains(m, "2.0");
    assert_contains(m, "1.0");
    snprintf(want, sizeof want, "upgrade fsrun or rebuild the plugin against SDK %s", host_v);
    assert_contains(m, want);
}

static void test_abi_too_old(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("broken_abi_old"), FS_PLUGIN_ATTENTION, FS_ERR_ABI, &err);
    char want[256];
    snprintf(want, sizeof want, "plugin ABI 0.3 is older than this fsrun accepts (%d.0 to %s)", FS_ABI_MAJOR, host_v);
    assert_contains(m, want);
    snprintf(want, sizeof want, "rebuild the plugin against SDK %s", host_v);
    assert_contains(m, want);
}

static void test_wrong_kind(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("broken_kind"), FS_PLUGIN_ATTENTION, FS_ERR_INVALID, &err);
    assert_contains(m, "plugin 'broken_kind' is a distill plugin, but an attention plugin is needed here");
    m = open_fails(BROKEN("broken_kind"), FS_PLUGIN_PARALLEL, FS_ERR_INVALID, &err);
    assert_contains(m, "is a distill plugin, but a parallel plugin is needed here");
    /* as what it is, it loads */
    fs_plugin *p = NULL;
    assert_int_equal(fs_plugin_open(&p, BROKEN("broken_kind"), FS_PLUGIN_DISTILL, &err), FS_OK);
    assert_non_null(p);
    assert_int_equal(p->desc->kind, FS_PLUGIN_DISTILL);
    fs_plugin_close(p);
    assert_int_equal(fs_plugin_open(&p, BROKEN("broken_kind"), 0, &err), FS_OK);
    fs_plugin_close(p);
}

static void test_short_vtable(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("broken_short_vtable"), FS_PLUGIN_ATTENTION, FS_ERR_ABI, &err);
    /* the plugin's vtable ends after backward */
    size_t have = offsetof(fs_attention_vtable, backward) + sizeof(void *);
    char want[256];
    snprintf(want, sizeof want, "attention vtable of plugin 'broken_short_vtable' is %zu bytes, fsrun (ABI %s) needs "
             "at least %zu", have, host_v, fs_plugin_min_vtable_size(FS_PLUGIN_ATTENTION));
    assert_contains(m, want);
    snprintf(want, sizeof want, "rebuild it against SDK %s", host_v);
    assert_contains(m, want);
    assert_true(have < fs_plugin_min_vtable_size(FS_PLUGIN_ATTENTION));
}

static void test_null_member(void **state) {
    fs_error err;
    const char *m = open_fails(BROKEN("broken_null_member"), FS_PLUGIN_ATTENTION, FS_ERR_ABI, &err);
    assert_contains(m, "attention plugin 'broken_null_member' leaves vtable member backward NULL");
}

static void test_open_without_error_struct(void **state) {
    /* err is optional: the status still tells what failed */
    fs_plugin *p = NULL;
    assert_int_equal(fs_plugin_open(&p, BROKEN("broken_abi_new"), FS_PLUGIN_ATTENTION, NULL), FS_ERR_ABI);
    assert_int_equal(fs_plugin_open(&p, BROKEN("broken_kind"), FS_PLUGIN_ATTENTION, NULL), FS_ERR_INVALID);
    assert_int_equal(fs_plugin_open(&p, BROKEN("nope"), FS_PLUGIN_ATTENTION, NULL), FS_ERR_NOT_FOUND);
    assert_null(p);
}

/* ---- the plugins that ship ---- */

static void check_good(const char *path, int kind, const char *name) {
    fs_plugin *p = NULL;
    fs_error err = {0};
    int rc = fs_plugin_open(&p, path, kind, &err);
    if (rc) fail_msg("%s: %s", path, err.message);
    assert_non_null(p);
    assert_string_equal(p->path, path);
    assert_string_equal(p->desc->name, name);
    assert_int_equal(p->desc->kind, kind);
    assert_int_equal(p->desc->abi_version, FS_ABI_VERSION);
    assert_int_equal(p->desc->struct_size, sizeof(fs_plugin_descriptor));
    assert_true(p->desc->vtable_size >= fs_plugin_min_vtable_size(kind));
    assert_non_null(p->desc->summary);
    fs_plugin_close(p);
}

static void test_good_plugins_load(void **state) {
    check_good(GOOD("attention", "dense"), FS_PLUGIN_ATTENTION, "dense");
    check_good(GOOD("parallel", "single"), FS_PLUGIN_PARALLEL, "single");
    check_good(GOOD("distill", "soft_kd"), FS_PLUGIN_DISTILL, "soft_kd");
    const fs_attention_vtable *vt;
    fs_plugin *p = NULL;
    assert_int_equal(fs_plugin_open(&p, GOOD("attention", "dense"), 0, NULL), FS_OK);
    vt = p->desc->vtable;
    assert_true(vt->flags & FS_ATTENTION_CAUSAL);
    assert_true(vt->flags & FS_ATTENTION_DECODE);
    fs_plugin_close(p);
    fs_plugin_close(NULL);
}

static void test_kind_names(void **state) {
    for (int k = FS_PLUGIN_ATTENTION; k <= FS_PLUGIN_DISTILL; k++) {
        assert_int_equal(fs_plugin_kind_from_name(fs_plugin_kind_name(k)), k);
        assert_true(fs_plugin_min_vtable_size(k) > 2 * sizeof(uint32_t));
    }
    assert_int_equal(fs_plugin_kind_from_name("attn"), 0);
    assert_string_equal(fs_plugin_kind_name(99), "unknown");
    assert_int_equal(fs_plugin_min_vtable_size(FS_PLUGIN_ATTENTION),
                     offsetof(fs_attention_vtable, decode) + sizeof(void *));
    assert_int_equal(fs_plugin_min_vtable_size(FS_PLUGIN_PARALLEL),
                     offsetof(fs_parallel_vtable, reduce_sum) + sizeof(void *));
    assert_int_equal(fs_plugin_min_vtable_size(FS_PLUGIN_DISTILL),
                     offsetof(fs_distill_vtable, loss) + sizeof(void *));
}

/* ---- search ---- */

static void test_dirs(void **state) {
    const char *const *dirs = fs_plugin_dirs();
    char a[PATH_MAX], b[PATH_MAX];
    assert_non_null(realpath(GOOD_DIR, a));
    assert_non_null(realpath(BROKEN_DIR, b));
    /* FS_PLUGIN_PATH first, in order */
    assert_non_null(dirs[0]);
    assert_string_equal(dirs[0], a);
    assert_non_null(dirs[1]);
    assert_string_equal(dirs[1], b);
    size_t n = 0;
    for (; dirs[n]; n++) {
        assert_string_not_equal(dirs[n], ".");
        assert_string_not_equal(dirs[n], "");
        for (size_t j = 0; j < n; j++) assert_string_not_equal(dirs[j], dirs[n]); /* each once */
    }
    assert_true(n >= 3);
    assert_ptr_equal(fs_plugin_dirs(), dirs); /* cached */
}

static void test_find_by_name(void **state) {
    char path[PATH_MAX], want[PATH_MAX];
    fs_error err = {0};
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "dense", &err), FS_OK);
    assert_non_null(realpath(GOOD("attention", "dense"), want));
    assert_string_equal(path, want);
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_PARALLEL, "single", &err), FS_OK);
    assert_contains(path, "/fsplugin_parallel_single.so");
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_DISTILL, "soft_kd", &err), FS_OK);
    /* the second FS_PLUGIN_PATH directory */
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "broken_dup_a", &err), FS_OK);
    assert_non_null(realpath(BROKEN("broken_dup_a"), want));
    assert_string_equal(path, want);
    /* the kind is part of the file name */
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_DISTILL, "dense", &err), FS_ERR_NOT_FOUND);
}

/* FS_PLUGIN_PATH of main(): GOOD_DIR, BROKEN_DIR, GOOD_DIR again, then
 * N_FILLER directories that do not exist, then last_dir, which alone holds
 * fsplugin_attention_lastdir.so. Every entry is searched, however many. */
#define N_FILLER 40
static char last_dir[PATH_MAX];

static void test_many_path_entries(void **state) {
    const char *const *dirs = fs_plugin_dirs();
    char real_last[PATH_MAX], want[PATH_MAX + 64], path[PATH_MAX];
    assert_non_null(realpath(last_dir, real_last));
    size_t n = 0;
    while (dirs[n]) n++;
    assert_true(n >= 2 + N_FILLER + 1);
    assert_string_equal(dirs[2], "/nonexistent/fs_test_loader/dir00"); /* as given: it does not exist */
    assert_string_equal(dirs[2 + N_FILLER - 1], "/nonexistent/fs_test_loader/dir39");
    assert_string_equal(dirs[2 + N_FILLER], real_last); /* the last entry, in its place */
    fs_error err = {0};
    int rc = fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "lastdir", &err);
    if (rc) fail_msg("the plugin in the last FS_PLUGIN_PATH entry was not found: %s", err.message);
    snprintf(want, sizeof want, "%s/fsplugin_attention_lastdir.so", real_last);
    assert_string_equal(path, want);
    fs_plugin_registry r = {0};
    const fs_plugin *p = NULL;
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "lastdir", &p, &err), FS_OK);
    assert_string_equal(p->desc->name, "dense");
    fs_plugin_registry_release(&r);
    /* a not-found message that cannot list every directory says how many it left out */
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "nosuch", &err), FS_ERR_NOT_FOUND);
    assert_true(strlen(err.message) < sizeof err.message - 1);
    const char *more = strstr(err.message, " more directories");
    if (!more) fail_msg("the message does not say how many directories it left out: %s", err.message);
    assert_string_equal(more, " more directories");
    assert_contains(err.message, "; searched ");
}

/* The names in "(available: a, b, c)" of a not-found message, as ", a, b, c, " */
static void available_list(const char *m, char *out, size_t cap) {
    const char *a = strstr(m, "(available: ");
    assert_non_null(a);
    a += strlen("(available: ");
    const char *e = strchr(a, ')');
    assert_non_null(e);
    snprintf(out, cap, ", %.*s, ", (int)(e - a), a);
}

static void test_find_not_found_lists_available(void **state) {
    char path[PATH_MAX];
    fs_error err = {0};
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "densee", &err), FS_ERR_NOT_FOUND);
    assert_int_equal(err.status, FS_ERR_NOT_FOUND);
    const char *m = err.message;
    assert_null(strchr(m, '\n'));
    assert_contains(m, "no attention plugin named 'densee'");
    char avail[512];
    available_list(m, avail, sizeof avail);
    assert_contains(avail, ", dense, "); /* the first FS_PLUGIN_PATH directory */
    if (!strstr(avail, ", ..., ")) {     /* the list is cut when long: later directories may not show */
        assert_contains(avail, ", broken_abi_new, ");
        assert_contains(avail, ", notaplugin, "); /* by file name: a listing, not a load */
    }
    assert_null(strstr(avail, "soft_kd"));    /* other kinds are not listed */
    assert_null(strstr(avail, "single"));
    assert_contains(m, "fsplugin_attention_densee.so");
    assert_contains(m, "FS_PLUGIN_PATH");
    char dir[PATH_MAX];
    assert_non_null(realpath(GOOD_DIR, dir));
    assert_contains(m, dir);
    /* each name once, although build/plugins is on the path twice */
    assert_null(strstr(strstr(avail, ", dense, ") + 1, ", dense, "));
    /* another kind lists that kind only */
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_PARALLEL, "tensorr", &err), FS_ERR_NOT_FOUND);
    assert_contains(err.message, "no parallel plugin named 'tensorr' (available: ");
    available_list(err.message, avail, sizeof avail);
    assert_contains(avail, ", single, ");
    assert_null(strstr(avail, "dense"));
    assert_null(strstr(avail, "broken"));
}

static void test_name_with_slash_is_a_path(void **state) {
    char path[PATH_MAX];
    fs_error err = {0};
    /* absolute */
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, GOOD("attention", "dense"), &err), FS_OK);
    assert_string_equal(path, GOOD("attention", "dense"));
    /* any file name will do */
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_DISTILL, BROKEN("broken_kind"), &err), FS_OK);
    assert_string_equal(path, BROKEN("broken_kind"));
    /* never searched: "x/dense" is not the plugin named dense */
    assert_int_equal(fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "x/dense", &err), FS_ERR_NOT_FOUND);
    assert_string_equal(err.message, "x/dense: plugin file not found");
    /* relative to the current directory */
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(FS_BINARY_DIR), 0);
    int rc = fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "plugins/fsplugin_attention_dense.so", &err);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, FS_OK);
    assert_string_equal(path, "plugins/fsplugin_attention_dense.so");
    /* through the registry, a path reaches fs_plugin_open's checks */
    fs_plugin_registry r = {0};
    const fs_plugin *p = NULL;
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, BROKEN("broken_abi_new"), &p, &err), FS_ERR_ABI);
    assert_contains(err.message, "fsplugin_attention_broken_abi_new.so: plugin ABI 2.0 is newer");
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_DISTILL, BROKEN("broken_kind"), &p, &err), FS_OK);
    assert_string_equal(p->desc->name, "broken_kind");
    assert_int_equal(r.n, 1);
    fs_plugin_registry_release(&r);
}

static void test_current_directory_not_searched(void **state) {
    char tmpl[] = "/tmp/fs_test_loader_XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    char link[PATH_MAX + 64], cwd[PATH_MAX], path[PATH_MAX];
    snprintf(link, sizeof link, "%s/fsplugin_attention_cwdonly.so", tmpl);
    assert_int_equal(symlink(GOOD("attention", "dense"), link), 0);
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tmpl), 0);
    fs_error err = {0};
    int rc1 = fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "cwdonly", &err);
    fs_error err2 = {0};
    int rc2 = fs_plugin_find(path, sizeof path, FS_PLUGIN_ATTENTION, "./fsplugin_attention_cwdonly.so", &err2);
    assert_int_equal(chdir(cwd), 0);
    unlink(link);
    rmdir(tmpl);
    assert_int_equal(rc1, FS_ERR_NOT_FOUND);
    assert_contains(err.message, "no attention plugin named 'cwdonly'");
    assert_int_equal(rc2, FS_OK); /* explicitly, it can */
}

/* ---- registry ---- */

static void test_registry_by_name(void **state) {
    fs_plugin_registry r = {0};
    const fs_plugin *a = NULL, *b = NULL, *c = NULL;
    fs_error err = {0};
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "dense", &a, &err), FS_OK);
    assert_non_null(a);
    assert_string_equal(a->desc->name, "dense");
    /* loaded once: by name again, and by a path to the same file */
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "dense", &b, &err), FS_OK);
    assert_ptr_equal(a, b);
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, GOOD("attention", "dense"), &b, &err), FS_OK);
    assert_ptr_equal(a, b);
    assert_int_equal(r.n, 1);
    /* the same file asked for as another kind */
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_DISTILL, GOOD("attention", "dense"), &c, &err),
                     FS_ERR_INVALID);
    assert_contains(err.message, "plugin 'dense' is an attention plugin, but a distill plugin is needed here");
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_PARALLEL, "single", &c, &err), FS_OK);
    assert_int_equal(c->desc->kind, FS_PLUGIN_PARALLEL);
    assert_int_equal(r.n, 2);
    /* a broken plugin by name: the check's message, nothing registered */
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "broken_short_vtable", &c, &err), FS_ERR_ABI);
    assert_contains(err.message, "fsplugin_attention_broken_short_vtable.so: attention vtable");
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "broken_kind", &c, &err), FS_ERR_INVALID);
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "nosuch", &c, &err), FS_ERR_NOT_FOUND);
    assert_contains(err.message, "no attention plugin named 'nosuch'");
    assert_int_equal(r.n, 2);
    fs_plugin_registry_release(&r);
    assert_int_equal(r.n, 0);
    assert_null(r.items);
    fs_plugin_registry_release(&r); /* twice is fine */
    fs_plugin_registry_release(NULL);
}

static void test_registry_duplicate_name(void **state) {
    fs_plugin_registry r = {0};
    const fs_plugin *a = NULL, *b = NULL;
    fs_error err = {0};
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "broken_dup_a", &a, &err), FS_OK);
    assert_string_equal(a->desc->name, "broken_dup");
    int rc = fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "broken_dup_b", &b, &err);
    assert_int_equal(rc, FS_ERR_INVALID);
    assert_int_equal(err.status, FS_ERR_INVALID);
    const char *m = err.message;
    assert_null(strchr(m, '\n'));
    assert_contains(m, "fsplugin_attention_broken_dup_b.so: duplicate attention plugin name 'broken_dup'");
    assert_contains(m, "already loaded from ");
    assert_contains(m, "fsplugin_attention_broken_dup_a.so");
    assert_contains(m, "rename one of them");
    assert_int_equal(r.n, 1);
    /* the first one stays usable */
    assert_int_equal(fs_plugin_registry_get(&r, FS_PLUGIN_ATTENTION, "broken_dup_a", &b, &err), FS_OK);
    assert_ptr_equal(a, b);
    fs_plugin_registry_release(&r);
}

/* ---- scan (fsrun --list-plugins) ---- */

typedef struct scan_result {
    char build[PATH_MAX]; /* only files under the build tree count (an install may exist too) */
    int dense, single, soft_kd, broken_kind, dups, failed, notaplugin, abi_new;
    int bad_report; /* a visit with neither or both of p and err */
} scan_result;

static void visit(void *arg, const char *path, const fs_plugin *p, const fs_error *err) {
    scan_result *s = arg;
    if (!p == !err) s->bad_report++;
    if (strncmp(path, s->build, strlen(s->build)) != 0) return;
    if (p) {
        const char *n = p->desc->name;
        s->dense += !strcmp(n, "dense");
        s->single += !strcmp(n, "single");
        s->soft_kd += !strcmp(n, "soft_kd");
        s->broken_kind += !strcmp(n, "broken_kind") && p->desc->kind == FS_PLUGIN_DISTILL;
        s->dups += !strcmp(n, "broken_dup");
    } else if (err && strstr(path, "/tests/plugins/")) {
        s->failed++;
        if (!strstr(err->message, path)) s->bad_report++;
        s->notaplugin += strstr(path, "fsplugin_attention_notaplugin.so") != NULL;
        s->abi_new += strstr(err->message, "plugin ABI 2.0 is newer") != NULL;
    }
}

static void test_scan(void **state) {
    scan_result s = {0};
    assert_non_null(realpath(FS_BINARY_DIR, s.build));
    fs_plugin_scan(visit, &s);
    assert_int_equal(s.bad_report, 0);
    /* each file once, although some directories are on the path twice */
    assert_int_equal(s.dense, 1);
    assert_int_equal(s.single, 1);
    assert_int_equal(s.soft_kd, 1);
    assert_int_equal(s.broken_kind, 1);
    assert_int_equal(s.dups, 2);
    /* abi_new, abi_old, nosym, null, short_vtable, null_member, notaplugin */
    assert_int_equal(s.failed, 7);
    assert_int_equal(s.notaplugin, 1);
    assert_int_equal(s.abi_new, 1);
}

int main(void) {
    snprintf(host_v, sizeof host_v, "%d.%d", FS_ABI_MAJOR, FS_ABI_MINOR);
    snprintf(newer_v, sizeof newer_v, "%d.0", FS_ABI_MAJOR + 1);
    /* before the first fs_plugin_dirs() call, which caches the path; a
     * directory twice is harmless */
    snprintf(last_dir, sizeof last_dir, "/tmp/fs_test_loader_last_XXXXXX");
    char link[PATH_MAX + 64], env[8192];
    if (!mkdtemp(last_dir)) return 1;
    snprintf(link, sizeof link, "%s/fsplugin_attention_lastdir.so", last_dir);
    if (symlink(GOOD("attention", "dense"), link)) return 1;
    size_t used = (size_t)snprintf(env, sizeof env, "%s", GOOD_DIR ":" BROKEN_DIR ":" GOOD_DIR);
    for (int i = 0; i < N_FILLER; i++)
        used += (size_t)snprintf(env + used, sizeof env - used, ":/nonexistent/fs_test_loader/dir%02d", i);
    snprintf(env + used, sizeof env - used, ":%s", last_dir);
    setenv("FS_PLUGIN_PATH", env, 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_not_a_shared_object),
        cmocka_unit_test(test_no_entry_symbol),
        cmocka_unit_test(test_entry_returns_null),
        cmocka_unit_test(test_abi_too_new),
        cmocka_unit_test(test_abi_too_old),
        cmocka_unit_test(test_wrong_kind),
        cmocka_unit_test(test_short_vtable),
        cmocka_unit_test(test_null_member),
        cmocka_unit_test(test_open_without_error_struct),
        cmocka_unit_test(test_good_plugins_load),
        cmocka_unit_test(test_kind_names),
        cmocka_unit_test(test_dirs),
        cmocka_unit_test(test_find_by_name),
        cmocka_unit_test(test_find_not_found_lists_available),
        cmocka_unit_test(test_name_with_slash_is_a_path),
        cmocka_unit_test(test_current_directory_not_searched),
        cmocka_unit_test(test_registry_by_name),
        cmocka_unit_test(test_registry_duplicate_name),
        cmocka_unit_test(test_scan),
        cmocka_unit_test(test_many_path_entries),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(link);
    rmdir(last_dir);
    return failed;
}
