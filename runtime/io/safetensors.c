/* safetensors.c — reader and atomic writer for .safetensors checkpoints.
 *
 * The reader loads the header and the data area into separate buffers, so
 * the data area starts malloc-aligned whatever the header length; a tensor
 * whose offset is not a multiple of its element size (legal in a foreign
 * file) gets its own aligned copy. The header is parsed by jansson (strict
 * JSON in strict UTF-8, duplicate keys refused), then checked against the
 * format: dtypes, shapes, spans. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "core/host.h"
#include "io/files.h"

#define MAX_DIMS 8
#define MAX_JSON_DEPTH 64
/* The reference implementation's cap: a longer "header" is garbage. */
#define MAX_HEADER_LEN ((uint64_t)100 * 1024 * 1024)
#define METADATA_KEY "__metadata__"
#define IO_CHUNK ((size_t)1 << 30) /* read/write may not move more at once */

static const struct {
    const char *name;
    int32_t dtype;
    size_t size;
} DTYPES[] = {
    {"F32", FS_DTYPE_F32, 4},      {"F16", FS_DTYPE_F16, 2},    {"BF16", FS_DTYPE_BF16, 2},
    {"I32", FS_DTYPE_I32, 4},      {"F64", FS_ST_DTYPE_F64, 8}, {"I64", FS_ST_DTYPE_I64, 8},
    {"U8", FS_ST_DTYPE_U8, 1},     {"I8", FS_ST_DTYPE_I8, 1},   {"I16", FS_ST_DTYPE_I16, 2},
    {"BOOL", FS_ST_DTYPE_BOOL, 1},
};
#define NUM_DTYPES (sizeof DTYPES / sizeof DTYPES[0])

static size_t dtype_index(int32_t dtype) {
    size_t i = 0;
    while (i < NUM_DTYPES && DTYPES[i].dtype != dtype) i++;
    return i;
}

const char *fs_safetensors_dtype_name(int32_t dtype) {
    size_t i = dtype_index(dtype);
    return i < NUM_DTYPES ? DTYPES[i].name : NULL;
}

size_t fs_safetensors_dtype_size(int32_t dtype) {
    size_t i = dtype_index(dtype);
    return i < NUM_DTYPES ? DTYPES[i].size : 0;
}


/* Offset of the first byte that breaks strict UTF-8 (overlongs, surrogates,
 * code points past U+10FFFF), or n: anything else is not JSON text, and
 * Python's reader would refuse the file. */
static size_t utf8_check(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], lo = 0x80, hi = 0xBF;
        size_t len = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        if (len == 0 || n - i < len) return i;
        for (size_t k = 1; k < len; k++)
            if (s[i + k] < (k == 1 ? lo : 0x80) || s[i + k] > (k == 1 ? hi : 0xBF)) return i;
        i += len;
    }
    return n;
}

static int mul_overflows(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 1;
    *out = a * b;
    return 0;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    while (ncap < need) ncap *= 2;
    void *n = realloc(*arr, ncap * elem);
    if (!n) return -1;
    *arr = n;
    *cap = ncap;
    return 0;
}

/* Tensors and metadata, shared by the reader and the writer. */
typedef struct entry {
    fs_st_tensor t;      /* t.name is owned */
    uint64_t begin, end; /* data_offsets, as read */
    void *copy;          /* aligned copy of a misaligned tensor, or NULL */
} entry;

typedef struct meta_kv {
    char *key, *value;
} meta_kv;

typedef struct table {
    entry *e; /* in file order / order added */
    size_t n, cap;
    meta_kv *meta;
    size_t nmeta, meta_cap;
} table;

static void table_free(table *tb) {
    for (size_t i = 0; i < tb->n; i++) {
        free((char *)tb->e[i].t.name);
        free(tb->e[i].copy);
    }
    for (size_t i = 0; i < tb->nmeta; i++) {
        free(tb->meta[i].key);
        free(tb->meta[i].value);
    }
    free(tb->e);
    free(tb->meta);
}

/* ---------------------------------------------------------------- reader */

struct fs_safetensors {
    table tb;
    char *path;
    entry **by_name; /* sorted, for find; tb.meta is sorted by key */
    unsigned char *data;
    size_t data_size;
};

