/* bench_attention.c — the attention plugins side by side: dense vs
 * longformer vs lsh (n_hashes 1, 2, 4), time and peak memory of forward and
 * of forward + backward as T grows.
 *
 * Each case runs in a child process built the way fsrun builds a layer (a
 * graph, the plugin loader, the host API), so the numbers are the plugin's
 * as the runtime would see them. Times are the best of up to `reps` runs
 * after an untimed forward + backward that faults the memory in. Memory is
 * the growth of the child's peak RSS over the inputs and gradients: saved
 * state plus work memory. Dense is skipped, with the reason, once its
 * extrapolated (T^2) time would exceed the time bound.
 *
 * Usage: bench_attention [T=1024,4096,16384,65536] [H=8] [D=64] [B=1]
 *                        [window=256] [dilation=1] [global=none] [block=0]
 *                        [chunk=64] [bucket_size=64] [hashes=1,2,4]
 *                        [causal=1] [time_s=300] [reps=5]
 *                        [plugins=dense,longformer,lsh]
 * (hashes=0 leaves lsh out; plugins= runs only those named.) Prints a table, then the goals: at T = 16k
 * longformer >= 20x faster and lighter than dense and lsh n_hashes = 2
 * >= 10x faster; longformer's 64k / 16k time within 4.4x. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "compute/blas.h"
#include "fastserve/attention.h"
#include "core/host.h"
#include "core/rng.h"
#include "session/session.h"

typedef struct opts {
    size_t Ts[16], nT, H, D, B, window, block, reps, chunk, bucket_size, hashes[8], nh;
    int causal;
    char dilation[64], global[64], plugins[128];
    double time_s;
} opts;

/* 1 when `name` is in the comma-separated plugins= list */
static int wanted(const opts *o, const char *name) {
    size_t n = strlen(name);
    for (const char *p = o->plugins; (p = strstr(p, name)); p += n)
        if ((p == o->plugins || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
    return 0;
}

typedef struct result {
    int ok;
    char why[600];
    double fwd_s, fb_s;         /* best of reps */
    double saved_mib;           /* saved_bytes(B, T) */
    double peak_fwd_mib, peak_fb_mib; /* peak RSS growth */
} result;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

static float *touched(size_t n, uint64_t seed) {
    float *p = fs_alloc(n * sizeof(float));
    if (!p) return NULL;
    if (seed) {
        fs_rng r;
        fs_rng_seed(&r, seed);
        for (size_t i = 0; i < n; i++) p[i] = fs_rng_normal(&r);
    } else {
        memset(p, 0, n * sizeof(float));
    }
    return p;
}

/* The session of one case: a one-layer model of the plugin at T (plugin
 * "lsh" with n_hashes = nh); NULL with r->why set when it fails. */
static fs_session *open_case(const char *plugin, size_t T, const opts *o, size_t nh, result *r) {
    char ini[1024], keys[512] = "";
    if (strcmp(plugin, "longformer") == 0)
        snprintf(keys, sizeof keys, "window = %zu\ndilation = %s\nglobal = %s\nblock = %zu\n", o->window, o->dilation,
                 o->global, o->block);
    if (strcmp(plugin, "lsh") == 0)
        snprintf(keys, sizeof keys, "n_hashes = %zu\nchunk = %zu\nbucket_size = %zu\n", nh, o->chunk,
                 o->bucket_size);
    snprintf(ini, sizeof ini,
             "[model]\nvocab_size = 256\nn_layer = 1\nn_head = %zu\nn_embd = %zu\nmax_seq = %zu\n"
             "[attention]\nplugin = %s\ncausal = %s\n%s",
             o->H, o->H * o->D, T, plugin, o->causal ? "true" : "false", keys);
    fs_graph *g;
    fs_session *s;
    fs_error err = {0};
    if (fs_graph_load_string(&g, "bench.ini", ini, &err) || fs_session_open(&s, g, &err)) {
        snprintf(r->why, sizeof r->why, "%s", err.message);
        return NULL;
    }
    return s;
}

/* Best forward and forward+backward times and the peak RSS growth of
 * each, after an untimed warm-up: first-touch page faults of the saved
 * state and the work memory are not attention (dense's cost 25 s of kernel
 * time at 16k). 0, or -1 with r->why set. */
static int time_case(const fs_attention_vtable *vt, void *self, fs_attention_args *a, const opts *o,
                     result *r) {
    fs_error err = {0};
    double base = rss_mib();
    r->fwd_s = r->fb_s = 1e300;
    double t_warm = now();
    if (vt->forward(self, a, &err) || vt->backward(self, a, &err)) goto fail;
    t_warm = now() - t_warm;
    /* as many repeats as fit in about 5 s of forward + backward (at least one) */
    size_t reps = t_warm > 0 ? (size_t)(5.0 / t_warm) : o->reps;
    reps = reps < 1 ? 1 : reps > o->reps ? o->reps : reps;
    for (size_t i = 0; i < reps; i++) {
        double t0 = now();
        if (vt->forward(self, a, &err)) goto fail;
        double t1 = now();
        r->fwd_s = t1 - t0 < r->fwd_s ? t1 - t0 : r->fwd_s;
    }
    r->peak_fwd_mib = rss_mib() - base;
    for (size_t i = 0; i < reps; i++) {
        double t0 = now();
        if (vt->forward(self, a, &err) || vt->backward(self, a, &err)) goto fail;
        double t1 = now();
        r->fb_s = t1 - t0 < r->fb_s ? t1 - t0 : r->fb_s;
    }
    r->peak_fb_mib = rss_mib() - base;
    return 0;
fail:
    snprintf(r->why, sizeof r->why, "%s", err.message);
    return -1;
}

/* One case, in the child (it exits after: nothing is freed). */
static result run_case(const char *plugin, size_t T, const opts *o, size_t nh) {
    result r = {0};
    fs_session *s = open_case(plugin, T, o, nh, &r);
    if (!s) return r;
    fs_threads_set(0);
    const fs_attention_vtable *vt = s->layers[0].plugin->desc->vtable;
    void *self = s->layers[0].self;
    size_t B = o->B, H = o->H, D = o->D, C = H * D, n = B * H * T * D;
    float *q = touched(n, 1), *k = touched(n, 2), *v = touched(n, 3), *dout = touched(n, 4);
    float *out = touched(n, 0), *dq = touched(n, 0), *dk = touched(n, 0), *dv = touched(n, 0);
    float *x = touched(B * T * C, 5), *dx = touched(B * T * C, 0);
    int32_t *tokens = calloc(B * T, sizeof(int32_t));
    for (size_t i = 0; tokens && i < B * T; i++) tokens[i] = (int32_t)((i * 2654435761u) >> 24);
    size_t saved_bytes = vt->saved_bytes(self, B, T);
    r.saved_mib = (double)saved_bytes / 1048576.0;
    void *saved = fs_alloc(saved_bytes); /* untouched: pages count once the plugin writes them */
    if (!q || !k || !v || !dout || !out || !dq || !dk || !dv || !x || !dx || !tokens || !saved) {
        snprintf(r.why, sizeof r.why, "out of memory for the inputs");
        return r;
    }
    fs_attention_args a = {0};
    a.struct_size = sizeof a;
    a.B = B;
    a.T = T;
    a.q = fs_tensor_cpu_f32(q, 4, B, H, T, D);
    a.k = fs_tensor_cpu_f32(k, 4, B, H, T, D);
    a.v = fs_tensor_cpu_f32(v, 4, B, H, T, D);
    a.out = fs_tensor_cpu_f32(out, 4, B, H, T, D);
    a.dout = fs_tensor_cpu_f32(dout, 4, B, H, T, D);
    a.dq = fs_tensor_cpu_f32(dq, 4, B, H, T, D);
    a.dk = fs_tensor_cpu_f32(dk, 4, B, H, T, D);
    a.dv = fs_tensor_cpu_f32(dv, 4, B, H, T, D);
    a.saved = saved;
    a.tokens = tokens;
    if (vt->flags & FS_ATTENTION_USES_INPUT) {
        a.x = fs_tensor_cpu_f32(x, 3, B, T, C, 0);
        a.dx = fs_tensor_cpu_f32(dx, 3, B, T, C, 0);
    }
    if (time_case(vt, self, &a, o, &r) == 0) r.ok = 1;
    return r;
}

static result run_in_child(const char *plugin, size_t T, const opts *o, size_t nh) {
    result r = {0};
    int fd[2];
    if (pipe(fd)) {
        snprintf(r.why, sizeof r.why, "pipe failed");
        return r;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        result c = run_case(plugin, T, o, nh);
        ssize_t w = write(fd[1], &c, sizeof c);
        _exit(w == (ssize_t)sizeof c ? 0 : 1);
    }
    close(fd[1]);
    ssize_t got = pid > 0 ? read(fd[0], &r, sizeof r) : -1;
    close(fd[0]);
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    if (got != (ssize_t)sizeof r) {
        memset(&r, 0, sizeof r);
        if (pid > 0 && WIFSIGNALED(status))
            snprintf(r.why, sizeof r.why, "killed by signal %d (out of memory?)", WTERMSIG(status));
        else
            snprintf(r.why, sizeof r.why, "the case failed to report");
    }
    return r;
}

static void parse(opts *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) goto usage;
        *eq = '\0';
        const char *k = argv[i], *val = eq + 1;
        if (strcmp(k, "T") == 0) {
            o->nT = 0;
            for (char *p = (char *)val; *p && o->nT < 16;) {
                o->Ts[o->nT++] = strtoull(p, &p, 10);
                if (*p == ',') p++;
            }
        } else if (strcmp(k, "H") == 0) o->H = strtoull(val, NULL, 10);
        else if (strcmp(k, "D") == 0) o->D = strtoull(val, NULL, 10);
        else if (strcmp(k, "B") == 0) o->B = strtoull(val, NULL, 10);
        else if (strcmp(k, "window") == 0) o->window = strtoull(val, NULL, 10);
        else if (strcmp(k, "chunk") == 0) o->chunk = strtoull(val, NULL, 10);
        else if (strcmp(k, "bucket_size") == 0) o->bucket_size = strtoull(val, NULL, 10);
        else if (strcmp(k, "hashes") == 0) {
            o->nh = 0;
            for (char *p = (char *)val; *p && o->nh < 8;) {
                o->hashes[o->nh++] = strtoull(p, &p, 10);
                if (*p == ',') p++;
            }
            if (o->nh == 1 && o->hashes[0] == 0) o->nh = 0; /* hashes=0: no lsh rows */
        }
        else if (strcmp(k, "block") == 0) o->block = strtoull(val, NULL, 10);
        else if (strcmp(k, "reps") == 0) o->reps = strtoull(val, NULL, 10);
        else if (strcmp(k, "causal") == 0) o->causal = atoi(val);
        else if (strcmp(k, "time_s") == 0) o->time_s = atof(val);
        else if (strcmp(k, "dilation") == 0) snprintf(o->dilation, sizeof o->dilation, "%s", val);
        else if (strcmp(k, "global") == 0) snprintf(o->global, sizeof o->global, "%s", val);
        else if (strcmp(k, "plugins") == 0) snprintf(o->plugins, sizeof o->plugins, "%s", val);
        else goto usage;
    }
    if (o->nT && o->H && o->D && o->B && o->window && o->reps && o->chunk && o->bucket_size) return;
usage:
    fprintf(stderr, "usage: bench_attention [T=1024,4096,...] [H=8] [D=64] [B=1] [window=256] [dilation=1] "
                    "[global=none] [block=0] [chunk=64] [bucket_size=64] [hashes=1,2,4] [causal=1] "
                    "[time_s=300] [reps=5] [plugins=dense,longformer,lsh]\n");
    exit(2);
}

