/* openai_parse.c — request bodies of /v1/completions and
 * /v1/chat/completions to fs_openai_request (openai.h), with jansson. */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "serve/chat_template.h"
#include "serve/openai.h"

/* ---- errors ---- */

static int verror(fs_openai_error *err, int status, const char *type, const char *code, const char *param,
                  const char *fmt, va_list ap) {
    err->status = status;
    err->type = type;
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    return -status;
}

int fs_openai_error_set(fs_openai_error *err, int status, const char *type, const char *code, const char *param,
                        const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = verror(err, status, type, code, param, fmt, ap);
    va_end(ap);
    return rc;
}

int fs_openai_bad(fs_openai_error *err, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = verror(err, 400, "invalid_request_error", NULL, param, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- typed fields (absent and null are the same: the default) ---- */

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static json_t *field(json_t *obj, const char *name) {
    json_t *v = json_object_get(obj, name);
    return v && !json_is_null(v) ? v : NULL;
}

static int get_number(json_t *obj, const char *name, double lo, double hi, int lo_open, double *out,
                      fs_openai_error *err) {
    json_t *v = field(obj, name);
    if (!v) return 0;
    if (!json_is_number(v)) return fs_openai_bad(err, name, "'%s' must be a number, not %s", name, json_kind(v));
    double x = json_number_value(v);
    if (x < lo || x > hi || (lo_open && x <= lo))
        return fs_openai_bad(err, name, "'%s' = %g is outside %s%g, %g]", name, x, lo_open ? "(" : "[", lo, hi);
    *out = x;
    return 0;
}

static int get_int(json_t *obj, const char *name, long long lo, long long hi, long long *out, int *given,
                   fs_openai_error *err) {
    json_t *v = field(obj, name);
    if (!v) return 0;
    if (!json_is_integer(v)) return fs_openai_bad(err, name, "'%s' must be an integer, not %s", name, json_kind(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return fs_openai_bad(err, name, "'%s' = %lld is outside [%lld, %lld]", name, x, lo, hi);
    *out = x;
    if (given) *given = 1;
    return 0;
}

static int get_bool(json_t *obj, const char *name, int *out, fs_openai_error *err) {
    json_t *v = field(obj, name);
    if (!v) return 0;
    if (!json_is_boolean(v)) return fs_openai_bad(err, name, "'%s' must be true or false, not %s", name, json_kind(v));
    *out = json_is_true(v);
    return 0;
}

static char *dup_bytes(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static int out_of_memory(fs_openai_error *err) {
    return fs_openai_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
}

/* ---- fields both endpoints share ---- */

static int parse_model(json_t *obj, const fs_openai_limits *lim, fs_openai_error *err) {
    json_t *v = field(obj, "model");
    if (!v) return 0;
    if (!json_is_string(v)) return fs_openai_bad(err, "model", "'model' must be a string, not %s", json_kind(v));
    if (lim->model_id && strcmp(json_string_value(v), lim->model_id) != 0)
        return fs_openai_error_set(err, 404, "invalid_request_error", "model_not_found", "model",
                                   "The model '%.200s' does not exist: this server serves '%.100s' (GET /v1/models)",
                                   json_string_value(v), lim->model_id);
    return 0;
}

static int add_stop(fs_openai_request *r, const char *s, size_t n, fs_openai_error *err) {
    if (!(r->stop[r->n_stop] = dup_bytes(s, n))) return out_of_memory(err);
    r->stop_len[r->n_stop++] = n;
    return 0;
}

static int parse_stop(json_t *obj, fs_openai_request *r, fs_openai_error *err) {
    json_t *v = field(obj, "stop");
    if (!v) return 0;
    if (json_is_string(v)) {
        if (!json_string_length(v)) return fs_openai_bad(err, "stop", "'stop' must not be an empty string");
        return add_stop(r, json_string_value(v), json_string_length(v), err);
    }
    if (!json_is_array(v))
        return fs_openai_bad(err, "stop", "'stop' must be a string or a list of strings, not %s", json_kind(v));
    if (json_array_size(v) > FS_OPENAI_MAX_STOP)
        return fs_openai_bad(err, "stop", "'stop' has %zu strings: at most %d", json_array_size(v), FS_OPENAI_MAX_STOP);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s))
            return fs_openai_bad(err, "stop", "'stop' item %zu must be a string, not %s", i, json_kind(s));
        if (!json_string_length(s)) return fs_openai_bad(err, "stop", "'stop' item %zu is an empty string", i);
        int rc = add_stop(r, json_string_value(s), json_string_length(s), err);
        if (rc) return rc;
    }
    return 0;
}

/* Fields that, set to anything but their default, ask for what this server
 * does not do: refused rather than ignored. */
static int refuse_unsupported(json_t *obj, fs_openai_error *err) {
    static const char *const one[] = {"n", "best_of"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = field(obj, one[i]);
        if (v && !(json_is_integer(v) && json_integer_value(v) == 1))
            return fs_openai_bad(err, one[i], "'%s' must be 1: this server returns one choice per request", one[i]);
    }
    static const char *const zero[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = field(obj, zero[i]);
        if (v && !(json_is_number(v) && json_number_value(v) == 0))
            return fs_openai_bad(err, zero[i], "'%s' is not supported by this server (only 0)", zero[i]);
    }
    static const char *const empty[] = {"logit_bias", "tools", "functions"};
    for (size_t i = 0; i < 3; i++) {
        json_t *v = field(obj, empty[i]);
        if (v && !((json_is_object(v) && !json_object_size(v)) || (json_is_array(v) && !json_array_size(v))))
            return fs_openai_bad(err, empty[i], "'%s' is not supported by this server", empty[i]);
    }
    json_t *v = field(obj, "suffix");
    if (v && !(json_is_string(v) && !json_string_length(v)))
        return fs_openai_bad(err, "suffix", "'suffix' is not supported by this server");
    v = field(obj, "response_format");
    json_t *t = v && json_is_object(v) ? json_object_get(v, "type") : NULL;
    if (v && !(t && json_is_string(t) && !strcmp(json_string_value(t), "text")))
        return fs_openai_bad(err, "response_format", "'response_format' must be {\"type\": \"text\"} on this server");
    return 0;
}

static int parse_stream(json_t *obj, fs_openai_request *r, fs_openai_error *err) {
    int rc = get_bool(obj, "stream", &r->stream, err);
    if (rc) return rc;
    json_t *so = field(obj, "stream_options");
    if (!so) return 0;
    if (!r->stream)
        return fs_openai_bad(err, "stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (!json_is_object(so))
        return fs_openai_bad(err, "stream_options", "'stream_options' must be an object, not %s", json_kind(so));
    json_t *iu = field(so, "include_usage");
    if (iu && !json_is_boolean(iu))
        return fs_openai_bad(err, "stream_options.include_usage", "'include_usage' must be true or false, not %s",
                             json_kind(iu));
    r->include_usage = iu && json_is_true(iu);
    return 0;
}

static int parse_max_tokens(json_t *obj, const char *name, size_t min, const fs_openai_limits *lim,
                            fs_openai_request *r, fs_openai_error *err) {
    json_t *v = field(obj, name);
    if (!v) return 0;
    if (!json_is_integer(v)) return fs_openai_bad(err, name, "'%s' must be an integer, not %s", name, json_kind(v));
    long long x = json_integer_value(v);
    if (x < (long long)min) return fs_openai_bad(err, name, "'%s' = %lld: it must be at least %zu", name, x, min);
    if ((unsigned long long)x > lim->max_tokens_limit)
        return fs_openai_bad(err, name, "'%s' = %lld is more than this server allows ([serve] max_tokens_limit = %zu)",
                             name, x, lim->max_tokens_limit);
    r->max_tokens = (size_t)x;
    r->max_tokens_given = 1;
    return 0;
}

static int parse_sampling(json_t *obj, fs_openai_request *r, fs_openai_error *err) {
    r->sampler = (fs_sampler){.temperature = 1, .top_k = 0, .top_p = 1, .seed = 0};
    long long top_k = 0, seed = 0;
    int rc;
    if ((rc = get_number(obj, "temperature", 0, 2, 0, &r->sampler.temperature, err)) ||
        (rc = get_number(obj, "top_p", 0, 1, 1, &r->sampler.top_p, err)) ||
        (rc = get_int(obj, "top_k", -1, INT_MAX, &top_k, NULL, err)) ||
        (rc = get_int(obj, "seed", LLONG_MIN, LLONG_MAX, &seed, &r->seed_given, err)))
        return rc;
    r->sampler.top_k = top_k > 0 ? (size_t)top_k : 0;
    r->sampler.seed = (uint64_t)seed;
    return 0;
}

static int parse_common(json_t *obj, const fs_openai_limits *lim, fs_openai_request *r, fs_openai_error *err) {
    int rc;
    if ((rc = parse_model(obj, lim, err)) || (rc = refuse_unsupported(obj, err)) || (rc = parse_sampling(obj, r, err)) ||
        (rc = parse_stop(obj, r, err)) || (rc = parse_stream(obj, r, err)))
        return rc;
    return 0;
}

static int load_object(const char *body, size_t n, json_t **out, fs_openai_error *err) {
    json_error_t je;
    json_t *root = json_loadb(body, n, JSON_ALLOW_NUL, &je);
    if (!root)
        return fs_openai_bad(err, NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
                             je.column);
    if (!json_is_object(root)) {
        int rc = fs_openai_bad(err, NULL, "the body must be a JSON object, not %s", json_kind(root));
        json_decref(root);
        return rc;
    }
    *out = root;
    return 0;
}

/* ---- completions ---- */

static int prompt_ids(json_t *arr, fs_openai_request *r, fs_openai_error *err) {
    size_t n = json_array_size(arr), i;
    if (!n) return fs_openai_bad(err, "prompt", "'prompt' is an empty list of token ids");
    if (!(r->prompt_ids = malloc(n * sizeof *r->prompt_ids))) return out_of_memory(err);
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
            return fs_openai_bad(err, "prompt", "'prompt' token %zu must be a token id (an integer >= 0)", i);
        r->prompt_ids[i] = (int32_t)json_integer_value(v);
    }
    r->n_prompt_ids = n;
    return 0;
}

static int parse_prompt(json_t *obj, fs_openai_request *r, fs_openai_error *err) {
    json_t *p = field(obj, "prompt");
    if (!p) return fs_openai_bad(err, "prompt", "'prompt' is required");
    if (json_is_array(p) && json_array_size(p) >= 1 && !json_is_integer(json_array_get(p, 0))) {
        if (json_array_size(p) > 1)
            return fs_openai_bad(err, "prompt", "'prompt' has %zu prompts: this server takes one per request",
                                 json_array_size(p));
        p = json_array_get(p, 0);
        if (json_is_array(p)) return prompt_ids(p, r, err);
        if (!json_is_string(p))
            return fs_openai_bad(err, "prompt", "'prompt' must be a string or token ids, not a list of %s",
                                 json_kind(p));
    }
    if (json_is_array(p)) return prompt_ids(p, r, err);
    if (!json_is_string(p))
        return fs_openai_bad(err, "prompt", "'prompt' must be a string, a list of one string or token ids, not %s",
                             json_kind(p));
    if (!(r->prompt = dup_bytes(json_string_value(p), json_string_length(p)))) return out_of_memory(err);
    r->prompt_len = json_string_length(p);
    return 0;
}

static int parse_completion_logprobs(json_t *obj, fs_openai_request *r, fs_openai_error *err) {
    long long k = 0;
    int given = 0;
    int rc = get_int(obj, "logprobs", 0, FS_OPENAI_MAX_LOGPROBS, &k, &given, err);
    if (rc) return rc;
    r->logprobs = given;
    r->top_logprobs = (size_t)k;
    return 0;
}

static int completion_fields(json_t *obj, const fs_openai_limits *lim, fs_openai_request *r, fs_openai_error *err) {
    int rc;
    if ((rc = parse_common(obj, lim, r, err)) || (rc = get_bool(obj, "echo", &r->echo, err)) ||
        (rc = parse_max_tokens(obj, "max_tokens", r->echo ? 0 : 1, lim, r, err)) ||
        (rc = parse_completion_logprobs(obj, r, err)) || (rc = parse_prompt(obj, r, err)))
        return rc;
    return 0;
}

int fs_openai_parse_completion(const char *body, size_t n, const fs_openai_limits *lim, fs_openai_request *out,
                               fs_openai_error *err) {
    memset(out, 0, sizeof *out);
    out->kind = FS_OPENAI_COMPLETION;
    json_t *root;
    int rc = load_object(body, n, &root, err);
    if (rc) return rc;
    rc = completion_fields(root, lim, out, err);
    json_decref(root);
    if (rc) fs_openai_request_release(out);
    return rc;
}

/* ---- chat ---- */

/* A message's content: a string, or a list of text parts. */
static int render_content(json_t *content, size_t i, fs_chat_role role, fs_buf *out, fs_openai_error *err) {
    char param[48];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (!content) {
        if (role != FS_CHAT_ASSISTANT) return fs_openai_bad(err, param, "'%s' is required", param);
        fs_chat_render_message(out, role, "", 0);
        return 0;
    }
    if (json_is_string(content)) {
        fs_chat_render_message(out, role, json_string_value(content), json_string_length(content));
        return 0;
    }
    if (!json_is_array(content))
        return fs_openai_bad(err, param, "'%s' must be a string or a list of text parts, not %s", param,
                             json_kind(content));
    fs_buf text = {0};
    size_t k;
    json_t *part;
    json_array_foreach(content, k, part) {
        json_t *type = json_is_object(part) ? json_object_get(part, "type") : NULL;
        json_t *t = json_is_object(part) ? json_object_get(part, "text") : NULL;
        if (!type || !json_is_string(type) || strcmp(json_string_value(type), "text") || !t || !json_is_string(t)) {
            fs_buf_release(&text);
            return fs_openai_bad(err, param, "'%s' part %zu must be {\"type\": \"text\", \"text\": \"...\"}: this "
                                 "server reads text only", param, k);
        }
        fs_buf_add(&text, json_string_value(t), json_string_length(t));
    }
    fs_chat_render_message(out, role, text.p ? text.p : "", text.n);
    int failed = text.failed;
    fs_buf_release(&text);
    return failed ? out_of_memory(err) : 0;
}

static int render_messages(json_t *obj, fs_openai_request *r, fs_openai_error *err) {
    json_t *msgs = field(obj, "messages");
    if (!msgs) return fs_openai_bad(err, "messages", "'messages' is required");
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return fs_openai_bad(err, "messages", "'messages' must be a non-empty list of messages");
    fs_buf out = {0};
    size_t i;
    json_t *m;
    int rc = 0;
    json_array_foreach(msgs, i, m) {
        char param[48];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        json_t *role = json_is_object(m) ? json_object_get(m, "role") : NULL;
        int which = role && json_is_string(role) ? fs_chat_role_of(json_string_value(role)) : -1;
        if (which < 0) {
            rc = fs_openai_bad(err, param, "'%s' must be \"system\", \"developer\", \"user\" or \"assistant\"",
                               param);
            break;
        }
        if ((rc = render_content(field(m, "content"), i, (fs_chat_role)which, &out, err))) break;
    }
    fs_chat_render_reply_start(&out);
    if (!rc && out.failed) rc = out_of_memory(err);
    if (rc) {
        fs_buf_release(&out);
        return rc;
    }
    r->prompt = out.p;
    r->prompt_len = out.n;
    return 0;
}

static int parse_chat_logprobs(json_t *obj, fs_openai_request *r, fs_openai_error *err) {
    long long k = 0;
    int given = 0, rc;
    if ((rc = get_bool(obj, "logprobs", &r->logprobs, err)) ||
        (rc = get_int(obj, "top_logprobs", 0, FS_OPENAI_MAX_LOGPROBS, &k, &given, err)))
        return rc;
    if (given && !r->logprobs)
        return fs_openai_bad(err, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r->top_logprobs = (size_t)k;
    return 0;
}

static int chat_fields(json_t *obj, const fs_openai_limits *lim, fs_openai_request *r, fs_openai_error *err) {
    int rc;
    const char *mt = field(obj, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if ((rc = parse_common(obj, lim, r, err)) || (rc = parse_max_tokens(obj, mt, 1, lim, r, err)) ||
        (rc = parse_chat_logprobs(obj, r, err)) || (rc = render_messages(obj, r, err)))
        return rc;
    for (size_t i = 0; fs_chat_stops[i]; i++)
        if ((rc = add_stop(r, fs_chat_stops[i], strlen(fs_chat_stops[i]), err))) return rc;
    return 0;
}

int fs_openai_parse_chat(const char *body, size_t n, const fs_openai_limits *lim, fs_openai_request *out,
                         fs_openai_error *err) {
    memset(out, 0, sizeof *out);
    out->kind = FS_OPENAI_CHAT;
    json_t *root;
    int rc = load_object(body, n, &root, err);
    if (rc) return rc;
    rc = chat_fields(root, lim, out, err);
    json_decref(root);
    if (rc) fs_openai_request_release(out);
    return rc;
}

void fs_openai_request_release(fs_openai_request *r) {
    free(r->prompt);
    free(r->prompt_ids);
    for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    fs_openai_kind kind = r->kind;
    memset(r, 0, sizeof *r);
    r->kind = kind;
}

size_t fs_openai_default_max_tokens(const fs_openai_request *r, size_t room, size_t limit) {
    if (r->kind == FS_OPENAI_COMPLETION) return 16 < limit ? 16 : limit;
    return room < limit ? room : limit;
}
