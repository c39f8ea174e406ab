/* distill.c — the distill mode: the student (this session's graph) learns
 * from a frozen teacher (its own graph and checkpoint) through the distill
 * plugin's loss. Teacher and student see the same batches; the teacher runs
 * forward only.
 *
 * Around the loss: the student may start from teacher layers ([distill]
 * init), batches may be augmented from the teacher ([distill] augment), the
 * teacher's logits may come from a top-k cache on disk ([distill]
 * teacher_cache), and a plugin may train in phases, each a training run of
 * its own (TinyBERT: intermediate layers, then the prediction layer). A
 * graph with [distill.stage.N] sections is a chain (distill_chain.c). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "modes/distill/distill_internal.h"
#include "io/safetensors.h"
#include "modes/train.h"
#include "dist/world.h"

fs_distill_config fs_distill_config_of(const fs_model *sm, const fs_model *tm) {
    fs_distill_config cfg = {
        .struct_size = sizeof cfg,
        .vocab = fs_model_cfg(sm)->vocab,
        .student_layers = fs_model_cfg(sm)->n_layer,
        .teacher_layers = fs_model_cfg(tm)->n_layer,
        .student_embd = fs_model_cfg(sm)->n_embd,
        .teacher_embd = fs_model_cfg(tm)->n_embd,
        .student_heads = fs_model_cfg(sm)->n_head,
        .teacher_heads = fs_model_cfg(tm)->n_head,
        .max_seq = fs_model_cfg(sm)->max_seq,
        .device = {FS_DEVICE_CPU, 0},
    };
    return cfg;
}

int64_t fs_checkpoint_step(const char *path) {
    if (access(path, F_OK) != 0) return 0;
    fs_safetensors *st;
    fs_error err = {0};
    if (fs_safetensors_open(&st, path, &err)) return -1;
    const char *v = fs_safetensors_metadata(st, "step");
    int64_t step = v ? strtoll(v, NULL, 10) : -1;
    fs_safetensors_close(st);
    return step;
}

/* ---- derived graphs ---- */

static int needs_quotes(const char *v) {
    size_t n = strlen(v);
    return n == 0 || v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t' ||
           (n >= 2 && v[0] == '"' && v[n - 1] == '"');
}

