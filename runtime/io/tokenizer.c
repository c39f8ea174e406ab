/* tokenizer.c — the tokenizer a graph names (see tokenizer.h): the kinds
 * by their spec prefix, the byte-level one, and the token vector. */
#include "io/tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "io/strmap.h"
#include "io/tokenizer_bpe.h"

int fs_tokens_push(fs_tokens *t, int32_t id) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 256;
        int32_t *n = realloc(t->ids, cap * sizeof *n);
        if (!n) return FS_ERR_NOMEM;
        t->ids = n;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return FS_OK;
}

void fs_tokens_release(fs_tokens *t) {
    free(t->ids);
    memset(t, 0, sizeof *t);
}

/* One kind of tokenizer. */
typedef struct tokenizer_kind {
    const char *name;
    const char *prefix; /* of the spec: "byte" exactly, "bpe:" then a path */
    int takes_path;
    int (*open)(fs_tokenizer *t, const char *path, fs_error *err);
    void (*destroy)(void *impl);
    int (*encode)(void *impl, const char *text, size_t len, fs_tokens *out, fs_error *err);
    const char *(*token)(const void *impl, int32_t id, size_t *len);
    int (*save)(const void *impl, const char *path, fs_error *err);
} tokenizer_kind;

struct fs_tokenizer {
    const tokenizer_kind *kind;
    void *impl;
    size_t vocab;
    uint64_t identity;
    int32_t eos;
};

/* ---- byte: token i is byte i ---- */

static const char BYTES[256] = {
#define B4(i) (char)(i), (char)(i + 1), (char)(i + 2), (char)(i + 3)
#define B16(i) B4(i), B4(i + 4), B4(i + 8), B4(i + 12)
#define B64(i) B16(i), B16(i + 16), B16(i + 32), B16(i + 48)
    B64(0), B64(64), B64(128), B64(192)
#undef B64
#undef B16
#undef B4
};

static int byte_open(fs_tokenizer *t, const char *path, fs_error *err) {
    (void)path, (void)err;
    t->vocab = 256;
    t->identity = fs_hash64("fastserve-byte-1", 16, 0);
    t->eos = -1;
    return FS_OK;
}

static void byte_destroy(void *impl) { (void)impl; }

static int byte_encode(void *impl, const char *text, size_t len, fs_tokens *out, fs_error *err) {
    (void)impl;
    for (size_t i = 0; i < len; i++)
        if (fs_tokens_push(out, (unsigned char)text[i])) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    return FS_OK;
}

static const char *byte_token(const void *impl, int32_t id, size_t *len) {
    (void)impl;
    if (id < 0 || id > 255) return NULL;
    *len = 1;
    return &BYTES[id];
}

static int byte_save(const void *impl, const char *path, fs_error *err) {
    (void)impl;
    return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: the byte-level tokenizer has no tokenizer.json", path);
}

/* ---- bpe ---- */

static const struct tokenizer_kind KINDS[2];

static int bpe_open(fs_tokenizer *t, const char *path, fs_error *err) {
    fs_bpe *b;
    int rc = fs_bpe_load(&b, path, err);
    if (rc) return rc;
    t->impl = b;
    t->vocab = fs_bpe_vocab_size(b);
    t->identity = fs_bpe_identity(b);
    t->eos = fs_bpe_eos(b);
    return FS_OK;
}

static void bpe_destroy(void *impl);

