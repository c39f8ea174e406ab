/* http.c — the HTTP front end (http.h): libmicrohttpd's daemon, routing,
 * authentication, request bodies, errors, the simple routes, the
 * disconnect watcher and reloads. Generation is http_generate.c's. */
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "io/utf8.h"

#include "core/host.h"
#include "serve/http_internal.h"
#include "serve/prometheus.h"

const int fs_http_statuses[FS_HTTP_N_STATUS] = {200, 400, 401, 403, 404, 405, 408, 413, 429, 500, 501, 503, 504};

static enum MHD_Result handle_completions(fs_http_call *c) { return fs_http_generate(c, FS_OPENAI_COMPLETION); }
static enum MHD_Result handle_chat(fs_http_call *c) { return fs_http_generate(c, FS_OPENAI_CHAT); }
static enum MHD_Result handle_models(fs_http_call *c);
static enum MHD_Result handle_model(fs_http_call *c);
static enum MHD_Result handle_health(fs_http_call *c);
static enum MHD_Result handle_metrics(fs_http_call *c);
static enum MHD_Result handle_reload(fs_http_call *c);

static const fs_http_route ROUTES[] = {
    {"/v1/completions", "POST", 0, 1, handle_completions},
    {"/v1/chat/completions", "POST", 0, 1, handle_chat},
    {"/v1/models", "GET", 0, 1, handle_models},
    {"/v1/models/", "GET", 1, 1, handle_model},
    {"/health", "GET", 0, 0, handle_health},
    {"/metrics", "GET", 0, 0, handle_metrics},
    {"/admin/reload", "POST", 0, 1, handle_reload},
};
#define N_ROUTES (sizeof ROUTES / sizeof ROUTES[0])
_Static_assert(N_ROUTES + 1 == FS_HTTP_N_ROUTES, "FS_HTTP_N_ROUTES counts the routes and 'other'");

/* ---- calls ---- */

static fs_http_call *call_new(fs_http_server *srv, struct MHD_Connection *conn) {
    fs_http_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->srv = srv;
    c->conn = conn;
    c->route_index = (int)N_ROUTES;
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->mu, NULL);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    c->fd = ci ? ci->connect_fd : -1;
    pthread_mutex_lock(&srv->mu);
    srv->inflight++;
    pthread_mutex_unlock(&srv->mu);
    return c;
}

void fs_http_call_ref(fs_http_call *c) { atomic_fetch_add(&c->refs, 1); }

void fs_http_call_unref(fs_http_call *c) {
    if (atomic_fetch_sub(&c->refs, 1) != 1) return;
    free(c->url);
    fs_buf_release(&c->body);
    fs_buf_release(&c->out);
    fs_detok_release(&c->detok);
    fs_openai_request_release(&c->req);
    fs_tokens_release(&c->prompt);
    free(c->tokens);
    free(c->token_start);
    free(c->token_end);
    free(c->echo);
    free(c->events);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* ---- responses ---- */

static int status_column(int status) {
    for (int i = 0; i < FS_HTTP_N_STATUS; i++)
        if (fs_http_statuses[i] == status) return i;
    return FS_HTTP_N_STATUS;
}

void fs_http_count(fs_http_call *c, int status) {
    fs_http_server *srv = c->srv;
    pthread_mutex_lock(&srv->mu);
    srv->answered[c->route_index][status_column(status)]++;
    pthread_mutex_unlock(&srv->mu);
}

enum MHD_Result fs_http_respond(fs_http_call *c, int status, const char *content_type, char *body, size_t n,
                                const char *const *headers) {
    struct MHD_Response *r = body ? MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE)
                                  : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    if (content_type) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    for (size_t i = 0; headers && headers[i]; i += 2) MHD_add_response_header(r, headers[i], headers[i + 1]);
    if (atomic_load(&c->srv->draining)) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ok = MHD_queue_response(c->conn, (unsigned)status, r);
    MHD_destroy_response(r);
    c->responded = 1;
    fs_http_count(c, status);
    return ok;
}

