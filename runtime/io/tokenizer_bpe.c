/* tokenizer_bpe.c — GPT-2's byte-level BPE: files, encoding (see
 * tokenizer_bpe.h). JSON files are read and written with jansson. */
#include "io/tokenizer_bpe.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/host.h"
#include "io/files.h"
#include "io/strmap.h"
#include "io/unicode_classes.h"

/* Pieces at most this long are remembered with their tokens. */
#define CACHE_PIECE_MAX 256
/* Remembered pieces before the cache starts afresh (bounds its memory). */
#define CACHE_ENTRIES_MAX ((size_t)1 << 20)
#define N_PRINTABLE 188 /* bytes that stand for themselves in GPT-2's map */

typedef struct added_token {
    char *content;
    size_t len;
    int32_t id;
    int special;
} added_token;

struct fs_bpe {
    size_t n_vocab;  /* max id + 1 */
    char **text;     /* (n_vocab) the token as files write it (byte-level characters), NULL for a hole */
    char **bytes;    /* (n_vocab) what it stands for */
    uint32_t *len;   /* (n_vocab) */
    size_t cap;
    fs_strmap by_text;     /* text -> id */
    fs_u64map merges;      /* left << 32 | right -> rank << 32 | merged id */
    uint32_t *merge_pairs; /* (2 n_merges) in rank order */
    size_t n_merges;
    int32_t byte_tok[256];
    added_token *added;
    size_t n_added;
    int add_prefix_space, use_regex, ignore_merges;
    uint64_t identity;
    /* encoding state */
    fs_strmap cache;  /* piece bytes -> offset << 24 | count into pool */
    fs_tokens pool;
    fs_tokens scratch; /* one piece's symbols */
    int32_t *prev, *next;
    struct heap_entry *heap;
    size_t heap_n, work_cap;
};

/* ---------------------------------------------------------------- bytes <-> characters */

static int printable(unsigned b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); }

uint32_t fs_bpe_byte_char(unsigned b) {
    if (printable(b)) return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++) n += !printable(x);
    return 256 + n;
}

uint32_t fs_bpe_byte_id(unsigned b) {
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++) n += printable(x) == printable(b);
    return printable(b) ? n : N_PRINTABLE + n;
}

/* The byte a code point stands for, or -1. */
static int char_byte(uint32_t cp) {
    if (cp < 256) return printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 256 - N_PRINTABLE) return -1;
    unsigned k = cp - 256;
    for (unsigned b = 0; b < 256; b++)
        if (!printable(b) && k-- == 0) return (int)b;
    return -1;
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000)
        return o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3F)), o[2] = (char)(0x80 | (cp & 0x3F)), 3;
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)), o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes the code point at s[i] (strict UTF-8); invalid bytes are one
 * byte each, code point UINT32_MAX. */
static uint32_t cp_at(const unsigned char *s, size_t n, size_t i, size_t *len) {
    unsigned c = s[i];
    if (c < 0x80) return *len = 1, c;
    size_t k = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    *len = 1;
    if (!k || n - i < k) return UINT32_MAX;
    uint32_t cp = c & (0x7F >> k);
    for (size_t j = 1; j < k; j++) {
        unsigned b = s[i + j];
        if (b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xBF)) return UINT32_MAX;
        cp = cp << 6 | (b & 0x3F);
    }
    *len = k;
    return cp;
}

/* The token's bytes from its text: every character through the map, or,
 * when one is not a byte's character, the text itself (as the tokenizers
 * package's ByteLevel decoder does). */
static int text_to_bytes(const char *text, size_t tlen, char **out, size_t *olen) {
    char *b = malloc(tlen + 1);
    if (!b) return -1;
    size_t n = 0;
    for (size_t i = 0; i < tlen;) {
        size_t k;
        uint32_t cp = cp_at((const unsigned char *)text, tlen, i, &k);
        int v = cp == UINT32_MAX ? -1 : char_byte(cp);
        if (v < 0) {
            memcpy(b, text, tlen);
            n = tlen;
            break;
        }
        b[n++] = (char)v;
        i += k;
    }
    b[n] = '\0';
    *out = b;
    *olen = n;
    return 0;
}

static char *bytes_to_text(const char *bytes, size_t n) {
    char *t = malloc(2 * n + 1), *o = t;
    if (!t) return NULL;
    for (size_t i = 0; i < n; i++) o += put_utf8(o, fs_bpe_byte_char((unsigned char)bytes[i]));
    *o = '\0';
    return t;
}

/* ---------------------------------------------------------------- pre-tokenisation */

