/* threads.h — the process's compute threads: one OpenMP pool that fsrun's
 * loops and OpenBLAS share (never both at once), and the parallel_for the
 * host API hands plugins.
 *
 * Two things keep it fast on a machine other work shares:
 *  - the thread count adapts (threads = 0, the default): all the cores this
 *    process may use while they are free, fewer while other processes keep
 *    some busy, measured from /proc/stat against this process's own CPU
 *    time every FS_THREADS_CHECK_S. A parallel region waits for its slowest
 *    thread, and a thread that shares its core with another process is the
 *    slowest by a time slice: one thread on a free core beats two where one
 *    core is taken.
 *  - waits are bounded: an OpenMP thread that finds no work spins for a
 *    short while (GOMP_SPINCOUNT, about 0.1-0.5 ms) and then sleeps,
 *    instead of libgomp's default of spinning up to ~3 ms, which on a busy
 *    machine burns the time slice its descheduled peer needs. libgomp reads
 *    the variable once, when it loads: fs_threads_wait_env() sets it and
 *    fs_blas_fix_coretype() re-executes fsrun with it (compute/blas.h). */
#ifndef FS_THREADS_H
#define FS_THREADS_H

#include <stddef.h>

#include "fastserve/plugin.h"

/* GOMP_SPINCOUNT fsrun runs with unless the environment sets a wait policy
 * (OMP_WAIT_POLICY or GOMP_SPINCOUNT) itself; a mode may ask for another
 * (fs_mode.spincount: the server's, whose engine thread starts a parallel
 * region every few hundred microseconds, spins ten times longer: measured
 * in the README's "Serving" section). */
#define FS_THREADS_SPINCOUNT "20000"
#define FS_THREADS_SPINCOUNT_SERVE "200000"
/* How often the adaptive count looks at the machine, seconds. */
#define FS_THREADS_CHECK_S 0.25

/* Sets GOMP_SPINCOUNT to spincount (NULL: FS_THREADS_SPINCOUNT) in the
 * environment unless a wait policy is set; returns 1 when it changed the
 * environment (the OpenMP runtime, already loaded, only sees it after an
 * exec). */
int fs_threads_wait_env(const char *spincount);
/* In the process fs_threads_wait_env's change re-executed: says so in the note. */
void fs_threads_wait_reexecuted(void);
/* One line on the wait policy in effect, for --version. */
const char *fs_threads_wait_note(void);

/* Threads: the pool and BLAS share the cores (never both at once). n > 0:
 * exactly n (at most the cores); 0: adaptive (see above), at most all cores
 * (shared by the ranks on this machine, see below). */
void fs_threads_set(int n);
/* `ranks` processes of the run share this machine: threads = 0 then means
 * cores / ranks, at least 1. Call before fs_threads_set. */
void fs_threads_share(int ranks);
/* The count in effect now. */
int fs_threads_get(void);
/* Adaptive mode: looks at the machine again if FS_THREADS_CHECK_S have
 * passed (cheap otherwise: one clock read) and applies the new count to the
 * pool and BLAS; returns the count in effect. Called outside parallel
 * regions: by every top-level sgemm and parallel_for, and by kernels that
 * take a thread count. Inside a region it only returns the count. */
int fs_threads_adapt(void);
/* The adaptive rule: threads for `other` cores' worth of other processes'
 * work when at most `cap` may run: the free cores, rounded so that work of
 * a third of a core or less leaves all of them and half a core or more
 * takes one away; at least 1. */
int fs_threads_for_load(int cap, double other);
void fs_parallel_for(size_t n, size_t grain, fs_parallel_fn fn, void *arg);

#endif