int fs_session_derive(fs_session **out, const fs_graph *base, const char *name, int (*skip)(const char *section),
                      const char *const *sets, size_t n_sets, fs_error *err) {
    size_t n = fs_graph_count(base), cap = 256;
    for (size_t i = 0; i < n; i++) {
        const fs_graph_entry *e = fs_graph_at(base, i);
        cap += strlen(e->section) + strlen(e->key) + strlen(e->value) + 16;
    }
    char *text = malloc(cap), *done = calloc(n ? n : 1, 1);
    if (!text || !done) {
        free(text);
        free(done);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    size_t len = 0;
    text[0] = '\0';
    /* section by section, in the order they first appear */
    for (size_t i = 0; i < n; i++) {
        if (done[i]) continue;
        const char *sec = fs_graph_at(base, i)->section;
        int keep = !skip || !skip(sec);
        if (keep) len += (size_t)snprintf(text + len, cap - len, "[%s]\n", sec);
        for (size_t j = i; j < n; j++) {
            const fs_graph_entry *e = fs_graph_at(base, j);
            if (done[j] || strcmp(e->section, sec) != 0) continue;
            done[j] = 1;
            if (!keep) continue;
            const char *q = *e->value && needs_quotes(e->value) ? "\"" : "";
            len += (size_t)snprintf(text + len, cap - len, "%s = %s%s%s\n", e->key, q, e->value, q);
        }
    }
    free(done);
    fs_graph *g;
    int rc = fs_graph_load_string(&g, name, text, err);
    free(text);
    if (rc) return rc;
    for (size_t i = 0; i < n_sets; i++)
        if ((rc = fs_graph_set(g, sets[i], err))) {
            fs_graph_destroy(g);
            return rc;
        }
    return fs_session_open(out, g, err);
}

/* A progress line, printed once among several ranks (by rank 0). */
static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...) {
    if (fs_world_rank() != 0) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("fsrun: distill: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

/* ---- the plan: every check before training ---- */

static int attention_check(const fs_session *sess, const char *who, int need_backward, const char *plugin,
                           fs_error *err) {
    const fs_model *m = sess->model;
    for (size_t l = 0; l < fs_model_cfg(m)->n_layer; l++) {
        const fs_attention_vtable *vt = fs_model_attention(m, l, NULL);
        int ok = (vt->flags & FS_ATTENTION_SCORES) && vt->scores;
        if (ok && need_backward)
            ok = FS_HAS_MEMBER(vt, vt->struct_size, fs_attention_vtable, scores_backward) && vt->scores_backward;
        if (!ok)
            return fs_error_set(err, FS_ERR_UNSUPPORTED,
                                "distill plugin '%s' needs attention maps, but layer %zu of the %s uses attention "
                                "plugin '%s', which cannot expose its scores%s (FS_ATTENTION_SCORES; dense can, the "
                                "sparse kinds cannot): use dense attention there or set the plugin's attention "
                                "weight to 0",
                                plugin, l, who, sess->layers[l].plugin->desc->name,
                                need_backward ? " and their gradient" : "");
    }
    return FS_OK;
}

int fs_distill_plan_make(fs_distill_plan *p, fs_session *student, const fs_config *dc, const fs_plugin *plugin,
                         fs_session *teacher, const char *teacher_ckpt, fs_error *err) {
    memset(p, 0, sizeof *p);
    p->student = student;
    p->teacher = teacher;
    p->dc = dc;
    p->plugin = plugin;
    p->vt = plugin->desc->vtable;
    snprintf(p->teacher_ckpt, sizeof p->teacher_ckpt, "%s", teacher_ckpt);
    fs_model *sm = student->model, *tm = teacher->model;
    const char *name = plugin->desc->name;
    const char *twhere = fs_config_where(dc, "teacher");
    if (!twhere || !fs_config_is_set(dc, "teacher")) twhere = "the teacher";
    if (fs_model_cfg(tm)->vocab != fs_model_cfg(sm)->vocab)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: the teacher's vocabulary has %zu tokens, the student's %zu: they must be equal", twhere,
                            fs_model_cfg(tm)->vocab, fs_model_cfg(sm)->vocab);
    if (fs_model_cfg(tm)->max_seq < fs_model_cfg(sm)->max_seq)
        return fs_error_set(err, FS_ERR_INVALID, "%s: the teacher's max_seq %zu is shorter than the student's %zu",
                            twhere, fs_model_cfg(tm)->max_seq, fs_model_cfg(sm)->max_seq);
    fs_plugin_ctx_init(&p->ctx, &student->host, dc, "plugin.distill", name);
    fs_distill_config cfg = fs_distill_config_of(sm, tm);
    fs_error perr = {0};
    p->param_first = fs_model_block(sm)->n_views;
    int rc = p->vt->create(&p->self, &student->host.api, &p->ctx, &cfg, &perr);
    if (rc) {
        p->self = NULL;
        return fs_error_set(err, rc, "distill plugin '%s': %s", name, perr.message);
    }
    p->param_count = fs_model_block(sm)->n_views - p->param_first;
    uint64_t total = (uint64_t)fs_config_int(student->train_cfg, "steps");
    size_t vt_size = p->plugin->desc->vtable_size < p->vt->struct_size ? p->plugin->desc->vtable_size
                                                                        : p->vt->struct_size;
    int has_phases = FS_HAS_MEMBER(p->vt, vt_size, fs_distill_vtable, set_phase) && p->vt->phases && p->vt->set_phase;
    p->n_phases = 1;
    p->phase_names[0] = "distill";
    p->phase_steps[0] = total;
    if (has_phases) {
        p->n_phases = p->vt->phases(p->self, total, p->phase_names, p->phase_steps, FS_DISTILL_MAX_PHASES);
        if (p->n_phases < 1 || p->n_phases > FS_DISTILL_MAX_PHASES)
            return fs_error_set(err, FS_ERR_ABI, "distill plugin '%s' reports %zu phases (1..%d)", name, p->n_phases,
                                FS_DISTILL_MAX_PHASES);
    }
    uint32_t all_needs = 0;
    for (size_t k = 0; k < p->n_phases; k++) {
        if (p->phase_steps[k] < 1)
            return fs_error_set(err, FS_ERR_INVALID,
                                "distill plugin '%s': its phase '%s' gets no steps (%s): give it steps of its own or "
                                "more [train] steps",
                                name, p->phase_names[k], fs_config_where(student->train_cfg, "steps"));
        if (has_phases && (rc = p->vt->set_phase(p->self, k, &perr)))
            return fs_error_set(err, rc, "distill plugin '%s': %s", name, perr.message);
        all_needs |= p->vt->needs(p->self);
    }
    if (has_phases && (rc = p->vt->set_phase(p->self, 0, &perr)))
        return fs_error_set(err, rc, "distill plugin '%s': %s", name, perr.message);
    if (all_needs & FS_DISTILL_NEEDS_ATTENTION) {
        if ((rc = attention_check(student, "student", 1, name, err)) ||
            (rc = attention_check(teacher, "teacher", 0, name, err)))
            return rc;
    }
    const char *init = fs_config_string(dc, "init");
    snprintf(p->init_text, sizeof p->init_text, "%s", init && *init ? init : "random");
    if ((rc = fs_student_init_plan(&p->init, init, fs_config_where(dc, "init"), sm, tm, err))) return rc;
    if ((rc = fs_augment_plan(&p->aug, dc, tm, teacher_ckpt, fs_model_cfg(sm)->max_seq, err))) return rc;
    if ((all_needs & (FS_DISTILL_NEEDS_HIDDEN | FS_DISTILL_NEEDS_ATTENTION)) && (fs_model_cfg(sm)->reversible || fs_model_cfg(tm)->reversible))
        return fs_error_set(err, FS_ERR_INVALID,
                            "distill plugin '%s' needs %s, which a reversible model does not keep: set [model] "
                            "reversible = false in the %s's graph, or use a logits-only loss (soft_kd)",
                            name, all_needs & FS_DISTILL_NEEDS_HIDDEN ? "hidden states" : "attention maps",
                            fs_model_cfg(sm)->reversible ? "student" : "teacher");
    const char *tc = fs_config_string(dc, "teacher_cache");
    if (fs_world_size() > 1 && ((tc && *tc) || p->aug.kind == FS_AUG_GENERATE))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: the cache file is written by one process: fill it with a run without mpirun "
                            "first, or distil without it on several ranks",
                            fs_config_where(dc, tc && *tc ? "teacher_cache" : "augment"));
    if (tc && *tc) {
        if (all_needs & (FS_DISTILL_NEEDS_HIDDEN | FS_DISTILL_NEEDS_ATTENTION))
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: the cache holds the teacher's top-k logits only, but distill plugin '%s' also "
                                "needs its %s: remove teacher_cache, or use a logits-only loss (soft_kd; distilbert "
                                "with alpha_cos = 0; tinybert's prediction stage alone)",
                                fs_config_where(dc, "teacher_cache"), name,
                                all_needs & FS_DISTILL_NEEDS_HIDDEN ? "hidden states" : "attention maps");
        p->teacher_cache_k = (size_t)fs_config_int(dc, "teacher_cache_k");
        if (p->teacher_cache_k > fs_model_cfg(sm)->vocab) p->teacher_cache_k = fs_model_cfg(sm)->vocab;
        snprintf(p->teacher_cache, sizeof p->teacher_cache, "%s", tc);
    }
    return FS_OK;
}