static const unsigned char ASCII_CLASS[128] = {
    ['\t'] = FS_UC_S, ['\n'] = FS_UC_S, ['\v'] = FS_UC_S, ['\f'] = FS_UC_S, ['\r'] = FS_UC_S, [' '] = FS_UC_S,
    ['0'] = FS_UC_N,  ['1'] = FS_UC_N,  ['2'] = FS_UC_N,  ['3'] = FS_UC_N,  ['4'] = FS_UC_N,  ['5'] = FS_UC_N,
    ['6'] = FS_UC_N,  ['7'] = FS_UC_N,  ['8'] = FS_UC_N,  ['9'] = FS_UC_N,
#define L1(c) [c] = FS_UC_L
    L1('A'), L1('B'), L1('C'), L1('D'), L1('E'), L1('F'), L1('G'), L1('H'), L1('I'), L1('J'), L1('K'), L1('L'),
    L1('M'), L1('N'), L1('O'), L1('P'), L1('Q'), L1('R'), L1('S'), L1('T'), L1('U'), L1('V'), L1('W'), L1('X'),
    L1('Y'), L1('Z'), L1('a'), L1('b'), L1('c'), L1('d'), L1('e'), L1('f'), L1('g'), L1('h'), L1('i'), L1('j'),
    L1('k'), L1('l'), L1('m'), L1('n'), L1('o'), L1('p'), L1('q'), L1('r'), L1('s'), L1('t'), L1('u'), L1('v'),
    L1('w'), L1('x'), L1('y'), L1('z'),
#undef L1
};

int fs_unicode_class(uint32_t cp) {
    if (cp < 128) return ASCII_CLASS[cp];
    size_t lo = 0, hi = fs_unicode_n_ranges;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp > fs_unicode_ranges[mid].hi)
            lo = mid + 1;
        else if (cp < fs_unicode_ranges[mid].lo)
            hi = mid;
        else
            return fs_unicode_ranges[mid].cls;
    }
    return FS_UC_O;
}

static int class_at(const unsigned char *s, size_t n, size_t i, size_t *len) {
    if (s[i] < 0x80) return *len = 1, ASCII_CLASS[s[i]];
    uint32_t cp = cp_at(s, n, i, len);
    return cp == UINT32_MAX ? FS_UC_O : fs_unicode_class(cp);
}

/* The end of the run of characters of class cls from i. */
static size_t run_end(const unsigned char *s, size_t n, size_t i, int cls) {
    size_t len;
    while (i < n && class_at(s, n, i, &len) == cls) i += len;
    return i;
}

size_t fs_bpe_pretoken_end(const char *text, size_t n, size_t i) {
    const unsigned char *s = (const unsigned char *)text;
    size_t len;
    /* 's|'t|'re|'ve|'m|'ll|'d */
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char c = s[i + 1];
        if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 2;
        if (i + 2 < n && ((c == 'r' && s[i + 2] == 'e') || (c == 'v' && s[i + 2] == 'e') || (c == 'l' && s[i + 2] == 'l')))
            return i + 3;
    }
    /* ' ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class */
    if (s[i] == ' ' && i + 1 < n) {
        int c1 = class_at(s, n, i + 1, &len);
        if (c1 != FS_UC_S) return run_end(s, n, i + 1, c1);
    }
    int c0 = class_at(s, n, i, &len);
    if (c0 != FS_UC_S) return run_end(s, n, i, c0);
    /* '\s+(?!\S)|\s+': white space, leaving its last character to the word after it */
    size_t e = i, last = i;
    while (e < n && class_at(s, n, e, &len) == FS_UC_S) last = e, e += len;
    if (e == n || last == i) return e;
    return last;
}

/* ---------------------------------------------------------------- building */

static int fail_nomem(fs_error *err) { return fs_error_set(err, FS_ERR_NOMEM, "tokenizer: out of memory"); }

static fs_bpe *bpe_new(void) {
    fs_bpe *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    fs_strmap_init(&b->by_text);
    fs_strmap_init(&b->cache);
    fs_u64map_init(&b->merges);
    b->use_regex = 1;
    return b;
}

void fs_bpe_destroy(fs_bpe *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n_vocab; i++) {
        free(b->text[i]);
        free(b->bytes[i]);
    }
    free(b->text);
    free(b->bytes);
    free(b->len);
    for (size_t i = 0; i < b->n_added; i++) free(b->added[i].content);
    free(b->added);
    free(b->merge_pairs);
    fs_strmap_release(&b->by_text);
    fs_strmap_release(&b->cache);
    fs_u64map_release(&b->merges);
    fs_tokens_release(&b->pool);
    fs_tokens_release(&b->scratch);
    free(b->prev);
    free(b->next);
    free(b->heap);
    free(b);
}

/* Token `id` written as `text`; `raw` tokens (added ones) stand for their
 * text's own bytes. */