static enum MHD_Result respond_json(fs_http_call *c, int status, char *json, const char *const *headers) {
    if (!json) {
        fs_openai_error e;
        fs_openai_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        return fs_http_respond_error(c, &e);
    }
    char *body = realloc(json, strlen(json) + 2); /* a final new line, as curl users expect */
    if (!body) body = json;
    else strcat(body, "\n");
    return fs_http_respond(c, status, "application/json", body, strlen(body), headers);
}

enum MHD_Result fs_http_respond_error(fs_http_call *c, const fs_openai_error *e) {
    char allow[64];
    const char *headers[5] = {NULL};
    size_t h = 0;
    if (e->status == 429) headers[h++] = MHD_HTTP_HEADER_RETRY_AFTER, headers[h++] = "1";
    if (e->status == 401) headers[h++] = MHD_HTTP_HEADER_WWW_AUTHENTICATE, headers[h++] = "Bearer";
    if (e->status == 405 && c->route) {
        snprintf(allow, sizeof allow, "%s", c->route->method);
        headers[h++] = MHD_HTTP_HEADER_ALLOW, headers[h++] = allow;
    }
    char *json = fs_openai_error_json(e);
    if (!json) return fs_http_respond(c, e->status, "text/plain", NULL, 0, headers);
    return respond_json(c, e->status, json, headers);
}

/* ---- routing and checks before the body ---- */

static const fs_http_route *find_route(const char *url, int *index) {
    for (size_t i = 0; i < N_ROUTES; i++) {
        const fs_http_route *r = &ROUTES[i];
        int hit = r->prefix ? strncmp(url, r->path, strlen(r->path)) == 0 && url[strlen(r->path)]
                            : strcmp(url, r->path) == 0;
        if (hit) {
            *index = (int)i;
            return r;
        }
    }
    *index = (int)N_ROUTES;
    return NULL;
}

/* Equal strings, in time that depends on the expected key's length only. */
static int same_key(const char *given, size_t n, const char *want) {
    size_t m = strlen(want);
    unsigned diff = (unsigned)(n != m);
    for (size_t i = 0; i < m; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(n ? given[i % n] : 0);
    return diff == 0;
}

static int authorized(fs_http_call *c) {
    const char *key = c->srv->api_key;
    if (!key[0] || !c->route->needs_key) return 1;
    const char *h = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    const char *tok = h + 7;
    while (*tok == ' ') tok++;
    size_t n = strlen(tok);
    while (n && tok[n - 1] == ' ') n--;
    return same_key(tok, n, key);
}

/* The refusal a request gets from its headers alone, if any. */
static int check_headers(fs_http_call *c, const char *url, const char *method, fs_openai_error *e) {
    fs_http_server *srv = c->srv;
    c->route = find_route(url, &c->route_index);
    if (!c->route)
        return fs_openai_error_set(e, 404, "invalid_request_error", "unknown_url", NULL,
                                   "Unknown request URL: %s %.200s (the server serves /v1/completions, "
                                   "/v1/chat/completions, /v1/models, /health, /metrics and /admin/reload)",
                                   method, url);
    int head_of_get = !strcmp(method, "HEAD") && !strcmp(c->route->method, "GET");
    if (strcmp(method, c->route->method) && !head_of_get)
        return fs_openai_error_set(e, 405, "invalid_request_error", "method_not_allowed", NULL,
                                   "%s %s: method not allowed (use %s)", method, c->route->path, c->route->method);
    if (atomic_load(&srv->draining) && c->route->handle != handle_metrics)
        return fs_openai_error_set(e, 503, "server_error", "shutting_down", NULL,
                                   "the server is shutting down and takes no new requests");
    if (!authorized(c))
        return fs_openai_error_set(e, 401, "invalid_request_error", "invalid_api_key", NULL,
                                   "Incorrect or missing API key: send 'Authorization: Bearer KEY' with the "
                                   "server's [serve] api_key");
    const char *cl = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > srv->cfg.max_body_bytes)
        return fs_openai_error_set(e, 413, "invalid_request_error", "request_too_large", NULL,
                                   "the body is %s bytes, more than this server takes ([serve] max_body_kb = %zu)",
                                   cl, srv->cfg.max_body_bytes / 1024);
    return 0;
}

