/* fastserve/fastmath.h — small numeric helpers for kernels, header-only.
 *
 * glibc's expf/tanhf are calls the compiler cannot vectorise; in softmax
 * and GELU loops they were a third of a training step. These inline
 * versions vectorise and are accurate to a few ulp, which is what kernels
 * in fsrun and in plugins use. The clamp in fs_fast_expf is two float
 * comparisons, which GCC turns into vector selects only when told that
 * nothing traps on floating point: build kernels that call these with
 * -fno-trapping-math (fsrun's Release flags), or a loop over them stays
 * scalar. */
#ifndef FASTSERVE_FASTMATH_H
#define FASTSERVE_FASTMATH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* e^x, relative error below 2e-7. Cody-Waite range reduction to
 * r in [-ln2/2, ln2/2], Cephes' polynomial, 2^n through the exponent bits.
 * Arguments are clamped to [-87.3, 88.7]: below that the result is about
 * 1e-38 rather than 0, above it about 3e38 rather than inf. */
static inline float fs_fast_expf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    /* round to nearest by the 1.5 * 2^23 trick: roundf() is a libm call */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.0f + r + r * r * (5.0000001201e-1f + r * (1.6666665459e-1f + r * (4.1665795894e-2f +
                                 r * (8.3334519073e-3f + r * (1.3981999507e-3f + r * 1.9875691500e-4f)))));
    /* the biased exponent, 1..255 after the clamp; a NaN argument (a
     * diverged model's) makes it 0, so its conversion and shift stay defined
     * (UBSan stops at the ones of a NaN) and the NaN comes back through p */
    float e = n + 127.0f;
    union {
        float f;
        int32_t i;
    } u;
    u.i = (int32_t)(e >= 0.0f ? e : 0.0f) << 23;
    return p * u.f;
}

/* tanh(u) = 1 - 2 / (1 + e^(2u)); absolute error below 2e-7, exact limits. */
static inline float fs_fast_tanhf(float u) { return 1.0f - 2.0f / (1.0f + fs_fast_expf(2.0f * u)); }

#ifdef __cplusplus
}
#endif
#endif
