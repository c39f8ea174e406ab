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

#include "core/crash.h"
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
    uint64_t step;
    fs_error ignored = {0};
    return fs_checkpoint_read_step(path, &step, &ignored) ? -1 : (int64_t)step;
}

/* ---- derived graphs ---- */

int fs_session_derive(fs_session **out, const fs_graph *base, const char *name, int (*keep)(const char *section),
                      const fs_graph_change *changes, size_t n_changes, fs_error *err) {
    fs_graph *g;
    int rc = fs_graph_copy(&g, base, name, keep, err);
    for (size_t i = 0; i < n_changes && !rc; i++)
        rc = fs_graph_put(g, changes[i].section, changes[i].key, changes[i].value, name, err);
    if (rc) {
        fs_graph_destroy(g);
        return rc;
    }
    return fs_session_open(out, g, err);
}

/* A call through the distill plugin's vtable, named if it crashes. */
#define DISTILL_CALL(plan, call, statement) FS_PLUGIN_CALL("distill", (plan)->plugin->desc->name, call, -1, statement)

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

/* Teacher and student must share the vocabulary, and the teacher must see
 * at least the student's context. */
static int check_shapes(const fs_model *sm, const fs_model *tm, const char *twhere, fs_error *err) {
    if (fs_model_cfg(tm)->vocab != fs_model_cfg(sm)->vocab)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: the teacher's vocabulary has %zu tokens, the student's %zu: they must be equal", twhere,
                            fs_model_cfg(tm)->vocab, fs_model_cfg(sm)->vocab);
    if (fs_model_cfg(tm)->max_seq < fs_model_cfg(sm)->max_seq)
        return fs_error_set(err, FS_ERR_INVALID, "%s: the teacher's max_seq %zu is shorter than the student's %zu",
                            twhere, fs_model_cfg(tm)->max_seq, fs_model_cfg(sm)->max_seq);
    return FS_OK;
}

/* The plugin's instance on the student; its tensors are the views
 * [param_first, param_first + param_count) of the student's block. */
static int create_instance(fs_distill_plan *p, fs_error *err) {
    fs_session *student = p->student;
    fs_plugin_ctx_init(&p->ctx, &student->host, p->dc, "plugin.distill", p->plugin->desc->name);
    fs_distill_config cfg = fs_distill_config_of(student->model, p->teacher->model);
    fs_error perr = {0};
    p->param_first = fs_model_block(student->model)->n_views;
    int rc;
    DISTILL_CALL(p, "create", rc = p->vt->create(&p->self, &student->host.api, &p->ctx, &cfg, &perr));
    if (rc) {
        p->self = NULL;
        return fs_error_set(err, rc, "distill plugin '%s': %s", p->plugin->desc->name, perr.message);
    }
    p->param_count = fs_model_block(student->model)->n_views - p->param_first;
    return FS_OK;
}

/* The plugin's phases (one, "distill", over [train] steps, without
 * phases()), each with steps; *all_needs gets what any phase needs. The
 * instance is left in phase 0. */
static int plan_phases(fs_distill_plan *p, uint32_t *all_needs, fs_error *err) {
    const char *name = p->plugin->desc->name;
    const fs_config *train_cfg = p->student->train_cfg;
    uint64_t total = (uint64_t)fs_config_int(train_cfg, "steps");
    size_t vt_size = p->plugin->desc->vtable_size < p->vt->struct_size ? p->plugin->desc->vtable_size
                                                                        : p->vt->struct_size;
    int has_phases = FS_HAS_MEMBER(p->vt, vt_size, fs_distill_vtable, set_phase) && p->vt->phases && p->vt->set_phase;
    p->n_phases = 1;
    p->phase_names[0] = "distill";
    p->phase_steps[0] = total;
    if (has_phases) {
        DISTILL_CALL(p, "phases",
                     p->n_phases = p->vt->phases(p->self, total, p->phase_names, p->phase_steps, FS_DISTILL_MAX_PHASES));
        if (p->n_phases < 1 || p->n_phases > FS_DISTILL_MAX_PHASES)
            return fs_error_set(err, FS_ERR_ABI, "distill plugin '%s' reports %zu phases (1..%d)", name, p->n_phases,
                                FS_DISTILL_MAX_PHASES);
    }
    fs_error perr = {0};
    int rc;
    *all_needs = 0;
    for (size_t k = 0; k < p->n_phases; k++) {
        if (p->phase_steps[k] < 1)
            return fs_error_set(err, FS_ERR_INVALID,
                                "distill plugin '%s': its phase '%s' gets no steps (%s): give it steps of its own or "
                                "more [train] steps",
                                name, p->phase_names[k], fs_config_where(train_cfg, "steps"));
        rc = FS_OK;
        if (has_phases) DISTILL_CALL(p, "set_phase", rc = p->vt->set_phase(p->self, k, &perr));
        if (rc) return fs_error_set(err, rc, "distill plugin '%s': %s", name, perr.message);
        uint32_t needs;
        DISTILL_CALL(p, "needs", needs = p->vt->needs(p->self));
        *all_needs |= needs;
    }
    rc = FS_OK;
    if (has_phases) DISTILL_CALL(p, "set_phase", rc = p->vt->set_phase(p->self, 0, &perr));
    if (rc)
        return fs_error_set(err, rc, "distill plugin '%s': %s", name, perr.message);
    return FS_OK;
}

