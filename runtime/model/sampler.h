/* sampler.h — picking the next token from logits: greedy, or temperature
 * with top-k and top-p (nucleus) truncation. */
#ifndef FS_SAMPLER_H
#define FS_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

/* Sampling parameters ([generate], or a request's). */
typedef struct fs_sampler {
    double temperature; /* 0 = greedy */
    size_t top_k;       /* 0 = off */
    double top_p;       /* 1 = off */
    uint64_t seed;
} fs_sampler;

/* Picks a token from logits (V) with temperature, top-k and top-p; work is
 * 2 V floats of scratch. rng_state is an fs_rng's four words. Greedy
 * (temperature 0) draws nothing. */
int32_t fs_sample_token(const float *logits, size_t V, const fs_sampler *sp, uint64_t *rng_state, float *work);

#endif