static void row(size_t T, const char *plugin, const result *r) {
    if (r->ok)
        printf("%6zu  %-10s  %10.1f  %11.1f  %9.1f  %12.1f  %12.1f\n", T, plugin, r->fwd_s * 1e3, r->fb_s * 1e3,
               r->saved_mib, r->peak_fwd_mib, r->peak_fb_mib);
    else
        printf("%6zu  %-10s  %s\n", T, plugin, r->why);
    fflush(stdout);
}

/* Every plugin's results by T (dense, longformer, lsh per n_hashes). */
typedef struct tables {
    result dense[16], lf[16], lsh[16][8];
} tables;

/* The table's rows, T by T; dense is skipped once its T^2 growth would
 * pass the time bound. */
static void measure_all(const opts *o, tables *t) {
    double dense_last_s = 0;
    size_t dense_last_T = 0;
    for (size_t i = 0; i < o->nT; i++) {
        size_t T = o->Ts[i];
        double est_s = dense_last_T ? dense_last_s * ((double)T / dense_last_T) * ((double)T / dense_last_T) : 0;
        if (!wanted(o, "dense")) {
            snprintf(t->dense[i].why, sizeof t->dense[i].why, "not asked for (plugins=%s)", o->plugins);
        } else if (est_s > o->time_s) {
            snprintf(t->dense[i].why, sizeof t->dense[i].why,
                     "skipped: forward+backward would take about %.0f s (T^2 from T = %zu), over %.0f s", est_s,
                     dense_last_T, o->time_s);
        } else {
            t->dense[i] = run_in_child("dense", T, o, 0);
            if (t->dense[i].ok) dense_last_s = t->dense[i].fb_s, dense_last_T = T;
        }
        if (wanted(o, "dense")) row(T, "dense", &t->dense[i]);
        if (wanted(o, "longformer")) {
            t->lf[i] = run_in_child("longformer", T, o, 0);
            row(T, "longformer", &t->lf[i]);
        }
        for (size_t h = 0; h < o->nh; h++) {
            char name[32];
            snprintf(name, sizeof name, "lsh/%zu", o->hashes[h]);
            t->lsh[i][h] = run_in_child("lsh", T, o, o->hashes[h]);
            row(T, name, &t->lsh[i][h]);
        }
    }
}

