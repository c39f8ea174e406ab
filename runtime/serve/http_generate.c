/* http_generate.c — POST /v1/completions and /v1/chat/completions: the
 * body parsed (openai.h), the prompt tokenized, the request submitted to
 * the engine; the engine's events, queued by the sink on the engine
 * thread, turned into text (detok.h) on the HTTP thread and written as
 * one response or as server-sent events. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io/utf8.h"
#include "serve/http_internal.h"

/* ---- the engine's side: queue and wake, nothing else ---- */

static void on_event(void *arg, const fs_request_event *ev) {
    fs_http_call *c = arg;
    pthread_mutex_lock(&c->mu);
    if (ev->token >= 0) {
        if (c->n_events == c->cap_events) {
            size_t cap = c->cap_events ? 2 * c->cap_events : 16;
            fs_request_event *e = realloc(c->events, cap * sizeof *e);
            if (e) c->events = e, c->cap_events = cap;
        }
        if (c->n_events < c->cap_events) {
            c->events[c->n_events] = *ev;
            c->events[c->n_events++].error = NULL;
        } else {
            c->lost_events = 1;
        }
    }
    if (ev->finish) {
        c->final_seen = 1;
        c->finish = ev->finish;
        c->prompt_tokens = ev->prompt_tokens;
        c->completion_tokens = ev->completion_tokens;
        c->cached_tokens = ev->cached_prompt_tokens;
        snprintf(c->error, sizeof c->error, "%s", ev->error ? ev->error : "");
    }
    if (c->suspended && (ev->finish || c->wants_each_event)) {
        c->suspended = 0;
        MHD_resume_connection(c->conn);
    }
    pthread_mutex_unlock(&c->mu);
    if (ev->finish) fs_http_call_unref(c); /* the engine's reference */
}

/* ---- events to text, on the HTTP thread ---- */

/* Room for one more token in c->tokens (not yet counted), or NULL. */
static fs_openai_token *new_token(fs_http_call *c) {
    if (c->n_tokens == c->cap_tokens) {
        size_t cap = c->cap_tokens ? 2 * c->cap_tokens : 32;
        fs_openai_token *t = realloc(c->tokens, cap * sizeof *t);
        if (t) c->tokens = t;
        size_t *s = realloc(c->token_start, cap * sizeof *s);
        if (s) c->token_start = s;
        size_t *e = realloc(c->token_end, cap * sizeof *e);
        if (e) c->token_end = e;
        if (!t || !s || !e) return NULL;
        c->cap_tokens = cap;
    }
    return &c->tokens[c->n_tokens];
}

static void set_logprobs(fs_openai_token *t, const fs_request_event *ev) {
    t->logprob = ev->logprob;
    t->n_top = ev->n_top < FS_OPENAI_MAX_LOGPROBS ? ev->n_top : FS_OPENAI_MAX_LOGPROBS;
    memcpy(t->top_token, ev->top_token, sizeof t->top_token);
    memcpy(t->top_logprob, ev->top_logprob, sizeof t->top_logprob);
}

static int keep_token(fs_http_call *c, const fs_request_event *ev, size_t offset, size_t start) {
    fs_openai_token *t = new_token(c);
    if (!t) return 0;
    memset(t, 0, sizeof *t);
    t->token = ev->token;
    set_logprobs(t, ev);
    t->text_offset = c->echo_chars + offset;
    c->token_start[c->n_tokens] = start;
    c->token_end[c->n_tokens++] = c->detok.text.n;
    return 1;
}

/* A prompt token's log-probabilities (echo with logprobs): the engine sends
 * them in order, from the prompt's second token. */
static void add_prompt_token(fs_http_call *c, const fs_request_event *ev) {
    size_t i = 1 + c->echo_lp_got;
    if (i >= c->n_echo_tokens || c->tokens[i].token != ev->token) {
        c->lost_events = 1;
        return;
    }
    set_logprobs(&c->tokens[i], ev);
    c->echo_lp_got++;
}

/* One generated token: its text, its logprobs, and whether it completes a
 * stop string (then the request is cancelled: what follows is not shown). */
