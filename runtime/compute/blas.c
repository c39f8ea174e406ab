/* blas.c — OpenBLAS core-type fix-up and the sgemm wrapper. */
#include "compute/blas.h"

#include "core/threads.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static char g_note[256] = "OpenBLAS core type as detected";
static int g_stats_on;
static double g_flops, g_seconds;

static int is_intel(void) {
    unsigned a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0));
    return b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu; /* "GenuineIntel" */
}

/* Kernel sets older than anything with AVX2: if OpenBLAS picked one of these
 * on a CPU with AVX2+FMA it misdetected the CPU. */
static int is_legacy_core(const char *name) {
    static const char *legacy[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
                                   "Katmai", "Coppermine", "Northwood", "Banias", "Opteron", "Barcelona",
                                   "Bobcat", "Sandybridge", "Bulldozer", "Piledriver", "Steamroller",
                                   "Excavator", "unknown", NULL};
    for (int i = 0; legacy[i]; i++)
        if (strcasecmp(name, legacy[i]) == 0) return 1;
    return 0;
}

/* The core type OpenBLAS should run when the one it detected is older
 * than the CPU's features allow, else NULL. */
static const char *better_core(const char *core) {
    __builtin_cpu_init();
    const char *want = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && is_intel())
        want = "SKYLAKEX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "HASWELL";
    return want && core && is_legacy_core(core) ? want : NULL;
}

/* The re-exec marker: "<core OpenBLAS had detected, or - when the core
 * type was not changed>;<1 when the OpenMP wait policy was set>". */
#define REEXEC_MARKER "FS_BLAS_REEXEC"

void fs_blas_fix_coretype(char **argv, const char *spincount) {
    const char *core = openblas_get_corename();
    const char *user = getenv("OPENBLAS_CORETYPE");
    const char *marker = getenv(REEXEC_MARKER);
    if (marker) {
        char detected[64] = "";
        int waits = 0;
        sscanf(marker, "%63[^;];%d", detected, &waits);
        if (strcmp(detected, "-") != 0)
            snprintf(g_note, sizeof g_note, "OPENBLAS_CORETYPE=%s chosen by fsrun (OpenBLAS had detected %s)",
                     user ? user : "?", detected);
        else if (user && *user)
            snprintf(g_note, sizeof g_note, "OPENBLAS_CORETYPE=%s set by the environment (kept)", user);
        else
            snprintf(g_note, sizeof g_note, "OpenBLAS detected %s itself", core ? core : "?");
        if (waits) fs_threads_wait_reexecuted();
        unsetenv(REEXEC_MARKER);
        return;
    }
    const char *want = NULL;
    if (user && *user)
        snprintf(g_note, sizeof g_note, "OPENBLAS_CORETYPE=%s set by the environment (kept)", user);
    else if ((want = better_core(core)) == NULL)
        snprintf(g_note, sizeof g_note, "OpenBLAS detected %s itself", core ? core : "?");
    int waits = fs_threads_wait_env(spincount);
    if (!want && !waits) return;
    /* Re-exec once with the variables set; the marker stops a loop. */
    char value[96];
    snprintf(value, sizeof value, "%s;%d", want ? core : "-", waits);
    if (want) setenv("OPENBLAS_CORETYPE", want, 1);
    setenv(REEXEC_MARKER, value, 1);
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc?): carry on with what the process has, say so. */
    unsetenv(REEXEC_MARKER);
    if (want) {
        unsetenv("OPENBLAS_CORETYPE");
        snprintf(g_note, sizeof g_note, "OpenBLAS detected %s; re-exec with OPENBLAS_CORETYPE=%s failed", core, want);
        fprintf(stderr, "fsrun: warning: %s; set OPENBLAS_CORETYPE=%s for fast matmuls\n", g_note, want);
    }
}

const char *fs_blas_corename(void) { return openblas_get_corename(); }
const char *fs_blas_coretype_note(void) { return g_note; }
void fs_blas_set_threads(int n) { openblas_set_num_threads(n); }

/* Inside a parallel region (a plugin's parallel_for) the OpenMP build of
 * OpenBLAS runs the call on the calling thread, so pool threads x BLAS
 * threads stay within the cores. The pthreads build would start its own
 * threads from every pool thread at once: there those calls take turns. */
static pthread_mutex_t g_nested_lock = PTHREAD_MUTEX_INITIALIZER;

void fs_sgemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
              const float *b, size_t ldb, float beta, float *c, size_t ldc) {
    struct timespec t0, t1;
    int nested = omp_in_parallel(), serialise = nested && openblas_get_parallel() == 1;
    if (!nested) fs_threads_adapt();
    if (g_stats_on) clock_gettime(CLOCK_MONOTONIC, &t0);
    if (serialise) pthread_mutex_lock(&g_nested_lock);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)m,
                (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
    if (serialise) pthread_mutex_unlock(&g_nested_lock);
    if (g_stats_on) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double flops = 2.0 * (double)m * (double)n * (double)k;
        double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        /* concurrent calls share the wall clock: each counts its share of it */
        if (nested) sec /= (double)omp_get_num_threads();
#pragma omp atomic
        g_flops += flops;
#pragma omp atomic
        g_seconds += sec;
    }
}

void fs_blas_stats(double *flops, double *seconds) {
    *flops = g_flops;
    *seconds = g_seconds;
}
void fs_blas_stats_reset(void) { g_flops = g_seconds = 0; }
void fs_blas_stats_enable(int on) { g_stats_on = on; }
