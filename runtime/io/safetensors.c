/* safetensors.c — reader and atomic writer for .safetensors checkpoints.
 *
 * The reader loads the header and the data area into separate buffers, so
 * the data area starts malloc-aligned whatever the header length; a tensor
 * whose offset is not a multiple of its element size (legal in a foreign
 * file) gets its own aligned copy. The JSON parser is hand-written and
 * strict: exactly the JSON grammar, in strict UTF-8. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
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
    int seen_meta;
};

typedef struct parser {
    const char *s; /* the header, not NUL-terminated */
    size_t n, pos;
    const char *path;
    fs_error *err;
} parser;

static int jfail(parser *p, const char *what) {
    return fs_error_set(p->err, FS_ERR_INVALID, "%s: invalid JSON header: %s at byte %zu of the header", p->path,
                what, p->pos);
}

static int nomem(parser *p) {
    return fs_error_set(p->err, FS_ERR_NOMEM, "%s: out of memory reading the header", p->path);
}

/* The next byte after whitespace, or -1 at the end. */
static int peek(parser *p) {
    while (p->pos < p->n && p->s[p->pos] && strchr(" \t\n\r", p->s[p->pos])) p->pos++;
    return p->pos < p->n ? (unsigned char)p->s[p->pos] : -1;
}

