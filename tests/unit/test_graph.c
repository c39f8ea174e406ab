/* test_graph.c — graph parsing, --set, to_ini and schema resolution. */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/graph.h"

#define BIG 1e18

/* Loads `text`, asserting success. */
static fs_graph *load(const char *text) {
    fs_graph *g = NULL;
    fs_error err = {0};
    int rc = fs_graph_load_string(&g, "g.ini", text, &err);
    if (rc != FS_OK) fail_msg("unexpected error: %s", err.message);
    assert_non_null(g);
    return g;
}

/* Loads `text`, asserting failure with exactly `message`. */
static void load_fails(const char *text, const char *message) {
    fs_graph *g = NULL;
    fs_error err = {0};
    assert_int_equal(fs_graph_load_string(&g, "g.ini", text, &err), FS_ERR_INVALID);
    assert_int_equal(err.status, FS_ERR_INVALID);
    assert_null(g);
    assert_string_equal(err.message, message);
}

static int line_of(const fs_graph *g, const char *section, const char *key) {
    const fs_graph_entry *e = fs_graph_find(g, section, key);
    assert_non_null(e);
    return e->line;
}

static const char *value_of(const fs_graph *g, const char *section, const char *key) {
    const fs_graph_entry *e = fs_graph_find(g, section, key);
    assert_non_null(e);
    return e->value;
}

/* ---- parsing ---- */

static void test_line_numbers(void **state) {
    (void)state;
    fs_graph *g = load("; comment\n"            /* 1 */
                       "# another comment\n"    /* 2 */
                       "\n"                     /* 3 */
                       "[model]\n"              /* 4 */
                       "d_model = 64\n"         /* 5 */
                       "   \n"                  /* 6 */
                       "  n_layer = 2\n"        /* 7 indented */
                       "\t; indented comment\n" /* 8 */
                       "[train]\r\n"            /* 9 CRLF */
                       "steps=100\r\n"          /* 10 */
                       "lr : 0.1\n");           /* 11 colon form */
    assert_int_equal(fs_graph_count(g), 4);
    assert_int_equal(line_of(g, "model", "d_model"), 5);
    assert_int_equal(line_of(g, "model", "n_layer"), 7);
    assert_int_equal(line_of(g, "train", "steps"), 10);
    assert_int_equal(line_of(g, "train", "lr"), 11);
    assert_string_equal(value_of(g, "model", "n_layer"), "2");
    assert_string_equal(value_of(g, "train", "steps"), "100");
    assert_string_equal(value_of(g, "train", "lr"), "0.1");
    const fs_graph_entry *e = fs_graph_at(g, 0);
    assert_string_equal(e->section, "model");
    assert_string_equal(e->key, "d_model");
    assert_string_equal(e->file, "g.ini");
    assert_null(fs_graph_at(g, 4));
    assert_string_equal(fs_graph_path(g), "g.ini");
    assert_string_equal(fs_graph_dir(g), ".");
    fs_graph_destroy(g);
    fs_graph_destroy(NULL);
}

static void test_empty_section_and_bom(void **state) {
    (void)state;
    fs_graph *g = load("\xEF\xBB\xBF[model]\n[ run ]   ; nothing yet\n[train]\nsteps = 1\n");
    assert_true(fs_graph_has_section(g, "model"));
    assert_true(fs_graph_has_section(g, "run"));
    assert_true(fs_graph_has_section(g, "train"));
    assert_false(fs_graph_has_section(g, "data"));
    assert_int_equal(fs_graph_count(g), 1);
    assert_int_equal(line_of(g, "train", "steps"), 4);
    fs_graph_destroy(g);
}

static void test_values_quotes_comments(void **state) {
    (void)state;
    fs_graph *g = load("[run]\n"
                       "name = \"  padded  \"\n"
                       "inner = \"\"x\"\"\n"
                       "half = \"open\n"
                       "note = 3 ; inline comment\n"
                       "semi = a;b\n"
                       "hash = a # not a comment\n"
                       "empty =\n"
                       "eq = a=b\n");
    assert_string_equal(value_of(g, "run", "name"), "  padded  ");
    assert_string_equal(value_of(g, "run", "inner"), "\"x\"");
    assert_string_equal(value_of(g, "run", "half"), "\"open");
    assert_string_equal(value_of(g, "run", "note"), "3");
    assert_string_equal(value_of(g, "run", "semi"), "a;b");
    assert_string_equal(value_of(g, "run", "hash"), "a # not a comment");
    assert_string_equal(value_of(g, "run", "empty"), "");
    assert_string_equal(value_of(g, "run", "eq"), "a=b");
    fs_graph_destroy(g);
}

static void test_syntax_errors(void **state) {
    (void)state;
    load_fails("[model]\n\nd_model 64\n", "g.ini:3: expected 'key = value' or '[section]'");
    load_fails("[model]\nd_model = 64\n  more text\n",
               "g.ini:3: expected 'key = value' or '[section]' (continuation lines are not supported)");
    load_fails("[model\n", "g.ini:1: expected 'key = value' or '[section]'");
    load_fails("; c\n[model] junk\n", "g.ini:2: expected 'key = value' or '[section]'");
    load_fails("[model]\n= 3\n", "g.ini:2: expected 'key = value' or '[section]'");
    load_fails("[model]\nx ;= 3\n", "g.ini:2: expected 'key = value' or '[section]'");
    load_fails("# c\nd_model = 64\n", "g.ini:2: d_model = 64: key before the first [section]");
}