static int add_token(fs_bpe *b, int64_t id, const char *text, size_t tlen, int raw, const char *src, fs_error *err) {
    if (id < 0 || id >= (int64_t)1 << 30)
        return fs_error_set(err, FS_ERR_INVALID, "%s: token '%s' has id %lld, outside [0, 2^30)", src, text,
                            (long long)id);
    if ((size_t)id >= b->cap) {
        size_t ncap = b->cap ? b->cap : 1024;
        while (ncap <= (size_t)id) ncap *= 2;
        char **nt = realloc(b->text, ncap * sizeof *nt);
        if (nt) b->text = nt;
        char **nb = realloc(b->bytes, ncap * sizeof *nb);
        if (nb) b->bytes = nb;
        uint32_t *nl = realloc(b->len, ncap * sizeof *nl);
        if (nl) b->len = nl;
        if (!nt || !nb || !nl) return fail_nomem(err);
        memset(b->text + b->cap, 0, (ncap - b->cap) * sizeof *nt);
        memset(b->bytes + b->cap, 0, (ncap - b->cap) * sizeof *nb);
        memset(b->len + b->cap, 0, (ncap - b->cap) * sizeof *nl);
        b->cap = ncap;
    }
    if (b->text[id])
        return strcmp(b->text[id], text) == 0
                   ? FS_OK
                   : fs_error_set(err, FS_ERR_INVALID, "%s: id %lld is both '%s' and '%s'", src, (long long)id,
                                  b->text[id], text);
    int added;
    uint64_t *v = fs_strmap_put(&b->by_text, text, tlen, &added);
    if (!v) return fail_nomem(err);
    if (!added && *v != (uint64_t)id)
        return fs_error_set(err, FS_ERR_INVALID, "%s: token '%s' has two ids, %llu and %lld", src, text,
                            (unsigned long long)*v, (long long)id);
    *v = (uint64_t)id;
    size_t blen;
    if (!(b->text[id] = strndup(text, tlen))) return fail_nomem(err);
    if (raw) {
        b->bytes[id] = strndup(text, tlen);
        blen = tlen;
        if (!b->bytes[id]) return fail_nomem(err);
    } else if (text_to_bytes(text, tlen, &b->bytes[id], &blen)) {
        return fail_nomem(err);
    }
    b->len[id] = (uint32_t)blen;
    if ((size_t)id >= b->n_vocab) b->n_vocab = (size_t)id + 1;
    return FS_OK;
}

static int add_special(fs_bpe *b, int64_t id, const char *content, int special, const char *src, fs_error *err) {
    uint64_t *have = fs_strmap_find(&b->by_text, content, strlen(content));
    if (have) id = (int64_t)*have; /* already in the vocabulary: that id */
    int rc = add_token(b, id, content, strlen(content), 1, src, err);
    if (rc) return rc;
    free(b->bytes[id]); /* an added token always stands for its own text */
    if (!(b->bytes[id] = strdup(content))) return fail_nomem(err);
    b->len[id] = (uint32_t)strlen(content);
    added_token *na = realloc(b->added, (b->n_added + 1) * sizeof *na);
    if (!na) return fail_nomem(err);
    b->added = na;
    added_token *t = &b->added[b->n_added];
    if (!(t->content = strdup(content))) return fail_nomem(err);
    t->len = strlen(content);
    t->id = (int32_t)id;
    t->special = special;
    b->n_added++;
    return FS_OK;
}

static int add_merge(fs_bpe *b, const char *left, size_t llen, const char *right, size_t rlen, const char *src,
                     fs_error *err) {
    uint64_t *l = fs_strmap_find(&b->by_text, left, llen), *r = fs_strmap_find(&b->by_text, right, rlen);
    char *both = malloc(llen + rlen + 1);
    if (!both) return fail_nomem(err);
    memcpy(both, left, llen);
    memcpy(both + llen, right, rlen);
    uint64_t *m = fs_strmap_find(&b->by_text, both, llen + rlen);
    free(both);
    if (!l || !r || !m)
        return fs_error_set(err, FS_ERR_INVALID, "%s: merge %zu '%.*s %.*s': '%.*s%s' is not in the vocabulary", src,
                            b->n_merges + 1, (int)llen, left, (int)rlen, right,
                            (int)(!l ? llen : !r ? rlen : llen), !l ? left : !r ? right : left, !l || !r ? "" : "...");
    uint32_t *np = realloc(b->merge_pairs, 2 * (b->n_merges + 1) * sizeof *np);
    if (!np) return fail_nomem(err);
    b->merge_pairs = np;
    np[2 * b->n_merges] = (uint32_t)*l;
    np[2 * b->n_merges + 1] = (uint32_t)*r;
    uint64_t *v = fs_u64map_put(&b->merges, *l << 32 | *r, NULL);
    if (!v) return fail_nomem(err);
    *v = (uint64_t)b->n_merges << 32 | *m; /* a repeated pair: the later rank, as the tokenizers package */
    b->n_merges++;
    return FS_OK;
}

