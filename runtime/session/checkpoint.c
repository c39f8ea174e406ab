/* checkpoint.c — see checkpoint.h. */
#include "session/checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/crash.h"
#include "fastserve/parallel.h"
#include "io/safetensors.h"
#include "dist/shard.h"
#include "dist/world.h"
#include "session/checkpoint_meta.h"
#include "session/graph_check.h"
#include "session/hf_config.h"
#include "io/tokenizer.h"
#include "io/files.h"
#include "io/weights.h"


int fs_mkdirs(const char *dir, fs_error *err) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1;; p++) {
        char c = *p;
        if (c == '/' || c == '\0') {
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return fs_error_set(err, FS_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return fs_error_set(err, FS_ERR_IO, "%s: not a directory", dir);
    return FS_OK;
}

/* ZeRO-1: every rank holds the moments of its own range; the strategy's
 * params_updated gathers them (it makes whole any vector whose owned
 * ranges are valid). Plugin-owned parameters' moments follow the flat
 * vector and are the same on every rank. */
static int gather_moments(const fs_session *s, const fs_optimizer *opt, float **out, fs_error *err) {
    *out = NULL;
    if (!opt || !opt->m || !fs_optimizer_sharded(opt)) return FS_OK;
    const fs_parallel_vtable *vt = s->parallel.plugin->desc->vtable;
    if (!FS_HAS_MEMBER(vt, s->parallel.plugin->desc->vtable_size, fs_parallel_vtable, params_updated) ||
        !vt->params_updated)
        return fs_error_set(err, FS_ERR_INVALID, "the optimizer is sharded but parallel plugin '%s' cannot gather",
                            s->parallel.plugin->desc->name);
    float *mv = fs_calloc(2 * opt->numel * sizeof(float));
    if (!mv) return fs_error_set(err, FS_ERR_NOMEM, "out of memory gathering the optimizer state");
    fs_optimizer_export(opt, mv, mv + opt->numel);
    fs_error perr = {0};
    int rc;
    const char *name = s->parallel.plugin->desc->name;
    FS_PLUGIN_CALL("parallel", name, "params_updated", -1, rc = vt->params_updated(s->parallel.self, mv, opt->split, &perr));
    if (!rc)
        FS_PLUGIN_CALL("parallel", name, "params_updated", -1,
                       rc = vt->params_updated(s->parallel.self, mv + opt->numel, opt->split, &perr));
    if (rc) {
        fs_free(mv);
        return fs_error_set(err, rc, "gathering the optimizer state: %s", perr.message);
    }
    *out = mv;
    return FS_OK;
}

static int is_sharded(const fs_model *m) { return fs_model_block(m)->full_views != fs_model_block(m)->views; }

/* The whole model's tensors on rank 0, from every tensor and pipeline
 * shard (data rank 0's). Tensor and pipeline splits refuse plugin-owned
 * parameters (session.c), so the whole table is the model's own. */
typedef struct whole_model {
    float *vec[3]; /* parameters, exp_avg, exp_avg_sq in the whole table's layout (rank 0) */
} whole_model;

static void whole_release(whole_model *w) {
    for (int k = 0; k < 3; k++) free(w->vec[k]);
    memset(w, 0, sizeof *w);
}

static int whole_gather(whole_model *w, const fs_session *s, const float *exp_avg, const float *exp_avg_sq,
                        fs_error *err) {
    memset(w, 0, sizeof *w);
    const fs_param_block *pb = fs_model_block(s->model);
    const float *local[3] = {pb->params, exp_avg, exp_avg_sq};
    return fs_shard_gather(&s->shard, &s->topo, s->comm, s->model, local, exp_avg ? 3 : 1, pb->full_views,
                           pb->n_full_views, pb->n_full, w->vec, err);
}

/* DIR/training_state.safetensors beside the weights at `path`. */
static void state_path(const char *path, char *buf, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (slash)
        snprintf(buf, cap, "%.*s/" FS_TRAINING_STATE_FILE, (int)(slash - path), path);
    else
        snprintf(buf, cap, FS_TRAINING_STATE_FILE);
}

static void dir_of(const char *path, char *buf, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (slash)
        snprintf(buf, cap, "%.*s", (int)(slash == path ? 1 : slash - path), path);
    else
        snprintf(buf, cap, ".");
}

/* model.safetensors: the weights (Hugging Face's names; plugin-owned ones
 * after them), metadata format = pt so transformers reads it, and fsrun's
 * own keys beside. */
static int save_weights(const char *path, const fs_session *s, const fs_param_view *views, size_t n_views,
                        const float *params, const fs_train_state *ts, char **tmp, fs_error *err) {
    fs_safetensors_writer *w;
    int rc = fs_safetensors_writer_create(&w, err);
    if (rc) return rc;
    char *ini = fs_graph_to_ini(s->graph), num[32];
    for (size_t i = 0; i < n_views && !rc; i++) /* the model's tensors, then the plugins' */
        rc = fs_safetensors_writer_add(w, views[i].name, FS_DTYPE_F32, views[i].ndim, views[i].shape,
                                       params + views[i].offset, err);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "format", "pt", err);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "fastserve_format", FS_CKPT_FORMAT_V2, err);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "fastserve_version", FS_VERSION, err);
    if (!rc && ini) rc = fs_safetensors_writer_metadata(w, "graph", ini, err);
    snprintf(num, sizeof num, "%" PRIu64, ts ? ts->step : 0);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "step", num, err);
    if (!rc) rc = fs_safetensors_writer_write_temp(w, path, tmp, err);
    free(ini);
    fs_safetensors_writer_destroy(w);
    return rc;
}

