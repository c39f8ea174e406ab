/* distill_chain.c — [distill.stage.N]: a chain of distillations.
 *
 *   [distill]            teacher = big.ini          the first teacher
 *   [distill.stage.1]    plugin = tinybert, n_layer = 4, steps = 300
 *   [distill.stage.2]    plugin = distilbert, n_layer = 2, init = teacher-every-other-layer
 *
 * Stage N's student is the graph's own model with the stage's n_layer /
 * n_head / n_embd, trained for its steps with its plugin (and its plugin's
 * keys) into its out (default <[run] out>/stage<N>); stage N + 1 learns from
 * it. Keys a stage does not set come from [distill] (those its plugin
 * knows). Every stage is checked before the first trains. With --resume
 * (or [train] resume) a finished stage is skipped and a half-done one
 * continues from its checkpoint; a stage stopped by its stop_after (or
 * [run] stop_after) pauses the chain. The end is a table of every stage:
 * shape, parameters, size against the first teacher, validation loss. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/data.h"
#include "modes/distill/distill_internal.h"
#include "io/metrics.h"
#include "core/schema.h"

#define MAX_STAGES 32

int fs_graph_has_stages(const fs_graph *g) {
    for (size_t i = 0; i < fs_graph_count(g); i++)
        if (strncmp(fs_graph_at(g, i)->section, "distill.stage.", 14) == 0) return 1;
    for (int n = 1; n <= MAX_STAGES; n++) {
        char sec[32];
        snprintf(sec, sizeof sec, "distill.stage.%d", n);
        if (fs_graph_has_section(g, sec)) return 1;
    }
    return 0;
}

/* A stage's graph keeps everything but the chain's own sections. */
static int keep_non_distill(const char *section) {
    return strcmp(section, "distill") != 0 && strncmp(section, "distill.stage.", 14) != 0;
}

typedef struct stage {
    int n;
    char section[32];
    fs_plugin_instance inst; /* the stage's keys, resolved against the original graph */
    fs_session *session;
    fs_distill_plan plan;
    int planned;
    char out[PATH_MAX], ckpt[PATH_MAX + 32];
    uint64_t steps; /* of the last phase: what the final checkpoint reaches */
    int64_t step;   /* reached */
    int done;
    double val_loss;
} stage;

/* Stage numbers 1..n, every one present, none beyond. */
static int count_stages(const fs_graph *g, size_t *n, fs_error *err) {
    int last = 0;
    for (int k = 1; k <= MAX_STAGES + 1; k++) {
        char sec[32];
        snprintf(sec, sizeof sec, "distill.stage.%d", k);
        if (fs_graph_has_section(g, sec)) last = k;
    }
    if (last > MAX_STAGES)
        return fs_error_set(err, FS_ERR_INVALID, "%s: at most %d [distill.stage.N] sections", fs_graph_path(g),
                            MAX_STAGES);
    for (int k = 1; k <= last; k++) {
        char sec[32];
        snprintf(sec, sizeof sec, "distill.stage.%d", k);
        if (!fs_graph_has_section(g, sec))
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: [distill.stage.%d] is missing: stages are numbered 1, 2, ... without gaps",
                                fs_graph_path(g), k);
    }
    if (last == 0) /* a section whose number is not one we count (0, huge) */
        return fs_error_set(err, FS_ERR_INVALID, "%s: stages are [distill.stage.1], [distill.stage.2], ...",
                            fs_graph_path(g));
    *n = (size_t)last;
    return FS_OK;
}