static void test_long_lines(void **state) {
    (void)state;
    char text[1024];
    /* "k = " + value: exactly 198 characters is the longest line. */
    snprintf(text, sizeof text, "[run]\nk = %0194d\n; %0400d\n", 0, 0);
    fs_graph *g = load(text);
    assert_int_equal(strlen(value_of(g, "run", "k")), 194);
    fs_graph_destroy(g);
    snprintf(text, sizeof text, "[run]\nk = %0195d\n", 0);
    load_fails(text, "g.ini:2: line is longer than 198 characters");
}

static void test_duplicate_key(void **state) {
    (void)state;
    load_fails("[train]\nsteps = 1\n\n; again\nsteps = 2\n",
               "g.ini:5: [train] steps = 2: duplicate key (first set on line 2)");
    /* The same key in two sections, or a section reopened with new keys, is fine. */
    fs_graph *g = load("[train]\nsteps = 1\n[run]\nsteps = 2\n[train]\nlr = 1\n");
    assert_int_equal(fs_graph_count(g), 3);
    fs_graph_destroy(g);
    load_fails("[train]\nsteps = 1\n[run]\n[train]\nsteps = 3\n",
               "g.ini:5: [train] steps = 3: duplicate key (first set on line 2)");
}

static void test_unknown_section(void **state) {
    (void)state;
    load_fails("[model]\n[trian]\n", "g.ini:2: [trian]: unknown section; did you mean [train]?");
    load_fails("[Model]\n", "g.ini:1: [Model]: unknown section; did you mean [model]?");
    load_fails("\n[optimizer]\n", "g.ini:2: [optimizer]: unknown section; known sections: model, attention, "
                                  "layer.N, layer.A-B, parallel, distill, distill.stage.N, data, train, "
                                  "generate, run, serve, backend");
    load_fails("[layer.5-2]\n",
               "g.ini:1: [layer.5-2]: unknown section; layer sections are [layer.N] or [layer.A-B] with A <= B");
    load_fails("[layers.1]\n",
               "g.ini:1: [layers.1]: unknown section; layer sections are [layer.N] or [layer.A-B] with A <= B");
    load_fails("[distill.stage.0]\n", "g.ini:1: [distill.stage.0]: unknown section; distill stage sections "
                                      "are [distill.stage.N] with N >= 1");
    fs_graph *g = load("[layer.0]\n[layer.2-5]\n[layer.3-3]\n[distill.stage.1]\n[distill.stage.12]\n"
                       "[model]\n[attention]\n[parallel]\n[distill]\n[data]\n[train]\n[generate]\n[run]\n");
    assert_true(fs_graph_has_section(g, "distill.stage.12"));
    fs_graph_destroy(g);
}

static void test_layer_range(void **state) {
    (void)state;
    int a = -1, b = -1;
    assert_int_equal(fs_graph_layer_range("layer.3", &a, &b), 0);
    assert_int_equal(a, 3);
    assert_int_equal(b, 3);
    assert_int_equal(fs_graph_layer_range("layer.2-5", &a, &b), 0);
    assert_int_equal(a, 2);
    assert_int_equal(b, 5);
    assert_int_equal(fs_graph_layer_range("layer.0", &a, &b), 0);
    assert_int_equal(a, 0);
    static const char *const bad[] = {"layer.", "layer.x",  "layer.5-2", "layer.-1", "layer.1-",
                                      "layer",  "layer.02", "layer.1.2", "model",    "layer.1-2-3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a = b = 77;
        assert_int_equal(fs_graph_layer_range(bad[i], &a, &b), -1);
        assert_int_equal(a, 77);
    }
    assert_int_equal(fs_graph_layer_range(NULL, &a, &b), -1);
}