void fs_distill_plan_release(fs_distill_plan *p) {
    if (p->self) p->vt->destroy(p->self);
    p->self = NULL;
    fs_augment_close(&p->aug);
}

/* ---- one training run ---- */

typedef struct distill_run {
    fs_distill_plan *plan;
    fs_model *teacher;
    const fs_distill_vtable *vt;
    void *self;
    size_t pfirst, pcount; /* the plugin's tensors: views [pfirst, pfirst + pcount) of the student's block */
    uint32_t needs;
    int probs;
    /* first call: the student's starting point (after the loop's own init,
     * and only when the run does not resume from a checkpoint) */
    int init_pending;
    const char *carry; /* the previous phase's checkpoint, or NULL for plan->init */
    fs_topk_cache *topk;
    size_t rows_cap; /* rows the buffers hold */
    int32_t *in, *tg;
    float *tlogits;
    float *dhidden_block;
    const float **dhidden;
    float *sscores, *tscores, *dscores_block;
    const float **dscores;
    float *pgrad; /* plugin parameter gradients before this micro-batch */
    size_t pgrad_n;
} distill_run;

static int grow(distill_run *d, fs_session *s, size_t rows, fs_error *err) {
    if (rows <= d->rows_cap) return FS_OK;
    fs_model *sm = s->model, *tm = d->teacher;
    size_t T = fs_model_cfg(sm)->max_seq, Ls = fs_model_cfg(sm)->n_layer, Lt = fs_model_cfg(tm)->n_layer;
    free(d->in), free(d->tg), free(d->tlogits), free(d->dhidden_block), free(d->sscores), free(d->tscores);
    free(d->dscores_block);
    d->in = d->tg = NULL;
    d->tlogits = d->dhidden_block = d->sscores = d->tscores = d->dscores_block = NULL;
    d->in = malloc(rows * T * sizeof(int32_t));
    d->tg = malloc(rows * T * sizeof(int32_t));
    int ok = d->in && d->tg;
    if (d->topk) ok = ok && (d->tlogits = malloc(rows * T * fs_model_cfg(sm)->vocab * sizeof(float)));
    if (d->needs & FS_DISTILL_NEEDS_HIDDEN)
        ok = ok && (d->dhidden_block = malloc((Ls + 1) * rows * T * fs_model_cfg(sm)->n_embd * sizeof(float)));
    if (d->needs & FS_DISTILL_NEEDS_ATTENTION) {
        size_t ss = Ls * rows * fs_model_cfg(sm)->n_head * T * T, ts = Lt * rows * fs_model_cfg(tm)->n_head * T * T;
        ok = ok && (d->sscores = malloc(ss * sizeof(float))) && (d->dscores_block = malloc(ss * sizeof(float))) &&
             (d->tscores = malloc(ts * sizeof(float)));
    }
    if (!ok) return fs_error_set(err, FS_ERR_NOMEM, "distill: out of memory for a batch of %zu rows", rows);
    d->rows_cap = rows;
    return FS_OK;
}