/* The stage's graph: the original without [distill*], plus the stage. */
static int stage_session(stage *st, fs_session *s, fs_error *err) {
    const fs_config *c = st->inst.config;
    const fs_param_spec *spec = st->inst.spec;
    size_t n_spec = fs_schema_distill_stage.n + st->inst.plugin->desc->n_params;
    fs_graph_change *changes = calloc(n_spec + 8, sizeof *changes);
    if (!changes) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    size_t n = 0;
    changes[n++] = (fs_graph_change){"distill", "plugin", st->inst.plugin->desc->name};
    static const char *const model_keys[] = {"n_layer", "n_head", "n_embd"};
    for (size_t i = 0; i < 3; i++)
        if (fs_config_int(c, model_keys[i]) > 0)
            changes[n++] = (fs_graph_change){"model", model_keys[i], fs_config_string(c, model_keys[i])};
    if (fs_config_int(c, "steps") > 0) changes[n++] = (fs_graph_change){"train", "steps", fs_config_string(c, "steps")};
    if (fs_config_is_set(c, "stop_after"))
        changes[n++] = (fs_graph_change){"run", "stop_after", fs_config_string(c, "stop_after")};
    changes[n++] = (fs_graph_change){"run", "out", st->out};
    changes[n++] = (fs_graph_change){"train", "resume", "false"}; /* the chain decides */
    changes[n++] = (fs_graph_change){"generate", "max_tokens", "0"};
    /* the rest of the stage's keys go to its [distill] */
    for (size_t i = 0; i < n_spec; i++) {
        const char *k = spec[i].name;
        int structural = 0;
        for (size_t j = 0; j < 7; j++) structural |= strcmp(k, fs_schema_distill_stage.spec[j].name) == 0;
        if (structural || !fs_config_is_set(c, k)) continue;
        changes[n++] = (fs_graph_change){"distill", k, fs_config_string(c, k)};
    }
    char name[PATH_MAX + 64];
    snprintf(name, sizeof name, "%s [distill.stage.%d]", fs_graph_path(s->graph) ? fs_graph_path(s->graph) : "graph",
             st->n);
    fs_error e = {0};
    int rc = fs_session_derive(&st->session, s->graph, name, keep_non_distill, changes, n, &e);
    if (rc) rc = fs_error_set(err, rc, "[distill.stage.%d]: %s", st->n, e.message);
    free(changes);
    return rc;
}

static void human(char *buf, size_t cap, size_t n) {
    if (n >= 1000000)
        snprintf(buf, cap, "%.2fM", (double)n / 1e6);
    else if (n >= 1000)
        snprintf(buf, cap, "%.1fk", (double)n / 1e3);
    else
        snprintf(buf, cap, "%zu", n);
}

/* The model's own parameters (its plugins' tensors not counted). */
static size_t own_params(const fs_model *m) { return fs_model_block(m)->n - fs_model_block(m)->n_plugin; }

