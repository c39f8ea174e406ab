/* test_schema.c — key ranges: FS_PARAM_UNBOUNDED opens a side of a range,
 * for the check of a value, for its error message and for the text
 * --describe and --help-graph print (fs_param_range_text); and the
 * runtime's own schemas spell an open bound with that name. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/graph.h"
#include "core/schema.h"

static const char *range_of(fs_param_type type, double min, double max) {
    static char buf[128];
    fs_param_spec s = {"k", type, "0", min, max, NULL, NULL};
    memset(buf, 'x', sizeof buf);
    fs_param_range_text(buf, sizeof buf, &s);
    return buf;
}

static void test_range_text(void **state) {
    (void)state;
    assert_string_equal(range_of(FS_PARAM_INT, 1, 8), "[1, 8]");
    assert_string_equal(range_of(FS_PARAM_INT, 2, 1048576), "[2, 1048576]"); /* whole, not 1.04858e+06 */
    assert_string_equal(range_of(FS_PARAM_FLOAT, 0, 0.999999), "[0, 0.999999]");
    assert_string_equal(range_of(FS_PARAM_INT, 1, FS_PARAM_UNBOUNDED), ">= 1");
    assert_string_equal(range_of(FS_PARAM_INT_LIST, 0, FS_PARAM_UNBOUNDED), ">= 0");
    assert_string_equal(range_of(FS_PARAM_INT, -FS_PARAM_UNBOUNDED, 8), "<= 8");
    assert_string_equal(range_of(FS_PARAM_FLOAT, -FS_PARAM_UNBOUNDED, 0.5), "<= 0.5");
    assert_string_equal(range_of(FS_PARAM_FLOAT, -FS_PARAM_UNBOUNDED, FS_PARAM_UNBOUNDED), "");
    /* beyond the name reads the same (plugins that wrote 1e15 or more) */
    assert_string_equal(range_of(FS_PARAM_INT, 1, 1e18), ">= 1");
    assert_string_equal(range_of(FS_PARAM_INT, -1e300, 3), "<= 3");
    /* min > max: no range at all */
    assert_string_equal(range_of(FS_PARAM_INT, 1, 0), "");
    /* types without a range */
    assert_string_equal(range_of(FS_PARAM_BOOL, 0, 1), "");
    assert_string_equal(range_of(FS_PARAM_STRING, 0, 1), "");
    assert_string_equal(range_of(FS_PARAM_ENUM, 0, 1), "");
}

static const fs_param_spec SPEC[] = {
    {"at_least", FS_PARAM_INT, "1", 1, FS_PARAM_UNBOUNDED, NULL, NULL},
    {"at_most", FS_PARAM_INT, "0", -FS_PARAM_UNBOUNDED, 8, NULL, NULL},
    {"scale", FS_PARAM_FLOAT, "1", 0, FS_PARAM_UNBOUNDED, NULL, NULL},
    {"ids", FS_PARAM_INT_LIST, "0", 0, FS_PARAM_UNBOUNDED, NULL, NULL},
};

/* Resolves "[train]\nLINE" against SPEC; returns the status, message in err. */
static int resolve_line(const char *line, fs_config **out, fs_error *err) {
    char text[256];
    snprintf(text, sizeof text, "[train]\n%s\n", line);
    fs_graph *g = NULL;
    assert_int_equal(fs_graph_load_string(&g, "g.ini", text, err), FS_OK);
    const char *secs[] = {"train"};
    memset(err, 0, sizeof *err);
    *out = NULL;
    int rc = fs_config_resolve(out, g, secs, 1, SPEC, sizeof SPEC / sizeof SPEC[0], NULL, err);
    fs_graph_destroy(g);
    return rc;
}

static void accepts(const char *line, const char *key, int64_t want) {
    fs_config *c;
    fs_error err;
    int rc = resolve_line(line, &c, &err);
    if (rc) fail_msg("%s: %s", line, err.message);
    int64_t got;
    if (fs_config_int_list(c, key, &got, 1) == 0) got = fs_config_int(c, key);
    assert_true(got == want);
    fs_config_destroy(c);
}

static void refuses(const char *line, const char *message) {
    fs_config *c;
    fs_error err;
    assert_int_equal(resolve_line(line, &c, &err), FS_ERR_INVALID);
    assert_null(c);
    assert_string_equal(err.message, message);
}

static void test_open_side_accepts_any_value(void **state) {
    (void)state;
    /* an open side is open: values past 1e15 are in range (they were
     * refused with "must be an integer >= 1", which they are) */
    accepts("at_least = 2000000000000000", "at_least", 2000000000000000LL);
    accepts("at_least = 9223372036854775807", "at_least", INT64_MAX);
    accepts("at_most = -2000000000000000", "at_most", -2000000000000000LL);
    accepts("ids = 5000000000000000", "ids", 5000000000000000LL);
    fs_config *c;
    fs_error err;
    assert_int_equal(resolve_line("scale = 1e300", &c, &err), FS_OK);
    assert_true(fs_config_float(c, "scale") == 1e300);
    fs_config_destroy(c);
    /* the closed side still holds, and the message says which side */
    refuses("at_least = 0", "g.ini:2: [train] at_least = 0: must be an integer >= 1");
    refuses("at_most = 9", "g.ini:2: [train] at_most = 9: must be an integer <= 8");
    refuses("scale = -1", "g.ini:2: [train] scale = -1: must be a number >= 0");
    refuses("ids = 1,-1", "g.ini:2: [train] ids = 1,-1: must be a comma-separated list of integers >= 0");
}

/* The runtime's keys: a bound is either a real limit or FS_PARAM_UNBOUNDED
 * itself, never another large number standing for "none". */
static void test_runtime_schemas_name_open_bounds(void **state) {
    (void)state;
    size_t open = 0;
    for (size_t s = 0; fs_schemas[s]; s++)
        for (size_t i = 0; i < fs_schemas[s]->n; i++) {
            const fs_param_spec *p = &fs_schemas[s]->spec[i];
            if (p->type != FS_PARAM_INT && p->type != FS_PARAM_FLOAT && p->type != FS_PARAM_INT_LIST) continue;
            if (p->max >= 1e12 && p->max != FS_PARAM_UNBOUNDED)
                fail_msg("[%s] %s: max %g: write FS_PARAM_UNBOUNDED", fs_schemas[s]->section, p->name, p->max);
            open += p->max == FS_PARAM_UNBOUNDED;
        }
    assert_true(open >= 10); /* steps, seed, warmup, ... */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_range_text),
        cmocka_unit_test(test_open_side_accepts_any_value),
        cmocka_unit_test(test_runtime_schemas_name_open_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
