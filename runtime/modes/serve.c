/* serve.c — the serve mode: the checkpoint loaded once, the serving engine
 * (serve/engine.h) on its own thread, the OpenAI-compatible HTTP front end
 * (serve/http.h) on libmicrohttpd's, until SIGTERM or SIGINT.
 *
 * Signals: SIGTERM and SIGINT stop accepting (new requests get 503), let
 * the requests in flight finish for up to [serve] shutdown_grace_s (the
 * engine ends the rest), write out what they produced, and exit 0 (more
 * SIGTERMs or SIGINTs meanwhile change nothing). SIGHUP
 * reloads the checkpoint (a server can follow a run that is still
 * training). The handlers only write the signal's number to a pipe the main
 * thread waits on, so any thread (OpenMP's, the engine's, libmicrohttpd's)
 * may receive them. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/tokenizer.h"
#include "io/utf8.h"
#include "modes/modes.h"
#include "serve/engine.h"
#include "serve/http.h"
#include "session/checkpoint.h"

/* ---- signals to a pipe ---- */

static int g_signal_pipe[2] = {-1, -1};

static void on_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(g_signal_pipe[1], &b, 1) < 0) {
    } /* full: a signal is already pending */
    errno = saved;
}

static const int WATCHED[] = {SIGTERM, SIGINT, SIGHUP};
#define N_WATCHED (sizeof WATCHED / sizeof WATCHED[0])

typedef struct signal_state {
    struct sigaction old[N_WATCHED], old_pipe;
} signal_state;

static int signals_catch(signal_state *st, fs_error *err) {
    if (pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK))
        return fs_error_set(err, FS_ERR_IO, "cannot make a pipe for signals: %s", strerror(errno));
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < N_WATCHED; i++) sigaction(WATCHED[i], &sa, &st->old[i]);
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &st->old_pipe); /* a client gone mid-write is an error return, not a death */
    return FS_OK;
}

/* SIGHUP and SIGPIPE as they were; SIGTERM and SIGINT ignored from now on,
 * so a second one while the process ends does not kill it (its exit status
 * stays 0). */
static void signals_restore(signal_state *st) {
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    sigaction(SIGTERM, &ign, NULL);
    sigaction(SIGINT, &ign, NULL);
    sigaction(SIGHUP, &st->old[2], NULL);
    sigaction(SIGPIPE, &st->old_pipe, NULL);
    close(g_signal_pipe[0]);
    close(g_signal_pipe[1]);
    g_signal_pipe[0] = g_signal_pipe[1] = -1;
}

/* The next signal caught. */
static int next_signal(void) {
    for (;;) {
        struct pollfd p = {.fd = g_signal_pipe[0], .events = POLLIN};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) return SIGTERM;
        unsigned char b;
        if (read(g_signal_pipe[0], &b, 1) == 1) return b;
    }
}

/* ---- the mode ---- */

/* The name /v1/models gives: the graph file's, without directory and .ini. */
static void model_id_of(const fs_session *s, char *buf, size_t cap) {
    const char *path = fs_graph_path(s->graph), *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    if (n > 4 && strcmp(base + n - 4, ".ini") == 0) n -= 4;
    snprintf(buf, cap, "%.*s", (int)n, base);
}

static void http_config_from(fs_http_config *hc, const fs_session *s, const char *model_id, const char *checkpoint) {
    const fs_config *c = s->serve_cfg;
    *hc = (fs_http_config){
        .host = fs_config_string(c, "host"),
        .port = (int)fs_config_int(c, "port"),
        .api_key = fs_config_string(c, "api_key"),
        .max_body_bytes = (size_t)fs_config_int(c, "max_body_kb") * 1024,
        .max_tokens_limit = (size_t)fs_config_int(c, "max_tokens_limit"),
        .request_timeout_s = fs_config_float(c, "request_timeout_s"),
        .model_id = model_id,
        .checkpoint = checkpoint,
        .context = fs_model_cache_bounded(s->model) ? SIZE_MAX : s->mcfg.max_seq,
    };
}