static void test_missing_file_and_dir(void **state) {
    (void)state;
    fs_graph *g = NULL;
    fs_error err = {0};
    assert_int_equal(fs_graph_load(&g, "/nonexistent/dir/graph.ini", &err), FS_ERR_NOT_FOUND);
    assert_null(g);
    assert_int_equal(err.status, FS_ERR_NOT_FOUND);
    assert_non_null(strstr(err.message, "/nonexistent/dir/graph.ini"));

    char dir[] = "/tmp/test_graph_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/g.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[model]\nd_model = 8\n\n[train]\nsteps = x\n", f);
    fclose(f);
    assert_int_equal(fs_graph_load(&g, path, &err), FS_OK);
    assert_string_equal(fs_graph_path(g), path);
    assert_string_equal(fs_graph_dir(g), dir);
    assert_string_equal(fs_graph_find(g, "train", "steps")->file, path);
    assert_int_equal(line_of(g, "train", "steps"), 5);
    fs_graph_destroy(g);

    /* Errors from a file name the file. */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("[model]\nbroken\n", f);
    fclose(f);
    assert_int_equal(fs_graph_load(&g, path, &err), FS_ERR_INVALID);
    char want[320];
    snprintf(want, sizeof want, "%s:2: expected 'key = value' or '[section]'", path);
    assert_string_equal(err.message, want);

    f = fopen(path, "wb");
    assert_non_null(f);
    fwrite("[model]\nk = a\0b\n", 1, 16, f);
    fclose(f);
    assert_int_equal(fs_graph_load(&g, path, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "NUL byte"));
    unlink(path);
    rmdir(dir);

    assert_int_equal(fs_graph_load(&g, "/", &err), FS_ERR_IO);
    /* a device is not read (/dev/zero would never end, a FIFO never open) */
    assert_int_equal(fs_graph_load(&g, "/dev/null", &err), FS_ERR_IO);
    assert_null(g);
    assert_string_equal(err.message, "/dev/null: not a regular file: give the graph's .ini file");

    /* an empty file (or only comments) is refused, naming the file */
    assert_non_null(mkdtemp(strcpy(dir, "/tmp/test_graph_XXXXXX")));
    snprintf(path, sizeof path, "%s/empty.ini", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("; nothing here yet\n\n", f);
    fclose(f);
    assert_int_equal(fs_graph_load(&g, path, &err), FS_ERR_INVALID);
    assert_null(g);
    assert_non_null(strstr(err.message, path));
    assert_non_null(strstr(err.message, "the graph file is empty"));
    f = fopen(path, "w"); /* a section alone is a graph: every key from --set */
    assert_non_null(f);
    fputs("[run]\n", f);
    fclose(f);
    assert_int_equal(fs_graph_load(&g, path, &err), FS_OK);
    fs_graph_destroy(g);
    unlink(path);
    rmdir(dir);
}

/* ---- --set and to_ini ---- */