static int at_digit(parser *p) { return p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9'; }

static int digits(parser *p, const char *what) {
    if (!at_digit(p)) return jfail(p, what);
    while (at_digit(p)) p->pos++;
    return 0;
}

static int expect(parser *p, char c, const char *what) {
    if (peek(p) != (unsigned char)c) return jfail(p, what);
    p->pos++;
    return 0;
}

static int hex4(parser *p, unsigned *out) {
    *out = 0;
    for (int i = 0; i < 4; i++, p->pos++) {
        char c = p->pos < p->n ? p->s[p->pos] : '\0';
        const char *hit = c ? strchr("0123456789abcdef", c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c) : NULL;
        if (!hit) return jfail(p, "bad hex digit in \\u escape");
        *out = *out << 4 | (unsigned)(hit - "0123456789abcdef");
    }
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    static const unsigned char lead[] = {0, 0, 0xC0, 0xE0, 0xF0};
    int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    for (int i = n - 1; i > 0; i--, cp >>= 6) o[i] = (char)(0x80 | (cp & 0x3F));
    o[0] = (char)(lead[n] | cp);
    return (size_t)n;
}

/* Decodes one escape; p->pos is just past the '\' and, thanks to the scan
 * in parse_string, still before the closing quote. */
static int unescape(parser *p, char **o) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *hit = p->s[p->pos] ? strchr(from, p->s[p->pos]) : NULL;
    unsigned cp, lo;
    if (hit) {
        p->pos++;
        *(*o)++ = to[hit - from];
        return 0;
    }
    if (p->s[p->pos] != 'u') return jfail(p, "invalid escape in string");
    p->pos++;
    if (hex4(p, &cp)) return FS_ERR_INVALID;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return jfail(p, "lone low surrogate \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (p->n - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return jfail(p, "high surrogate \\u escape without its low half");
        p->pos += 2;
        if (hex4(p, &lo)) return FS_ERR_INVALID;
        if (lo < 0xDC00 || lo > 0xDFFF) return jfail(p, "high surrogate \\u escape without its low half");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    if (cp == 0) return jfail(p, "\\u0000 in a string (names and metadata cannot hold NUL)");
    *o += put_utf8(*o, cp);
    return 0;
}

/* Decodes a JSON string into a NUL-terminated malloc'd copy (out may be
 * NULL to skip). An escape never decodes to more bytes than it spans, so
 * the raw length bounds the buffer. */
static int parse_string(parser *p, char **out) {
    if (expect(p, '"', "expected a string")) return FS_ERR_INVALID;
    size_t end = p->pos;
    while (end < p->n && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->n) return jfail(p, "unterminated string");
    char *buf = malloc(end - p->pos + 1), *o = buf;
    if (!buf) return nomem(p);
    while (p->s[p->pos] != '"') {
        unsigned char c = (unsigned char)p->s[p->pos];
        int rc = 0;
        if (c < 0x20) rc = jfail(p, "raw control character in string (must be escaped)");
        else if (c == '\\') p->pos++, rc = unescape(p, &o);
        else *o++ = (char)c, p->pos++;
        if (rc) {
            free(buf);
            return rc;
        }
    }
    p->pos++;
    *o = '\0';
    if (out) *out = buf;
    else free(buf);
    return 0;
}

/* Any JSON number; *is_uint says whether it is a non-negative integer that
 * fits in *out. */
static int parse_number(parser *p, uint64_t *out, int *is_uint) {
    int neg = peek(p) == '-', overflow = 0, frac = 0;
    uint64_t v = 0;
    p->pos += (size_t)neg;
    if (!at_digit(p)) return jfail(p, "expected a value");
    if (p->s[p->pos] == '0' && (p->pos++, at_digit(p))) return jfail(p, "leading zero in number");
    for (; at_digit(p); p->pos++) {
        unsigned d = (unsigned)(p->s[p->pos] - '0');
        overflow |= v > (UINT64_MAX - d) / 10;
        v = v * 10 + d;
    }
    if (p->pos < p->n && p->s[p->pos] == '.') {
        frac = 1;
        p->pos++;
        if (digits(p, "expected a digit after '.'")) return FS_ERR_INVALID;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        frac = 1;
        p->pos += p->pos + 1 < p->n && (p->s[p->pos + 1] == '+' || p->s[p->pos + 1] == '-') ? 2 : 1;
        if (digits(p, "expected a digit in the exponent")) return FS_ERR_INVALID;
    }
    *out = v;
    *is_uint = !neg && !overflow && !frac;
    return 0;
}

typedef int (*member_fn)(parser *p, char **key, void *ctx);

/* Walks '{' "key": value, ... '}', calling fn with the parser at each value;
 * fn consumes the value and may keep the key (setting *key to NULL). */
static int each_member(parser *p, member_fn fn, void *ctx, const char *what) {
    if (expect(p, '{', what)) return FS_ERR_INVALID;
    if (peek(p) == '}') return p->pos++, 0;
    for (;;) {
        char *key = NULL;
        int rc = parse_string(p, &key);
        if (!rc) rc = expect(p, ':', "expected ':' after a key");
        if (!rc) rc = fn(p, &key, ctx);
        free(key);
        if (rc) return rc;
        if (peek(p) == '}') return p->pos++, 0;
        if (expect(p, ',', "expected ',' or '}' in an object")) return FS_ERR_INVALID;
    }
}

static int skip_value(parser *p, int depth);

static int skip_member(parser *p, char **key, void *ctx) {
    (void)key;
    return skip_value(p, *(int *)ctx + 1);
}

/* Skips a value under a key we do not interpret: unknown keys in a tensor
 * entry are tolerated, as the reference reader does. */
static int skip_value(parser *p, int depth) {
    static const char *const words[] = {"true", "false", "null"};
    uint64_t v;
    int c = peek(p), is_uint;
    if (depth > MAX_JSON_DEPTH) return jfail(p, "nesting too deep");
    if (c == '"') return parse_string(p, NULL);
    if (c == '{') return each_member(p, skip_member, &depth, "expected an object");
    if (c == '[') {
        p->pos++;
        if (peek(p) == ']') return p->pos++, 0;
        for (;;) {
            if (skip_value(p, depth + 1)) return FS_ERR_INVALID;
            if (peek(p) == ']') return p->pos++, 0;
            if (expect(p, ',', "expected ',' or ']' in an array")) return FS_ERR_INVALID;
        }
    }
    for (int i = 0; i < 3; i++) {
        size_t len = strlen(words[i]);
        if (p->n - p->pos >= len && memcmp(p->s + p->pos, words[i], len) == 0) return p->pos += len, 0;
    }
    return parse_number(p, &v, &is_uint);
}

/* '[' uint (',' uint)* ']' with at most `max` values. */
static int parse_uint_array(parser *p, uint64_t *vals, int max, int *count, const char *what) {
    *count = 0;
    if (expect(p, '[', what)) return FS_ERR_INVALID;
    if (peek(p) == ']') return p->pos++, 0;
    for (;;) {
        int is_uint;
        size_t at = p->pos;
        if (*count == max) return jfail(p, what);
        if (parse_number(p, &vals[(*count)++], &is_uint)) return FS_ERR_INVALID;
        if (!is_uint) return p->pos = at, jfail(p, what);
        if (peek(p) == ']') return p->pos++, 0;
        if (expect(p, ',', "expected ',' or ']' in an array")) return FS_ERR_INVALID;
    }
}

typedef struct tensor_fields {
    const char *name;
    size_t dtype; /* index into DTYPES */
    int ndim, noffs, seen[3];
    uint64_t shape[MAX_DIMS], offs[2];
} tensor_fields;

static const char *const TENSOR_KEYS[3] = {"dtype", "shape", "data_offsets"};

static int tensor_member(parser *p, char **key, void *ctx) {
    static const char *const offs_what = "\"data_offsets\" must be [begin, end] (non-negative integers)";
    tensor_fields *f = ctx;
    int k = 0;
    char *dt = NULL;
    while (k < 3 && strcmp(*key, TENSOR_KEYS[k]) != 0) k++;
    if (k == 3) return skip_value(p, 2);
    if (f->seen[k]++) return jfail(p, "duplicate key in a tensor entry");
    if (k == 1)
        return parse_uint_array(p, f->shape, MAX_DIMS, &f->ndim,
                                "\"shape\" must be an array of at most 8 non-negative integers");
    if (k == 2) {
        if (parse_uint_array(p, f->offs, 2, &f->noffs, offs_what)) return FS_ERR_INVALID;
        return f->noffs == 2 ? 0 : jfail(p, offs_what);
    }
    if (parse_string(p, &dt)) return FS_ERR_INVALID;
    f->dtype = 0;
    while (f->dtype < NUM_DTYPES && strcmp(DTYPES[f->dtype].name, dt) != 0) f->dtype++;
    int rc = 0;
    if (f->dtype == NUM_DTYPES)
        rc = fs_error_set(p->err, FS_ERR_INVALID,
                  "%s: tensor '%s': unknown dtype \"%s\" (supported: F32, F16, BF16, I32, F64, I64, U8, I8, "
                  "I16, BOOL)",
                  p->path, f->name, dt);
    free(dt);
    return rc;
}

static int metadata_member(parser *p, char **key, void *ctx) {
    table *tb = ctx;
    meta_kv kv = {*key, NULL};
    if (peek(p) != '"')
        return fs_error_set(p->err, FS_ERR_INVALID, "%s: __metadata__ value for '%s' is not a string", p->path, *key);
    if (parse_string(p, &kv.value)) return FS_ERR_INVALID;
    if (grow((void **)&tb->meta, &tb->meta_cap, tb->nmeta + 1, sizeof *tb->meta)) {
        free(kv.value);
        return nomem(p);
    }
    tb->meta[tb->nmeta++] = kv;
    *key = NULL;
    return 0;
}

static int header_member(parser *p, char **key, void *ctx) {
    fs_safetensors *st = ctx;
    table *tb = &st->tb;
    if (strcmp(*key, METADATA_KEY) == 0) {
        if (st->seen_meta++) return jfail(p, "duplicate \"__metadata__\"");
        return each_member(p, metadata_member, tb, "\"__metadata__\" must be an object of string values");
    }
    tensor_fields f;
    memset(&f, 0, sizeof f);
    f.name = *key;
    int rc = each_member(p, tensor_member, &f, "expected an object {\"dtype\", \"shape\", \"data_offsets\"}");
    if (rc) return rc;
    for (int k = 0; k < 3; k++)
        if (!f.seen[k])
            return fs_error_set(p->err, FS_ERR_INVALID, "%s: tensor '%s': missing \"%s\"", p->path, *key,
                        TENSOR_KEYS[k]);
    if (grow((void **)&tb->e, &tb->cap, tb->n + 1, sizeof *tb->e)) return nomem(p);
    entry *e = &tb->e[tb->n];
    memset(e, 0, sizeof *e);
    e->t.dtype = DTYPES[f.dtype].dtype;
    e->t.ndim = f.ndim;
    e->t.nbytes = DTYPES[f.dtype].size;
    for (int i = 0; i < f.ndim; i++) {
        if (f.shape[i] > SIZE_MAX || mul_overflows(e->t.nbytes, (size_t)f.shape[i], &e->t.nbytes))
            return fs_error_set(p->err, FS_ERR_INVALID, "%s: tensor '%s': shape is too large (its size overflows)",
                        p->path, *key);
        e->t.shape[i] = (size_t)f.shape[i];
    }
    e->begin = f.offs[0];
    e->end = f.offs[1];
    e->t.name = *key;
    *key = NULL;
    tb->n++;
    return 0;
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

static int load(fs_safetensors *st, int fd, fs_error *err) {
    const char *path = st->path;
    struct stat sb;
    unsigned char lenb[8];
    uint64_t n = 0;
    if (fstat(fd, &sb) != 0) return fs_error_set(err, FS_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return fs_error_set(err, FS_ERR_IO, "%s: not a regular file", path);
    size_t size = (size_t)sb.st_size;
    if (size < 8)
        return fs_error_set(err, FS_ERR_INVALID,
                    "%s: not a safetensors file: only %zu bytes, too short for the 8-byte header length",
                    path, size);
    if (read_full(fd, lenb, 8, path, err)) return FS_ERR_IO;
    for (int i = 7; i >= 0; i--) n = (n << 8) | lenb[i];
    if (n > size - 8) {
        char c = 0; /* a plausible length and a '{': a real header, cut short */
        if (n <= MAX_HEADER_LEN && size > 8 && read_full(fd, &c, 1, path, err)) return FS_ERR_IO;
        if (c == '{')
            return fs_error_set(err, FS_ERR_INVALID,
                        "%s: truncated: header length is %llu but the file has only %zu bytes after it (the "
                        "file was cut short; rewrite it)",
                        path, (unsigned long long)n, size - 8);
        return fs_error_set(err, FS_ERR_INVALID,
                    "%s: not a safetensors file: header length %llu exceeds file size %zu", path,
                    (unsigned long long)n, size);
    }
    if (n < 2 || n > MAX_HEADER_LEN)
        return fs_error_set(err, FS_ERR_INVALID,
                    "%s: not a safetensors file: header length %llu is outside [2, %llu]", path,
                    (unsigned long long)n, (unsigned long long)MAX_HEADER_LEN);
    char *hdr = malloc((size_t)n);
    st->data_size = size - 8 - (size_t)n;
    st->data = malloc(st->data_size ? st->data_size : 1);
    if (!hdr || !st->data) {
        free(hdr);
        return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory loading %zu bytes", path, size);
    }
    int rc = read_full(fd, hdr, (size_t)n, path, err);
    if (!rc) rc = read_full(fd, st->data, st->data_size, path, err);
    size_t bad = rc ? 0 : utf8_check((const unsigned char *)hdr, (size_t)n);
    if (!rc && bad < n)
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: invalid JSON header: invalid UTF-8 at byte %zu of the header",
                  path, bad);
    parser p = {hdr, (size_t)n, 0, path, err};
    if (!rc && peek(&p) != '{')
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: not a safetensors file: the header is not a JSON object", path);
    if (!rc) rc = each_member(&p, header_member, st, "expected an object");
    if (!rc && peek(&p) != -1) /* writers pad with spaces, nothing else */
        rc = jfail(&p, "unexpected bytes after the JSON object");
    free(hdr);
    return rc ? rc : validate(st, err);
}

int fs_safetensors_open(fs_safetensors **out, const char *path, fs_error *err) {
    *out = NULL;
    fs_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", path);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc;
    if (fd < 0) {
        int e = errno;
        rc = e == ENOENT ? fs_error_set(err, FS_ERR_NOT_FOUND, "%s: no such file (check the checkpoint path)", path)
                         : fs_error_set(err, FS_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    } else {
        rc = load(st, fd, err);
        close(fd);
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

int fs_safetensors_writer_write(fs_safetensors_writer *w, const char *path, fs_error *err) {
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
    int rc = fs_file_write_atomic(path, parts, lens, w->tb.n + 2, err);
    free(parts);
    free(lens);
    free(hdr.p);
    return rc;
}
