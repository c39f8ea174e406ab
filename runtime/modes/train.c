/* train.c — the training loop (see train.h) and the train mode.
 *
 * The loop is a run object (train_run) walked through four phases: set-up
 * (every check before any collective), the steps, a sample of generated
 * text, and the JSON summary. A step is its micro-batches, the gradients
 * finished across ranks, the optimizer, then metrics, validation and the
 * checkpoint. */
#include "modes/train.h"
#include "modes/train_device.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/crash.h"
#include "dist/pipeline.h"
#include "dist/world.h"
#include "fastserve/parallel.h"
#include "session/checkpoint.h"
#include "io/data.h"
#include "io/metrics.h"
#include "compute/blas.h"

int fs_objective_lm(void *arg, fs_session *s, const int32_t *inputs, const int32_t *targets, size_t B, size_t T,
                    float dscale, double *loss, fs_error *err) {
    (void)arg;
    int rc = fs_model_forward(s->model, inputs, B, T, err);
    if (rc) return rc;
    *loss = fs_model_loss(s->model, targets, dscale);
    return fs_model_backward(s->model, NULL, err);
}

typedef struct grads_hook {
    const fs_parallel_vtable *vt;
    void *self;
    const char *name;
    float *grads;
    int failed;
    fs_error err;
} grads_hook;

static void on_grads_ready(void *arg, size_t offset, size_t count) {
    grads_hook *h = arg;
    int rc = FS_OK;
    if (!h->failed) FS_PLUGIN_CALL("parallel", h->name, "grads_ready", -1, rc = h->vt->grads_ready(h->self, h->grads, offset, count, &h->err));
    if (rc) h->failed = 1;
}

/* A call through the parallel strategy's vtable, named if it crashes. */
#define PAR_CALL(s, call, statement) FS_PLUGIN_CALL("parallel", (s)->parallel.plugin->desc->name, call, -1, statement)

/* A parallel vtable member that exists (the plugin is new enough) and is set. */
#define PAR_HAS(s, member)                                                                                    \
    (FS_HAS_MEMBER((const fs_parallel_vtable *)(s)->parallel.plugin->desc->vtable,                           \
                   (s)->parallel.plugin->desc->vtable_size, fs_parallel_vtable, member) &&                    \
     ((const fs_parallel_vtable *)(s)->parallel.plugin->desc->vtable)->member)

/* Counters of the timed steps (the first step warms caches: not timed). */
typedef struct train_timing {
    double train_s, mm_flops, mm_s, finish_s; /* step time, matmul FLOPs and time, waits for the strategy */
    double sched_s, busy_s;                   /* inside the pipeline schedule: all of it, and computing */
    uint64_t tokens, steps;
    fs_parallel_stats st0, st1;               /* the strategy's counters at the first and last timed step */
} train_timing;

/* One invocation of the loop. */
typedef struct train_run {
    fs_session *s;
    fs_model *m;
    const fs_objective *obj;
    fs_train_device *dev;        /* the model on a compute backend, or NULL: the CPU's own kernels */
    const fs_parallel_vtable *pvt;
    void *pself;
    size_t B, T, accum, val_batches;
    size_t off, local_B, n_micro; /* this data rank's rows of the batch; pipeline micro-batches */
    uint64_t total, warmup, val_every, ckpt_every, first, end;
    int resume, lead, loss_here;
    int skip_nonfinite;          /* [train] on_nonfinite = skip */
    uint64_t max_skipped, skipped_in_row, skipped;
    int64_t last_ckpt_step;      /* of the checkpoint on disk (-1: none yet), for messages */
    const char *out;
    char ckpt[PATH_MAX];
    fs_dataset train, val;
    fs_adamw_config ac;
    fs_optimizer opt;
    fs_metrics met;
    fs_train_state ts;
    int32_t *inputs, *targets;
    grads_hook hook;
    double loss, val_loss;
    train_timing t;
} train_run;

static void stats_get(fs_session *s, fs_parallel_stats *st) {
    memset(st, 0, sizeof *st);
    st->struct_size = sizeof *st;
    fs_error ignored = {0};
    if (PAR_HAS(s, stats))
        PAR_CALL(s, "stats",
                 ((const fs_parallel_vtable *)s->parallel.plugin->desc->vtable)->stats(s->parallel.self, st, &ignored));
}

/* ---- set-up ---- */