static void test_set(void **state) {
    (void)state;
    fs_graph *g = load("[train]\nsteps = 100\n[layer.2]\nwindow = 4\n");
    fs_error err = {0};
    assert_int_equal(fs_graph_set(g, " train.steps = 5 ", &err), FS_OK);
    const fs_graph_entry *e = fs_graph_find(g, "train", "steps");
    assert_string_equal(e->value, "5");
    assert_string_equal(e->file, "--set");
    assert_int_equal(e->line, 0);
    assert_int_equal(fs_graph_count(g), 2);

    assert_int_equal(fs_graph_set(g, "layer.2.window=8", &err), FS_OK);
    assert_string_equal(value_of(g, "layer.2", "window"), "8");
    assert_int_equal(fs_graph_set(g, "layer.4-7.plugin=banded", &err), FS_OK);
    assert_string_equal(value_of(g, "layer.4-7", "plugin"), "banded");
    assert_true(fs_graph_has_section(g, "layer.4-7"));
    assert_int_equal(fs_graph_set(g, "run.name=\"a = b\"", &err), FS_OK);
    assert_string_equal(value_of(g, "run", "name"), "a = b");
    assert_int_equal(fs_graph_set(g, "run.empty=", &err), FS_OK);
    assert_string_equal(value_of(g, "run", "empty"), "");
    assert_int_equal(fs_graph_count(g), 5);

    static const char *const bad[] = {"train.steps", "steps=3", ".steps=3", "train.=3", "=3", "train.st eps=1",
                                      "train.a:b=1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "--set '%s': expected section.key=value", bad[i]);
        assert_int_equal(fs_graph_set(g, bad[i], &err), FS_ERR_INVALID);
        assert_string_equal(err.message, want);
    }
    assert_int_equal(fs_graph_set(g, "trian.steps=3", &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "--set 'trian.steps=3': [trian]: unknown section; did you mean [train]?");
    assert_int_equal(fs_graph_set(g, "layer.x.window=3", &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "[layer.x]: unknown section; layer sections"));
    assert_int_equal(fs_graph_set(g, "run.note=a ;b", &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "may not contain"));
    assert_int_equal(fs_graph_set(g, "run.note=a\n[model]", &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "may not contain"));
    char big[256];
    snprintf(big, sizeof big, "run.k=%0194d", 0); /* "k = " + 194 = 198 characters: fits */
    assert_int_equal(fs_graph_set(g, big, &err), FS_OK);
    snprintf(big, sizeof big, "run.k=%0195d", 0);
    assert_int_equal(fs_graph_set(g, big, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "longer than 195 characters"));
    assert_int_equal(fs_graph_count(g), 6);
    fs_graph_destroy(g);
}

static void test_to_ini_round_trip(void **state) {
    (void)state;
    char longv[200];
    memset(longv, 'v', 194);
    longv[194] = '\0';
    char text[512];
    /* The 198-character line "k=" + 196 characters must stay loadable. */
    snprintf(text, sizeof text,
             "[train]\nsteps = 100\n[model]\n[run]\nname = \" pad \"\nq = \"\"x\"\"\nsemi = ;x\nk=%s\"\"\n"
             "[train]\nlr = 0.5\n",
             longv);
    fs_graph *g = load(text);
    fs_error err = {0};
    assert_int_equal(fs_graph_set(g, "train.steps=7", &err), FS_OK);
    assert_int_equal(fs_graph_set(g, "layer.1.window=3", &err), FS_OK);
    char *ini = fs_graph_to_ini(g);
    assert_non_null(ini);
    assert_non_null(strstr(ini, "[train]\nsteps = 7\nlr = 0.5\n\n[model]\n\n[run]\n"));
    fs_graph *h = load(ini);
    assert_int_equal(fs_graph_count(h), fs_graph_count(g));
    for (size_t i = 0; i < fs_graph_count(g); i++) {
        const fs_graph_entry *e = fs_graph_at(g, i);
        assert_string_equal(value_of(h, e->section, e->key), e->value);
    }
    assert_true(fs_graph_has_section(h, "model"));
    assert_true(fs_graph_has_section(h, "layer.1"));
    /* Sections keep their first-appearance order. */
    assert_string_equal(fs_graph_at(h, 0)->section, "train");
    assert_string_equal(fs_graph_at(h, fs_graph_count(h) - 1)->section, "layer.1");
    fs_graph_destroy(h);
    free(ini);
    fs_graph_destroy(g);

    g = load("");
    ini = fs_graph_to_ini(g);
    assert_string_equal(ini, "");
    free(ini);
    fs_graph_destroy(g);
}

static int keep_non_distill(const char *section) { return strcmp(section, "distill") != 0; }

/* fs_graph_put: what a derived graph sets; fs_graph_copy: entries with
 * their files and lines. */
static void test_put_and_copy(void **state) {
    (void)state;
    fs_graph *g = load("[model]\nn_layer = 4\n[distill]\nplugin = soft_kd\n[data]\n[train]\nsteps = 9\n");
    fs_error err = {0};
    assert_int_equal(fs_graph_put(g, "model", "n_layer", "2", "stage 1", &err), FS_OK);
    assert_int_equal(fs_graph_put(g, "run", "out", ";odd dir", NULL, &err), FS_OK);
    const fs_graph_entry *e = fs_graph_find(g, "model", "n_layer");
    assert_string_equal(e->value, "2");
    assert_string_equal(e->file, "stage 1");
    assert_int_equal(e->line, 0);
    assert_string_equal(fs_graph_find(g, "run", "out")->file, "--set");
    char at[64];
    fs_graph_entry_at(at, sizeof at, e);
    assert_string_equal(at, "stage 1");
    fs_graph_entry_at(at, sizeof at, fs_graph_find(g, "train", "steps"));
    assert_string_equal(at, "g.ini:7");

    assert_int_equal(fs_graph_put(g, "modle", "n_layer", "2", NULL, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "[modle]: unknown section; did you mean [model]?");
    assert_int_equal(fs_graph_put(g, "model", "n layer", "2", NULL, &err), FS_ERR_INVALID);
    assert_int_equal(fs_graph_put(g, "run", "note", "a ;b", NULL, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "[run] note: the value may not contain ' ;' (an INI comment)");
    assert_int_equal(fs_graph_put(g, "run", "note", "a\nb", NULL, &err), FS_ERR_INVALID);
    char big[256];
    snprintf(big, sizeof big, "%0196d", 0); /* "k=" + 196 = 198: the longest line */
    assert_int_equal(fs_graph_put(g, "run", "k", big, NULL, &err), FS_OK);
    snprintf(big, sizeof big, "%0197d", 0);
    assert_int_equal(fs_graph_put(g, "run", "k", big, NULL, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "[run] k: the line would be longer than the graph's limit");

    /* a copy without [distill]: files and lines kept, empty sections too */
    fs_graph *c = NULL;
    assert_int_equal(fs_graph_copy(&c, g, "g.ini (copy)", NULL, &err), FS_OK);
    assert_int_equal(fs_graph_count(c), fs_graph_count(g));
    assert_string_equal(fs_graph_find(c, "model", "n_layer")->file, "stage 1");
    fs_graph_destroy(c);
    fs_graph_destroy(g);
    g = load("[model]\nn_layer = 4\n[distill]\nplugin = soft_kd\n[data]\n[train]\nsteps = 9\n");
    assert_int_equal(fs_graph_copy(&c, g, "derived", keep_non_distill, &err), FS_OK);
    fs_graph_destroy(g); /* the copy must not depend on the original */
    assert_int_equal(fs_graph_count(c), 2);
    assert_false(fs_graph_has_section(c, "distill"));
    assert_true(fs_graph_has_section(c, "data"));
    assert_string_equal(fs_graph_path(c), "derived");
    e = fs_graph_find(c, "train", "steps");
    assert_string_equal(e->file, "g.ini");
    assert_int_equal(e->line, 7);
    assert_string_equal(fs_graph_at(c, 0)->section, "model");
    fs_graph_destroy(c);
}

/* What the test expects the INI text to hold: no line break, no ';' after
 * whitespace, and the line ("k=" and the value, quoted when it starts or
 * ends with whitespace or is wrapped in quotes) within 198 characters. */
static int writable(const char *key, const char *v) {
    size_t n = strlen(v);
    for (size_t i = 0; i < n; i++)
        if (v[i] == '\n' || v[i] == '\r' || (v[i] == ';' && i && isspace((unsigned char)v[i - 1]))) return 0;
    int quoted = n && (isspace((unsigned char)v[0]) || isspace((unsigned char)v[n - 1]) ||
                       (n >= 2 && v[0] == '"' && v[n - 1] == '"'));
    return strlen(key) + 1 + n + (quoted ? 2 : 0) <= 198;
}

/* Any value: either put refuses it (and only what the text cannot hold),
 * or to_ini and a reload give back exactly the same entries, sections and
 * order. Values are random strings over the characters INI treats
 * specially, UTF-8 and control bytes, of every length up to past the line. */
static void test_to_ini_arbitrary_values(void **state) {
    (void)state;
    static const char alphabet[] = " \t\v\f;#=:\"'[]\\ab9.,-_/\r\n\x01\x7f\xc3\xa9\xe2\x82\xac";
    static const char *const sections[] = {"model", "run", "layer.3", "data", "distill.stage.2", "train"};
    uint64_t x = 0x9E3779B97F4A7C15ull;
    size_t accepted = 0, refused = 0;
    for (int round = 0; round < 300; round++) {
        fs_graph *g = load("[train]\n");
        fs_error err = {0};
        for (int i = 0; i < 12; i++) {
            char key[16], v[260];
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            snprintf(key, sizeof key, "k%d", (int)(x % 9));
            size_t len = x >> 60 == 0 ? 180 + (x >> 8) % 30 : (x >> 8) % 24; /* some near the limit */
            for (size_t j = 0; j < len; j++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                v[j] = alphabet[(x >> 20) % (sizeof alphabet - 1)];
            }
            v[len] = '\0';
            const char *sec = sections[(x >> 40) % 6];
            int rc = fs_graph_put(g, sec, key, v, NULL, &err);
            if (writable(key, v)) {
                if (rc) fail_msg("[%s] %s = '%s' was refused: %s", sec, key, v, err.message);
                assert_string_equal(fs_graph_find(g, sec, key)->value, v);
                accepted++;
            } else {
                assert_int_equal(rc, FS_ERR_INVALID);
                refused++;
            }
        }
        char *ini = fs_graph_to_ini(g);
        assert_non_null(ini);
        fs_graph *h = NULL;
        if (fs_graph_load_string(&h, "ini", ini, &err)) fail_msg("%s\n--- ini ---\n%s", err.message, ini);
        assert_int_equal(fs_graph_count(h), fs_graph_count(g));
        for (size_t i = 0; i < fs_graph_count(g); i++) { /* the text groups entries by section */
            const fs_graph_entry *a = fs_graph_at(g, i), *b = fs_graph_find(h, a->section, a->key);
            if (!b) fail_msg("[%s] %s = '%s' is lost", a->section, a->key, a->value);
            if (strcmp(a->value, b->value))
                fail_msg("[%s] %s: '%s' came back as '%s'", a->section, a->key, a->value, b->value);
        }
        char *again = fs_graph_to_ini(h);
        assert_string_equal(again, ini);
        free(again);
        free(ini);
        fs_graph_destroy(h);
        fs_graph_destroy(g);
    }
    assert_true(accepted > 1000 && refused > 100); /* both sides of the property were exercised */
}

/* ---- resolution ---- */

static const fs_param_spec SPEC[] = {
    {"window", FS_PARAM_INT, "3", 1, 65536, NULL, "band half-width"},
    {"heads", FS_PARAM_INT, "4", 1, BIG, NULL, "number of heads"},
    {"offset", FS_PARAM_INT, "0", 1, 0, NULL, "unbounded"},
    {"dropout", FS_PARAM_FLOAT, "0.1", 0, 1, NULL, "dropout probability"},
    {"scale", FS_PARAM_FLOAT, "1", 0, BIG, NULL, "logit scale"},
    {"causal", FS_PARAM_BOOL, "true", 0, 0, NULL, "mask the future"},
    {"kind", FS_PARAM_ENUM, "dense", 0, 0, "dense|banded|hashed", "pattern"},
    {"layers", FS_PARAM_INT_LIST, "0", 0, 11, NULL, "which layers"},
    {"name", FS_PARAM_STRING, "", 0, 0, NULL, "free text"},
};
#define N_SPEC (sizeof SPEC / sizeof SPEC[0])
static const char *const EXTRA[] = {"plugin", NULL};

static fs_config *resolve_in(const char *text, const char *const *sections, size_t n, fs_error *err,
                             int expect) {
    fs_graph *g = load(text);
    fs_config *c = NULL;
    int rc = fs_config_resolve(&c, g, sections, n, SPEC, N_SPEC, EXTRA, err);
    if (rc != expect) fail_msg("rc %d, message: %s", rc, err->message);
    fs_graph_destroy(g); /* the config must not depend on the graph */
    return c;
}

/* Resolves "[attention]\nKEY = VALUE" and checks the error message; values
 * that would be invisible are shown in quotes. */
static void value_fails(const char *line, const char *message) {
    char text[256];
    snprintf(text, sizeof text, "[attention]\n%s\n", line);
    static const char *const secs[] = {"attention"};
    fs_error err = {0};
    fs_config *c = resolve_in(text, secs, 1, &err, FS_ERR_INVALID);
    assert_null(c);
    assert_int_equal(err.status, FS_ERR_INVALID);
    char want[512];
    size_t n = strlen(line);
    if (line[n - 1] == '=')
        snprintf(want, sizeof want, "g.ini:2: [attention] %s \"\": %s", line, message);
    else
        snprintf(want, sizeof want, "g.ini:2: [attention] %s: %s", line, message);
    assert_string_equal(err.message, want);
}

static fs_config *value_ok(const char *line) {
    char text[256];
    snprintf(text, sizeof text, "[attention]\n%s\n", line);
    static const char *const secs[] = {"attention"};
    fs_error err = {0};
    fs_config *c = resolve_in(text, secs, 1, &err, FS_OK);
    assert_non_null(c);
    return c;
}

static void test_defaults(void **state) {
    (void)state;
    fs_config *c = value_ok("; nothing set");
    assert_int_equal(fs_config_int(c, "window"), 3);
    assert_int_equal(fs_config_int(c, "heads"), 4);
    assert_true(fs_config_float(c, "dropout") == 0.1);
    assert_true(fs_config_bool(c, "causal"));
    assert_string_equal(fs_config_string(c, "kind"), "dense");
    assert_string_equal(fs_config_string(c, "name"), "");
    int64_t l[4] = {9, 9, 9, 9};
    assert_int_equal(fs_config_int_list(c, "layers", l, 4), 1);
    assert_int_equal(l[0], 0);
    assert_string_equal(fs_config_where(c, "window"), "[attention] window (default 3)");
    assert_false(fs_config_is_set(c, "window"));
    /* Unknown keys and wrong types give zero values, not crashes. */
    assert_int_equal(fs_config_int(c, "nope"), 0);
    assert_true(fs_config_float(c, "nope") == 0.0);
    assert_int_equal(fs_config_bool(c, "nope"), 0);
    assert_null(fs_config_string(c, "nope"));
    assert_null(fs_config_where(c, "nope"));
    assert_int_equal(fs_config_is_set(c, "nope"), 0);
    assert_int_equal(fs_config_int_list(c, "nope", l, 4), 0);
    assert_int_equal(fs_config_int(c, "dropout"), 0);
    assert_int_equal(fs_config_int(NULL, "window"), 0);
    fs_config_destroy(c);
    fs_config_destroy(NULL);
}

static void test_int(void **state) {
    (void)state;
    fs_config *c = value_ok("window = 65536");
    assert_int_equal(fs_config_int(c, "window"), 65536);
    assert_true(fs_config_is_set(c, "window"));
    assert_string_equal(fs_config_where(c, "window"), "g.ini:2: [attention] window = 65536");
    fs_config_destroy(c);
    c = value_ok("offset = -9000000000");
    assert_true(fs_config_int(c, "offset") == -9000000000LL);
    fs_config_destroy(c);
    c = value_ok("window = +1");
    assert_int_equal(fs_config_int(c, "window"), 1);
    fs_config_destroy(c);

    value_fails("window = -3", "must be an integer in [1, 65536]");
    value_fails("window = 0", "must be an integer in [1, 65536]");
    value_fails("window = 65537", "must be an integer in [1, 65536]");
    value_fails("window = 3.0", "must be an integer in [1, 65536]");
    value_fails("window = 1e3", "must be an integer in [1, 65536]");
    value_fails("window = 0x10", "must be an integer in [1, 65536]");
    value_fails("window =", "must be an integer in [1, 65536]");
    value_fails("window = \" 3\"", "must be an integer in [1, 65536]");
    value_fails("heads = 0", "must be an integer >= 1");
    value_fails("offset = 99999999999999999999", "must be an integer; the largest a key holds is 9223372036854775807");
    value_fails("heads = 18446744073709551615",
                "must be an integer >= 1; the largest a key holds is 9223372036854775807");
    value_fails("offset = -99999999999999999999", "must be an integer; the smallest a key holds is -9223372036854775808");
    c = value_ok("offset = 9223372036854775807");
    assert_true(fs_config_int(c, "offset") == INT64_MAX);
    fs_config_destroy(c);
    value_fails("offset = ten", "must be an integer");
}

static void test_float(void **state) {
    (void)state;
    fs_config *c = value_ok("dropout = 0.25");
    assert_true(fs_config_float(c, "dropout") == 0.25);
    fs_config_destroy(c);
    c = value_ok("scale = 1e3");
    assert_true(fs_config_float(c, "scale") == 1000.0);
    fs_config_destroy(c);
    c = value_ok("dropout = 1");
    assert_true(fs_config_float(c, "dropout") == 1.0);
    fs_config_destroy(c);
    value_fails("dropout = 1.5", "must be a number in [0, 1]");
    value_fails("dropout = -0.1", "must be a number in [0, 1]");
    value_fails("dropout = nan", "must be a number in [0, 1]");
    value_fails("dropout = 0.5x", "must be a number in [0, 1]");
    value_fails("dropout =", "must be a number in [0, 1]");
    value_fails("scale = inf", "must be a number >= 0");
    value_fails("scale = -1", "must be a number >= 0");
}

static void test_bool(void **state) {
    (void)state;
    static const char *const yes[] = {"true", "TRUE", "Yes", "on", "1"}, *const no[] = {"false", "no", "OFF", "0"};
    char line[64];
    for (size_t i = 0; i < 5; i++) {
        snprintf(line, sizeof line, "causal = %s", yes[i]);
        fs_config *c = value_ok(line);
        assert_int_equal(fs_config_bool(c, "causal"), 1);
        fs_config_destroy(c);
    }
    for (size_t i = 0; i < 4; i++) {
        snprintf(line, sizeof line, "causal = %s", no[i]);
        fs_config *c = value_ok(line);
        assert_int_equal(fs_config_bool(c, "causal"), 0);
        fs_config_destroy(c);
    }
    value_fails("causal = maybe", "must be true or false");
    value_fails("causal = 2", "must be true or false");
    value_fails("causal =", "must be true or false");
}

static void test_enum_string(void **state) {
    (void)state;
    fs_config *c = value_ok("kind = hashed");
    assert_string_equal(fs_config_string(c, "kind"), "hashed");
    fs_config_destroy(c);
    value_fails("kind = Dense", "must be one of: dense, banded, hashed");
    value_fails("kind = band", "must be one of: dense, banded, hashed");
    value_fails("kind =", "must be one of: dense, banded, hashed");
    c = value_ok("name = anything at all; really");
    assert_string_equal(fs_config_string(c, "name"), "anything at all; really");
    fs_config_destroy(c);
}

static void test_int_list(void **state) {
    (void)state;
    fs_config *c = value_ok("layers = 0, 3,11 ,4");
    int64_t l[8] = {0};
    assert_int_equal(fs_config_int_list(c, "layers", l, 2), 4);
    assert_int_equal(l[0], 0);
    assert_int_equal(l[1], 3);
    assert_int_equal(l[2], 0); /* cap respected */
    assert_int_equal(fs_config_int_list(c, "layers", l, 8), 4);
    assert_int_equal(l[2], 11);
    assert_int_equal(l[3], 4);
    fs_config_destroy(c);
    const char *msg = "must be a comma-separated list of integers in [0, 11]";
    value_fails("layers = 12", msg);
    value_fails("layers = 1,,2", msg);
    value_fails("layers = 1,", msg);
    value_fails("layers =", msg);
    value_fails("layers = 1 2", msg);
    value_fails("layers = -1", msg);
}

static void test_unknown_key(void **state) {
    (void)state;
    static const fs_param_spec train[] = {
        {"steps", FS_PARAM_INT, "10", 1, BIG, NULL, "optimizer steps"},
        {"lr", FS_PARAM_FLOAT, "0.001", 0, BIG, NULL, "learning rate"},
    };
    static const char *const secs[] = {"train"};
    fs_graph *g = load("[train]\n\nstpes = 100\n");
    fs_config *c = NULL;
    fs_error err = {0};
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, train, 2, NULL, &err), FS_ERR_INVALID);
    assert_null(c);
    assert_string_equal(err.message, "g.ini:3: [train] stpes = 100: unknown key in [train]; did you mean 'steps'?");
    fs_graph_destroy(g);

    g = load("[train]\nbatch_size = 8\n");
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, train, 2, EXTRA, &err), FS_ERR_INVALID);
    assert_string_equal(err.message,
                        "g.ini:2: [train] batch_size = 8: unknown key in [train]; known keys: steps, lr, plugin");
    fs_graph_destroy(g);

    /* Ties go to the first candidate in schema order. */
    static const fs_param_spec ab[] = {
        {"top_k", FS_PARAM_INT, "1", 1, BIG, NULL, NULL},
        {"top_p", FS_PARAM_FLOAT, "1", 0, 1, NULL, NULL},
    };
    g = load("[train]\ntop_q = 8\n");
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, ab, 2, NULL, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "g.ini:2: [train] top_q = 8: unknown key in [train]; did you mean 'top_k'?");
    fs_graph_destroy(g);

    /* Extra keys are allowed and suggested. */
    g = load("[train]\nplugin = x\n");
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, train, 2, EXTRA, &err), FS_OK);
    fs_config_destroy(c);
    assert_int_equal(fs_graph_set(g, "train.plugn=y", &err), FS_OK);
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, train, 2, EXTRA, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "--set: [train] plugn = y: unknown key in [train]; did you mean 'plugin'?");
    fs_graph_destroy(g);
}