/* ---- the header: JSON through jansson, then the format's own rules ---- */

static int nomem(const char *path, fs_error *err) {
    return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory reading the header", path);
}

/* Where a position of the header sits in its structure: the depth of the
 * string token ending there, and the top-level key that holds it. The
 * scan follows strings and their escapes only; jansson has checked the
 * text up to `stop`. */
typedef struct locate {
    int depth;               /* of the last string token before stop (1: a top-level key) */
    size_t last_b, last_e;   /* that token, as raw JSON text */
    size_t outer_b, outer_e; /* the top-level key it is under */
    int max_depth;           /* the deepest nesting seen */
} locate;

/* JSON's brackets, by kind (kept out of the code: a brace in a character
 * literal confuses tools that count a function's braces). */
static const char OPENERS[] = "\x7b[", CLOSERS[] = "\x7d]", KEY_BEFORE[] = "\x7b,";

static void scan_structure(const char *s, size_t n, size_t stop, locate *out) {
    memset(out, 0, sizeof *out);
    int depth = 0, in_string = 0, key_next = 0; /* a string now would be a top-level key */
    size_t b = 0;
    for (size_t i = 0; i < n && i < stop; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_string = 0;
                out->depth = depth;
                out->last_b = b, out->last_e = i + 1;
                if (depth == 1 && key_next) out->outer_b = b, out->outer_e = i + 1;
                key_next = 0;
            }
            continue;
        }
        if (c == '"') in_string = 1, b = i;
        else if (c && strchr(OPENERS, c)) depth++;
        else if (c && strchr(CLOSERS, c)) depth--;
        if (depth > out->max_depth) out->max_depth = depth;
        if (c && strchr(KEY_BEFORE, c)) key_next = depth == 1;
        else if (c != '"' && !strchr(" \t\r\n", c)) key_next = 0;
    }
}

/* The raw JSON string at [b, e) decoded; NULL when it is not one. */
static char *json_text_string(const char *s, size_t b, size_t e) {
    json_error_t je;
    json_t *v = e > b ? json_loadb(s + b, e - b, JSON_DECODE_ANY, &je) : NULL;
    char *out = json_is_string(v) ? strdup(json_string_value(v)) : NULL;
    json_decref(v);
    return out;
}

/* A key jansson found twice (its position is just past the key), named as
 * the format sees it: a tensor, a __metadata__ key, a field of a tensor's
 * entry. */
static int duplicate_key(const char *path, const char *hdr, size_t n, const json_error_t *je, fs_error *err) {
    locate at;
    scan_structure(hdr, n, (size_t)je->position, &at);
    char *key = json_text_string(hdr, at.last_b, at.last_e);
    char *outer = at.depth == 2 ? json_text_string(hdr, at.outer_b, at.outer_e) : NULL;
    int rc;
    if (at.depth == 1 && key && !strcmp(key, METADATA_KEY))
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: invalid JSON header: duplicate \"" METADATA_KEY "\"", path);
    else if (at.depth == 1 && key)
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: duplicate tensor name '%s'", path, key);
    else if (key && outer && !strcmp(outer, METADATA_KEY))
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: duplicate " METADATA_KEY " key '%s'", path, key);
    else if (key && outer)
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: tensor '%s': duplicate key '%s' in its entry", path, outer, key);
    else
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: invalid JSON header: %s at byte %d of the header", path,
                          je->text, je->position);
    free(key);
    free(outer);
    return rc;
}

