/* test_engine.c — the serving engine (serve/engine.h) at the engine level.
 *
 * The reference for a request is the same request decoded alone by an
 * fs_seq, token by token (its prompt fed one token per step, then its own
 * greedy pick or its own seeded stream): the engine must give exactly those
 * tokens, bit for bit, for 24 requests of mixed lengths batched together;
 * with a pool so small that requests are preempted and swapped out, or
 * recomputed when the swap area is off; with a common prefix shared
 * (including a prompt that is entirely cached, written through a
 * copy-on-write); with fcfs and mlfq; on its own thread with requests
 * submitted from other threads. Then: cancellation, every block back in
 * the pool, refusals, a longformer stream far past max_seq in a pool that
 * could not hold it unbounded, a reload whose in-flight requests finish on
 * their old weights, and the 1.1 plugin refused by name. Prompt
 * log-probabilities (echo with logprobs) against the training forward's
 * log_softmax, in chunks, past the prefix cache, preempted midway, alone
 * and batched bit for bit; the end-of-text token ending a request (and
 * fs_generate, --mode generate's other path, at the same token). */
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compute/qweights.h"
#include "core/host.h"
#include "model/kv_pool.h"
#include "modes/modes.h"
#include "serve/engine.h"
#include "session/checkpoint.h"
#include "test_util.h"

#define GRAPH                                                                                                    \
    "[model]\nvocab_size = %zu\nn_layer = 2\nn_head = 2\nn_embd = 32\nmax_seq = 96\n[attention]\nplugin = %s\n%s\n" \
    "[serve]\nscheduler = %s\n%s"

enum { V = 64, MAX_REQ = 32, MAX_TOK = 512, TOP = FS_ENGINE_MAX_LOGPROBS };

static fs_session *session_vocab(size_t vocab, const char *plugin, const char *akeys, const char *sched,
                                 const char *skeys, uint64_t seed) {
    char ini[1024];
    snprintf(ini, sizeof ini, GRAPH, vocab, plugin, akeys, sched, skeys);
    fs_session *s = test_session(ini);
    fs_model_init_weights(s->model, seed);
    fs_error err = {0};
    assert_int_equal(fs_model_init_plugin_params(s->model, &err), 0);
    return s;
}

static fs_session *session_with(const char *plugin, const char *akeys, const char *sched, const char *skeys,
                                uint64_t seed) {
    return session_vocab(V, plugin, akeys, sched, skeys, seed);
}

/* ---- requests and what came back ---- */

typedef struct request {
    int32_t prompt[MAX_TOK];
    size_t n_prompt, max_tokens;
    fs_sampler sampler;
    /* filled by the sink */
    int32_t out[MAX_TOK];
    float lp[MAX_TOK];           /* each generated token's logprob, as its event said */
    size_t n_out, events, finals, cached;
    fs_finish_reason finish;
    uint64_t id;
    fs_engine *engine;
    size_t cancel_after; /* cancel itself after this many tokens (0: never) */
    unsigned delay_us;   /* the sink takes this long (a slow client: the engine's iterations wait) */
    const struct request *watch; /* at its first token, note how many `watch` had */
    size_t watched;
    int weights;         /* FS_WEIGHTS_*: the format its solo reference reads the weights in */
    int32_t eos;                 /* its end-of-text token, or -1 */
    int stats_at_final;          /* read the engine's stats when the final event arrives, into at_final */
    fs_engine_stats at_final;
    /* prompt log-probabilities: asked with prompt_logprobs and `logprobs` alternatives */
    int prompt_logprobs;
    size_t logprobs;
    int token_logprobs;
    int32_t ptok[MAX_TOK];       /* the prompt events, in order */
    float plp[MAX_TOK], ptop_lp[MAX_TOK][TOP];
    int32_t ptop[MAX_TOK][TOP];
    size_t n_plp, pn_top[MAX_TOK];
} request;

static void prompt_event(request *r, const fs_request_event *ev) {
    assert_int_equal(r->n_out, 0); /* every prompt event before the first generated token */
    size_t i = r->n_plp++;
    r->ptok[i] = ev->token;
    r->plp[i] = ev->logprob;
    r->pn_top[i] = ev->n_top;
    memcpy(r->ptop[i], ev->top_token, sizeof r->ptop[i]);
    memcpy(r->ptop_lp[i], ev->top_logprob, sizeof r->ptop_lp[i]);
}

static void sink(void *arg, const fs_request_event *ev) {
    request *r = arg;
    r->events++;
    if (ev->prompt) {
        prompt_event(r, ev);
        return;
    }
    if (ev->token >= 0) r->lp[r->n_out] = ev->logprob, r->out[r->n_out++] = ev->token;
    if (ev->finish != FS_FINISH_NONE) {
        r->finals++;
        r->finish = ev->finish;
        r->cached = ev->cached_prompt_tokens;
        if (r->stats_at_final) fs_engine_stats_get(r->engine, &r->at_final);
    }
    assert_int_equal(ev->completion_tokens, r->n_out);
    if (r->cancel_after && r->n_out == r->cancel_after) fs_engine_cancel(r->engine, r->id);
    if (r->watch && r->n_out == 1) r->watched = r->watch->n_out + 1;
    if (r->delay_us) usleep(r->delay_us);
}