/* The gradients of the plugin's own tensors: one range of the block. */
static float *plugin_grads(const distill_run *d, const fs_model *sm) {
    const fs_param_block *pb = fs_model_block(sm);
    return d->pcount ? pb->grads + pb->views[d->pfirst].offset : pb->grads + pb->n;
}

static int distill_objective(void *arg, fs_session *s, const int32_t *inputs, const int32_t *targets, size_t B,
                             size_t T, float dscale, double *loss, fs_error *err) {
    distill_run *d = arg;
    fs_distill_plan *p = d->plan;
    fs_model *tm = d->teacher, *sm = s->model;
    int rc;
    if (d->init_pending) {
        d->init_pending = 0;
        if (d->carry) {
            if ((rc = fs_checkpoint_load(d->carry, s, NULL, NULL, err))) return rc;
        } else {
            fs_student_init_apply(&p->init, sm, tm);
        }
    }
    size_t N = fs_augment_rows(&p->aug, B);
    if ((rc = grow(d, s, N, err))) return rc;
    memcpy(d->in, inputs, B * T * sizeof(int32_t));
    memcpy(d->tg, targets, B * T * sizeof(int32_t));
    if ((rc = fs_augment_batch(&p->aug, tm, d->in, d->tg, B, T, err))) return rc;
    const float *tlogits;
    if (d->topk) {
        rc = fs_topk_cache_logits(d->topk, tm, d->in, N, d->tlogits, err);
        tlogits = d->tlogits;
    } else {
        rc = fs_model_forward(tm, d->in, N, T, err);
        tlogits = fs_model_logits(tm);
    }
    if (!rc) rc = fs_model_forward(sm, d->in, N, T, err);
    if (rc) return rc;
    size_t V = fs_model_cfg(sm)->vocab, Ls = fs_model_cfg(sm)->n_layer, Lt = fs_model_cfg(tm)->n_layer;
    size_t Cs = fs_model_cfg(sm)->n_embd, Ct = fs_model_cfg(tm)->n_embd, Hs = fs_model_cfg(sm)->n_head, Ht = fs_model_cfg(tm)->n_head;
    fs_distill_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.B = N;
    a.T = T;
    a.V = V;
    a.teacher_logits = fs_tensor_cpu_f32((float *)tlogits, 3, N, T, V, 0);
    a.student_logits = fs_tensor_cpu_f32((float *)fs_model_logits(sm), 3, N, T, V, 0);
    a.labels = d->tg;
    a.dstudent_logits = fs_tensor_cpu_f32(fs_model_dlogits(sm), 3, N, T, V, 0);
    fs_tensor *tens = calloc(2 * (Lt + 1) + 2 * (Ls + 1) + 2 * Ls, sizeof *tens);
    if (!tens) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    fs_tensor *th = tens, *sh = th + Lt + 1, *dsh = sh + Ls + 1, *ta = dsh + Ls + 1, *sa = ta + Lt, *dsa = sa + Ls;
    if (d->needs & FS_DISTILL_NEEDS_HIDDEN) {
        for (size_t i = 0; i <= Lt; i++) th[i] = fs_tensor_cpu_f32((float *)fs_model_hidden(tm, i), 3, N, T, Ct, 0);
        memset(d->dhidden_block, 0, (Ls + 1) * N * T * Cs * sizeof(float));
        for (size_t i = 0; i <= Ls; i++) {
            sh[i] = fs_tensor_cpu_f32((float *)fs_model_hidden(sm, i), 3, N, T, Cs, 0);
            dsh[i] = fs_tensor_cpu_f32(d->dhidden_block + i * N * T * Cs, 3, N, T, Cs, 0);
            d->dhidden[i] = dsh[i].data;
        }
        a.teacher_hidden = th;
        a.student_hidden = sh;
        a.dstudent_hidden = dsh;
    }
    if (d->needs & FS_DISTILL_NEEDS_ATTENTION) {
        size_t sl = N * Hs * T * T, tl = N * Ht * T * T;
        for (size_t l = 0; l < Lt && !rc; l++) {
            ta[l] = fs_tensor_cpu_f32(d->tscores + l * tl, 4, N, Ht, T, T);
            rc = fs_model_attention_scores(tm, l, d->probs, ta[l].data, err);
        }
        memset(d->dscores_block, 0, Ls * sl * sizeof(float));
        for (size_t l = 0; l < Ls && !rc; l++) {
            sa[l] = fs_tensor_cpu_f32(d->sscores + l * sl, 4, N, Hs, T, T);
            dsa[l] = fs_tensor_cpu_f32(d->dscores_block + l * sl, 4, N, Hs, T, T);
            d->dscores[l] = dsa[l].data;
            rc = fs_model_attention_scores(sm, l, d->probs, sa[l].data, err);
        }
        a.teacher_attention = ta;
        a.student_attention = sa;
        a.dstudent_attention = dsa;
    }
    if (rc) {
        free(tens);
        return rc;
    }
    /* the plugin accumulates into its parameters' gradients (one range of
     * the block, the tensors it registered): scale only its share */
    float *pgrads = plugin_grads(d, sm);
    if (dscale != 1.0f) memcpy(d->pgrad, pgrads, d->pgrad_n * sizeof(float));
    fs_error perr = {0};
    rc = d->vt->loss(d->self, &a, loss, &perr);
    free(tens);
    if (rc) return fs_error_set(err, rc, "distill plugin '%s': %s", p->plugin->desc->name, perr.message);
    if (dscale != 1.0f) {
        size_t n = N * T * V;
        for (size_t i = 0; i < n; i++) fs_model_dlogits(sm)[i] *= dscale;
        if (d->needs & FS_DISTILL_NEEDS_HIDDEN) {
            size_t nh = (Ls + 1) * N * T * Cs;
            for (size_t i = 0; i < nh; i++) d->dhidden_block[i] *= dscale;
        }
        if (d->needs & FS_DISTILL_NEEDS_ATTENTION) {
            size_t na = Ls * N * Hs * T * T;
            for (size_t i = 0; i < na; i++) d->dscores_block[i] *= dscale;
        }
        for (size_t j = 0; j < d->pgrad_n; j++) pgrads[j] = d->pgrad[j] + dscale * (pgrads[j] - d->pgrad[j]);
    }
    return fs_model_backward_ex(sm, (d->needs & FS_DISTILL_NEEDS_HIDDEN) ? d->dhidden : NULL,
                                (d->needs & FS_DISTILL_NEEDS_ATTENTION) ? d->dscores : NULL, d->probs, err);
}