static void add_token(fs_http_call *c, const fs_request_event *ev) {
    if (ev->prompt) {
        add_prompt_token(c, ev);
        return;
    }
    if (c->stop_hit || ev->token == c->srv->eos) return; /* the end-of-text token has no text */
    size_t start = c->detok.text.n, offset;
    int hit = fs_detok_push(&c->detok, ev->token, &offset);
    if (c->req.logprobs && !keep_token(c, ev, offset, start)) c->lost_events = 1;
    if (hit) {
        c->stop_hit = 1;
        fs_engine_end(c->srv->engine, c->id, FS_FINISH_STOP);
    }
}

/* Takes what the sink queued and applies it. */
static void process_events(fs_http_call *c) {
    pthread_mutex_lock(&c->mu);
    fs_request_event *evs = c->events;
    size_t n = c->n_events;
    int final = c->final_seen;
    c->events = NULL;
    c->n_events = c->cap_events = 0;
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < n; i++) add_token(c, &evs[i]);
    free(evs);
    if (final && !c->done) {
        fs_detok_finish(&c->detok);
        c->done = 1;
    }
    if (!c->req.stream) { /* keep the stop-string search to the text not yet final */
        const char *t;
        fs_detok_take(&c->detok, &t);
    }
}

/* ---- how a request ended ---- */

static const char *finish_reason(const fs_http_call *c) {
    if (c->stop_hit || c->finish == FS_FINISH_STOP) return "stop";
    return c->finish == FS_FINISH_LENGTH ? "length" : NULL;
}

/* The error of a request that did not end normally (0 when it did). */
static int finish_error(const fs_http_call *c, fs_openai_error *e) {
    if (c->lost_events) return fs_openai_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    if (finish_reason(c)) return 0;
    switch (c->finish) {
    case FS_FINISH_SHUTDOWN:
        return fs_openai_error_set(e, 503, "server_error", "shutting_down", NULL,
                                   "the server shut down before the request finished");
    case FS_FINISH_CANCELLED:
        if (atomic_load(&c->client_gone))
            return fs_openai_error_set(e, 499, "invalid_request_error", "client_closed", NULL,
                                       "the client closed the connection");
        return fs_openai_error_set(e, 504, "server_error", "timeout", NULL,
                                   "the request ran past [serve] request_timeout_s = %g s and was cancelled",
                                   c->srv->cfg.request_timeout_s);
    default:
        return fs_openai_error_set(e, 500, "server_error", NULL, NULL, "the engine failed the request: %s",
                                   c->error[0] ? c->error : "no reason given");
    }
}

static fs_openai_usage usage_of(const fs_http_call *c) {
    return (fs_openai_usage){c->prompt_tokens, c->completion_tokens, c->cached_tokens};
}

/* Tokens [from, *) whose text lies before `limit` bytes of the reply (the
 * echoed prompt's always do). */
static size_t tokens_before(const fs_http_call *c, size_t from, size_t limit, int by_end) {
    size_t j = from < c->n_echo_tokens ? c->n_echo_tokens : from;
    while (j < c->n_tokens && (by_end ? c->token_end[j] <= limit : c->token_start[j] < limit)) j++;
    return j;
}

/* ---- a whole response ---- */

static enum MHD_Result answer(fs_http_call *c) {
    fs_openai_error e;
    if (finish_error(c, &e)) return fs_http_respond_error(c, &e);
    size_t len = fs_detok_length(&c->detok);
    fs_buf text = {0};
    fs_buf_add(&text, c->echo ? c->echo : "", c->echo_len);
    fs_buf_add(&text, c->detok.text.p ? c->detok.text.p : "", len);
    fs_openai_choice choice = {text.p, text.n, c->tokens, tokens_before(c, 0, len, 0), finish_reason(c)};
    fs_openai_usage u = usage_of(c);
    char *json = text.failed ? NULL : fs_openai_response_json(&c->reply, &choice, &u);
    fs_buf_release(&text);
    if (!json) {
        fs_openai_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        return fs_http_respond_error(c, &e);
    }
    size_t n = strlen(json);
    char *body = realloc(json, n + 2);
    if (!body) body = json;
    else body[n++] = '\n', body[n] = '\0';
    return fs_http_respond(c, 200, "application/json", body, n, NULL);
}

/* ---- a stream of server-sent events ---- */