/* Longformer against dense, its growth with T, and the goals. */
static void compare_longformer(const opts *o, const tables *t) {
    printf("\n");
    for (size_t i = 0; i < o->nT; i++)
        if (t->dense[i].ok && t->lf[i].ok)
            printf("T = %zu: longformer is %.1fx faster forward, %.1fx faster forward+backward, uses %.1fx less "
                   "memory (peak f+b), %.0fx less saved state\n",
                   o->Ts[i], t->dense[i].fwd_s / t->lf[i].fwd_s, t->dense[i].fb_s / t->lf[i].fb_s,
                   t->dense[i].peak_fb_mib / (t->lf[i].peak_fb_mib > 0.01 ? t->lf[i].peak_fb_mib : 0.01),
                   t->dense[i].saved_mib / t->lf[i].saved_mib);
    for (size_t i = 0; i < o->nT; i++)
        if (o->Ts[i] == 16384 && t->dense[i].ok && t->lf[i].ok)
            printf("goal at T = 16k, longformer >= 20x faster and >= 20x less memory: %s\n",
                   t->dense[i].fb_s / t->lf[i].fb_s >= 20 && t->dense[i].fwd_s / t->lf[i].fwd_s >= 20 &&
                           t->dense[i].peak_fb_mib / t->lf[i].peak_fb_mib >= 20
                       ? "met"
                       : "NOT met");
    for (size_t i = 1; i < o->nT; i++)
        if (t->lf[i].ok && t->lf[i - 1].ok)
            printf("longformer T %zu / %zu (x%.0f tokens): forward time x%.2f, forward+backward time x%.2f, memory "
                   "x%.2f\n",
                   o->Ts[i], o->Ts[i - 1], (double)o->Ts[i] / o->Ts[i - 1], t->lf[i].fwd_s / t->lf[i - 1].fwd_s,
                   t->lf[i].fb_s / t->lf[i - 1].fb_s, t->lf[i].peak_fb_mib / t->lf[i - 1].peak_fb_mib);
    for (size_t i = 1; i < o->nT; i++)
        if (o->Ts[i] == 65536 && o->Ts[i - 1] == 16384 && t->lf[i].ok && t->lf[i - 1].ok)
            printf("goal, linear time (64k / 16k within 4.4x): %s\n",
                   t->lf[i].fwd_s / t->lf[i - 1].fwd_s <= 4.4 && t->lf[i].fb_s / t->lf[i - 1].fb_s <= 4.4 ? "met" : "NOT met");
}