static void print_table(stage *st, size_t n, fs_session *teacher, const char *tckpt, double tval, int have_val) {
    size_t P0 = own_params(teacher->model);
    printf("distill chain: %zu stage%s\n", n, n == 1 ? "" : "s");
    printf("%-5s  %-10s  %6s  %5s  %5s  %9s  %6s  %11s  %9s  %s\n", "stage", "plugin", "layers", "width", "heads",
           "params", "size", "steps", "val_loss", "checkpoint");
    char pn[32], vl[32], steps[48];
    human(pn, sizeof pn, P0);
    if (have_val)
        snprintf(vl, sizeof vl, "%.4f", tval);
    else
        snprintf(vl, sizeof vl, "-");
    const fs_model_config *c = fs_model_cfg(teacher->model);
    printf("%-5d  %-10s  %6zu  %5zu  %5zu  %9s  %6.3f  %11s  %9s  %s\n", 0, "(teacher)", c->n_layer, c->n_embd,
           c->n_head, pn, 1.0, "-", vl, tckpt);
    for (size_t i = 0; i < n; i++) {
        const fs_model *m = st[i].session->model;
        human(pn, sizeof pn, own_params(m));
        if (st[i].done && have_val)
            snprintf(vl, sizeof vl, "%.4f", st[i].val_loss);
        else
            snprintf(vl, sizeof vl, "-");
        if (st[i].done) {
            size_t k = 0;
            for (size_t ph = 0; ph < st[i].plan.n_phases && k + 24 < sizeof steps; ph++)
                k += (size_t)snprintf(steps + k, sizeof steps - k, "%s%llu", ph ? "+" : "",
                                      (unsigned long long)st[i].plan.phase_steps[ph]);
        } else
            snprintf(steps, sizeof steps, "%lld/%llu", (long long)(st[i].step > 0 ? st[i].step : 0),
                     (unsigned long long)st[i].steps);
        printf("%-5d  %-10s  %6zu  %5zu  %5zu  %9s  %6.3f  %11s  %9s  %s%s\n", st[i].n, st[i].inst.plugin->desc->name,
               fs_model_cfg(m)->n_layer, fs_model_cfg(m)->n_embd, fs_model_cfg(m)->n_head, pn, (double)own_params(m) / (double)P0, steps, vl,
               st[i].ckpt, st[i].done ? "" : " (not finished)");
    }
    printf("{\"mode\": \"distill-chain\", \"done\": %s, \"stages\": [", n && st[n - 1].done ? "true" : "false");
    printf("{\"stage\": 0, \"plugin\": null, \"n_layer\": %zu, \"n_embd\": %zu, \"n_head\": %zu, \"params\": %zu, "
           "\"size_ratio\": 1.0, \"val_loss\": ",
           c->n_layer, c->n_embd, c->n_head, P0);
    if (have_val)
        printf("%.6f", tval);
    else
        printf("null");
    printf(", \"done\": true, \"checkpoint\": ");
    fs_json_string(stdout, tckpt);
    printf("}");
    for (size_t i = 0; i < n; i++) {
        const fs_model *m = st[i].session->model;
        printf(", {\"stage\": %d, \"plugin\": ", st[i].n);
        fs_json_string(stdout, st[i].inst.plugin->desc->name);
        printf(", \"n_layer\": %zu, \"n_embd\": %zu, \"n_head\": %zu, \"params\": %zu, \"size_ratio\": %.6f, "
               "\"steps\": %llu, \"step\": %lld, \"val_loss\": ",
               fs_model_cfg(m)->n_layer, fs_model_cfg(m)->n_embd, fs_model_cfg(m)->n_head, own_params(m), (double)own_params(m) / (double)P0,
               (unsigned long long)st[i].steps, (long long)(st[i].step > 0 ? st[i].step : 0));
        if (st[i].done && have_val)
            printf("%.6f", st[i].val_loss);
        else
            printf("null");
        printf(", \"done\": %s, \"checkpoint\": ", st[i].done ? "true" : "false");
        fs_json_string(stdout, st[i].ckpt);
        printf("}");
    }
    printf("]}\n");
    fflush(stdout);
}

/* The chain: its stages, the first teacher and the validation text. */
typedef struct chain {
    fs_session *s; /* the graph's own session: [distill], [run], [data], [train] */
    stage *st;
    size_t n;
    fs_session *teacher;
    char tckpt[PATH_MAX];
    fs_dataset val;
} chain;

/* The first teacher: [distill] teacher's graph as a session of its own (one
 * process: teachers are whole replicas), and its checkpoint's path. */
static int open_teacher(chain *c, fs_error *err) {
    const fs_config *dc = c->s->distill_cfg;
    const char *tgraph = fs_config_string(dc, "teacher");
    if (!tgraph || !*tgraph)
        return fs_error_set(err, FS_ERR_INVALID,
                            "[distill] teacher: required by a chain of [distill.stage.N]: the first teacher's graph file");
    fs_graph *tg;
    fs_error gerr = {0};
    int rc = fs_graph_load(&tg, tgraph, &gerr);
    if (rc) return fs_error_set(err, rc, "%s: teacher graph: %s", fs_config_where(dc, "teacher"), gerr.message);
    if ((rc = fs_session_open_local(&c->teacher, tg, &gerr)))
        return fs_error_set(err, rc, "teacher graph %s: %s", tgraph, gerr.message);
    const char *tc = fs_config_string(dc, "teacher_checkpoint");
    if (tc && *tc)
        snprintf(c->tckpt, sizeof c->tckpt, "%s", tc);
    else
        fs_session_checkpoint_path(c->teacher, c->tckpt, sizeof c->tckpt);
    return FS_OK;
}