/* training_state.safetensors: the AdamW moments (flat, in the optimizer's
 * group order), and the step, RNG and losses as metadata. */
static int save_state(const char *path, const fs_optimizer *opt, const float *exp_avg, const float *exp_avg_sq,
                      size_t n_moments, const fs_train_state *ts, char **tmp, fs_error *err) {
    fs_safetensors_writer *w;
    int rc = fs_safetensors_writer_create(&w, err);
    if (rc) return rc;
    char num[64], rng[96];
    size_t shape[1] = {n_moments};
    if (opt->m) {
        rc = fs_safetensors_writer_add(w, "exp_avg", FS_DTYPE_F32, 1, shape, exp_avg, err);
        if (!rc) rc = fs_safetensors_writer_add(w, "exp_avg_sq", FS_DTYPE_F32, 1, shape, exp_avg_sq, err);
    }
    if (!rc) rc = fs_safetensors_writer_metadata(w, "format", FS_CKPT_STATE_FORMAT, err);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "fastserve_version", FS_VERSION, err);
    snprintf(num, sizeof num, "%" PRIu64, opt->t);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "optimizer_t", num, err);
    snprintf(num, sizeof num, "%" PRIu64, ts->step);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "step", num, err);
    snprintf(rng, sizeof rng, "%016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64, ts->rng.s[0], ts->rng.s[1],
             ts->rng.s[2], ts->rng.s[3]);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "rng", rng, err);
    snprintf(num, sizeof num, "%.17g", ts->loss);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "loss", num, err);
    snprintf(num, sizeof num, "%.17g", ts->val_loss);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "val_loss", num, err);
    if (!rc) rc = fs_safetensors_writer_write_temp(w, path, tmp, err);
    fs_safetensors_writer_destroy(w);
    return rc;
}

/* config.json (a GPT-2 model) and tokenizer.json (a BPE tokenizer) beside
 * the weights, so the directory is a Hugging Face model folder. */
static int save_extras(const char *path, const fs_session *s, fs_error *err) {
    char dir[PATH_MAX], tpath[PATH_MAX + 32];
    dir_of(path, dir, sizeof dir);
    fs_tokenizer *tok = s->tokenizer;
    int rc = fs_hf_config_write(dir, s, tok ? fs_tokenizer_eos(tok) : -1, err);
    if (!rc && tok && strcmp(fs_tokenizer_kind(tok), "byte")) {
        snprintf(tpath, sizeof tpath, "%s/tokenizer.json", dir);
        rc = fs_tokenizer_save(tok, tpath, err);
    }
    return rc;
}

/* A weight that is not finite is never written over a checkpoint: the
 * training loop stops before (train.c); this is the last line. */
