/* sample.h — one token from one row of logits: greedy, or temperature
 * softmax with top-k and top-p (nucleus) truncation and a uniform draw the
 * caller makes (model/sampler.c from the sequence's generator; the
 * backends' sample op from its parameters). */
#ifndef FS_SAMPLE_H
#define FS_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

// temperature <= 0: the first maximum (u unused). Otherwise probabilities
// softmax(logits / temperature) sorted descending (ties by id), the first
// top_k of them (0: all), then the shortest prefix reaching top_p (1: all),
// and the token where u * (kept mass) falls in the cumulative sum.
// work: 2 V floats of scratch.
int32_t sample_forward(const float *logits, size_t V, double temperature, size_t top_k, double top_p, float u,
                       float *work);

#endif
