/* bias.c — see bias.h. */
#include "compute/bias.h"

#include "compute/ops.h"

void bias_backward(float *dbias, const float *dout, size_t N, size_t OC, size_t ldd) {
    /* parallel over blocks of columns: each thread owns its sums */
#pragma omp parallel for schedule(static) if (N * OC >= FS_PARALLEL_MIN)
    for (size_t o0 = 0; o0 < OC; o0 += 64) {
        size_t o1 = o0 + 64 < OC ? o0 + 64 : OC;
        for (size_t n = 0; n < N; n++) {
            const float *d = dout + n * ldd;
            for (size_t o = o0; o < o1; o++) dbias[o] += d[o];
        }
    }
}