/* Mixed lengths: prompts of 1..45 tokens, 1..40 new ones. */
static void make_requests(request *rq, size_t n, const int32_t *prefix, size_t n_prefix, double temperature) {
    for (size_t i = 0; i < n; i++) {
        request *r = &rq[i];
        memset(r, 0, sizeof *r);
        r->n_prompt = n_prefix + 1 + (i * 17) % 29;
        r->max_tokens = 1 + (i * 11) % 40;
        for (size_t t = 0; t < r->n_prompt; t++)
            r->prompt[t] = t < n_prefix ? prefix[t] : (int32_t)((t * 7 + i * 13 + 5) % V);
        r->sampler = (fs_sampler){temperature, temperature > 0 ? 10 : 0, 1.0, 1000 + i};
        r->eos = -1;
    }
}

/* The request alone, through an fs_seq: the reference. */
static void solo(const fs_model *m, const request *r, int32_t *out, size_t *n_out) {
    fs_seq_config sc = {.B = 1, .sampler = r->sampler, .weights = r->weights};
    fs_seq *seq = NULL;
    fs_error err = {0};
    assert_int_equal(fs_seq_create(&seq, m, &sc, &err), 0);
    float *logits = malloc(fs_model_cfg(m)->vocab * sizeof *logits);
    for (size_t t = 0; t < r->n_prompt; t++) assert_int_equal(fs_seq_decode(seq, &r->prompt[t], logits, &err), 0);
    *n_out = 0;
    while (*n_out < r->max_tokens) {
        int32_t tok = fs_seq_sample(seq, 0, logits);
        out[(*n_out)++] = tok;
        if (*n_out < r->max_tokens) assert_int_equal(fs_seq_decode(seq, &tok, logits, &err), 0);
    }
    free(logits);
    fs_seq_destroy(seq);
}

static void submit(fs_engine *e, request *r) {
    fs_request_params p = {.struct_size = sizeof p, .prompt = r->prompt, .n_prompt = r->n_prompt,
                           .max_tokens = r->max_tokens, .sampler = r->sampler, .eos = r->eos,
                           .logprobs = r->logprobs, .prompt_logprobs = r->prompt_logprobs,
                           .token_logprobs = r->token_logprobs};
    fs_error err = {0};
    r->engine = e;
    int rc = fs_engine_submit(e, &p, sink, r, &r->id, &err);
    if (rc) fprintf(stderr, "submit: %s\n", err.message);
    assert_int_equal(rc, 0);
}

static void check_solo(const fs_model *m, const request *rq, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        const request *r = &rq[i];
        int32_t want[MAX_TOK];
        size_t n_want;
        solo(m, r, want, &n_want);
        assert_int_equal(r->finals, 1);
        assert_int_equal(r->finish, FS_FINISH_LENGTH);
        if (r->n_out != n_want || memcmp(r->out, want, n_want * sizeof *want) != 0) {
            size_t k = 0;
            while (k < n_want && k < r->n_out && r->out[k] == want[k]) k++;
            fprintf(stderr, "%s: request %zu (prompt %zu, max_tokens %zu) differs from its solo run at token %zu\n",
                    what, i, r->n_prompt, r->max_tokens, k);
            fail();
        }
    }
}

static fs_engine_config config_of(fs_session *s, size_t kv_blocks, size_t swap_blocks, int sharing) {
    fs_engine_config c;
    fs_engine_config_from(&c, s);
    c.kv_block = 8;
    c.kv_blocks = kv_blocks;
    c.swap_blocks = swap_blocks;
    c.prefill_chunk = 16;
    c.max_running = 32;
    c.prefix_sharing = sharing;
    return c;
}

static void check_pool_empty(fs_engine *e) {
    fs_engine_stats st;
    fs_engine_stats_get(e, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.swap_blocks_used, 0);
    assert_int_equal(st.running + st.waiting + st.swapped, 0);
}

/* 24 requests through an inline engine; returns its stats. */
static fs_engine_stats run_batch(fs_session *s, const fs_engine_config *c, request *rq, size_t n) {
    fs_engine *e = NULL;
    fs_error err = {0};
    int rc = fs_engine_create_inline(&e, s, c, &err);
    if (rc) fprintf(stderr, "engine: %s\n", err.message);
    assert_int_equal(rc, 0);
    for (size_t i = 0; i < n; i++) submit(e, &rq[i]);
    assert_int_equal(fs_engine_run_until_idle(e, &err), 0);
    fs_engine_stats st;
    fs_engine_stats_get(e, &st);
    check_pool_empty(e);
    fs_engine_destroy(e);
    return st;
}

