/* http_internal.h — what the front end's files share: the server, one
 * HTTP request in flight (a "call"), and the routes.
 *
 *   http.c           the daemon, routing, authentication, bodies, errors,
 *                    the simple routes, the disconnect watcher, reloads
 *   http_generate.c  completions and chat: parse, tokenize, submit, the
 *                    engine's sink, events to text, streaming
 *
 * A call is shared by three owners, each holding a reference: the HTTP
 * request (until libmicrohttpd reports it complete), the engine (until
 * the request's final event) and a streamed response's reader (until the
 * response is destroyed). */
#ifndef FS_SERVE_HTTP_INTERNAL_H
#define FS_SERVE_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "serve/buf.h"
#include "serve/detok.h"
#include "serve/http.h"
#include "serve/openai.h"

typedef struct fs_http_call fs_http_call;

typedef enum MHD_Result (*fs_http_handler)(fs_http_call *c);

typedef struct fs_http_route {
    const char *path;
    const char *method;
    int prefix;      /* path is a prefix (/v1/models/ID) */
    int needs_key;   /* with [serve] api_key set */
    fs_http_handler handle;
} fs_http_route;

/* Statuses counted per route for /metrics. */
#define FS_HTTP_N_STATUS 13
extern const int fs_http_statuses[FS_HTTP_N_STATUS];
#define FS_HTTP_N_ROUTES 8 /* the routes, then "other" (unknown paths) */

struct fs_http_server {
    fs_http_config cfg;
    char *host, *api_key, *model_id, *checkpoint; /* cfg's strings, owned */
    fs_engine *engine;
    fs_tokenizer *tok;
    pthread_mutex_t tok_mu; /* encoding is not thread-safe (BPE's cache) */
    int32_t eos;
    struct MHD_Daemon *daemon;
    int port;
    long long started; /* Unix seconds */
    atomic_int draining;
    atomic_uint_fast64_t next_serial;
    uint64_t id_salt;

    pthread_mutex_t mu;     /* what follows */
    pthread_cond_t changed; /* inflight dropped; a reload job came; stopping */
    fs_http_call *live;     /* generation calls in flight, for the watcher */
    size_t inflight;
    uint64_t answered[FS_HTTP_N_ROUTES + 1][FS_HTTP_N_STATUS + 1]; /* the last column: other statuses */
    int stopping;
    fs_http_call *reload_job;

    pthread_t watcher, admin;
    int threads_started;
};

struct fs_http_call {
    fs_http_server *srv;
    struct MHD_Connection *conn;
    const fs_http_route *route;
    int route_index; /* FS_HTTP_N_ROUTES for unknown paths */
    char *url;
    atomic_int refs;
    int responded; /* a response is queued */
    int refused;   /* the headers were enough to refuse it: refusal, once the body is read */
    fs_openai_error refusal;
    fs_buf body;
    size_t body_seen;
    int fd;        /* the client's socket */

    /* generation (http_generate.c) */
    int started;   /* submitted to the engine */
    uint64_t id;   /* the engine's */
    fs_openai_request req;
    fs_tokens prompt;
    char reply_id[48];
    fs_openai_reply reply;
    fs_detok detok;
    fs_openai_token *tokens; /* kept for logprobs: the echoed prompt's first, then the generated ones */
    size_t *token_start, *token_end; /* a generated one's text in detok's bytes */
    size_t n_tokens, cap_tokens, tokens_sent;
    size_t n_echo_tokens;    /* echo with logprobs: the prompt's tokens at the start of `tokens` */
    size_t echo_lp_got;      /* ... of which the engine has given log-probabilities (all but the first) */
    char *echo;    /* the prompt's text when echoed (valid UTF-8) */
    size_t echo_len, echo_chars;
    int wants_each_event; /* resume on every event (stream, stop strings) or on the last only */
    int stop_hit;  /* a stop string ended it (the front end cancelled it) */
    int done;      /* the final event is processed */
    fs_buf out;    /* a stream's bytes not yet written */
    int stream_end; /* "data: [DONE]" is in out */
    int role_sent, echo_sent;

    /* engine -> HTTP thread, under mu */
    pthread_mutex_t mu;
    fs_request_event *events;
    size_t n_events, cap_events;
    int final_seen, lost_events, suspended;
    atomic_int client_gone; /* the watcher saw the socket close */
    fs_finish_reason finish;
    size_t prompt_tokens, completion_tokens, cached_tokens;
    char error[256];

    /* POST /admin/reload, done by the admin thread */
    int reload_queued, reload_done, reload_rc;
    char reload_message[512];

    fs_http_call *live_prev, *live_next;
    int is_live;
};

void fs_http_call_ref(fs_http_call *c);
void fs_http_call_unref(fs_http_call *c);

/* Queues a response (body malloc'ed, taken; NULL with n = 0 for none) and
 * counts it; extra headers as name, value pairs ending with NULL. */
enum MHD_Result fs_http_respond(fs_http_call *c, int status, const char *content_type, char *body, size_t n,
                                const char *const *headers);
enum MHD_Result fs_http_respond_error(fs_http_call *c, const fs_openai_error *e);
/* Counts a response queued another way (a stream). */
void fs_http_count(fs_http_call *c, int status);

/* Generation calls: the watcher sees them while they run. */
void fs_http_call_go_live(fs_http_call *c);

enum MHD_Result fs_http_generate(fs_http_call *c, fs_openai_kind kind);
/* The HTTP request ended (completed or aborted): cancels a generation
 * still running and frees its state. */
void fs_http_generate_end(fs_http_call *c);

#endif
