/* train.c — the training loop (see train.h) and the train mode. */
#include "modes/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/blas.h"
#include "io/checkpoint.h"
#include "io/data.h"
#include "fastserve/parallel.h"
#include "io/metrics.h"
#include "dist/pipeline.h"
#include "dist/world.h"

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
    float *grads;
    int failed;
    fs_error err;
} grads_hook;

static void on_grads_ready(void *arg, size_t offset, size_t count) {
    grads_hook *h = arg;
    if (!h->failed && h->vt->grads_ready(h->self, h->grads, offset, count, &h->err)) h->failed = 1;
}

static int load_data(fs_session *s, const char *key, int required, fs_dataset *d, fs_error *err) {
    const char *path = fs_config_string(s->data_cfg, key);
    if (!path || !*path) {
        if (required)
            return fs_error_set(err, FS_ERR_INVALID, "[data] %s: required to train: set it to a text file", key);
        return FS_OK;
    }
    return fs_dataset_load(d, path, fs_config_where(s->data_cfg, key), s->mcfg.max_seq + 1, err);
}

/* A parallel vtable member that exists (the plugin is new enough) and is set. */
#define PAR_HAS(s, member)                                                                                    \
    (FS_HAS_MEMBER((const fs_parallel_vtable *)(s)->parallel.plugin->desc->vtable,                           \
                   (s)->parallel.plugin->desc->vtable_size, fs_parallel_vtable, member) &&                    \
     ((const fs_parallel_vtable *)(s)->parallel.plugin->desc->vtable)->member)

static void stats_get(fs_session *s, fs_parallel_stats *st) {
    memset(st, 0, sizeof *st);
    st->struct_size = sizeof *st;
    fs_error ignored = {0};
    if (PAR_HAS(s, stats))
        ((const fs_parallel_vtable *)s->parallel.plugin->desc->vtable)->stats(s->parallel.self, st, &ignored);
}

/* This rank's share of the squared global gradient norm, so that the sum
 * over every rank counts each gradient once: a ZeRO shard is the only
 * place its range is final, so every data rank adds its own; without
 * shards the data ranks hold identical replicas and data rank 0 speaks for
 * them; plugin-owned parameters are replicated too. Under tensor
 * parallelism a replicated tensor (LayerNorms, row-parallel biases,
 * embeddings) is the same on every tensor rank and tensor rank 0 counts
 * it; under pipeline parallelism the last stage's copy of the tied wte is
 * the first stage's. */
static double owned_sumsq(const fs_session *s, const fs_optimizer *opt) {
    const fs_model *m = s->model;
    size_t split = m->n_params;
    int data_speaker = s->topo.data_rank == 0, sharded = fs_optimizer_sharded(opt);
    double sum = 0;
    if (!sharded && !data_speaker) return 0.0;
    for (size_t i = 0; i < m->n_views; i++) {
        const fs_param_view *v = &m->views[i];
        if (v->split == FS_SPLIT_NONE && s->topo.tensor_rank != 0) continue;
        if (!m->has_embed && !strcmp(v->name, "transformer.wte.weight")) continue; /* the head's copy */
        sum += fs_optimizer_sumsq(opt, v->offset, v->offset + v->numel);
    }
    return sum + (data_speaker ? fs_optimizer_sumsq(opt, split, opt->numel) : 0.0);
}

/* One batch's summed loss through the pipeline's stages, counted once:
 * by the last stage of tensor rank 0 and data rank 0. */
static int pipeline_batch_sum(void *arg, const int32_t *inputs, const int32_t *targets, size_t nb, size_t T,
                              double *sum, fs_error *err) {
    fs_session *s = arg;
    int rc = fs_pipeline_loss(s->model, &s->topo, s->comm, inputs, targets, nb, T, sum, err);
    if (s->topo.tensor_rank != 0 || s->topo.data_rank != 0) *sum = 0;
    return rc;
}

/* Held-out loss of a pipelined model: the stages forward only, the sum
 * then reaching every rank. */
