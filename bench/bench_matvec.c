/* bench_matvec.c — the decoding kernels (compute/matvec.c, compute/qweights.c)
 * against OpenBLAS on the weights of a token: per-token time of every
 * projection of every layer, as decoding does them.
 *
 * Shapes: L layers of c_attn (C -> 3C), attn c_proj (C -> C), c_fc
 * (C -> 4C) and mlp c_proj (4C -> C), then the head (C -> V), each layer
 * with its own weights so that they stream from memory as in a real model
 * (GPT-2 small: 85 M weights, 340 MB in f32). Methods:
 *   sgemm      cblas_sgemm with one row per token, the weights in the
 *              training layout (in, out): what fsrun's decode did
 *   sgemv      cblas_sgemv on the same layout (n = 1 only)
 *   fs f32 / fs bf16 / fs q8   fs_qweight_matvec on (out, in) copies
 * at 1 and 2 threads (OpenBLAS's count, or the kernels' argument), for
 * n = 1, 2, 4, 8 input rows (a batched decode step: the time per token is
 * the step's time / n). Times are medians over passes after 2 warm-up
 * passes; each cell runs for about `seconds`.
 *
 * Then the head alone at a GPT-2-sized vocabulary (50257): the projection
 * with a full sort of the logits (what fsrun's top-k sampler does), with an
 * argmax, and fused with top-k (fs_matvec_topk_f32, k = 1 and 40).
 *
 * Usage: bench_matvec [L=12] [C=768] [V=256] [seconds=2] [threads=1,2] [rows=1,2,4,8]
 * It asserts nothing: compare within a run. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/host.h"
#include "core/rng.h"
#include "compute/blas.h"
#include "compute/matvec.h"
#include "compute/qweights.h"

typedef struct proj {
    size_t in, out;
    float *w_io; /* (in, out): training layout, for OpenBLAS */
    float *bias;
    fs_qweight q[3]; /* (out, in) in each format */
} proj;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float *filled(size_t n, uint64_t seed, float scale) {
    float *p = fs_alloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_matvec: out of memory\n");
        exit(1);
    }
    fs_rng r;
    fs_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) p[i] = scale * fs_rng_normal(&r);
    return p;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { M_SGEMM, M_SGEMV, M_F32, M_BF16, M_Q8, N_METHODS };
static const char *method_name[N_METHODS] = {"sgemm", "sgemv", "fs f32", "fs bf16", "fs q8"};

/* one token's worth (n rows) through every projection */
static void pass(int method, proj *p, size_t np, const float *x, float *y, size_t n, void *work, int threads) {
    for (size_t i = 0; i < np; i++) {
        proj *q = &p[i];
        switch (method) {
        case M_SGEMM:
            for (size_t r = 0; r < n; r++) memcpy(y + r * q->out, q->bias, q->out * sizeof(float));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)q->out, (int)q->in, 1.0f, x,
                        (int)q->in, q->w_io, (int)q->out, 1.0f, y, (int)q->out);
            break;
        case M_SGEMV:
            memcpy(y, q->bias, q->out * sizeof(float));
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)q->in, (int)q->out, 1.0f, q->w_io, (int)q->out, x, 1, 1.0f, y,
                        1);
            break;
        default:
            fs_qweight_matvec(&q->q[method - M_F32], y, x, q->bias, n, work, threads);
        }
    }
}

static double median_pass_s(int method, proj *p, size_t np, const float *x, float *y, size_t n, void *work,
                            int threads, double seconds) {
    double t[200];
    size_t k = 0;
    for (int w = 0; w < 2; w++) pass(method, p, np, x, y, n, work, threads);
    double start = now();
    while (k < 200 && (k < 5 || now() - start < seconds)) {
        double t0 = now();
        pass(method, p, np, x, y, n, work, threads);
        t[k++] = now() - t0;
    }
    qsort(t, k, sizeof t[0], cmp_double);
    return t[k / 2];
}

static size_t parse_list(const char *s, size_t *v, size_t max) {
    size_t n = 0;
    for (char *e; *s && n < max; s = *e ? e + 1 : e) v[n++] = strtoull(s, &e, 10);
    return n;
}

typedef struct scored {
    float p;
    int id;
} scored;

static int by_p(const void *a, const void *b) {
    const scored *x = a, *y = b;
    return x->p != y->p ? (x->p < y->p ? 1 : -1) : x->id - y->id;
}

static void head_table(size_t C, size_t V, int threads, double seconds) {
    float *w = filled(V * C, 99, 0.02f), *x = filled(C, 98, 1.0f), *logits = fs_alloc(V * sizeof(float));
    scored *s = malloc(V * sizeof *s);
    int ids[FS_TOPK_MAX];
    float vals[FS_TOPK_MAX];
    const char *names[] = {"matvec + sort (top-k sampler)", "matvec + argmax", "fused top-1", "fused top-40"};
    printf("  %d thread%s:", threads, threads > 1 ? "s" : "");
    for (int m = 0; m < 4; m++) {
        double t[200];
        size_t k = 0;
        double start = now();
        while (k < 200 && (k < 5 || now() - start < seconds)) {
            double t0 = now();
            if (m < 2) {
                fs_matvec_f32(logits, x, w, NULL, 1, C, V, threads);
                if (m == 0) {
                    for (size_t i = 0; i < V; i++) s[i].p = logits[i], s[i].id = (int)i;
                    qsort(s, V, sizeof *s, by_p);
                } else {
                    size_t best = 0;
                    for (size_t i = 1; i < V; i++) best = logits[i] > logits[best] ? i : best;
                    ids[0] = (int)best;
                }
            } else {
                fs_matvec_topk_f32(ids, vals, m == 2 ? 1 : 40, x, w, C, V, threads);
            }
            t[k++] = now() - t0;
        }
        qsort(t, k, sizeof t[0], cmp_double);
        printf("  %s %.2f ms%s", names[m], t[k / 2] * 1e3, m < 3 ? ";" : "\n");
    }
    fs_free(w), fs_free(x), fs_free(logits), free(s);
}