static int check_params_finite(const char *path, const fs_param_view *views, size_t n_views, const float *params,
                               fs_error *err) {
    for (size_t i = 0; i < n_views; i++) {
        const float *x = params + views[i].offset;
        for (size_t k = 0; k < views[i].numel; k++)
            if (!isfinite(x[k]))
                return fs_error_set(err, FS_ERR_INVALID,
                                    "%s: not written: tensor '%s' holds %s at element %zu (training diverged); the "
                                    "previous checkpoint is unchanged",
                                    path, views[i].name, isnan(x[k]) ? "NaN" : "Inf", k);
    }
    return FS_OK;
}

/* Rank 0's files: both complete and synced under temporary names, then
 * renamed, the weights first. A kill between the two renames leaves the
 * state's complete temporary file, which the next resume renames in
 * (finish_commit): a pair of files never ends at two steps. */
static int write_files(const char *path, const fs_session *s, const fs_param_view *views, size_t n_views,
                       const float *params, const fs_optimizer *opt, const float *exp_avg, const float *exp_avg_sq,
                       size_t n_moments, const fs_train_state *ts, fs_error *err) {
    char spath[PATH_MAX + 32], *wtmp = NULL, *stmp = NULL;
    state_path(path, spath, sizeof spath);
    int rc = check_params_finite(path, views, n_views, params, err);
    if (!rc) rc = save_weights(path, s, views, n_views, params, ts, &wtmp, err);
    if (!rc && opt && ts) rc = save_state(spath, opt, exp_avg, exp_avg_sq, n_moments, ts, &stmp, err);
    if (rc) {
        fs_file_discard(wtmp);
        fs_file_discard(stmp);
        return rc;
    }
    rc = fs_file_commit(wtmp, path, err);
    if (rc) fs_file_discard(stmp);
    else if (stmp) rc = fs_file_commit(stmp, spath, err);
    return rc ? rc : save_extras(path, s, err);
}

int fs_checkpoint_save(const char *path, const fs_session *s, const fs_optimizer *opt, const fs_train_state *ts,
                       fs_error *err) {
    const fs_model *m = s->model;
    const fs_param_block *pb = fs_model_block(m);
    float *gathered;
    int rc = gather_moments(s, opt, &gathered, err);
    if (rc) return rc;
    const float *exp_avg = gathered ? gathered : opt ? opt->m : NULL;
    const float *exp_avg_sq = gathered ? gathered + opt->numel : opt ? opt->v : NULL;
    /* what goes in the files: this model's tensors, or the whole model's */
    const fs_param_view *views = pb->views;
    size_t n_views = pb->n_views, n_moments = opt ? opt->numel : 0;
    const float *params = pb->params;
    whole_model whole = {0};
    if (is_sharded(m)) {
        if ((rc = whole_gather(&whole, s, opt && opt->m ? exp_avg : NULL, exp_avg_sq, err))) {
            fs_free(gathered);
            return rc;
        }
        views = pb->full_views;
        n_views = pb->n_full_views;
        params = whole.vec[0];
        exp_avg = whole.vec[1];
        exp_avg_sq = whole.vec[2];
        n_moments = pb->n_full;
    }
    if (fs_world_rank() == 0) rc = write_files(path, s, views, n_views, params, opt, exp_avg, exp_avg_sq, n_moments, ts, err);
    fs_free(gathered);
    whole_release(&whole);
    return rc;
}

static void shape_text(char *buf, size_t cap, int ndim, const size_t *shape) {
    size_t used = 0;
    used += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%zu", i ? ", " : "", shape[i]);
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

/* The [model] key that sets dimension d of tensor `name`, for messages. */
static const char *shape_key(const char *name, int d) {
    if (!strcmp(name, "transformer.wte.weight") || !strcmp(name, "lm_head.weight")) return d ? "n_embd" : "vocab_size";
    if (!strcmp(name, "transformer.wpe.weight")) return d ? "n_embd" : "max_seq";
    return "n_embd";
}

/* How a load treats what it finds. */
typedef struct load_opts {
    int plugin_optional; /* [model] init: plugin-registered tensors may be absent (the plugin makes them) */
    fs_graph_use use;    /* what the weights are for: how graph differences and stray tensors count */
} load_opts;

/* What a load checked and will copy. */
typedef struct load_plan {
    fs_weights *w;
    const char *path;
    char note[1024]; /* graph differences to say once the load succeeded */
    fs_ckpt_weights_meta meta; /* what model.safetensors says of itself */
    const float **src;         /* per view of the block; NULL: a plugin's tensor absent (optional) */
    int plugins_found;
    const float *moments[2];
    fs_ckpt_state_meta state;
} load_plan;

static const char *weights_meta(const void *w, const char *key) { return fs_weights_metadata(w, key); }
static const char *file_meta(const void *st, const char *key) { return fs_safetensors_metadata(st, key); }

static int check_finite(const float *x, size_t n, const char *file, const char *name, fs_error *err) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: tensor '%s' holds %s at element %zu: the checkpoint is corrupt or training "
                                "diverged",
                                file, name, isnan(x[i]) ? "NaN" : "Inf", i);
    return FS_OK;
}