static void read_settings(train_run *r, fs_session *s, const fs_run_options *o, const fs_objective *obj) {
    const fs_config *tc = s->train_cfg;
    r->s = s;
    r->m = s->model;
    r->obj = obj;
    r->pvt = s->parallel.plugin->desc->vtable;
    r->pself = s->parallel.self;
    r->B = (size_t)fs_config_int(tc, "batch");
    r->T = s->mcfg.max_seq;
    r->accum = (size_t)fs_config_int(tc, "grad_accum");
    r->total = (uint64_t)fs_config_int(tc, "steps");
    r->warmup = (uint64_t)fs_config_int(tc, "warmup");
    r->val_every = (uint64_t)fs_config_int(tc, "val_every");
    r->ckpt_every = (uint64_t)fs_config_int(tc, "checkpoint_every");
    r->val_batches = (size_t)fs_config_int(tc, "val_batches");
    r->resume = o->resume || fs_config_bool(tc, "resume");
    r->skip_nonfinite = !strcmp(fs_config_string(tc, "on_nonfinite"), "skip");
    r->max_skipped = (uint64_t)fs_config_int(tc, "max_skipped");
    r->last_ckpt_step = -1;
    r->out = fs_config_string(s->run_cfg, "out");
    fs_session_checkpoint_path(s, r->ckpt, sizeof r->ckpt);
    r->lead = fs_world_rank() == 0; /* writes files, prints */
    r->ac = (fs_adamw_config){fs_config_float(tc, "lr"), fs_config_float(tc, "beta1"), fs_config_float(tc, "beta2"),
                              fs_config_float(tc, "eps"), fs_config_float(tc, "weight_decay")};
    fs_optimizer_init(&r->opt, &r->ac);
    r->local_B = r->B;
    r->n_micro = 1;
    r->ts.val_loss = -1;
}

static int load_data(fs_session *s, const char *key, int required, fs_dataset *d, fs_error *err) {
    const char *path = fs_config_string(s->data_cfg, key);
    if (!path || !*path) {
        if (required)
            return fs_error_set(err, FS_ERR_INVALID, "[data] %s: required to train: set it to a text file", key);
        return FS_OK;
    }
    return fs_session_dataset(s, key, s->mcfg.max_seq + 1, d, err);
}

/* What the graph and the command line ask for exists: a failure here is a
 * configuration error (exit status 2). */
static int check_inputs(train_run *r, fs_error *err) {
    int rc;
    if ((rc = load_data(r->s, "train", 1, &r->train, err)) || (rc = load_data(r->s, "val", 0, &r->val, err)))
        return rc;
    if (!r->out || !*r->out)
        return fs_error_set(err, FS_ERR_INVALID, "%s: must name a directory for the checkpoint and metrics",
                            fs_config_where(r->s->run_cfg, "out"));
    if (r->resume && access(r->ckpt, F_OK) != 0)
        return fs_error_set(err, FS_ERR_NOT_FOUND, "resume: %s does not exist: train without resume first", r->ckpt);
    return fs_train_check_out(r->s, r->resume, err);
}

/* Fails now, not after an hour of training, if out is not writable. */
static int prepare_out_dir(const train_run *r, fs_error *err) {
    if (!r->lead) return FS_OK;
    int rc = fs_mkdirs(r->out, err);
    if (rc) return rc;
    if (access(r->out, W_OK) != 0)
        return fs_error_set(err, FS_ERR_IO, "[run] out = %s: directory is not writable: %s", r->out, strerror(errno));
    fs_checkpoint_recover(r->ckpt); /* what a run killed while writing its checkpoint left */
    return FS_OK;
}

/* One optimizer group per tensor of the block (plugins' tensors included);
 * ZeRO-1 owns this rank's range of the flat vector. */
static int build_optimizer(train_run *r, fs_error *err) {
    const fs_param_block *pb = fs_model_block(r->m);
    int rc = FS_OK;
    for (size_t i = 0; i < pb->n_views && !rc; i++)
        rc = fs_optimizer_add(&r->opt, pb->params + pb->views[i].offset, pb->grads + pb->views[i].offset,
                              pb->views[i].numel, pb->views[i].weight_decay, err);
    if (!rc && PAR_HAS(r->s, optimizer_shard)) {
        size_t lo = 0, hi = pb->n;
        PAR_CALL(r->s, "optimizer_shard", rc = r->pvt->optimizer_shard(r->pself, pb->n, &lo, &hi, err));
        if (!rc) rc = fs_optimizer_shard(&r->opt, lo, hi, pb->n, err);
    }
    return rc ? rc : fs_optimizer_ready(&r->opt, err);
}

/* A pipeline keeps the micro-batches between their forward and backward
 * in activation slots: as many as the schedule has in flight. */
static int set_pipeline_slots(train_run *r, fs_error *err) {
    const fs_parallel_topology *t = &r->s->topo;
    r->n_micro = t->pipeline > 1 ? (size_t)t->microbatches : 1;
    if (t->pipeline == 1) return FS_OK;
    size_t slots = r->n_micro;
    if (!PAR_HAS(r->s, run_schedule) || !PAR_HAS(r->s, pipeline_slots))
        return fs_error_set(err, FS_ERR_INVALID, "parallel plugin '%s' pipelines but cannot run a schedule",
                            r->s->parallel.plugin->desc->name);
    int rc;
    PAR_CALL(r->s, "pipeline_slots", rc = r->pvt->pipeline_slots(r->pself, &slots, err));
    return rc ? rc : fs_model_set_slots(r->m, slots, err);
}

