/* session.c — graph to live objects (see session.h). */
#include "session/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crash.h"
#include "dist/comm_self.h"
#include "session/device.h"
#include "fastserve/attention.h"
#include "fastserve/parallel.h"
#include "core/schema.h"
#include "dist/shard.h"
#include "dist/world.h"
#include "io/tokenizer.h"

static int resolve(fs_config **out, const fs_graph *g, const fs_section_schema *s, fs_error *err) {
    const char *sections[] = {s->section};
    return fs_config_resolve(out, g, sections, 1, s->spec, s->n, NULL, err);
}

/* The entry naming the plugin with `key` ("plugin", or [serve]'s
 * "scheduler") in the first of `sections` that does, or NULL. */
static const fs_graph_entry *plugin_entry(const fs_graph *g, const char *const *sections, size_t n, const char *key) {
    for (size_t i = 0; i < n; i++) {
        const fs_graph_entry *e = fs_graph_find(g, sections[i], key);
        if (e) return e;
    }
    return NULL;
}

int fs_session_plugin_config(fs_session *s, fs_plugin_instance *inst, int kind, const char *const *sections,
                             size_t n_sections, const fs_param_spec *core, size_t n_core, fs_error *err) {
    const char *key = core[0].name;
    const fs_graph_entry *e = plugin_entry(s->graph, sections, n_sections, key);
    const char *name = e ? e->value : core[0].default_value;
    fs_error perr = {0};
    int rc = fs_plugin_registry_get(&s->registry, kind, name, &inst->plugin, &perr);
    if (rc) {
        char at[PATH_MAX + 32];
        if (!e) return fs_error_set(err, rc, "[%s] %s = %s (default): %s", sections[0], key, name, perr.message);
        fs_graph_entry_at(at, sizeof at, e);
        return fs_error_set(err, rc, "%s: [%s] %s = %s: %s", at, sections[0], key, name, perr.message);
    }
    const fs_plugin_descriptor *d = inst->plugin->desc;
    /* schema = runtime keys, then the plugin's; a clash is the plugin's bug */
    inst->spec = calloc(n_core + d->n_params, sizeof *inst->spec);
    if (!inst->spec) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    memcpy(inst->spec, core, n_core * sizeof *core);
    for (size_t i = 0; i < d->n_params; i++) {
        for (size_t j = 0; j < n_core; j++)
            if (strcmp(d->params[i].name, core[j].name) == 0)
                return fs_error_set(err, FS_ERR_ABI, "%s: plugin '%s' declares key '%s', which fsrun reserves",
                                    inst->plugin->path, d->name, core[j].name);
        inst->spec[n_core + i] = d->params[i];
    }
    return fs_config_resolve(&inst->config, s->graph, sections, n_sections, inst->spec, n_core + d->n_params, NULL,
                             err);
}

static void release_instance(fs_plugin_instance *inst) {
    fs_config_destroy(inst->config);
    free(inst->spec);
    memset(inst, 0, sizeof *inst);
}

/* Every [layer.*] section must name existing layers. */
static int check_layer_sections(fs_session *s, fs_error *err) {
    const fs_graph *g = s->graph;
    for (size_t i = 0; i < fs_graph_count(g); i++) {
        const fs_graph_entry *e = fs_graph_at(g, i);
        int first, last;
        if (fs_graph_layer_range(e->section, &first, &last) != 0) continue;
        if (last >= (int)s->mcfg.n_layer || first > last) {
            char at[PATH_MAX + 32];
            fs_graph_entry_at(at, sizeof at, e);
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: [%s]: layers %d-%d do not exist: [model] n_layer = %zu (layers 0-%zu)", at,
                                e->section, first, last, s->mcfg.n_layer, s->mcfg.n_layer - 1);
        }
    }
    return FS_OK;
}

/* The distinct [layer.*] sections of the graph, in the order they first
 * appear, as many as there are (the names point into the graph). */
