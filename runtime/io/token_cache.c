/* token_cache.c — see token_cache.h. */
#include "io/token_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/host.h"
#include "io/files.h"
#include "io/metrics.h"
#include "io/strmap.h"

#define MAGIC "FSTOKENS"
#define VERSION 1
#define HEADER_BYTES 64

typedef struct header {
    char magic[8];
    uint32_t version, token_bytes;
    uint64_t identity, text_bytes, text_hash, n_tokens;
    uint8_t zero[16];
} header;

_Static_assert(sizeof(header) == HEADER_BYTES, "the cache header is 64 bytes");

static void header_of(header *h, const fs_tokenizer *t, size_t text_bytes, uint64_t text_hash, size_t n) {
    memset(h, 0, sizeof *h);
    memcpy(h->magic, MAGIC, 8);
    h->version = VERSION;
    h->token_bytes = sizeof(int32_t);
    h->identity = fs_tokenizer_identity(t);
    h->text_bytes = text_bytes;
    h->text_hash = text_hash;
    h->n_tokens = n;
}

/* Maps the cache at path when its header says it holds `want`'s tokens;
 * 0 on a hit, 1 when absent or stale (*why says which). */
static int map_cache(fs_token_file *f, const char *path, const header *want, const char **why) {
    *why = "none yet";
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO: refused below, not waited on */
    if (fd < 0) return 1;
    struct stat st;
    header h;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size >= HEADER_BYTES && pread(fd, &h, sizeof h, 0) == sizeof h;
    *why = "its header is unreadable";
    if (ok && (memcmp(h.magic, MAGIC, 8) || h.version != VERSION || h.token_bytes != sizeof(int32_t)))
        ok = 0, *why = "it is not a token cache of this version";
    else if (ok && (h.identity != want->identity))
        ok = 0, *why = "it was made by another tokenizer";
    else if (ok && (h.text_bytes != want->text_bytes || h.text_hash != want->text_hash))
        ok = 0, *why = "the text changed since it was made";
    else if (ok && (size_t)st.st_size != HEADER_BYTES + h.n_tokens * sizeof(int32_t))
        ok = 0, *why = "it is truncated";
    void *map = MAP_FAILED;
    if (ok) map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return 1;
    f->map = map;
    f->map_len = (size_t)st.st_size;
    f->tokens = (const int32_t *)((const char *)map + HEADER_BYTES);
    f->n = (size_t)h.n_tokens;
    f->from_cache = 1;
    return 0;
}

int fs_token_file_load(fs_token_file *f, const char *path, const char *text, size_t len, fs_tokenizer *t,
                       int use_cache, int write_cache, fs_error *err) {
    memset(f, 0, sizeof *f);
    f->text_bytes = len;
    header want;
    header_of(&want, t, len, use_cache ? fs_hash64(text, len, 0) : 0, 0);
    const char *why = "";
    if (use_cache) {
        size_t n = strlen(path) + 64;
        if (!(f->cache_path = malloc(n))) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        snprintf(f->cache_path, n, "%s.%s-%016" PRIx64 ".tokens", path, fs_tokenizer_kind(t), want.identity);
        if (map_cache(f, f->cache_path, &want, &why) == 0) return FS_OK;
    }
    fs_tokens toks = {0};
    double t0 = fs_now();
    int rc = fs_tokenizer_encode(t, text, len, &toks, err);
    f->seconds = fs_now() - t0;
    if (rc) {
        fs_tokens_release(&toks);
        return rc;
    }
    f->owned = toks.ids;
    f->tokens = toks.ids;
    f->n = toks.n;
    if (!use_cache || !write_cache) return FS_OK;
    if (strcmp(why, "none yet")) fs_log(FS_LOG_INFO, NULL, "%s: tokenized again: %s", f->cache_path, why);
    header h;
    header_of(&h, t, len, want.text_hash, toks.n);
    const void *parts[2] = {&h, toks.ids};
    size_t lens[2] = {sizeof h, toks.n * sizeof(int32_t)};
    fs_error werr = {0};
    if (fs_file_write_atomic(f->cache_path, parts, lens, 2, &werr)) {
        fs_log(FS_LOG_WARN, NULL, "%s (the tokens are used from memory and not cached)", werr.message);
        free(f->cache_path);
        f->cache_path = NULL;
    }
    return FS_OK;
}

void fs_token_file_release(fs_token_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    free(f->owned);
    free(f->cache_path);
    memset(f, 0, sizeof *f);
}
