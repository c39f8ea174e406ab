/* bpe_train.h — learning a byte-level BPE tokenizer from text
 * (fsrun --mode train-tokenizer). */
#ifndef FS_BPE_TRAIN_H
#define FS_BPE_TRAIN_H

#include <stddef.h>

#include "io/tokenizer.h"

/* Learns merges from len bytes of text until the vocabulary has vocab_size
 * tokens (the 256 bytes, the merges, then the special tokens, which are cut
 * out of the text and never merged), or until the most frequent pair occurs
 * fewer than min_count times. Deterministic: ties go to the pair of
 * smaller ids. */
int fs_bpe_train(fs_tokenizer **out, const char *text, size_t len, size_t vocab_size, const char *const *specials,
                 size_t n_specials, size_t min_count, fs_error *err);

#endif