static int evaluate_pipeline(fs_session *s, const fs_dataset *d, size_t B, size_t max_windows, double *loss,
                             fs_error *err) {
    double sum;
    size_t n;
    int rc = fs_evaluate_sum(d, s->model->cfg.max_seq, B, max_windows, pipeline_batch_sum, s, &sum, &n, err);
    const fs_parallel_vtable *vt = s->parallel.plugin->desc->vtable;
    if (!rc) rc = vt->reduce_sum(s->parallel.self, &sum, 1, err);
    *loss = n ? sum / (double)n : 0.0;
    return rc;
}

/* Plugin-owned gradients (outside the flat vector) through the strategy,
 * packed into `buf` and back. */
static int sync_extra(fs_session *s, float *buf, size_t n, fs_error *err) {
    if (!n || fs_world_size() == 1) return FS_OK;
    size_t off = 0;
    for (size_t i = 0; i < s->host.n_params; off += s->host.params[i].numel, i++)
        memcpy(buf + off, s->host.params[i].grad, s->host.params[i].numel * sizeof(float));
    const fs_parallel_vtable *vt = s->parallel.plugin->desc->vtable;
    int rc = vt->grads_extra(s->parallel.self, buf, n, err);
    if (rc) return rc;
    off = 0;
    for (size_t i = 0; i < s->host.n_params; off += s->host.params[i].numel, i++)
        memcpy(s->host.params[i].grad, buf + off, s->host.params[i].numel * sizeof(float));
    return FS_OK;
}