/* Every byte's character must be a token; then the fingerprint. */
static int finish(fs_bpe *b, const char *src, fs_error *err) {
    for (unsigned v = 0; v < 256; v++) {
        char t[4];
        size_t n = put_utf8(t, fs_bpe_byte_char(v));
        uint64_t *id = fs_strmap_find(&b->by_text, t, n);
        if (!id)
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: byte 0x%02X (written '%.*s') is not in the vocabulary: not a byte-level BPE "
                                "(GPT-2's kind), which fsrun needs",
                                src, v, (int)n, t);
        b->byte_tok[v] = (int32_t)*id;
    }
    uint64_t h = fs_hash64("fastserve-bpe-1", 15, 0);
    int flags[3] = {b->add_prefix_space, b->use_regex, b->ignore_merges};
    h = fs_hash64(flags, sizeof flags, h);
    for (size_t i = 0; i < b->n_vocab; i++)
        if (b->text[i]) h = fs_hash64(b->text[i], strlen(b->text[i]) + 1, h ^ i);
    h = fs_hash64(b->merge_pairs, 2 * b->n_merges * sizeof *b->merge_pairs, h);
    for (size_t i = 0; i < b->n_added; i++) h = fs_hash64(&b->added[i].id, sizeof b->added[i].id, h);
    b->identity = h;
    return FS_OK;
}

int fs_bpe_build(fs_bpe **out, const uint32_t *pairs, size_t n_merges, const char *const *specials, size_t n_specials,
                 fs_error *err) {
    *out = NULL;
    fs_bpe *b = bpe_new();
    if (!b) return fail_nomem(err);
    int rc = FS_OK;
    const char *src = "learned tokenizer";
    for (unsigned v = 0; v < 256 && !rc; v++) {
        char t[4], byte = (char)v;
        size_t n = put_utf8(t, fs_bpe_byte_char(v));
        (void)byte;
        rc = add_token(b, fs_bpe_byte_id(v), t, n, 0, src, err);
    }
    for (size_t i = 0; i < n_merges && !rc; i++) {
        uint32_t l = pairs[2 * i], r = pairs[2 * i + 1];
        if (l >= 256 + i || r >= 256 + i) {
            rc = fs_error_set(err, FS_ERR_INVALID, "%s: merge %zu uses an id not made yet", src, i);
            break;
        }
        size_t n = strlen(b->text[l]) + strlen(b->text[r]);
        char *t = malloc(n + 1);
        if (!t) {
            rc = fail_nomem(err);
            break;
        }
        snprintf(t, n + 1, "%s%s", b->text[l], b->text[r]);
        rc = add_token(b, 256 + (int64_t)i, t, n, 0, src, err);
        if (!rc) rc = add_merge(b, b->text[l], strlen(b->text[l]), b->text[r], strlen(b->text[r]), src, err);
        free(t);
    }
    for (size_t i = 0; i < n_specials && !rc; i++) rc = add_special(b, (int64_t)b->n_vocab, specials[i], 1, src, err);
    if (!rc) rc = finish(b, src, err);
    if (rc) {
        fs_bpe_destroy(b);
        return rc;
    }
    *out = b;
    return FS_OK;
}

/* ---------------------------------------------------------------- files */

/* A JSON value that must be null, absent, false or "" (an option fsrun does not implement). */
static int must_be_off(const json_t *v, const char *path, const char *what, fs_error *err) {
    if (!v || json_is_null(v) || json_is_false(v) || (json_is_string(v) && !*json_string_value(v))) return FS_OK;
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    int rc = fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: %s = %s is not supported (fsrun implements GPT-2's byte-level BPE)",
                          path, what, text ? text : "?");
    free(text);
    return rc;
}

static int bool_of(const json_t *obj, const char *key, int dflt) {
    const json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int read_pre_tokenizer(fs_bpe *b, const json_t *root, const char *path, fs_error *err) {
    const json_t *pre = json_object_get(root, "pre_tokenizer");
    const char *type = json_string_value(json_object_get(pre, "type"));
    if (type && !strcmp(type, "Sequence")) {
        const json_t *list = json_object_get(pre, "pretokenizers");
        if (json_array_size(list) == 1) {
            pre = json_array_get(list, 0);
            type = json_string_value(json_object_get(pre, "type"));
        }
    }
    if (!type || strcmp(type, "ByteLevel"))
        return fs_error_set(err, FS_ERR_UNSUPPORTED,
                            "%s: pre_tokenizer is %s, not ByteLevel: fsrun implements GPT-2's byte-level BPE only", path,
                            type ? type : "missing");
    b->add_prefix_space = bool_of(pre, "add_prefix_space", 1);
    b->use_regex = bool_of(pre, "use_regex", 1);
    return FS_OK;
}

static int read_vocab(fs_bpe *b, const json_t *vocab, const char *path, fs_error *err) {
    if (!json_is_object(vocab)) return fs_error_set(err, FS_ERR_INVALID, "%s: the vocabulary is not a JSON object", path);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        if (!json_is_integer(v))
            return fs_error_set(err, FS_ERR_INVALID, "%s: token '%s': its id is not an integer", path, key);
        int rc = add_token(b, json_integer_value(v), key, strlen(key), 0, path, err);
        if (rc) return rc;
    }
    return FS_OK;
}