/* Fresh weights from the seed (or [model] init's), then the checkpoint's
 * when resuming. */
static int init_or_resume(train_run *r, fs_error *err) {
    uint64_t seed = (uint64_t)fs_config_int(r->s->train_cfg, "seed");
    int rc = fs_train_init_weights(r->s, seed, r->resume, err);
    if (rc) return rc;
    fs_rng_seed(&r->ts.rng, seed ^ 0x5DEECE66Dull);
    if (!r->resume) return FS_OK;
    if ((rc = fs_checkpoint_load(r->ckpt, r->s, &r->opt, &r->ts, err))) return rc;
    r->last_ckpt_step = (int64_t)r->ts.step;
    if (r->lead)
        fs_log(FS_LOG_INFO, NULL, "resuming %s at step %llu of %llu", r->ckpt, (unsigned long long)r->ts.step,
               (unsigned long long)r->total);
    return FS_OK;
}

/* The backend the session asks for, when the graph trains there, with the
 * weights (and a resumed run's moments) uploaded. Refusals are
 * configuration errors; failures of the device are not. */
static int open_device(train_run *r, int *config_error, fs_error *err) {
    *config_error = 1;
    int lm = r->obj->fn == fs_objective_lm;
    int rc = fs_train_device_open(&r->dev, r->s, lm, r->B, err);
    if (rc) return rc;
    const fs_config *tc = r->s->train_cfg;
    if (!r->dev && !strcmp(fs_config_string(tc, "precision"), "bf16"))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: %s trains on the runtime's own CPU kernels here, which compute fp32: set precision "
                            "= fp32, or train on a GPU ([run] device = cuda)",
                            fs_config_where(tc, "precision"), r->obj->mode);
    if (!r->dev) return FS_OK;
    *config_error = 0;
    return fs_train_device_upload(r->dev, &r->opt, err);
}

/* Metrics (rank 0), this rank's rows of each batch, the batch buffers. */
static int open_outputs(train_run *r, fs_error *err) {
    int rc;
    if (r->lead) {
        if ((rc = fs_metrics_open(&r->met, r->out, fs_config_string(r->s->run_cfg, "progress"),
                                  (uint64_t)fs_config_int(r->s->run_cfg, "log_every"), r->resume, r->ts.step, err)))
            return rc;
    } else {
        r->met.quiet = 1; /* no file, no progress: rank 0 reports */
    }
    PAR_CALL(r->s, "batch_slice", rc = r->pvt->batch_slice(r->pself, r->B, &r->off, &r->local_B, err));
    if (rc) return rc;
    r->inputs = malloc(r->B * r->T * sizeof(int32_t));
    r->targets = malloc(r->B * r->T * sizeof(int32_t));
    if (!r->inputs || !r->targets) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    return FS_OK;
}

/* Everything before the first step. Nothing collective happens until every
 * rank agrees it succeeded (world.h); *config_error tells a configuration
 * error (exit status 2) from a failure of the work. */
static int train_setup(train_run *r, int *config_error, fs_error *err) {
    *config_error = 1;
    int rc = check_inputs(r, err);
    if (!rc) {
        *config_error = 0;
        rc = prepare_out_dir(r, err);
    }
    if (!rc) rc = build_optimizer(r, err);
    if (!rc) rc = set_pipeline_slots(r, err);
    /* [model] init's weights not fitting the graph is a configuration error */
    if (!rc && *fs_config_string(r->s->model_cfg, "init") && !r->resume) *config_error = 1;
    if (!rc) rc = init_or_resume(r, err);
    if (!rc) rc = open_device(r, config_error, err);
    if (!rc) *config_error = 0;
    if (!rc) rc = open_outputs(r, err);
    int code;
    if ((rc = fs_world_agree(rc, *config_error ? 2 : 1, &code, err))) {
        *config_error = code == 2;
        return rc;
    }
    fs_world_begin_work();
    r->hook = (grads_hook){r->pvt, r->pself, r->s->parallel.plugin->desc->name, fs_model_block(r->m)->grads, 0, {0}};
    /* the loss is counted once per data rank: tensor ranks hold copies of
     * it, and only the last pipeline stage computes one */
    r->loss_here = r->s->topo.tensor_rank == 0 && r->s->topo.pipeline_rank == r->s->topo.pipeline - 1;
    uint64_t stop_after = (uint64_t)fs_config_int(r->s->run_cfg, "stop_after");
    r->first = r->ts.step;
    r->end = stop_after && stop_after < r->total ? stop_after : r->total;
    r->loss = r->ts.loss;
    r->val_loss = r->ts.val_loss;
    return FS_OK;
}