int fs_train_loop(fs_session *s, const fs_run_options *o, const fs_objective *obj, int *config_error,
                  fs_error *err) {
    *config_error = 1;
    fs_model *m = s->model;
    const fs_config *tc = s->train_cfg;
    size_t B = (size_t)fs_config_int(tc, "batch"), T = s->mcfg.max_seq;
    size_t accum = (size_t)fs_config_int(tc, "grad_accum");
    uint64_t total = (uint64_t)fs_config_int(tc, "steps"), warmup = (uint64_t)fs_config_int(tc, "warmup");
    uint64_t val_every = (uint64_t)fs_config_int(tc, "val_every"), ckpt_every = (uint64_t)fs_config_int(tc, "checkpoint_every");
    uint64_t stop_after = (uint64_t)fs_config_int(s->run_cfg, "stop_after");
    size_t val_batches = (size_t)fs_config_int(tc, "val_batches");
    int resume = o->resume || fs_config_bool(tc, "resume");
    const char *out = fs_config_string(s->run_cfg, "out");
    char ckpt[PATH_MAX];
    fs_session_checkpoint_path(s, ckpt, sizeof ckpt);
    int lead = fs_world_rank() == 0; /* writes files, prints */
    const fs_parallel_vtable *pvt = s->parallel.plugin->desc->vtable;
    void *pself = s->parallel.self;

    fs_dataset train = {0}, val = {0};
    fs_optimizer opt;
    fs_metrics met = {0};
    int32_t *inputs = NULL, *targets = NULL;
    float *extra = NULL;
    size_t n_extra = 0;
    fs_adamw_config ac = {fs_config_float(tc, "lr"), fs_config_float(tc, "beta1"), fs_config_float(tc, "beta2"),
                          fs_config_float(tc, "eps"), fs_config_float(tc, "weight_decay")};
    fs_optimizer_init(&opt, &ac);
    fs_train_state ts = {0};
    size_t off = 0, local_B = B, n_micro = 1;
    int rc;
    /* ---- set-up: nothing collective until every rank agrees it succeeded ---- */
    if ((rc = load_data(s, "train", 1, &train, err)) || (rc = load_data(s, "val", 0, &val, err))) goto setup_done;
    if (!out || !*out) {
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: must name a directory for the checkpoint and metrics",
                          fs_config_where(s->run_cfg, "out"));
        goto setup_done;
    }
    if (resume && access(ckpt, F_OK) != 0) {
        rc = fs_error_set(err, FS_ERR_NOT_FOUND, "resume: %s does not exist: train without resume first", ckpt);
        goto setup_done;
    }
    for (size_t i = 0; i < s->host.n_params; i++) n_extra += s->host.params[i].numel;
    if (n_extra && fs_world_size() > 1 && !PAR_HAS(s, grads_extra)) {
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "%s: plugin '%s' cannot combine the gradients of plugin-owned parameters across ranks "
                          "(it lacks grads_extra): use [parallel] plugin = data",
                          fs_config_where(s->parallel.config, "plugin"), s->parallel.plugin->desc->name);
        goto setup_done;
    }
    *config_error = 0;
    if (lead) {
        if ((rc = fs_mkdirs(out, err))) goto setup_done;
        /* Fail now, not after an hour of training, if out is not writable. */
        if (access(out, W_OK) != 0) {
            rc = fs_error_set(err, FS_ERR_IO, "[run] out = %s: directory is not writable: %s", out, strerror(errno));
            goto setup_done;
        }
    }

    for (size_t i = 0; i < m->n_views && !rc; i++)
        rc = fs_optimizer_add(&opt, m->params + m->views[i].offset, m->grads + m->views[i].offset, m->views[i].numel,
                              m->views[i].weight_decay, err);
    for (size_t i = 0; i < s->host.n_params && !rc; i++)
        rc = fs_optimizer_add(&opt, s->host.params[i].data, s->host.params[i].grad, s->host.params[i].numel,
                              s->host.params[i].weight_decay, err);
    if (!rc && PAR_HAS(s, optimizer_shard)) { /* ZeRO-1: this rank's range of the flat vector */
        size_t lo = 0, hi = m->n_params;
        if (!(rc = pvt->optimizer_shard(pself, m->n_params, &lo, &hi, err)))
            rc = fs_optimizer_shard(&opt, lo, hi, m->n_params, err);
    }
    if (rc || (rc = fs_optimizer_ready(&opt, err))) goto setup_done;

    /* a pipeline keeps the micro-batches between their forward and backward
     * in activation slots: as many as the schedule has in flight */
    n_micro = s->topo.pipeline > 1 ? (size_t)s->topo.microbatches : 1;
    if (s->topo.pipeline > 1) {
        size_t slots = n_micro;
        if (!PAR_HAS(s, run_schedule) || !PAR_HAS(s, pipeline_slots))
            rc = fs_error_set(err, FS_ERR_INVALID, "parallel plugin '%s' pipelines but cannot run a schedule",
                              s->parallel.plugin->desc->name);
        else if (!(rc = pvt->pipeline_slots(pself, &slots, err)))
            rc = fs_model_set_slots(m, slots, err);
        if (rc) goto setup_done;
    }
    ts.val_loss = -1;
    uint64_t seed = (uint64_t)fs_config_int(tc, "seed");
    fs_model_init_weights(m, seed);
    if ((rc = fs_model_init_plugin_params(m, err))) goto setup_done;
    fs_rng_seed(&ts.rng, seed ^ 0x5DEECE66Dull);
    if (resume) {
        if ((rc = fs_checkpoint_load(ckpt, s, &opt, &ts, err))) goto setup_done;
        if (lead)
            fs_log(FS_LOG_INFO, NULL, "resuming %s at step %llu of %llu", ckpt, (unsigned long long)ts.step,
                   (unsigned long long)total);
    }
    if (lead) {
        if ((rc = fs_metrics_open(&met, out, fs_config_string(s->run_cfg, "progress"),
                                  (uint64_t)fs_config_int(s->run_cfg, "log_every"), resume, err)))
            goto setup_done;
    } else {
        met.quiet = 1; /* no file, no progress: rank 0 reports */
    }
    if ((rc = pvt->batch_slice(pself, B, &off, &local_B, err))) goto setup_done;
    inputs = malloc(B * T * sizeof(int32_t));
    targets = malloc(B * T * sizeof(int32_t));
    extra = malloc((n_extra + 1) * sizeof(float));
    if (!inputs || !targets || !extra) rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