/* The tensor fsrun calls `name`, ndim/shape F32 and finite (converted from
 * F16/BF16); a position table may be longer than the graph's (its first
 * rows are used). *data NULL when absent and `optional`. */
static int expect(load_plan *lp, const char *name, int ndim, const size_t *shape, int optional, const float **data,
                  fs_error *err) {
    const char *file = lp->path;
    const fs_st_tensor *t = fs_weights_find(lp->w, name, &file);
    *data = NULL;
    if (!t && optional) return FS_OK;
    if (!t)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: tensor '%s' is missing: the checkpoint was not written for this graph%s", lp->path,
                            name, !strncmp(name, "transformer.h.", 14) ? " (fewer layers: [model] n_layer)" : "");
    char want[96], got[96];
    shape_text(want, sizeof want, ndim, shape);
    shape_text(got, sizeof got, t->ndim, t->shape);
    int longer_positions = !strcmp(name, "transformer.wpe.weight") && t->ndim == 2 && t->shape[0] > shape[0] &&
                           t->shape[1] == shape[1];
    for (int d = 0; !longer_positions && d < ndim; d++)
        if (t->ndim != ndim || t->shape[d] != shape[d]) {
            int k = t->ndim == ndim ? d : 0;
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: tensor '%s' has shape %s but the graph needs %s: set [model] %s = %zu to match "
                                "the checkpoint",
                                file, name, got, want, shape_key(name, k), t->ndim > k ? t->shape[k] : 0);
        }
    const float *x;
    int rc = fs_weights_f32(lp->w, t, file, &x, err);
    if (!rc) rc = check_finite(x, longer_positions ? shape[0] * shape[1] : t->nbytes / fs_safetensors_dtype_size(t->dtype),
                               file, name, err);
    if (!rc && longer_positions)
        fs_log(FS_LOG_INFO, NULL, "%s: using the first %zu of its %zu positions ([model] max_seq)", file, shape[0],
               t->shape[0]);
    *data = x;
    return rc;
}

/* What no lookup used: an untied head the graph would drop, layers beyond
 * n_layer, or tensors nothing knows of (an error unless a new run starts
 * from the weights, which may hold more than it uses). */
typedef struct leftover {
    load_plan *lp;
    const fs_session *s;
    int rc;
    fs_error *err;
    size_t n_unknown;
    const char *first_unknown;
} leftover;

/* Tensors a checkpoint may hold beyond the model: the moments of the first
 * layout, old transformers' attention mask buffers, and a distillation
 * loss's own parameters (tinybert's projections), which the student's
 * function does not use. */
static int not_the_models(const char *name) {
    static const char *const prefixes[] = {"optimizer.", "plugin.distill."};
    static const char *const infixes[] = {".attn.bias", ".attn.masked_bias"};
    for (size_t i = 0; i < 2; i++)
        if (!strncmp(name, prefixes[i], strlen(prefixes[i])) || strstr(name, infixes[i])) return 1;
    return 0;
}

/* A tensor of the whole model that another rank holds (a pipeline stage's
 * layers), under fsrun's name or GPT2Model's bare one. */
static int held_elsewhere(const fs_session *s, const char *bare) {
    const fs_param_block *pb = fs_model_block(s->model);
    for (size_t i = 0; i < pb->n_full_views; i++) {
        const char *v = pb->full_views[i].name;
        if (!strcmp(!strncmp(v, "transformer.", 12) ? v + 12 : v, bare)) return 1;
    }
    return 0;
}