static void sse(fs_http_call *c, char *json) {
    if (!json) {
        c->out.failed = 1;
        return;
    }
    fs_buf_puts(&c->out, "data: ");
    fs_buf_puts(&c->out, json);
    fs_buf_puts(&c->out, "\n\n");
    free(json);
}

static void chunk(fs_http_call *c, const char *text, size_t n, size_t tokens_upto, const char *finish) {
    fs_openai_choice ch = {text, n, c->tokens + c->tokens_sent, tokens_upto - c->tokens_sent, finish};
    sse(c, fs_openai_chunk_json(&c->reply, &ch, 0));
    c->tokens_sent = tokens_upto;
}

static void stream_end(fs_http_call *c) {
    fs_openai_error e;
    const char *t;
    size_t n = fs_detok_take(&c->detok, &t);
    size_t upto = tokens_before(c, c->tokens_sent, fs_detok_length(&c->detok), 0);
    if (finish_error(c, &e)) {
        if (n || upto > c->tokens_sent) chunk(c, t, n, upto, NULL);
        sse(c, fs_openai_error_json(&e));
    } else if (c->reply.kind == FS_OPENAI_CHAT) {
        if (n || upto > c->tokens_sent) chunk(c, t, n, upto, NULL);
        chunk(c, "", 0, c->tokens_sent, finish_reason(c));
    } else {
        chunk(c, t, n, upto, finish_reason(c));
    }
    if (!finish_error(c, &e) && c->req.include_usage) {
        fs_openai_usage u = usage_of(c);
        sse(c, fs_openai_usage_chunk_json(&c->reply, &u));
    }
    fs_buf_puts(&c->out, "data: [DONE]\n\n");
    c->stream_end = 1;
}

/* The chunks the events so far allow. */
static void stream_progress(fs_http_call *c) {
    if (c->reply.kind == FS_OPENAI_CHAT && !c->role_sent) {
        fs_openai_choice ch = {0};
        sse(c, fs_openai_chunk_json(&c->reply, &ch, 1));
        c->role_sent = 1;
    }
    if (c->echo && !c->echo_sent) { /* with logprobs, once the prompt's have all come */
        int ready = c->echo_lp_got + 1 >= c->n_echo_tokens;
        if (!ready && !c->done) return;
        chunk(c, c->echo, c->echo_len, ready ? c->n_echo_tokens : c->tokens_sent, NULL);
        c->tokens_sent = c->n_echo_tokens; /* a request that failed before: its text alone */
        c->echo_sent = 1;
    }
    if (c->done) {
        stream_end(c);
        return;
    }
    const char *t;
    size_t n = fs_detok_take(&c->detok, &t);
    size_t upto = tokens_before(c, c->tokens_sent, c->detok.released, 1);
    if (n || upto > c->tokens_sent) chunk(c, t, n, upto, NULL);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    fs_http_call *c = cls;
    for (;;) {
        if (c->out.n) {
            size_t n = c->out.n < max ? c->out.n : max;
            memcpy(buf, c->out.p, n);
            fs_buf_consume(&c->out, n);
            return (ssize_t)n;
        }
        if (c->out.failed) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (c->stream_end) return MHD_CONTENT_READER_END_OF_STREAM;
        process_events(c);
        stream_progress(c);
        if (c->out.n || c->stream_end || c->out.failed) continue;
        pthread_mutex_lock(&c->mu);
        int idle = !c->n_events && !c->final_seen;
        if (idle) {
            c->suspended = 1;
            MHD_suspend_connection(c->conn);
        }
        pthread_mutex_unlock(&c->mu);
        if (idle) return 0; /* the sink resumes the connection */
    }
}

static void stream_free(void *cls) { fs_http_call_unref(cls); }

static enum MHD_Result start_stream(fs_http_call *c) {
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, c, stream_free);
    if (!r) return MHD_NO;
    fs_http_call_ref(c); /* the reader's */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    enum MHD_Result ok = MHD_queue_response(c->conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    c->responded = 1;
    fs_http_count(c, 200);
    return ok;
}

/* ---- starting a request ---- */

