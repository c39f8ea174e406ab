/* openai_json.c — the response objects of the OpenAI API (openai.h), with
 * jansson: completions and chat completions whole or as streamed chunks,
 * usage, logprobs in both endpoints' formats, errors, the model list. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "io/utf8.h"
#include "serve/openai.h"

/* jansson refuses NaN and infinities; a log-probability that is not finite
 * is written as OpenAI writes a negligible one. */
static json_t *logprob_value(float lp) { return json_real(isfinite(lp) ? (double)lp : -9999.0); }

void fs_openai_token_text(const fs_tokenizer *tok, int32_t id, fs_buf *out) {
    size_t n = 0;
    const char *s = tok ? fs_tokenizer_token(tok, id, &n) : NULL;
    if (!s) {
        fs_buf_printf(out, "<token %d>", (int)id);
        return;
    }
    if (fs_utf8_valid_prefix(s, n) == n) {
        fs_buf_add(out, s, n);
        return;
    }
    fs_buf_puts(out, "bytes:");
    for (size_t i = 0; i < n; i++) fs_buf_printf(out, "\\x%02x", (unsigned char)s[i]);
}

static json_t *token_string(const fs_tokenizer *tok, int32_t id) {
    fs_buf b = {0};
    fs_openai_token_text(tok, id, &b);
    json_t *s = b.failed ? NULL : json_stringn(b.p ? b.p : "", b.n);
    fs_buf_release(&b);
    return s;
}

static json_t *token_bytes(const fs_tokenizer *tok, int32_t id) {
    size_t n = 0;
    const char *s = tok ? fs_tokenizer_token(tok, id, &n) : NULL;
    json_t *a = json_array();
    for (size_t i = 0; s && i < n; i++) json_array_append_new(a, json_integer((unsigned char)s[i]));
    return a;
}

/* Completions' legacy format: parallel lists; each top_logprobs entry maps
 * the alternatives' text (and always the sampled token's) to log p; an
 * echoed prompt's first token has null for both (as OpenAI's). */
static json_t *completion_logprobs(const fs_openai_reply *r, const fs_openai_choice *c) {
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (size_t i = 0; i < c->n_tokens; i++) {
        const fs_openai_token *t = &c->tokens[i];
        json_array_append_new(tokens, token_string(r->tok, t->token));
        json_array_append_new(offs, json_integer((json_int_t)t->text_offset));
        if (t->unconditioned) {
            json_array_append_new(lps, json_null());
            json_array_append_new(tops, json_null());
            continue;
        }
        json_array_append_new(lps, logprob_value(t->logprob));
        json_t *top = json_object();
        for (size_t k = 0; k < t->n_top; k++) {
            json_t *key = token_string(r->tok, t->top_token[k]);
            if (key) json_object_set_new(top, json_string_value(key), logprob_value(t->top_logprob[k]));
            json_decref(key);
        }
        json_t *key = token_string(r->tok, t->token);
        if (key && !json_object_get(top, json_string_value(key)))
            json_object_set_new(top, json_string_value(key), logprob_value(t->logprob));
        json_decref(key);
        json_array_append_new(tops, top);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs", tops,
                     "text_offset", offs);
}

static json_t *chat_token(const fs_tokenizer *tok, int32_t id, float lp) {
    return json_pack("{s:o, s:o, s:o}", "token", token_string(tok, id), "logprob", logprob_value(lp), "bytes",
                     token_bytes(tok, id));
}

/* Chat's format: one object per token with its top alternatives. */
static json_t *chat_logprobs(const fs_openai_reply *r, const fs_openai_choice *c) {
    json_t *content = json_array();
    for (size_t i = 0; i < c->n_tokens; i++) {
        const fs_openai_token *t = &c->tokens[i];
        json_t *o = chat_token(r->tok, t->token, t->logprob), *top = json_array();
        for (size_t k = 0; k < t->n_top; k++)
            json_array_append_new(top, chat_token(r->tok, t->top_token[k], t->top_logprob[k]));
        json_object_set_new(o, "top_logprobs", top);
        json_array_append_new(content, o);
    }
    return json_pack("{s:o}", "content", content);
}

static json_t *logprobs_of(const fs_openai_reply *r, const fs_openai_choice *c) {
    if (!r->logprobs) return json_null();
    return r->kind == FS_OPENAI_CHAT ? chat_logprobs(r, c) : completion_logprobs(r, c);
}