/* Attention maps: both models' attention plugins must expose them. */
static int check_attention_maps(const fs_distill_plan *p, uint32_t needs, fs_error *err) {
    const char *name = p->plugin->desc->name;
    int rc = FS_OK;
    if (needs & FS_DISTILL_NEEDS_ATTENTION) {
        rc = attention_check(p->student, "student", 1, name, err);
        if (!rc) rc = attention_check(p->teacher, "teacher", 0, name, err);
    }
    return rc;
}

/* Hidden states and attention maps are not kept by a reversible model. */
static int check_not_reversible(const fs_distill_plan *p, uint32_t needs, fs_error *err) {
    const fs_model *sm = p->student->model, *tm = p->teacher->model;
    int reversible = fs_model_cfg(sm)->reversible || fs_model_cfg(tm)->reversible;
    if ((needs & (FS_DISTILL_NEEDS_HIDDEN | FS_DISTILL_NEEDS_ATTENTION)) && reversible)
        return fs_error_set(err, FS_ERR_INVALID,
                            "distill plugin '%s' needs %s, which a reversible model does not keep: set [model] "
                            "reversible = false in the %s's graph, or use a logits-only loss (soft_kd)",
                            p->plugin->desc->name, needs & FS_DISTILL_NEEDS_HIDDEN ? "hidden states" : "attention maps",
                            fs_model_cfg(sm)->reversible ? "student" : "teacher");
    return FS_OK;
}

/* [distill] teacher_cache: one process writes it, and it holds logits only. */
static int plan_teacher_cache(fs_distill_plan *p, uint32_t needs, fs_error *err) {
    const fs_config *dc = p->dc;
    const char *tc = fs_config_string(dc, "teacher_cache");
    if (fs_world_size() > 1 && ((tc && *tc) || p->aug.kind == FS_AUG_GENERATE))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: the cache file is written by one process: fill it with a run without mpirun "
                            "first, or distil without it on several ranks",
                            fs_config_where(dc, tc && *tc ? "teacher_cache" : "augment"));
    if (!tc || !*tc) return FS_OK;
    if (needs & (FS_DISTILL_NEEDS_HIDDEN | FS_DISTILL_NEEDS_ATTENTION))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: the cache holds the teacher's top-k logits only, but distill plugin '%s' also "
                            "needs its %s: remove teacher_cache, or use a logits-only loss (soft_kd; distilbert "
                            "with alpha_cos = 0; tinybert's prediction stage alone)",
                            fs_config_where(dc, "teacher_cache"), p->plugin->desc->name,
                            needs & FS_DISTILL_NEEDS_HIDDEN ? "hidden states" : "attention maps");
    size_t V = fs_model_cfg(p->student->model)->vocab;
    p->teacher_cache_k = (size_t)fs_config_int(dc, "teacher_cache_k");
    if (p->teacher_cache_k > V) p->teacher_cache_k = V;
    snprintf(p->teacher_cache, sizeof p->teacher_cache, "%s", tc);
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
    const char *twhere = fs_config_where(dc, "teacher");
    if (!twhere || !fs_config_is_set(dc, "teacher")) twhere = "the teacher";
    uint32_t needs = 0;
    int rc = check_shapes(sm, tm, twhere, err);
    if (!rc) rc = create_instance(p, err);
    if (!rc) rc = plan_phases(p, &needs, err);
    if (!rc) rc = check_attention_maps(p, needs, err);
    if (rc) return rc;
    const char *init = fs_config_string(dc, "init");
    snprintf(p->init_text, sizeof p->init_text, "%s", init && *init ? init : "random");
    if ((rc = fs_student_init_plan(&p->init, init, fs_config_where(dc, "init"), sm, tm, err))) return rc;
    const char *model_init = fs_config_string(p->student->model_cfg, "init");
    if (p->init.kind != FS_INIT_RANDOM && *model_init)
        return fs_error_set(err, FS_ERR_INVALID, "%s and %s: the student starts from one of them: unset one",
                            fs_config_where(dc, "init"), fs_config_where(p->student->model_cfg, "init"));
    if ((rc = fs_augment_plan(&p->aug, dc, tm, teacher_ckpt, fs_model_cfg(sm)->max_seq, err))) return rc;
    if ((rc = check_not_reversible(p, needs, err))) return rc;
    return plan_teacher_cache(p, needs, err);
}