static void check_batched(const char *sched, size_t kv_blocks, size_t swap_blocks, double temperature) {
    fs_session *s = session_with("dense", "", sched, "", 7);
    request *rq = calloc(24, sizeof *rq);
    make_requests(rq, 24, NULL, 0, temperature);
    fs_engine_config c = config_of(s, kv_blocks, swap_blocks, 0);
    fs_engine_stats st = run_batch(s, &c, rq, 24);
    check_solo(s->model, rq, 24, sched);
    assert_int_equal(st.finished[FS_FINISH_LENGTH], 24);
    if (kv_blocks && kv_blocks < 40) {
        assert_true(st.preemptions > 0);
        if (swap_blocks) assert_true(st.swaps_out > 0 && st.swaps_in == st.swaps_out);
        else assert_true(st.recomputes > 0 && st.swaps_out == 0);
    }
    free(rq);
    fs_session_close(s);
}

static void test_batched_greedy_equals_solo(void **state) {
    (void)state;
    check_batched("fcfs", 0, 0, 0.0);
    check_batched("mlfq", 0, 0, 0.0);
}

/* 20 blocks of 8 tokens for 24 requests of up to 85 tokens. */
static void test_preempted_swapped_equals_solo(void **state) {
    (void)state;
    check_batched("fcfs", 20, 64, 0.0);
    check_batched("mlfq", 20, 64, 0.0);
}

static void test_preempted_recomputed_equals_solo(void **state) {
    (void)state;
    check_batched("fcfs", 20, 0, 0.0);
    check_batched("mlfq", 16, 0, 0.0);
}

static void test_sampled_equals_solo(void **state) {
    (void)state;
    check_batched("mlfq", 0, 0, 0.8);
    check_batched("fcfs", 20, 8, 0.8);
}

/* A common 32-token prefix (four full blocks): computed once and shared;
 * two requests with the same prompt of whole blocks: the second's every
 * block is shared and its last token written into a copy. */
static void test_prefix_sharing(void **state) {
    (void)state;
    fs_session *s = session_with("dense", "", "fcfs", "", 7);
    int32_t prefix[32];
    for (size_t t = 0; t < 32; t++) prefix[t] = (int32_t)((t * 5 + 1) % V);
    request *rq = calloc(26, sizeof *rq);
    make_requests(rq, 24, prefix, 32, 0.0);
    for (size_t i = 24; i < 26; i++) { /* equal prompts, 40 tokens = 5 blocks */
        rq[i] = rq[0];
        rq[i].n_prompt = 40;
        rq[i].max_tokens = 6;
    }
    fs_engine_config c = config_of(s, 60, 16, 1);
    fs_engine *e = NULL;
    fs_error err = {0};
    assert_int_equal(fs_engine_create_inline(&e, s, &c, &err), 0);
    submit(e, &rq[24]); /* alone first: its blocks are published */
    assert_int_equal(fs_engine_run_until_idle(e, &err), 0);
    submit(e, &rq[25]); /* first (fcfs), before the others' blocks push its prompt's out */
    for (size_t i = 0; i < 24; i++) submit(e, &rq[i]);
    assert_int_equal(fs_engine_run_until_idle(e, &err), 0);
    fs_engine_stats st;
    fs_engine_stats_get(e, &st);
    check_pool_empty(e);
    fs_engine_destroy(e);
    check_solo(s->model, rq, 26, "prefix sharing");
    assert_true(st.prefix_hits >= 24 * 4);
    assert_int_equal(rq[25].cached, 39); /* every block found; the last token computed again */
    for (size_t i = 0; i < 24; i++) assert_true(rq[i].cached >= 32);
    free(rq);
    fs_session_close(s);
}

/* Cancelled from its own sink after 3 tokens: it ends at the next
 * iteration with no more tokens, and its blocks are back. */
static void test_cancel_frees_blocks(void **state) {
    (void)state;
    fs_session *s = session_with("dense", "", "mlfq", "", 7);
    request *rq = calloc(4, sizeof *rq);
    make_requests(rq, 4, NULL, 0, 0.0);
    for (size_t i = 0; i < 4; i++) rq[i].max_tokens = 40;
    rq[1].cancel_after = 3;
    rq[2].cancel_after = 1;
    fs_engine_config c = config_of(s, 0, 0, 1);
    fs_engine *e = NULL;
    fs_error err = {0};
    assert_int_equal(fs_engine_create_inline(&e, s, &c, &err), 0);
    for (size_t i = 0; i < 4; i++) submit(e, &rq[i]);
    fs_engine_cancel(e, 12345); /* unknown: ignored */
    assert_int_equal(fs_engine_run_until_idle(e, &err), 0);
    assert_int_equal(rq[1].finish, FS_FINISH_CANCELLED);
    assert_int_equal(rq[1].n_out, 3);
    assert_int_equal(rq[2].n_out, 1);
    assert_int_equal(rq[0].finish, FS_FINISH_LENGTH);
    assert_int_equal(rq[0].n_out, 40);
    for (size_t i = 0; i < 4; i++) assert_int_equal(rq[i].finals, 1);
    fs_engine_stats st;
    fs_engine_stats_get(e, &st);
    assert_int_equal(st.finished[FS_FINISH_CANCELLED], 2);
    check_pool_empty(e);
    fs_engine_destroy(e);
    free(rq);
    fs_session_close(s);
}