/* LSH against dense, and the goal at 16k. */
static void compare_lsh(const opts *o, const tables *t) {
    for (size_t i = 0; i < o->nT; i++)
        for (size_t h = 0; h < o->nh; h++)
            if (t->dense[i].ok && t->lsh[i][h].ok)
                printf("T = %zu: lsh n_hashes=%zu is %.1fx faster forward, %.1fx faster forward+backward, %.1fx less "
                       "memory (peak f+b)\n",
                       o->Ts[i], o->hashes[h], t->dense[i].fwd_s / t->lsh[i][h].fwd_s, t->dense[i].fb_s / t->lsh[i][h].fb_s,
                       t->dense[i].peak_fb_mib / (t->lsh[i][h].peak_fb_mib > 0.01 ? t->lsh[i][h].peak_fb_mib : 0.01));
    for (size_t i = 0; i < o->nT; i++)
        for (size_t h = 0; h < o->nh; h++)
            if (o->Ts[i] == 16384 && o->hashes[h] == 2) {
                if (t->dense[i].ok && t->lsh[i][h].ok)
                    printf("goal at T = 16k, lsh n_hashes=2 >= 10x faster forward+backward than dense: %s (%.1fx)\n",
                           t->dense[i].fb_s / t->lsh[i][h].fb_s >= 10 ? "met" : "NOT met", t->dense[i].fb_s / t->lsh[i][h].fb_s);
                else
                    printf("goal at T = 16k: not measured (dense or lsh did not run)\n");
            }
}

