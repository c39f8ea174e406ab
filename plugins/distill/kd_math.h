/* kd_math.h — what every distillation loss over logits needs: a stable
 * log-sum-exp at a temperature, and the check that labels index the
 * vocabulary. Header-only, shared by soft_kd, distilbert and tinybert. */
#ifndef FS_KD_MATH_H
#define FS_KD_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* log sum_i exp(z_i / T) over V entries, inv_t = 1 / T, in double */
static inline double kd_lse(const float *z, size_t V, double inv_t) {
    double mx = z[0] * inv_t;
    for (size_t i = 1; i < V; i++) mx = z[i] * inv_t > mx ? z[i] * inv_t : mx;
    double sum = 0.0;
    for (size_t i = 0; i < V; i++) sum += exp(z[i] * inv_t - mx);
    return mx + log(sum);
}

/* The first position whose label is outside [0, V), or N when all are in. */
static inline size_t kd_bad_label(const int32_t *labels, size_t N, size_t V) {
    for (size_t n = 0; n < N; n++)
        if (labels[n] < 0 || (size_t)labels[n] >= V) return n;
    return N;
}

#endif
