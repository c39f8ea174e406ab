/* bench_peak.c — the machine's measured peaks: sgemm FLOP/s, what model
 * FLOP utilisation (MFU, bench/bench.py) is a fraction of, and memory read
 * bandwidth, what bounds decoding a model whose weights do not fit in the
 * caches (each token reads every weight once: tokens/s <= GB/s / weight
 * bytes; bench/bench_decode.py prints that ceiling).
 *
 * A datasheet peak (cores x FMA units x lanes x 2 x clock) assumes a clock
 * that a shared or virtual machine may not hold and says nothing about
 * the BLAS's kernels; the issue asks for the peak this machine reaches.
 * So: OpenBLAS's sgemm through fsrun's own wrapper (compute/blas.h, the
 * same core type and thread count fsrun trains with) on square products
 * large enough that packing and edges cost nothing (1024 .. 4096), each
 * timed `reps` times after a warm-up. A size's figure is its median; the
 * peak is the best size's median (a peak is the most the machine gives,
 * the median keeps one lucky repeat out of it).
 *
 * Read bandwidth: `read_mb` MiB of floats (far past the last-level cache)
 * summed in order by the same threads, each its own contiguous part, with
 * AVX2 loads where the build has them; the median of `reps` passes after a
 * warm-up (which also faults the pages in).
 *
 * Prints one JSON line:
 *   {"threads": T, "core": "...", "sizes": {"1024": g, ...}, "peak_gflops": G, "read_gbs": B}
 *
 * Usage: bench_peak [threads=0] [reps=5] [sizes=1024,2048,3072,4096] [read_mb=512 (0: skip)]
 *        threads=0: all the cores this process may use (fixed, not adaptive: a peak is
 *        what the whole machine gives) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compute/blas.h"
#include "core/host.h"
#include "core/rng.h"
#include "core/threads.h"

#define MAX_SIZES 8

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median GFLOP/s of `reps` products C (n, n) = A (n, n) B (n, n), after one untimed. */
static double square_gflops(size_t n, int reps) {
    float *a = fs_alloc(n * n * sizeof(float)), *b = fs_alloc(n * n * sizeof(float)),
          *c = fs_alloc(n * n * sizeof(float));
    double *t = malloc((size_t)reps * sizeof *t), g = -1.0;
    if (a && b && c && t) {
        fs_rng r;
        fs_rng_seed(&r, 1234 + n);
        for (size_t i = 0; i < n * n; i++) a[i] = fs_rng_normal(&r), b[i] = fs_rng_normal(&r);
        for (int i = 0; i <= reps; i++) {
            double t0 = now();
            fs_sgemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            if (i) t[i - 1] = now() - t0;
        }
        qsort(t, (size_t)reps, sizeof *t, cmp_double);
        g = 2.0 * (double)n * (double)n * (double)n / t[reps / 2] * 1e-9;
    }
    fs_free(a);
    fs_free(b);
    fs_free(c);
    free(t);
    return g;
}

/* Sum of x[0, n), four independent vector sums (so the adds do not limit it). */
static float read_sum(const float *x, size_t n) {
    float l[32] = {0};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (size_t j = 0; j < 32; j++) l[j] += x[i + j];
    for (; i < n; i++) l[0] += x[i];
    float s = 0.0f;
    for (size_t j = 0; j < 32; j++) s += l[j];
    return s;
}

/* Median GB/s of reading `mb` MiB with the pool's threads, or -1 (no memory). */
static double read_gbs(size_t mb, int reps) {
    size_t n = mb * ((size_t)1 << 20) / sizeof(float);
    float *x = fs_alloc(n * sizeof(float));
    double *t = malloc((size_t)reps * sizeof *t), g = -1.0;
    volatile float sink = 0.0f;
    if (x && t) {
        for (size_t i = 0; i < n; i++) x[i] = (float)(i & 7);
        for (int r = 0; r <= reps; r++) {
            double t0 = now(), sum = 0.0;
#pragma omp parallel reduction(+ : sum)
            {
                size_t k = (size_t)omp_get_thread_num(), T = (size_t)omp_get_num_threads();
                size_t a = n / T * k, b = k + 1 == T ? n : n / T * (k + 1);
                sum += read_sum(x + a, b - a);
            }
            if (r) t[r - 1] = now() - t0;
            sink += (float)sum;
        }
        qsort(t, (size_t)reps, sizeof *t, cmp_double);
        g = (double)(n * sizeof(float)) / t[reps / 2] * 1e-9;
    }
    (void)sink;
    fs_free(x);
    free(t);
    return g;
}

static int parse_sizes(const char *s, size_t *sizes) {
    int n = 0;
    for (char *end; *s && n < MAX_SIZES; s = *end ? end + 1 : end) {
        sizes[n] = strtoull(s, &end, 10);
        if (end == s || sizes[n] < 64 || sizes[n] > 16384 || (*end && *end != ',')) return -1;
        n++;
    }
    return n;
}

int main(int argc, char **argv) {
    fs_blas_fix_coretype(argv, NULL);
    int threads = 0, reps = 5, n_sizes = 4;
    size_t read_mb = 512;
    size_t sizes[MAX_SIZES] = {1024, 2048, 3072, 4096};
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "threads=", 8)) threads = atoi(argv[i] + 8);
        else if (!strncmp(argv[i], "reps=", 5)) reps = atoi(argv[i] + 5);
        else if (!strncmp(argv[i], "sizes=", 6)) n_sizes = parse_sizes(argv[i] + 6, sizes);
        else if (!strncmp(argv[i], "read_mb=", 8)) read_mb = strtoull(argv[i] + 8, NULL, 10);
        else n_sizes = -1;
        if (n_sizes <= 0 || threads < 0 || reps < 1) {
            fprintf(stderr, "bench_peak: bad argument '%s'\nusage: bench_peak [threads=0] [reps=5] "
                            "[sizes=1024,2048,3072,4096] (sizes 64..16384, at most %d) [read_mb=512]\n", argv[i],
                    MAX_SIZES);
            return 2;
        }
    }
    fs_threads_set(threads ? threads : omp_get_num_procs());
    int used = fs_threads_get();
    double peak = 0.0;
    printf("{\"threads\": %d, \"core\": \"%s\", \"sizes\": {", used, fs_blas_corename());
    for (int i = 0; i < n_sizes; i++) {
        double g = square_gflops(sizes[i], reps);
        if (g < 0) {
            fprintf(stderr, "bench_peak: out of memory for %zu x %zu\n", sizes[i], sizes[i]);
            return 1;
        }
        if (g > peak) peak = g;
        printf("%s\"%zu\": %.1f", i ? ", " : "", sizes[i], g);
    }
    printf("}, \"peak_gflops\": %.1f", peak);
    double bw = read_mb ? read_gbs(read_mb, reps) : 0.0;
    if (bw < 0) {
        fprintf(stderr, "bench_peak: out of memory for %zu MiB\n", read_mb);
        return 1;
    }
    if (read_mb) printf(", \"read_gbs\": %.2f", bw);
    printf("}\n");
    return 0;
}
