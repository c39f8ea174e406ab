/* test_modes.c — the table of modes (runtime/modes/modes.c): complete rows,
 * lookups, and [run] mode's choices in core/schema.c equal to its names in
 * its order (core does not reach up into modes, so this test holds the two
 * together: a mode added to the table and not to the schema fails here). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/schema.h"
#include "modes/modes.h"

static const fs_param_spec *run_mode_key(void) {
    for (size_t i = 0; i < fs_schema_run.n; i++)
        if (strcmp(fs_schema_run.spec[i].name, "mode") == 0) return &fs_schema_run.spec[i];
    fail_msg("[run] has no mode key");
    return NULL;
}

static void test_schema_choices_are_the_table(void **state) {
    (void)state;
    const fs_param_spec *k = run_mode_key();
    assert_int_equal(k->type, FS_PARAM_ENUM);
    char names[256];
    fs_mode_names(names, sizeof names, "|");
    assert_string_equal(k->choices, names);
    /* the default is the first mode, and a mode */
    assert_string_equal(k->default_value, fs_modes[0].name);
    assert_non_null(fs_mode_find(k->default_value));
}

static void test_rows_are_complete(void **state) {
    (void)state;
    assert_true(fs_n_modes >= 4);
    for (size_t i = 0; i < fs_n_modes; i++) {
        const fs_mode *m = &fs_modes[i];
        assert_non_null(m->name);
        assert_true(*m->name);
        assert_null(strpbrk(m->name, "|, \t")); /* an ENUM choice and a word */
        assert_non_null(m->run);
        assert_non_null(m->help);
        assert_true(strlen(m->help) > 10 && strlen(m->help) < 100); /* one line of --help */
        assert_null(strchr(m->help, '\n'));
        assert_ptr_equal(fs_mode_find(m->name), m);
        for (size_t j = 0; j < i; j++) {
            assert_string_not_equal(fs_modes[j].name, m->name);
            assert_ptr_not_equal(fs_modes[j].run, m->run);
        }
    }
}

static void test_lookups(void **state) {
    (void)state;
    const char *want[] = {"train", "distill", "generate", "eval", "tokenize", "train-tokenizer", "serve"};
    for (size_t i = 0; i < 7; i++) assert_non_null(fs_mode_find(want[i]));
    assert_null(fs_mode_find("Train"));
    assert_null(fs_mode_find(""));
    assert_null(fs_mode_find("server"));
    char names[256];
    fs_mode_names(names, sizeof names, ", ");
    assert_string_equal(names, "train, distill, generate, eval, tokenize, train-tokenizer, serve");
    fs_mode_names(names, 8, ", "); /* cut, still a string */
    assert_string_equal(names, "train, ");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_choices_are_the_table),
        cmocka_unit_test(test_rows_are_complete),
        cmocka_unit_test(test_lookups),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
