/* graph_check.c — see graph_check.h. Where the line between "changes the
 * function" and "changes the run" falls is the table section_rules: a role
 * per section, and the keys that differ from their section's role. */
#include "session/graph_check.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/schema.h"
#include "io/tokenizer.h"

typedef enum key_role { CHANGES_FUNCTION, CHANGES_RUN } key_role;

/* What the comparisons see. */
typedef struct check {
    fs_session *s;
    const fs_graph *stored;
    const char *file; /* the checkpoint, for messages */
    fs_graph_use use;
    fs_error *err;
    const char *layer_plugin; /* the layer's plugin's name while its keys are compared */
    char said[768]; /* the run changes said once when resuming: "[train] lr 0.003 -> 0.001, ..." */
    size_t n_said, n_more;
    char noted[768]; /* the function changes said once when starting from the weights */
} check;

/* Two texts of one key: the same value? spec NULL: a key no schema types. */
typedef int (*same_fn)(check *c, const fs_param_spec *spec, const char *stored, const char *now);

typedef struct key_rule {
    const char *key;
    key_role role;
    same_fn same;       /* NULL: as the key's type says */
    const char *plugin; /* a key of this plugin only (NULL: of the section) */
} key_rule;

typedef struct section_rule {
    const char *section; /* a name, or a prefix ending in '.' */
    key_role role;       /* of the keys not listed */
    const key_rule *keys;
    size_t n_keys;
} section_rule;

static int same_tokenizer(check *c, const fs_param_spec *spec, const char *stored, const char *now);
static int same_plugin(check *c, const fs_param_spec *spec, const char *stored, const char *now);

static const key_rule model_keys[] = {
    {"tokenizer", CHANGES_FUNCTION, same_tokenizer, NULL},
    {"max_seq", CHANGES_RUN, NULL, NULL},  /* fewer positions use the first rows; more are refused by wpe's shape */
    {"ff_chunk", CHANGES_RUN, NULL, NULL}, /* the same MLP, a few rows at a time */
    {"init", CHANGES_RUN, NULL, NULL},     /* where the first run started */
};
static const key_rule attention_keys[] = {
    {"plugin", CHANGES_FUNCTION, same_plugin, NULL},
    {"block", CHANGES_RUN, NULL, "longformer"}, /* query rows per kernel block: the same attention */
};

#define N(a) (sizeof(a) / sizeof((a)[0]))
static const section_rule section_rules[] = {
    {"model", CHANGES_FUNCTION, model_keys, N(model_keys)},
    {"attention", CHANGES_FUNCTION, attention_keys, N(attention_keys)}, /* with [layer.N], layer by layer */
    {"layer.", CHANGES_FUNCTION, attention_keys, N(attention_keys)},
    {"parallel", CHANGES_RUN, NULL, 0}, /* how ranks share the work: the same numbers */
    {"distill", CHANGES_RUN, NULL, 0},  /* the loss a student learned with */
    {"distill.stage.", CHANGES_RUN, NULL, 0},
    {"data", CHANGES_RUN, NULL, 0},
    {"train", CHANGES_RUN, NULL, 0},
    {"generate", CHANGES_RUN, NULL, 0},
    {"run", CHANGES_RUN, NULL, 0},
    {"serve", CHANGES_RUN, NULL, 0},
};

static const section_rule *section_rule_of(const char *section) {
    for (size_t i = 0; i < N(section_rules); i++) {
        const char *name = section_rules[i].section;
        size_t n = strlen(name);
        if (name[n - 1] == '.' ? !strncmp(section, name, n) : !strcmp(section, name)) return &section_rules[i];
    }
    return NULL;
}

static const key_rule *key_rule_of(const section_rule *r, const char *key, const char *plugin) {
    for (size_t i = 0; r && i < r->n_keys; i++)
        if (!strcmp(r->keys[i].key, key) && (!r->keys[i].plugin || (plugin && !strcmp(r->keys[i].plugin, plugin))))
            return &r->keys[i];
    return NULL;
}

