/* tokenizer_bpe.h — GPT-2's byte-level BPE (io-internal; the rest of the
 * runtime uses tokenizer.h).
 *
 * Encoding, as the tokenizers package (PyPI) does it for GPT-2: added
 * tokens (<|endoftext|>) are cut out of the text first; every other span
 * is split by GPT-2's pre-tokenisation pattern
 *
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *
 * (implemented by hand over unicode_classes.h); each piece's bytes start as
 * one symbol per byte, and the adjacent pair of lowest merge rank is merged
 * until none is left (ties: the leftmost). Bytes that are not UTF-8 are
 * pieces of the "other" class, so any file encodes. Files use GPT-2's
 * bytes-to-unicode map: byte b is written as the printable character
 * fs_bpe_byte_char(b). */
#ifndef FS_TOKENIZER_BPE_H
#define FS_TOKENIZER_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "io/tokenizer.h"

typedef struct fs_bpe fs_bpe;

/* PATH as in tokenizer.h's bpe:PATH. */
int fs_bpe_load(fs_bpe **out, const char *path, fs_error *err);
/* A tokenizer from learned merges (bpe_train.c): ids 0..255 are the bytes in
 * GPT-2's order (fs_bpe_byte_id), merge i (pairs[2i], pairs[2i+1]) makes id
 * 256 + i, then the special tokens. */
int fs_bpe_build(fs_bpe **out, const uint32_t *pairs, size_t n_merges, const char *const *specials, size_t n_specials,
                 fs_error *err);
void fs_bpe_destroy(fs_bpe *b);

size_t fs_bpe_vocab_size(const fs_bpe *b);
uint64_t fs_bpe_identity(const fs_bpe *b);
int32_t fs_bpe_eos(const fs_bpe *b);
int fs_bpe_encode(fs_bpe *b, const char *text, size_t len, fs_tokens *out, fs_error *err);
const char *fs_bpe_token(const fs_bpe *b, int32_t id, size_t *len);
int fs_bpe_save(const fs_bpe *b, const char *path, fs_error *err);

/* A tokenizer.h handle for b (owned by it from then on, also on failure). */
int fs_tokenizer_wrap_bpe(fs_tokenizer **out, fs_bpe *b, fs_error *err);

/* GPT-2's bytes-to-unicode map: the code point that stands for byte b. */
uint32_t fs_bpe_byte_char(unsigned b);
/* The id byte b has in a tokenizer from fs_bpe_build (GPT-2's order: the
 * 256 characters sorted by code point). */
uint32_t fs_bpe_byte_id(unsigned b);

/* The end of the pre-token that starts at byte i of s (n bytes). */
size_t fs_bpe_pretoken_end(const char *s, size_t n, size_t i);

#endif
