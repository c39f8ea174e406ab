/* train.c — the training loop (see train.h) and the train mode. */
#include "train.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas.h"
#include "checkpoint.h"
#include "data.h"
#include "fastserve/parallel.h"
#include "metrics.h"

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

    fs_dataset train = {0}, val = {0};
    fs_optimizer opt;
    fs_metrics met = {0};
    int32_t *inputs = NULL, *targets = NULL;
    fs_adamw_config ac = {fs_config_float(tc, "lr"), fs_config_float(tc, "beta1"), fs_config_float(tc, "beta2"),
                          fs_config_float(tc, "eps"), fs_config_float(tc, "weight_decay")};
    fs_optimizer_init(&opt, &ac);
    int rc;
    if ((rc = load_data(s, "train", 1, &train, err)) || (rc = load_data(s, "val", 0, &val, err))) goto done;
    if (!out || !*out) {
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: must name a directory for the checkpoint and metrics",
                          fs_config_where(s->run_cfg, "out"));
        goto done;
    }
    if (resume && access(ckpt, F_OK) != 0) {
        rc = fs_error_set(err, FS_ERR_NOT_FOUND, "resume: %s does not exist: train without resume first", ckpt);
        goto done;
    }
    *config_error = 0;
    if ((rc = fs_mkdirs(out, err))) goto done;
    /* Fail now, not after an hour of training, if out is not writable. */
    if (access(out, W_OK) != 0) {
        rc = fs_error_set(err, FS_ERR_IO, "[run] out = %s: directory is not writable: %s", out, strerror(errno));
        goto done;
    }

    for (size_t i = 0; i < m->n_views && !rc; i++)
        rc = fs_optimizer_add(&opt, m->params + m->views[i].offset, m->grads + m->views[i].offset, m->views[i].numel,
                              m->views[i].weight_decay, err);
    for (size_t i = 0; i < s->host.n_params && !rc; i++)
        rc = fs_optimizer_add(&opt, s->host.params[i].data, s->host.params[i].grad, s->host.params[i].numel,
                              s->host.params[i].weight_decay, err);
    if (rc || (rc = fs_optimizer_ready(&opt, err))) goto done;

    fs_train_state ts = {0};
    ts.val_loss = -1;
    uint64_t seed = (uint64_t)fs_config_int(tc, "seed");
    fs_model_init_weights(m, seed);
    if ((rc = fs_model_init_plugin_params(m, err))) goto done;
    fs_rng_seed(&ts.rng, seed ^ 0x5DEECE66Dull);
    if (resume) {
        if ((rc = fs_checkpoint_load(ckpt, s, &opt, &ts, err))) goto done;
        fs_log(FS_LOG_INFO, NULL, "resuming %s at step %llu of %llu", ckpt, (unsigned long long)ts.step,
               (unsigned long long)total);
    }
    if ((rc = fs_metrics_open(&met, out, fs_config_string(s->run_cfg, "progress"),
                              (uint64_t)fs_config_int(s->run_cfg, "log_every"), resume, err)))
        goto done;

    const fs_parallel_vtable *pvt = s->parallel.plugin->desc->vtable;
    size_t off = 0, local_B = B;
    if ((rc = pvt->batch_slice(s->parallel.self, B, &off, &local_B, err))) goto done;
    grads_hook hook = {pvt, s->parallel.self, m->grads, 0, {0}};
    m->grads_ready = on_grads_ready;
    m->grads_ready_arg = &hook;

    inputs = malloc(B * T * sizeof(int32_t));
    targets = malloc(B * T * sizeof(int32_t));
    if (!inputs || !targets) {
        rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        goto done;
    }
    fprintf(stderr, "fsrun: %s: %zu parameters, %zu layers, T = %zu, batch %zu x %zu, %llu steps, %d threads\n",
            obj->mode, m->n_params, s->mcfg.n_layer, T, B, accum, (unsigned long long)total, fs_threads_get());
    double loss = ts.loss, val_loss = ts.val_loss, train_time = 0, mm_flops = 0, mm_secs = 0;
    fs_blas_stats_enable(1);
    uint64_t timed_tokens = 0, first = ts.step;
    uint64_t end = stop_after && stop_after < total ? stop_after : total;
    while (ts.step < end) {
        double t0 = fs_now();
        fs_blas_stats_reset();
        fs_model_zero_grad(m);
        for (size_t i = 0; i < s->host.n_params; i++)
            memset(s->host.params[i].grad, 0, s->host.params[i].numel * sizeof(float));
        double step_loss = 0;
        for (size_t a = 0; a < accum; a++) {
            /* every rank draws the whole global batch, so the RNG stays in step */
            fs_dataset_sample(&train, &ts.rng, inputs, targets, B, T);
            double l;
            rc = obj->fn(obj->arg, s, inputs + off * T, targets + off * T, local_B, T, 1.0f / (float)accum, &l, err);
            if (rc) goto done;
            if (hook.failed) {
                *err = hook.err;
                rc = err->status;
                goto done;
            }
            step_loss += l / (double)accum;
        }
        double sums[2] = {step_loss * (double)local_B, (double)local_B};
        if ((rc = pvt->grads_finish(s->parallel.self, m->grads, m->n_params, err)) ||
            (rc = pvt->reduce_sum(s->parallel.self, sums, 2, err)))
            goto done;
        loss = ts.loss = sums[0] / sums[1];
        double norm = fs_optimizer_clip(&opt, fs_config_float(tc, "grad_clip"));
        double lr = fs_lr_schedule(ac.lr, fs_config_float(tc, "min_lr_ratio"), ts.step, warmup, total);
        fs_optimizer_step(&opt, lr);
        ts.step++;
        double dt = fs_now() - t0;
        if (ts.step > first + 1 || end - first == 1) { /* the first step warms caches: not timed */
            double f, sec;
            fs_blas_stats(&f, &sec);
            mm_flops += f;
            mm_secs += sec;
            train_time += dt;
            timed_tokens += (uint64_t)(B * T * accum);
        }
        double tps = train_time > 0 ? (double)timed_tokens / train_time : (double)(B * T * accum) / dt;
        fs_blas_stats_enable(0); /* validation and checkpoints are not training time */
        fs_metrics_step(&met, ts.step, total, loss, lr, norm, tps, (double)(end - ts.step) * (B * T * accum) / tps);
        if (val.tokens && ((val_every && ts.step % val_every == 0) || ts.step == end)) {
            size_t ntok;
            if ((rc = fs_evaluate(m, &val, B, val_batches * B, &val_loss, &ntok, err))) goto done;
            ts.val_loss = val_loss;
            fs_metrics_val(&met, ts.step, val_loss);
        }
        if ((ckpt_every && ts.step % ckpt_every == 0) || ts.step == end)
            if ((rc = fs_checkpoint_save(ckpt, s, &opt, &ts, err))) goto done;
        fs_blas_stats_enable(1);
    }
    fs_blas_stats_enable(0);
    fs_metrics_close(&met);
    size_t plugin_params = 0;
    for (size_t i = 0; i < s->host.n_params; i++) plugin_params += s->host.params[i].numel;
    double tps = train_time > 0 ? (double)timed_tokens / train_time : 0;

    /* a sample from the trained model, as a person would want to see */
    size_t sample = (size_t)fs_config_int(s->gen_cfg, "max_tokens");
    if (sample > 0 && ts.step == total) {
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
    printf(", \"tokens_per_s\": %.1f, \"params\": %zu, \"matmul_gflops\": %.1f, \"matmul_share\": %.3f, "
           "\"threads\": %d, \"blas_core\": \"%s\", \"checkpoint\": ",
           tps, m->n_params + plugin_params, mm_secs > 0 ? mm_flops / mm_secs * 1e-9 : 0.0, train_time > 0 ? mm_secs / train_time : 0.0,
           fs_threads_get(), fs_blas_corename());
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
    return rc;
}

int fs_mode_train(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    fs_objective obj = {"train", fs_objective_lm, NULL};
    return fs_train_loop(s, o, &obj, config_error, err);
}