/* plugin: the section's plugin, for keys of one plugin (NULL: none). */
static key_role role_of(const char *section, const char *key, const char *plugin) {
    const section_rule *r = section_rule_of(section);
    const key_rule *k = key_rule_of(r, key, plugin);
    return k ? k->role : r ? r->role : CHANGES_FUNCTION; /* a section nothing knows: assume the worst */
}

static int same_value(check *c, const section_rule *r, const fs_param_spec *spec, const char *key, const char *stored,
                      const char *now) {
    const key_rule *k = key_rule_of(r, key, NULL);
    if (k && k->same) return k->same(c, spec, stored, now);
    return spec ? fs_param_same_value(spec, stored, now) : !strcmp(stored, now);
}

/* ---- special comparisons ---- */

/* The same encoding: same text, or two BPE files with the same identity
 * (the checkpoint's may have moved: its run directory keeps a copy). */
static int same_tokenizer(check *c, const fs_param_spec *spec, const char *stored, const char *now) {
    (void)spec;
    if (!strcmp(stored, now)) return 1;
    if (strncmp(stored, "bpe:", 4) || strncmp(now, "bpe:", 4)) return 0;
    fs_tokenizer *mine, *theirs = NULL;
    fs_error ignored = {0};
    if (fs_session_tokenizer(c->s, &mine, &ignored)) return 0;
    if (fs_tokenizer_open(&theirs, stored, "the checkpoint's tokenizer", &ignored)) {
        char copy[PATH_MAX + 32];
        const char *slash = strrchr(c->file, '/');
        snprintf(copy, sizeof copy, "bpe:%.*s/tokenizer.json", slash ? (int)(slash - c->file) : 1, slash ? c->file : ".");
        if (fs_tokenizer_open(&theirs, copy, "the checkpoint's tokenizer", &ignored)) return 0;
    }
    int same = fs_tokenizer_identity(theirs) == fs_tokenizer_identity(mine);
    fs_tokenizer_destroy(theirs);
    return same;
}

/* The same plugin, however it was named: the name its descriptor declares
 * (the layer's plugin is loaded) against the checkpoint's name, or the
 * name in its file ("fsplugin_attention_NAME.so", the descriptor's when
 * the file is still there: a plugin rebuilt elsewhere is the same plugin). */
static int same_plugin(check *c, const fs_param_spec *spec, const char *stored, const char *now) {
    (void)spec;
    if (!strcmp(stored, now)) return 1;
    const char *name = c->layer_plugin, *slash = strrchr(stored, '/');
    if (!slash) return !strcmp(stored, name);
    fs_plugin *p;
    fs_error ignored = {0};
    if (!fs_plugin_open(&p, stored, FS_PLUGIN_ATTENTION, &ignored)) {
        int same = !strcmp(p->desc->name, name);
        fs_plugin_close(p);
        return same;
    }
    char file[256];
    snprintf(file, sizeof file, "fsplugin_attention_%s.so", name);
    return !strcmp(slash + 1, file);
}

/* ---- what differs ---- */

/* A function key differs: an error, or (starting a new run) a note. */
static int function_differs(check *c, const char *label, const char *stored, const char *now_where, const char *what) {
    if (c->use == FS_GRAPH_INIT) { /* each change once, not once per layer */
        char item[256], with_now[512];
        snprintf(item, sizeof item, "%s = %s", label, stored);
        snprintf(with_now, sizeof with_now, "%s (here %s)", item, now_where);
        size_t used = strlen(c->noted);
        if (!strstr(c->noted, item) && used + strlen(with_now) + 3 < sizeof c->noted)
            snprintf(c->noted + used, sizeof c->noted - used, "%s%s", used ? ", " : "", with_now);
        return FS_OK;
    }
    return fs_error_set(c->err, FS_ERR_INVALID,
                        "%s: its graph has %s = %s%s, but %s: the weights would compute another function: set it "
                        "back to %s%s",
                        c->file, label, stored, what, now_where, *stored ? stored : "\"\"",
                        c->use == FS_GRAPH_RESUME ? ", or start a new run from these weights ([model] init)" : "");
}