static int tokenize(fs_http_call *c, fs_openai_error *e) {
    fs_http_server *srv = c->srv;
    if (c->req.prompt_ids) {
        for (size_t i = 0; i < c->req.n_prompt_ids; i++)
            if (fs_tokens_push(&c->prompt, c->req.prompt_ids[i])) goto nomem;
        return 0;
    }
    fs_error err = {0};
    pthread_mutex_lock(&srv->tok_mu);
    int rc = fs_tokenizer_encode(srv->tok, c->req.prompt, c->req.prompt_len, &c->prompt, &err);
    /* an empty prompt starts a document: the end-of-text token, or a new line (as --mode generate) */
    if (!rc && !c->prompt.n)
        rc = srv->eos >= 0 ? fs_tokens_push(&c->prompt, srv->eos) : fs_tokenizer_encode(srv->tok, "\n", 1, &c->prompt, &err);
    pthread_mutex_unlock(&srv->tok_mu);
    if (rc) return fs_openai_bad(e, c->req.kind == FS_OPENAI_CHAT ? "messages" : "prompt", "%s", err.message);
    return 0;
nomem:
    return fs_openai_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
}

/* The prompt's text for echo: as given, or the ids' bytes made valid. */
static int echo_text(fs_http_call *c, fs_openai_error *e) {
    if (!c->req.echo) return 0;
    const char *src = c->req.prompt;
    size_t n = c->req.prompt_len;
    char *bytes = NULL;
    if (!src) {
        fs_error err = {0};
        if (fs_tokenizer_decode(c->srv->tok, c->prompt.ids, c->prompt.n, &bytes, &n, &err)) goto nomem;
        src = bytes;
    }
    c->echo = malloc(FS_UTF8_DECODE_MAX(n) + 1);
    if (!c->echo) goto nomem;
    fs_utf8_decoder d;
    fs_utf8_decoder_init(&d);
    c->echo_len = fs_utf8_decode(&d, src, n, c->echo);
    c->echo_len += fs_utf8_flush(&d, c->echo + c->echo_len);
    c->echo[c->echo_len] = '\0';
    for (size_t i = 0; i < c->echo_len; i++) c->echo_chars += ((unsigned char)c->echo[i] & 0xC0) != 0x80;
    free(bytes);
    return 0;
nomem:
    free(bytes);
    return fs_openai_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
}

/* Echo with logprobs: the prompt's tokens head the choice's tokens, each at
 * the characters of the echoed text before it; the engine fills in their
 * log-probabilities (prompt events). */
static int echo_tokens(fs_http_call *c, fs_openai_error *e) {
    if (!c->req.echo || !c->req.logprobs) return 0;
    fs_detok d;
    fs_detok_init(&d, c->srv->tok, NULL, NULL, 0);
    for (size_t i = 0; i < c->prompt.n; i++) {
        fs_openai_token *t = new_token(c);
        if (!t) {
            fs_detok_release(&d);
            return fs_openai_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        }
        memset(t, 0, sizeof *t);
        t->token = c->prompt.ids[i];
        t->unconditioned = i == 0;
        fs_detok_push(&d, t->token, &t->text_offset);
        c->token_start[c->n_tokens] = c->token_end[c->n_tokens] = 0;
        c->n_tokens++;
    }
    fs_detok_release(&d);
    c->n_echo_tokens = c->n_tokens;
    return 0;
}

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void make_reply(fs_http_call *c, fs_openai_kind kind) {
    uint64_t serial = atomic_fetch_add(&c->srv->next_serial, 1);
    uint64_t a = mix64(c->srv->id_salt ^ serial), b = mix64(a);
    snprintf(c->reply_id, sizeof c->reply_id, "%s-%016llx%08llx", kind == FS_OPENAI_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)a, (unsigned long long)(b >> 32));
    if (!c->req.seed_given) c->req.sampler.seed = b;
    c->reply = (fs_openai_reply){kind, c->reply_id, (long long)time(NULL), c->srv->model_id, c->srv->tok,
                                 c->req.logprobs};
}

/* max_tokens: as asked, or the kind's default within the context. */
static int settle_max_tokens(fs_http_call *c, fs_openai_error *e) {
    size_t ctx = c->srv->cfg.context, n = c->prompt.n;
    size_t room = ctx == SIZE_MAX ? SIZE_MAX : ctx > n ? ctx - n : 0;
    if (!c->req.max_tokens_given)
        c->req.max_tokens = fs_openai_default_max_tokens(&c->req, room, c->srv->cfg.max_tokens_limit);
    if (c->req.max_tokens || (c->req.echo && c->req.max_tokens_given)) return 0;
    return fs_openai_bad(e, c->req.kind == FS_OPENAI_CHAT ? "messages" : "prompt",
                         "the prompt is %zu tokens, which fills the context of %zu: shorten it", n, ctx);
}