static void test_required(void **state) {
    (void)state;
    static const fs_param_spec spec[] = {
        {"path", FS_PARAM_STRING, NULL, 0, 0, NULL, "training text file"},
        {"seq_len", FS_PARAM_INT, NULL, 1, BIG, NULL, NULL},
    };
    static const char *const secs[] = {"data"};
    fs_graph *g = load("[model]\n");
    fs_config *c = NULL;
    fs_error err = {0};
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, spec, 2, NULL, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "g.ini: [data] path: required key is missing (training text file)");
    assert_int_equal(fs_graph_set(g, "data.path=x.txt", &err), FS_OK);
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, spec, 2, NULL, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "g.ini: [data] seq_len: required key is missing");
    assert_int_equal(fs_graph_set(g, "data.seq_len=64", &err), FS_OK);
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, spec, 2, NULL, &err), FS_OK);
    assert_string_equal(fs_config_string(c, "path"), "x.txt");
    assert_string_equal(fs_config_where(c, "seq_len"), "--set: [data] seq_len = 64");
    fs_config_destroy(c);
    fs_graph_destroy(g);
}

static void test_priority(void **state) {
    (void)state;
    fs_graph *g = load("[attention]\n"        /* 1 */
                       "plugin = banded\n"    /* 2 */
                       "window = 8\n"         /* 3 */
                       "dropout = 0.5\n"      /* 4 */
                       "[layer.2-3]\n"        /* 5 */
                       "window = 32\n"        /* 6 */
                       "mystery = 1\n");      /* 7 */
    static const char *const secs[] = {"layer.2-3", "attention"};
    fs_config *c = NULL;
    fs_error err = {0};
    /* [layer.2-3] has a key the schema lacks: only sections[0] is checked. */
    assert_int_equal(fs_config_resolve(&c, g, secs, 2, SPEC, N_SPEC, EXTRA, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "g.ini:7: [layer.2-3] mystery = 1: unknown key in [layer.2-3]; known keys: "
                                     "window, heads, offset, dropout, scale, causal, kind, layers, name, plugin");
    fs_graph_destroy(g);

    g = load("[attention]\nplugin = banded\nwindow = 8\ndropout = 0.5\nbogus = 1\n[layer.2-3]\nwindow = 32\n");
    assert_int_equal(fs_config_resolve(&c, g, secs, 2, SPEC, N_SPEC, EXTRA, &err), FS_OK);
    assert_int_equal(fs_config_int(c, "window"), 32);
    assert_string_equal(fs_config_where(c, "window"), "g.ini:7: [layer.2-3] window = 32");
    assert_true(fs_config_float(c, "dropout") == 0.5);
    assert_string_equal(fs_config_where(c, "dropout"), "g.ini:4: [attention] dropout = 0.5");
    assert_true(fs_config_is_set(c, "dropout"));
    assert_int_equal(fs_config_int(c, "heads"), 4);
    assert_string_equal(fs_config_where(c, "heads"), "[layer.2-3] heads (default 4)");
    assert_false(fs_config_is_set(c, "heads"));
    fs_config_destroy(c);

    /* A value taken from a lower-priority section is type-checked... */
    assert_int_equal(fs_graph_set(g, "attention.heads=zero", &err), FS_OK);
    assert_int_equal(fs_config_resolve(&c, g, secs, 2, SPEC, N_SPEC, EXTRA, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "--set: [attention] heads = zero: must be an integer >= 1");
    /* ...but not one that is overridden. */
    assert_int_equal(fs_graph_set(g, "layer.2-3.heads=2", &err), FS_OK);
    assert_int_equal(fs_config_resolve(&c, g, secs, 2, SPEC, N_SPEC, EXTRA, &err), FS_OK);
    assert_int_equal(fs_config_int(c, "heads"), 2);
    fs_config_destroy(c);
    fs_graph_destroy(g);
}

static void test_first_error_in_file_order(void **state) {
    (void)state;
    static const char *const secs[] = {"attention"};
    fs_error err = {0};
    /* "dropout" precedes "window" in the file but not in the schema. */
    fs_config *c = resolve_in("[attention]\ndropout = 2\nwindow = 0\n", secs, 1, &err, FS_ERR_INVALID);
    assert_null(c);
    assert_string_equal(err.message, "g.ini:2: [attention] dropout = 2: must be a number in [0, 1]");
    c = resolve_in("[attention]\nwindow = 0\nwindw = 3\n", secs, 1, &err, FS_ERR_INVALID);
    assert_string_equal(err.message, "g.ini:2: [attention] window = 0: must be an integer in [1, 65536]");
    c = resolve_in("[attention]\nwindw = 3\nwindow = 0\n", secs, 1, &err, FS_ERR_INVALID);
    assert_string_equal(err.message,
                        "g.ini:2: [attention] windw = 3: unknown key in [attention]; did you mean 'window'?");
}

static void test_bad_default(void **state) {
    (void)state;
    static const fs_param_spec spec[] = {{"k", FS_PARAM_ENUM, "c", 0, 0, "a|b", "broken schema"}};
    static const char *const secs[] = {"model"};
    fs_graph *g = load("[model]\n");
    fs_config *c = NULL;
    fs_error err = {0};
    assert_int_equal(fs_config_resolve(&c, g, secs, 1, spec, 1, NULL, &err), FS_ERR_INVALID);
    assert_string_equal(err.message, "[model] k (default c): invalid default in the schema: must be one of: a, b");
    assert_int_equal(fs_config_resolve(&c, g, secs, 0, spec, 1, NULL, &err), FS_ERR_INVALID);
    fs_graph_destroy(g);
}

static void test_edit_distance(void **state) {
    (void)state;
    assert_int_equal(fs_edit_distance("", ""), 0);
    assert_int_equal(fs_edit_distance("steps", "steps"), 0);
    assert_int_equal(fs_edit_distance("", "abc"), 3);
    assert_int_equal(fs_edit_distance("abc", ""), 3);
    assert_int_equal(fs_edit_distance("kitten", "sitting"), 3);
    assert_int_equal(fs_edit_distance("stpes", "steps"), 2); /* no transpositions */
    assert_int_equal(fs_edit_distance("window", "windw"), 1);
    assert_int_equal(fs_edit_distance("flaw", "lawn"), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_numbers),
        cmocka_unit_test(test_empty_section_and_bom),
        cmocka_unit_test(test_values_quotes_comments),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_unknown_section),
        cmocka_unit_test(test_layer_range),
        cmocka_unit_test(test_missing_file_and_dir),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_to_ini_round_trip),
        cmocka_unit_test(test_put_and_copy),
        cmocka_unit_test(test_to_ini_arbitrary_values),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_int),
        cmocka_unit_test(test_float),
        cmocka_unit_test(test_bool),
        cmocka_unit_test(test_enum_string),
        cmocka_unit_test(test_int_list),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_required),
        cmocka_unit_test(test_priority),
        cmocka_unit_test(test_first_error_in_file_order),
        cmocka_unit_test(test_bad_default),
        cmocka_unit_test(test_edit_distance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