/* What submit refuses: a prompt past the context, a full queue, a drain. */
static void test_refusals(void **state) {
    (void)state;
    fs_session *s = session_with("dense", "", "fcfs", "", 7);
    fs_engine_config c = config_of(s, 0, 0, 1);
    c.max_queue = 2;
    fs_engine *e = NULL;
    fs_error err = {0};
    assert_int_equal(fs_engine_create_inline(&e, s, &c, &err), 0);
    request r = {.n_prompt = 90, .max_tokens = 10};
    fs_request_params p = {.struct_size = sizeof p, .prompt = r.prompt, .n_prompt = 90, .max_tokens = 10, .eos = -1};
    assert_int_equal(fs_engine_submit(e, &p, sink, &r, NULL, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "max_seq"));
    p.n_prompt = 0;
    assert_int_equal(fs_engine_submit(e, &p, sink, &r, NULL, &err), FS_ERR_INVALID);
    p.n_prompt = 4;
    r.prompt[1] = 64;
    assert_int_equal(fs_engine_submit(e, &p, sink, &r, NULL, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "vocabulary"));
    r.prompt[1] = 3;
    request ok[3] = {{.n_prompt = 4, .max_tokens = 2, .eos = -1}, {.n_prompt = 4, .max_tokens = 2, .eos = -1}};
    submit(e, &ok[0]);
    submit(e, &ok[1]);
    assert_int_equal(fs_engine_submit(e, &p, sink, &r, NULL, &err), FS_ERR_BUSY);
    fs_engine_drain(e, 10.0);
    assert_int_equal(ok[0].finish, FS_FINISH_LENGTH);
    assert_int_equal(ok[1].n_out, 2);
    assert_int_equal(fs_engine_submit(e, &p, sink, &r, NULL, &err), FS_ERR_UNSUPPORTED);
    fs_engine_destroy(e);
    /* a pool that cannot hold one sequence */
    c = config_of(s, 5, 0, 1);
    assert_int_equal(fs_engine_create_inline(&e, s, &c, &err), FS_ERR_INVALID);
    assert_null(e);
    fs_session_close(s);
}

/* The engine refuses a plugin built before the paged step, naming it. */
static void test_refuses_abi_1_1_plugin(void **state) {
    (void)state;
    fs_session *s = session_with("dense_v11", "", "fcfs", "", 7);
    fs_engine_config c = config_of(s, 0, 0, 1);
    fs_engine *e = NULL;
    fs_error err = {0};
    assert_int_equal(fs_engine_create(&e, s, &c, &err), FS_ERR_UNSUPPORTED);
    assert_null(e);
    if (!strstr(err.message, "'dense_v11'") || !strstr(err.message, "ABI 1.1") || !strstr(err.message, "paged_step")) {
        fprintf(stderr, "message: %s\n", err.message);
        fail();
    }
    fs_session_close(s);
}

/* Longformer streams far past max_seq (96) in a pool of 16 blocks (128
 * tokens), alongside others, each equal to its solo run. */
static void test_longformer_streams(void **state) {
    (void)state;
    fs_session *s = session_with("longformer", "window = 6\nglobal = first:2\n", "mlfq", "", 7);
    request *rq = calloc(4, sizeof *rq);
    make_requests(rq, 4, NULL, 0, 0.0);
    rq[0].max_tokens = 300;
    rq[1].max_tokens = 120;
    fs_engine_config c = config_of(s, 16, 0, 1);
    fs_engine_stats st = run_batch(s, &c, rq, 4);
    check_solo(s->model, rq, 4, "longformer");
    assert_true(st.kv_blocks_total == 16);
    free(rq);
    fs_session_close(s);
}

static void test_lsh_batched(void **state) {
    (void)state;
    fs_session *s = session_with("lsh", "n_hashes = 2\nn_buckets = 4\ndecode_window = 5\n", "fcfs", "", 7);
    request *rq = calloc(8, sizeof *rq);
    make_requests(rq, 8, NULL, 0, 0.0);
    fs_engine_config c = config_of(s, 30, 8, 1);
    run_batch(s, &c, rq, 8);
    check_solo(s->model, rq, 8, "lsh");
    free(rq);
    fs_session_close(s);
}

/* A client holding its whole reply finds its request and the work done
 * for it in the stats (/metrics): they are published before the final
 * event goes out, whether the request ends at max_tokens, at an
 * end-of-text token or with max_tokens 0. */
