/* bias.h — the bias of a matmul on its own: its gradient, the column sums
 * of the output's gradient (ops.c's matmul_backward does the same for
 * contiguous rows; the backends need any row stride). */
#ifndef FS_BIAS_H
#define FS_BIAS_H

#include <stddef.h>

// dbias (OC) += column sums of dout (N, OC), rows ldd elements apart
void bias_backward(float *dbias, const float *dout, size_t N, size_t OC, size_t ldd);

#endif