void fs_distill_plan_release(fs_distill_plan *p) {
    if (p->self) DISTILL_CALL(p, "destroy", p->vt->destroy(p->self));
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

/* The student's starting point, at the first call (after the loop's own
 * initialisation): the previous phase's checkpoint, or the plan's init
 * from the teacher's layers. */
static int start_student(distill_run *d, fs_session *s, fs_error *err) {
    d->init_pending = 0;
    if (d->carry) return fs_checkpoint_load(d->carry, s, NULL, NULL, err);
    fs_student_init_apply(&d->plan->init, s->model, d->teacher);
    return FS_OK;
}

/* The batch, augmented to *N rows in d->in / d->tg, through the teacher
 * (or its logits from the top-k cache) and the student. *tlogits gets the
 * teacher's logits (N, T, V). */
static int forward_both(distill_run *d, fs_session *s, const int32_t *inputs, const int32_t *targets, size_t B,
                        size_t T, size_t *N, const float **tlogits, fs_error *err) {
    fs_distill_plan *p = d->plan;
    fs_model *tm = d->teacher;
    *N = fs_augment_rows(&p->aug, B);
    int rc = grow(d, s, *N, err);
    if (rc) return rc;
    memcpy(d->in, inputs, B * T * sizeof(int32_t));
    memcpy(d->tg, targets, B * T * sizeof(int32_t));
    if ((rc = fs_augment_batch(&p->aug, tm, d->in, d->tg, B, T, err))) return rc;
    if (d->topk) {
        rc = fs_topk_cache_logits(d->topk, tm, d->in, *N, d->tlogits, err);
        *tlogits = d->tlogits;
    } else {
        rc = fs_model_forward(tm, d->in, *N, T, err);
        *tlogits = fs_model_logits(tm);
    }
    return rc ? rc : fs_model_forward(s->model, d->in, *N, T, err);
}

/* The loss's hidden states, (N, T, C) for layers 0..L of each model, and
 * the student's zeroed gradients of them. */
static void hidden_args(distill_run *d, fs_model *sm, size_t N, size_t T, fs_tensor *th, fs_tensor *sh,
                        fs_tensor *dsh, fs_distill_args *a) {
    fs_model *tm = d->teacher;
    const fs_model_config *sc = fs_model_cfg(sm), *tc = fs_model_cfg(tm);
    size_t Ls = sc->n_layer, Lt = tc->n_layer, Cs = sc->n_embd, Ct = tc->n_embd;
    for (size_t i = 0; i <= Lt; i++) th[i] = fs_tensor_cpu_f32((float *)fs_model_hidden(tm, i), 3, N, T, Ct, 0);
    memset(d->dhidden_block, 0, (Ls + 1) * N * T * Cs * sizeof(float));
    for (size_t i = 0; i <= Ls; i++) {
        sh[i] = fs_tensor_cpu_f32((float *)fs_model_hidden(sm, i), 3, N, T, Cs, 0);
        dsh[i] = fs_tensor_cpu_f32(d->dhidden_block + i * N * T * Cs, 3, N, T, Cs, 0);
        d->dhidden[i] = dsh[i].data;
    }
    a->teacher_hidden = th;
    a->student_hidden = sh;
    a->dstudent_hidden = dsh;
}

/* The loss's attention maps, (N, H, T, T) per layer, written by each model
 * from its last forward, and the student's zeroed gradients of them. */
static int attention_args(distill_run *d, fs_model *sm, size_t N, size_t T, fs_tensor *ta, fs_tensor *sa,
                          fs_tensor *dsa, fs_distill_args *a, fs_error *err) {
    fs_model *tm = d->teacher;
    size_t Ls = fs_model_cfg(sm)->n_layer, Lt = fs_model_cfg(tm)->n_layer;
    size_t sl = N * fs_model_cfg(sm)->n_head * T * T, tl = N * fs_model_cfg(tm)->n_head * T * T;
    int rc = FS_OK;
    for (size_t l = 0; l < Lt && !rc; l++) {
        ta[l] = fs_tensor_cpu_f32(d->tscores + l * tl, 4, N, fs_model_cfg(tm)->n_head, T, T);
        rc = fs_model_attention_scores(tm, l, d->probs, ta[l].data, err);
    }
    memset(d->dscores_block, 0, Ls * sl * sizeof(float));
    for (size_t l = 0; l < Ls && !rc; l++) {
        sa[l] = fs_tensor_cpu_f32(d->sscores + l * sl, 4, N, fs_model_cfg(sm)->n_head, T, T);
        dsa[l] = fs_tensor_cpu_f32(d->dscores_block + l * sl, 4, N, fs_model_cfg(sm)->n_head, T, T);
        d->dscores[l] = dsa[l].data;
        rc = fs_model_attention_scores(sm, l, d->probs, sa[l].data, err);
    }
    a->teacher_attention = ta;
    a->student_attention = sa;
    a->dstudent_attention = dsa;
    return rc;
}

/* The gradients of the plugin's own tensors: one range of the block. */
static float *plugin_grads(const distill_run *d, const fs_model *sm) {
    const fs_param_block *pb = fs_model_block(sm);
    return d->pcount ? pb->grads + pb->views[d->pfirst].offset : pb->grads + pb->n;
}

/* The plugin's parameter gradients before the loss adds this micro-batch's
 * share (scale_loss_grads scales the share only). */
static void save_plugin_grads(distill_run *d, const fs_model *sm) {
    memcpy(d->pgrad, plugin_grads(d, sm), d->pgrad_n * sizeof(float));
}

/* Every gradient the loss wrote for this micro-batch times dscale: the
 * logits', the hidden states' and attention maps' it needs, and the share
 * it added to its own parameters' gradients. */
static void scale_loss_grads(distill_run *d, fs_model *sm, size_t N, size_t T, float dscale) {
    size_t Ls = fs_model_cfg(sm)->n_layer, n = N * T * fs_model_cfg(sm)->vocab;
    float *dlogits = fs_model_dlogits(sm);
    for (size_t i = 0; i < n; i++) dlogits[i] *= dscale;
    if (d->needs & FS_DISTILL_NEEDS_HIDDEN) {
        size_t nh = (Ls + 1) * N * T * fs_model_cfg(sm)->n_embd;
        for (size_t i = 0; i < nh; i++) d->dhidden_block[i] *= dscale;
    }
    if (d->needs & FS_DISTILL_NEEDS_ATTENTION) {
        size_t na = Ls * N * fs_model_cfg(sm)->n_head * T * T;
        for (size_t i = 0; i < na; i++) d->dscores_block[i] *= dscale;
    }
    float *pgrads = plugin_grads(d, sm);
    for (size_t j = 0; j < d->pgrad_n; j++) pgrads[j] = d->pgrad[j] + dscale * (pgrads[j] - d->pgrad[j]);
}

static int distill_objective(void *arg, fs_session *s, const int32_t *inputs, const int32_t *targets, size_t B,
                             size_t T, float dscale, double *loss, fs_error *err) {
    distill_run *d = arg;
    fs_model *sm = s->model;
    size_t N = 0;
    const float *tlogits = NULL;
    int rc = d->init_pending ? start_student(d, s, err) : FS_OK;
    if (!rc) rc = forward_both(d, s, inputs, targets, B, T, &N, &tlogits, err);
    if (rc) return rc;
    size_t V = fs_model_cfg(sm)->vocab, Ls = fs_model_cfg(sm)->n_layer, Lt = fs_model_cfg(d->teacher)->n_layer;
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
    if (d->needs & FS_DISTILL_NEEDS_HIDDEN) hidden_args(d, sm, N, T, th, sh, dsh, &a);
    if (d->needs & FS_DISTILL_NEEDS_ATTENTION) rc = attention_args(d, sm, N, T, ta, sa, dsa, &a, err);
    if (!rc && dscale != 1.0f) save_plugin_grads(d, sm);
    fs_error perr = {0};
    int lrc = FS_OK;
    if (!rc) DISTILL_CALL(d->plan, "loss", lrc = d->vt->loss(d->self, &a, loss, &perr));
    if (lrc) rc = fs_error_set(err, lrc, "distill plugin '%s': %s", d->plan->plugin->desc->name, perr.message);
    free(tens);
    if (rc) return rc;
    if (dscale != 1.0f) scale_loss_grads(d, sm, N, T, dscale);
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
    DISTILL_CALL(p, "needs", d.needs = p->vt->needs(self));
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

/* Opens the augmentation and teacher caches and says what the run is. */
static int open_caches(fs_distill_plan *p, fs_topk_cache *topk, fs_error *err) {
    fs_session *s = p->student;
    int rc = fs_augment_open(&p->aug, p->teacher->model, s->mcfg.max_seq, err);
    if (!rc && *p->teacher_cache)
        rc = fs_topk_cache_open(topk, p->teacher_cache, p->teacher_cache_k, s->mcfg.max_seq, p->teacher->model, err);
    if (rc) return rc;
    note("teacher %s (%zu parameters) -> student (%zu parameters), plugin %s, init %s\n", p->teacher_ckpt,
         own_params(p->teacher->model), own_params(s->model), p->plugin->desc->name, p->init_text);
    if (p->aug.kind == FS_AUG_GENERATE)
        note("augment generate:%zu, cache %s (%zu windows)\n", p->aug.R, fs_dcache_path(p->aug.cache),
             fs_dcache_count(p->aug.cache));
    if (*p->teacher_cache)
        note("teacher_cache %s: top-%zu logits (%zu windows)\n", p->teacher_cache, topk->k,
             fs_dcache_count(topk->file));
    return FS_OK;
}

/* Says what the caches did, and closes them. */
static void close_caches(fs_distill_plan *p, fs_topk_cache *topk) {
    if (p->aug.kind == FS_AUG_GENERATE)
        note("augment: %zu sequences from the cache, %zu generated (%s)\n", p->aug.reused, p->aug.generated,
             fs_dcache_path(p->aug.cache));
    if (p->aug.kind == FS_AUG_REPLACE)
        note("augment: %zu of %zu tokens replaced\n", p->aug.replaced, p->aug.tokens_seen);
    if (*p->teacher_cache && topk->file)
        note("teacher_cache: %zu windows from the cache, %zu computed (%s)\n", topk->hits, topk->misses,
             p->teacher_cache);
    fs_topk_cache_close(topk);
    fs_augment_close(&p->aug);
}

/* Where phase k runs: its directory (the last phase writes [run] out) and
 * checkpoint. */
static void phase_paths(const fs_distill_plan *p, size_t k, char *dir, size_t dir_cap, char *ckpt, size_t ckpt_cap) {
    const char *out = fs_config_string(p->student->run_cfg, "out");
    if (k + 1 == p->n_phases)
        snprintf(dir, dir_cap, "%s", out);
    else
        snprintf(dir, dir_cap, "%.3900s/phase%zu-%.64s", out, k + 1, p->phase_names[k]);
    snprintf(ckpt, ckpt_cap, "%s/model.safetensors", dir);
}

/* Phase k in a session of its own (the graph with the phase's steps and
 * directory), with a plugin instance set to the phase, starting from
 * `prev` (the previous phase's checkpoint; "" for phase 0). */
static int run_phase(fs_distill_plan *p, size_t k, const char *dir, const char *pck, int64_t have, const char *prev,
                     fs_topk_cache *topk, const fs_run_options *o, int *config_error, fs_error *err) {
    fs_session *s = p->student;
    const char *name = p->plugin->desc->name;
    char steps[32], gname[PATH_MAX + 32];
    snprintf(steps, sizeof steps, "%llu", (unsigned long long)p->phase_steps[k]);
    const fs_graph_change changes[] = {
        {"train", "steps", steps},
        {"run", "out", dir},
        {"train", "resume", have > 0 ? "true" : "false"},
        {"generate", "max_tokens", k + 1 == p->n_phases ? fs_config_string(s->gen_cfg, "max_tokens") : "0"},
    };
    snprintf(gname, sizeof gname, "%s (phase %s)", fs_graph_path(s->graph) ? fs_graph_path(s->graph) : "graph",
             p->phase_names[k]);
    fs_session *ps = NULL;
    int rc = fs_session_derive(&ps, s->graph, gname, NULL, changes, sizeof changes / sizeof changes[0], err);
    if (rc) return rc;
    fs_plugin_ctx ctx;
    fs_plugin_ctx_init(&ctx, &ps->host, p->dc, "plugin.distill", name);
    fs_distill_config cfg = fs_distill_config_of(ps->model, p->teacher->model);
    void *self = NULL;
    fs_error perr = {0};
    size_t first = fs_model_block(ps->model)->n_views;
    DISTILL_CALL(p, "create", rc = p->vt->create(&self, &ps->host.api, &ctx, &cfg, &perr));
    if (!rc) DISTILL_CALL(p, "set_phase", rc = p->vt->set_phase(self, k, &perr));
    if (rc) {
        rc = fs_error_set(err, rc, "distill plugin '%s': %s", name, perr.message);
    } else {
        note("phase %zu/%zu '%s': %llu steps -> %s%s\n", k + 1, p->n_phases, p->phase_names[k],
             (unsigned long long)p->phase_steps[k], pck, have > 0 ? " (resuming)" : "");
        fs_run_options po = *o;
        po.resume = 0;
        rc = train_run(p, ps, self, first, fs_model_block(ps->model)->n_views - first, k ? prev : NULL,
                       *p->teacher_cache ? topk : NULL, &po, config_error, err);
    }
    if (self) DISTILL_CALL(p, "destroy", p->vt->destroy(self));
    fs_session_close(ps);
    return rc;
}

/* A plugin with phases: each in turn (a finished one skipped when
 * resuming); the last one's weights end in the student session. *done
 * stays 0 when a phase stops early ([run] stop_after). */
static int run_phases(fs_distill_plan *p, const fs_run_options *o, int resume, fs_topk_cache *topk, int *done,
                      int *config_error, fs_error *err) {
    char prev[PATH_MAX + 32] = "";
    for (size_t k = 0; k < p->n_phases; k++) {
        char dir[PATH_MAX], pck[PATH_MAX + 32];
        phase_paths(p, k, dir, sizeof dir, pck, sizeof pck);
        int64_t have = resume ? fs_checkpoint_step(pck) : 0;
        if (have < 0)
            return fs_error_set(err, FS_ERR_INVALID, "%s: cannot read its step to resume phase '%s'", pck,
                                p->phase_names[k]);
        if ((uint64_t)have >= p->phase_steps[k]) {
            note("phase %zu/%zu '%s' is done (%s)\n", k + 1, p->n_phases, p->phase_names[k], pck);
            snprintf(prev, sizeof prev, "%s", pck);
            continue;
        }
        int rc = run_phase(p, k, dir, pck, have, prev, topk, o, config_error, err);
        if (rc) return rc;
        if ((uint64_t)fs_checkpoint_step(pck) < p->phase_steps[k]) {
            note("phase '%s' stopped before its last step ([run] stop_after): continue with --resume\n",
                 p->phase_names[k]);
            return FS_OK;
        }
        snprintf(prev, sizeof prev, "%s", pck);
    }
    /* the final weights into this session: the next stage's teacher */
    int rc = fs_checkpoint_load(prev, p->student, NULL, NULL, err);
    *done = !rc;
    return rc;
}

int fs_distill_execute(fs_distill_plan *p, const fs_run_options *o, int resume, int *done, int *config_error,
                       fs_error *err) {
    fs_session *s = p->student;
    *done = 0;
    fs_topk_cache topk;
    memset(&topk, 0, sizeof topk);
    int rc = open_caches(p, &topk, err);
    if (!rc && p->n_phases == 1) {
        char ckpt[PATH_MAX];
        fs_session_checkpoint_path(s, ckpt, sizeof ckpt);
        rc = train_run(p, s, p->self, p->param_first, p->param_count, NULL, *p->teacher_cache ? &topk : NULL, o,
                       config_error, err);
        *done = !rc && fs_checkpoint_step(ckpt) >= (int64_t)p->phase_steps[0];
    } else if (!rc) {
        rc = run_phases(p, o, resume, &topk, done, config_error, err);
    }
    close_caches(p, &topk);
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
