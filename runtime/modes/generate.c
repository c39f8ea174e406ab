/* generate.c — sampling with the KV cache, and the generate mode. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"
#include "io/data.h"
#include "core/host.h"
#include "io/metrics.h"
#include "modes/modes.h"
#include "core/rng.h"

/* Multiply-adds a token below which decoding runs on one thread. */
#define FS_DECODE_THREADED_MIN ((size_t)16 << 20)

typedef struct scored {
    float p;
    int32_t id;
} scored;

static int by_prob_desc(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id; /* ties by id: deterministic across qsort implementations */
}

int32_t fs_sample_token(const float *logits, size_t V, const fs_sampler *sp, uint64_t *rng_state, float *work) {
    if (sp->temperature <= 0.0) {
        size_t best = 0;
        for (size_t i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return (int32_t)best;
    }
    scored *s = (scored *)work;
    float mx = logits[0];
    for (size_t i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (size_t i = 0; i < V; i++) {
        s[i].p = expf((float)((logits[i] - mx) / sp->temperature));
        s[i].id = (int32_t)i;
        sum += s[i].p;
    }
    for (size_t i = 0; i < V; i++) s[i].p = (float)(s[i].p / sum);
    qsort(s, V, sizeof *s, by_prob_desc);
    size_t keep = V;
    if (sp->top_k > 0 && sp->top_k < keep) keep = sp->top_k;
    if (sp->top_p < 1.0) {
        double cum = 0.0;
        size_t n = 0;
        while (n < keep) {
            cum += s[n++].p;
            if (cum >= sp->top_p) break;
        }
        keep = n ? n : 1;
    }
    double mass = 0.0;
    for (size_t i = 0; i < keep; i++) mass += s[i].p;
    fs_rng r;
    memcpy(r.s, rng_state, sizeof r.s);
    double u = (double)fs_rng_float(&r) * mass;
    memcpy(rng_state, r.s, sizeof r.s);
    double cum = 0.0;
    for (size_t i = 0; i < keep; i++) {
        cum += s[i].p;
        if (u < cum) return s[i].id;
    }
    return s[keep - 1].id;
}

int fs_generate(fs_model *m, const int32_t *prompt, size_t n_prompt, size_t max_tokens, const fs_sampler *sp,
                int32_t *out, size_t *n_out, double *seconds, int *stopped_at_context, fs_error *err) {
    size_t V = m->cfg.vocab, ctx = m->cfg.max_seq;
    *n_out = 0;
    *stopped_at_context = 0;
    float *logits = malloc(V * sizeof(float)), *work = malloc(2 * V * sizeof(float) + 16);
    if (!logits || !work) {
        free(logits);
        free(work);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    fs_rng rng;
    fs_rng_seed(&rng, sp->seed);
    /* bounded caches have no context limit: they run past max_seq at their
     * own fixed size */
    int bounded = fs_model_cache_bounded(m);
    /* One token of a small model is too little work to share: thread
     * wake-ups and barriers cost more than they save (and on a loaded
     * machine, far more). A large one's matrix-vector products (GPT-2
     * small: 85 M multiply-adds a token) still gain from every core. */
    int threads = fs_threads_get();
    size_t C = m->cfg.n_embd, per_token = 12 * C * C * m->cfg.n_layer + C * V;
    if (per_token < FS_DECODE_THREADED_MIN) fs_threads_set(1);
    double t0 = fs_now();
    int rc = fs_model_decode_begin(m, 1, bounded ? 0 : ctx, err);
    size_t pos = 0;
    for (size_t i = 0; !rc && i < n_prompt; i++) rc = fs_model_decode_step(m, &prompt[i], pos++, logits, err);
    while (!rc && *n_out < max_tokens) {
        int32_t tok = fs_sample_token(logits, V, sp, rng.s, work);
        out[(*n_out)++] = tok;
        if (*n_out == max_tokens) break;
        if (!bounded && pos >= ctx) {
            *stopped_at_context = 1;
            break;
        }
        rc = fs_model_decode_step(m, &tok, pos++, logits, err);
    }
    *seconds = fs_now() - t0;
    fs_threads_set(threads);
    free(logits);
    free(work);
    return rc;
}

int fs_mode_generate(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    *config_error = 1;
    if (fs_session_require_whole(s, "generate", err)) return err->status;
    char ckpt[PATH_MAX];
    if (o->checkpoint)
        snprintf(ckpt, sizeof ckpt, "%s", o->checkpoint);
    else
        fs_session_checkpoint_path(s, ckpt, sizeof ckpt);
    const char *text = o->prompt ? o->prompt : fs_config_string(s->gen_cfg, "prompt");
    size_t len = strlen(text), ctx = s->mcfg.max_seq;
    if (len >= ctx && !fs_model_cache_bounded(s->model))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: the prompt is %zu tokens, but the context ([model] max_seq) is %zu: shorten the "
                            "prompt",
                            o->prompt ? "--prompt" : fs_config_where(s->gen_cfg, "prompt"), len, ctx);
    *config_error = 0;
    int rc = fs_checkpoint_load(ckpt, s, NULL, NULL, err);
    if (rc) return rc;
    size_t max_tokens = (size_t)fs_config_int(s->gen_cfg, "max_tokens");
    int32_t *prompt = malloc((len + 1) * sizeof(int32_t)), *outt = malloc((max_tokens + 1) * sizeof(int32_t));
    char *textout = malloc(max_tokens + 1);
    if (!prompt || !outt || !textout) {
        free(prompt), free(outt), free(textout);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    size_t n_prompt = fs_tokenize(prompt, text, len);
    if (n_prompt == 0) prompt[n_prompt++] = '\n'; /* an empty prompt starts a new line */
    fs_sampler sp = {fs_config_float(s->gen_cfg, "temperature"), (size_t)fs_config_int(s->gen_cfg, "top_k"),
                     fs_config_float(s->gen_cfg, "top_p"), (uint64_t)fs_config_int(s->gen_cfg, "seed")};
    size_t n = 0;
    double secs = 0;
    int stopped = 0;
    rc = fs_generate(s->model, prompt, n_prompt, max_tokens, &sp, outt, &n, &secs, &stopped, err);
    if (!rc) {
        fs_detokenize(textout, outt, n);
        if (stopped)
            fs_log(FS_LOG_WARN, NULL, "stopped after %zu tokens: the context of %zu positions is full", n, ctx);
        fputs(text, stdout);
        fwrite(textout, 1, n, stdout);
        fputc('\n', stdout);
        printf("{\"mode\": \"generate\", \"tokens\": %zu, \"tokens_per_s\": %.1f, \"prompt\": ", n,
               secs > 0 ? (double)(n + n_prompt) / secs : 0.0);
        fs_json_string(stdout, text);
        printf(", \"text\": ");
        fs_json_bytes(stdout, textout, n);
        printf(", \"kv_cache_bytes\": %zu}\n", fs_model_cache_bytes(s->model));
    }
    free(prompt);
    free(outt);
    free(textout);
    return rc;
}