/* Trains session s with the plugin instance (vt, self) whose parameters are
 * views [pfirst, pfirst + pcount) of s's model. */
static int train_run(fs_distill_plan *p, fs_session *s, void *self, size_t pfirst, size_t pcount, const char *carry,
                     fs_topk_cache *topk, const fs_run_options *o, int *config_error, fs_error *err) {
    distill_run d;
    memset(&d, 0, sizeof d);
    d.plan = p;
    d.teacher = p->teacher->model;
    d.vt = p->vt;
    d.self = self;
    d.pfirst = pfirst;
    d.pcount = pcount;
    d.needs = p->vt->needs(self);
    d.probs = (d.needs & FS_DISTILL_NEEDS_ATTENTION_PROBS) != 0;
    d.carry = carry;
    d.topk = topk;
    d.init_pending = !(o->resume || fs_config_bool(s->train_cfg, "resume")) && (carry || p->init.kind != FS_INIT_RANDOM);
    int rc = FS_OK;
    size_t Ls = fs_model_cfg(s->model)->n_layer;
    d.dhidden = calloc(Ls + 1, sizeof *d.dhidden);
    d.dscores = calloc(Ls, sizeof *d.dscores);
    for (size_t i = 0; i < pcount; i++) d.pgrad_n += fs_model_block(s->model)->views[pfirst + i].numel;
    d.pgrad = malloc((d.pgrad_n + 1) * sizeof(float));
    if (!d.dhidden || !d.dscores || !d.pgrad) rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    if (!rc) {
        fs_objective obj = {"distill", distill_objective, &d};
        rc = fs_train_loop(s, o, &obj, config_error, err);
    }
    free(d.in), free(d.tg), free(d.tlogits), free(d.dhidden_block), free(d.dhidden);
    free(d.sscores), free(d.tscores), free(d.dscores_block), free(d.dscores), free(d.pgrad);
    return rc;
}

