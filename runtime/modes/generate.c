/* generate.c — text from a prompt, and the generate mode: one request to
 * the serving engine run inline (serve/engine.h: the same ragged step,
 * paged cache and sampling a server uses), or, for a model with an
 * attention plugin built before the paged cache (ABI 1.0/1.1), one fs_seq
 * over the plugins' decode steps (model/seq.h). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "session/checkpoint.h"
#include "session/device.h"
#include "io/data.h"
#include "io/metrics.h"
#include "io/tokenizer.h"
#include "compute/qweights.h"
#include "model/batch.h"
#include "model/kv_pool.h"
#include "model/seq.h"
#include "modes/modes.h"
#include "serve/engine.h"

/* Multiply-adds a token below which decoding runs on one thread. */
#define FS_DECODE_THREADED_MIN ((size_t)16 << 20)

fs_sampler fs_generate_sampler(const fs_config *gen_cfg) {
    return (fs_sampler){fs_config_float(gen_cfg, "temperature"), (size_t)fs_config_int(gen_cfg, "top_k"),
                        fs_config_float(gen_cfg, "top_p"), (uint64_t)fs_config_int(gen_cfg, "seed")};
}

int fs_generate_threads(const fs_model *m) {
    /* One token of a small model is too little work to share: thread
     * wake-ups and barriers cost more than they save (and on a loaded
     * machine, far more). A large one's matrix-vector products (GPT-2
     * small: 85 M multiply-adds a token) still gain from every core. */
    const fs_model_config *c = fs_model_cfg(m);
    size_t per_token = 12 * c->n_embd * c->n_embd * c->n_layer + c->n_embd * c->vocab;
    return per_token < FS_DECODE_THREADED_MIN ? 1 : 0;
}

/* Sampling from NaN or Inf logits picks token 0 whatever the model says (a
 * NUL byte in the text): the weights overflowed, and generation stops. */
static int check_logits(const float *logits, size_t V, size_t produced, fs_error *err) {
    for (size_t v = 0; v < V; v++)
        if (!isfinite(logits[v]))
            return fs_error_set(err, FS_ERR_INVALID,
                                "the model's logits are %s after %zu generated tokens: the weights overflow (a run "
                                "that diverged?): generate from an earlier checkpoint",
                                isnan(logits[v]) ? "NaN" : "Inf", produced);
    return FS_OK;
}

int fs_generate(fs_seq *seq, const int32_t *prompt, size_t n_prompt, size_t max_tokens, int32_t eos, int32_t *out,
                size_t *n_out, double *seconds, int *stopped, fs_error *err) {
    size_t V = fs_model_cfg(fs_seq_model(seq))->vocab;
    *n_out = 0;
    *stopped = 0;
    float *logits = malloc(V * sizeof(float));
    if (!logits) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    double t0 = fs_now();
    int rc = FS_OK;
    for (size_t i = 0; !rc && i < n_prompt; i++) rc = fs_seq_decode(seq, &prompt[i], logits, err);
    while (!rc && *n_out < max_tokens && !(rc = check_logits(logits, V, *n_out, err))) {
        int32_t tok = fs_seq_sample(seq, 0, logits);
        if (fs_request_ends_at(eos, tok)) { /* as the engine: the end-of-text token is not kept */
            *stopped = FS_GENERATE_EOS;
            break;
        }
        out[(*n_out)++] = tok;
        if (*n_out == max_tokens) break;
        if (fs_seq_pos(seq) >= fs_seq_context(seq)) { /* an unbounded cache is full */
            *stopped = FS_GENERATE_CONTEXT;
            break;
        }
        rc = fs_seq_decode(seq, &tok, logits, err);
    }
    *seconds = fs_now() - t0;
    free(logits);
    return rc;
}

void fs_generation_release(fs_generation *g) {
    free(g->prompt);
    free(g->tokens);
    free(g->text);
    memset(g, 0, sizeof *g);
}

int fs_prompt_tokens(fs_session *s, const char *text, size_t len, fs_tokens *out, fs_error *err) {
    fs_tokenizer *tok;
    int rc = fs_session_tokenizer(s, &tok, err);
    if (!rc) rc = fs_tokenizer_encode(tok, text, len, out, err);
    /* an empty prompt starts a document: GPT-2's <|endoftext|>, or a new line */
    if (!rc && out->n == 0) {
        int32_t eos = fs_tokenizer_eos(tok);
        rc = eos >= 0 ? fs_tokens_push(out, eos) : fs_tokenizer_encode(tok, "\n", 1, out, err);
    }
    return rc;
}