static int layer_sections(const fs_graph *g, const char ***out, size_t *n_out, fs_error *err) {
    const char **names = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < fs_graph_count(g); i++) {
        const char *sec = fs_graph_at(g, i)->section;
        if (fs_graph_layer_range(sec, NULL, NULL) != 0) continue;
        int seen = 0;
        for (size_t j = 0; j < n && !seen; j++) seen = strcmp(names[j], sec) == 0;
        if (seen) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            const char **grown = realloc(names, cap * sizeof *names);
            if (!grown) {
                free(names);
                return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
            }
            names = grown;
        }
        names[n++] = sec;
    }
    *out = names;
    *n_out = n;
    return FS_OK;
}

/* [attention] on its own first, so its unknown keys are reported, then each
 * [layer.*] section alone (with [attention] under it), so each is checked
 * once, at its own lines, against the plugin it names or inherits. */
static int check_attention_sections(fs_session *s, const char *const *names, size_t n, fs_error *err) {
    fs_plugin_instance base = {0};
    const char *sec[] = {"attention"};
    int rc = fs_session_plugin_config(s, &base, FS_PLUGIN_ATTENTION, sec, 1, fs_schema_attention.spec,
                                      fs_schema_attention.n, err);
    release_instance(&base);
    for (size_t j = 0; j < n && !rc; j++) {
        fs_plugin_instance one = {0};
        const char *secs[] = {names[j], "attention"};
        rc = fs_session_plugin_config(s, &one, FS_PLUGIN_ATTENTION, secs, 2, fs_schema_attention.spec,
                                      fs_schema_attention.n, err);
        release_instance(&one);
    }
    return rc;
}

/* The sections layer l reads, in priority order: single-layer sections,
 * then ranges (narrowest first), then [attention]. secs and widths have
 * room for n + 1. Returns how many. */
static size_t sections_of_layer(size_t l, const char *const *names, size_t n, const char **secs, size_t *widths) {
    size_t k = 0;
    for (size_t j = 0; j < n; j++) {
        int f, la;
        fs_graph_layer_range(names[j], &f, &la);
        if ((int)l < f || (int)l > la) continue;
        size_t w = (size_t)(la - f), at = k;
        while (at > 0 && widths[at - 1] > w) { /* insertion: stable among equal widths */
            widths[at] = widths[at - 1];
            secs[at] = secs[at - 1];
            at--;
        }
        widths[at] = w;
        secs[at] = names[j];
        k++;
    }
    secs[k++] = "attention";
    return k;
}