static void test_stats_before_final_event(void **state) {
    (void)state;
    fs_session *s = session_with("dense", "", "fcfs", "", 7);
    request *rq = calloc(3, sizeof *rq);
    make_requests(rq, 3, NULL, 0, 0.0);
    size_t out = 0;
    for (size_t i = 0; i < 3; i++) {
        rq[i].stats_at_final = 1;
        rq[i].max_tokens = i == 2 ? 0 : 5;
    }
    int32_t want[MAX_TOK];
    size_t n_want;
    solo(s->model, &rq[1], want, &n_want);
    rq[1].eos = want[2]; /* ends at its third token */
    fs_engine_config c = config_of(s, 0, 0, 0);
    fs_engine *e = NULL;
    fs_error err = {0};
    assert_int_equal(fs_engine_create_inline(&e, s, &c, &err), 0);
    for (size_t i = 0; i < 3; i++) {
        submit(e, &rq[i]);
        assert_int_equal(fs_engine_run_until_idle(e, &err), 0);
        const fs_engine_stats *st = &rq[i].at_final;
        out += rq[i].n_out;
        assert_int_equal(st->finished[FS_FINISH_LENGTH] + st->finished[FS_FINISH_STOP], i + 1);
        assert_int_equal(st->tokens_out, out);
        if (i < 2) assert_int_equal(st->prompt_computed, rq[0].n_prompt + (i ? rq[1].n_prompt : 0));
    }
    assert_int_equal(rq[1].finish, FS_FINISH_STOP);
    fs_engine_destroy(e);
    free(rq);
    fs_session_close(s);
}

/* bf16 KV blocks ([generate] kv_dtype = bf16): requests batched, preempted
 * and swapped (the blocks move as bytes), sharing a prefix, get exactly
 * their solo runs' tokens, with each plugin; and the same pool in MiB holds
 * twice the blocks of f32's. */
static void check_bf16_kv(const char *plugin, const char *keys, const char *sched) {
    char akeys[256];
    snprintf(akeys, sizeof akeys, "%s\n[generate]\nkv_dtype = bf16", keys);
    fs_session *s = session_with(plugin, akeys, sched, "", 7), *f = session_with(plugin, keys, sched, "", 7);
    int32_t prefix[16];
    for (size_t t = 0; t < 16; t++) prefix[t] = (int32_t)((t * 5 + 1) % V);
    request *rq = calloc(24, sizeof *rq);
    make_requests(rq, 24, prefix, 16, 0.0);
    fs_engine_config c = config_of(s, 24, 64, 1);
    fs_engine_stats st = run_batch(s, &c, rq, 24);
    check_solo(s->model, rq, 24, plugin);
    assert_true(st.preemptions > 0 && st.swaps_out > 0 && st.swaps_in == st.swaps_out);
    assert_int_equal(2 * fs_kv_block_bytes(s->model, 8), fs_kv_block_bytes(f->model, 8));
    free(rq);
    fs_session_close(s);
    fs_session_close(f);
}

static void test_bf16_kv_equals_solo(void **state) {
    (void)state;
    check_bf16_kv("dense", "", "fcfs");
    check_bf16_kv("longformer", "window = 6\nglobal = first:2", "mlfq");
}

/* ---- prompt log-probabilities (echo with logprobs) ---- */

/* log_softmax of the training forward's logits over the prompt (teacher
 * forcing, as --mode eval computes them: other kernels than the ragged
 * step's), (n, V) in double. */
static double *reference_logprobs(fs_model *m, const int32_t *prompt, size_t n) {
    size_t vocab = fs_model_cfg(m)->vocab;
    fs_error err = {0};
    assert_int_equal(fs_model_forward(m, prompt, 1, n, &err), 0);
    const float *logits = fs_model_logits(m);
    double *lp = malloc(n * vocab * sizeof *lp);
    for (size_t t = 0; t < n; t++) {
        const float *row = logits + t * vocab;
        double mx = row[0], sum = 0.0;
        for (size_t v = 1; v < vocab; v++) mx = row[v] > mx ? row[v] : mx;
        for (size_t v = 0; v < vocab; v++) sum += exp((double)row[v] - mx);
        for (size_t v = 0; v < vocab; v++) lp[t * vocab + v] = (double)row[v] - mx - log(sum);
    }
    return lp;
}

/* The k-th largest of row (V), k from 0. */
static double kth_largest(const double *row, size_t vocab, size_t k) {
    double below = INFINITY, v = -INFINITY;
    for (size_t i = 0; i <= k; i++, below = v) {
        v = -INFINITY;
        for (size_t j = 0; j < vocab; j++)
            if (row[j] < below && row[j] > v) v = row[j];
    }
    return v;
}

/* r's prompt events against the reference: one per prompt token from the
 * second, log p(token | the ones before) and the top alternatives, within
 * 1e-4. */
