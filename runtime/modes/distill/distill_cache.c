/* distill_cache.c — window-keyed record files (see distill_internal.h) and
 * the teacher's top-k logits cache built on them.
 *
 * Layout: a 48-byte header (magic "FSDCACHE", version, kind, identity,
 * record size), then records of an 8-byte key and `record_bytes` of
 * payload, appended as they are made. The keys are read into an
 * open-addressing table when the file is opened; payloads are read on
 * demand, so a cache larger than memory works. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "modes/distill/distill_internal.h"

/* ---- hashing: FNV-1a, 64 bits ---- */

uint64_t fs_hash_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    if (!h) h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

uint64_t fs_hash_u64(uint64_t h, uint64_t x) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(x >> (8 * i));
    return fs_hash_bytes(h, b, 8);
}

uint64_t fs_hash_tokens(uint64_t h, const int32_t *tokens, size_t n) {
    for (size_t i = 0; i < n; i++) h = fs_hash_u64(h, (uint64_t)(uint32_t)tokens[i]);
    return h;
}

uint64_t fs_model_identity(const fs_model *m) {
    uint64_t h = 0;
    h = fs_hash_u64(h, fs_model_cfg(m)->vocab);
    h = fs_hash_u64(h, fs_model_cfg(m)->max_seq);
    h = fs_hash_u64(h, fs_model_cfg(m)->n_layer);
    h = fs_hash_u64(h, fs_model_cfg(m)->n_head);
    h = fs_hash_u64(h, fs_model_cfg(m)->n_embd);
    /* word-wise: 20 MB of weights hash in a few milliseconds */
    const fs_param_block *pb = fs_model_block(m);
    const uint32_t *w = (const uint32_t *)pb->params;
    uint64_t a = h, b = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < pb->n - pb->n_plugin; i++) { /* the model's own weights */
        a = (a ^ w[i]) * 0x100000001B3ull;
        b = (b + w[i]) * 0xC2B2AE3D27D4EB4Full;
    }
    return fs_hash_u64(a, b);
}

/* ---- the record file ---- */

#define MAGIC "FSDCACHE"
#define VERSION 1u
#define HEADER_BYTES 48

struct fs_dcache {
    char *path;
    int fd;
    uint32_t kind;
    uint64_t ident;
    size_t record_bytes;
    off_t end;
    /* key -> file offset of the payload; offset 0 marks an empty slot */
    uint64_t *keys;
    off_t *offs;
    size_t cap, n;
};

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static size_t slot_of(const fs_dcache *c, uint64_t key) {
    size_t i = (size_t)(key * 0x9E3779B97F4A7C15ull >> 7) & (c->cap - 1);
    while (c->offs[i] && c->keys[i] != key) i = (i + 1) & (c->cap - 1);
    return i;
}

static int grow(fs_dcache *c) {
    size_t cap = c->cap ? c->cap * 2 : 1024;
    uint64_t *keys = calloc(cap, sizeof *keys);
    off_t *offs = calloc(cap, sizeof *offs);
    if (!keys || !offs) {
        free(keys);
        free(offs);
        return -1;
    }
    uint64_t *ok = c->keys;
    off_t *oo = c->offs;
    size_t ocap = c->cap;
    c->keys = keys;
    c->offs = offs;
    c->cap = cap;
    for (size_t i = 0; i < ocap; i++)
        if (oo[i]) {
            size_t j = slot_of(c, ok[i]);
            c->keys[j] = ok[i];
            c->offs[j] = oo[i];
        }
    free(ok);
    free(oo);
    return 0;
}

static int index_key(fs_dcache *c, uint64_t key, off_t payload) {
    if ((c->n + 1) * 2 > c->cap && grow(c)) return -1;
    size_t i = slot_of(c, key);
    if (!c->offs[i]) c->n++;
    c->keys[i] = key;
    c->offs[i] = payload;
    return 0;
}

static int write_header(fs_dcache *c, fs_error *err) {
    unsigned char h[HEADER_BYTES] = {0};
    memcpy(h, MAGIC, 8);
    put_u32(h + 8, VERSION);
    put_u32(h + 12, c->kind);
    put_u64(h + 16, c->ident);
    put_u64(h + 24, c->record_bytes);
    if (ftruncate(c->fd, 0) != 0 || pwrite(c->fd, h, sizeof h, 0) != (ssize_t)sizeof h)
        return fs_error_set(err, FS_ERR_IO, "%s: cannot write the cache: %s", c->path, strerror(errno));
    c->end = HEADER_BYTES;
    return FS_OK;
}