int fs_tokenizer_wrap_bpe(fs_tokenizer **out, fs_bpe *b, fs_error *err) {
    *out = calloc(1, sizeof **out);
    if (!*out) {
        fs_bpe_destroy(b);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    (*out)->kind = &KINDS[1];
    (*out)->impl = b;
    (*out)->vocab = fs_bpe_vocab_size(b);
    (*out)->identity = fs_bpe_identity(b);
    (*out)->eos = fs_bpe_eos(b);
    return FS_OK;
}

static void bpe_destroy(void *impl) { fs_bpe_destroy(impl); }
static int bpe_encode(void *impl, const char *text, size_t len, fs_tokens *out, fs_error *err) {
    return fs_bpe_encode(impl, text, len, out, err);
}
static const char *bpe_token(const void *impl, int32_t id, size_t *len) { return fs_bpe_token(impl, id, len); }
static int bpe_save(const void *impl, const char *path, fs_error *err) { return fs_bpe_save(impl, path, err); }

static const tokenizer_kind KINDS[2] = {
    {"byte", "byte", 0, byte_open, byte_destroy, byte_encode, byte_token, byte_save},
    {"bpe", "bpe:", 1, bpe_open, bpe_destroy, bpe_encode, bpe_token, bpe_save},
};
#define N_KINDS (sizeof KINDS / sizeof KINDS[0])

static const tokenizer_kind *kind_of(const char *spec, const char **path) {
    for (size_t i = 0; i < N_KINDS; i++) {
        size_t n = strlen(KINDS[i].prefix);
        if (KINDS[i].takes_path ? !strncmp(spec, KINDS[i].prefix, n) && spec[n] : !strcmp(spec, KINDS[i].prefix)) {
            *path = KINDS[i].takes_path ? spec + n : NULL;
            return &KINDS[i];
        }
    }
    return NULL;
}

int fs_tokenizer_spec_check(const char *spec, const char *where, fs_error *err) {
    const char *path;
    if (kind_of(spec, &path)) return FS_OK;
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: must be 'byte' or 'bpe:PATH' (a tokenizer.json, a directory holding one or GPT-2's "
                        "vocab.json + merges.txt; --mode train-tokenizer learns one)",
                        where);
}

int fs_tokenizer_open(fs_tokenizer **out, const char *spec, const char *where, fs_error *err) {
    *out = NULL;
    int rc = fs_tokenizer_spec_check(spec, where, err);
    if (rc) return rc;
    fs_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    const char *path;
    t->kind = kind_of(spec, &path);
    fs_error kerr = {0};
    if ((rc = t->kind->open(t, path, &kerr))) {
        free(t);
        return fs_error_set(err, rc, "%s: %s%s", where, kerr.message,
                            rc == FS_ERR_NOT_FOUND ? " (fsrun GRAPH.ini --mode train-tokenizer learns one)" : "");
    }
    *out = t;
    return FS_OK;
}

void fs_tokenizer_destroy(fs_tokenizer *t) {
    if (!t) return;
    t->kind->destroy(t->impl);
    free(t);
}

const char *fs_tokenizer_kind(const fs_tokenizer *t) { return t->kind->name; }
size_t fs_tokenizer_vocab_size(const fs_tokenizer *t) { return t->vocab; }
uint64_t fs_tokenizer_identity(const fs_tokenizer *t) { return t->identity; }
int32_t fs_tokenizer_eos(const fs_tokenizer *t) { return t->eos; }

int fs_tokenizer_encode(fs_tokenizer *t, const char *text, size_t len, fs_tokens *out, fs_error *err) {
    return t->kind->encode(t->impl, text, len, out, err);
}

const char *fs_tokenizer_token(const fs_tokenizer *t, int32_t id, size_t *len) {
    return t->kind->token(t->impl, id, len);
}

int fs_tokenizer_decode(const fs_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len,
                        fs_error *err) {
    size_t total = 0, k;
    for (size_t i = 0; i < n; i++) total += fs_tokenizer_token(t, ids[i], &k) ? k : 1;
    char *buf = malloc(total + 1);
    if (!buf) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = fs_tokenizer_token(t, ids[i], &k);
        if (s)
            memcpy(buf + o, s, k), o += k;
        else
            buf[o++] = '?';
    }
    buf[o] = '\0';
    *text = buf;
    *len = o;
    return FS_OK;
}

int fs_tokenizer_save(const fs_tokenizer *t, const char *path, fs_error *err) {
    return t->kind->save(t->impl, path, err);
}
