/* graph.h — the INI model graph: parsing, overrides, validation.
 *
 * A graph file is parsed once into entries (section, key, value, file,
 * line); `--set section.key=value` adds or replaces entries (file "--set",
 * line 0). Nothing is interpreted here: the runtime and each plugin declare
 * their keys as fs_param_spec arrays and resolve a section against them,
 * which types every value, applies defaults and reports the first problem as
 *
 *     graph.ini:12: [attention] window = -3: must be an integer >= 1
 *     graph.ini:7: [train] stpes = 100: unknown key in [train]; did you mean 'steps'?
 *
 * so every error names the file, line, section, key and value and the fix.
 *
 * Section names: "model", "attention", "layer.N", "layer.A-B" (inclusive),
 * "parallel", "distill", "distill.stage.N", "data", "train", "generate",
 * "run", "serve". Any other section is an error. */
#ifndef FS_GRAPH_H
#define FS_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/plugin.h"

typedef struct fs_graph_entry {
    const char *section;
    const char *key;
    const char *value;
    const char *file; /* path as given, or "--set" */
    int line;         /* 1-based; 0 for --set */
} fs_graph_entry;

typedef struct fs_graph fs_graph;

/* Parse errors ("graph.ini:3: expected 'key = value' or '[section]'",
 * duplicate key in one section, unknown section name, missing file) fill
 * err with FS_ERR_INVALID (FS_ERR_NOT_FOUND for a missing file). */
int fs_graph_load(fs_graph **out, const char *path, fs_error *err);
int fs_graph_load_string(fs_graph **out, const char *name, const char *text, fs_error *err);
void fs_graph_destroy(fs_graph *g); /* accepts NULL */

/* "section.key=value"; the section may contain dots (layer.2.window is
 * section "layer.2", key "window": the key is after the last dot). */
int fs_graph_set(fs_graph *g, const char *assignment, fs_error *err);

const char *fs_graph_path(const fs_graph *g);
/* The directory of the graph file, for resolving relative paths ("." for
 * strings and --set). */
const char *fs_graph_dir(const fs_graph *g);
/* Adds or replaces section.key = value without text to parse: what a mode
 * derives from a graph (a distillation stage's [model] n_layer). `origin`
 * is what messages name as the value's file ("--set" when NULL; line 0).
 * Refuses an unknown section, a key other than letters, digits, '_' and
 * '-', and a value the INI text cannot hold (a line break, ';' after
 * whitespace, a line past the limit), so fs_graph_to_ini always gives the
 * graph back. */
int fs_graph_put(fs_graph *g, const char *section, const char *key, const char *value, const char *origin,
                 fs_error *err);
/* A new graph called `name` with base's entries (their files and lines
 * kept, for messages) and sections, in base's order, of the sections
 * keep() accepts (NULL: all); relative paths keep base's directory. */
int fs_graph_copy(fs_graph **out, const fs_graph *base, const char *name, int (*keep)(const char *section),
                  fs_error *err);

/* The graph as INI text with --set overrides applied: stored in checkpoints
 * and loadable again with fs_graph_load_string, which gives back exactly
 * these sections, keys and values (values are quoted, or written right
 * after '=', where the parser would otherwise change them). */
char *fs_graph_to_ini(const fs_graph *g); /* caller frees */
/* "graph.ini:12", or "--set" for an entry without a line. */
void fs_graph_entry_at(char *buf, size_t cap, const fs_graph_entry *e);

size_t fs_graph_count(const fs_graph *g);
const fs_graph_entry *fs_graph_at(const fs_graph *g, size_t i);
const fs_graph_entry *fs_graph_find(const fs_graph *g, const char *section, const char *key);
int fs_graph_has_section(const fs_graph *g, const char *section);
/* For "layer.N"/"layer.A-B" sections: the layer range; returns 0 if the
 * section is a layer section, -1 otherwise. */
int fs_graph_layer_range(const char *section, int *first, int *last);

/* A resolved configuration: every key of a schema with its typed value,
 * taken from the first of `sections` (in priority order) that sets it, else
 * the spec's default. */
typedef struct fs_config fs_config;

/* Checks that every entry of sections[0] is either in `spec` or in `extra`
 * (keys handled elsewhere, e.g. "plugin"; may be NULL), that every value
 * parses as its type and lies in its range or choices, and that required
 * keys (default_value NULL) are set. Only sections[0]'s unknown keys are
 * reported (the others are validated by their own resolve calls); values
 * taken from any of the sections are type-checked. */
int fs_config_resolve(fs_config **out, const fs_graph *g, const char *const *sections, size_t n_sections,
                      const fs_param_spec *spec, size_t n_spec, const char *const *extra, fs_error *err);
void fs_config_destroy(fs_config *c); /* accepts NULL */

int64_t fs_config_int(const fs_config *c, const char *key);
double fs_config_float(const fs_config *c, const char *key);
int fs_config_bool(const fs_config *c, const char *key);
const char *fs_config_string(const fs_config *c, const char *key); /* also ENUM */
size_t fs_config_int_list(const fs_config *c, const char *key, int64_t *out, size_t cap);
/* "graph.ini:12: [attention] window = 3", or "[attention] window (default 3)". */
const char *fs_config_where(const fs_config *c, const char *key);
/* 1 when the key came from the graph or --set rather than the default. */
int fs_config_is_set(const fs_config *c, const char *key);

/* A spec's range as --describe and --help-graph print it: "[1, 8]", ">= 1"
 * or "<= 8" (a bound at FS_PARAM_UNBOUNDED is open), or "" for no range or
 * a type without one; integers are written without a fraction. Error
 * messages use the same text. */
void fs_param_range_text(char *buf, size_t cap, const fs_param_spec *s);

/* 1 when two texts are the same value of the key s describes ("3e-3" and
 * "0.003", "yes" and "true", "1,2" and "1, 2"); texts that do not parse
 * are the same only when equal. */
int fs_param_same_value(const fs_param_spec *s, const char *a, const char *b);

/* Damerau-free Levenshtein distance; used for "did you mean". */
size_t fs_edit_distance(const char *a, const char *b);

#endif