/* "left right" (a line of merges.txt, or tokenizers' older JSON form). */
static int merge_line(fs_bpe *b, const char *line, size_t n, const char *path, size_t lineno, fs_error *err) {
    const char *sp = memchr(line, ' ', n);
    if (!sp || sp == line || sp + 1 == line + n || memchr(sp + 1, ' ', (size_t)(line + n - sp - 1)))
        return fs_error_set(err, FS_ERR_INVALID, "%s: merge %zu '%.*s' is not two tokens separated by one space", path,
                            lineno, (int)n, line);
    return add_merge(b, line, (size_t)(sp - line), sp + 1, (size_t)(line + n - sp - 1), path, err);
}

static int read_merges(fs_bpe *b, const json_t *merges, const char *path, fs_error *err) {
    if (!json_is_array(merges)) return fs_error_set(err, FS_ERR_INVALID, "%s: model.merges is not an array", path);
    size_t i;
    const json_t *m;
    json_array_foreach(merges, i, m) {
        int rc;
        if (json_is_string(m)) {
            rc = merge_line(b, json_string_value(m), json_string_length(m), path, i + 1, err);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) { /* the newer ["left", "right"] form */
            const json_t *l = json_array_get(m, 0), *r = json_array_get(m, 1);
            rc = add_merge(b, json_string_value(l), json_string_length(l), json_string_value(r), json_string_length(r),
                           path, err);
        } else {
            rc = fs_error_set(err, FS_ERR_INVALID, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", path, i + 1);
        }
        if (rc) return rc;
    }
    return FS_OK;
}

static int read_added(fs_bpe *b, const json_t *added, const char *path, fs_error *err) {
    size_t i;
    const json_t *t;
    json_array_foreach(added, i, t) {
        const json_t *id = json_object_get(t, "id"), *content = json_object_get(t, "content");
        if (!json_is_integer(id) || !json_is_string(content))
            return fs_error_set(err, FS_ERR_INVALID, "%s: added_tokens[%zu] lacks an integer id or a content string",
                                path, i);
        static const char *const unsupported[] = {"single_word", "lstrip", "rstrip"};
        for (size_t k = 0; k < 3; k++)
            if (bool_of(t, unsupported[k], 0))
                return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: added token '%s' has %s = true, which fsrun does not "
                                    "implement", path, json_string_value(content), unsupported[k]);
        int rc = add_special(b, json_integer_value(id), json_string_value(content), bool_of(t, "special", 0), path, err);
        if (rc) return rc;
    }
    return FS_OK;
}

static int load_tokenizer_json(fs_bpe *b, const char *path, fs_error *err) {
    json_t *root;
    int rc = fs_json_read(path, &root, err);
    if (rc) return rc;
    const json_t *model = json_object_get(root, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(root) || !json_is_object(model))
        rc = fs_error_set(err, FS_ERR_INVALID, "%s: not a tokenizer.json (no \"model\" object)", path);
    else if (type && strcmp(type, "BPE"))
        rc = fs_error_set(err, FS_ERR_UNSUPPORTED, "%s: model type %s: fsrun implements byte-level BPE only", path, type);
    if (!rc) rc = must_be_off(json_object_get(root, "normalizer"), path, "normalizer", err);
    if (!rc) rc = must_be_off(json_object_get(model, "dropout"), path, "model.dropout", err);
    if (!rc) rc = must_be_off(json_object_get(model, "continuing_subword_prefix"), path, "model.continuing_subword_prefix", err);
    if (!rc) rc = must_be_off(json_object_get(model, "end_of_word_suffix"), path, "model.end_of_word_suffix", err);
    if (!rc) rc = read_pre_tokenizer(b, root, path, err);
    if (!rc) b->ignore_merges = bool_of(model, "ignore_merges", 0);
    if (!rc) rc = read_vocab(b, json_object_get(model, "vocab"), path, err);
    if (!rc) rc = read_merges(b, json_object_get(model, "merges"), path, err);
    if (!rc) rc = read_added(b, json_object_get(root, "added_tokens"), path, err);
    json_decref(root);
    return rc;
}

/* GPT-2's own files: vocab.json and merges.txt ("#version" first line).
 * <|endoftext|>, when in the vocabulary, is a special token, as
 * transformers' GPT2TokenizerFast makes it. */
