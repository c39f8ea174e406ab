/* http.h — the OpenAI-compatible HTTP front end of --mode serve, on
 * libmicrohttpd (HTTP/1.1, keep-alive, chunked responses, a pool of its
 * own threads).
 *
 *   POST /v1/completions, POST /v1/chat/completions   (openai.h; streamed as server-sent events)
 *   GET  /v1/models, /v1/models/ID, /health, /metrics (Prometheus text)
 *   POST /admin/reload                                 (reloads the checkpoint, fs_engine_reload)
 *
 * With an api_key, /v1/ and /admin/ need "Authorization: Bearer KEY"
 * (compared in constant time); /health and /metrics stay open for probes
 * and scrapers, and /admin/reload is refused (403) when no key is set.
 * Every refusal is an OpenAI error object with its status (400, 401, 403,
 * 404, 405, 413, 429 with Retry-After, 500, 503, 504).
 *
 * Threads: HTTP threads parse, tokenize (under a lock: the BPE tokenizer
 * caches) and submit; the engine's sinks, on the engine thread, only queue
 * the events for the request's connection and resume it (libmicrohttpd's
 * suspend/resume); the HTTP thread then turns tokens into text (detok.h)
 * and writes. A watcher thread polls the sockets of requests in flight and
 * cancels those whose client has gone (a suspended connection is not
 * watched by libmicrohttpd), so their KV blocks return at the engine's
 * next iteration. */
#ifndef FS_SERVE_HTTP_H
#define FS_SERVE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/plugin.h"
#include "io/tokenizer.h"
#include "serve/engine.h"

typedef struct fs_http_config {
    const char *host;          /* address to bind: a numeric IPv4/IPv6 address or a name */
    int port;                  /* 0 = any free one (fs_http_server_port says which) */
    const char *api_key;       /* "" = none */
    size_t max_body_bytes;     /* larger bodies get 413 */
    size_t max_tokens_limit;   /* larger max_tokens get 400 */
    double request_timeout_s;  /* the engine cancels a request running longer (0 = never) */
    const char *model_id;      /* what /v1/models lists and requests must name */
    const char *checkpoint;    /* what /admin/reload loads */
    size_t context;            /* positions a sequence holds (SIZE_MAX: a bounded cache streams on) */
    int threads;               /* HTTP threads (0 = 4) */
} fs_http_config;

typedef struct fs_http_server fs_http_server;

/* Starts listening. tok is the session's (encode is serialised here);
 * the engine must outlive the server. */
int fs_http_server_start(fs_http_server **out, const fs_http_config *cfg, fs_engine *e, fs_tokenizer *tok,
                         fs_error *err);
int fs_http_server_port(const fs_http_server *srv);
/* From now on new requests get 503 (connections are still accepted, so
 * clients learn why). */
void fs_http_server_drain(fs_http_server *srv);
/* Waits up to timeout_s for the requests in flight to be written out;
 * returns how many are left. */
size_t fs_http_server_wait_idle(fs_http_server *srv, double timeout_s);
/* Requests answered since the start. */
uint64_t fs_http_server_requests(fs_http_server *srv);
/* Stops the daemon and its threads. Accepts NULL. Call after the engine
 * has drained: no request may still wait for engine events. */
void fs_http_server_stop(fs_http_server *srv);

#endif
