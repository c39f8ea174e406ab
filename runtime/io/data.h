/* data.h — text to tokens and tokens to training batches.
 *
 * The tokenizer is byte-level (vocab 256): token i is byte i, so any file
 * is valid input and decoding is exact. A dataset is a whole file of
 * tokens; training draws windows of T + 1 tokens at random positions (from
 * the run's RNG, so a resumed run draws the same ones), evaluation walks
 * consecutive windows. */
#ifndef FS_DATA_H
#define FS_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/plugin.h"
#include "core/rng.h"

typedef struct fs_dataset {
    char *path;
    int32_t *tokens;
    size_t n;
} fs_dataset;

/* `where` names the graph key that gave the path, for the error message. */
int fs_dataset_load(fs_dataset *d, const char *path, const char *where, size_t min_tokens, fs_error *err);
void fs_dataset_release(fs_dataset *d);

/* Byte-level tokenizer. */
size_t fs_tokenize(int32_t *out, const char *text, size_t len);
/* Writes the bytes of tokens to out (tokens >= 256 become '?'), NUL-terminated;
 * returns how many bytes. */
size_t fs_detokenize(char *out, const int32_t *tokens, size_t n);

/* B random windows: inputs (B,T) and targets (B,T) = inputs shifted by one. */
void fs_dataset_sample(const fs_dataset *d, fs_rng *rng, int32_t *inputs, int32_t *targets, size_t B, size_t T);
/* Window b of the consecutive split: tokens [b*T, b*T+T) and targets
 * [b*T+1, b*T+T]; number of whole windows. */
size_t fs_dataset_windows(const fs_dataset *d, size_t T);
void fs_dataset_window(const fs_dataset *d, size_t b, int32_t *inputs, int32_t *targets, size_t T);

#endif