/* A JSON integer in [0, max]. */
static int json_uint(const json_t *v, uint64_t max, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* An array of at most max integers in [0, limit]; *count of them. */
static int json_uints(const json_t *v, size_t max, uint64_t limit, uint64_t *out, size_t *count) {
    if (!json_is_array(v) || json_array_size(v) > max) return -1;
    *count = json_array_size(v);
    for (size_t i = 0; i < *count; i++)
        if (json_uint(json_array_get(v, i), limit, &out[i])) return -1;
    return 0;
}

static int parse_metadata(table *tb, const json_t *meta, const char *path, fs_error *err) {
    if (!json_is_object(meta))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: invalid JSON header: \"" METADATA_KEY "\" must be an object of string values", path);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)meta, k, v) {
        if (!json_is_string(v))
            return fs_error_set(err, FS_ERR_INVALID, "%s: " METADATA_KEY " value for '%s' is not a string", path, k);
        if (grow((void **)&tb->meta, &tb->meta_cap, tb->nmeta + 1, sizeof *tb->meta)) return nomem(path, err);
        meta_kv kv = {strdup(k), strdup(json_string_value(v))};
        if (!kv.key || !kv.value) {
            free(kv.key);
            free(kv.value);
            return nomem(path, err);
        }
        tb->meta[tb->nmeta++] = kv;
    }
    return FS_OK;
}

/* One tensor's entry: {"dtype": known, "shape": [<= 8 integers],
 * "data_offsets": [begin, end]}; other keys are tolerated, as the
 * reference reader does. */
static int parse_tensor(table *tb, const char *name, const json_t *v, const char *path, fs_error *err) {
    static const char *const fields[3] = {"dtype", "shape", "data_offsets"};
    if (!json_is_object(v))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: invalid JSON header: tensor '%s': expected an object {\"dtype\", \"shape\", "
                            "\"data_offsets\"}",
                            path, name);
    for (int k = 0; k < 3; k++)
        if (!json_object_get(v, fields[k]))
            return fs_error_set(err, FS_ERR_INVALID, "%s: tensor '%s': missing \"%s\"", path, name, fields[k]);
    const json_t *dt = json_object_get(v, "dtype");
    size_t d = 0;
    while (json_is_string(dt) && d < NUM_DTYPES && strcmp(DTYPES[d].name, json_string_value(dt))) d++;
    if (!json_is_string(dt) || d == NUM_DTYPES)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: tensor '%s': unknown dtype %s%s%s (supported: F32, F16, BF16, I32, F64, I64, U8, I8, "
                            "I16, BOOL)",
                            path, name, json_is_string(dt) ? "\"" : "", json_is_string(dt) ? json_string_value(dt) : "(not a string)",
                            json_is_string(dt) ? "\"" : "");
    uint64_t shape[MAX_DIMS], offs[2];
    size_t ndim, noffs;
    if (json_uints(json_object_get(v, "shape"), MAX_DIMS, SIZE_MAX, shape, &ndim))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: invalid JSON header: tensor '%s': \"shape\" must be an array of at most 8 "
                            "non-negative integers",
                            path, name);
    if (json_uints(json_object_get(v, "data_offsets"), 2, UINT64_MAX, offs, &noffs) || noffs != 2)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: invalid JSON header: tensor '%s': \"data_offsets\" must be [begin, end] "
                            "(non-negative integers)",
                            path, name);
    if (grow((void **)&tb->e, &tb->cap, tb->n + 1, sizeof *tb->e)) return nomem(path, err);
    entry *e = &tb->e[tb->n];
    memset(e, 0, sizeof *e);
    e->t.dtype = DTYPES[d].dtype;
    e->t.ndim = (int32_t)ndim;
    e->t.nbytes = DTYPES[d].size;
    for (size_t i = 0; i < ndim; i++) {
        if (mul_overflows(e->t.nbytes, (size_t)shape[i], &e->t.nbytes))
            return fs_error_set(err, FS_ERR_INVALID, "%s: tensor '%s': shape is too large (its size overflows)", path,
                                name);
        e->t.shape[i] = (size_t)shape[i];
    }
    e->begin = offs[0];
    e->end = offs[1];
    if (!(e->t.name = strdup(name))) return nomem(path, err);
    tb->n++;
    return FS_OK;
}