static void print_start(const fs_session *s, const fs_http_server *srv, const char *model_id) {
    const char *host = fs_config_string(s->serve_cfg, "host");
    int v6 = strchr(host, ':') != NULL;
    printf("serving '%s' at http://%s%s%s:%d/v1 (POST /v1/completions, /v1/chat/completions; GET /v1/models, "
           "/health, /metrics); SIGTERM or Ctrl-C stops, SIGHUP reloads\n",
           model_id, v6 ? "[" : "", host, v6 ? "]" : "", fs_http_server_port(srv));
    fflush(stdout);
    fs_log(FS_LOG_INFO, "serve", "%s", fs_threads_wait_note());
}

/* Waits for signals: SIGHUP reloads, SIGTERM and SIGINT return. */
static int serve_until_stopped(fs_engine *e, const char *checkpoint) {
    for (;;) {
        int sig = next_signal();
        if (sig != SIGHUP) return sig;
        fs_error err = {0};
        if (fs_engine_reload(e, checkpoint, &err))
            fs_log(FS_LOG_WARN, "serve", "SIGHUP: %s (the weights in use are unchanged)", err.message);
        else
            fs_log(FS_LOG_INFO, "serve", "SIGHUP: reloaded %s", checkpoint);
    }
}

static void print_summary(fs_http_server *srv, fs_engine *e, int sig, size_t left) {
    fs_engine_stats st = {.struct_size = sizeof st};
    fs_engine_stats_get(e, &st);
    printf("{\"mode\": \"serve\", \"port\": %d, \"requests\": %llu, \"finished\": %llu, \"shut_down\": %llu, "
           "\"tokens_in\": %llu, \"tokens_out\": %llu, \"signal\": \"%s\", \"unfinished_http\": %zu, "
           "\"backend\": \"%s\"}\n",
           fs_http_server_port(srv), (unsigned long long)fs_http_server_requests(srv),
           (unsigned long long)(st.finished[FS_FINISH_LENGTH] + st.finished[FS_FINISH_STOP]),
           (unsigned long long)st.finished[FS_FINISH_SHUTDOWN], (unsigned long long)st.tokens_in,
           (unsigned long long)st.tokens_out, sig == SIGINT ? "SIGINT" : "SIGTERM", left, fs_engine_backend(e));
}

/* Stops accepting, lets the engine drain, then waits for the answers to
 * be written (a few seconds at most: a client that reads nothing is cut). */
static size_t shut_down(fs_http_server *srv, fs_engine *e, double grace_s) {
    fs_http_server_drain(srv);
    fs_log(FS_LOG_INFO, "serve", "stopping: new requests get 503; up to %g s for those in flight", grace_s);
    fs_engine_drain(e, grace_s);
    return fs_http_server_wait_idle(srv, 5.0);
}

int fs_mode_serve(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    *config_error = 1;
    if (fs_session_require_whole(s, "serve", err)) return err->status;
    char ckpt[PATH_MAX], model_id[128];
    if (o->checkpoint)
        snprintf(ckpt, sizeof ckpt, "%s", o->checkpoint);
    else
        fs_session_checkpoint_path(s, ckpt, sizeof ckpt);
    model_id_of(s, model_id, sizeof model_id);
    fs_tokenizer *tok;
    int rc = fs_session_tokenizer(s, &tok, err);
    if (rc) return rc;
    *config_error = 0;
    if ((rc = fs_checkpoint_load(ckpt, s, NULL, NULL, err))) return rc;
    signal_state sigs;
    if ((rc = signals_catch(&sigs, err))) return rc;
    fs_engine_config ec;
    fs_engine_config_from(&ec, s);
    ec.on_device = 1;
    fs_engine *e = NULL;
    if ((rc = fs_engine_create(&e, s, &ec, err))) {
        *config_error = rc == FS_ERR_INVALID || rc == FS_ERR_UNSUPPORTED;
        signals_restore(&sigs);
        return rc;
    }
    fs_http_config hc;
    http_config_from(&hc, s, model_id, ckpt);
    fs_http_server *srv = NULL;
    if ((rc = fs_http_server_start(&srv, &hc, e, tok, err))) {
        fs_engine_destroy(e);
        signals_restore(&sigs);
        return rc;
    }
    print_start(s, srv, model_id);
    int sig = serve_until_stopped(e, ckpt);
    size_t left = shut_down(srv, e, fs_config_float(s->serve_cfg, "shutdown_grace_s"));
    print_summary(srv, e, sig, left);
    fs_http_server_stop(srv);
    fs_engine_destroy(e);
    signals_restore(&sigs);
    return FS_OK;
}
