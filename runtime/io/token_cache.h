/* token_cache.h — a corpus tokenized once: the tokens of a text file under
 * a tokenizer, kept in a file beside it and memory-mapped by later runs.
 *
 * The cache of TEXT is TEXT.<kind>-<identity>.tokens (identity: the
 * tokenizer's fingerprint, tokenizer.h). It starts with a 64-byte header:
 *
 *   "FSTOKENS"  u32 version (1)  u32 bytes per token (4)
 *   u64 tokenizer identity  u64 text size  u64 text fingerprint
 *   u64 token count  16 bytes zero
 *
 * then the tokens, int32 little-endian. A cache whose header does not
 * match the text as it is now (size or fingerprint; the fingerprint is a
 * hash of the whole text, so an edit of the same size is caught) or the
 * tokenizer is stale: the text is tokenized again and the cache rewritten
 * (atomically). A directory that cannot be written only costs the reuse:
 * the tokens are then kept in memory, with a warning. */
#ifndef FS_TOKEN_CACHE_H
#define FS_TOKEN_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "io/tokenizer.h"

typedef struct fs_token_file {
    const int32_t *tokens;
    size_t n;
    size_t text_bytes;
    int from_cache;   /* 1: mapped from an existing cache; 0: tokenized now */
    char *cache_path; /* the cache file (written now or read), NULL when not cached */
    double seconds;   /* spent tokenizing (0 when read from the cache) */
    void *map;        /* the mapping, or NULL */
    size_t map_len;
    int32_t *owned;   /* tokens in memory, or NULL */
} fs_token_file;

/* Tokens of the text `text` (len bytes, the contents of `path`). use_cache
 * 0: tokenize in memory, touching no file. write_cache 0: read a cache but
 * never write one (ranks other than 0). */
int fs_token_file_load(fs_token_file *f, const char *path, const char *text, size_t len, fs_tokenizer *t,
                       int use_cache, int write_cache, fs_error *err);
void fs_token_file_release(fs_token_file *f);

#endif