/* The header's n bytes (not NUL-terminated) into st's table. */
static int parse_header(fs_safetensors *st, const char *hdr, size_t n, fs_error *err) {
    const char *path = st->path;
    size_t bad = utf8_check((const unsigned char *)hdr, n), first = 0;
    if (bad < n)
        return fs_error_set(err, FS_ERR_INVALID, "%s: invalid JSON header: invalid UTF-8 at byte %zu of the header",
                            path, bad);
    while (first < n && strchr(" \t\r\n", hdr[first]) && hdr[first]) first++;
    if (first == n || hdr[first] != OPENERS[0])
        return fs_error_set(err, FS_ERR_INVALID, "%s: not a safetensors file: the header is not a JSON object", path);
    locate shape;
    scan_structure(hdr, n, n, &shape);
    if (shape.max_depth > MAX_JSON_DEPTH) /* a header is 3 deep; jansson would go to 2048 */
        return fs_error_set(err, FS_ERR_INVALID, "%s: invalid JSON header: nesting too deep (more than %d levels)",
                            path, MAX_JSON_DEPTH);
    json_error_t je;
    json_t *root = json_loadb(hdr, n, JSON_REJECT_DUPLICATES, &je);
    if (!root && json_error_code(&je) == json_error_duplicate_key) return duplicate_key(path, hdr, n, &je, err);
    if (!root)
        return fs_error_set(err, FS_ERR_INVALID, "%s: invalid JSON header: %s at byte %d of the header", path,
                            je.text, je.position);
    int rc = FS_OK;
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        rc = !strcmp(name, METADATA_KEY) ? parse_metadata(&st->tb, v, path, err)
                                         : parse_tensor(&st->tb, name, v, path, err);
        if (rc) break;
    }
    json_decref(root);
    return rc;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(entry *const *)a)->t.name, (*(entry *const *)b)->t.name);
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const meta_kv *)a)->key, ((const meta_kv *)b)->key);
}

static int cmp_begin(const void *a, const void *b) {
    const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
    return x->begin != y->begin ? (x->begin < y->begin ? -1 : 1) : (x->end > y->end) - (x->end < y->end);
}

/* qsort and bsearch must not see the NULL of an empty array. */
static void sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *)) {
    if (n > 1) qsort(base, n, size, cmp);
}

/* Checks the spans against the data area and each other, the names for
 * duplicates, and points each tensor at its (aligned) data. */
static int validate(fs_safetensors *st, fs_error *err) {
    const char *path = st->path;
    table *tb = &st->tb;
    uint64_t max_end = 0;
    for (size_t i = 0; i < tb->n; i++)
        if (tb->e[i].end > max_end) max_end = tb->e[i].end;
    if (max_end > st->data_size)
        return fs_error_set(err, FS_ERR_INVALID,
                    "%s: truncated: header says %llu bytes of data but the file has %zu (the file was cut "
                    "short; rewrite it)",
                    path, (unsigned long long)max_end, st->data_size);
    for (size_t i = 0; i < tb->n; i++) {
        const entry *e = &tb->e[i];
        if (e->begin > e->end)
            return fs_error_set(err, FS_ERR_INVALID,
                        "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", path, e->t.name,
                        (unsigned long long)e->begin, (unsigned long long)e->end);
        if (e->end - e->begin != e->t.nbytes)
            return fs_error_set(
                err, FS_ERR_INVALID,
                "%s: tensor '%s': shape and dtype %s need %zu bytes but data_offsets [%llu, %llu] span %llu",
                path, e->t.name, fs_safetensors_dtype_name(e->t.dtype), e->t.nbytes,
                (unsigned long long)e->begin, (unsigned long long)e->end,
                (unsigned long long)(e->end - e->begin));
    }
    if ((st->by_name = malloc((tb->n ? tb->n : 1) * sizeof *st->by_name)) == NULL)
        return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < tb->n; i++) st->by_name[i] = &tb->e[i];
    sort(st->by_name, tb->n, sizeof *st->by_name, cmp_begin);
    const entry *reach = NULL; /* the non-empty span ending furthest so far */
    for (size_t i = 0; i < tb->n; i++) {
        const entry *e = st->by_name[i];
        if (e->begin == e->end) continue;
        if (reach && e->begin < reach->end)
            return fs_error_set(err, FS_ERR_INVALID, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap",
                        path, reach->t.name, (unsigned long long)reach->begin, (unsigned long long)reach->end,
                        e->t.name, (unsigned long long)e->begin, (unsigned long long)e->end);
        if (!reach || e->end > reach->end) reach = e;
    }
    sort(st->by_name, tb->n, sizeof *st->by_name, cmp_name);
    for (size_t i = 1; i < tb->n; i++)
        if (strcmp(st->by_name[i - 1]->t.name, st->by_name[i]->t.name) == 0)
            return fs_error_set(err, FS_ERR_INVALID, "%s: duplicate tensor name '%s'", path, st->by_name[i]->t.name);
    sort(tb->meta, tb->nmeta, sizeof *tb->meta, cmp_meta);
    for (size_t i = 1; i < tb->nmeta; i++)
        if (strcmp(tb->meta[i - 1].key, tb->meta[i].key) == 0)
            return fs_error_set(err, FS_ERR_INVALID, "%s: duplicate __metadata__ key '%s'", path, tb->meta[i].key);
    for (size_t i = 0; i < tb->n; i++) {
        entry *e = &tb->e[i];
        e->t.data = st->data + e->begin;
        /* Typed access needs natural alignment, which a foreign writer need
         * not give (nor do we, after an odd-sized tensor). */
        if (e->begin % fs_safetensors_dtype_size(e->t.dtype) == 0) continue;
        if (e->t.nbytes == 0) {
            e->t.data = st->data; /* nothing to read there, but still aligned */
            continue;
        }
        if ((e->copy = malloc(e->t.nbytes)) == NULL)
            return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", path);
        memcpy(e->copy, st->data + e->begin, e->t.nbytes);
        e->t.data = e->copy;
    }
    return 0;
}

