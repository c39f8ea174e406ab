/* distill.c — the distill mode: the student (this session's graph) learns
 * from a frozen teacher (its own graph and checkpoint) through the distill
 * plugin's loss. Teacher and student see the same batches; the teacher runs
 * forward only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "fastserve/distill.h"
#include "train.h"

typedef struct distill_run {
    fs_session *teacher;
    const fs_distill_vtable *vt;
    void *self;
    fs_plugin_ctx ctx;
    uint32_t needs;
    float *dhidden_block;
    const float **dhidden;
} distill_run;

static int distill_objective(void *arg, fs_session *s, const int32_t *inputs, const int32_t *targets, size_t B,
                             size_t T, float dscale, double *loss, fs_error *err) {
    distill_run *d = arg;
    fs_model *tm = d->teacher->model, *sm = s->model;
    int rc = fs_model_forward(tm, inputs, B, T, err);
    if (!rc) rc = fs_model_forward(sm, inputs, B, T, err);
    if (rc) return rc;
    size_t V = sm->cfg.vocab, Ls = sm->cfg.n_layer, Lt = tm->cfg.n_layer;
    fs_distill_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.B = B;
    a.T = T;
    a.V = V;
    a.teacher_logits = fs_tensor_cpu_f32(tm->logits, 3, B, T, V, 0);
    a.student_logits = fs_tensor_cpu_f32(sm->logits, 3, B, T, V, 0);
    a.labels = targets;
    a.dstudent_logits = fs_tensor_cpu_f32(sm->dlogits, 3, B, T, V, 0);
    fs_tensor *th = NULL, *sh = NULL, *dsh = NULL;
    if (d->needs & FS_DISTILL_NEEDS_HIDDEN) {
        size_t Cs = sm->cfg.n_embd, Ct = tm->cfg.n_embd;
        th = calloc(Lt + 1, sizeof *th);
        sh = calloc(Ls + 1, sizeof *sh);
        dsh = calloc(Ls + 1, sizeof *dsh);
        if (!th || !sh || !dsh) {
            free(th), free(sh), free(dsh);
            return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i <= Lt; i++) th[i] = fs_tensor_cpu_f32((float *)fs_model_hidden(tm, i), 3, B, T, Ct, 0);
        memset(d->dhidden_block, 0, (Ls + 1) * B * T * Cs * sizeof(float));
        for (size_t i = 0; i <= Ls; i++) {
            sh[i] = fs_tensor_cpu_f32((float *)fs_model_hidden(sm, i), 3, B, T, Cs, 0);
            dsh[i] = fs_tensor_cpu_f32(d->dhidden_block + i * B * T * Cs, 3, B, T, Cs, 0);
            d->dhidden[i] = dsh[i].data;
        }
        a.teacher_hidden = th;
        a.student_hidden = sh;
        a.dstudent_hidden = dsh;
    }
    fs_error perr = {0};
    rc = d->vt->loss(d->self, &a, loss, &perr);
    free(th);
    free(sh);
    free(dsh);
    if (rc) return fs_error_set(err, rc, "distill plugin: %s", perr.message);
    if (dscale != 1.0f) {
        size_t n = B * T * V;
        for (size_t i = 0; i < n; i++) sm->dlogits[i] *= dscale;
        if (d->dhidden_block) {
            size_t nh = (Ls + 1) * B * T * sm->cfg.n_embd;
            for (size_t i = 0; i < nh; i++) d->dhidden_block[i] *= dscale;
        }
    }
    return fs_model_backward(sm, (d->needs & FS_DISTILL_NEEDS_HIDDEN) ? d->dhidden : NULL, err);
}

int fs_mode_distill(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    *config_error = 1;
    const fs_config *dc = s->distill_cfg;
    const char *tgraph = fs_config_string(dc, "teacher");
    if (!tgraph || !*tgraph)
        return fs_error_set(err, FS_ERR_INVALID, "[distill] teacher: required by --mode distill: the teacher's graph file");
    fs_graph *tg;
    fs_error gerr = {0};
    int rc = fs_graph_load(&tg, tgraph, &gerr);
    if (rc) return fs_error_set(err, rc, "%s: teacher graph: %s", fs_config_where(dc, "teacher"), gerr.message);
    distill_run d = {0};
    rc = fs_session_open(&d.teacher, tg, &gerr);
    if (rc) return fs_error_set(err, rc, "teacher graph %s: %s", tgraph, gerr.message);
    fs_model *tm = d.teacher->model, *sm = s->model;
    if (tm->cfg.vocab != sm->cfg.vocab) {
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "%s: the teacher's vocabulary has %zu tokens, the student's %zu: they must be equal",
                          fs_config_where(dc, "teacher"), tm->cfg.vocab, sm->cfg.vocab);
        goto done;
    }
    if (tm->cfg.max_seq < sm->cfg.max_seq) {
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: the teacher's max_seq %zu is shorter than the student's %zu",
                          fs_config_where(dc, "teacher"), tm->cfg.max_seq, sm->cfg.max_seq);
        goto done;
    }
    char tckpt[PATH_MAX];
    const char *tc = fs_config_string(dc, "teacher_checkpoint");
    if (tc && *tc)
        snprintf(tckpt, sizeof tckpt, "%s", tc);
    else
        fs_session_checkpoint_path(d.teacher, tckpt, sizeof tckpt);
    if (access(tckpt, R_OK) != 0) { /* a file the graph names: a configuration error */
        rc = fs_error_set(err, FS_ERR_NOT_FOUND, "%s: teacher checkpoint %s: %s (train the teacher first)",
                          tc && *tc ? fs_config_where(dc, "teacher_checkpoint") : fs_config_where(dc, "teacher"), tckpt,
                          strerror(errno));
        goto done;
    }
    *config_error = 0; /* from here on a failure is in the work: a corrupt checkpoint is exit status 1 */
    rc = fs_checkpoint_load(tckpt, d.teacher, NULL, NULL, err);
    if (rc) goto done;
    d.vt = s->distill.plugin->desc->vtable;
    fs_plugin_ctx_init(&d.ctx, &s->host, s->distill.config, "plugin.distill", s->distill.plugin->desc->name);
    fs_distill_config cfg = {
        .struct_size = sizeof cfg,
        .vocab = sm->cfg.vocab,
        .student_layers = sm->cfg.n_layer,
        .teacher_layers = tm->cfg.n_layer,
        .student_embd = sm->cfg.n_embd,
        .teacher_embd = tm->cfg.n_embd,
        .student_heads = sm->cfg.n_head,
        .teacher_heads = tm->cfg.n_head,
        .max_seq = sm->cfg.max_seq,
        .device = {FS_DEVICE_CPU, 0},
    };
    fs_error perr = {0};
    rc = d.vt->create(&d.self, &s->host.api, &d.ctx, &cfg, &perr);
    if (rc) {
        rc = fs_error_set(err, rc, "distill plugin '%s': %s", s->distill.plugin->desc->name, perr.message);
        goto done;
    }
    d.needs = d.vt->needs(d.self);
    if (d.needs & FS_DISTILL_NEEDS_HIDDEN) {
        size_t B = (size_t)fs_config_int(s->train_cfg, "batch"), T = sm->cfg.max_seq;
        d.dhidden_block = calloc((sm->cfg.n_layer + 1) * B * T * sm->cfg.n_embd, sizeof(float));
        d.dhidden = calloc(sm->cfg.n_layer + 1, sizeof *d.dhidden);
        if (!d.dhidden_block || !d.dhidden) {
            rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    fprintf(stderr, "fsrun: distill: teacher %s (%zu parameters) -> student (%zu parameters), plugin %s\n", tckpt,
            tm->n_params, sm->n_params, s->distill.plugin->desc->name);
    fs_objective obj = {"distill", distill_objective, &d};
    rc = fs_train_loop(s, o, &obj, config_error, err);
done:
    if (d.self) d.vt->destroy(d.self);
    free(d.dhidden_block);
    free(d.dhidden);
    fs_session_close(d.teacher);
    return rc;
}
