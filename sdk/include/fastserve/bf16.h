/* fastserve/bf16.h — bf16 and element access for kernels, host and device.
 *
 * Tensors of FS_DTYPE_BF16 hold bfloat16 bit patterns (the upper half of
 * an IEEE f32). These helpers round f32 to bf16 to nearest, ties to even
 * (exactly as CUDA's __float2bfloat16_rn), widen it back, and read or
 * write element i of an F32 or BF16 array as f32, so one kernel body
 * serves both types. They compile as plain C and, under nvcc, as
 * __host__ __device__ functions: CPU tests can run a device kernel's
 * arithmetic. */
#ifndef FASTSERVE_BF16_H
#define FASTSERVE_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fastserve/tensor.h"

#if defined(__CUDACC__)
#define FS_HOST_DEVICE static __host__ __device__ __forceinline__
#else
#define FS_HOST_DEVICE static inline
#endif

typedef uint16_t fs_bf16;

FS_HOST_DEVICE uint32_t fs_f32_bits(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(x);
#else
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

FS_HOST_DEVICE float fs_bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

/* Round to nearest, ties to even; NaN stays a (quiet) NaN. */
FS_HOST_DEVICE fs_bf16 fs_bf16_from_f32(float x) {
    uint32_t u = fs_f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (fs_bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (fs_bf16)(u >> 16);
}

FS_HOST_DEVICE float fs_bf16_to_f32(fs_bf16 h) { return fs_bits_f32((uint32_t)h << 16); }

/* Element i of an F32 or BF16 array, as f32; and back. */
FS_HOST_DEVICE float fs_load(const void *p, size_t i, int dtype) {
    return dtype == FS_DTYPE_BF16 ? fs_bf16_to_f32(((const fs_bf16 *)p)[i]) : ((const float *)p)[i];
}

FS_HOST_DEVICE void fs_store(void *p, size_t i, int dtype, float x) {
    if (dtype == FS_DTYPE_BF16)
        ((fs_bf16 *)p)[i] = fs_bf16_from_f32(x);
    else
        ((float *)p)[i] = x;
}

/* Bytes of one element of an F32 or BF16 array. */
FS_HOST_DEVICE size_t fs_dtype_bytes(int dtype) { return dtype == FS_DTYPE_BF16 ? 2 : 4; }

#endif
