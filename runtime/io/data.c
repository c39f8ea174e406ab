/* data.c — byte-level tokenizer and datasets. */
#include "io/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/host.h"

int fs_dataset_load(fs_dataset *d, const char *path, const char *where, size_t min_tokens, fs_error *err) {
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fs_error_set(err, errno == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO, "%s: %s: cannot open data file: %s",
                            where, path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fs_error_set(err, FS_ERR_INVALID, "%s: %s: not a regular file: give a text file", where, path);
    }
    size_t len = (size_t)st.st_size;
    if (len < min_tokens) {
        fclose(f);
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: %s: %s (%zu bytes); it needs at least %zu tokens (max_seq + 1) to make one window",
                            where, path, len == 0 ? "the data file is empty" : "the data file is too short", len,
                            min_tokens);
    }
    unsigned char *bytes = malloc(len + 1);
    d->tokens = malloc((len + 1) * sizeof(int32_t));
    if (!bytes || !d->tokens) {
        free(bytes);
        free(d->tokens);
        d->tokens = NULL;
        fclose(f);
        return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory for %zu bytes", path, len);
    }
    size_t got = fread(bytes, 1, len, f);
    fclose(f);
    if (got != len) {
        free(bytes);
        free(d->tokens);
        d->tokens = NULL;
        return fs_error_set(err, FS_ERR_IO, "%s: %s: short read", where, path);
    }
    d->n = fs_tokenize(d->tokens, (const char *)bytes, got);
    free(bytes);
    d->path = strdup(path);
    return FS_OK;
}

void fs_dataset_release(fs_dataset *d) {
    if (!d) return;
    free(d->tokens);
    free(d->path);
    memset(d, 0, sizeof *d);
}

size_t fs_tokenize(int32_t *out, const char *text, size_t len) {
    for (size_t i = 0; i < len; i++) out[i] = (unsigned char)text[i];
    return len;
}

size_t fs_detokenize(char *out, const int32_t *tokens, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = tokens[i] >= 0 && tokens[i] < 256 ? (char)tokens[i] : '?';
    out[n] = '\0';
    return n;
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