int fs_dcache_open(fs_dcache **out, const char *path, uint32_t kind, uint64_t ident, size_t record_bytes,
                   fs_error *err) {
    *out = NULL;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        int rc = fs_mkdirs(dir, err);
        if (rc) return rc;
    }
    fs_dcache *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    c->kind = kind;
    c->ident = ident;
    c->record_bytes = record_bytes;
    c->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (c->fd < 0) {
        int rc = fs_error_set(err, FS_ERR_IO, "%s: cannot open the cache: %s", path, strerror(errno));
        fs_dcache_close(c);
        return rc;
    }
    if (grow(c)) {
        fs_dcache_close(c);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    struct stat st;
    unsigned char h[HEADER_BYTES];
    int fresh = fstat(c->fd, &st) != 0 || st.st_size < HEADER_BYTES ||
                pread(c->fd, h, sizeof h, 0) != (ssize_t)sizeof h;
    if (!fresh && (memcmp(h, MAGIC, 8) != 0 || get_u32(h + 8) != VERSION || get_u32(h + 12) != kind ||
                   get_u64(h + 16) != ident || get_u64(h + 24) != record_bytes)) {
        fs_log(FS_LOG_WARN, NULL, "%s was written for another teacher or other settings: starting it afresh", path);
        fresh = 1;
    }
    int rc = FS_OK;
    if (fresh) {
        rc = write_header(c, err);
    } else {
        size_t stride = 8 + record_bytes;
        size_t whole = ((size_t)st.st_size - HEADER_BYTES) / stride;
        unsigned char kb[8];
        for (size_t i = 0; i < whole && !rc; i++) {
            off_t at = (off_t)(HEADER_BYTES + i * stride);
            if (pread(c->fd, kb, 8, at) != 8)
                rc = fs_error_set(err, FS_ERR_IO, "%s: read error: %s", path, strerror(errno));
            else if (index_key(c, get_u64(kb), at + 8))
                rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory indexing %s", path);
        }
        c->end = (off_t)(HEADER_BYTES + whole * stride);
        if (!rc && c->end != st.st_size && ftruncate(c->fd, c->end) != 0) /* a torn record from a killed run */
            rc = fs_error_set(err, FS_ERR_IO, "%s: cannot truncate a torn record: %s", path, strerror(errno));
    }
    if (rc) {
        fs_dcache_close(c);
        return rc;
    }
    *out = c;
    return FS_OK;
}

void fs_dcache_close(fs_dcache *c) {
    if (!c) return;
    if (c->fd >= 0) close(c->fd);
    free(c->path);
    free(c->keys);
    free(c->offs);
    free(c);
}

int fs_dcache_get(fs_dcache *c, uint64_t key, void *rec, fs_error *err) {
    size_t i = slot_of(c, key);
    if (!c->offs[i]) return 0;
    if (pread(c->fd, rec, c->record_bytes, c->offs[i]) != (ssize_t)c->record_bytes)
        return fs_error_set(err, FS_ERR_IO, "%s: read error: %s", c->path, strerror(errno));
    return 1;
}

int fs_dcache_put(fs_dcache *c, uint64_t key, const void *rec, fs_error *err) {
    unsigned char kb[8];
    put_u64(kb, key);
    if (pwrite(c->fd, kb, 8, c->end) != 8 ||
        pwrite(c->fd, rec, c->record_bytes, c->end + 8) != (ssize_t)c->record_bytes)
        return fs_error_set(err, FS_ERR_IO, "%s: cannot append to the cache: %s", c->path, strerror(errno));
    if (index_key(c, key, c->end + 8)) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    c->end += (off_t)(8 + c->record_bytes);
    return FS_OK;
}

int fs_dcache_has(const fs_dcache *c, uint64_t key) { return c->offs[slot_of(c, key)] != 0; }

size_t fs_dcache_count(const fs_dcache *c) { return c ? c->n : 0; }
const char *fs_dcache_path(const fs_dcache *c) { return c ? c->path : ""; }

/* ---- top-k teacher logits ---- */

