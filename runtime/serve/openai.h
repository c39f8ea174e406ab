/* openai.h — the OpenAI API's request bodies and response objects, as
 * /v1/completions and /v1/chat/completions take and give them.
 *
 * Parsing is a pure function of the body's bytes (and the server's
 * limits): no tokenizer, no model, no global state, so a fuzzer can drive
 * it (issue 13). A body is accepted or refused whole; a refusal fills an
 * fs_openai_error with the HTTP status and OpenAI's error fields, naming
 * the field at fault in `param`.
 *
 * What is accepted (others fields are ignored, as OpenAI's clients send
 * many; those whose non-default values would change the result and are not
 * implemented are refused rather than ignored: n/best_of other than 1,
 * suffix, non-zero presence/frequency penalties, logit_bias, tools,
 * response_format other than text):
 *
 *   completions  model, prompt (a string, a list of one string, token ids,
 *                or a list of one list of ids), max_tokens (default 16),
 *                temperature (0..2, default 1; 0 = greedy), top_p (0..1],
 *                top_k (0 or -1 = off), seed, stop (a string or up to 4),
 *                stream, stream_options.include_usage, echo, logprobs (0..5;
 *                with echo, the prompt's tokens' too)
 *   chat         model, messages (role + content: a string or text parts;
 *                rendered by chat_template.h), max_tokens or
 *                max_completion_tokens (default: the rest of the context),
 *                temperature, top_p, top_k, seed, stop, stream,
 *                stream_options, logprobs (bool), top_logprobs (0..5) */
#ifndef FS_SERVE_OPENAI_H
#define FS_SERVE_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "io/tokenizer.h"
#include "model/sampler.h"
#include "serve/buf.h"

typedef struct fs_openai_error {
    int status;          /* HTTP status: 400, 401, 404, ... */
    const char *type;    /* "invalid_request_error", "authentication_error", ... (static) */
    const char *code;    /* a static string, or NULL for JSON null */
    char param[64];      /* the body field at fault; "" for JSON null */
    char message[512];
} fs_openai_error;

/* Fills err and returns its status negated (a non-zero value to return). */
int fs_openai_error_set(fs_openai_error *err, int status, const char *type, const char *code, const char *param,
                        const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* Shorthand for the 400 invalid_request_error of a body field. */
int fs_openai_bad(fs_openai_error *err, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

typedef enum fs_openai_kind { FS_OPENAI_COMPLETION = 0, FS_OPENAI_CHAT = 1 } fs_openai_kind;

#define FS_OPENAI_MAX_STOP 4     /* stop strings a request may give (OpenAI's limit) */
#define FS_OPENAI_MAX_LOGPROBS 5 /* alternatives per token (OpenAI's legacy limit) */
#define FS_OPENAI_MAX_ALL_STOPS (FS_OPENAI_MAX_STOP + 3) /* with the chat template's */

typedef struct fs_openai_limits {
    const char *model_id;    /* the served model; a request naming another gets 404 */
    size_t max_tokens_limit; /* [serve] max_tokens_limit: a larger max_tokens gets 400 */
} fs_openai_limits;

typedef struct fs_openai_request {
    fs_openai_kind kind;
    char *prompt; /* the prompt text (chat: the rendered messages), NUL-terminated; NULL when given as ids */
    size_t prompt_len;
    int32_t *prompt_ids; /* completions' prompt given as token ids */
    size_t n_prompt_ids;
    size_t max_tokens;   /* completions with echo may ask 0: the prompt back, nothing generated */
    int max_tokens_given; /* else the default of the kind (fs_openai_default_max_tokens) */
    fs_sampler sampler;
    int seed_given;      /* else the server picks one */
    char *stop[FS_OPENAI_MAX_ALL_STOPS];
    size_t stop_len[FS_OPENAI_MAX_ALL_STOPS];
    size_t n_stop;
    int stream, include_usage, echo;
    int logprobs;        /* logprobs wanted */
    size_t top_logprobs; /* alternatives per token */
} fs_openai_request;

/* The body (n bytes, not necessarily NUL-terminated) of POST
 * /v1/completions or /v1/chat/completions. 0, or non-zero with err filled
 * and *out empty. */
int fs_openai_parse_completion(const char *body, size_t n, const fs_openai_limits *lim, fs_openai_request *out,
                               fs_openai_error *err);
int fs_openai_parse_chat(const char *body, size_t n, const fs_openai_limits *lim, fs_openai_request *out,
                         fs_openai_error *err);
void fs_openai_request_release(fs_openai_request *r); /* accepts a zeroed one */

/* max_tokens when the request gives none: 16 for completions (OpenAI's
 * default), for chat what the context leaves after the prompt (capped by
 * the limit; `room` is SIZE_MAX for a model whose cache is bounded). */
size_t fs_openai_default_max_tokens(const fs_openai_request *r, size_t room, size_t limit);

/* ---- responses ---- */

/* One token of the choice with its log-probabilities, as the engine gave
 * them: a generated one, or an echoed prompt token. */
typedef struct fs_openai_token {
    int32_t token;
    float logprob;
    size_t n_top;
    int32_t top_token[FS_OPENAI_MAX_LOGPROBS];
    float top_logprob[FS_OPENAI_MAX_LOGPROBS];
    size_t text_offset; /* characters of the choice's text (the echoed prompt included) before it */
    int unconditioned;  /* the prompt's first token: nothing before it, so null log p and alternatives */
} fs_openai_token;

/* What every object of one request's response shares. */
typedef struct fs_openai_reply {
    fs_openai_kind kind;
    const char *id;           /* "cmpl-..." / "chatcmpl-..." */
    long long created;        /* Unix seconds */
    const char *model;
    const fs_tokenizer *tok;  /* for the tokens' text in logprobs */
    int logprobs;             /* the request asked for them */
} fs_openai_reply;

/* A choice's text (valid UTF-8) with its tokens, and why it ended (NULL
 * while a stream goes on). */
typedef struct fs_openai_choice {
    const char *text;
    size_t len;
    const fs_openai_token *tokens;
    size_t n_tokens;
    const char *finish_reason; /* "stop", "length" or NULL */
} fs_openai_choice;

typedef struct fs_openai_usage {
    size_t prompt_tokens, completion_tokens, cached_tokens;
} fs_openai_usage;

/* The whole body of a non-streamed response. NULL when out of memory. */
char *fs_openai_response_json(const fs_openai_reply *r, const fs_openai_choice *c, const fs_openai_usage *u);
/* One streamed chunk's JSON (what follows "data: "); chat's first chunk
 * (role_chunk) carries the role and no text. */
char *fs_openai_chunk_json(const fs_openai_reply *r, const fs_openai_choice *c, int role_chunk);
/* The last chunk of a stream with stream_options.include_usage. */
char *fs_openai_usage_chunk_json(const fs_openai_reply *r, const fs_openai_usage *u);
/* {"error": {"message", "type", "param", "code"}} */
char *fs_openai_error_json(const fs_openai_error *e);
/* GET /v1/models (and /v1/models/ID's object when list is 0). */
char *fs_openai_models_json(const char *model_id, long long created, int list);

/* A token's text for logprobs: its bytes when they are valid UTF-8 on
 * their own, else "bytes:\xNN..." (OpenAI's way of naming a token that is
 * part of a character). */
void fs_openai_token_text(const fs_tokenizer *tok, int32_t id, fs_buf *out);

#endif