/* The model's own parameters (its plugins' tensors not counted). */
static size_t own_params(const fs_model *m) { return fs_model_block(m)->n - fs_model_block(m)->n_plugin; }

static int skip_none(const char *section) {
    (void)section;
    return 0;
}

int fs_distill_execute(fs_distill_plan *p, const fs_run_options *o, int resume, int *done, int *config_error,
                       fs_error *err) {
    fs_session *s = p->student;
    const char *name = p->plugin->desc->name;
    *done = 0;
    fs_topk_cache topk;
    memset(&topk, 0, sizeof topk);
    int rc = fs_augment_open(&p->aug, p->teacher->model, s->mcfg.max_seq, err);
    if (!rc && *p->teacher_cache)
        rc = fs_topk_cache_open(&topk, p->teacher_cache, p->teacher_cache_k, s->mcfg.max_seq, p->teacher->model, err);
    if (rc) goto done;
    note("teacher %s (%zu parameters) -> student (%zu parameters), plugin %s, init %s\n",
            p->teacher_ckpt, own_params(p->teacher->model), own_params(s->model), name, p->init_text);
    if (p->aug.kind == FS_AUG_GENERATE)
        note("augment generate:%zu, cache %s (%zu windows)\n", p->aug.R,
                fs_dcache_path(p->aug.cache), fs_dcache_count(p->aug.cache));
    if (*p->teacher_cache)
        note("teacher_cache %s: top-%zu logits (%zu windows)\n", p->teacher_cache,
                topk.k, fs_dcache_count(topk.file));
    char ckpt[PATH_MAX];
    fs_session_checkpoint_path(s, ckpt, sizeof ckpt);
    if (p->n_phases == 1) {
        rc = train_run(p, s, p->self, p->param_first, p->param_count, NULL, *p->teacher_cache ? &topk : NULL, o,
                       config_error, err);
        *done = !rc && fs_checkpoint_step(ckpt) >= (int64_t)p->phase_steps[0];
        goto done;
    }
    /* phases: a session each, the last one writing [run] out */
    const char *out = fs_config_string(s->run_cfg, "out");
    char prev[PATH_MAX + 32] = "";
    for (size_t k = 0; k < p->n_phases && !rc; k++) {
        int last = k + 1 == p->n_phases;
        char dir[PATH_MAX], pck[PATH_MAX + 32], sets[4][PATH_MAX + 64];
        if (last)
            snprintf(dir, sizeof dir, "%s", out);
        else
            snprintf(dir, sizeof dir, "%.3900s/phase%zu-%.64s", out, k + 1, p->phase_names[k]);
        snprintf(pck, sizeof pck, "%s/model.safetensors", dir);
        int64_t have = resume ? fs_checkpoint_step(pck) : 0;
        if (have < 0) {
            rc = fs_error_set(err, FS_ERR_INVALID, "%s: cannot read its step to resume phase '%s'", pck,
                              p->phase_names[k]);
            break;
        }
        if ((uint64_t)have >= p->phase_steps[k]) {
            note("phase %zu/%zu '%s' is done (%s)\n", k + 1, p->n_phases,
                    p->phase_names[k], pck);
            snprintf(prev, sizeof prev, "%s", pck);
            continue;
        }
        snprintf(sets[0], sizeof sets[0], "train.steps=%llu", (unsigned long long)p->phase_steps[k]);
        snprintf(sets[1], sizeof sets[1], "run.out=%s", dir);
        snprintf(sets[2], sizeof sets[2], "train.resume=%s", have > 0 ? "true" : "false");
        snprintf(sets[3], sizeof sets[3], "generate.max_tokens=%s",
                 last ? fs_config_string(s->gen_cfg, "max_tokens") : "0");
        const char *setp[4] = {sets[0], sets[1], sets[2], sets[3]};
        char gname[PATH_MAX + 32];
        snprintf(gname, sizeof gname, "%s (phase %s)", fs_graph_path(s->graph) ? fs_graph_path(s->graph) : "graph",
                 p->phase_names[k]);
        fs_session *ps = NULL;
        if ((rc = fs_session_derive(&ps, s->graph, gname, skip_none, setp, 4, err))) break;
        fs_plugin_ctx ctx;
        fs_plugin_ctx_init(&ctx, &ps->host, p->dc, "plugin.distill", name);
        fs_distill_config cfg = fs_distill_config_of(ps->model, p->teacher->model);
        void *self = NULL;
        fs_error perr = {0};
        size_t first = fs_model_block(ps->model)->n_views;
        rc = p->vt->create(&self, &ps->host.api, &ctx, &cfg, &perr);
        if (!rc) rc = p->vt->set_phase(self, k, &perr);
        if (rc) {
            rc = fs_error_set(err, rc, "distill plugin '%s': %s", name, perr.message);
        } else {
            note("phase %zu/%zu '%s': %llu steps -> %s%s\n", k + 1, p->n_phases,
                    p->phase_names[k], (unsigned long long)p->phase_steps[k], pck, have > 0 ? " (resuming)" : "");
            fs_run_options po = *o;
            po.resume = 0;
            rc = train_run(p, ps, self, first, fs_model_block(ps->model)->n_views - first, k ? prev : NULL,
                           *p->teacher_cache ? &topk : NULL, &po, config_error, err);
        }
        if (self) p->vt->destroy(self);
        fs_session_close(ps);
        if (rc) break;
        if ((uint64_t)fs_checkpoint_step(pck) < p->phase_steps[k]) {
            note("phase '%s' stopped before its last step ([run] stop_after): continue "
                            "with --resume\n",
                    p->phase_names[k]);
            goto done;
        }
        snprintf(prev, sizeof prev, "%s", pck);
    }
    if (!rc) {
        /* the final weights into this session: the next stage's teacher */
        rc = fs_checkpoint_load(prev, s, NULL, NULL, err);
        *done = !rc;
    }
done:
    if (p->aug.kind == FS_AUG_GENERATE)
        note("augment: %zu sequences from the cache, %zu generated (%s)\n", p->aug.reused,
                p->aug.generated, fs_dcache_path(p->aug.cache));
    if (p->aug.kind == FS_AUG_REPLACE)
        note("augment: %zu of %zu tokens replaced\n", p->aug.replaced, p->aug.tokens_seen);
    if (*p->teacher_cache && topk.file)
        note("teacher_cache: %zu windows from the cache, %zu computed (%s)\n", topk.hits,
                topk.misses, p->teacher_cache);
    fs_topk_cache_close(&topk);
    fs_augment_close(&p->aug);
    return rc;
}