static int submit_error(int rc, const fs_error *err, fs_openai_error *e) {
    switch (rc) {
    case FS_ERR_BUSY:
        return fs_openai_error_set(e, 429, "server_error", "queue_full", NULL, "%s", err->message);
    case FS_ERR_INVALID: return fs_openai_bad(e, NULL, "%s", err->message);
    case FS_ERR_UNSUPPORTED:
        return fs_openai_error_set(e, 503, "server_error", "shutting_down", NULL, "%s", err->message);
    default: return fs_openai_error_set(e, 500, "server_error", NULL, NULL, "%s", err->message);
    }
}

static int submit(fs_http_call *c, fs_openai_error *e) {
    fs_http_server *srv = c->srv;
    fs_request_params p = {
        .struct_size = sizeof p,
        .prompt = c->prompt.ids,
        .n_prompt = c->prompt.n,
        .max_tokens = c->req.max_tokens,
        .sampler = c->req.sampler,
        .logprobs = c->req.logprobs ? c->req.top_logprobs : 0,
        .eos = srv->eos,
        .timeout_s = srv->cfg.request_timeout_s,
        .prompt_logprobs = c->n_echo_tokens > 0,
        .token_logprobs = c->req.logprobs,
    };
    fs_error err = {0};
    fs_http_call_ref(c); /* the engine's, until the final event */
    int rc = fs_engine_submit(srv->engine, &p, on_event, c, &c->id, &err);
    if (rc) {
        fs_http_call_unref(c);
        return submit_error(rc, &err, e);
    }
    c->started = 1;
    fs_http_call_go_live(c);
    return 0;
}

static int start(fs_http_call *c, fs_openai_kind kind, fs_openai_error *e) {
    fs_http_server *srv = c->srv;
    fs_openai_limits lim = {srv->model_id, srv->cfg.max_tokens_limit};
    const char *body = c->body.p ? c->body.p : "";
    int rc = kind == FS_OPENAI_CHAT ? fs_openai_parse_chat(body, c->body.n, &lim, &c->req, e)
                                    : fs_openai_parse_completion(body, c->body.n, &lim, &c->req, e);
    if (!rc) rc = tokenize(c, e);
    if (!rc) rc = echo_text(c, e);
    if (!rc) rc = echo_tokens(c, e);
    if (!rc) rc = settle_max_tokens(c, e);
    if (rc) return rc;
    make_reply(c, kind);
    fs_detok_init(&c->detok, srv->tok, c->req.stop, c->req.stop_len, c->req.n_stop);
    c->wants_each_event = c->req.stream || c->req.n_stop > 0;
    if (!c->req.max_tokens && c->n_echo_tokens < 2) { /* echo alone: nothing to generate or compute */
        c->finish = FS_FINISH_LENGTH;
        c->prompt_tokens = c->prompt.n;
        fs_detok_finish(&c->detok);
        c->done = 1;
        return 0;
    }
    return submit(c, e);
}

enum MHD_Result fs_http_generate(fs_http_call *c, fs_openai_kind kind) {
    if (!c->started && !c->done) {
        fs_openai_error e;
        if (start(c, kind, &e)) return fs_http_respond_error(c, &e);
        if (c->req.stream) return start_stream(c);
    }
    for (;;) {
        process_events(c);
        if (c->done) return answer(c);
        pthread_mutex_lock(&c->mu);
        int idle = !c->n_events && !c->final_seen;
        if (idle) {
            c->suspended = 1;
            MHD_suspend_connection(c->conn);
        }
        pthread_mutex_unlock(&c->mu);
        if (idle) return MHD_YES; /* the sink resumes the connection */
    }
}

void fs_http_generate_end(fs_http_call *c) {
    if (!c->started) return;
    pthread_mutex_lock(&c->mu);
    int running = !c->final_seen;
    pthread_mutex_unlock(&c->mu);
    if (running) fs_engine_cancel(c->srv->engine, c->id);
}
