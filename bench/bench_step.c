/* bench_step.c — the serving step's costs (model/batch.h), for the
 * scheduler's defaults and for the price of batch invariance.
 *
 *   1. The products: the fixed-order kernels every step uses
 *      (compute/gemm_rows.h) against OpenBLAS's sgemm on the same shapes
 *      (the model's four projections and its head), for 1..256 rows, at the
 *      calling thread count: GFLOP/s and the ratio. BLAS is faster where it
 *      blocks k for the caches and picks a kernel per shape: exactly what
 *      would make a row's result depend on its batch.
 *   2. Iterations of the ragged step over a paged pool: B sequences
 *      decoding at context `ctx` (B = 1 .. 32), a prompt chunk alone, and a
 *      chunk beside 31 decodes: median milliseconds, and tokens/s.
 *
 * Weights are random (the cost does not depend on them). Times are medians
 * of `reps` after a warm-up; on a shared machine run it when it is quiet.
 *
 * Usage: bench_step [graph=conf/quickstart.ini] [reps=21] [ctx=128] [chunk=256] [threads=1,2] [products=1]
 *                   [seqs=B: only the decode of B sequences, e.g. under perf record]
 *                   [section.key=value ...: as fsrun --set, e.g. generate.kv_dtype=bf16] */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/blas.h"
#include "compute/gemm_rows.h"
#include "core/host.h"
#include "core/rng.h"
#include "core/threads.h"
#include "compute/qweights.h"
#include "model/batch.h"
#include "model/kv_pool.h"
#include "session/session.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, size_t n) {
    qsort(t, n, sizeof *t, cmp_double);
    return t[n / 2];
}

/* ---- 1. products ---- */

static void fill(float *x, size_t n, uint64_t seed) {
    fs_rng r;
    fs_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = fs_rng_normal(&r) * 0.02f;
}

static double time_product(int blas, int nt, const float *packed, float *c, const float *a, const float *w, size_t m,
                           size_t n, size_t k, size_t reps) {
    double *t = malloc(reps * sizeof *t);
    for (size_t r = 0; r <= reps; r++) {
        double t0 = fs_now();
        if (blas && nt) fs_sgemm(0, 1, m, n, k, 1.0f, a, k, w, k, 0.0f, c, n);
        else if (blas) fs_sgemm(0, 0, m, n, k, 1.0f, a, k, w, n, 0.0f, c, n);
        else if (nt) fs_gemm_rows_nt(c, n, a, k, w, k, NULL, m, n, k);
        else if (packed) fs_gemm_rows_nn_packed(c, n, a, k, packed, NULL, m, n, k);
        else fs_gemm_rows_nn(c, n, a, k, w, n, NULL, m, n, k);
        if (r) t[r - 1] = fs_now() - t0;
    }
    double med = median(t, reps);
    free(t);
    return med;
}

static void bench_products(size_t C, size_t V, size_t reps) {
    struct { const char *name; size_t k, n; int nt; } shapes[] = {
        {"qkv  (C,3C)", C, 3 * C, 0}, {"proj (C,C)", C, C, 0}, {"fc   (C,4C)", C, 4 * C, 0},
        {"fcp  (4C,C)", 4 * C, C, 0}, {"head (V,C)^T", C, V, 1}};
    size_t rows[] = {1, 2, 4, 8, 16, 32, 256};
    printf("\nproducts at %d thread(s): GFLOP/s, fixed-order kernels vs OpenBLAS sgemm\n", omp_get_max_threads());
    printf("%-14s %6s %10s %10s %10s %8s %8s\n", "weight", "rows", "fixed", "packed", "blas", "blas/fixed",
           "blas/packed");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++) {
            size_t m = rows[ri], k = shapes[s].k, n = shapes[s].n;
            float *a = fs_alloc(m * k * 4), *w = fs_alloc(k * n * 4), *c = fs_alloc(m * n * 4);
            fill(a, m * k, 1);
            fill(w, k * n, 2);
            float *pk = shapes[s].nt ? NULL : fs_alloc(fs_gemm_rows_packed_floats(k, n) * sizeof(float));
            if (pk) fs_gemm_rows_pack(pk, w, n, k, n);
            double tf = time_product(0, shapes[s].nt, NULL, c, a, w, m, n, k, reps);
            double tp = pk ? time_product(0, 0, pk, c, a, w, m, n, k, reps) : tf;
            double tb = time_product(1, shapes[s].nt, NULL, c, a, w, m, n, k, reps);
            double fl = 2.0 * (double)m * (double)n * (double)k;
            printf("%-14s %6zu %10.2f %10.2f %10.2f %8.2f %8.2f\n", shapes[s].name, m, fl / tf * 1e-9, fl / tp * 1e-9,
                   fl / tb * 1e-9, tf / tb, tp / tb);
            fs_free(pk);
            fs_free(a);
            fs_free(w);
            fs_free(c);
        }
}