static void announce(const train_run *r) {
    if (!r->lead) return;
    const fs_session *s = r->s;
    fprintf(stderr, "fsrun: %s: %zu parameters, %zu layers, T = %zu, batch %zu x %zu, %llu steps, %d threads\n",
            r->obj->mode, fs_model_block(r->m)->n - fs_model_block(r->m)->n_plugin, s->mcfg.n_layer, r->T, r->B, r->accum,
            (unsigned long long)r->total, fs_threads_get());
    if (r->dev) fprintf(stderr, "fsrun: on %s\n", fs_train_device_describe(r->dev));
    if (fs_world_size() > 1)
        fprintf(stderr, "fsrun: %d ranks (%s): data %d x tensor %d x pipeline %d, %d threads each\n",
                fs_world_size(), s->comm->engine, s->topo.data, s->topo.tensor, s->topo.pipeline, fs_threads_get());
}

/* ---- one step ---- */

/* This rank's share of the squared global gradient norm, so that the sum
 * over every rank counts each gradient once: a ZeRO shard is the only
 * place its range is final, so every data rank adds its own; without
 * shards the data ranks hold identical replicas and data rank 0 speaks for
 * them. Under tensor parallelism a replicated tensor (LayerNorms,
 * row-parallel biases, embeddings) is the same on every tensor rank and
 * tensor rank 0 counts it; under pipeline parallelism the last stage's copy
 * of the tied wte is the first stage's. */
static double owned_sumsq(const train_run *r) {
    const fs_param_block *pb = fs_model_block(r->m);
    int data_speaker = r->s->topo.data_rank == 0;
    if (!fs_optimizer_sharded(&r->opt) && !data_speaker) return 0.0;
    double sum = 0;
    for (size_t i = 0; i < pb->n_views; i++) {
        const fs_param_view *v = &pb->views[i];
        if (v->split == FS_SPLIT_NONE && r->s->topo.tensor_rank != 0) continue;
        if (!fs_model_held(r->m)->has_embed && !strcmp(v->name, "transformer.wte.weight")) continue; /* the head's copy */
        sum += fs_optimizer_sumsq(&r->opt, v->offset, v->offset + v->numel);
    }
    return sum;
}

/* Micro-batch a of the step: forward, loss and backward of this rank's rows
 * (through the strategy's schedule when pipelined). */
static int micro_batch(train_run *r, size_t a, double *loss, fs_error *err) {
    fs_dataset_sample(&r->train, &r->ts.rng, r->inputs, r->targets, r->B, r->T); /* every rank draws the whole
                                                                                      batch: the RNG stays in step */
    /* the strategy hears of final gradients only in the last micro-step:
     * earlier ones accumulate locally (DDP's no_sync) */
    fs_model_on_grads_ready(r->m, a + 1 == r->accum ? on_grads_ready : NULL, &r->hook);
    const int32_t *in = r->inputs + r->off * r->T, *tg = r->targets + r->off * r->T;
    int rc;
    if (r->s->topo.pipeline > 1) {
        /* the strategy runs the schedule; the model computes each chunk's
         * micro-batch; gradients are final only after the whole schedule
         * (and the tied embedding's sum): the strategy hears of them in
         * grads_finish */
        fs_pipeline_step ps = {r->m, in, tg, r->local_B / r->n_micro, r->T, 1.0f / (float)(r->accum * r->n_micro),
                               0, 0, 0};
        fs_stage_ops ops;
        fs_pipeline_step_ops(&ps, &ops);
        fs_model_on_grads_ready(r->m, NULL, NULL);
        double t0 = fs_now();
        PAR_CALL(r->s, "run_schedule", rc = r->pvt->run_schedule(r->pself, &ops, err));
        r->t.sched_s += fs_now() - t0;
        r->t.busy_s += ps.busy_s;
        *loss = ps.n_loss ? ps.loss_sum / (double)ps.n_loss : 0.0;
    } else if (r->dev) {
        rc = fs_train_device_micro_batch(r->dev, in, tg, r->local_B, 1.0f / (float)r->accum, a + 1 == r->accum, loss,
                                         err);
    } else {
        rc = r->obj->fn(r->obj->arg, r->s, in, tg, r->local_B, r->T, 1.0f / (float)r->accum, loss, err);
    }
    if (!rc && r->hook.failed) {
        *err = r->hook.err;
        rc = err->status;
    }
    return rc;
}

/* The step's gradients made final across ranks (the tied embedding's two
 * pipeline copies summed, the strategy's reduction), then the global loss
 * and gradient norm, and clipping. */