static void check_prompt_logprobs(fs_model *m, const request *r, const char *what) {
    size_t vocab = fs_model_cfg(m)->vocab;
    double *ref = reference_logprobs(m, r->prompt, r->n_prompt), worst = 0.0;
    if (r->n_plp != r->n_prompt - 1) fail_msg("%s: %zu prompt events for %zu tokens", what, r->n_plp, r->n_prompt);
    for (size_t i = 0; i < r->n_plp; i++) {
        const double *row = ref + i * vocab; /* position i predicts token i + 1 */
        assert_int_equal(r->ptok[i], r->prompt[i + 1]);
        worst = fmax(worst, fabs(r->plp[i] - row[r->prompt[i + 1]]));
        assert_int_equal(r->pn_top[i], r->logprobs);
        for (size_t k = 0; k < r->pn_top[i]; k++) { /* the k-th alternative: its value, and its token's */
            worst = fmax(worst, fabs(r->ptop_lp[i][k] - kth_largest(row, vocab, k)));
            worst = fmax(worst, fabs(r->ptop_lp[i][k] - row[r->ptop[i][k]]));
        }
    }
    if (!(worst < 1e-4)) fail_msg("%s: prompt log-probabilities %.3g from the training forward's", what, worst);
    free(ref);
}

static void check_same_prompt_logprobs(const request *a, const request *b, const char *what) {
    assert_int_equal(a->n_plp, b->n_plp);
    if (memcmp(a->plp, b->plp, a->n_plp * sizeof *a->plp) || memcmp(a->ptop, b->ptop, a->n_plp * sizeof *a->ptop) ||
        memcmp(a->ptop_lp, b->ptop_lp, a->n_plp * sizeof *a->ptop_lp))
        fail_msg("%s: the prompt log-probabilities differ in their bits", what);
}

/* Echo requests (prompts of 1..86 tokens, chunks of 16, max_tokens 0 or
 * more) among others, after a request that published their common
 * 32-token prefix: each one's prompt log-probabilities are the training
 * forward's, it computed its whole prompt (no cached blocks), its tokens
 * are its solo run's, and alone it gives the same bits as batched. */
static void test_prompt_logprobs(void **state) {
    (void)state;
    fs_session *s = session_with("dense", "", "fcfs", "", 7);
    int32_t prefix[32];
    for (size_t t = 0; t < 32; t++) prefix[t] = (int32_t)((t * 5 + 1) % V);
    request *rq = calloc(13, sizeof *rq);
    make_requests(rq, 12, prefix, 32, 0.0);
    rq[12] = rq[0];
    rq[12].n_prompt = 40;
    static const size_t echo[] = {1, 4, 7, 10}, max_tokens[] = {0, 5, 0, 12}, n_prompt[] = {86, 40, 1, 33};
    for (size_t i = 0; i < 4; i++) {
        request *r = &rq[echo[i]];
        r->prompt_logprobs = 1;
        r->logprobs = i + 1 < TOP ? i + 1 : TOP;
        r->max_tokens = max_tokens[i];
        r->n_prompt = n_prompt[i];
        for (size_t t = 32; t < r->n_prompt; t++) r->prompt[t] = (int32_t)((t * 11 + i) % V);
    }
    rq[3].logprobs = 2; /* alternatives of generated tokens only */
    fs_engine_config c = config_of(s, 0, 0, 1);
    fs_engine *e = NULL;
    fs_error err = {0};
    assert_int_equal(fs_engine_create_inline(&e, s, &c, &err), 0);
    submit(e, &rq[12]); /* publishes the prefix's blocks */
    assert_int_equal(fs_engine_run_until_idle(e, &err), 0);
    for (size_t i = 0; i < 12; i++) submit(e, &rq[i]);
    assert_int_equal(fs_engine_run_until_idle(e, &err), 0);
    check_pool_empty(e);
    fs_engine_destroy(e);
    check_solo(s->model, rq, 13, "with prompt log-probabilities");
    for (size_t i = 0; i < 4; i++) {
        const request *r = &rq[echo[i]];
        assert_int_equal(r->n_out, r->max_tokens);
        assert_int_equal(r->cached, 0);
        check_prompt_logprobs(s->model, r, "batched");
    }
    assert_true(rq[0].cached >= 32); /* the others did share */
    assert_int_equal(rq[3].n_plp, 0);
    /* alone, in chunks of 5 and without sharing: the same bits */
    c = config_of(s, 0, 0, 0);
    c.prefill_chunk = 5;
    for (size_t i = 0; i < 4; i++) {
        request alone = rq[echo[i]];
        alone.n_out = alone.n_plp = alone.finals = alone.events = 0;
        run_batch(s, &c, &alone, 1);
        check_same_prompt_logprobs(&alone, &rq[echo[i]], "alone vs batched");
        assert_memory_equal(alone.out, rq[echo[i]].out, alone.n_out * sizeof *alone.out);
    }
    free(rq);
    fs_session_close(s);
}