void fs_topk(const float *x, size_t V, size_t k, int32_t *idx) {
    /* insertion into a sorted list of k: V is a vocabulary, k small */
    size_t n = 0;
    for (size_t i = 0; i < V; i++) {
        if (n == k && !(x[i] > x[idx[k - 1]])) continue;
        size_t j = n < k ? n++ : k - 1;
        while (j > 0 && x[i] > x[idx[j - 1]]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = (int32_t)i;
    }
}

/* record: T x k of (uint16 id, float logit), ids first */
static size_t topk_record_bytes(size_t T, size_t k) { return T * k * (sizeof(uint16_t) + sizeof(float)); }

int fs_topk_cache_open(fs_topk_cache *c, const char *path, size_t k, size_t T, const fs_model *teacher,
                       fs_error *err) {
    memset(c, 0, sizeof *c);
    c->k = k;
    c->T = T;
    c->V = fs_model_cfg(teacher)->vocab;
    uint64_t ident = fs_hash_u64(fs_hash_u64(fs_model_identity(teacher), k), T);
    c->rec = malloc(topk_record_bytes(T, k));
    if (!c->rec) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    return fs_dcache_open(&c->file, path, FS_DCACHE_TOPK, ident, topk_record_bytes(T, k), err);
}

void fs_topk_cache_close(fs_topk_cache *c) {
    fs_dcache_close(c->file);
    free(c->rec);
    free(c->rows);
    memset(c, 0, sizeof *c);
}

static void fill_row(const fs_topk_cache *c, const void *rec, float *logits) {
    size_t T = c->T, k = c->k, V = c->V;
    const uint16_t *ids = rec;
    const unsigned char *val = (const unsigned char *)rec + T * k * sizeof(uint16_t); /* maybe unaligned */
    float v;
    for (size_t i = 0; i < T * V; i++) logits[i] = -1e30f;
    for (size_t t = 0; t < T; t++)
        for (size_t j = 0; j < k; j++) {
            memcpy(&v, val + (t * k + j) * sizeof v, sizeof v);
            logits[t * V + ids[t * k + j]] = v;
        }
}

int fs_topk_cache_logits(fs_topk_cache *c, fs_model *teacher, const int32_t *inputs, size_t n, float *logits,
                         fs_error *err) {
    size_t T = c->T, V = c->V, k = c->k;
    int rc;
    /* gather the rows the file lacks and run the teacher on them at once */
    uint64_t *keys = malloc(n * sizeof *keys);
    size_t *miss = malloc(n * sizeof *miss), n_miss = 0;
    if (!keys || !miss) {
        free(keys);
        free(miss);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    for (size_t r = 0; r < n; r++) {
        keys[r] = fs_hash_tokens(0, inputs + r * T, T);
        rc = fs_dcache_get(c->file, keys[r], c->rec, err);
        if (rc < 0) goto done;
        if (rc == 1) {
            fill_row(c, c->rec, logits + r * T * V);
            c->hits++;
        } else {
            miss[n_miss++] = r;
        }
    }
    rc = FS_OK;
    if (n_miss) {
        if (c->rows_cap < n_miss) {
            free(c->rows);
            c->rows = malloc(n_miss * T * sizeof *c->rows);
            c->rows_cap = c->rows ? n_miss : 0;
            if (!c->rows) {
                rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
                goto done;
            }
        }
        for (size_t i = 0; i < n_miss; i++) memcpy(c->rows + i * T, inputs + miss[i] * T, T * sizeof(int32_t));
        if ((rc = fs_model_forward(teacher, c->rows, n_miss, T, err))) goto done;
        int32_t idx[4096];
        for (size_t i = 0; i < n_miss && !rc; i++) {
            uint16_t *ids = c->rec;
            unsigned char *val = (unsigned char *)c->rec + T * k * sizeof(uint16_t);
            for (size_t t = 0; t < T; t++) {
                const float *z = fs_model_logits(teacher) + (i * T + t) * V;
                fs_topk(z, V, k, idx);
                for (size_t j = 0; j < k; j++) {
                    ids[t * k + j] = (uint16_t)idx[j];
                    memcpy(val + (t * k + j) * sizeof(float), &z[idx[j]], sizeof(float));
                }
            }
            /* a row may repeat in the batch: the first put wins */
            if (!fs_dcache_has(c->file, keys[miss[i]])) rc = fs_dcache_put(c->file, keys[miss[i]], c->rec, err);
            c->misses++;
        }
        /* every row as a rerun will read it: a repeated row computed at
         * another batch position may differ in the last bits (BLAS) */
        for (size_t i = 0; i < n_miss && !rc; i++) {
            rc = fs_dcache_get(c->file, keys[miss[i]], c->rec, err);
            if (rc == 1) {
                fill_row(c, c->rec, logits + miss[i] * T * V);
                rc = FS_OK;
            } else if (rc == 0) {
                rc = fs_error_set(err, FS_ERR_IO, "%s: a record just written is missing", fs_dcache_path(c->file));
            }
        }
    }
done:
    free(keys);
    free(miss);
    return rc < 0 ? rc : FS_OK;
}