static int finish_gradients(train_run *r, double step_loss, double *loss, double *norm, double *wait_s,
                            fs_error *err) {
    const fs_param_block *pb = fs_model_block(r->m);
    const fs_model_part *part = fs_model_held(r->m);
    fs_session *s = r->s;
    int rc;
    if (r->dev) { /* data parallelism alone: every rank then holds the mean gradient */
        double t0 = fs_now(), sumsq, sums[2] = {step_loss * (double)r->local_B, (double)r->local_B};
        if ((rc = fs_train_device_grads_finish(r->dev, err)) || (rc = fs_train_device_grad_sumsq(r->dev, &sumsq, err)))
            return rc;
        *wait_s += fs_now() - t0;
        PAR_CALL(s, "reduce_sum", rc = r->pvt->reduce_sum(r->pself, sums, 2, err));
        *loss = sums[0] / sums[1];
        *norm = sqrt(sumsq);
        return rc;
    }
    double t0 = fs_now();
    /* the tied embedding's two copies (first and last stage) sum their gradients; an untied head is the
     * last stage's alone */
    if (s->topo.pipeline > 1 && !s->mcfg.untied_head && (part->has_embed || part->has_head)) {
        const fs_param_view *wte = fs_model_find(r->m, "transformer.wte.weight");
        PAR_CALL(s, "embedding_all_reduce", rc = r->pvt->embedding_all_reduce(r->pself, pb->grads + wte->offset, wte->numel, err));
        if (rc) return rc;
    }
    PAR_CALL(s, "grads_finish", rc = r->pvt->grads_finish(r->pself, pb->grads, pb->n, err));
    if (rc) return rc;
    *wait_s += fs_now() - t0;
    double sums[3] = {r->loss_here ? step_loss * (double)r->local_B : 0.0, r->loss_here ? (double)r->local_B : 0.0,
                      owned_sumsq(r)};
    PAR_CALL(s, "reduce_sum", rc = r->pvt->reduce_sum(r->pself, sums, 3, err));
    if (rc) return rc;
    *loss = sums[0] / sums[1];
    *norm = sqrt(sums[2]);
    return FS_OK;
}

static int zero_grad(train_run *r, fs_error *err) {
    if (r->dev) return fs_train_device_zero_grad(r->dev, err);
    fs_model_zero_grad(r->m);
    return FS_OK;
}

static const char *number_kind(double x) { return isnan(x) ? "NaN" : isinf(x) ? "Inf" : "finite"; }

/* What a run that stops now leaves, for its message. */
static void last_checkpoint(const train_run *r, char *buf, size_t cap) {
    if (r->last_ckpt_step >= 0)
        snprintf(buf, cap, "%s (step %lld) is unchanged", r->ckpt, (long long)r->last_ckpt_step);
    else
        snprintf(buf, cap, "no checkpoint was written");
}

/* A step whose loss or gradient norm is NaN or Inf. Every rank holds the
 * same reduced sums, so every rank decides the same: stop before anything
 * of the step is written, or (on_nonfinite = skip) drop it as a loss
 * scaler does: no update, the gradients zeroed; too many in a row stop. */
static int nonfinite_step(train_run *r, double loss, double norm, fs_error *err) {
    const fs_config *tc = r->s->train_cfg;
    uint64_t step = r->ts.step + 1;
    char what[96], last[PATH_MAX + 64];
    snprintf(what, sizeof what, "the loss is %s and the gradient norm %s", number_kind(loss), number_kind(norm));
    last_checkpoint(r, last, sizeof last);
    int rc = FS_OK;
    if (!r->skip_nonfinite) {
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "step %llu: %s: training diverged; %s: lower %s, keep [train] grad_clip on (%s), or set "
                          "[train] on_nonfinite = skip to drop such steps",
                          (unsigned long long)step, what, last, fs_config_where(tc, "lr"),
                          fs_config_string(tc, "grad_clip"));
    } else if (++r->skipped_in_row >= r->max_skipped) {
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "step %llu: %s, %llu steps in a row (%s): training diverged; %s: lower %s or start from an "
                          "earlier checkpoint",
                          (unsigned long long)step, what, (unsigned long long)r->skipped_in_row,
                          fs_config_where(tc, "max_skipped"), last, fs_config_where(tc, "lr"));
    }
    if (rc) { /* every rank found it: they agree, rank 0 says it, none aborts the job */
        int code;
        return fs_world_agree(rc, 1, &code, err);
    }
    r->skipped++;
    if ((rc = zero_grad(r, err))) return rc;
    fs_metrics_skipped(&r->met, step, r->total, what, r->skipped_in_row, r->max_skipped);
    return FS_OK;
}

/* Clipping to [train] grad_clip, then AdamW at the scheduled lr; a ZeRO
 * shard's update reaches every rank. */