int main(int argc, char **argv) {
    fs_blas_fix_coretype(argv, NULL);
    opts o = {.Ts = {1024, 4096, 16384, 65536}, .nT = 4, .H = 8, .D = 64, .B = 1, .window = 256, .block = 0, .reps = 5,
              .causal = 1, .time_s = 300, .chunk = 64, .bucket_size = 64, .hashes = {1, 2, 4}, .nh = 3};
    snprintf(o.dilation, sizeof o.dilation, "1");
    snprintf(o.global, sizeof o.global, "none");
    snprintf(o.plugins, sizeof o.plugins, "dense,longformer,lsh");
    parse(&o, argc, argv);
    if (!wanted(&o, "lsh")) o.nh = 0;
    fs_log_set_level(FS_LOG_WARN);
    printf("attention: B=%zu H=%zu D=%zu %s; longformer window=%zu dilation=%s global=%s block=%zu; lsh chunk=%zu "
           "bucket_size=%zu lookback=1\n",
           o.B, o.H, o.D, o.causal ? "causal" : "bidirectional", o.window, o.dilation, o.global, o.block, o.chunk,
           o.bucket_size);
    printf("OpenBLAS %s, %ld cores; dense bound: %.0f s per case\n", fs_blas_corename(), sysconf(_SC_NPROCESSORS_ONLN),
           o.time_s);
    printf("memory = growth of peak RSS over the inputs and gradients (saved state + work memory)\n\n");
    printf("%6s  %-10s  %10s  %11s  %9s  %12s  %12s\n", "T", "plugin", "fwd ms", "fwd+bwd ms", "saved MiB",
           "peak fwd MiB", "peak f+b MiB");
    tables t = {0};
    measure_all(&o, &t);
    compare_longformer(&o, &t);
    compare_lsh(&o, &t);
    return 0;
}