static int read_full(int fd, void *buf, size_t n, const char *path, fs_error *err) {
    unsigned char *b = buf;
    while (n) {
        ssize_t r = read(fd, b, n < IO_CHUNK ? n : IO_CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return fs_error_set(err, FS_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
        if (r == 0) return fs_error_set(err, FS_ERR_IO, "%s: cannot read: the file shrank while being read", path);
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The 8-byte header length n against a file of `size` bytes; `next` is its
 * ninth byte (0 when there is none). */
static int check_header_length(const char *path, size_t size, uint64_t n, int next, fs_error *err) {
    if (n > size - 8) {
        /* a plausible length and JSON's opening brace: a real header, cut short */
        if (n <= MAX_HEADER_LEN && next == OPENERS[0])
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: truncated: header length is %llu but the file has only %zu bytes after it (the "
                                "file was cut short; rewrite it)",
                                path, (unsigned long long)n, size - 8);
        return fs_error_set(err, FS_ERR_INVALID, "%s: not a safetensors file: header length %llu exceeds file size %zu",
                            path, (unsigned long long)n, size);
    }
    if (n < 2 || n > MAX_HEADER_LEN)
        return fs_error_set(err, FS_ERR_INVALID, "%s: not a safetensors file: header length %llu is outside [2, %llu]",
                            path, (unsigned long long)n, (unsigned long long)MAX_HEADER_LEN);
    return FS_OK;
}

static int too_short(const char *path, size_t size, fs_error *err) {
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: not a safetensors file: only %zu bytes, too short for the 8-byte header length", path, size);
}

static uint64_t le64(const unsigned char *b) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | b[i];
    return n;
}

/* The header (n bytes at hdr) parsed and the data area (already in
 * st->data) checked against it. */
static int finish_load(fs_safetensors *st, const char *hdr, size_t n, fs_error *err) {
    int rc = parse_header(st, hdr, n, err);
    return rc ? rc : validate(st, err);
}

static int alloc_data(fs_safetensors *st, size_t size, fs_error *err) {
    st->data = malloc(st->data_size ? st->data_size : 1);
    return st->data ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory loading %zu bytes", st->path, size);
}

static int load(fs_safetensors *st, int fd, size_t size, fs_error *err) {
    const char *path = st->path;
    unsigned char lenb[9] = {0};
    if (size < 8) return too_short(path, size, err);
    if (read_full(fd, lenb, size > 8 ? 9 : 8, path, err)) return FS_ERR_IO;
    uint64_t n = le64(lenb);
    int rc = check_header_length(path, size, n, size > 8 ? lenb[8] : 0, err);
    if (rc) return rc;
    char *hdr = malloc((size_t)n);
    st->data_size = size - 8 - (size_t)n;
    if (!hdr) return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory loading %zu bytes", path, size);
    hdr[0] = (char)lenb[8];
    if ((rc = alloc_data(st, size, err)) || (rc = read_full(fd, hdr + 1, (size_t)n - 1, path, err)) ||
        (rc = read_full(fd, st->data, st->data_size, path, err))) {
        free(hdr);
        return rc;
    }
    rc = finish_load(st, hdr, (size_t)n, err);
    free(hdr);
    return rc;
}

static fs_safetensors *new_reader(const char *path) {
    fs_safetensors *st = calloc(1, sizeof *st);
    if (st && !(st->path = strdup(path))) {
        free(st);
        return NULL;
    }
    return st;
}

int fs_safetensors_open(fs_safetensors **out, const char *path, fs_error *err) {
    *out = NULL;
    fs_safetensors *st = new_reader(path);
    if (!st) return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", path);
    /* non-blocking: opening a FIFO for reading would wait for a writer */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC), rc;
    struct stat sb;
    if (fd < 0) {
        int e = errno;
        rc = e == ENOENT ? fs_error_set(err, FS_ERR_NOT_FOUND, "%s: no such file (check the checkpoint path)", path)
                         : fs_error_set(err, FS_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    } else if (fstat(fd, &sb) != 0) {
        rc = fs_error_set(err, FS_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        rc = fs_error_set(err, FS_ERR_IO, "%s: not a regular file", path);
    } else {
        rc = load(st, fd, (size_t)sb.st_size, err);
    }
    if (fd >= 0) close(fd);
    if (rc) fs_safetensors_close(st);
    else *out = st;
    return rc;
}

int fs_safetensors_open_memory(fs_safetensors **out, const char *name, const void *bytes, size_t size,
                               fs_error *err) {
    *out = NULL;
    fs_safetensors *st = new_reader(name);
    if (!st) return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", name);
    const unsigned char *b = bytes;
    int rc = size < 8 ? too_short(name, size, err) : FS_OK;
    uint64_t n = rc ? 0 : le64(b);
    if (!rc) rc = check_header_length(name, size, n, size > 8 ? b[8] : 0, err);
    if (!rc) {
        st->data_size = size - 8 - (size_t)n;
        rc = alloc_data(st, size, err);
    }
    if (!rc) {
        memcpy(st->data, b + 8 + n, st->data_size);
        rc = finish_load(st, (const char *)b + 8, (size_t)n, err);
    }
    if (rc) fs_safetensors_close(st);
    else *out = st;
    return rc;
}

void fs_safetensors_close(fs_safetensors *st) {
    if (!st) return;
    table_free(&st->tb);
    free(st->by_name);
    free(st->data);
    free(st->path);
    free(st);
}

size_t fs_safetensors_count(const fs_safetensors *st) { return st->tb.n; }

const fs_st_tensor *fs_safetensors_at(const fs_safetensors *st, size_t i) {
    return i < st->tb.n ? &st->tb.e[i].t : NULL;
}

const fs_st_tensor *fs_safetensors_find(const fs_safetensors *st, const char *name) {
    entry key, *kp = &key;
    key.t.name = name;
    entry **hit = st->tb.n ? bsearch(&kp, st->by_name, st->tb.n, sizeof *st->by_name, cmp_name) : NULL;
    return hit ? &(*hit)->t : NULL;
}

const char *fs_safetensors_metadata(const fs_safetensors *st, const char *key) {
    meta_kv k = {(char *)key, NULL};
    const meta_kv *hit = st->tb.nmeta ? bsearch(&k, st->tb.meta, st->tb.nmeta, sizeof k, cmp_meta) : NULL;
    return hit ? hit->value : NULL;
}

const char *fs_safetensors_path(const fs_safetensors *st) { return st->path; }

/* ---------------------------------------------------------------- writer */

struct fs_safetensors_writer {
    table tb; /* e[i].t.data is the caller's; meta in the order first set */
};

int fs_safetensors_writer_create(fs_safetensors_writer **out, fs_error *err) {
    *out = calloc(1, sizeof **out);
    return *out ? 0 : fs_error_set(err, FS_ERR_NOMEM, "safetensors writer: out of memory");
}

void fs_safetensors_writer_destroy(fs_safetensors_writer *w) {
    if (!w) return;
    table_free(&w->tb);
    free(w);
}

/* Text we write must read back: our reader (and Python's) want UTF-8. */
static int check_text(const char *s, const char *what, fs_error *err) {
    if (!s) return fs_error_set(err, FS_ERR_INVALID, "safetensors writer: %s is NULL", what);
    size_t n = strlen(s), bad = utf8_check((const unsigned char *)s, n);
    if (bad < n)
        return fs_error_set(err, FS_ERR_INVALID, "safetensors writer: %s '%s' is not valid UTF-8 (byte %zu)", what, s,
                    bad);
    return 0;
}

int fs_safetensors_writer_add(fs_safetensors_writer *w, const char *name, int32_t dtype, int32_t ndim,
                              const size_t *shape, const void *data, fs_error *err) {
    table *tb = &w->tb;
    entry e;
    memset(&e, 0, sizeof e);
    if (check_text(name, "tensor name", err)) return FS_ERR_INVALID;
    if (name[0] == '\0' || strcmp(name, METADATA_KEY) == 0)
        return fs_error_set(err, FS_ERR_INVALID, "safetensors writer: '%s' cannot be a tensor name", name);
    for (size_t i = 0; i < tb->n; i++)
        if (strcmp(tb->e[i].t.name, name) == 0)
            return fs_error_set(err, FS_ERR_INVALID, "safetensors writer: tensor '%s' added twice", name);
    if (!fs_safetensors_dtype_name(dtype))
        return fs_error_set(err, FS_ERR_INVALID, "safetensors writer: tensor '%s': unknown dtype %d", name,
                    (int)dtype);
    if (ndim < 0 || ndim > MAX_DIMS || (ndim > 0 && !shape))
        return fs_error_set(err, FS_ERR_INVALID, "safetensors writer: tensor '%s': ndim %d is outside 0..8", name,
                    (int)ndim);
    e.t.nbytes = fs_safetensors_dtype_size(dtype);
    for (int32_t i = 0; i < ndim; i++) {
        if (mul_overflows(e.t.nbytes, shape[i], &e.t.nbytes))
            return fs_error_set(err, FS_ERR_INVALID, "safetensors writer: tensor '%s': shape is too large", name);
        e.t.shape[i] = shape[i];
    }
    if (!data && e.t.nbytes)
        return fs_error_set(err, FS_ERR_INVALID, "safetensors writer: tensor '%s': data is NULL", name);
    e.t.dtype = dtype;
    e.t.ndim = ndim;
    e.t.data = data;
    if (grow((void **)&tb->e, &tb->cap, tb->n + 1, sizeof *tb->e) || !(e.t.name = strdup(name)))
        return fs_error_set(err, FS_ERR_NOMEM, "safetensors writer: out of memory");
    tb->e[tb->n++] = e;
    return 0;
}

/* Setting a key again replaces its value, like assigning to a dict. */
int fs_safetensors_writer_metadata(fs_safetensors_writer *w, const char *key, const char *value,
                                   fs_error *err) {
    table *tb = &w->tb;
    if (check_text(key, "metadata key", err) || check_text(value, "metadata value", err))
        return FS_ERR_INVALID;
    meta_kv kv = {NULL, strdup(value)};
    size_t i = 0;
    while (i < tb->nmeta && strcmp(tb->meta[i].key, key) != 0) i++;
    if (kv.value && i < tb->nmeta) {
        free(tb->meta[i].value);
        tb->meta[i].value = kv.value;
        return 0;
    }
    if (!kv.value || !(kv.key = strdup(key)) ||
        grow((void **)&tb->meta, &tb->meta_cap, tb->nmeta + 1, sizeof *tb->meta)) {
        free(kv.key);
        free(kv.value);
        return fs_error_set(err, FS_ERR_NOMEM, "safetensors writer: out of memory");
    }
    tb->meta[tb->nmeta++] = kv;
    return 0;
}

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom; /* sticky, checked once at the end */
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom || (b->oom = grow((void **)&b->p, &b->cap, b->len + n, 1)) != 0) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_size(sbuf *b, size_t v) {
    char tmp[32];
    sb_put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%zu", v));
}

/* Non-ASCII UTF-8 goes through as is, which JSON allows. */
static void sb_json_string(sbuf *b, const char *s) {
    static const char from[] = "\"\\\n\t\r", to[] = "\"\\ntr";
    sb_puts(b, "\"");
    for (; *s; s++) {
        const char *hit = strchr(from, *s);
        char esc[8] = {'\\', hit ? to[hit - from] : 0};
        if (hit) sb_put(b, esc, 2);
        else if ((unsigned char)*s < 0x20)
            sb_put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", (unsigned)*s));
        else sb_put(b, s, 1);
    }
    sb_puts(b, "\"");
}

/* Tensors are packed back to back with no gaps: the reference reader
 * rejects a data area the spans do not cover exactly. So a tensor is
 * aligned only when those before it are multiples of its element size
 * (true for all-F32 checkpoints); our reader copies it otherwise. */
static int build_header(const table *tb, sbuf *b) {
    size_t off = 0;
    sb_puts(b, "{");
    for (size_t i = 0; i < tb->n; i++) {
        const fs_st_tensor *t = &tb->e[i].t;
        sb_puts(b, i ? "," : "");
        sb_json_string(b, t->name);
        sb_puts(b, ":{\"dtype\":\"");
        sb_puts(b, fs_safetensors_dtype_name(t->dtype));
        sb_puts(b, "\",\"shape\":[");
        for (int32_t d = 0; d < t->ndim; d++) {
            sb_puts(b, d ? "," : "");
            sb_size(b, t->shape[d]);
        }
        sb_puts(b, "],\"data_offsets\":[");
        sb_size(b, off);
        sb_puts(b, ",");
        sb_size(b, off += t->nbytes);
        sb_puts(b, "]}");
    }
    for (size_t i = 0; i < tb->nmeta; i++) {
        sb_puts(b, i ? "," : tb->n ? ",\"" METADATA_KEY "\":{" : "\"" METADATA_KEY "\":{");
        sb_json_string(b, tb->meta[i].key);
        sb_puts(b, ":");
        sb_json_string(b, tb->meta[i].value);
    }
    sb_puts(b, tb->nmeta ? "}}" : "}");
    while ((8 + b->len) % 8) sb_puts(b, " "); /* so the data area starts 8-aligned */
    return b->oom ? -1 : 0;
}

/* The file's bytes as parts (the length, the header, each tensor) into
 * PATH.tmp.PID (files.h); *tmp NULL: committed at once. */
static int write_file(fs_safetensors_writer *w, const char *path, char **tmp, fs_error *err) {
    sbuf hdr = {NULL, 0, 0, 0};
    const void **parts = malloc((w->tb.n + 2) * sizeof *parts);
    size_t *lens = malloc((w->tb.n + 2) * sizeof *lens);
    if (!parts || !lens || build_header(&w->tb, &hdr)) {
        free(parts);
        free(lens);
        free(hdr.p);
        return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory building the header", path);
    }
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)hdr.len >> (8 * i));
    parts[0] = lenb;
    lens[0] = 8;
    parts[1] = hdr.p;
    lens[1] = hdr.len;
    for (size_t i = 0; i < w->tb.n; i++) {
        parts[i + 2] = w->tb.e[i].t.data;
        lens[i + 2] = w->tb.e[i].t.nbytes;
    }
    int rc = tmp ? fs_file_write_temp(path, parts, lens, w->tb.n + 2, tmp, err)
                 : fs_file_write_atomic(path, parts, lens, w->tb.n + 2, err);
    free(parts);
    free(lens);
    free(hdr.p);
    return rc;
}

int fs_safetensors_writer_write(fs_safetensors_writer *w, const char *path, fs_error *err) {
    return write_file(w, path, NULL, err);
}

int fs_safetensors_writer_write_temp(fs_safetensors_writer *w, const char *path, char **tmp, fs_error *err) {
    return write_file(w, path, tmp, err);
}
