/* threads.h — the process's compute threads: one OpenMP pool that fsrun's
 * loops and OpenBLAS share (never both at once), and the parallel_for the
 * host API hands plugins. */
#ifndef FS_THREADS_H
#define FS_THREADS_H

#include <stddef.h>

#include "fastserve/plugin.h"

/* Threads: the pool and BLAS share the cores (never both at once). */
void fs_threads_set(int n); /* 0 = all cores (shared by the ranks on this machine, see below) */
/* `ranks` processes of the run share this machine: threads = 0 then means
 * cores / ranks, at least 1. Call before fs_threads_set. */
void fs_threads_share(int ranks);
int fs_threads_get(void);
void fs_parallel_for(size_t n, size_t grain, fs_parallel_fn fn, void *arg);

#endif
