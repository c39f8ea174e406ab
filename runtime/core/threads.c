/* threads.c — see threads.h. */
#include "core/threads.h"

#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/blas.h"
#include "core/crash.h"

static int g_threads = 1;     /* in effect */
static int g_asked = 1;       /* fs_threads_set's n: 0 = adaptive */
static int g_cap = 1;         /* the most threads: cores this process may use (/ local ranks) */
static int g_local_ranks = 1;
static char g_wait_note[160] = "OpenMP waits: libgomp's default";

/* ---- wait policy ---- */

static void note_chosen(void) {
    const char *spin = getenv("GOMP_SPINCOUNT");
    snprintf(g_wait_note, sizeof g_wait_note,
             "OpenMP waits: GOMP_SPINCOUNT=%s (spin briefly, then sleep; chosen by fsrun)", spin ? spin : "?");
}

int fs_threads_wait_env(const char *spincount) {
    const char *policy = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    int has_policy = policy && *policy, has_spin = spin && *spin;
    if (has_policy || has_spin) {
        snprintf(g_wait_note, sizeof g_wait_note, "OpenMP waits: %s%s%s%s%s (set by the environment, kept)",
                 has_policy ? "OMP_WAIT_POLICY=" : "", has_policy ? policy : "", has_policy && has_spin ? ", " : "",
                 has_spin ? "GOMP_SPINCOUNT=" : "", has_spin ? spin : "");
        return 0;
    }
    setenv("GOMP_SPINCOUNT", spincount ? spincount : FS_THREADS_SPINCOUNT, 1);
    note_chosen();
    return 1;
}

void fs_threads_wait_reexecuted(void) { note_chosen(); }

const char *fs_threads_wait_note(void) { return g_wait_note; }

/* ---- how busy the cores this process may use are ---- */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double own_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Seconds the CPUs in this process's affinity mask have been busy (user,
 * nice, system, irq, softirq, steal: everything but idle and iowait) since
 * boot, from /proc/stat's per-CPU lines; < 0 where unreadable. */
static double mask_busy_s(void) {
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask) != 0) return -1;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[512];
    unsigned long long busy = 0;
    int seen = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned cpu;
        unsigned long long v[8] = {0};
        if (strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9') continue;
        if (sscanf(line + 3, "%u %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7]) < 5)
            continue;
        if (cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &mask)) continue;
        busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]; /* not v[3] idle, v[4] iowait */
        seen = 1;
    }
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    return seen && hz > 0 ? (double)busy / (double)hz : -1;
}

/* Tasks running or ready to run on the whole machine right now, this one
 * included (/proc/stat procs_running); 0 where unreadable. */
static int procs_running(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "procs_running %d", &n) == 1) break;
    fclose(f);
    return n;
}

static struct {
    double at, busy, own; /* the last look: when, mask_busy_s, own_cpu_s */
    double next;          /* when to look again */
} g_look;

int fs_threads_for_load(int cap, double other) {
    int n = (int)((double)cap - (other > 0 ? other : 0) + 0.3);
    return n < 1 ? 1 : n > cap ? cap : n;
}

static int threads_for(double other) { return fs_threads_for_load(g_cap, other); }

static void apply(int n) {
    if (n == g_threads) return;
    g_threads = n;
    omp_set_num_threads(n);
    fs_blas_set_threads(n);
}

/* ---- the count ---- */

void fs_threads_share(int ranks) { g_local_ranks = ranks > 0 ? ranks : 1; }

void fs_threads_set(int n) {
    int cores = omp_get_num_procs(); /* the cores this process may run on */
    g_asked = n > 0 ? n : 0;
    if (n <= 0 && g_local_ranks > 1) {
        /* Ranks on this machine share its cores, unless the launcher bound
         * each one to its own (then `cores` already counts only those). */
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 && cores < online ? cores : cores / g_local_ranks;
        if (n < 1) n = 1;
    }
    if (n <= 0 || n > cores) n = cores;
    g_cap = n;
    g_threads = 0; /* apply() always sets the pool and BLAS */
    if (g_asked || g_cap == 1) {
        apply(n);
        return;
    }
    /* Adaptive: a first guess from what is running right now (we are one
     * of them), then measurements of CPU time from the next look on. */
    int others = procs_running() - 1;
    apply(threads_for(others > 0 ? others : 0));
    g_look.at = now_s();
    g_look.busy = mask_busy_s();
    g_look.own = own_cpu_s();
    g_look.next = g_look.at + FS_THREADS_CHECK_S;
}

int fs_threads_get(void) { return g_threads; }

int fs_threads_adapt(void) {
    if (g_asked || g_cap == 1 || g_look.busy < 0) return g_threads;
    double t = now_s();
    if (t < g_look.next || omp_in_parallel()) return g_threads;
    double busy = mask_busy_s(), own = own_cpu_s(), dt = t - g_look.at;
    if (busy >= 0 && dt > 0) {
        /* jiffies are 10 ms: over 0.25 s the busy time is known to 4% of a core */
        double other = ((busy - g_look.busy) - (own - g_look.own)) / dt;
        apply(threads_for(other > 0 ? other : 0));
    }
    g_look.at = t;
    g_look.busy = busy;
    g_look.own = own;
    g_look.next = t + FS_THREADS_CHECK_S;
    return g_threads;
}

void fs_parallel_for(size_t n, size_t grain, fs_parallel_fn fn, void *arg) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    int threads = omp_in_parallel() ? 1 : fs_threads_adapt();
    size_t chunks = (n + grain - 1) / grain;
    if (chunks > (size_t)threads * 4) chunks = (size_t)threads * 4;
    if (chunks <= 1 || threads == 1) {
        fn(arg, 0, n);
        return;
    }
    const fs_call *caller = fs_crash_current(); /* a plugin's body on a worker: the plugin's call */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (size_t c = 0; c < chunks; c++) {
        size_t b = n * c / chunks, e = n * (c + 1) / chunks;
        const fs_call *outer = fs_crash_set(caller);
        if (b < e) fn(arg, b, e);
        fs_crash_set(outer);
    }
}