/* A run key differs: said once (the whole list) when resuming. */
static void run_differs(check *c, const char *section, const char *key, const char *stored, const char *now) {
    if (c->use != FS_GRAPH_RESUME) return;
    size_t used = strlen(c->said);
    int n = snprintf(c->said + used, sizeof c->said - used, "%s[%s] %s %s -> %s", c->n_said ? ", " : "", section, key,
                     *stored ? stored : "\"\"", *now ? now : "\"\"");
    if (n < 0 || used + (size_t)n >= sizeof c->said) {
        c->said[used] = '\0';
        c->n_more++;
        return;
    }
    c->n_said++;
}

static int in_spec(const fs_param_spec *spec, size_t n, const char *key) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(spec[i].name, key)) return 1;
    return 0;
}

/* [model]: every key of its schema, each against the graph's (defaults filled in). */
static int check_model(check *c) {
    const section_rule *r = section_rule_of("model");
    for (size_t k = 0; k < fs_schema_model.n; k++) {
        const fs_param_spec *spec = &fs_schema_model.spec[k];
        const fs_graph_entry *e = fs_graph_find(c->stored, "model", spec->name);
        const char *stored = e ? e->value : spec->default_value ? spec->default_value : "";
        const char *now = fs_config_string(c->s->model_cfg, spec->name);
        if (same_value(c, r, spec, spec->name, stored, now)) continue;
        char label[96];
        snprintf(label, sizeof label, "[model] %s", spec->name);
        if (role_of("model", spec->name, NULL) == CHANGES_RUN)
            run_differs(c, "model", spec->name, stored, now);
        else if (function_differs(c, label, stored, fs_config_where(c->s->model_cfg, spec->name), ""))
            return FS_ERR_INVALID;
    }
    for (size_t i = 0; i < fs_graph_count(c->stored); i++) { /* a key of another fsrun's [model] */
        const fs_graph_entry *e = fs_graph_at(c->stored, i);
        if (strcmp(e->section, "model") || in_spec(fs_schema_model.spec, fs_schema_model.n, e->key)) continue;
        char label[96];
        snprintf(label, sizeof label, "[model] %s", e->key);
        if (function_differs(c, label, e->value, "this fsrun has no such key", "")) return FS_ERR_INVALID;
    }
    return FS_OK;
}

/* One layer's attention: the plugin first (other keys mean nothing across
 * plugins), then every key of its schema, then keys the checkpoint's graph
 * set that this plugin does not know. */
static int check_layer(check *c, size_t li) {
    const fs_plugin_instance *inst = &c->s->layers[li];
    size_t layer = fs_model_held(c->s->model)->layer_ids[li], n_spec = fs_schema_attention.n + inst->plugin->desc->n_params;
    const char *secs[64];
    fs_error lerr = {0};
    size_t n_secs = fs_session_layer_sections(c->stored, layer, secs, 64, &lerr);
    if (!n_secs) return fs_error_set(c->err, lerr.status ? lerr.status : FS_ERR_NOMEM, "%s", lerr.message);
    const section_rule *r = section_rule_of("attention");
    c->layer_plugin = inst->plugin->desc->name;
    char what[48];
    snprintf(what, sizeof what, " for layer %zu", layer);
    for (size_t k = 0; k < n_spec; k++) { /* the runtime's keys come first: "plugin" is compared before the rest */
        const fs_param_spec *spec = &inst->spec[k];
        const fs_graph_entry *e = NULL;
        for (size_t j = 0; j < n_secs && !e; j++) e = fs_graph_find(c->stored, secs[j], spec->name);
        const char *stored = e ? e->value : spec->default_value ? spec->default_value : "";
        const char *now = fs_config_string(inst->config, spec->name);
        if (same_value(c, r, spec, spec->name, stored, now)) continue;
        char label[96];
        snprintf(label, sizeof label, "[%s] %s", e ? e->section : "attention", spec->name);
        if (role_of("attention", spec->name, inst->plugin->desc->name) == CHANGES_RUN) {
            run_differs(c, e ? e->section : "attention", spec->name, stored, now);
            continue;
        }
        if (function_differs(c, label, stored, fs_config_where(inst->config, spec->name), what)) return FS_ERR_INVALID;
        if (!k) return FS_OK; /* another plugin, said: its keys are its own */
    }
    for (size_t j = 0; j < n_secs; j++)
        for (size_t i = 0; i < fs_graph_count(c->stored); i++) {
            const fs_graph_entry *e = fs_graph_at(c->stored, i);
            if (strcmp(e->section, secs[j]) || in_spec(inst->spec, n_spec, e->key)) continue;
            char label[96], now[160];
            snprintf(label, sizeof label, "[%s] %s", e->section, e->key);
            snprintf(now, sizeof now, "attention plugin '%s' has no key '%s'", inst->plugin->desc->name, e->key);
            if (function_differs(c, label, e->value, now, what)) return FS_ERR_INVALID;
        }
    return FS_OK;
}