/* A vocabulary of 65536: an iteration's rows of prompt logits (8 MiB: 32
 * positions) cut the prompts' chunks of 64; a pool of 12 blocks of 8
 * preempts the long prompt midway (no swap area: it is recomputed) and it
 * sends no prompt token twice; the numbers are the training forward's. */
static void test_prompt_logprobs_large_vocab(void **state) {
    (void)state;
    enum { BIG = 65536 };
    fs_session *s = session_vocab(BIG, "dense", "", "fcfs", "", 7);
    request *rq = calloc(2, sizeof *rq);
    make_requests(rq, 2, NULL, 0, 0.0);
    static const size_t n_prompt[] = {20, 88}, max_tokens[] = {70, 2};
    for (size_t i = 0; i < 2; i++) {
        rq[i].n_prompt = n_prompt[i];
        rq[i].max_tokens = max_tokens[i];
        for (size_t t = 0; t < rq[i].n_prompt; t++) rq[i].prompt[t] = (int32_t)((t * 4099 + i * 7919) % BIG);
        rq[i].prompt_logprobs = 1;
        rq[i].logprobs = 2;
    }
    fs_engine_config c = config_of(s, 12, 0, 1);
    c.prefill_chunk = 64;
    fs_engine_stats st = run_batch(s, &c, rq, 2);
    assert_true(st.recomputes > 0);
    check_solo(s->model, rq, 2, "large vocabulary");
    for (size_t i = 0; i < 2; i++) check_prompt_logprobs(s->model, &rq[i], "large vocabulary");
    free(rq);
    fs_session_close(s);
}

/* A generated token's log-probability is computed only when asked for
 * (alternatives, or token_logprobs alone: OpenAI's logprobs = 0): asked,
 * it is the same number either way, a log-probability (below 0); not
 * asked, every event says 0. */
static void test_token_logprobs_only_when_asked(void **state) {
    (void)state;
    fs_session *s = session_with("dense", "", "fcfs", "", 7);
    request *rq = calloc(3, sizeof *rq);
    make_requests(rq, 1, NULL, 0, 0.0);
    rq[0].max_tokens = 12;
    rq[1] = rq[2] = rq[0];
    rq[0].token_logprobs = 1; /* the logprob, no alternatives */
    rq[1].logprobs = 2;
    fs_engine_config c = config_of(s, 0, 0, 0);
    run_batch(s, &c, rq, 3);
    check_solo(s->model, rq, 3, "token logprobs");
    for (size_t t = 0; t < rq[0].max_tokens; t++) {
        assert_memory_equal(&rq[0].lp[t], &rq[1].lp[t], sizeof(float));
        assert_true(rq[0].lp[t] < 0.0f && rq[0].lp[t] > -20.0f);
        assert_true(rq[2].lp[t] == 0.0f);
    }
    free(rq);
    fs_session_close(s);
}

/* ---- the end-of-text token ---- */

/* A request whose greedy run reaches its eos token ends there with
 * FS_FINISH_STOP, without it (nothing sent, nothing counted); fs_generate
 * (--mode generate over an fs_seq) stops at the same token. */
static void test_eos_stops(void **state) {
    (void)state;
    fs_session *s = session_with("dense", "", "fcfs", "", 7);
    request r[2];
    make_requests(r, 1, NULL, 0, 1.0); /* sampled: a random model's greedy run repeats one token */
    r[0].max_tokens = 40;
    int32_t want[MAX_TOK];
    size_t n_want, k = 1;
    solo(s->model, &r[0], want, &n_want);
    for (; k < n_want; k++) { /* the first token past the first that did not come before */
        size_t j = 0;
        while (j < k && want[j] != want[k]) j++;
        if (j == k) break;
    }
    assert_true(k < n_want);
    r[0].eos = want[k];
    r[1] = r[0];
    r[1].eos = -1;
    fs_engine_config c = config_of(s, 0, 0, 1);
    fs_engine_stats st = run_batch(s, &c, r, 2);
    assert_int_equal(r[0].finish, FS_FINISH_STOP);
    assert_int_equal(r[0].n_out, k);
    assert_memory_equal(r[0].out, want, k * sizeof *want);
    assert_int_equal(r[1].finish, FS_FINISH_LENGTH);
    assert_int_equal(r[1].n_out, 40);
    assert_int_equal(st.finished[FS_FINISH_STOP], 1);
    fs_seq_config sc = {.B = 1, .sampler = r[0].sampler};
    fs_seq *seq = NULL;
    fs_error err = {0};
    assert_int_equal(fs_seq_create(&seq, s->model, &sc, &err), 0);
    int32_t out[MAX_TOK];
    size_t n_out = 0;
    double secs;
    int stopped = 0;
    assert_int_equal(fs_generate(seq, r[0].prompt, r[0].n_prompt, 40, r[0].eos, out, &n_out, &secs, &stopped, &err), 0);
    assert_int_equal(stopped, FS_GENERATE_EOS);
    assert_int_equal(n_out, k);
    assert_memory_equal(out, want, k * sizeof *want);
    fs_seq_destroy(seq);
    fs_session_close(s);
}