size_t fs_session_layer_sections(const fs_graph *g, size_t layer, const char **secs, size_t cap, fs_error *err) {
    const char **names = NULL, **all = NULL;
    size_t n = 0, *widths = NULL, k = 0;
    if (layer_sections(g, &names, &n, err)) return 0;
    if ((all = malloc((n + 1) * sizeof *all)) && (widths = malloc((n + 1) * sizeof *widths))) {
        k = sections_of_layer(layer, names, n, all, widths);
        if (k > cap) k = cap;
        memcpy(secs, all, k * sizeof *secs);
    } else {
        fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    free(names);
    free(all);
    free(widths);
    return k;
}

int32_t fs_session_kv_dtype(const fs_session *s) {
    return strcmp(fs_config_string(s->gen_cfg, "kv_dtype"), "bf16") ? FS_DTYPE_F32 : FS_DTYPE_BF16;
}

/* Layer li's attention: its configuration from `secs`, the causal check,
 * the plugin instance, attached to the model. */
static int create_layer_attention(fs_session *s, size_t li, const char *const *secs, size_t n, fs_error *err) {
    const fs_model_part *part = fs_model_held(s->model);
    size_t l = part->layer_ids[li]; /* [layer.N] sections name global layers */
    fs_plugin_instance *inst = &s->layers[li];
    int rc = fs_session_plugin_config(s, inst, FS_PLUGIN_ATTENTION, secs, n, fs_schema_attention.spec,
                                      fs_schema_attention.n, err);
    if (rc) return rc;
    const fs_attention_vtable *vt = inst->plugin->desc->vtable;
    int causal = fs_config_bool(inst->config, "causal");
    if (causal && !(vt->flags & FS_ATTENTION_CAUSAL))
        return fs_error_set(err, FS_ERR_INVALID, "%s: plugin '%s' cannot do causal attention",
                            fs_config_where(inst->config, "causal"), inst->plugin->desc->name);
    if (!causal && !(vt->flags & FS_ATTENTION_BIDIRECTIONAL))
        return fs_error_set(err, FS_ERR_INVALID, "%s: plugin '%s' only does causal attention",
                            fs_config_where(inst->config, "causal"), inst->plugin->desc->name);
    char scope[64];
    snprintf(scope, sizeof scope, "plugin.layer%zu.attention", l);
    fs_plugin_ctx_init(&inst->ctx, &s->host, inst->config, scope, inst->plugin->desc->name);
    int32_t kv_dtype = fs_session_kv_dtype(s);
    if (kv_dtype == FS_DTYPE_BF16 && !(vt->flags & FS_ATTENTION_PAGED_BF16))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: attention plugin '%s' keeps its KV cache in f32 only (it does not offer "
                            "FS_ATTENTION_PAGED_BF16): set [generate] kv_dtype = f32",
                            fs_config_where(s->gen_cfg, "kv_dtype"), inst->plugin->desc->name);
    fs_model_config mc = s->mcfg;
    fs_attention_config ac = {
        .struct_size = sizeof ac,
        .layer = (int32_t)l,
        .n_head = part->n_head, /* this rank's heads under tensor parallelism */
        .head_dim = mc.n_embd / mc.n_head,
        .n_embd = part->attn_width,
        .max_seq = mc.max_seq,
        .causal = causal,
        .device = s->device,
        .kv_dtype = kv_dtype,
    };
    fs_error perr = {0};
    FS_PLUGIN_CALL("attention", inst->plugin->desc->name, "create", (int)l,
                   rc = vt->create(&inst->self, &s->host.api, &inst->ctx, &ac, &perr));
    if (rc)
        return fs_error_set(err, rc, "layer %zu: attention plugin '%s': %s", l, inst->plugin->desc->name,
                            perr.message);
    fs_attention_origin origin = {inst->plugin, inst->config, causal};
    fs_model_attach_attention(s->model, li, vt, inst->self, &origin);
    return FS_OK;
}

static int build_attention(fs_session *s, fs_error *err) {
    s->layers = calloc(s->mcfg.n_layer, sizeof *s->layers);
    if (!s->layers) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    const char **names = NULL, **secs = NULL;
    size_t n = 0, *widths = NULL;
    int rc = layer_sections(s->graph, &names, &n, err);
    if (!rc) rc = check_attention_sections(s, names, n, err);
    if (!rc && (!(secs = malloc((n + 1) * sizeof *secs)) || !(widths = malloc((n + 1) * sizeof *widths))))
        rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    const fs_model_part *part = fs_model_held(s->model);
    for (size_t li = 0; li < part->n_layers && !rc; li++) {
        size_t k = sections_of_layer(part->layer_ids[li], names, n, secs, widths);
        rc = create_layer_attention(s, li, secs, k, err);
    }
    free(names);
    free(secs);
    free(widths);
    return rc;
}

/* The strategy comes before the model: the model's shape may depend on
 * the topology (tensor and pipeline shards), so n_params is not known yet
 * and strategies size their buffers from the n of later calls. */
static int build_parallel(fs_session *s, fs_error *err) {
    if (s->local) fs_comm_self_init(&s->local_comm);
    s->comm = s->local ? &s->local_comm : fs_world_comm();
    fs_plugin_ctx_init(&s->parallel.ctx, &s->host, s->parallel.config, "plugin.parallel",
                       s->parallel.plugin->desc->name);
    fs_parallel_config pc = {
        .struct_size = sizeof pc,
        .comm = s->comm,
        .n_params = 0,
        .n_layer = s->mcfg.n_layer,
        .n_head = s->mcfg.n_head,
        .batch = (size_t)fs_config_int(s->train_cfg, "batch"),
        .device = s->device,
        .seq = s->mcfg.max_seq,
        .n_embd = s->mcfg.n_embd,
        .vocab = s->mcfg.vocab,
    };
    const fs_parallel_vtable *vt = s->parallel.plugin->desc->vtable;
    fs_error perr = {0};
    const char *name = s->parallel.plugin->desc->name;
    int rc;
    FS_PLUGIN_CALL("parallel", name, "create", -1, rc = vt->create(&s->parallel.self, &s->host.api, &s->parallel.ctx, &pc, &perr));
    if (rc) return fs_error_set(err, rc, "parallel plugin '%s': %s", s->parallel.plugin->desc->name, perr.message);
    /* a strategy older than ABI 1.1 leaves the coordinates out: one rank
     * per dimension it does not split */
    fs_parallel_topology *t = &s->topo;
    memset(t, 0, sizeof *t);
    FS_PLUGIN_CALL("parallel", name, "topology", -1, rc = vt->topology(s->parallel.self, t, &perr));
    if (rc)
        return fs_error_set(err, rc, "parallel plugin '%s': %s", s->parallel.plugin->desc->name, perr.message);
    if (!FS_HAS_MEMBER(t, t->struct_size, fs_parallel_topology, microbatches)) {
        t->data_rank = t->rank;
        t->tensor_rank = t->pipeline_rank = 0;
        t->interleave = t->microbatches = 1;
    }
    int world = s->local ? 1 : fs_world_size();
    if (t->world != world || t->data < 1 || t->tensor < 1 || t->pipeline < 1 ||
        t->data * t->tensor * t->pipeline != t->world)
        return fs_error_set(err, FS_ERR_INVALID,
                            "parallel plugin '%s' reports %d ranks as data %d x tensor %d x pipeline %d, but the "
                            "world has %d: the plugin is broken",
                            s->parallel.plugin->desc->name, t->world, t->data, t->tensor, t->pipeline,
                            world);
    /* this rank's part of the model: its tensor shard and pipeline layers */
    FS_PLUGIN_CALL("parallel", name, "stage_layers", -1,
                   rc = fs_shard_map_build(&s->shard, t, vt, s->parallel.plugin->desc->vtable_size, s->parallel.self,
                                           s->mcfg.n_layer, &perr));
    if (rc)
        return fs_error_set(err, rc, "parallel plugin '%s': %s", s->parallel.plugin->desc->name, perr.message);
    s->mcfg.shard = s->shard.shard;
    if (s->mcfg.reversible && t->pipeline > 1)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: [parallel] pipeline = %d cannot cut a reversible model (its stream is a pair): set "
                            "[model] reversible = false, or use data and tensor parallelism",
                            fs_config_where(s->model_cfg, "reversible"), t->pipeline);
    return FS_OK;
}

