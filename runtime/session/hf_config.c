/* hf_config.c — see hf_config.h. JSON through jansson. */
#include "session/hf_config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/host.h"
#include "io/files.h"

#define LN_EPS 1e-5

const char *fs_hf_incompatibility(const fs_session *s) {
    if (s->mcfg.reversible) return "reversible layers";
    const fs_graph *g = s->graph;
    for (size_t i = 0; i < fs_graph_count(g); i++) {
        const fs_graph_entry *e = fs_graph_at(g, i);
        if (strcmp(e->section, "attention") && fs_graph_layer_range(e->section, NULL, NULL) != 0) continue;
        if (!strcmp(e->key, "plugin") && strcmp(e->value, "dense")) return "attention other than dense";
        if (!strcmp(e->key, "causal") && (!strcasecmp(e->value, "false") || !strcmp(e->value, "0") ||
                                          !strcasecmp(e->value, "no") || !strcasecmp(e->value, "off")))
            return "bidirectional attention";
    }
    return NULL;
}

static char *config_path(const char *dir) {
    size_t n = strlen(dir) + 16;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/config.json", dir);
    return p;
}

int fs_hf_config_write(const char *dir, const fs_session *s, int eos_id, fs_error *err) {
    char *path = config_path(dir);
    if (!path) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    if (fs_hf_incompatibility(s)) { /* transformers would compute another model from it */
        int rc = unlink(path) != 0 && errno != ENOENT
                     ? fs_error_set(err, FS_ERR_IO, "%s: cannot remove: %s", path, strerror(errno))
                     : FS_OK;
        free(path);
        return rc;
    }
    const fs_model_config *c = &s->mcfg;
    json_t *eos = eos_id >= 0 ? json_integer(eos_id) : json_null();
    json_t *root = json_pack(
        "{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:n, s:s, s:f, s:f, s:f, s:f, s:f, s:b, s:b, s:b, s:b, s:O, s:O, "
        "s:s, s:s, s:s}",
        "architectures", "GPT2LMHeadModel", "model_type", "gpt2", "vocab_size", (json_int_t)c->vocab, "n_positions",
        (json_int_t)c->max_seq, "n_embd", (json_int_t)c->n_embd, "n_layer", (json_int_t)c->n_layer, "n_head",
        (json_int_t)c->n_head, "n_inner", "activation_function", "gelu_new", "layer_norm_epsilon", LN_EPS,
        "initializer_range", 0.02, "resid_pdrop", 0.0, "embd_pdrop", 0.0, "attn_pdrop", 0.0, "scale_attn_weights", 1,
        "scale_attn_by_inverse_layer_idx", 0, "use_cache", 1, "tie_word_embeddings", !c->untied_head,
        "bos_token_id", eos, "eos_token_id", eos, "torch_dtype", "float32", "fastserve_version", FS_VERSION,
        "fastserve_tokenizer", fs_config_string(s->model_cfg, "tokenizer"));
    json_decref(eos);
    char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    int rc = text ? fs_file_write_text(path, text, err) : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    free(text);
    free(path);
    return rc;
}

/* One integer field against the graph's value for [model] key. */
static int check_int(const json_t *cfg, const char *field, size_t want, const fs_session *s, const char *key,
                     const char *path, fs_error *err) {
    const json_t *v = json_object_get(cfg, field);
    if (!v || json_is_null(v)) return FS_OK;
    if (!json_is_integer(v))
        return fs_error_set(err, FS_ERR_INVALID, "%s: \"%s\" is not an integer", path, field);
    json_int_t got = json_integer_value(v);
    if (got == (json_int_t)want) return FS_OK;
    return fs_error_set(err, FS_ERR_INVALID, "%s: \"%s\" is %lld but %s: set [model] %s = %lld", path, field,
                        (long long)got, fs_config_where(s->model_cfg, key), key, (long long)got);
}

static int check_choices(const json_t *cfg, const char *path, const fs_session *s, fs_error *err) {
    const char *type = json_string_value(json_object_get(cfg, "model_type"));
    if (type && strcmp(type, "gpt2"))
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: model_type \"%s\": fsrun runs GPT-2 models (\"gpt2\")", path,
                            type);
    const char *act = json_string_value(json_object_get(cfg, "activation_function"));
    if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
        return fs_error_set(err, FS_ERR_UNSUPPORTED,
                            "%s: activation_function \"%s\": fsrun's MLP uses GELU's tanh approximation (gelu_new)",
                            path, act);
    const json_t *eps = json_object_get(cfg, "layer_norm_epsilon");
    if (json_is_number(eps) && fabs(json_number_value(eps) - LN_EPS) > 1e-12)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: layer_norm_epsilon %g: fsrun's LayerNorms use 1e-5", path,
                            json_number_value(eps));
    const json_t *inner = json_object_get(cfg, "n_inner");
    if (json_is_integer(inner) && json_integer_value(inner) != (json_int_t)(4 * s->mcfg.n_embd))
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: n_inner %lld: fsrun's MLP is 4 x n_embd = %zu wide", path,
                            (long long)json_integer_value(inner), 4 * s->mcfg.n_embd);
    static const char *const off[] = {"scale_attn_by_inverse_layer_idx", "add_cross_attention"};
    for (size_t i = 0; i < 2; i++)
        if (json_is_true(json_object_get(cfg, off[i])))
            return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: %s = true is not GPT-2 as fsrun runs it", path, off[i]);
    if (json_is_false(json_object_get(cfg, "scale_attn_weights")))
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: scale_attn_weights = false is not GPT-2 as fsrun runs it",
                            path);
    const json_t *tie = json_object_get(cfg, "tie_word_embeddings");
    if (json_is_false(tie) && !s->mcfg.untied_head)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: tie_word_embeddings is false (lm_head.weight is its own matrix) but %s: set [model] "
                            "tie_word_embeddings = false",
                            path, fs_config_where(s->model_cfg, "tie_word_embeddings"));
    return FS_OK;
}

int fs_hf_config_check(const char *dir, const fs_session *s, fs_error *err) {
    char *path = config_path(dir);
    if (!path) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    if (!fs_is_file(path)) {
        free(path);
        return FS_OK;
    }
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    int rc = cfg && json_is_object(cfg)
                 ? FS_OK
                 : fs_error_set(err, FS_ERR_INVALID, "%s:%d: not a JSON object: %s", path, je.line, je.text);
    const fs_model_config *c = &s->mcfg;
    if (!rc) rc = check_choices(cfg, path, s, err);
    if (!rc) rc = check_int(cfg, "n_embd", c->n_embd, s, "n_embd", path, err);
    if (!rc) rc = check_int(cfg, "n_layer", c->n_layer, s, "n_layer", path, err);
    if (!rc) rc = check_int(cfg, "n_head", c->n_head, s, "n_head", path, err);
    if (!rc) rc = check_int(cfg, "vocab_size", c->vocab, s, "vocab_size", path, err);
    const json_t *pos = json_object_get(cfg, "n_positions");
    if (!rc && json_is_integer(pos) && json_integer_value(pos) < (json_int_t)c->max_seq)
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: n_positions is %lld, fewer than %s: set [model] max_seq = %lld or less",
                          path, (long long)json_integer_value(pos), fs_config_where(s->model_cfg, "max_seq"),
                          (long long)json_integer_value(pos));
    json_decref(cfg);
    free(path);
    return rc;
}