static void on_unclaimed(void *arg, const char *name, const fs_st_tensor *t) {
    leftover *lo = arg;
    size_t layer;
    const char *bare = !strncmp(name, "transformer.", 12) ? name + 12 : name;
    if (lo->rc || not_the_models(name) || held_elsewhere(lo->s, bare)) return;
    if (!strcmp(name, "lm_head.weight")) { /* the graph ties the head: the file's must be wte */
        const char *wfile = lo->lp->path;
        const fs_st_tensor *w = fs_weights_find(lo->lp->w, "transformer.wte.weight", &wfile);
        const float *head, *wte;
        size_t n = t->nbytes / fs_safetensors_dtype_size(t->dtype);
        int rc = fs_weights_f32(lo->lp->w, t, lo->lp->path, &head, lo->err);
        if (!rc && w) rc = fs_weights_f32(lo->lp->w, w, wfile, &wte, lo->err);
        if (rc) {
            lo->rc = rc;
            return;
        }
        if (w && n == w->nbytes / fs_safetensors_dtype_size(w->dtype) && !memcmp(head, wte, n * sizeof(float))) return;
        lo->rc = fs_error_set(lo->err, FS_ERR_INVALID,
                              "%s: tensor 'lm_head.weight' differs from transformer.wte.weight (an untied LM head), but "
                              "%s ties the head to wte: set [model] tie_word_embeddings = false to use it",
                              lo->lp->path, fs_config_where(lo->s->model_cfg, "tie_word_embeddings"));
        return;
    }
    if (sscanf(bare, "h.%zu.", &layer) == 1 && layer >= lo->s->mcfg.n_layer) {
        lo->rc = fs_error_set(lo->err, FS_ERR_INVALID,
                              "%s: tensor '%s' is in layer %zu, but %s: set [model] n_layer to the checkpoint's layers",
                              lo->lp->path, name, layer, fs_config_where(lo->s->model_cfg, "n_layer"));
        return;
    }
    if (!lo->n_unknown++) lo->first_unknown = name;
}

/* The state's step against the weights' and the graph's [train] steps. */
static int check_state_step(const load_plan *lp, const fs_session *s, const char *spath, fs_error *err) {
    const fs_ckpt_state_meta *m = &lp->state;
    if (lp->meta.has_step && lp->meta.step != m->step)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s is at step %llu but %s at step %llu: the run stopped between writing the two; the "
                            "weights can start a new run ([model] init), not resume",
                            lp->path, (unsigned long long)lp->meta.step, spath, (unsigned long long)m->step);
    uint64_t total = (uint64_t)fs_config_int(s->train_cfg, "steps");
    if (m->step > total)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: metadata step = %llu is past %s: raise [train] steps to continue it (the schedule "
                            "would have ended), or eval it as it is",
                            spath, (unsigned long long)m->step, fs_config_where(s->train_cfg, "steps"));
    return FS_OK;
}

/* The moments: F32 [n_moments] each, finite. */
static int plan_moments(load_plan *lp, fs_safetensors *st, const char *spath, size_t n_moments, fs_error *err) {
    int v1 = fs_safetensors_find(st, "optimizer.exp_avg") != NULL;
    static const char *const names[2][2] = {{"exp_avg", "exp_avg_sq"}, {"optimizer.exp_avg", "optimizer.exp_avg_sq"}};
    for (int k = 0; k < 2; k++) {
        const fs_st_tensor *t = fs_safetensors_find(st, names[v1][k]);
        if (!t)
            return fs_error_set(err, FS_ERR_INVALID, "%s: tensor '%s' is missing: the training state is incomplete",
                                spath, names[v1][k]);
        if (t->dtype != FS_DTYPE_F32 || t->ndim != 1 || t->shape[0] != n_moments)
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: tensor '%s' is not F32 [%zu]: the state belongs to another model or optimizer",
                                spath, names[v1][k], n_moments);
        lp->moments[k] = t->data;
        int rc = check_finite(t->data, n_moments, spath, names[v1][k], err);
        if (rc) return rc;
    }
    return FS_OK;
}

/* training_state.safetensors (or, in a fastserve/1 checkpoint, the weights
 * file itself): the step, RNG and losses, every field strictly, and the
 * moments. */
