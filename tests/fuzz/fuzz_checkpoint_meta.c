/* fuzz_checkpoint_meta.c — the readers of a checkpoint's metadata
 * (step, optimizer_t, rng, loss, val_loss, format, fastserve_format and
 * the stored graph; session/checkpoint_meta.h) on arbitrary values.
 *
 * Input: "key=value" lines. Either a reader refuses with a one-line
 * message naming the file, or what it returns is in range: optimizer_t <=
 * step, a finite loss, val_loss -1 or >= 0, an rng not all zero, and a
 * stored graph that survives its own text round trip. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session/checkpoint_meta.h"

#define MAX_FIELDS 16

typedef struct fields {
    char *keys[MAX_FIELDS], *values[MAX_FIELDS];
    size_t n;
} fields;

static const char *get(const void *src, const char *key) {
    const fields *f = src;
    for (size_t i = 0; i < f->n; i++) /* the last one wins, as a JSON object's would */
        if (!strcmp(f->keys[f->n - 1 - i], key)) return f->values[f->n - 1 - i];
    return NULL;
}

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_checkpoint_meta: %s\n", what);
        abort();
    }
}

static void check_refusal(const fs_error *err) {
    check(!strncmp(err->message, "ckpt: ", 6), "a message that does not name the file");
    check(strchr(err->message, '\n') == NULL, "a message with a line break");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    fields f = {.n = 0};
    /* lines "key=value"; "\\n" in a value stands for a line break (the graph's) */
    for (char *line = text, *next; line && f.n < MAX_FIELDS; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        for (char *p = eq + 1, *q = eq + 1;; p++) {
            if (p[0] == '\\' && p[1] == 'n') *q++ = '\n', p++;
            else if (!(*q++ = *p)) break;
        }
        f.keys[f.n] = line;
        f.values[f.n++] = eq + 1;
    }
    fs_ckpt_weights_meta w;
    fs_error err = {0};
    if (fs_ckpt_meta_weights(&w, get, &f, "ckpt", &err)) {
        check_refusal(&err);
    } else if (w.graph) {
        char *ini = fs_graph_to_ini(w.graph);
        fs_graph *again = NULL;
        fs_error gerr = {0};
        check(ini && !fs_graph_load_string(&again, "again", ini, &gerr), "a stored graph's text does not load");
        check(fs_graph_count(again) == fs_graph_count(w.graph), "a stored graph changed in its round trip");
        fs_graph_destroy(again);
        free(ini);
    }
    fs_ckpt_meta_weights_release(&w);
    for (int layout = FS_CKPT_V1; layout <= FS_CKPT_V2; layout++) {
        fs_ckpt_state_meta m;
        if (fs_ckpt_meta_state(&m, layout, get, &f, "ckpt", &err)) {
            check_refusal(&err);
            continue;
        }
        check(m.optimizer_t <= m.step, "optimizer_t past step");
        check(isfinite(m.loss) && isfinite(m.val_loss), "a loss that is not finite");
        check(m.val_loss >= 0 || m.val_loss == -1, "a negative val_loss other than -1");
        check((m.rng.s[0] | m.rng.s[1] | m.rng.s[2] | m.rng.s[3]) != 0, "an all-zero rng"); /* not as an int: 64 bits */
    }
    free(text);
    return 0;
}