static int body_too_large(fs_http_call *c, size_t total, fs_openai_error *e) {
    size_t max = c->srv->cfg.max_body_bytes;
    if (total <= max) return 0;
    return fs_openai_error_set(e, 413, "invalid_request_error", "request_too_large", NULL,
                               "the body is more than this server takes ([serve] max_body_kb = %zu)", max / 1024);
}

/* A refusal found in the headers is answered once the body is read (and
 * dropped), so the connection stays open for the next request; a body that
 * Content-Length says is too large is refused at once (and the connection
 * closed). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    fs_http_server *srv = cls;
    fs_http_call *c = *con_cls;
    fs_openai_error e;
    if (!c) { /* the headers */
        if (!(c = call_new(srv, conn))) return MHD_NO;
        *con_cls = c;
        if (!(c->url = strdup(url))) return MHD_NO;
        if (check_headers(c, url, method, &c->refusal)) {
            c->refused = 1;
            if (c->refusal.status == 413) return fs_http_respond_error(c, &c->refusal);
        }
        return MHD_YES;
    }
    if (c->responded) { /* the rest of a body refused as too large */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) { /* a body too large (chunked: no Content-Length said so) is read and dropped, up to a bound */
        size_t n = *upload_size;
        *upload_size = 0;
        c->body_seen += n;
        if (!c->refused && body_too_large(c, c->body_seen, &c->refusal)) c->refused = 1;
        if (c->body_seen > 16 * srv->cfg.max_body_bytes + ((size_t)1 << 20))
            return fs_http_respond_error(c, &c->refusal);
        if (!c->refused) fs_buf_add(&c->body, upload, n);
        return MHD_YES;
    }
    if (c->refused) return fs_http_respond_error(c, &c->refusal);
    if (c->body.failed) {
        fs_openai_error_set(&e, 500, "server_error", NULL, NULL, "out of memory for the body");
        return fs_http_respond_error(c, &e);
    }
    return c->route->handle(c);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    fs_http_server *srv = cls;
    fs_http_call *c = *con_cls;
    if (!c) return;
    *con_cls = NULL;
    fs_http_generate_end(c);
    pthread_mutex_lock(&srv->mu);
    if (c->is_live) {
        if (c->live_prev) c->live_prev->live_next = c->live_next;
        else srv->live = c->live_next;
        if (c->live_next) c->live_next->live_prev = c->live_prev;
        c->is_live = 0;
    }
    srv->inflight--;
    pthread_cond_broadcast(&srv->changed);
    pthread_mutex_unlock(&srv->mu);
    fs_http_call_unref(c);
}

void fs_http_call_go_live(fs_http_call *c) {
    fs_http_server *srv = c->srv;
    pthread_mutex_lock(&srv->mu);
    c->live_prev = NULL;
    c->live_next = srv->live;
    if (srv->live) srv->live->live_prev = c;
    srv->live = c;
    c->is_live = 1;
    pthread_mutex_unlock(&srv->mu);
}

/* ---- the simple routes ---- */

static enum MHD_Result handle_models(fs_http_call *c) {
    return respond_json(c, 200, fs_openai_models_json(c->srv->model_id, c->srv->started, 1), NULL);
}

static enum MHD_Result handle_model(fs_http_call *c) {
    const char *id = c->url + strlen(c->route->path);
    if (strcmp(id, c->srv->model_id) == 0)
        return respond_json(c, 200, fs_openai_models_json(c->srv->model_id, c->srv->started, 0), NULL);
    fs_openai_error e;
    fs_openai_error_set(&e, 404, "invalid_request_error", "model_not_found", "model",
                        "The model '%.200s' does not exist: this server serves '%.100s'", id, c->srv->model_id);
    return fs_http_respond_error(c, &e);
}

static enum MHD_Result handle_health(fs_http_call *c) {
    char *body = strdup("{\"status\":\"ok\"}\n");
    return fs_http_respond(c, 200, "application/json", body, body ? strlen(body) : 0, NULL);
}

