/* update.c — see update.h. */
#include "compute/update.h"

#include <math.h>

#include "compute/ops.h"

void adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, float grad_scale, uint64_t t) {
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for schedule(static) if (n >= FS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi / bc1, vhat = vi / bc2;
        param[i] = param[i] * decay - lr * mhat / (sqrtf(vhat) + eps);
    }
}

double sumsq_forward(const float *x, size_t n) {
    double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (n >= FS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return sum;
}

void scale_inplace(float *x, float s, size_t n) {
#pragma omp parallel for schedule(static) if (n >= FS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}