static int plan_state(load_plan *lp, const fs_session *s, fs_safetensors *st, const char *spath, size_t n_moments,
                      int want_moments, fs_error *err) {
    int rc = fs_ckpt_meta_state(&lp->state, lp->meta.layout, file_meta, st, spath, err);
    if (!rc) rc = check_state_step(lp, s, spath, err);
    if (!rc && want_moments) rc = plan_moments(lp, st, spath, n_moments, err);
    return rc;
}

/* The step in a state file's metadata, or UINT64_MAX when unreadable. */
static uint64_t state_step(const fs_safetensors *st) {
    const char *v = fs_safetensors_metadata(st, "step");
    uint64_t step;
    fs_error ignored = {0};
    return v && !fs_meta_parse_count("", "step", v, UINT64_MAX - 1, &step, &ignored) ? step : UINT64_MAX;
}

typedef struct stale_states {
    char paths[8][PATH_MAX + 64];
    long pids[8];
    size_t n;
} stale_states;

static void collect_stale(void *arg, const char *tmp, long pid) {
    stale_states *ss = arg;
    if (ss->n == 8) return;
    snprintf(ss->paths[ss->n], sizeof ss->paths[0], "%s", tmp);
    ss->pids[ss->n++] = pid;
}

/* The weights are at step N but the state beside them at another: a run
 * killed between its two renames (write_files) left the state of step N
 * complete in its temporary file. Rank 0 renames it in, as the run would
 * have; every rank reads it (from the temporary file, or from its place
 * once rank 0 renamed it). NULL when there is no such file. */
static fs_safetensors *finish_commit(uint64_t step, const char *spath) {
    char dir[PATH_MAX], prefix[NAME_MAX + 8];
    stale_states ss = {.n = 0};
    fs_files_temp_prefix(spath, dir, sizeof dir, prefix, sizeof prefix);
    fs_files_each_stale_temp(dir, prefix, collect_stale, &ss);
    fs_safetensors *st = NULL;
    fs_error ignored = {0};
    for (size_t i = 0; i < ss.n; i++) {
        if (fs_safetensors_open(&st, ss.paths[i], &ignored)) continue; /* renamed by rank 0 meanwhile, or torn */
        if (state_step(st) != step) {
            fs_safetensors_close(st);
            st = NULL;
            continue;
        }
        char *tmp = strdup(ss.paths[i]);
        if (fs_world_rank() != 0 || !tmp) {
            free(tmp);
            return st;
        }
        fs_safetensors_close(st);
        st = NULL;
        if (fs_file_commit(tmp, spath, &ignored)) return NULL;
        fs_log(FS_LOG_INFO, NULL, "%s: finished the checkpoint of step %llu that process %ld was killed writing (its "
               "training state was complete in %s)", spath, (unsigned long long)step, ss.pids[i], ss.paths[i]);
        break;
    }
    if (fs_safetensors_open(&st, spath, &ignored)) return NULL; /* where rank 0 (or this rank) put it */
    if (state_step(st) == step) return st;
    fs_safetensors_close(st);
    return NULL;
}

void fs_checkpoint_recover(const char *path) {
    char spath[PATH_MAX + 32], dir[PATH_MAX];
    state_path(path, spath, sizeof spath);
    dir_of(path, dir, sizeof dir);
    uint64_t step;
    fs_safetensors *st = NULL;
    fs_error ignored = {0};
    if (!fs_checkpoint_read_step(path, &step, &ignored) && !fs_safetensors_open(&st, spath, &ignored) &&
        state_step(st) != step) {
        fs_safetensors_close(st);
        st = finish_commit(step, spath);
    }
    fs_safetensors_close(st);
    fs_files_remove_stale_temps(dir, NULL);
}

/* The state beside the weights: in the weights file itself for fastserve/1,
 * else training_state.safetensors (at the weights' step, finishing a
 * commit a killed run left half done). */