static void http_metrics(fs_http_server *srv, fs_buf *out) {
    fs_prom_family(out, "fastserve_http_requests_total", "counter", "HTTP requests answered, by route and status.");
    char labels[128];
    pthread_mutex_lock(&srv->mu);
    for (size_t r = 0; r <= N_ROUTES; r++)
        for (int s = 0; s <= FS_HTTP_N_STATUS; s++) {
            if (!srv->answered[r][s]) continue;
            const char *route = r < N_ROUTES ? ROUTES[r].path : "other";
            if (s < FS_HTTP_N_STATUS)
                snprintf(labels, sizeof labels, "route=\"%s\",code=\"%d\"", route, fs_http_statuses[s]);
            else
                snprintf(labels, sizeof labels, "route=\"%s\",code=\"other\"", route);
            fs_prom_sample(out, "fastserve_http_requests_total", labels, (double)srv->answered[r][s]);
        }
    size_t inflight = srv->inflight;
    pthread_mutex_unlock(&srv->mu);
    fs_prom_family(out, "fastserve_http_requests_in_flight", "gauge", "HTTP requests being answered.");
    fs_prom_sample(out, "fastserve_http_requests_in_flight", NULL, (double)inflight);
}

static enum MHD_Result handle_metrics(fs_http_call *c) {
    fs_engine_stats st = {.struct_size = sizeof st};
    fs_engine_stats_get(c->srv->engine, &st);
    fs_buf out = {0};
    fs_prom_engine(&out, &st);
    http_metrics(c->srv, &out);
    if (out.failed) {
        fs_buf_release(&out);
        fs_openai_error e;
        fs_openai_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        return fs_http_respond_error(c, &e);
    }
    return fs_http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", out.p, out.n, NULL);
}

/* ---- POST /admin/reload: the admin thread calls fs_engine_reload (which
 * waits for an iteration boundary, or longer) while the connection waits
 * suspended; an HTTP thread is never blocked by it ---- */

static enum MHD_Result reload_answer(fs_http_call *c) {
    fs_openai_error e;
    if (c->reload_rc) {
        fs_openai_error_set(&e, c->reload_rc == FS_ERR_UNSUPPORTED ? 503 : 500, "server_error", "reload_failed", NULL,
                            "%s (the weights in use are unchanged)", c->reload_message);
        return fs_http_respond_error(c, &e);
    }
    fs_buf b = {0};
    fs_buf_puts(&b, "{\"status\":\"reloaded\",\"checkpoint\":");
    char *json = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&json, &n);
    if (f) {
        fs_json_utf8(f, c->srv->checkpoint, strlen(c->srv->checkpoint));
        fclose(f);
    }
    fs_buf_add(&b, json ? json : "null", json ? n : 4);
    fs_buf_puts(&b, "}");
    free(json);
    return respond_json(c, 200, b.failed ? NULL : b.p, NULL);
}

static enum MHD_Result handle_reload(fs_http_call *c) {
    fs_http_server *srv = c->srv;
    fs_openai_error e;
    if (c->reload_done) return reload_answer(c);
    if (!srv->api_key[0]) {
        fs_openai_error_set(&e, 403, "invalid_request_error", "admin_disabled", NULL,
                            "/admin/reload needs [serve] api_key to be set (or send the server SIGHUP)");
        return fs_http_respond_error(c, &e);
    }
    if (!c->reload_queued) {
        pthread_mutex_lock(&srv->mu);
        int busy = srv->reload_job != NULL;
        if (!busy) {
            fs_http_call_ref(c); /* the admin thread's */
            srv->reload_job = c;
            c->reload_queued = 1;
            pthread_cond_broadcast(&srv->changed);
        }
        pthread_mutex_unlock(&srv->mu);
        if (busy) {
            fs_openai_error_set(&e, 429, "server_error", "reload_in_progress", NULL, "a reload is in progress");
            return fs_http_respond_error(c, &e);
        }
    }
    pthread_mutex_lock(&c->mu);
    int done = c->reload_done;
    if (!done) {
        c->suspended = 1;
        MHD_suspend_connection(c->conn);
    }
    pthread_mutex_unlock(&c->mu);
    return done ? reload_answer(c) : MHD_YES;
}

