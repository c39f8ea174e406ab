/* blas.h — every matmul goes through here, to OpenBLAS's cblas_sgemm.
 *
 * Debian 12's OpenBLAS 0.3.21 detects some AVX-512 CPUs as "Prescott" and
 * then runs its SSE3 kernels at a tenth of the machine's speed. OpenBLAS
 * reads OPENBLAS_CORETYPE once, when it is loaded, so setting it later in
 * the process does nothing. fs_blas_fix_coretype() therefore checks, first
 * thing in main(), whether the loaded library picked a core older than the
 * CPU's features allow and, if so, re-executes fsrun once with
 * OPENBLAS_CORETYPE set to the best safe kernel set (SKYLAKEX on Intel
 * AVX-512, HASWELL on any AVX2+FMA CPU). A value the user set is never
 * overridden. The same re-exec sets the OpenMP wait policy
 * (fs_threads_wait_env, core/threads.h), which libgomp also reads only when
 * it loads: fsrun re-executes itself at most once, for both. Re-exec was
 * chosen over dlopen-ing the BLAS late because it
 * keeps a plain link against the system library, so every tool (ldd,
 * valgrind, gdb) sees the normal binary. */
#ifndef FS_BLAS_H
#define FS_BLAS_H

#include <stddef.h>

/* May not return (exec). Call before any other work. Also sets the OpenMP
 * wait policy (core/threads.h): GOMP_SPINCOUNT = spincount, NULL for
 * fsrun's default. */
void fs_blas_fix_coretype(char **argv, const char *spincount);
/* The kernel set OpenBLAS runs ("Haswell", "SkylakeX", ...). */
const char *fs_blas_corename(void);
/* Why the core type is what it is, one line for --version / logs. */
const char *fs_blas_coretype_note(void);
void fs_blas_set_threads(int n);

/* Row-major C = alpha * op(A) op(B) + beta * C, op(A) (m, k), op(B) (k, n).
 * Callable from inside an OpenMP parallel region: it then runs on the
 * calling thread. */
void fs_sgemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
              const float *b, size_t ldb, float beta, float *c, size_t ldc);

/* Matmul accounting for the benchmark: flops issued and seconds spent. */
void fs_blas_stats(double *flops, double *seconds);
void fs_blas_stats_reset(void);
void fs_blas_stats_enable(int on);

#endif