/* ---- the mode ---- */

int fs_mode_distill(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    *config_error = 1;
    if (fs_graph_has_stages(s->graph)) return fs_distill_chain(s, o, config_error, err);
    const fs_config *dc = s->distill_cfg;
    const char *tgraph = fs_config_string(dc, "teacher");
    if (!tgraph || !*tgraph)
        return fs_error_set(err, FS_ERR_INVALID, "[distill] teacher: required by --mode distill: the teacher's graph file");
    fs_graph *tg;
    fs_error gerr = {0};
    int rc = fs_graph_load(&tg, tgraph, &gerr);
    if (rc) return fs_error_set(err, rc, "%s: teacher graph: %s", fs_config_where(dc, "teacher"), gerr.message);
    fs_session *teacher = NULL;
    fs_distill_plan plan;
    memset(&plan, 0, sizeof plan);
    rc = fs_session_open_local(&teacher, tg, &gerr);
    if (rc) return fs_error_set(err, rc, "teacher graph %s: %s", tgraph, gerr.message);
    char tckpt[PATH_MAX];
    const char *tc = fs_config_string(dc, "teacher_checkpoint");
    if (tc && *tc)
        snprintf(tckpt, sizeof tckpt, "%s", tc);
    else
        fs_session_checkpoint_path(teacher, tckpt, sizeof tckpt);
    if ((rc = fs_distill_plan_make(&plan, s, dc, s->distill.plugin, teacher, tckpt, err))) goto done;
    if (access(tckpt, R_OK) != 0) { /* a file the graph names: a configuration error */
        rc = fs_error_set(err, FS_ERR_NOT_FOUND, "%s: teacher checkpoint %s: %s (train the teacher first)",
                          tc && *tc ? fs_config_where(dc, "teacher_checkpoint") : fs_config_where(dc, "teacher"), tckpt,
                          strerror(errno));
        goto done;
    }
    *config_error = 0; /* from here on a failure is in the work: a corrupt checkpoint is exit status 1 */
    if ((rc = fs_checkpoint_load(tckpt, teacher, NULL, NULL, err))) goto done;
    int done_all;
    rc = fs_distill_execute(&plan, o, o->resume || fs_config_bool(s->train_cfg, "resume"), &done_all, config_error,
                            err);
done:
    fs_distill_plan_release(&plan);
    fs_session_close(teacher);
    return rc;
}