static int optimizer_step(train_run *r, double norm, double *lr, double *wait_s, fs_error *err) {
    double max_norm = fs_config_float(r->s->train_cfg, "grad_clip");
    *lr = fs_lr_schedule(r->ac.lr, fs_config_float(r->s->train_cfg, "min_lr_ratio"), r->ts.step, r->warmup,
                         r->total);
    if (r->dev) { /* fs_optimizer_clip_to's factor, applied inside AdamW */
        float scale = max_norm > 0 && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
        return fs_train_device_update(r->dev, &r->opt, *lr, scale, err);
    }
    fs_optimizer_clip_to(&r->opt, max_norm, norm);
    fs_optimizer_step(&r->opt, *lr);
    const fs_param_block *pb = fs_model_block(r->m);
    if (!PAR_HAS(r->s, params_updated)) return FS_OK;
    double t0 = fs_now();
    int rc;
    PAR_CALL(r->s, "params_updated", rc = r->pvt->params_updated(r->pself, pb->params, pb->n, err));
    *wait_s += fs_now() - t0;
    return rc;
}

/* Adds a finished step to the timed counters (not the first: it warms
 * caches, unless it is the only one). */
static void account_step(train_run *r, double step_s, double finish_s) {
    if (r->ts.step > r->first + 1 || r->end - r->first == 1) {
        double f, sec;
        fs_blas_stats(&f, &sec);
        r->t.mm_flops += f;
        r->t.mm_s += sec;
        r->t.train_s += step_s;
        r->t.finish_s += finish_s;
        r->t.steps++;
        r->t.tokens += (uint64_t)(r->B * r->T * r->accum);
        stats_get(r->s, &r->t.st1); /* before validation and checkpoints, which are not steps */
    } else {
        stats_get(r->s, &r->t.st0); /* counters start with the timed steps too */
        r->t.sched_s = r->t.busy_s = 0;
    }
}

/* Held-out loss of a pipelined model: the stages forward only, the sum
 * then reaching every rank. */
static int pipeline_batch_sum(void *arg, const int32_t *inputs, const int32_t *targets, size_t nb, size_t T,
                              double *sum, fs_error *err) {
    fs_session *s = arg;
    int rc = fs_pipeline_loss(s->model, &s->topo, s->comm, inputs, targets, nb, T, sum, err);
    if (s->topo.tensor_rank != 0 || s->topo.data_rank != 0) *sum = 0; /* counted once */
    return rc;
}

static int evaluate(train_run *r, double *loss, fs_error *err) {
    size_t max_windows = r->val_batches * r->B, n;
    double sum;
    int rc;
    if (r->dev) {
        rc = fs_evaluate_sum(&r->val, r->T, r->B, max_windows, fs_train_device_batch_sum, r->dev, &sum, &n, err);
        *loss = n ? sum / (double)n : 0.0;
        return rc;
    }
    if (r->s->topo.pipeline == 1) return fs_evaluate(r->m, &r->val, r->B, max_windows, loss, &n, err);
    rc = fs_evaluate_sum(&r->val, r->T, r->B, max_windows, pipeline_batch_sum, r->s, &sum, &n, err);
    if (!rc) PAR_CALL(r->s, "reduce_sum", rc = r->pvt->reduce_sum(r->pself, &sum, 1, err));
    *loss = n ? sum / (double)n : 0.0;
    return rc;
}

/* Validation and the checkpoint when due (after a step, done or skipped).
 * A validation loss that is not finite stops the run before the
 * checkpoint: the weights it would save are what diverged. */
static int scheduled_work(train_run *r, fs_error *err) {
    int rc;
    if (r->val.tokens && ((r->val_every && r->ts.step % r->val_every == 0) || r->ts.step == r->end)) {
        double v;
        if ((rc = evaluate(r, &v, err))) return rc;
        if (!isfinite(v)) {
            int code;
            char last[PATH_MAX + 64];
            last_checkpoint(r, last, sizeof last);
            rc = fs_error_set(err, FS_ERR_INVALID,
                              "step %llu: the validation loss is %s: training diverged; %s: lower %s, or keep "
                              "[train] grad_clip on",
                              (unsigned long long)r->ts.step, number_kind(v), last,
                              fs_config_where(r->s->train_cfg, "lr"));
            return fs_world_agree(rc, 1, &code, err);
        }
        r->val_loss = r->ts.val_loss = v;
        fs_metrics_val(&r->met, r->ts.step, r->val_loss);
    }
    if ((r->ckpt_every && r->ts.step % r->ckpt_every == 0) || r->ts.step == r->end) {
        if (r->dev && (rc = fs_train_device_download(r->dev, &r->opt, err))) return rc;
        if ((rc = fs_checkpoint_save(r->ckpt, r->s, &r->opt, &r->ts, err))) return rc;
        r->last_ckpt_step = (int64_t)r->ts.step;
    }
    return FS_OK;
}

/* After the optimizer: the metrics line, then validation and the
 * checkpoint when due. Not training time. */
static int after_step(train_run *r, double lr, double norm, double step_s, fs_error *err) {
    uint64_t step_tokens = (uint64_t)(r->B * r->T * r->accum);
    double tps = r->t.train_s > 0 ? (double)r->t.tokens / r->t.train_s : (double)step_tokens / step_s;
    fs_metrics_step(&r->met, r->ts.step, r->total, r->loss, lr, norm, tps,
                    (double)(r->end - r->ts.step) * (double)step_tokens / tps);
    return scheduled_work(r, err);
}