/* Megatron's all-reduce between the model's tensor shards, through the strategy. */
static int tensor_reduce(void *arg, float *x, size_t n, fs_error *err) {
    fs_session *s = arg;
    const fs_parallel_vtable *vt = s->parallel.plugin->desc->vtable;
    int rc;
    FS_PLUGIN_CALL("parallel", s->parallel.plugin->desc->name, "tensor_all_reduce", -1,
                   rc = vt->tensor_all_reduce(s->parallel.self, x, n, err));
    return rc;
}

/* Tensor and pipeline splits cut the layers' tensors; parameters an
 * attention plugin owns are not cut with them. */
static int check_sharded_plugins(fs_session *s, fs_error *err) {
    if (s->topo.tensor == 1 && s->topo.pipeline == 1) return FS_OK;
    const fs_parallel_vtable *vt = s->parallel.plugin->desc->vtable;
    if (s->topo.tensor > 1 && (!FS_HAS_MEMBER(vt, s->parallel.plugin->desc->vtable_size, fs_parallel_vtable,
                                              tensor_all_reduce) ||
                               !vt->tensor_all_reduce))
        return fs_error_set(err, FS_ERR_INVALID, "parallel plugin '%s' splits tensors but has no tensor_all_reduce",
                            s->parallel.plugin->desc->name);
    const fs_param_block *pb = fs_model_block(s->model);
    for (size_t i = 0; i < pb->n_views; i++)
        if (pb->views[i].plugin)
            return fs_error_set(err, FS_ERR_INVALID,
                                "[parallel] tensor = %d, pipeline = %d: an attention plugin owns parameters ('%s') "
                                "that tensor and pipeline parallelism do not split (longformer's global "
                                "projections): use data parallelism, or no global tokens",
                                s->topo.tensor, s->topo.pipeline, pb->views[i].name);
    fs_model_set_tensor_reduce(s->model, tensor_reduce, s);
    return FS_OK;
}

