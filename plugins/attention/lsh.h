/* lsh.h — private to the lsh attention plugin: the instance, the layout of
 * its saved state, and the hashing the tests check against. Nothing here is
 * part of the SDK. */
#ifndef FS_LSH_H
#define FS_LSH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fastserve/attention.h"
#include "fastserve/fastmath.h"

/* Added to |q|^2 before the square root: k = q / sqrt(|q|^2 + LSH_EPS). */
#define LSH_EPS 1e-12f
/* The score of a token against itself (the reference implementations' value). */
#define LSH_SELF_SCORE (-1e5f)

typedef struct lsh_plugin {
    const fs_host_api *host;
    fs_attention_config cfg;
    size_t n_hashes;  /* rounds */
    size_t n_buckets; /* even, >= 2 */
    size_t chunk;     /* tokens per chunk of the sorted order */
    size_t lookback;  /* earlier chunks each chunk also sees */
    size_t lookahead; /* later chunks each chunk also sees (useful when bidirectional) */
    size_t decode_window; /* generation: the most recent tokens always seen */
    float scale;      /* 1 / sqrt(D) */
    size_t kv_es;     /* bytes of a key or value element in paged blocks: 4 (f32) or 2 (bf16) */
    /* (n_hashes, D, n_buckets / 2): a registered parameter (weight decay 0,
     * gradient always 0) so checkpoints carry it; drawn from host->seed. */
    float *rot;
    float *scratch; /* grow-only work memory */
    size_t scratch_bytes;
    struct lsh_cuda *cuda; /* the instance is on a CUDA device (cuda/lsh_cuda.c) */
} lsh_plugin;

/* Saved state of one forward, per (b, h), each array 64-byte aligned:
 *   bucket (n_hashes, T) int32: bucket of each token in each round
 *   order  (n_hashes, T) int32: tokens sorted by (bucket, position)
 *   where  (n_hashes, T) int32: inverse of order (sorted slot of a token)
 *   lse    (T) float: log-sum-exp of each query's scores */
typedef struct lsh_saved_layout {
    size_t per_bh; /* bytes per (b, h) */
    size_t bucket, order, where, lse; /* byte offsets inside one (b, h) block */
} lsh_saved_layout;

static inline size_t lsh_align64(size_t x) {
    return (x + 63) & ~(size_t)63;
}

static inline void lsh_saved_layout_for(size_t n_hashes, size_t T, lsh_saved_layout *l) {
    size_t ints = lsh_align64(n_hashes * T * sizeof(int32_t));
    l->bucket = 0;
    l->order = ints;
    l->where = 2 * ints;
    l->lse = 3 * ints;
    l->per_bh = 3 * ints + lsh_align64(T * sizeof(float));
}

/* Standard normal draws from a 64-bit seed (splitmix64 + Box-Muller): the
 * rotations are a deterministic function of host->seed. */
static inline uint64_t lsh_splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void lsh_fill_rotations(float *rot, size_t n, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i += 2) {
        double u1 = ((double)(lsh_splitmix(&s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        double u2 = (double)(lsh_splitmix(&s) >> 11) * (1.0 / 9007199254740992.0);
        double r = sqrt(-2.0 * log(u1)), a = 6.283185307179586 * u2;
        rot[i] = (float)(r * cos(a));
        if (i + 1 < n) rot[i + 1] = (float)(r * sin(a));
    }
}

/* bucket = argmax over [p; -p] of the projection p (half values): index c
 * for +p[c], half + c for -p[c]; the first maximum wins. */
static inline int32_t lsh_argmax_bucket(const float *p, size_t half) {
    size_t best = 0;
    float bv = p[0];
    for (size_t c = 1; c < half; c++)
        if (p[c] > bv) bv = p[c], best = c;
    for (size_t c = 0; c < half; c++)
        if (-p[c] > bv) bv = -p[c], best = half + c;
    return (int32_t)best;
}

#if FS_CUDA_KERNELS
/* cuda/lsh_cuda.c: training on a CUDA device (f32); create fills the
 * registered rotations (n_rot floats, device memory) from `seed`. */
int lsh_cuda_create(lsh_plugin *l, size_t n_rot, uint64_t seed, fs_error *err);
void lsh_cuda_destroy(lsh_plugin *l);
int lsh_cuda_forward(lsh_plugin *l, const fs_attention_args *a, fs_error *err);
int lsh_cuda_backward(lsh_plugin *l, const fs_attention_args *a, fs_error *err);
#define LSH_DEVICES FS_ATTENTION_CUDA
#else
#define LSH_DEVICES 0u
#endif

#endif