/* Stage i, checked before any trains: its keys, its directory, its
 * student's session and its distillation plan against its teacher (the
 * first teacher, or stage i - 1's student). */
static int plan_stage(chain *c, size_t i, fs_error *err) {
    fs_session *s = c->s;
    const fs_config *dc = s->distill_cfg;
    stage *x = &c->st[i];
    x->n = (int)i + 1;
    snprintf(x->section, sizeof x->section, "distill.stage.%d", x->n);
    const char *secs[] = {x->section, "distill"};
    int rc = fs_session_plugin_config(s, &x->inst, FS_PLUGIN_DISTILL, secs, 2, fs_schema_distill_stage.spec,
                                      fs_schema_distill_stage.n, err);
    if (rc) return rc;
    const char *o_dir = fs_config_string(x->inst.config, "out");
    if (o_dir && *o_dir)
        snprintf(x->out, sizeof x->out, "%s", o_dir);
    else
        snprintf(x->out, sizeof x->out, "%.4000s/stage%d", fs_config_string(s->run_cfg, "out"), x->n);
    snprintf(x->ckpt, sizeof x->ckpt, "%s/model.safetensors", x->out);
    if ((rc = stage_session(x, s, err))) return rc;
    fs_session *prev = i ? c->st[i - 1].session : c->teacher;
    const fs_model *tm = prev->model, *sm = x->session->model;
    if (i == 0 && fs_model_cfg(tm)->vocab != fs_model_cfg(sm)->vocab)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: the teacher's vocabulary has %zu tokens, the student's %zu: they must be equal",
                            fs_config_where(dc, "teacher"), fs_model_cfg(tm)->vocab, fs_model_cfg(sm)->vocab);
    if (i == 0 && fs_model_cfg(tm)->max_seq < fs_model_cfg(sm)->max_seq)
        return fs_error_set(err, FS_ERR_INVALID, "%s: the teacher's max_seq %zu is shorter than the student's %zu",
                            fs_config_where(dc, "teacher"), fs_model_cfg(tm)->max_seq, fs_model_cfg(sm)->max_seq);
    fs_error perr = {0};
    rc = fs_distill_plan_make(&x->plan, x->session, x->inst.config, x->inst.plugin, prev,
                              i ? c->st[i - 1].ckpt : c->tckpt, &perr);
    x->planned = 1;
    if (rc) {
        char tdesc[64];
        snprintf(tdesc, sizeof tdesc, "stage %d's student", x->n - 1);
        return fs_error_set(err, rc, "[distill.stage.%d] (its teacher: %s): %s", x->n, i ? tdesc : "[distill] teacher",
                            perr.message);
    }
    x->steps = x->plan.phase_steps[x->plan.n_phases - 1];
    return FS_OK;
}

/* The files the work reads: the first teacher's checkpoint (its existence
 * is a configuration error) and [data] val for the table. */
static int open_inputs(chain *c, fs_error *err) {
    const fs_config *dc = c->s->distill_cfg, *data = c->s->data_cfg;
    if (access(c->tckpt, R_OK) != 0) {
        const char *tc = fs_config_string(dc, "teacher_checkpoint");
        return fs_error_set(err, FS_ERR_NOT_FOUND, "%s: teacher checkpoint %s: %s (train the teacher first)",
                            tc && *tc ? fs_config_where(dc, "teacher_checkpoint") : fs_config_where(dc, "teacher"),
                            c->tckpt, strerror(errno));
    }
    const char *vpath = fs_config_string(data, "val");
    if (vpath && *vpath)
        return fs_session_dataset(c->s, "val", c->teacher->mcfg.max_seq + 1, &c->val, err);
    return FS_OK;
}

/* Stage by stage: a finished one (when resuming) loaded, the others
 * trained; a stage that stops early pauses the chain (rc 0). */
