/* test_plugin_kinds.c — the plugin kinds table (runtime/core/plugin_kinds.c):
 * one row per fs_plugin_kind, each complete, and the lookups the loader and
 * --describe make through it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/plugin_kinds.h"
#include "fastserve/attention.h"
#include "fastserve/backend.h"
#include "fastserve/distill.h"
#include "fastserve/parallel.h"
#include "fastserve/scheduler.h"

static void test_one_row_per_kind(void **state) {
    (void)state;
    const int kinds[] = {FS_PLUGIN_ATTENTION, FS_PLUGIN_PARALLEL, FS_PLUGIN_DISTILL, FS_PLUGIN_SCHEDULER,
                         FS_PLUGIN_BACKEND};
    assert_int_equal(fs_n_plugin_kinds, sizeof kinds / sizeof kinds[0]);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        const fs_plugin_kind_info *k = fs_plugin_kind_info_of(kinds[i]);
        assert_non_null(k);
        assert_int_equal(k->kind, kinds[i]);
        for (size_t j = 0; j < fs_n_plugin_kinds; j++)
            if (&fs_plugin_kinds[j] != k) {
                assert_int_not_equal(fs_plugin_kinds[j].kind, k->kind);
                assert_string_not_equal(fs_plugin_kinds[j].name, k->name);
            }
    }
    assert_null(fs_plugin_kind_info_of(0));
    assert_null(fs_plugin_kind_info_of(99));
}

static void test_rows_are_complete(void **state) {
    (void)state;
    for (size_t i = 0; i < fs_n_plugin_kinds; i++) {
        const fs_plugin_kind_info *k = &fs_plugin_kinds[i];
        assert_non_null(k->name);
        assert_int_equal(fs_plugin_kind_from_name(k->name), k->kind);
        assert_string_equal(fs_plugin_kind_name(k->kind), k->name);
        /* more than the struct_size and flags words every vtable opens with */
        assert_true(k->min_vtable_size > 2 * sizeof(uint32_t));
        assert_int_equal(fs_plugin_min_vtable_size(k->kind), k->min_vtable_size);
        /* an all-NULL vtable misses its first member, create */
        char zero[512] = {0};
        assert_true(k->min_vtable_size <= sizeof zero);
        assert_non_null(k->missing_member);
        assert_string_equal(k->missing_member(zero, sizeof zero), "create");
        /* the section's keys start with the one naming the plugin ("plugin",
         * [serve]'s "scheduler"), whose default is the plugin a graph
         * without the key gets */
        assert_non_null(k->schema);
        assert_true(k->schema->n >= 1);
        assert_string_equal(k->schema->spec[0].name, k->kind == FS_PLUGIN_SCHEDULER ? "scheduler" : "plugin");
        assert_non_null(k->schema->spec[0].default_value);
        assert_non_null(strstr(k->sections, k->schema->section));
    }
}

static void test_required_members(void **state) {
    (void)state;
    const fs_plugin_kind_info *a = fs_plugin_kind_info_of(FS_PLUGIN_ATTENTION);
    fs_attention_vtable vt;
    memset(&vt, 0xff, sizeof vt); /* every member set */
    vt.flags = 0;
    const fs_attention_vtable full = vt;
    assert_null(a->missing_member(&vt, sizeof vt));
    vt.backward = NULL;
    assert_string_equal(a->missing_member(&vt, sizeof vt), "backward");
    vt.backward = vt.forward;
    vt.decode = NULL; /* optional ... */
    assert_null(a->missing_member(&vt, sizeof vt));
    vt.flags = FS_ATTENTION_DECODE; /* ... unless decoding is promised */
    assert_non_null(strstr(a->missing_member(&vt, sizeof vt), "FS_ATTENTION_DECODE"));
    vt.decode = full.decode;
    /* the paged members (ABI 1.2): present when promised, and a vtable of
     * the 1.1 SDK's size has none even if the bytes after it look set */
    vt.flags = FS_ATTENTION_PAGED;
    assert_null(a->missing_member(&vt, sizeof vt));
    assert_non_null(strstr(a->missing_member(&vt, offsetof(fs_attention_vtable, paged_block_bytes)), "paged_step"));
    vt.paged_step = NULL;
    assert_non_null(strstr(a->missing_member(&vt, sizeof vt), "FS_ATTENTION_PAGED"));
    vt.paged_step = full.paged_step;
    vt.flags = FS_ATTENTION_PAGED | FS_ATTENTION_BOUNDED_CACHE;
    vt.paged_retain = NULL;
    assert_non_null(strstr(a->missing_member(&vt, sizeof vt), "paged_retain"));
    assert_int_equal(a->min_vtable_size, offsetof(fs_attention_vtable, decode) + sizeof(void *));
    assert_int_equal(fs_plugin_kind_info_of(FS_PLUGIN_PARALLEL)->min_vtable_size,
                     offsetof(fs_parallel_vtable, reduce_sum) + sizeof(void *));
    assert_int_equal(fs_plugin_kind_info_of(FS_PLUGIN_DISTILL)->min_vtable_size,
                     offsetof(fs_distill_vtable, loss) + sizeof(void *));
    assert_int_equal(fs_plugin_kind_info_of(FS_PLUGIN_SCHEDULER)->min_vtable_size,
                     offsetof(fs_scheduler_vtable, finish) + sizeof(void *));
}

/* A backend calls every op unchecked; the collectives only when promised. */
static void test_backend_members(void **state) {
    (void)state;
    const fs_plugin_kind_info *k = fs_plugin_kind_info_of(FS_PLUGIN_BACKEND);
    assert_int_equal(k->min_vtable_size, offsetof(fs_backend_vtable, sample) + sizeof(void *));
    fs_backend_vtable vt, full;
    memset(&full, 0xff, sizeof full);
    full.struct_size = sizeof full;
    vt = full;
    vt.flags = 0;
    assert_null(k->missing_member(&vt, sizeof vt));
    vt.layernorm_backward = NULL;
    assert_string_equal(k->missing_member(&vt, sizeof vt), "layernorm_backward");
    vt.layernorm_backward = full.layernorm_backward;
    vt.sample = NULL;
    assert_string_equal(k->missing_member(&vt, sizeof vt), "sample");
    vt.sample = full.sample;
    vt.coll_all_reduce = NULL; /* optional ... */
    assert_null(k->missing_member(&vt, sizeof vt));
    vt.flags = FS_BACKEND_COLLECTIVES; /* ... unless collectives are promised */
    assert_string_equal(k->missing_member(&vt, sizeof vt), "coll_all_reduce");
    vt.coll_all_reduce = full.coll_all_reduce;
    /* an SDK before the collectives */
    assert_non_null(strstr(k->missing_member(&vt, offsetof(fs_backend_vtable, coll_id)), "FS_BACKEND_COLLECTIVES"));
    assert_string_equal(k->sections, "[backend]");
}

static void test_unknown_kind(void **state) {
    (void)state;
    assert_string_equal(fs_plugin_kind_name(99), "unknown");
    assert_int_equal(fs_plugin_kind_from_name("attn"), 0);
    assert_int_equal(fs_plugin_min_vtable_size(99), 0);
    char names[128];
    fs_plugin_kind_names(names, sizeof names);
    assert_string_equal(names, "attention, parallel, distill, scheduler or backend");
    fs_plugin_kind_names(names, 12); /* cut, still a string */
    assert_true(strlen(names) < 12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_row_per_kind),
        cmocka_unit_test(test_rows_are_complete),
        cmocka_unit_test(test_required_members),
        cmocka_unit_test(test_backend_members),
        cmocka_unit_test(test_unknown_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
