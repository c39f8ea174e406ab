/* simd.h — the vector type the decoding kernels are written in: GCC's
 * vector extensions at the widest float width the build targets (16
 * floats with AVX-512, 8 with AVX, 4 otherwise), so one source serves
 * every x86 build and the compiler picks the instructions. Private to
 * runtime/compute. */
#ifndef FS_SIMD_H
#define FS_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define FS_VW 16
#elif defined(__AVX__)
#define FS_VW 8
#else
#define FS_VW 4
#endif

typedef float fs_vf __attribute__((vector_size(FS_VW * sizeof(float))));
typedef uint32_t fs_vu __attribute__((vector_size(FS_VW * sizeof(uint32_t))));
typedef uint16_t fs_vh __attribute__((vector_size(FS_VW * sizeof(uint16_t))));

static inline fs_vf fs_vf_zero(void) { return (fs_vf){0}; }

/* Unaligned loads: memcpy of a vector's size compiles to one load. */
static inline fs_vf fs_vf_load(const float *p) {
    fs_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* FS_VW bf16 values widened to float: bf16 is the top half of an f32. */
static inline fs_vf fs_vf_load_bf16(const uint16_t *p) {
    fs_vh h;
    memcpy(&h, p, sizeof h);
    fs_vu u = __builtin_convertvector(h, fs_vu) << 16;
    fs_vf v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static inline float fs_vf_sum(fs_vf v) {
    float s = 0.0f;
    for (int i = 0; i < FS_VW; i++) s += v[i];
    return s;
}

#endif