static int open_state(load_plan *lp, fs_safetensors **st, const char **spath_out, char *spath, size_t cap,
                      fs_error *err) {
    *st = NULL;
    if (lp->meta.layout == FS_CKPT_V1) { /* the old layout: one file */
        *spath_out = lp->path;
        return fs_safetensors_open(st, fs_weights_path(lp->w), err);
    }
    snprintf(spath, cap, "%s/" FS_TRAINING_STATE_FILE, fs_weights_dir(lp->w));
    *spath_out = spath;
    int rc = fs_safetensors_open(st, spath, err);
    if (rc == FS_ERR_NOT_FOUND)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: no training state (%s): these weights cannot be resumed; to train from them, start a "
                            "new run with [model] init = %s",
                            lp->path, spath, lp->path);
    if (!rc && lp->meta.has_step && state_step(*st) != lp->meta.step) {
        fs_safetensors *done = finish_commit(lp->meta.step, spath);
        if (done) {
            fs_safetensors_close(*st);
            *st = done;
        }
    }
    return rc;
}

/* The tensors' names, dtypes, shapes and values (checked, not copied). */
static int plan_load(load_plan *lp, fs_session *s, fs_optimizer *opt, fs_train_state *ts, const load_opts *lo,
                     size_t n_moments, fs_error *err) {
    const fs_param_block *pb = fs_model_block(s->model);
    int rc = FS_OK, n_plugin = 0;
    /* check everything first, copy after: a bad file leaves the model as it was; the layers' attention
     * first, so another plugin is named by its key rather than by its tensors */
    if (lp->meta.graph)
        rc = fs_graph_check(s, lp->meta.graph, lp->path, lo->use, FS_GRAPH_LAYERS, lp->note, sizeof lp->note, err);
    for (size_t i = 0; i < pb->n_views && !rc; i++) {
        const fs_param_view *v = &pb->views[i];
        int head = !strcmp(v->name, "lm_head.weight");
        n_plugin += v->plugin;
        rc = expect(lp, v->name, v->ndim, v->full_shape, head || (v->plugin && lo->plugin_optional), &lp->src[i], err);
        lp->plugins_found += v->plugin && lp->src[i];
        if (!rc && head && !lp->src[i]) { /* a tied checkpoint, an untied graph: the head starts as wte */
            rc = expect(lp, "transformer.wte.weight", v->ndim, v->full_shape, 0, &lp->src[i], err);
            if (!rc) fs_log(FS_LOG_INFO, NULL, "%s: no lm_head.weight (a tied head): lm_head starts as wte", lp->path);
        }
    }
    if (!rc && lp->plugins_found && lp->plugins_found != n_plugin)
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: holds only some of the attention plugins' parameters", lp->path);
    /* config.json after the tensors: their messages name the file and shape; it adds n_head and choices */
    if (!rc) rc = fs_hf_config_check(fs_weights_dir(lp->w), s, err);
    /* then the graph the weights were trained with, key by key */
    if (!rc && lp->meta.graph)
        rc = fs_graph_check(s, lp->meta.graph, lp->path, lo->use, FS_GRAPH_MODEL_AND_RUN, lp->note, sizeof lp->note,
                            err);
    leftover left = {lp, s, FS_OK, err, 0, NULL};
    if (!rc) {
        fs_weights_unclaimed(lp->w, on_unclaimed, &left);
        rc = left.rc;
    }
    if (!rc && left.n_unknown && lo->use != FS_GRAPH_INIT)
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "%s: tensor '%s' is not part of this graph's model (%zu such tensors): the checkpoint was "
                          "written for another graph",
                          lp->path, left.first_unknown, left.n_unknown);
    else if (!rc && left.n_unknown)
        fs_log(FS_LOG_WARN, NULL, "%s: %zu tensors are not used by this graph (the first: %s)", lp->path, left.n_unknown,
               left.first_unknown);
    if (rc || !(opt || ts)) return rc;
    fs_safetensors *st;
    const char *spath;
    char sbuf[PATH_MAX + 32];
    rc = open_state(lp, &st, &spath, sbuf, sizeof sbuf, err);
    if (!rc) rc = plan_state(lp, s, st, spath, n_moments, opt != NULL, err);
    if (rc) {
        fs_safetensors_close(st);
        return rc;
    }
    /* the moments are copied before st closes: they live in its memory */
    if (opt) {
        float *copy = malloc(2 * n_moments * sizeof(float) + 1);
        if (!copy) rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory for the optimizer state");
        for (int k = 0; k < 2 && !rc; k++) {
            memcpy(copy + k * n_moments, lp->moments[k], n_moments * sizeof(float));
            lp->moments[k] = copy + k * n_moments;
        }
    }
    fs_safetensors_close(st);
    return rc;
}