static void *admin_main(void *arg) {
    fs_http_server *srv = arg;
    pthread_mutex_lock(&srv->mu);
    for (;;) {
        while (!srv->stopping && !srv->reload_job) pthread_cond_wait(&srv->changed, &srv->mu);
        fs_http_call *c = srv->reload_job;
        if (!c) break;
        int stopping = srv->stopping;
        pthread_mutex_unlock(&srv->mu);
        fs_error err = {0};
        int rc = stopping ? fs_error_set(&err, FS_ERR_UNSUPPORTED, "the server is shutting down")
                          : fs_engine_reload(srv->engine, srv->checkpoint, &err);
        if (rc)
            fs_log(FS_LOG_WARN, "serve", "POST /admin/reload: %s", err.message);
        else
            fs_log(FS_LOG_INFO, "serve", "POST /admin/reload: reloaded %s", srv->checkpoint);
        pthread_mutex_lock(&c->mu);
        c->reload_rc = rc;
        snprintf(c->reload_message, sizeof c->reload_message, "%s", err.message);
        c->reload_done = 1;
        if (c->suspended) {
            c->suspended = 0;
            MHD_resume_connection(c->conn);
        }
        pthread_mutex_unlock(&c->mu);
        fs_http_call_unref(c);
        pthread_mutex_lock(&srv->mu);
        srv->reload_job = NULL;
    }
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

/* ---- the disconnect watcher: libmicrohttpd does not watch a suspended
 * connection, so a client that goes away while its request waits for
 * tokens is noticed here (the socket's peer closed: POLLRDHUP) and its
 * request cancelled ---- */

#define WATCH_PERIOD_MS 20

static void watch_once(fs_http_server *srv, struct pollfd **fds, fs_http_call ***who, size_t *cap) {
    size_t n = 0;
    for (fs_http_call *c = srv->live; c; c = c->live_next) {
        if (c->fd < 0 || atomic_load(&c->client_gone)) continue;
        if (n == *cap) {
            size_t k = *cap ? 2 * *cap : 64;
            struct pollfd *f = realloc(*fds, k * sizeof *f);
            if (f) *fds = f;
            fs_http_call **w = realloc(*who, k * sizeof *w);
            if (w) *who = w;
            if (!f || !w) break;
            *cap = k;
        }
        (*fds)[n] = (struct pollfd){.fd = c->fd, .events = POLLRDHUP};
        (*who)[n++] = c;
    }
    if (!n || poll(*fds, n, 0) <= 0) return;
    for (size_t i = 0; i < n; i++)
        if ((*fds)[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
            atomic_store(&(*who)[i]->client_gone, 1);
            fs_engine_cancel(srv->engine, (*who)[i]->id);
        }
}

static void *watch_main(void *arg) {
    fs_http_server *srv = arg;
    struct pollfd *fds = NULL;
    fs_http_call **who = NULL;
    size_t cap = 0;
    pthread_mutex_lock(&srv->mu);
    while (!srv->stopping) {
        watch_once(srv, &fds, &who, &cap);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WATCH_PERIOD_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&srv->changed, &srv->mu, &ts);
    }
    pthread_mutex_unlock(&srv->mu);
    free(fds);
    free(who);
    return NULL;
}

/* ---- the server ---- */

static void log_mhd(void *cls, const char *fmt, va_list ap) {
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n') line[--n] = '\0';
    fs_log(FS_LOG_DEBUG, "http", "%s", line);
}

static int resolve_host(const char *host, int port, struct sockaddr_storage *addr, int *v6, fs_error *err) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc || !res)
        return fs_error_set(err, FS_ERR_INVALID, "[serve] host = %s: not an address this machine can listen on (%s)",
                            host, gai_strerror(rc));
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return FS_OK;
}

static void server_free(fs_http_server *srv) {
    free(srv->host);
    free(srv->api_key);
    free(srv->model_id);
    free(srv->checkpoint);
    pthread_mutex_destroy(&srv->tok_mu);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->changed);
    free(srv);
}

static uint64_t fresh_salt(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    uint64_t x = (uint64_t)t.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)t.tv_sec ^ ((uint64_t)getpid() << 32);
    return x ? x : 1;
}