static int train_step(train_run *r, fs_error *err) {
    double t0 = fs_now(), step_loss = 0, l = 0, loss, norm, lr;
    fs_blas_stats_reset();
    int rc = zero_grad(r, err);
    for (size_t a = 0; a < r->accum && !rc; a++) {
        rc = micro_batch(r, a, &l, err);
        step_loss += l / (double)r->accum;
    }
    fs_model_on_grads_ready(r->m, NULL, NULL);
    if (rc) return rc;
    double wait_s = 0; /* for the strategy after backward: finishing the gradients, gathering ZeRO's shards */
    if ((rc = finish_gradients(r, step_loss, &loss, &norm, &wait_s, err))) return rc;
    if (!isfinite(loss) || !isfinite(norm)) {
        if ((rc = nonfinite_step(r, loss, norm, err))) return rc;
        r->ts.step++; /* the step's batches are spent; the schedule moves on, as with a loss scaler */
        fs_blas_stats_enable(0);
        rc = scheduled_work(r, err);
        fs_blas_stats_enable(1);
        return rc;
    }
    r->skipped_in_row = 0;
    r->loss = r->ts.loss = loss;
    if ((rc = optimizer_step(r, norm, &lr, &wait_s, err))) return rc;
    r->ts.step++;
    double step_s = fs_now() - t0;
    account_step(r, step_s, wait_s);
    fs_blas_stats_enable(0); /* validation and checkpoints are not training time */
    rc = after_step(r, lr, norm, step_s, err);
    fs_blas_stats_enable(1);
    return rc;
}

/* ---- after the steps ---- */

/* A sample from the trained model, as a person would want to see. */
static int print_sample(train_run *r, fs_error *err) {
    fs_session *s = r->s;
    size_t sample = (size_t)fs_config_int(s->gen_cfg, "max_tokens");
    if (sample == 0 || r->ts.step != r->total) return FS_OK;
    if (s->topo.tensor > 1 || s->topo.pipeline > 1) {
        if (r->lead)
            fprintf(stderr, "fsrun: no sample: generation runs in one process (fsrun GRAPH.ini --mode generate, "
                            "without mpirun, loads the checkpoint)\n");
        return FS_OK;
    }
    const char *text = fs_config_string(s->gen_cfg, "prompt");
    size_t len = strlen(text);
    if (len >= r->T) len = r->T - 1;
    fs_generation g;
    /* the CPU model generates: the device's weights first */
    int rc = r->dev ? fs_train_device_download(r->dev, &r->opt, err) : FS_OK;
    if (!rc) rc = fs_generate_text(s, text, len, sample, 0, &g, err);
    if (rc) return rc;
    printf("--- sample (%zu tokens, %.0f tok/s) ---\n%.*s", g.n, g.seconds > 0 ? (double)g.n / g.seconds : 0.0,
           (int)len, text);
    fwrite(g.text, 1, g.text_len, stdout);
    printf("\n---\n");
    fs_generation_release(&g);
    return FS_OK;
}

/* x rounded to `decimals` as a JSON number (printed with 15 significant
 * digits, so the rounded value reads back as written), or null for a
 * value JSON cannot hold (NaN, Inf). */
static json_t *json_fixed(double x, int decimals) {
    if (!isfinite(x)) return json_null();
    double scale = pow(10.0, decimals);
    return json_real(round(x * scale) / scale);
}

/* Where the step's communication went, per timed step: grads_finish_ms is
 * the runtime's wait for the strategy after backward (what overlap did not
 * hide); comm_* are the strategy's own counters; the pipeline bubble is
 * rank 0's share of the schedule spent waiting for other stages, next to
 * the ideal (p - 1) / (v m + p - 1) of equal stages. */
static void summary_parallel(json_t *o, const train_run *r) {
    const fs_session *s = r->s;
    const train_timing *t = &r->t;
    double per = t->steps ? 1.0 / (double)t->steps : 0.0;
    json_object_set_new(o, "ranks", json_integer(fs_world_size()));
    json_object_set_new(o, "parallel", json_string(s->parallel.plugin->desc->name));
    json_object_set_new(o, "data", json_integer(s->topo.data));
    json_object_set_new(o, "tensor", json_integer(s->topo.tensor));
    json_object_set_new(o, "pipeline", json_integer(s->topo.pipeline));
    json_object_set_new(o, "grads_finish_ms", json_fixed(1e3 * t->finish_s * per, 3));
    json_object_set_new(o, "comm_ms", json_fixed(1e3 * (t->st1.comm_s - t->st0.comm_s) * per, 3));
    json_object_set_new(o, "comm_wait_ms", json_fixed(1e3 * (t->st1.wait_s - t->st0.wait_s) * per, 3));
    json_object_set_new(o, "comm_bytes", json_fixed((t->st1.bytes - t->st0.bytes) * per, 0));
    json_object_set_new(o, "comm_collectives",
                        json_fixed((double)(t->st1.collectives - t->st0.collectives) * per, 1));
    if (s->topo.pipeline > 1 && t->sched_s > 0) {
        double p = s->topo.pipeline, mv = (double)s->topo.microbatches * s->topo.interleave;
        json_object_set_new(o, "pipeline_bubble", json_fixed(1.0 - t->busy_s / t->sched_s, 4));
        json_object_set_new(o, "pipeline_bubble_ideal", json_fixed((p - 1) / (mv + p - 1), 4));
    }
}