static int load_vocab_merges(fs_bpe *b, const char *vocab_path, const char *merges_path, fs_error *err) {
    json_t *vocab;
    int rc = fs_json_read(vocab_path, &vocab, err);
    if (rc) return rc;
    rc = read_vocab(b, vocab, vocab_path, err);
    json_decref(vocab);
    b->add_prefix_space = 0;
    char *text;
    size_t len;
    if (!rc) rc = fs_file_read(merges_path, &text, &len, err);
    if (rc) return rc;
    size_t lineno = 0;
    for (char *line = text, *end; !rc && line < text + len; line = end + 1) {
        end = memchr(line, '\n', (size_t)(text + len - line));
        if (!end) end = text + len;
        size_t n = (size_t)(end - line);
        if (n && line[n - 1] == '\r') n--;
        lineno++;
        if (n == 0 || (lineno == 1 && !strncmp(line, "#version", 8))) continue;
        rc = merge_line(b, line, n, merges_path, lineno, err);
    }
    free(text);
    if (!rc && fs_strmap_find(&b->by_text, "<|endoftext|>", 13)) rc = add_special(b, 0, "<|endoftext|>", 1, vocab_path, err);
    return rc;
}

int fs_bpe_load(fs_bpe **out, const char *path, fs_error *err) {
    *out = NULL;
    fs_bpe *b = bpe_new();
    if (!b) return fail_nomem(err);
    size_t n = strlen(path) + 32;
    char *a = malloc(n), *m = malloc(n);
    int rc;
    if (!a || !m) {
        rc = fail_nomem(err);
    } else if (fs_is_file(path) || (!fs_is_dir(path) && access(path, F_OK) == 0)) {
        rc = load_tokenizer_json(b, path, err); /* a FIFO or a device: refused by name there */
    } else if (fs_is_dir(path)) {
        snprintf(a, n, "%s/tokenizer.json", path);
        snprintf(m, n, "%s/vocab.json", path);
        if (fs_is_file(a)) {
            rc = load_tokenizer_json(b, a, err);
        } else if (fs_is_file(m)) {
            snprintf(a, n, "%s/merges.txt", path);
            rc = load_vocab_merges(b, m, a, err);
        } else {
            rc = fs_error_set(err, FS_ERR_NOT_FOUND, "%s: a directory without tokenizer.json or vocab.json + merges.txt",
                              path);
        }
    } else {
        snprintf(a, n, "%s-vocab.json", path);
        snprintf(m, n, "%s-merges.txt", path);
        if (fs_is_file(a) && fs_is_file(m))
            rc = load_vocab_merges(b, a, m, err);
        else
            rc = fs_error_set(err, FS_ERR_NOT_FOUND,
                              "%s: no such file (a tokenizer.json, a directory holding one or vocab.json + merges.txt, "
                              "or a prefix P of P-vocab.json and P-merges.txt)",
                              path);
    }
    free(a);
    free(m);
    if (!rc) rc = finish(b, path, err);
    if (rc) {
        fs_bpe_destroy(b);
        return rc;
    }
    *out = b;
    return FS_OK;
}

/* tokenizer.json as the tokenizers package (0.15) writes GPT-2's. */
int fs_bpe_save(const fs_bpe *b, const char *path, fs_error *err) {
    json_t *root = json_object(), *added = json_array(), *vocab = json_object(), *merges = json_array();
    json_t *model = json_object();
    int ok = root && added && vocab && merges && model;
    for (size_t i = 0; ok && i < b->n_added; i++) {
        const added_token *t = &b->added[i];
        ok = !json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)t->id,
                                                     "content", t->content, "single_word", 0, "lstrip", 0, "rstrip", 0,
                                                     "normalized", 0, "special", t->special));
    }
    for (size_t i = 0; ok && i < b->n_vocab; i++)
        if (b->text[i]) ok = !json_object_set_new(vocab, b->text[i], json_integer((json_int_t)i));
    for (size_t i = 0; ok && i < b->n_merges; i++) {
        const char *l = b->text[b->merge_pairs[2 * i]], *r = b->text[b->merge_pairs[2 * i + 1]];
        size_t n = strlen(l) + strlen(r) + 2;
        char *line = malloc(n);
        ok = line != NULL;
        if (ok) snprintf(line, n, "%s %s", l, r);
        ok = ok && !json_array_append_new(merges, json_string(line));
        free(line);
    }
    json_t *byte_level = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", b->add_prefix_space,
                                   "trim_offsets", 1, "use_regex", b->use_regex);
    ok = ok && byte_level &&
         !json_object_set_new(model, "type", json_string("BPE")) &&
         !json_object_set_new(model, "dropout", json_null()) && !json_object_set_new(model, "unk_token", json_null()) &&
         !json_object_set_new(model, "continuing_subword_prefix", json_string("")) &&
         !json_object_set_new(model, "end_of_word_suffix", json_string("")) &&
         !json_object_set_new(model, "fuse_unk", json_false()) &&
         !json_object_set_new(model, "byte_fallback", json_false()) &&
         (!b->ignore_merges || !json_object_set_new(model, "ignore_merges", json_true())) &&
         !json_object_set(model, "vocab", vocab) && !json_object_set(model, "merges", merges) &&
         !json_object_set_new(root, "version", json_string("1.0")) &&
         !json_object_set_new(root, "truncation", json_null()) && !json_object_set_new(root, "padding", json_null()) &&
         !json_object_set(root, "added_tokens", added) && !json_object_set_new(root, "normalizer", json_null()) &&
         !json_object_set(root, "pre_tokenizer", byte_level) &&
         !json_object_set(root, "post_processor", byte_level) && !json_object_set(root, "decoder", byte_level) &&
         !json_object_set(root, "model", model);
    char *text = ok ? json_dumps(root, JSON_INDENT(1)) : NULL;
    int rc = text ? fs_file_write_text(path, text, err) : fail_nomem(err);
    free(text);
    json_decref(byte_level);
    json_decref(root);
    json_decref(added);
    json_decref(vocab);
    json_decref(merges);
    json_decref(model);
    return rc;
}

