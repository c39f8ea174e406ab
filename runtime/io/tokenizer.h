/* tokenizer.h — text to token ids and back, chosen in the graph:
 *
 *   [model] tokenizer = byte        token i is byte i (256 tokens): any file is valid
 *                                   input and decoding is exact
 *   [model] tokenizer = bpe:PATH    GPT-2's byte-level BPE (tokenizer_bpe.c): PATH is a
 *                                   Hugging Face tokenizer.json, a directory holding one
 *                                   (or GPT-2's vocab.json and merges.txt), or a prefix
 *                                   P with P-vocab.json and P-merges.txt
 *
 * A token always stands for bytes (tokens are not characters: a BPE token
 * may end inside a UTF-8 character; utf8.h turns the bytes into text).
 * The identity is a fingerprint of everything that decides the encoding
 * (vocabulary, merges, options): token caches are keyed by it. */
#ifndef FS_TOKENIZER_H
#define FS_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/plugin.h"

typedef struct fs_tokens {
    int32_t *ids;
    size_t n, cap;
} fs_tokens;

int fs_tokens_push(fs_tokens *t, int32_t id);
void fs_tokens_release(fs_tokens *t);

typedef struct fs_tokenizer fs_tokenizer;

/* Checks the syntax of a [model] tokenizer value (`where` names the key
 * for the message) without reading any file. */
int fs_tokenizer_spec_check(const char *spec, const char *where, fs_error *err);
/* Opens the tokenizer `spec` names; file errors name `where` and PATH. */
int fs_tokenizer_open(fs_tokenizer **out, const char *spec, const char *where, fs_error *err);
void fs_tokenizer_destroy(fs_tokenizer *t); /* accepts NULL */

const char *fs_tokenizer_kind(const fs_tokenizer *t); /* "byte" or "bpe" */
/* Ids are < vocab_size (the model needs at least that many rows). */
size_t fs_tokenizer_vocab_size(const fs_tokenizer *t);
uint64_t fs_tokenizer_identity(const fs_tokenizer *t);
/* The id of the end-of-text token (GPT-2's <|endoftext|>), or -1. */
int32_t fs_tokenizer_eos(const fs_tokenizer *t);

/* Appends the tokens of len bytes of text to out. Not thread-safe (BPE
 * keeps a cache of the words it has seen). */
int fs_tokenizer_encode(fs_tokenizer *t, const char *text, size_t len, fs_tokens *out, fs_error *err);
/* The bytes token `id` stands for (len in *len), or NULL outside the
 * vocabulary. */
const char *fs_tokenizer_token(const fs_tokenizer *t, int32_t id, size_t *len);
/* The bytes of n tokens, malloc'ed and NUL-terminated (*len without the
 * NUL); ids outside the vocabulary become '?'. */
int fs_tokenizer_decode(const fs_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len,
                        fs_error *err);

/* Writes Hugging Face's tokenizer.json for it (atomically);
 * FS_ERR_UNSUPPORTED for the byte tokenizer, which has no such file. */
int fs_tokenizer_save(const fs_tokenizer *t, const char *path, fs_error *err);

#endif