static json_t *finish_of(const fs_openai_choice *c) {
    return c->finish_reason ? json_string(c->finish_reason) : json_null();
}

static json_t *usage_of(const fs_openai_usage *u) {
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)u->prompt_tokens, "completion_tokens",
                     (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)(u->prompt_tokens + u->completion_tokens), "prompt_tokens_details", "cached_tokens",
                     (json_int_t)u->cached_tokens);
}

static json_t *head(const fs_openai_reply *r, const char *object) {
    return json_pack("{s:s, s:s, s:I, s:s}", "id", r->id, "object", object, "created", (json_int_t)r->created,
                     "model", r->model);
}

static char *dump(json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

static json_t *text_of(const fs_openai_choice *c) { return json_stringn(c->text ? c->text : "", c->len); }

char *fs_openai_response_json(const fs_openai_reply *r, const fs_openai_choice *c, const fs_openai_usage *u) {
    json_t *choice;
    if (r->kind == FS_OPENAI_CHAT)
        choice = json_pack("{s:i, s:{s:s, s:o}, s:o, s:o}", "index", 0, "message", "role", "assistant", "content",
                           text_of(c), "logprobs", logprobs_of(r, c), "finish_reason", finish_of(c));
    else
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "text", text_of(c), "logprobs", logprobs_of(r, c),
                           "finish_reason", finish_of(c));
    json_t *o = head(r, r->kind == FS_OPENAI_CHAT ? "chat.completion" : "text_completion");
    if (o && choice) {
        json_object_set_new(o, "choices", json_pack("[o]", choice));
        json_object_set_new(o, "usage", usage_of(u));
    } else {
        json_decref(choice);
    }
    return dump(o);
}

char *fs_openai_chunk_json(const fs_openai_reply *r, const fs_openai_choice *c, int role_chunk) {
    json_t *choice;
    if (r->kind == FS_OPENAI_CHAT) {
        json_t *delta = json_object();
        if (role_chunk) {
            json_object_set_new(delta, "role", json_string("assistant"));
            json_object_set_new(delta, "content", json_string(""));
        } else if (c->len) {
            json_object_set_new(delta, "content", text_of(c));
        }
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "delta", delta, "logprobs",
                           role_chunk || !c->n_tokens ? json_null() : logprobs_of(r, c), "finish_reason",
                           finish_of(c));
    } else {
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "text", text_of(c), "logprobs",
                           c->n_tokens ? logprobs_of(r, c) : json_null(), "finish_reason", finish_of(c));
    }
    json_t *o = head(r, r->kind == FS_OPENAI_CHAT ? "chat.completion.chunk" : "text_completion");
    if (o && choice)
        json_object_set_new(o, "choices", json_pack("[o]", choice));
    else
        json_decref(choice);
    return dump(o);
}

char *fs_openai_usage_chunk_json(const fs_openai_reply *r, const fs_openai_usage *u) {
    json_t *o = head(r, r->kind == FS_OPENAI_CHAT ? "chat.completion.chunk" : "text_completion");
    if (o) {
        json_object_set_new(o, "choices", json_array());
        json_object_set_new(o, "usage", usage_of(u));
    }
    return dump(o);
}

char *fs_openai_error_json(const fs_openai_error *e) {
    /* the message is ours, but may quote the client's bytes: keep it valid */
    char msg[FS_UTF8_DECODE_MAX(sizeof e->message)];
    fs_utf8_decoder d;
    fs_utf8_decoder_init(&d);
    size_t n = fs_utf8_decode(&d, e->message, strlen(e->message), msg);
    n += fs_utf8_flush(&d, msg + n);
    return dump(json_pack("{s:{s:s%, s:s, s:o, s:o}}", "error", "message", msg, n, "type", e->type, "param",
                          e->param[0] ? json_string(e->param) : json_null(), "code",
                          e->code ? json_string(e->code) : json_null()));
}

static json_t *model_object(const char *id, long long created) {
    return json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "model", "created", (json_int_t)created, "owned_by",
                     "fastserve");
}

char *fs_openai_models_json(const char *model_id, long long created, int list) {
    if (!list) return dump(model_object(model_id, created));
    return dump(json_pack("{s:s, s:[o]}", "object", "list", "data", model_object(model_id, created)));
}