/* ---------------------------------------------------------------- encoding */

size_t fs_bpe_vocab_size(const fs_bpe *b) { return b->n_vocab; }
uint64_t fs_bpe_identity(const fs_bpe *b) { return b->identity; }

int32_t fs_bpe_eos(const fs_bpe *b) {
    for (size_t i = 0; i < b->n_added; i++)
        if (!strcmp(b->added[i].content, "<|endoftext|>")) return b->added[i].id;
    for (size_t i = 0; i < b->n_added; i++)
        if (b->added[i].special) return b->added[i].id;
    return -1;
}

const char *fs_bpe_token(const fs_bpe *b, int32_t id, size_t *len) {
    if (id < 0 || (size_t)id >= b->n_vocab || !b->bytes[id]) return NULL;
    *len = b->len[id];
    return b->bytes[id];
}

typedef struct heap_entry {
    uint32_t rank, pos, id;
} heap_entry;

static int heap_less(const heap_entry *a, const heap_entry *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(fs_bpe *b, uint32_t pos, int32_t left, int32_t right) {
    uint64_t *m = fs_u64map_find(&b->merges, (uint64_t)(uint32_t)left << 32 | (uint32_t)right);
    if (!m) return;
    heap_entry e = {(uint32_t)(*m >> 32), pos, (uint32_t)*m};
    size_t i = b->heap_n++;
    while (i && heap_less(&e, &b->heap[(i - 1) / 2])) {
        b->heap[i] = b->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    b->heap[i] = e;
}

static heap_entry heap_pop(fs_bpe *b) {
    heap_entry top = b->heap[0], last = b->heap[--b->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= b->heap_n) break;
        if (c + 1 < b->heap_n && heap_less(&b->heap[c + 1], &b->heap[c])) c++;
        if (!heap_less(&b->heap[c], &last)) break;
        b->heap[i] = b->heap[c];
        i = c;
    }
    if (b->heap_n) b->heap[i] = last;
    return top;
}

static int work_reserve(fs_bpe *b, size_t n, fs_error *err) {
    if (n <= b->work_cap) return FS_OK;
    size_t cap = b->work_cap ? b->work_cap : 64;
    while (cap < n) cap *= 2;
    int32_t *p = realloc(b->prev, cap * sizeof *p);
    if (p) b->prev = p;
    int32_t *x = realloc(b->next, cap * sizeof *x);
    if (x) b->next = x;
    /* every pair can be pushed again after each of the n - 1 merges: 3 n bounds the entries alive */
    heap_entry *h = realloc(b->heap, 3 * cap * sizeof *h);
    if (h) b->heap = h;
    int32_t *s = realloc(b->scratch.ids, cap * sizeof *s);
    if (s) b->scratch.ids = s, b->scratch.cap = cap;
    if (!p || !x || !h || !s) return fail_nomem(err);
    b->work_cap = cap;
    return FS_OK;
}

/* The tokens of one pre-token: bytes, then merges by rank (the tokenizers
 * package's order: lowest rank first, ties by position). */
static int bpe_piece(fs_bpe *b, const unsigned char *p, size_t n, fs_tokens *out, fs_error *err) {
    if (b->ignore_merges) {
        char *t = bytes_to_text((const char *)p, n);
        if (!t) return fail_nomem(err);
        uint64_t *id = fs_strmap_find(&b->by_text, t, strlen(t));
        free(t);
        if (id) return fs_tokens_push(out, (int32_t)*id) ? fail_nomem(err) : FS_OK;
    }
    int rc = work_reserve(b, n, err);
    if (rc) return rc;
    int32_t *sym = b->scratch.ids, *prev = b->prev, *next = b->next;
    for (size_t i = 0; i < n; i++) {
        sym[i] = b->byte_tok[p[i]];
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    b->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) heap_push(b, (uint32_t)i, sym[i], sym[i + 1]);
    while (b->heap_n) {
        heap_entry e = heap_pop(b);
        int32_t nx = next[e.pos];
        if (sym[e.pos] < 0 || nx < 0) continue; /* merged away, or nothing on its right any more */
        uint64_t *m = fs_u64map_find(&b->merges, (uint64_t)(uint32_t)sym[e.pos] << 32 | (uint32_t)sym[nx]);
        if (!m || (uint32_t)*m != e.id) continue; /* the pair changed since it was queued */
        sym[e.pos] = (int32_t)e.id;
        sym[nx] = -1;
        next[e.pos] = next[nx];
        if (next[nx] >= 0) prev[next[nx]] = (int32_t)e.pos;
        if (prev[e.pos] >= 0) heap_push(b, (uint32_t)prev[e.pos], sym[prev[e.pos]], sym[e.pos]);
        if (next[e.pos] >= 0) heap_push(b, e.pos, sym[e.pos], sym[next[e.pos]]);
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        if (fs_tokens_push(out, sym[i])) return fail_nomem(err);
    return FS_OK;
}

static int encode_piece(fs_bpe *b, const unsigned char *p, size_t n, fs_tokens *out, fs_error *err) {
    if (n > CACHE_PIECE_MAX) return bpe_piece(b, p, n, out, err);
    uint64_t *hit = fs_strmap_find(&b->cache, p, n);
    if (hit) {
        size_t off = (size_t)(*hit >> 24), cnt = (size_t)(*hit & 0xFFFFFF);
        for (size_t i = 0; i < cnt; i++)
            if (fs_tokens_push(out, b->pool.ids[off + i])) return fail_nomem(err);
        return FS_OK;
    }
    size_t first = out->n;
    int rc = bpe_piece(b, p, n, out, err);
    if (rc) return rc;
    if (b->cache.n >= CACHE_ENTRIES_MAX) { /* start afresh rather than grow without bound */
        fs_strmap_clear(&b->cache);
        b->pool.n = 0;
    }
    size_t off = b->pool.n;
    for (size_t i = first; i < out->n; i++)
        if (fs_tokens_push(&b->pool, out->ids[i])) return fail_nomem(err);
    uint64_t *v = fs_strmap_put(&b->cache, p, n, NULL);
    if (!v) return fail_nomem(err);
    *v = (uint64_t)off << 24 | (out->n - first);
    return FS_OK;
}

/* A span without added tokens: pre-tokens, each through BPE. */
static int encode_span(fs_bpe *b, const char *s, size_t n, fs_tokens *out, fs_error *err) {
    if (n == 0) return FS_OK;
    char *copy = NULL;
    if (b->add_prefix_space && s[0] != ' ') {
        if (!(copy = malloc(n + 1))) return fail_nomem(err);
        copy[0] = ' ';
        memcpy(copy + 1, s, n);
        s = copy;
        n++;
    }
    int rc = FS_OK;
    for (size_t i = 0; i < n && !rc;) {
        size_t e = b->use_regex ? fs_bpe_pretoken_end(s, n, i) : n;
        rc = encode_piece(b, (const unsigned char *)s + i, e - i, out, err);
        i = e;
    }
    free(copy);
    return rc;
}

/* Where added token t next occurs at or after pos, or SIZE_MAX. */
static size_t find_added(const added_token *t, const char *text, size_t len, size_t pos) {
    const char *hit = t->len ? memmem(text + pos, len - pos, t->content, t->len) : NULL;
    return hit ? (size_t)(hit - text) : SIZE_MAX;
}

int fs_bpe_encode(fs_bpe *b, const char *text, size_t len, fs_tokens *out, fs_error *err) {
    size_t *next_at = b->n_added ? malloc(b->n_added * sizeof *next_at) : NULL;
    if (b->n_added && !next_at) return fail_nomem(err);
    for (size_t k = 0; k < b->n_added; k++) next_at[k] = find_added(&b->added[k], text, len, 0);
    int rc = FS_OK;
    /* added tokens first: the leftmost occurrence, the longest there */
    for (size_t pos = 0; pos < len && !rc;) {
        size_t best = len, best_len = 0;
        int32_t best_id = -1;
        for (size_t k = 0; k < b->n_added; k++) {
            const added_token *t = &b->added[k];
            if (next_at[k] < pos) next_at[k] = find_added(t, text, len, pos);
            if (next_at[k] != SIZE_MAX && (next_at[k] < best || (next_at[k] == best && t->len > best_len)))
                best = next_at[k], best_len = t->len, best_id = t->id;
        }
        rc = encode_span(b, text + pos, best - pos, out, err);
        if (!rc && best_id >= 0) rc = fs_tokens_push(out, best_id) ? fail_nomem(err) : FS_OK;
        pos = best_id >= 0 ? best + best_len : len;
    }
    free(next_at);
    return rc;
}
