/* bpe_train.c — learning byte-level BPE merges from a corpus (see
 * bpe_train.h).
 *
 * The corpus is cut into pre-tokens exactly as encoding cuts it, and each
 * distinct pre-token is counted once ("words"). Every adjacent pair of
 * symbols in every word is counted, weighted by the word's count, and each
 * pair remembers the words it occurs in. A merge takes the most frequent
 * pair (ties: the smaller pair of ids, as the tokenizers package's
 * trainer), rewrites only those words, and adjusts the counts of the pairs
 * around each rewrite; a max-heap with lazy updates finds the next pair. */
#include "io/bpe_train.h"

#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "io/strmap.h"
#include "io/tokenizer_bpe.h"

typedef struct word {
    uint32_t *sym; /* into the symbol pool */
    size_t n;
    int64_t count;
} word;

typedef struct pair_info {
    uint32_t a, b;
    int64_t count;
    uint32_t *words; /* words it occurs in (a word may repeat; checked when merging) */
    size_t n_words, cap_words;
} pair_info;

typedef struct heap_item {
    int64_t count;
    uint32_t a, b;
} heap_item;

typedef struct trainer {
    word *words;
    size_t n_words;
    uint32_t *pool;
    fs_u64map index; /* a << 32 | b -> pair index */
    pair_info *pairs;
    size_t n_pairs, cap_pairs;
    heap_item *heap;
    size_t heap_n, heap_cap;
} trainer;

static int heap_before(const heap_item *x, const heap_item *y) {
    if (x->count != y->count) return x->count > y->count;
    return x->a != y->a ? x->a < y->a : x->b < y->b;
}