/* The schema of a runtime section, or NULL (a plugin's keys, stages). */
static const fs_param_spec *spec_of(const char *section, const char *key) {
    for (size_t i = 0; fs_schemas[i]; i++) {
        if (strcmp(fs_schemas[i]->section, section)) continue;
        for (size_t k = 0; k < fs_schemas[i]->n; k++)
            if (!strcmp(fs_schemas[i]->spec[k].name, key)) return &fs_schemas[i]->spec[k];
    }
    return NULL;
}

/* One key of a section that does not change the function, from either graph. */
static void check_run_key(check *c, const char *section, const char *key) {
    const fs_graph_entry *a = fs_graph_find(c->stored, section, key), *b = fs_graph_find(c->s->graph, section, key);
    const fs_param_spec *spec = spec_of(section, key);
    const char *dflt = spec && spec->default_value ? spec->default_value : "(unset)";
    const char *stored = a ? a->value : dflt, *now = b ? b->value : dflt;
    if (!same_value(c, section_rule_of(section), spec, key, stored, now)) run_differs(c, section, key, stored, now);
}

/* Every key of the sections that do not change the function, each once. */
static void check_run_sections(check *c) {
    const fs_graph *graphs[2] = {c->stored, c->s->graph};
    for (int g = 0; g < 2; g++)
        for (size_t i = 0; i < fs_graph_count(graphs[g]); i++) {
            const fs_graph_entry *e = fs_graph_at(graphs[g], i);
            if (role_of(e->section, e->key, NULL) != CHANGES_RUN || !strcmp(e->section, "model")) continue;
            if (g == 1 && fs_graph_find(c->stored, e->section, e->key)) continue; /* compared from the first */
            check_run_key(c, e->section, e->key);
        }
}

/* "what: a, b, c" appended to note. */
static void add_note(char *note, size_t cap, const char *what, const char *list, size_t more) {
    size_t used = strlen(note);
    if (*list && used < cap)
        snprintf(note + used, cap - used, "%s%s: %s%s", used ? "; " : "", what, list, more ? ", ..." : "");
}

int fs_graph_check(fs_session *s, const fs_graph *stored, const char *file, fs_graph_use use, int parts, char *note,
                   size_t cap, fs_error *err) {
    check c = {.s = s, .stored = stored, .file = file, .use = use, .err = err};
    int rc = FS_OK;
    for (size_t li = 0; (parts & FS_GRAPH_LAYERS) && !rc && li < fs_model_held(s->model)->n_layers; li++)
        rc = check_layer(&c, li);
    if (!rc && (parts & FS_GRAPH_MODEL_AND_RUN)) rc = check_model(&c);
    if (rc) return rc;
    if (parts & FS_GRAPH_MODEL_AND_RUN) check_run_sections(&c);
    add_note(note, cap, "trained as another model (its weights are only the starting point)", c.noted, 0);
    add_note(note, cap, "graph changes that keep its model", c.said, c.n_more);
    return FS_OK;
}
