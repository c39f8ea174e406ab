/* seq.h — decoding state over shared weights: what one generation request
 * owns.
 *
 * The model's weights are read-only while generating; everything a
 * sequence changes lives here: each layer's KV cache (laid out by the
 * layer's attention plugin), the next position, decode buffers and the
 * sampler with its random state. So any number of sequences decode over
 * one fs_model, each at its own position, and a server can keep a model
 * loaded across requests.
 *
 * A sequence may hold B rows that advance in lockstep (the same position
 * for all, as the attention ABI's decode step takes them): a teacher
 * sampling several continuations of one batch does that. A request is
 * B = 1. */
#ifndef FS_SEQ_H
#define FS_SEQ_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "model/sampler.h"

typedef struct fs_seq fs_seq;

typedef struct fs_seq_config {
    size_t B;          /* rows decoded in lockstep (0 = 1) */
    size_t context;    /* positions the caches hold; 0 = the plugins' bounded size when every layer's cache is
                          bounded (fs_model_cache_bounded), else max_seq */
    int threads;       /* compute threads for this sequence's steps (0 = the calling thread's count) */
    fs_sampler sampler; /* how fs_seq_sample picks tokens; row r's RNG starts from seed (r = 0) or a hash of
                           (seed, r) */
    int weights;        /* FS_WEIGHTS_* (compute/qweights.h): the format the projections are read in ([generate]
                           weights); 0 = f32, the model's own weights, not copied */
} fs_seq_config;

/* The caches of every layer's attention plugin for cfg->B rows (the model
 * must be whole: no tensor or pipeline split; every plugin must decode). */
int fs_seq_create(fs_seq **out, const fs_model *m, const fs_seq_config *cfg, fs_error *err);
void fs_seq_destroy(fs_seq *s); /* accepts NULL */

const fs_model *fs_seq_model(const fs_seq *s);
size_t fs_seq_rows(const fs_seq *s);
/* Tokens decoded so far: the position of the next one. */
size_t fs_seq_pos(const fs_seq *s);
/* Positions the caches hold (SIZE_MAX when bounded: the sequence streams on). */
size_t fs_seq_context(const fs_seq *s);
/* Bytes of all layers' caches. */
size_t fs_seq_cache_bytes(const fs_seq *s);
/* Restarts row r's random state from `seed` (the rows of a teacher's
 * samples each follow their own stream). */
void fs_seq_seed_row(fs_seq *s, size_t r, uint64_t seed);

/* One step: tokens (B) at the next position -> logits (B,V); the position
 * then advances. Fails (and changes nothing) past the context of an
 * unbounded cache. */
int fs_seq_decode(fs_seq *s, const int32_t *tokens, float *logits, fs_error *err);
/* Samples row r's next token from its logits (V) with the sequence's
 * sampler and row r's random state. */
int32_t fs_seq_sample(fs_seq *s, size_t r, const float *logits);

#endif