static int heap_push(trainer *t, int64_t count, uint32_t a, uint32_t b) {
    if (t->heap_n == t->heap_cap) {
        size_t cap = t->heap_cap ? 2 * t->heap_cap : 1024;
        heap_item *h = realloc(t->heap, cap * sizeof *h);
        if (!h) return FS_ERR_NOMEM;
        t->heap = h;
        t->heap_cap = cap;
    }
    heap_item e = {count, a, b};
    size_t i = t->heap_n++;
    while (i && heap_before(&e, &t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = e;
    return FS_OK;
}

static heap_item heap_pop(trainer *t) {
    heap_item top = t->heap[0], last = t->heap[--t->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= t->heap_n) break;
        if (c + 1 < t->heap_n && heap_before(&t->heap[c + 1], &t->heap[c])) c++;
        if (!heap_before(&t->heap[c], &last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (t->heap_n) t->heap[i] = last;
    return top;
}

/* The pair (a, b), created with count 0 when new; NULL when out of memory. */
static pair_info *pair_get(trainer *t, uint32_t a, uint32_t b) {
    int added;
    uint64_t *v = fs_u64map_put(&t->index, (uint64_t)a << 32 | b, &added);
    if (!v) return NULL;
    if (added) {
        if (t->n_pairs == t->cap_pairs) {
            size_t cap = t->cap_pairs ? 2 * t->cap_pairs : 4096;
            pair_info *p = realloc(t->pairs, cap * sizeof *p);
            if (!p) return NULL;
            t->pairs = p;
            t->cap_pairs = cap;
        }
        memset(&t->pairs[t->n_pairs], 0, sizeof *t->pairs);
        t->pairs[t->n_pairs].a = a;
        t->pairs[t->n_pairs].b = b;
        *v = t->n_pairs++;
    }
    return &t->pairs[*v];
}

/* Adds delta occurrences of (a, b) in word w. */
static int pair_add(trainer *t, uint32_t a, uint32_t b, int64_t delta, uint32_t w) {
    pair_info *p = pair_get(t, a, b);
    if (!p) return FS_ERR_NOMEM;
    p->count += delta;
    if (delta > 0 && (!p->n_words || p->words[p->n_words - 1] != w)) {
        if (p->n_words == p->cap_words) {
            size_t cap = p->cap_words ? 2 * p->cap_words : 4;
            uint32_t *nw = realloc(p->words, cap * sizeof *nw);
            if (!nw) return FS_ERR_NOMEM;
            p->words = nw;
            p->cap_words = cap;
        }
        p->words[p->n_words++] = w;
    }
    return FS_OK;
}

/* Counts the corpus's pre-tokens (the special tokens cut out first, as
 * encoding does) into distinct words of byte symbols. */
static int count_words(trainer *t, const char *text, size_t len, const char *const *specials, size_t n_specials,
                       fs_error *err) {
    fs_strmap counts;
    fs_strmap_init(&counts);
    int rc = FS_OK;
    for (size_t pos = 0; pos < len && !rc;) {
        size_t end = len, skip = 0;
        for (size_t k = 0; k < n_specials; k++) {
            const char *hit = memmem(text + pos, len - pos, specials[k], strlen(specials[k]));
            if (hit && (size_t)(hit - text) < end) end = (size_t)(hit - text), skip = strlen(specials[k]);
        }
        for (size_t i = pos; i < end && !rc;) {
            size_t e = fs_bpe_pretoken_end(text + pos, end - pos, i - pos) + pos;
            uint64_t *c = fs_strmap_put(&counts, text + i, e - i, NULL);
            if (!c) rc = fs_error_set(err, FS_ERR_NOMEM, "train-tokenizer: out of memory counting words");
            else (*c)++;
            i = e;
        }
        pos = end + skip;
    }
    size_t total = 0;
    for (size_t i = 0; i < counts.cap; i++)
        if (counts.slots[i].hash) total += counts.slots[i].len;
    t->words = calloc(counts.n ? counts.n : 1, sizeof *t->words);
    t->pool = malloc((total ? total : 1) * sizeof *t->pool);
    if (!rc && (!t->words || !t->pool)) rc = fs_error_set(err, FS_ERR_NOMEM, "train-tokenizer: out of memory");
    uint32_t byte_id[256];
    for (unsigned v = 0; v < 256; v++) byte_id[v] = fs_bpe_byte_id(v);
    size_t at = 0;
    for (size_t i = 0; !rc && i < counts.cap; i++) {
        const fs_strmap_slot *s = &counts.slots[i];
        if (!s->hash) continue;
        const unsigned char *k = (const unsigned char *)fs_strmap_key(&counts, s);
        word *w = &t->words[t->n_words++];
        w->sym = t->pool + at;
        w->n = s->len;
        w->count = (int64_t)s->value;
        for (size_t j = 0; j < s->len; j++) w->sym[j] = byte_id[k[j]];
        at += s->len;
    }
    fs_strmap_release(&counts);
    return rc;
}

static int count_pairs(trainer *t, fs_error *err) {
    for (size_t w = 0; w < t->n_words; w++)
        for (size_t i = 0; i + 1 < t->words[w].n; i++)
            if (pair_add(t, t->words[w].sym[i], t->words[w].sym[i + 1], t->words[w].count, (uint32_t)w))
                return fs_error_set(err, FS_ERR_NOMEM, "train-tokenizer: out of memory counting pairs");
    for (size_t i = 0; i < t->n_pairs; i++)
        if (heap_push(t, t->pairs[i].count, t->pairs[i].a, t->pairs[i].b))
            return fs_error_set(err, FS_ERR_NOMEM, "train-tokenizer: out of memory");
    return FS_OK;
}

/* Rewrites (a, b) as id in word w, left to right, adjusting the counts of
 * the pairs around each rewrite; pairs that gained are queued again. */
static int merge_word(trainer *t, uint32_t wi, uint32_t a, uint32_t b, uint32_t id) {
    word *w = &t->words[wi];
    int64_t c = w->count;
    size_t o = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (i + 1 < w->n && w->sym[i] == a && w->sym[i + 1] == b) {
            int rc = pair_add(t, a, b, -c, wi);
            if (!rc && o > 0) rc = pair_add(t, w->sym[o - 1], a, -c, wi);
            if (!rc && o > 0) rc = pair_add(t, w->sym[o - 1], id, c, wi);
            if (!rc && i + 2 < w->n) rc = pair_add(t, b, w->sym[i + 2], -c, wi);
            if (!rc && i + 2 < w->n) rc = pair_add(t, id, w->sym[i + 2], c, wi);
            if (rc) return rc;
            w->sym[o++] = id;
            i++;
        } else {
            w->sym[o++] = w->sym[i];
        }
    }
    w->n = o;
    return FS_OK;
}

/* Queues every pair next to id in the words just rewritten (their counts
 * grew; stale entries are skipped when popped). */
static int requeue(trainer *t, const uint32_t *words, size_t n_words, uint32_t id) {
    for (size_t k = 0; k < n_words; k++) {
        const word *w = &t->words[words[k]];
        for (size_t i = 0; i + 1 < w->n; i++) {
            if (w->sym[i] != id && w->sym[i + 1] != id) continue;
            uint64_t *v = fs_u64map_find(&t->index, (uint64_t)w->sym[i] << 32 | w->sym[i + 1]);
            if (v && heap_push(t, t->pairs[*v].count, w->sym[i], w->sym[i + 1])) return FS_ERR_NOMEM;
        }
    }
    return FS_OK;
}

static void trainer_release(trainer *t) {
    for (size_t i = 0; i < t->n_pairs; i++) free(t->pairs[i].words);
    free(t->pairs);
    free(t->words);
    free(t->pool);
    free(t->heap);
    fs_u64map_release(&t->index);
}

int fs_bpe_train(fs_tokenizer **out, const char *text, size_t len, size_t vocab_size, const char *const *specials,
                 size_t n_specials, size_t min_count, fs_error *err) {
    *out = NULL;
    if (vocab_size < 256 + n_specials)
        return fs_error_set(err, FS_ERR_INVALID, "a byte-level BPE needs at least %zu tokens (256 bytes%s)",
                            256 + n_specials, n_specials ? " and the special tokens" : "");
    size_t want = vocab_size - 256 - n_specials, n_merges = 0;
    trainer t;
    memset(&t, 0, sizeof t);
    fs_u64map_init(&t.index);
    uint32_t *merges = malloc((2 * want + 2) * sizeof *merges);
    int rc = merges ? count_words(&t, text, len, specials, n_specials, err)
                    : fs_error_set(err, FS_ERR_NOMEM, "train-tokenizer: out of memory");
    if (!rc) rc = count_pairs(&t, err);
    while (!rc && n_merges < want && t.heap_n) {
        heap_item top = heap_pop(&t);
        uint64_t *v = fs_u64map_find(&t.index, (uint64_t)top.a << 32 | top.b);
        pair_info *p = &t.pairs[*v];
        if (p->count != top.count) { /* stale: its count changed since it was queued */
            if (p->count > 0 && heap_push(&t, p->count, p->a, p->b)) rc = FS_ERR_NOMEM;
            continue;
        }
        if (p->count < (int64_t)min_count) break;
        uint32_t id = (uint32_t)(256 + n_merges);
        merges[2 * n_merges] = top.a;
        merges[2 * n_merges + 1] = top.b;
        n_merges++;
        /* its word list stays put: merging (a, b) creates pairs with id only */
        uint32_t *words = p->words;
        size_t n_words = p->n_words;
        p->words = NULL;
        p->n_words = p->cap_words = 0;
        for (size_t k = 0; k < n_words && !rc; k++) rc = merge_word(&t, words[k], top.a, top.b, id);
        if (!rc) rc = requeue(&t, words, n_words, id);
        free(words);
        if (rc == FS_ERR_NOMEM) rc = fs_error_set(err, FS_ERR_NOMEM, "train-tokenizer: out of memory");
    }
    trainer_release(&t);
    fs_bpe *b = NULL;
    if (!rc) rc = fs_bpe_build(&b, merges, n_merges, specials, n_specials, err);
    free(merges);
    if (!rc) rc = fs_tokenizer_wrap_bpe(out, b, err);
    return rc;
}