/* ---- the engine on its own thread ---- */

typedef struct client {
    fs_engine *e;
    request *rq;
    size_t n;
} client;

static void *client_main(void *arg) {
    client *c = arg;
    for (size_t i = 0; i < c->n; i++) {
        submit(c->e, &c->rq[i]);
        usleep(1000);
    }
    return NULL;
}

static void test_threaded(void **state) {
    (void)state;
    fs_session *s = session_with("dense", "", "mlfq", "", 7);
    request *rq = calloc(24, sizeof *rq);
    make_requests(rq, 24, NULL, 0, 0.7);
    fs_engine_config c = config_of(s, 24, 8, 1);
    fs_engine *e = NULL;
    fs_error err = {0};
    assert_int_equal(fs_engine_create(&e, s, &c, &err), 0);
    client cl[2] = {{e, rq, 12}, {e, rq + 12, 12}};
    pthread_t th[2];
    for (size_t i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, client_main, &cl[i]), 0);
    for (size_t i = 0; i < 2; i++) pthread_join(th[i], NULL);
    fs_engine_drain(e, 60.0);
    check_pool_empty(e);
    fs_engine_stats st;
    fs_engine_stats_get(e, &st);
    assert_int_equal(st.finished[FS_FINISH_LENGTH], 24);
    assert_int_equal(st.ttft.total, 24);
    assert_int_equal(st.e2e.total, 24);
    assert_true(st.iteration.total == st.iterations && st.iterations > 0);
    assert_true(st.ttft.count[FS_ENGINE_HIST_BUCKETS - 1] == 24);
    fs_engine_destroy(e);
    check_solo(s->model, rq, 24, "threaded");
    free(rq);
    fs_session_close(s);
}

/* ---- reload ---- */

typedef struct reload_state {
    request *late;
    fs_engine *e;
    const char *path;
    int done;
} reload_state;

/* Requests in flight when a reload lands finish on the weights they
 * started with; those that start after it run on the new ones, in the
 * engine's weights format (a compact copy is made of each checkpoint). */
static void check_reload(int weights) {
    char dir[] = "/tmp/fs_engine_reloadXXXXXX", path[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fs_session *s = session_with("dense", "", "fcfs", "", 7), *other = session_with("dense", "", "fcfs", "", 99);
    fs_error err = {0};
    assert_int_equal(fs_checkpoint_save(path, other, NULL, NULL, &err), 0);
    request *rq = calloc(4, sizeof *rq);
    make_requests(rq, 4, NULL, 0, 0.0);
    for (size_t i = 0; i < 4; i++) rq[i].max_tokens = 30, rq[i].weights = weights;
    rq[0].max_tokens = 70;
    rq[0].delay_us = 2000; /* still running when the others start */
    rq[2].watch = &rq[0];
    fs_engine_config c = config_of(s, 0, 0, 1);
    c.weights = weights;
    fs_engine *e = NULL;
    assert_int_equal(fs_engine_create(&e, s, &c, &err), 0);
    submit(e, &rq[0]);
    submit(e, &rq[1]);
    while (__atomic_load_n(&rq[0].n_out, __ATOMIC_SEQ_CST) < 2) usleep(100);
    assert_int_equal(fs_engine_reload(e, path, &err), 0);
    submit(e, &rq[2]);
    submit(e, &rq[3]);
    fs_engine_drain(e, 60.0);
    check_pool_empty(e);
    fs_engine_destroy(e);
    /* iterations ran both generations side by side */
    assert_true(rq[2].watched > 0 && rq[2].watched < rq[0].max_tokens);
    check_solo(s->model, rq, 2, "in flight: old weights");
    check_solo(other->model, rq + 2, 2, "after the reload: new weights");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(rq);
    fs_session_close(s);
    fs_session_close(other);
}

static void test_reload(void **state) {
    (void)state;
    check_reload(FS_WEIGHTS_F32);
    check_reload(FS_WEIGHTS_Q8);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_greedy_equals_solo),
        cmocka_unit_test(test_preempted_swapped_equals_solo),
        cmocka_unit_test(test_preempted_recomputed_equals_solo),
        cmocka_unit_test(test_sampled_equals_solo),
        cmocka_unit_test(test_prefix_sharing),
        cmocka_unit_test(test_cancel_frees_blocks),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_refuses_abi_1_1_plugin),
        cmocka_unit_test(test_longformer_streams),
        cmocka_unit_test(test_lsh_batched),
        cmocka_unit_test(test_bf16_kv_equals_solo),
        cmocka_unit_test(test_stats_before_final_event),
        cmocka_unit_test(test_prompt_logprobs),
        cmocka_unit_test(test_prompt_logprobs_large_vocab),
        cmocka_unit_test(test_token_logprobs_only_when_asked),
        cmocka_unit_test(test_eos_stops),
        cmocka_unit_test(test_threaded),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
