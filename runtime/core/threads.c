/* threads.c — see threads.h. */
#include "core/threads.h"

#include <omp.h>
#include <unistd.h>

#include "compute/blas.h"

static int g_threads = 1;
static int g_local_ranks = 1;

void fs_threads_share(int ranks) { g_local_ranks = ranks > 0 ? ranks : 1; }

void fs_threads_set(int n) {
    int cores = omp_get_num_procs(); /* the cores this process may run on */
    if (n <= 0 && g_local_ranks > 1) {
        /* Ranks on this machine share its cores, unless the launcher bound
         * each one to its own (then `cores` already counts only those). */
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 && cores < online ? cores : cores / g_local_ranks;
        if (n < 1) n = 1;
    }
    if (n <= 0 || n > cores) n = cores;
    g_threads = n;
    omp_set_num_threads(n);
    fs_blas_set_threads(n);
}

int fs_threads_get(void) { return g_threads; }

void fs_parallel_for(size_t n, size_t grain, fs_parallel_fn fn, void *arg) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    size_t chunks = (n + grain - 1) / grain;
    if (chunks > (size_t)g_threads * 4) chunks = (size_t)g_threads * 4;
    if (chunks <= 1 || g_threads == 1) {
        fn(arg, 0, n);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t c = 0; c < chunks; c++) {
        size_t b = n * c / chunks, e = n * (c + 1) / chunks;
        if (b < e) fn(arg, b, e);
    }
}

