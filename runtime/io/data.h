/* data.h — text to training batches.
 *
 * A dataset is a whole text file turned into tokens by the graph's
 * tokenizer (tokenizer.h): byte-level, token i is byte i, so any file is
 * valid input; or BPE, whose tokens are cached beside the file and
 * memory-mapped by later runs (token_cache.h). Training draws windows of
 * T + 1 tokens at random positions (from the run's RNG, so a resumed run
 * draws the same ones), evaluation walks consecutive windows. */
#ifndef FS_DATA_H
#define FS_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/plugin.h"
#include "core/rng.h"
#include "io/token_cache.h"
#include "io/tokenizer.h"

typedef struct fs_dataset {
    char *path;
    const int32_t *tokens;
    size_t n;
    fs_token_file file; /* where the tokens live */
} fs_dataset;

/* `where` names the graph key that gave the path, for the error message.
 * use_cache: keep BPE tokens in a cache file beside the text (the byte
 * tokenizer never needs one); write_cache: this process may write it (under
 * mpirun only rank 0 does). */
int fs_dataset_load(fs_dataset *d, const char *path, const char *where, size_t min_tokens, fs_tokenizer *tok,
                    int use_cache, int write_cache, fs_error *err);
void fs_dataset_release(fs_dataset *d);


/* B random windows: inputs (B,T) and targets (B,T) = inputs shifted by one. */
void fs_dataset_sample(const fs_dataset *d, fs_rng *rng, int32_t *inputs, int32_t *targets, size_t B, size_t T);
/* Window b of the consecutive split: tokens [b*T, b*T+T) and targets
 * [b*T+1, b*T+T]; number of whole windows. */
size_t fs_dataset_windows(const fs_dataset *d, size_t T);
void fs_dataset_window(const fs_dataset *d, size_t b, int32_t *inputs, int32_t *targets, size_t T);

#endif
