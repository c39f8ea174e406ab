/* fuzz_graph.c — the INI graph parser, --set, schema resolution and the
 * text round trip (libFuzzer; tests/fuzz/README.md).
 *
 * Input: a first line that is a --set assignment, then graph text. The
 * graph either fails to parse with an error message, or: every runtime
 * section resolves against its schema (or fails with a message), the
 * assignment applies (or fails), and fs_graph_to_ini gives back exactly
 * the same sections, keys and values, rendered identically a second time. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/graph.h"
#include "core/schema.h"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_graph: %s\n", what);
        abort();
    }
}

/* A failure must say something, on one line. */
static void check_message(const fs_error *err) {
    check(err->message[0] != '\0', "an error without a message");
    check(strchr(err->message, '\n') == NULL, "an error message with a line break");
}

static void resolve_all(const fs_graph *g) {
    for (size_t i = 0; fs_schemas[i]; i++) {
        const char *sec[] = {fs_schemas[i]->section};
        fs_config *c = NULL;
        fs_error err = {0};
        if (fs_config_resolve(&c, g, sec, 1, fs_schemas[i]->spec, fs_schemas[i]->n, NULL, &err))
            check_message(&err);
        else
            for (size_t k = 0; k < fs_schemas[i]->n; k++) check(fs_config_where(c, fs_schemas[i]->spec[k].name) != NULL, "a key without its origin");
        fs_config_destroy(c);
    }
}

static void round_trip(const fs_graph *g) {
    char *ini = fs_graph_to_ini(g);
    check(ini != NULL, "to_ini failed");
    fs_graph *h = NULL;
    fs_error err = {0};
    if (fs_graph_load_string(&h, "round-trip", ini, &err)) {
        fprintf(stderr, "%s\n--- ini ---\n%s\n", err.message, ini);
        check(0, "the graph's own text does not load");
    }
    check(fs_graph_count(h) == fs_graph_count(g), "entries lost or added in the round trip");
    for (size_t i = 0; i < fs_graph_count(g); i++) {
        const fs_graph_entry *a = fs_graph_at(g, i), *b = fs_graph_find(h, a->section, a->key);
        check(b != NULL, "an entry lost in the round trip");
        check(!strcmp(a->value, b->value), "a value changed in the round trip");
    }
    char *again = fs_graph_to_ini(h);
    check(again && !strcmp(again, ini), "the text differs when rendered again");
    free(again);
    free(ini);
    fs_graph_destroy(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char *nl = strchr(text, '\n'), *body = nl ? nl + 1 : text + size;
    if (nl) *nl = '\0';
    fs_graph *g = NULL;
    fs_error err = {0};
    if (fs_graph_load_string(&g, "fuzz.ini", body, &err)) {
        check_message(&err);
    } else {
        if (fs_graph_set(g, text, &err)) check_message(&err);
        resolve_all(g);
        round_trip(g);
        fs_graph_destroy(g);
    }
    free(text);
    return 0;
}
