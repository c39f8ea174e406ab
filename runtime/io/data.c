/* data.c — datasets: text files through the tokenizer, and batches. */
#include "io/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/host.h"
#include "io/files.h"

int fs_dataset_load(fs_dataset *d, const char *path, const char *where, size_t min_tokens, fs_tokenizer *tok,
                    int use_cache, int write_cache, fs_error *err) {
    memset(d, 0, sizeof *d);
    struct stat st;
    if (stat(path, &st) != 0)
        return fs_error_set(err, errno == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO, "%s: %s: cannot open data file: %s",
                            where, path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fs_error_set(err, FS_ERR_INVALID, "%s: %s: not a regular file: give a text file", where, path);
    char *text;
    size_t len;
    fs_error ferr = {0};
    int rc = fs_file_read(path, &text, &len, &ferr);
    if (rc) return fs_error_set(err, rc, "%s: %s", where, ferr.message);
    int byte_level = !strcmp(fs_tokenizer_kind(tok), "byte");
    if (len < min_tokens && byte_level) { /* said before tokenizing: a byte is a token */
        free(text);
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: %s: %s (%zu bytes); it needs at least %zu tokens (max_seq + 1) to make one window",
                            where, path, len == 0 ? "the data file is empty" : "the data file is too short", len,
                            min_tokens);
    }
    rc = fs_token_file_load(&d->file, path, text, len, tok, use_cache && !byte_level, write_cache, err);
    free(text);
    if (rc) return rc;
    d->tokens = d->file.tokens;
    d->n = d->file.n;
    if (d->n < min_tokens) {
        fs_error_set(err, FS_ERR_INVALID,
                     "%s: %s: the data file is too short (%zu bytes, %zu tokens); it needs at least %zu tokens "
                     "(max_seq + 1) to make one window",
                     where, path, len, d->n, min_tokens);
        fs_dataset_release(d);
        return FS_ERR_INVALID;
    }
    if (!(d->path = strdup(path))) {
        fs_dataset_release(d);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    return FS_OK;
}

void fs_dataset_release(fs_dataset *d) {
    if (!d) return;
    fs_token_file_release(&d->file);
    free(d->path);
    memset(d, 0, sizeof *d);
}

void fs_dataset_sample(const fs_dataset *d, fs_rng *rng, int32_t *inputs, int32_t *targets, size_t B, size_t T) {
    size_t span = d->n - T; /* start positions with T + 1 tokens after them */
    for (size_t b = 0; b < B; b++) {
        size_t s = (size_t)fs_rng_below(rng, span);
        memcpy(inputs + b * T, d->tokens + s, T * sizeof(int32_t));
        memcpy(targets + b * T, d->tokens + s + 1, T * sizeof(int32_t));
    }
}

size_t fs_dataset_windows(const fs_dataset *d, size_t T) {
    /* window b predicts tokens up to b*T + T, which must exist */
    return d->n > T ? (d->n - 1) / T : 0;
}

void fs_dataset_window(const fs_dataset *d, size_t b, int32_t *inputs, int32_t *targets, size_t T) {
    memcpy(inputs, d->tokens + b * T, T * sizeof(int32_t));
    memcpy(targets, d->tokens + b * T + 1, T * sizeof(int32_t));
}