/* ---- 2. iterations ---- */

typedef struct seqs {
    size_t n, kb;
    int32_t (*tok)[1024];
    int32_t (*tab)[128];
    size_t *len;
} seqs;

static int grow(fs_kv_pool *pool, seqs *q, size_t i, size_t upto) {
    for (size_t p = q->len[i]; p < upto; p++) {
        if (p % q->kb == 0 && (q->tab[i][p / q->kb] = fs_kv_pool_alloc(pool)) < 0) return -1;
        q->tok[i][p] = (int32_t)((p * 31 + i * 7) % 200);
    }
    return 0;
}

/* One step: sequences [from, n) add add[i] tokens each. */
static double step(fs_batch *b, const fs_model *m, const fs_step_weights *sw, fs_kv_pool *pool, seqs *q, size_t from,
                   const size_t *add, float *logits) {
    fs_batch_seq bs[64];
    size_t k = 0;
    for (size_t i = from; i < q->n; i++) {
        if (grow(pool, q, i, q->len[i] + add[i])) {
            fprintf(stderr, "bench_step: pool full\n");
            exit(1);
        }
        bs[k++] = (fs_batch_seq){.start = q->len[i], .n_new = add[i], .tokens = q->tok[i], .blocks = q->tab[i],
                                 .n_blocks = (q->len[i] + add[i] + q->kb - 1) / q->kb, .logits = 1};
    }
    fs_error err = {0};
    double t0 = fs_now();
    if (fs_batch_run(b, m, sw, pool, bs, k, logits, &err)) {
        fprintf(stderr, "bench_step: %s\n", err.message);
        exit(1);
    }
    double t = fs_now() - t0;
    for (size_t i = from; i < q->n; i++) q->len[i] += add[i];
    return t;
}

/* Median time of `reps` steps of B sequences: with first == 1, each
 * decodes one token at context ctx; else sequence 0 computes the first
 * `first` tokens of a prompt while the others decode at ctx. */
static double iteration(const fs_model *m, size_t kb, size_t B, size_t ctx, size_t first, size_t reps) {
    size_t V = fs_model_cfg(m)->vocab, chunked = first > 1;
    size_t per_seq = ((ctx > first ? ctx : first) + reps + 2 + kb - 1) / kb + 1; /* blocks each sequence reaches */
    fs_kv_pool *pool;
    fs_batch *b;
    fs_step_weights *sw; /* packed f32, as the engine reads them */
    fs_error err = {0};
    if (per_seq > 128 || ctx + reps + 2 > 1024) {
        fprintf(stderr, "bench_step: context %zu + %zu reps: at most 1024 tokens and 128 blocks a sequence\n", ctx,
                reps);
        exit(2);
    }
    if (fs_kv_pool_create(&pool, m, kb, B * per_seq, 0, &err) ||
        fs_batch_create(&b, m, (ctx > first ? ctx : first) + B, B, &err) ||
        fs_step_weights_create(&sw, m, FS_WEIGHTS_F32, (ctx > first ? ctx : first) + B, B, &err)) {
        fprintf(stderr, "bench_step: %s\n", err.message);
        exit(1);
    }
    seqs q = {B, kb, calloc(B, sizeof *q.tok), calloc(B, sizeof *q.tab), calloc(B, sizeof *q.len)};
    float *logits = malloc(B * V * sizeof(float));
    size_t add[64];
    for (size_t i = chunked; i < B; i++) { /* the decoders' context, one at a time */
        seqs one = q;
        one.n = i + 1;
        add[i] = ctx;
        step(b, m, sw, pool, &one, i, add, logits);
    }
    double *t = malloc(reps * sizeof *t);
    for (size_t r = 0; r <= reps; r++) {
        for (size_t i = 0; i < B; i++) add[i] = i == 0 ? first : 1;
        double s = step(b, m, sw, pool, &q, 0, add, logits);
        if (r) t[r - 1] = s;
        if (chunked) { /* the chunk again from the start next time */
            for (size_t p = 0; p < (first + kb - 1) / kb; p++) fs_kv_pool_unref(pool, q.tab[0][p]);
            q.len[0] = 0;
        }
    }
    double med = median(t, reps);
    free(t);
    free(logits);
    free(q.tok);
    free(q.tab);
    free(q.len);
    fs_batch_destroy(b);
    fs_step_weights_destroy(sw);
    fs_kv_pool_destroy(pool);
    return med;
}