static int start_daemon(fs_http_server *srv, fs_error *err) {
    struct sockaddr_storage addr;
    int v6 = 0;
    int rc = resolve_host(srv->host, srv->cfg.port, &addr, &v6, err);
    if (rc) return rc;
    unsigned threads = srv->cfg.threads > 0 ? (unsigned)srv->cfg.threads : 4;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    srv->daemon = MHD_start_daemon(flags, (uint16_t)srv->cfg.port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR,
                                   (struct sockaddr *)&addr, MHD_OPTION_THREAD_POOL_SIZE, threads,
                                   MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_CONNECTION_TIMEOUT,
                                   (unsigned)120, MHD_OPTION_EXTERNAL_LOGGER, log_mhd, srv, MHD_OPTION_END);
    if (!srv->daemon)
        return fs_error_set(err, FS_ERR_IO,
                            "[serve] host = %s, port = %d: cannot listen there (is the port in use? port = 0 takes "
                            "any free one)",
                            srv->host, srv->cfg.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : srv->cfg.port;
    return FS_OK;
}

int fs_http_server_start(fs_http_server **out, const fs_http_config *cfg, fs_engine *e, fs_tokenizer *tok,
                         fs_error *err) {
    *out = NULL;
    fs_http_server *srv = calloc(1, sizeof *srv);
    if (!srv) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    srv->cfg = *cfg;
    srv->host = strdup(cfg->host);
    srv->api_key = strdup(cfg->api_key ? cfg->api_key : "");
    srv->model_id = strdup(cfg->model_id);
    srv->checkpoint = strdup(cfg->checkpoint);
    srv->engine = e;
    srv->tok = tok;
    srv->eos = fs_tokenizer_eos(tok);
    srv->started = (long long)time(NULL);
    srv->id_salt = fresh_salt();
    atomic_init(&srv->draining, 0);
    atomic_init(&srv->next_serial, 1);
    pthread_mutex_init(&srv->tok_mu, NULL);
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->changed, NULL);
    if (!srv->host || !srv->api_key || !srv->model_id || !srv->checkpoint) {
        server_free(srv);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    int rc = start_daemon(srv, err);
    if (!rc && pthread_create(&srv->watcher, NULL, watch_main, srv)) rc = fs_error_set(err, FS_ERR_RUNTIME, "cannot start a thread");
    if (!rc && pthread_create(&srv->admin, NULL, admin_main, srv)) {
        pthread_mutex_lock(&srv->mu);
        srv->stopping = 1;
        pthread_cond_broadcast(&srv->changed);
        pthread_mutex_unlock(&srv->mu);
        pthread_join(srv->watcher, NULL);
        rc = fs_error_set(err, FS_ERR_RUNTIME, "cannot start a thread");
    }
    if (rc) {
        if (srv->daemon) MHD_stop_daemon(srv->daemon);
        server_free(srv);
        return rc;
    }
    srv->threads_started = 1;
    *out = srv;
    return FS_OK;
}

int fs_http_server_port(const fs_http_server *srv) { return srv->port; }

void fs_http_server_drain(fs_http_server *srv) { atomic_store(&srv->draining, 1); }

size_t fs_http_server_wait_idle(fs_http_server *srv, double timeout_s) {
    double end = fs_now() + timeout_s;
    pthread_mutex_lock(&srv->mu);
    while (srv->inflight && fs_now() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&srv->changed, &srv->mu, &ts);
    }
    size_t left = srv->inflight;
    pthread_mutex_unlock(&srv->mu);
    return left;
}

uint64_t fs_http_server_requests(fs_http_server *srv) {
    uint64_t n = 0;
    pthread_mutex_lock(&srv->mu);
    for (size_t r = 0; r <= N_ROUTES; r++)
        for (int s = 0; s <= FS_HTTP_N_STATUS; s++) n += srv->answered[r][s];
    pthread_mutex_unlock(&srv->mu);
    return n;
}

void fs_http_server_stop(fs_http_server *srv) {
    if (!srv) return;
    pthread_mutex_lock(&srv->mu);
    srv->stopping = 1;
    pthread_cond_broadcast(&srv->changed);
    pthread_mutex_unlock(&srv->mu);
    if (srv->threads_started) {
        pthread_join(srv->watcher, NULL);
        pthread_join(srv->admin, NULL);
    }
    MHD_stop_daemon(srv->daemon);
    server_free(srv);
}