static int run_stages(chain *c, const fs_run_options *o, fs_error *err) {
    int resume = o->resume || fs_config_bool(c->s->train_cfg, "resume");
    for (size_t i = 0; i < c->n; i++) {
        stage *x = &c->st[i];
        x->step = resume ? fs_checkpoint_step(x->ckpt) : 0;
        if (x->step < 0)
            return fs_error_set(err, FS_ERR_INVALID, "%s: cannot read its step to resume stage %d", x->ckpt, x->n);
        if (resume && (uint64_t)x->step >= x->steps) {
            fprintf(stderr, "fsrun: distill chain: stage %d is done (%s)\n", x->n, x->ckpt);
            int rc = fs_checkpoint_load(x->ckpt, x->session, NULL, NULL, err);
            if (rc) return rc;
            x->done = 1;
            continue;
        }
        fprintf(stderr, "fsrun: distill chain: stage %d of %zu: %zu layers x %zu, plugin %s -> %s%s\n", x->n, c->n,
                x->session->mcfg.n_layer, x->session->mcfg.n_embd, x->inst.plugin->desc->name, x->out,
                x->step > 0 ? " (resuming)" : "");
        fs_run_options so = *o;
        so.resume = resume && x->plan.n_phases == 1 && x->step > 0;
        int cfg_err = 0;
        int rc = fs_distill_execute(&x->plan, &so, resume, &x->done, &cfg_err, err);
        if (rc) {
            char msg[sizeof err->message];
            snprintf(msg, sizeof msg, "%s", err->message);
            return fs_error_set(err, rc, "[distill.stage.%d]: %s", x->n, msg);
        }
        x->step = fs_checkpoint_step(x->ckpt);
        if (!x->done) {
            fprintf(stderr, "fsrun: distill chain: stage %d stopped at step %lld of %llu: rerun with --resume to "
                            "continue the chain\n",
                    x->n, (long long)x->step, (unsigned long long)x->steps);
            break;
        }
    }
    return FS_OK;
}

/* The table: every finished model on the same validation windows. */
static int evaluate_and_print(chain *c, fs_error *err) {
    int have_val = c->val.tokens != NULL;
    double tval = 0;
    size_t B = (size_t)fs_config_int(c->s->train_cfg, "batch");
    size_t windows = (size_t)fs_config_int(c->s->train_cfg, "val_batches") * B, ntok;
    int rc = FS_OK;
    if (have_val) rc = fs_evaluate(c->teacher->model, &c->val, B, windows, &tval, &ntok, err);
    for (size_t j = 0; j < c->n && have_val && !rc; j++)
        if (c->st[j].done)
            rc = fs_evaluate(c->st[j].session->model, &c->val, B, windows, &c->st[j].val_loss, &ntok, err);
    if (!rc) print_table(c->st, c->n, c->teacher, c->tckpt, tval, have_val);
    return rc;
}

static void chain_release(chain *c) {
    for (size_t j = 0; c->st && j < c->n; j++) {
        if (c->st[j].planned) fs_distill_plan_release(&c->st[j].plan);
        fs_session_close(c->st[j].session);
        fs_config_destroy(c->st[j].inst.config);
        free(c->st[j].inst.spec);
    }
    free(c->st);
    fs_dataset_release(&c->val);
    fs_session_close(c->teacher);
}

int fs_distill_chain(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    *config_error = 1;
    chain c = {.s = s};
    int rc = count_stages(s->graph, &c.n, err);
    if (rc) return rc;
    if (!(c.st = calloc(c.n, sizeof *c.st))) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    rc = open_teacher(&c, err);
    for (size_t i = 0; i < c.n && !rc; i++) rc = plan_stage(&c, i, err); /* every stage checked before any trains */
    if (!rc) rc = open_inputs(&c, err);
    if (!rc) {
        *config_error = 0;
        rc = fs_checkpoint_load(c.tckpt, c.teacher, NULL, NULL, err);
    }
    if (!rc) rc = run_stages(&c, o, err);
    if (!rc) rc = evaluate_and_print(&c, err);
    chain_release(&c);
    return rc;
}
