/* update.h — the optimizer's kernels: AdamW, sums of squares for the global
 * gradient norm, scaling. All f32, OpenMP loops; the optimizer
 * (model/optim.c) and the cpu backend call them. */
#ifndef FS_UPDATE_H
#define FS_UPDATE_H

#include <stddef.h>
#include <stdint.h>

// One AdamW update of n elements (t is 1-based); the gradient is multiplied
// by grad_scale first (1: as is; the clipping factor otherwise).
void adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, float grad_scale, uint64_t t);

// sum of x[i]^2 over n elements, in double
double sumsq_forward(const float *x, size_t n);

// x *= s, n elements
void scale_inplace(float *x, float s, size_t n);

#endif