/* Plugin tensors go into the model's parameter block. */
static int place_param(void *arg, const char *name, int32_t ndim, const size_t *shape, int weight_decay, float **param,
                       float **grad, fs_error *err) {
    return fs_model_add_plugin_param(arg, name, ndim, shape, weight_decay, param, grad, err);
}

/* Every rank reaches every agreement point, failed or not, so no rank
 * enters a collective that a failed rank will never join (see world.h). */
static int agree(int rc, fs_error *err) {
    int code;
    return fs_world_agree(rc, rc == FS_ERR_NOMEM ? 1 : 2, &code, err);
}

static int open_session(fs_session **out, fs_graph *g, int local, fs_error *err) {
    *out = NULL;
    fs_session *s = calloc(1, sizeof *s);
    if (!s) {
        fs_graph_destroy(g);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    s->graph = g;
    s->local = local;
    int rc;
    if ((rc = resolve(&s->model_cfg, g, &fs_schema_model, err)) || (rc = resolve(&s->data_cfg, g, &fs_schema_data, err)) ||
        (rc = resolve(&s->train_cfg, g, &fs_schema_train, err)) ||
        (rc = resolve(&s->gen_cfg, g, &fs_schema_generate, err)) || (rc = resolve(&s->run_cfg, g, &fs_schema_run, err)))
        goto checked;
    /* [distill] with its plugin's keys; the plugin itself is created by the
     * distill mode, which also needs the teacher */
    {
        const char *sec[] = {"distill"};
        if ((rc = fs_session_plugin_config(s, &s->distill, FS_PLUGIN_DISTILL, sec, 1, fs_schema_distill.spec,
                                           fs_schema_distill.n, err)))
            goto checked;
        s->distill_cfg = s->distill.config;
    }
    s->mcfg = (fs_model_config){
        .vocab = (size_t)fs_config_int(s->model_cfg, "vocab_size"),
        .max_seq = (size_t)fs_config_int(s->model_cfg, "max_seq"),
        .n_layer = (size_t)fs_config_int(s->model_cfg, "n_layer"),
        .n_head = (size_t)fs_config_int(s->model_cfg, "n_head"),
        .n_embd = (size_t)fs_config_int(s->model_cfg, "n_embd"),
        .reversible = fs_config_bool(s->model_cfg, "reversible"),
        .ff_chunk = (size_t)fs_config_int(s->model_cfg, "ff_chunk"),
        .untied_head = !fs_config_bool(s->model_cfg, "tie_word_embeddings"),
    };
    if (s->mcfg.n_embd % s->mcfg.n_head) {
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: must be a multiple of [model] n_head = %zu",
                          fs_config_where(s->model_cfg, "n_embd"), s->mcfg.n_head);
        goto checked;
    }
    if ((rc = check_layer_sections(s, err)) || (rc = fs_session_device(s, &s->device, err))) goto checked;
    if ((rc = fs_tokenizer_spec_check(fs_config_string(s->model_cfg, "tokenizer"),
                                      fs_config_where(s->model_cfg, "tokenizer"), err)))
        goto checked;
    {
        const char *sec[] = {"parallel"};
        rc = fs_session_plugin_config(s, &s->parallel, FS_PLUGIN_PARALLEL, sec, 1, fs_schema_parallel.spec,
                                      fs_schema_parallel.n, err);
    }
    /* [serve] with its scheduler's keys; the serving engine creates the
     * scheduler itself */
    if (!rc) {
        const char *sec[] = {"serve"};
        rc = fs_session_plugin_config(s, &s->scheduler, FS_PLUGIN_SCHEDULER, sec, 1, fs_schema_serve.spec,
                                      fs_schema_serve.n, err);
        s->serve_cfg = s->scheduler.config;
    }
checked:
    if ((rc = agree(rc, err))) goto fail;
    fs_host_init(&s->host, (uint64_t)fs_config_int(s->train_cfg, "seed"));
    if ((rc = agree(build_parallel(s, err), err))) goto fail;
    rc = fs_model_create(&s->model, &s->mcfg, err);
    if (!rc) {
        s->host.place_param = place_param;
        s->host.place_arg = s->model;
        rc = build_attention(s, err);
    }
    if (!rc) rc = check_sharded_plugins(s, err);
    if ((rc = agree(rc, err))) goto fail;
    *out = s;
    return FS_OK;
fail:
    fs_session_close(s);
    return rc;
}