/* The one request's tokens, as the engine's sink receives them. */
typedef struct generation_sink {
    fs_generation *g;
    fs_finish_reason finish;
    const char *error;
} generation_sink;

static void collect(void *arg, const fs_request_event *ev) {
    generation_sink *gs = arg;
    if (ev->token >= 0) gs->g->tokens[gs->g->n++] = ev->token;
    if (ev->finish != FS_FINISH_NONE) gs->finish = ev->finish, gs->error = ev->error;
}

/* The engine sized for this one request: a pool of exactly its blocks, no
 * swap area, no sharing, one sequence. */
static fs_engine_config one_request_config(const fs_session *s, size_t tokens) {
    const fs_model *m = s->model;
    fs_engine_config c;
    fs_engine_config_from(&c, s);
    size_t kb = c.kv_block, bounded = fs_model_paged_max_blocks(m, kb);
    c.kv_blocks = bounded ? bounded + (c.prefill_chunk + kb - 1) / kb + 1 : (tokens + kb - 1) / kb;
    size_t whole = (fs_model_cfg(m)->max_seq + kb - 1) / kb; /* what the engine asks of an unbounded pool */
    if (!bounded && c.kv_blocks < whole) c.kv_blocks = whole;
    c.swap_blocks = 0;
    c.prefix_sharing = 0;
    c.max_running = 1;
    c.max_queue = 1;
    c.threads = fs_generate_threads(m);
    c.scheduler = NULL;
    return c;
}

/* g->prompt through one request to an inline engine, ending at the
 * tokenizer's end-of-text token as the server's requests do; an unbounded
 * cache's context caps max_tokens (*stopped_at_context then set). */
static int generate_engine(fs_session *s, size_t max_tokens, int on_device, fs_generation *g, fs_error *err) {
    const fs_model *m = s->model;
    size_t max_seq = fs_model_cfg(m)->max_seq;
    if (!fs_model_paged_max_blocks(m, 1) && g->n_prompt + max_tokens > max_seq) {
        max_tokens = max_seq - g->n_prompt;
        g->stopped_at_context = 1;
    }
    fs_engine_config c = one_request_config(s, g->n_prompt + max_tokens);
    c.on_device = on_device;
    fs_engine *e = NULL;
    int rc = fs_engine_create_inline(&e, s, &c, err);
    if (rc) return rc;
    g->cache_bytes = c.kv_blocks * fs_kv_block_bytes(m, c.kv_block);
    snprintf(g->backend, sizeof g->backend, "%s", fs_engine_backend(e));
    fs_request_params p = {.struct_size = sizeof p, .prompt = g->prompt, .n_prompt = g->n_prompt,
                           .max_tokens = max_tokens, .sampler = fs_generate_sampler(s->gen_cfg),
                           .eos = fs_tokenizer_eos(s->tokenizer)}; /* the server's rule (http.c) */
    generation_sink gs = {g, FS_FINISH_NONE, NULL};
    double t0 = fs_now();
    rc = fs_engine_submit(e, &p, collect, &gs, NULL, err);
    if (!rc) rc = fs_engine_run_until_idle(e, err);
    g->seconds = fs_now() - t0;
    fs_engine_destroy(e);
    g->stopped_at_eos = gs.finish == FS_FINISH_STOP;
    if (g->stopped_at_eos) g->stopped_at_context = 0; /* it ended before the context did */
    if (!rc && gs.finish == FS_FINISH_ERROR) rc = fs_error_set(err, FS_ERR_RUNTIME, "generation failed: %s", gs.error);
    return rc;
}

/* The same over one fs_seq, for plugins without the paged step. */
static int generate_seq(fs_session *s, size_t max_tokens, fs_generation *g, fs_error *err) {
    const fs_model *m = s->model;
    fs_seq_config sc = {.B = 1, .threads = fs_generate_threads(m), .sampler = fs_generate_sampler(s->gen_cfg),
                        .weights = fs_wformat_parse(fs_config_string(s->gen_cfg, "weights"))};
    fs_seq *seq = NULL;
    int rc = fs_seq_create(&seq, m, &sc, err);
    int stopped = 0;
    if (!rc) {
        g->cache_bytes = fs_seq_cache_bytes(seq);
        rc = fs_generate(seq, g->prompt, g->n_prompt, max_tokens, fs_tokenizer_eos(s->tokenizer), g->tokens, &g->n,
                         &g->seconds, &stopped, err);
    }
    g->stopped_at_context = stopped == FS_GENERATE_CONTEXT;
    g->stopped_at_eos = stopped == FS_GENERATE_EOS;
    fs_seq_destroy(seq);
    return rc;
}