/* kb: [serve] kv_block of the graph (with its --set style assignments) */
static void bench_iterations(const fs_model *m, size_t kb, size_t ctx, size_t chunk, size_t reps, size_t only) {
    printf("\niterations at %d thread(s), context %zu: median ms (tokens/s)\n", omp_get_max_threads(), ctx);
    size_t Bs[] = {1, 2, 4, 8, 16, 32};
    for (size_t i = 0; i < sizeof Bs / sizeof Bs[0]; i++) {
        if (only && Bs[i] != only) continue;
        double t = iteration(m, kb, Bs[i], ctx, 1, reps);
        printf("  decode, %2zu sequences        %8.3f ms  (%7.0f tokens/s)\n", Bs[i], t * 1e3, (double)Bs[i] / t);
    }
    if (only) return;
    double t = iteration(m, kb, 1, ctx, chunk, reps);
    printf("  prompt chunk of %zu alone     %8.3f ms  (%7.0f tokens/s)\n", chunk, t * 1e3, (double)chunk / t);
    t = iteration(m, kb, 32, ctx, chunk, reps);
    printf("  chunk of %zu + 31 decodes     %8.3f ms  (%7.0f tokens/s)\n", chunk, t * 1e3, (double)(chunk + 31) / t);
}

#define MAX_THREAD_COUNTS 8

/* "1,2,4" into counts; the number of counts, or 0 if malformed. */
static size_t parse_threads(const char *s, int *counts) {
    size_t n = 0;
    for (char *end; *s; s = *end ? end + 1 : end) {
        long t = strtol(s, &end, 10);
        if (end == s || t < 1 || t > 1024 || n == MAX_THREAD_COUNTS || (*end && *end != ',')) return 0;
        counts[n++] = (int)t;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *graph = "conf/quickstart.ini";
    size_t reps = 21, ctx = 128, chunk = 256, n_threads = 2, only = 0;
    int threads[MAX_THREAD_COUNTS] = {1, 2}, products = 1, ok = 1;
    const char *sets[16];
    size_t n_sets = 0;
    for (int i = 1; i < argc && ok; i++) {
        if (!strncmp(argv[i], "graph=", 6)) graph = argv[i] + 6;
        else if (!strncmp(argv[i], "reps=", 5)) ok = (reps = strtoul(argv[i] + 5, NULL, 10)) > 0;
        else if (!strncmp(argv[i], "ctx=", 4)) ctx = strtoul(argv[i] + 4, NULL, 10);
        else if (!strncmp(argv[i], "chunk=", 6)) chunk = strtoul(argv[i] + 6, NULL, 10);
        else if (!strncmp(argv[i], "seqs=", 5)) ok = (only = strtoul(argv[i] + 5, NULL, 10)) > 0;
        else if (!strncmp(argv[i], "products=", 9)) products = atoi(argv[i] + 9);
        else if (!strncmp(argv[i], "threads=", 8)) ok = (n_threads = parse_threads(argv[i] + 8, threads)) > 0;
        else if (strchr(argv[i], '.') && strchr(argv[i], '.') < strchr(argv[i], '=') && n_sets < 16)
            sets[n_sets++] = argv[i]; /* section.key=value, as fsrun --set */
        else ok = 0;
    }
    if (!ok) {
        fprintf(stderr, "usage: bench_step [graph=conf/quickstart.ini] [reps=21] [ctx=128] [chunk=256] "
                        "[threads=1,2 (up to %d counts)] [products=1|0] [seqs=B (decode of B sequences only)] "
                        "[section.key=value ...]\n",
                MAX_THREAD_COUNTS);
        return 2;
    }
    fs_blas_fix_coretype(argv, NULL);
    fs_graph *g;
    fs_session *s;
    fs_error err = {0};
    int rc = fs_graph_load(&g, graph, &err);
    for (size_t i = 0; i < n_sets && !rc; i++) rc = fs_graph_set(g, sets[i], &err);
    if (rc || fs_session_open(&s, g, &err)) {
        fprintf(stderr, "bench_step: %s\n", err.message);
        return 1;
    }
    fs_model_init_weights(s->model, 1);
    const fs_model_config *c = fs_model_cfg(s->model);
    printf("bench_step: %s (C %zu, %zu layers, V %zu), OpenBLAS %s\n", graph, c->n_embd, c->n_layer, c->vocab,
           fs_blas_corename());
    for (size_t i = 0; i < n_threads; i++) {
        fs_threads_set(threads[i]);
        omp_set_num_threads(threads[i]);
        fs_blas_set_threads(threads[i]);
        if (products) bench_products(c->n_embd, c->vocab, reps);
        bench_iterations(s->model, (size_t)fs_config_int(s->serve_cfg, "kv_block"), ctx, chunk, reps, only);
    }
    fs_session_close(s);
    return 0;
}
