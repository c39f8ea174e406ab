/* bench_decode.c — decoding through each [generate] weights format: the
 * eval loss it gives and the tokens/s it runs at (issue 14, items 1-2).
 *
 * Loss: consecutive windows of max_seq tokens of VAL (as --mode eval takes
 * them), each decoded token by token through a fresh sequence (model/seq.h)
 * with teacher forcing, cross-entropy of every position's logits against
 * the next token in double. With f32 this equals --mode eval's loss (the
 * training forward) to float rounding; bf16 and q8 show what their
 * rounding costs.
 *
 * Speed: the prompt "And God said," then greedy tokens, batch 1, at each
 * thread count; tokens/s = (prompt + generated) / seconds, as fsrun
 * --mode generate reports it; the median of `reps` runs.
 *
 * The graph comes from the checkpoint's own metadata, so any fsrun
 * checkpoint works. Prints one JSON line per (format, threads) and one per
 * format's loss.
 *
 * Usage: bench_decode CKPT VAL [windows=100] [weights=f32,bf16,q8] [threads=1,2] [tokens=200] [reps=3] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/host.h"
#include "core/threads.h"
#include "session/session.h"
#include "session/checkpoint.h"
#include "io/safetensors.h"
#include "compute/blas.h"
#include "compute/qweights.h"
#include "model/seq.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void die(const char *what, const fs_error *err) {
    fprintf(stderr, "bench_decode: %s: %s\n", what, err ? err->message : "");
    exit(1);
}

static fs_seq *new_seq(const fs_model *m, int format, int threads) {
    fs_seq_config sc = {.B = 1, .threads = threads, .weights = format};
    fs_seq *seq;
    fs_error err = {0};
    if (fs_seq_create(&seq, m, &sc, &err)) die("sequence", &err);
    return seq;
}

/* Mean cross-entropy over `windows` windows of T tokens (and the next). */
static double decode_loss(const fs_model *m, int format, const unsigned char *val, size_t windows, size_t T,
                          size_t V) {
    float *logits = malloc(V * sizeof(float));
    double total = 0;
    fs_error err = {0};
    for (size_t w = 0; w < windows; w++) {
        fs_seq *seq = new_seq(m, format, 0);
        const unsigned char *x = val + w * T;
        for (size_t t = 0; t < T; t++) {
            int32_t tok = x[t];
            if (fs_seq_decode(seq, &tok, logits, &err)) die("decode", &err);
            double mx = logits[0], s = 0;
            for (size_t v = 1; v < V; v++) mx = fmax(mx, logits[v]);
            for (size_t v = 0; v < V; v++) s += exp((double)logits[v] - mx);
            total += mx + log(s) - logits[x[t + 1]];
        }
        fs_seq_destroy(seq);
    }
    free(logits);
    return total / (double)(windows * T);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* tokens/s of prompt + `tokens` greedy tokens, median of reps */
static double decode_speed(const fs_model *m, int format, int threads, size_t tokens, size_t V, int reps) {
    const char *prompt = "And God said,";
    float *logits = malloc(V * sizeof(float));
    double t[16];
    fs_error err = {0};
    if (reps > 16) reps = 16;
    for (int r = 0; r < reps; r++) {
        fs_seq *seq = new_seq(m, format, threads);
        size_t n = strlen(prompt), ctx = fs_seq_context(seq);
        double t0 = now();
        for (size_t i = 0; i < n; i++) {
            int32_t tok = (unsigned char)prompt[i];
            if (fs_seq_decode(seq, &tok, logits, &err)) die("decode", &err);
        }
        for (size_t i = 0; i + 1 < tokens && fs_seq_pos(seq) < ctx; i++) {
            int32_t best = 0;
            for (size_t v = 1; v < V; v++) best = logits[v] > logits[best] ? (int32_t)v : best;
            if (fs_seq_decode(seq, &best, logits, &err)) die("decode", &err);
        }
        double secs = now() - t0;
        t[r] = (double)fs_seq_pos(seq) / secs;
        fs_seq_destroy(seq);
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_double);
    free(logits);
    return t[reps / 2];
}

static size_t split_list(char *s, char **items, size_t max) {
    size_t n = 0;
    for (char *save = NULL, *tok = strtok_r(s, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save))
        items[n++] = tok;
    return n;
}

int main(int argc, char **argv) {
    fs_blas_fix_coretype(argv, NULL);
    if (argc < 3) {
        fprintf(stderr, "usage: bench_decode CKPT VAL [windows=100] [weights=f32,bf16,q8] [threads=1,2] [tokens=200] "
                        "[reps=3]\n");
        return 2;
    }
    const char *ckpt = argv[1], *valpath = argv[2];
    size_t windows = 100, tokens = 200;
    int reps = 3;
    char formats[64] = "f32,bf16,q8", thr[64] = "1,2";
    for (int i = 3; i < argc; i++) {
        if (!strncmp(argv[i], "windows=", 8)) windows = strtoull(argv[i] + 8, NULL, 10);
        else if (!strncmp(argv[i], "weights=", 8)) snprintf(formats, sizeof formats, "%s", argv[i] + 8);
        else if (!strncmp(argv[i], "threads=", 8)) snprintf(thr, sizeof thr, "%s", argv[i] + 8);
        else if (!strncmp(argv[i], "tokens=", 7)) tokens = strtoull(argv[i] + 7, NULL, 10);
        else if (!strncmp(argv[i], "reps=", 5)) reps = atoi(argv[i] + 5);
        else {
            fprintf(stderr, "bench_decode: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    fs_log_set_level(FS_LOG_WARN);
    fs_error err = {0};
    fs_safetensors *st;
    if (fs_safetensors_open(&st, ckpt, &err)) die(ckpt, &err);
    const char *graph_text = fs_safetensors_metadata(st, "graph");
    if (!graph_text) die(ckpt, &(fs_error){.message = "no graph in its metadata"});
    fs_graph *g;
    if (fs_graph_load_string(&g, ckpt, graph_text, &err) || fs_graph_set(g, "parallel.plugin=single", &err))
        die("graph", &err);
    fs_safetensors_close(st);
    fs_session *s;
    if (fs_session_open(&s, g, &err)) die("session", &err);
    if (fs_checkpoint_load(ckpt, s, NULL, NULL, &err)) die(ckpt, &err);
    fs_threads_set(0);
    const fs_model *m = s->model;
    size_t T = fs_model_cfg(m)->max_seq, V = fs_model_cfg(m)->vocab;

    unsigned char *val = NULL;
    if (windows) { /* the loss needs the text; speed alone does not */
        FILE *f = fopen(valpath, "rb");
        if (!f) die(valpath, &(fs_error){.message = "cannot open"});
        size_t cap = windows * T + 1;
        val = malloc(cap);
        size_t got = fread(val, 1, cap, f);
        fclose(f);
        if (got < T + 1) die(valpath, &(fs_error){.message = "shorter than one window"});
        if ((got - 1) / T < windows) windows = (got - 1) / T;
    }

    char *fl[8], *tl[8];
    size_t nf = split_list(formats, fl, 8), nt = split_list(thr, tl, 8);
    for (size_t i = 0; i < nf; i++) {
        int format = fs_wformat_parse(fl[i]);
        if (format < 0) die(fl[i], &(fs_error){.message = "weights must be f32, bf16 or q8"});
        for (size_t j = 0; j < nt; j++) {
            int threads = atoi(tl[j]);
            double tps = decode_speed(m, format, threads, tokens, V, reps);
            printf("{\"weights\": \"%s\", \"threads\": %d, \"tokens_per_s\": %.1f}\n", fl[i], threads, tps);
            fflush(stdout);
        }
        if (windows) {
            double loss = decode_loss(m, format, val, windows, T, V);
            printf("{\"weights\": \"%s\", \"loss\": %.6f, \"tokens\": %zu}\n", fl[i], loss, windows * T);
            fflush(stdout);
        }
    }
    free(val);
    fs_session_close(s);
    return 0;
}