/* Where the arithmetic ran: "cpu" (the runtime's own kernels) or the
 * backend, its precision, and on a backend the model's FLOP/s (6 N plus
 * attention per token, as bench_backend counts) and MFU where the device's
 * peak is known. */
static void summary_device(json_t *o, const train_run *r) {
    json_object_set_new(o, "backend", json_string(r->dev ? fs_train_device_backend(r->dev) : "none"));
    json_object_set_new(o, "precision", json_string(r->dev ? fs_train_device_precision(r->dev) : "fp32"));
    if (!r->dev || r->t.train_s <= 0) return;
    double flops = fs_train_device_flops_per_token(r->dev) * (double)r->t.tokens / r->t.train_s;
    double peak = fs_train_device_peak_flops(r->dev);
    json_object_set_new(o, "model_tflops", json_fixed(flops * 1e-12, 3));
    if (peak > 0) json_object_set_new(o, "mfu", json_fixed(flops / peak, 4));
}

/* The last stdout line: one JSON object (jansson writes it). */
static void print_summary(const train_run *r) {
    const fs_param_block *pb = fs_model_block(r->m);
    const train_timing *t = &r->t;
    json_t *o = json_object();
    json_object_set_new(o, "mode", json_string(r->obj->mode));
    json_object_set_new(o, "steps", json_integer((json_int_t)r->ts.step));
    json_object_set_new(o, "loss", json_fixed(r->loss, 6));
    json_object_set_new(o, "val_loss", r->val_loss >= 0 ? json_fixed(r->val_loss, 6) : json_null());
    /* the model's size; a tensor or pipeline shard also says its own */
    if (pb->n != pb->n_full) json_object_set_new(o, "params_per_rank", json_integer((json_int_t)pb->n));
    json_object_set_new(o, "tokens_per_s", json_fixed(t->train_s > 0 ? (double)t->tokens / t->train_s : 0, 1));
    json_object_set_new(o, "params", json_integer((json_int_t)pb->n_full));
    json_object_set_new(o, "matmul_gflops", json_fixed(t->mm_s > 0 ? t->mm_flops / t->mm_s * 1e-9 : 0.0, 1));
    json_object_set_new(o, "matmul_share", json_fixed(t->train_s > 0 ? t->mm_s / t->train_s : 0.0, 3));
    json_object_set_new(o, "threads", json_integer(fs_threads_get()));
    json_object_set_new(o, "blas_core", json_string(fs_blas_corename()));
    summary_device(o, r);
    summary_parallel(o, r);
    if (r->skipped) json_object_set_new(o, "skipped_steps", json_integer((json_int_t)r->skipped));
    json_object_set_new(o, "checkpoint", json_string(r->ckpt));
    json_dumpf(o, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
    fputc('\n', stdout);
    fflush(stdout);
    json_decref(o);
}

static void train_release(train_run *r) {
    fs_model_on_grads_ready(r->m, NULL, NULL);
    fs_train_device_close(r->dev);
    fs_metrics_close(&r->met);
    fs_optimizer_release(&r->opt);
    fs_dataset_release(&r->train);
    fs_dataset_release(&r->val);
    free(r->inputs);
    free(r->targets);
}

int fs_train_loop(fs_session *s, const fs_run_options *o, const fs_objective *obj, int *config_error,
                  fs_error *err) {
    train_run r;
    memset(&r, 0, sizeof r);
    read_settings(&r, s, o, obj);
    int rc = train_setup(&r, config_error, err);
    if (rc) {
        train_release(&r);
        return rc;
    }
    announce(&r);
    stats_get(s, &r.t.st0);
    r.t.st1 = r.t.st0;
    fs_blas_stats_enable(1);
    while (!rc && r.ts.step < r.end) rc = train_step(&r, err);
    fs_blas_stats_enable(0);
    if (!r.t.steps) r.t.st1 = r.t.st0;
    fs_metrics_close(&r.met);
    if (!rc) rc = print_sample(&r, err);
    if (!rc) print_summary(&r);
    train_release(&r);
    return rc;
}

int fs_mode_train(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    fs_objective obj = {"train", fs_objective_lm, NULL};
    return fs_train_loop(s, o, &obj, config_error, err);
}