int main(int argc, char **argv) {
    fs_blas_fix_coretype(argv, NULL);
    size_t L = 12, C = 768, V = 256, threads[4] = {1, 2}, nthreads = 2, rows[8] = {1, 2, 4, 8}, nrows = 4;
    double seconds = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "L=", 2)) L = strtoull(a + 2, NULL, 10);
        else if (!strncmp(a, "C=", 2)) C = strtoull(a + 2, NULL, 10);
        else if (!strncmp(a, "V=", 2)) V = strtoull(a + 2, NULL, 10);
        else if (!strncmp(a, "seconds=", 8)) seconds = atof(a + 8);
        else if (!strncmp(a, "threads=", 8)) nthreads = parse_list(a + 8, threads, 4);
        else if (!strncmp(a, "rows=", 5)) nrows = parse_list(a + 5, rows, 8);
        else {
            fprintf(stderr, "usage: bench_matvec [L=12] [C=768] [V=256] [seconds=2] [threads=1,2] [rows=1,2,4,8]\n");
            return 2;
        }
    }
    if (C % 32) {
        fprintf(stderr, "bench_matvec: C must be a multiple of 32 (q8 blocks)\n");
        return 2;
    }
    size_t np = 4 * L + 1, maxrows = 0;
    for (size_t i = 0; i < nrows; i++) maxrows = rows[i] > maxrows ? rows[i] : maxrows;
    proj *p = calloc(np, sizeof *p);
    fs_error err = {0};
    size_t weights = 0, work_bytes = 0;
    for (size_t i = 0; i < np; i++) {
        size_t kind = i < 4 * L ? i % 4 : 4;
        size_t in = kind == 3 ? 4 * C : C, out = kind == 0 ? 3 * C : kind == 2 ? 4 * C : kind == 4 ? V : C;
        p[i].in = in;
        p[i].out = out;
        p[i].w_io = filled(in * out, 1000 + i, 0.02f);
        p[i].bias = filled(out, 2000 + i, 0.02f);
        for (int f = 0; f < 3; f++) {
            if (fs_qweight_create(&p[i].q[f], (fs_wformat)f, p[i].w_io, out, 1, out, in, &err)) {
                fprintf(stderr, "bench_matvec: %s\n", err.message);
                return 1;
            }
            size_t wb = fs_qweight_work_bytes((fs_wformat)f, maxrows, in);
            work_bytes = wb > work_bytes ? wb : work_bytes;
        }
        weights += in * out;
    }
    float *x = filled(maxrows * 4 * C, 5, 1.0f), *y = fs_alloc(maxrows * (V > 4 * C ? V : 4 * C) * sizeof(float));
    void *work = fs_alloc(work_bytes ? work_bytes : 64);
    printf("per-token time of one token's projections: L=%zu C=%zu V=%zu, %.1f M weights (f32 %.0f MB, bf16 %.0f MB, "
           "q8 %.0f MB); OpenBLAS %s; bf16 %s\n",
           L, C, V, weights / 1e6, weights * 4 / 1e6, weights * 2 / 1e6, weights * 34.0 / 32 / 1e6, fs_blas_corename(),
           fs_bf16_native() ? "native AVX512-BF16" : "widened in registers");
    printf("ms per token (a step of n rows / n), median over passes; speedup = sgemm / method\n");
    printf("  %-8s %4s", "method", "thr");
    for (size_t r = 0; r < nrows; r++) printf("  %7s n=%-2zu", "", rows[r]);
    printf("\n");
    double base[4][8] = {{0}};
    for (size_t ti = 0; ti < nthreads; ti++)
        for (int m = 0; m < N_METHODS; m++) {
            int t = (int)threads[ti];
            fs_blas_set_threads(t);
            printf("  %-8s %4d", method_name[m], t);
            for (size_t r = 0; r < nrows; r++) {
                if (m == M_SGEMV && rows[r] != 1) {
                    printf("  %12s", "-");
                    continue;
                }
                double s = median_pass_s(m, p, np, x, y, rows[r], work, t, seconds) / (double)rows[r];
                if (m == M_SGEMM) base[ti][r] = s;
                printf("  %6.2f %4.1fx", s * 1e3, base[ti][r] / s);
                fflush(stdout);
            }
            printf("\n");
        }
    printf("\nthe vocabulary projection alone, C=%zu V=50257 (GPT-2's vocabulary), ms per token:\n", C);
    for (size_t ti = 0; ti < nthreads; ti++) head_table(C, 50257, (int)threads[ti], seconds / 2);
    return 0;
}