int fs_session_open(fs_session **out, fs_graph *g, fs_error *err) { return open_session(out, g, 0, err); }
int fs_session_open_local(fs_session **out, fs_graph *g, fs_error *err) { return open_session(out, g, 1, err); }

void fs_session_close(fs_session *s) {
    if (!s) return;
    if (s->parallel.self)
        FS_PLUGIN_CALL("parallel", s->parallel.plugin->desc->name, "destroy", -1,
                       ((const fs_parallel_vtable *)s->parallel.plugin->desc->vtable)->destroy(s->parallel.self));
    release_instance(&s->parallel);
    fs_model_destroy(s->model); /* destroys the attention instances */
    for (size_t l = 0; s->layers && l < s->mcfg.n_layer; l++) release_instance(&s->layers[l]);
    free(s->layers);
    fs_config_destroy(s->model_cfg);
    fs_config_destroy(s->data_cfg);
    fs_config_destroy(s->train_cfg);
    fs_config_destroy(s->gen_cfg);
    fs_config_destroy(s->run_cfg);
    fs_config_destroy(s->backend.config);
    release_instance(&s->distill);
    release_instance(&s->scheduler);
    fs_shard_map_release(&s->shard);
    fs_tokenizer_destroy(s->tokenizer);
    fs_plugin_registry_release(&s->registry);
    fs_graph_destroy(s->graph);
    free(s);
}

int fs_session_require_whole(const fs_session *s, const char *mode, fs_error *err) {
    if (s->topo.tensor <= 1 && s->topo.pipeline <= 1) return FS_OK;
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: --mode %s runs in one process, but [parallel] splits the model (tensor = %d, pipeline = "
                        "%d): run fsrun without mpirun (the checkpoint holds the whole model), or use [parallel] "
                        "plugin = data",
                        fs_config_where(s->parallel.config, "plugin"), mode, s->topo.tensor, s->topo.pipeline);
}

int fs_session_tokenizer(fs_session *s, fs_tokenizer **out, fs_error *err) {
    if (!s->tokenizer) {
        int rc = fs_tokenizer_open(&s->tokenizer, fs_config_string(s->model_cfg, "tokenizer"),
                                   fs_config_where(s->model_cfg, "tokenizer"), err);
        if (rc) return rc;
        size_t need = fs_tokenizer_vocab_size(s->tokenizer);
        if (need > s->mcfg.vocab) {
            rc = fs_error_set(err, FS_ERR_INVALID, "%s: the tokenizer (%s) has %zu tokens: set it to %zu or more",
                              fs_config_where(s->model_cfg, "vocab_size"), fs_config_string(s->model_cfg, "tokenizer"),
                              need, need);
            fs_tokenizer_destroy(s->tokenizer);
            s->tokenizer = NULL;
            return rc;
        }
    }
    *out = s->tokenizer;
    return FS_OK;
}

void fs_session_checkpoint_path(const fs_session *s, char *buf, size_t cap) {
    snprintf(buf, cap, "%s/model.safetensors", fs_config_string(s->run_cfg, "out"));
}

int fs_session_dataset(fs_session *s, const char *key, size_t min_tokens, fs_dataset *d, fs_error *err) {
    fs_tokenizer *tok;
    int rc = fs_session_tokenizer(s, &tok, err);
    if (rc) return rc;
    return fs_dataset_load(d, fs_config_string(s->data_cfg, key), fs_config_where(s->data_cfg, key), min_tokens, tok,
                           fs_config_bool(s->data_cfg, "cache"), fs_world_rank() == 0, err);
}