/* Everything checked: into the model (plugins' tensors included) and the optimizer. */
static int apply_load(load_plan *lp, fs_session *s, fs_optimizer *opt, fs_train_state *ts, fs_error *err) {
    fs_model *m = s->model;
    const fs_param_block *pb = fs_model_block(m);
    const fs_model_part *part = fs_model_held(m);
    for (size_t i = 0; i < pb->n_views; i++)
        if (lp->src[i])
            fs_param_view_extract(&pb->views[i], part->tp_rank, part->tp_size, lp->src[i], pb->params + pb->views[i].offset);
    if (opt && is_sharded(m)) { /* a tensor or pipeline shard: its parts of the whole moments */
        float *mine = malloc(2 * pb->n * sizeof(float) + 1);
        if (!mine) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        fs_shard_scatter(m, pb->full_views, pb->n_full_views, lp->moments[0], mine);
        fs_shard_scatter(m, pb->full_views, pb->n_full_views, lp->moments[1], mine + pb->n);
        fs_optimizer_import(opt, mine, mine + pb->n);
        free(mine);
    } else if (opt) { /* this rank's part of the full state (all of it without ZeRO) */
        fs_optimizer_import(opt, lp->moments[0], lp->moments[1]);
    }
    if (opt) opt->t = lp->state.optimizer_t;
    if (ts) {
        ts->step = lp->state.step;
        ts->rng = lp->state.rng;
        ts->loss = lp->state.loss;
        ts->val_loss = lp->state.val_loss;
    }
    return FS_OK;
}

static int load(const char *path, fs_session *s, fs_optimizer *opt, fs_train_state *ts, const load_opts *lo,
                int *plugins_loaded, fs_error *err) {
    fs_model *m = s->model;
    const fs_param_block *pb = fs_model_block(m);
    load_plan lp;
    memset(&lp, 0, sizeof lp);
    lp.path = path;
    int rc = fs_weights_open(&lp.w, path, err);
    if (rc) return rc;
    if ((rc = fs_ckpt_meta_weights(&lp.meta, weights_meta, lp.w, path, err))) {
        fs_weights_close(lp.w);
        return rc;
    }
    size_t n_moments = opt ? (is_sharded(m) ? pb->n_full : opt->numel) : 0;
    if (!(lp.src = calloc(pb->n_views + 1, sizeof *lp.src)))
        rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    if (!rc) rc = plan_load(&lp, s, opt, ts, lo, n_moments, err);
    if (!rc) rc = apply_load(&lp, s, opt, ts, err);
    if (!rc && *lp.note && lo->use != FS_GRAPH_USE && fs_world_rank() == 0) fs_log(FS_LOG_INFO, NULL, "%s: %s", path, lp.note);
    if (plugins_loaded) *plugins_loaded = lp.plugins_found > 0;
    if (opt) free((void *)lp.moments[0]);
    free(lp.src);
    fs_ckpt_meta_weights_release(&lp.meta);
    fs_weights_close(lp.w);
    return rc;
}

int fs_checkpoint_load(const char *path, fs_session *s, fs_optimizer *opt, fs_train_state *ts, fs_error *err) {
    load_opts lo = {0, opt || ts ? FS_GRAPH_RESUME : FS_GRAPH_USE};
    return load(path, s, opt, ts, &lo, NULL, err);
}

int fs_checkpoint_load_init(const char *path, fs_session *s, int *plugins_loaded, fs_error *err) {
    load_opts lo = {1, FS_GRAPH_INIT};
    return load(path, s, NULL, NULL, &lo, plugins_loaded, err);
}

int fs_checkpoint_read_step(const char *path, uint64_t *step, fs_error *err) {
    fs_safetensors *st;
    int rc = fs_safetensors_open(&st, path, err);
    if (rc) return rc;
    const char *v = fs_safetensors_metadata(st, "step");
    rc = v ? fs_meta_parse_count(path, "step", v, (uint64_t)INT64_MAX, step, err)
           : fs_error_set(err, FS_ERR_INVALID, "%s: no metadata step: not a checkpoint fsrun wrote", path);
    fs_safetensors_close(st);
    return rc;
}