setup_done: {
    int code;
    if ((rc = fs_world_agree(rc, *config_error ? 2 : 1, &code, err))) {
        *config_error = code == 2;
        goto done;
    }
}
    fs_world_begin_work();

    grads_hook hook = {pvt, pself, m->grads, 0, {0}};
    /* the loss is counted once per data rank: tensor ranks hold copies of
     * it, and only the last pipeline stage computes one */
    int loss_here = s->topo.tensor_rank == 0 && s->topo.pipeline_rank == s->topo.pipeline - 1;
    if (lead)
        fprintf(stderr, "fsrun: %s: %zu parameters, %zu layers, T = %zu, batch %zu x %zu, %llu steps, %d threads\n",
                obj->mode, m->n_params, s->mcfg.n_layer, T, B, accum, (unsigned long long)total, fs_threads_get());
    if (lead && fs_world_size() > 1)
        fprintf(stderr, "fsrun: %d ranks (%s): data %d x tensor %d x pipeline %d, %d threads each\n",
                fs_world_size(), s->comm->engine, s->topo.data, s->topo.tensor, s->topo.pipeline, fs_threads_get());
    double loss = ts.loss, val_loss = ts.val_loss, train_time = 0, mm_flops = 0, mm_secs = 0, finish_time = 0;
    double pipe_sched = 0, pipe_busy = 0; /* inside the pipeline schedule: all of it, and computing */
    fs_parallel_stats st0, st1;
    stats_get(s, &st0);
    st1 = st0;
    fs_blas_stats_enable(1);
    uint64_t timed_tokens = 0, timed_steps = 0, first = ts.step;
    uint64_t end = stop_after && stop_after < total ? stop_after : total;
    while (ts.step < end) {
        double t0 = fs_now();
        fs_blas_stats_reset();
        fs_model_zero_grad(m);
        for (size_t i = 0; i < s->host.n_params; i++)
            memset(s->host.params[i].grad, 0, s->host.params[i].numel * sizeof(float));
        double step_loss = 0, step_sched = 0, step_busy = 0;
        for (size_t a = 0; a < accum; a++) {
            /* every rank draws the whole global batch, so the RNG stays in step */
            fs_dataset_sample(&train, &ts.rng, inputs, targets, B, T);
            /* the strategy hears of final gradients only in the last
             * micro-step: earlier ones accumulate locally (DDP's no_sync) */
            m->grads_ready = a + 1 == accum ? on_grads_ready : NULL;
            m->grads_ready_arg = &hook;
            double l = 0;
            if (s->topo.pipeline > 1) {
                /* the strategy runs the schedule; the model computes each
                 * chunk's micro-batch; gradients are final after the schedule */
                fs_pipeline_step ps = {m, inputs + off * T, targets + off * T, local_B / n_micro, T,
                                       1.0f / (float)(accum * n_micro), 0, 0, 0};
                fs_stage_ops ops;
                fs_pipeline_step_ops(&ps, &ops);
                /* gradients are final only after the whole schedule (and the tied
                 * embedding's sum): the strategy hears of them in grads_finish */
                m->grads_ready = NULL;
                double ts0 = fs_now();
                rc = pvt->run_schedule(pself, &ops, err);
                step_sched += fs_now() - ts0;
                step_busy += ps.busy_s;
                l = ps.n_loss ? ps.loss_sum / (double)ps.n_loss : 0.0;
            } else {
                rc = obj->fn(obj->arg, s, inputs + off * T, targets + off * T, local_B, T, 1.0f / (float)accum, &l,
                             err);
            }
            if (rc) goto done;
            if (hook.failed) {
                *err = hook.err;
                rc = err->status;
                goto done;
            }
            step_loss += l / (double)accum;
        }
        m->grads_ready = NULL;
        double tf = fs_now();
        /* the tied embedding's two copies (first and last stage) sum their gradients */
        if (s->topo.pipeline > 1 && (m->has_embed || m->has_head) &&
            (rc = pvt->embedding_all_reduce(pself, m->dwte, m->cfg.vocab * m->cfg.n_embd, err)))
            goto done;
        if ((rc = pvt->grads_finish(pself, m->grads, m->n_params, err)) || (rc = sync_extra(s, extra, n_extra, err)))
            goto done;
        double tf_end = fs_now();
        double sums[3] = {loss_here ? step_loss * (double)local_B : 0.0, loss_here ? (double)local_B : 0.0,
                          owned_sumsq(s, &opt)};
        if ((rc = pvt->reduce_sum(pself, sums, 3, err))) goto done;
        loss = ts.loss = sums[0] / sums[1];
        double norm = sqrt(sums[2]);
        fs_optimizer_clip_to(&opt, fs_config_float(tc, "grad_clip"), norm);
        double lr = fs_lr_schedule(ac.lr, fs_config_float(tc, "min_lr_ratio"), ts.step, warmup, total);
        fs_optimizer_step(&opt, lr);
        double tp = fs_now();
        if (PAR_HAS(s, params_updated) && (rc = pvt->params_updated(pself, m->params, m->n_params, err))) goto done;
        tf_end += fs_now() - tp;
        ts.step++;
        double dt = fs_now() - t0;
        if (ts.step > first + 1 || end - first == 1) { /* the first step warms caches: not timed */
            double f, sec;
            fs_blas_stats(&f, &sec);
            mm_flops += f;
            mm_secs += sec;
            train_time += dt;
            finish_time += tf_end - tf;
            pipe_sched += step_sched;
            pipe_busy += step_busy;
            timed_steps++;
            timed_tokens += (uint64_t)(B * T * accum);
            stats_get(s, &st1); /* before validation and checkpoints, which are not steps */
        } else {
            stats_get(s, &st0); /* counters start with the timed steps too */
        }
        double tps = train_time > 0 ? (double)timed_tokens / train_time : (double)(B * T * accum) / dt;
        fs_blas_stats_enable(0); /* validation and checkpoints are not training time */
        fs_metrics_step(&met, ts.step, total, loss, lr, norm, tps, (double)(end - ts.step) * (B * T * accum) / tps);
        if (val.tokens && ((val_every && ts.step % val_every == 0) || ts.step == end)) {
            size_t ntok;
            if (s->topo.pipeline > 1)
                rc = evaluate_pipeline(s, &val, B, val_batches * B, &val_loss, err);
            else
                rc = fs_evaluate(m, &val, B, val_batches * B, &val_loss, &ntok, err);
            if (rc) goto done;
            ts.val_loss = val_loss;
            fs_metrics_val(&met, ts.step, val_loss);
        }
        if ((ckpt_every && ts.step % ckpt_every == 0) || ts.step == end)
            if ((rc = fs_checkpoint_save(ckpt, s, &opt, &ts, err))) goto done;
        fs_blas_stats_enable(1);
    }
    fs_blas_stats_enable(0);
    if (!timed_steps) st1 = st0;
    fs_metrics_close(&met);
    size_t plugin_params = 0;
    for (size_t i = 0; i < s->host.n_params; i++) plugin_params += s->host.params[i].numel;
    double tps = train_time > 0 ? (double)timed_tokens / train_time : 0;

    /* a sample from the trained model, as a person would want to see */
    size_t sample = (size_t)fs_config_int(s->gen_cfg, "max_tokens");
    if (sample > 0 && ts.step == total && (s->topo.tensor > 1 || s->topo.pipeline > 1)) {
        if (lead)
            fprintf(stderr, "fsrun: no sample: generation runs in one process (fsrun GRAPH.ini --mode generate, "
                    "without mpirun, loads the checkpoint)\n");
    } else if (sample > 0 && ts.step == total) {
        const char *text = fs_config_string(s->gen_cfg, "prompt");
        size_t len = strlen(text);
        if (len >= T) len = T - 1;
        int32_t *prompt = malloc((len + 1) * sizeof(int32_t)), *gen = malloc((sample + 1) * sizeof(int32_t));
        char *textout = malloc(sample + 1);
        fs_sampler sp = {fs_config_float(s->gen_cfg, "temperature"), (size_t)fs_config_int(s->gen_cfg, "top_k"),
                         fs_config_float(s->gen_cfg, "top_p"), (uint64_t)fs_config_int(s->gen_cfg, "seed")};
        if (prompt && gen && textout) {
            size_t n_prompt = fs_tokenize(prompt, text, len), n = 0;
            if (n_prompt == 0) prompt[n_prompt++] = '\n';
            double secs;
            int stopped;
            if ((rc = fs_generate(m, prompt, n_prompt, sample, &sp, gen, &n, &secs, &stopped, err)) == 0) {
                fs_detokenize(textout, gen, n);
                printf("--- sample (%zu tokens, %.0f tok/s) ---\n%.*s", n, secs > 0 ? (double)n / secs : 0.0, (int)len,
                       text);
                fwrite(textout, 1, n, stdout);
                printf("\n---\n");
            }
        }
        free(prompt);
        free(gen);
        free(textout);
        if (rc) goto done;
    }
    printf("{\"mode\": \"%s\", \"steps\": %llu, \"loss\": %.6f, \"val_loss\": ", obj->mode,
           (unsigned long long)ts.step, loss);
    if (val_loss >= 0)
        printf("%.6f", val_loss);
    else
        printf("null");
    /* the model's size; a tensor or pipeline shard also says its own */
    if (m->n_params != m->n_full_params) printf(", \"params_per_rank\": %zu", m->n_params);
    printf(", \"tokens_per_s\": %.1f, \"params\": %zu, \"matmul_gflops\": %.1f, \"matmul_share\": %.3f, "
           "\"threads\": %d, \"blas_core\": \"%s\", ",
           tps, m->n_full_params + plugin_params, mm_secs > 0 ? mm_flops / mm_secs * 1e-9 : 0.0, train_time > 0 ? mm_secs / train_time : 0.0,
           fs_threads_get(), fs_blas_corename());
    /* where the step's communication went, per timed step: grads_finish_ms
     * is the runtime's wait for the strategy after backward (what overlap
     * did not hide); comm_* are the strategy's own counters */
    double per = timed_steps ? 1.0 / (double)timed_steps : 0.0;
    printf("\"ranks\": %d, \"parallel\": \"%s\", \"data\": %d, \"tensor\": %d, \"pipeline\": %d, "
           "\"grads_finish_ms\": %.3f, \"comm_ms\": %.3f, \"comm_wait_ms\": %.3f, \"comm_bytes\": %.0f, "
           "\"comm_collectives\": %.1f, ",
           fs_world_size(), s->parallel.plugin->desc->name, s->topo.data, s->topo.tensor, s->topo.pipeline,
           1e3 * finish_time * per, 1e3 * (st1.comm_s - st0.comm_s) * per, 1e3 * (st1.wait_s - st0.wait_s) * per,
           (st1.bytes - st0.bytes) * per, (double)(st1.collectives - st0.collectives) * per);
    /* rank 0's share of the schedule spent waiting for other stages, and
     * the ideal (p - 1) / (v m + p - 1) of equal stages */
    if (s->topo.pipeline > 1 && pipe_sched > 0) {
        double p = s->topo.pipeline, mv = (double)s->topo.microbatches * s->topo.interleave;
        printf("\"pipeline_bubble\": %.4f, \"pipeline_bubble_ideal\": %.4f, ", 1.0 - pipe_busy / pipe_sched,
               (p - 1) / (mv + p - 1));
    }
    printf("\"checkpoint\": ");
    fs_json_string(stdout, ckpt);
    printf("}\n");
    fflush(stdout);
done:
    m->grads_ready = NULL;
    fs_metrics_close(&met);
    fs_optimizer_release(&opt);
    fs_dataset_release(&train);
    fs_dataset_release(&val);
    free(inputs);
    free(targets);
    free(extra);
    return rc;
}

int fs_mode_train(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    fs_objective obj = {"train", fs_objective_lm, NULL};
    return fs_train_loop(s, o, &obj, config_error, err);
}