int fs_generate_text(fs_session *s, const char *text, size_t len, size_t max_tokens, int on_device,
                     fs_generation *g, fs_error *err) {
    memset(g, 0, sizeof *g);
    fs_tokens prompt = {0};
    int rc = fs_prompt_tokens(s, text, len, &prompt, err);
    if (rc) return rc;
    g->prompt = prompt.ids;
    g->n_prompt = prompt.n;
    /* room for what can be generated: an unbounded cache stops at its
     * context (the engine and fs_generate both stop there), however many
     * tokens were asked for */
    size_t max_seq = s->mcfg.max_seq, room = max_tokens;
    if (!fs_model_cache_bounded(s->model) && max_seq > g->n_prompt && room > max_seq - g->n_prompt + 1)
        room = max_seq - g->n_prompt + 1;
    if (room > SIZE_MAX / sizeof(int32_t) - 1 || !(g->tokens = malloc((room + 1) * sizeof(int32_t)))) {
        fs_generation_release(g);
        return fs_error_set(err, FS_ERR_NOMEM, "%s: no memory for %zu tokens: ask for fewer",
                            fs_config_where(s->gen_cfg, "max_tokens"), room);
    }
    fs_error why = {0}; /* a model the engine cannot run decodes through an fs_seq instead, on the CPU */
    int servable = fs_model_servable(s->model, &why) == FS_OK;
    if (!servable && on_device && fs_session_backend_asked(s))
        rc = fs_error_set(err, FS_ERR_UNSUPPORTED, "%s asks for a compute backend, but generation runs there through "
                          "the serving engine, which cannot run this model: %s; or set [run] device = cpu",
                          fs_session_backend_where(s), why.message);
    else
        rc = servable ? generate_engine(s, room, on_device, g, err) : generate_seq(s, room, g, err);
    if (!rc && room < max_tokens && g->n == room) g->stopped_at_context = 1;
    if (!rc) rc = fs_tokenizer_decode(s->tokenizer, g->tokens, g->n, &g->text, &g->text_len, err);
    if (rc) fs_generation_release(g);
    return rc;
}

/* The prompt must fit the context unless every cache is bounded. */
static int check_prompt(fs_session *s, const fs_run_options *o, const char *text, fs_error *err) {
    size_t ctx = s->mcfg.max_seq;
    fs_tokens prompt = {0};
    int rc = fs_prompt_tokens(s, text, strlen(text), &prompt, err);
    if (!rc && prompt.n >= ctx && !fs_model_cache_bounded(s->model))
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "%s: the prompt is %zu tokens, but the context ([model] max_seq) is %zu: shorten the prompt",
                          o->prompt ? "--prompt" : fs_config_where(s->gen_cfg, "prompt"), prompt.n, ctx);
    fs_tokens_release(&prompt);
    return rc;
}

static void print_generation(const char *text, const fs_generation *g) {
    fputs(text, stdout);
    fwrite(g->text, 1, g->text_len, stdout);
    fputc('\n', stdout);
    printf("{\"mode\": \"generate\", \"tokens\": %zu, \"tokens_per_s\": %.1f, \"prompt\": ", g->n,
           g->seconds > 0 ? (double)(g->n + g->n_prompt) / g->seconds : 0.0);
    fs_json_string(stdout, text);
    printf(", \"text\": ");
    fs_json_bytes(stdout, g->text, g->text_len);
    printf(", \"kv_cache_bytes\": %zu, \"finish_reason\": \"%s\", \"backend\": \"%s\"}\n", g->cache_bytes,
           g->stopped_at_eos ? "stop" : "length", g->backend[0] ? g->backend : "none");
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
    int rc = check_prompt(s, o, text, err);
    if (rc) return rc;
    *config_error = 0;
    if ((rc = fs_checkpoint_load(ckpt, s, NULL, NULL, err))) return rc;
    fs_generation g;
    rc = fs_generate_text(s, text, strlen(text), (size_t)fs_config_int(s->gen_cfg, "max_tokens"), 1, &g, err);
    if (rc) {
        *config_error = rc == FS_ERR_INVALID || rc == FS_ERR_UNSUPPORTED; /* the graph asks what cannot run */
        return rc;
    }
    if (g.stopped_at_context)
        fs_log(FS_LOG_WARN, NULL, "stopped after %zu tokens: the context of %zu positions is full", g.n,
               s->mcfg.max_seq);
    print_generation(text, &g);
    fs_generation_release(&g);
    return FS_OK;
}
