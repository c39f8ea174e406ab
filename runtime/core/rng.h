/* rng.h — a small, fast, reproducible generator (xoshiro256**, seeded by
 * splitmix64). Its whole state is four words, saved in checkpoints so a
 * resumed run draws the same numbers as an uninterrupted one. */
#ifndef FS_RNG_H
#define FS_RNG_H

#include <stdint.h>

typedef struct fs_rng {
    uint64_t s[4];
} fs_rng;

void fs_rng_seed(fs_rng *r, uint64_t seed);
uint64_t fs_rng_u64(fs_rng *r);
/* uniform in [0, 1) with 24 random bits */
float fs_rng_float(fs_rng *r);
/* uniform integer in [0, n) without modulo bias */
uint64_t fs_rng_below(fs_rng *r, uint64_t n);
/* A seed for stream `i` derived from `seed` (splitmix64 of both): the
 * rows of one request, or the samples of one window, each get their own. */
uint64_t fs_rng_mix(uint64_t seed, uint64_t i);
/* standard normal (Box-Muller) */
float fs_rng_normal(fs_rng *r);

#endif
