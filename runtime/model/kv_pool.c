/* kv_pool.c — see kv_pool.h. */
#include "model/kv_pool.h"

#include <stdlib.h>
#include <string.h>

#include "core/backend_handle.h"
#include "core/host.h"
#include "core/rng.h"
#include "model/model_internal.h"

#define NONE (-1)

struct fs_kv_pool {
    size_t L, kv_block, n, n_swap, block_bytes;
    char **layer;        /* (L) each layer's blocks */
    size_t *layer_bytes; /* (L) bytes of one block in layer l */
    unsigned *refs;      /* (n) */
    /* free blocks, least recently released first (a doubly linked list through prev/next) */
    int32_t *prev, *next, head, tail;
    size_t n_free;
    /* published blocks: chained hash table through `chain`, keyed by hash */
    uint8_t *published;
    uint64_t *hash, *parent;
    int32_t *tokens;     /* (n, kv_block) */
    int32_t *bucket, *chain;
    size_t n_buckets;    /* a power of two */
    /* the swap area: slot s holds every layer's part of one block, in layer order */
    char *swap;
    int32_t *swap_stack; /* free slots */
    size_t swap_top;
    /* where the bytes live: NULL, host memory; else the backend's device
     * memory for the blocks and its pinned host memory for the swap area,
     * every copy queued on its compute stream (the stream the step that
     * writes and reads the blocks runs on, so stream order is the only
     * synchronisation they need) */
    fs_backend_handle *bk;
    fs_error fault; /* the first copy the backend refused (fs_kv_pool_status) */
};

/* ---- the bytes: host memory, or a backend's ---- */

static void *bytes_alloc(fs_kv_pool *p, size_t n, int32_t mem) {
    if (!p->bk) return fs_alloc(n);
    void *ptr = NULL;
    fs_error err = {0};
    return p->bk->vt->alloc(p->bk->self, &ptr, n, mem, &err) ? NULL : ptr;
}

static void bytes_free(fs_kv_pool *p, void *ptr, int32_t mem) {
    if (!p->bk) fs_free(ptr);
    else if (ptr) p->bk->vt->free(p->bk->self, ptr, mem);
}

static int bytes_zero(fs_kv_pool *p, void *ptr, size_t n) {
    if (!p->bk) {
        memset(ptr, 0, n);
        return FS_OK;
    }
    return p->bk->vt->memset(p->bk->self, NULL, ptr, 0, n, &p->fault);
}

/* dst = src, n bytes: kind says which side is the device's (queued, not
 * waited for: the swap area is pinned) */
static void bytes_copy(fs_kv_pool *p, void *dst, const void *src, size_t n, int32_t kind) {
    if (!p->bk) {
        memcpy(dst, src, n);
        return;
    }
    fs_error err = {0};
    if (p->bk->vt->copy(p->bk->self, NULL, dst, src, n, kind, &err) && !p->fault.status) p->fault = err;
}

size_t fs_kv_block_bytes(const fs_model *m, size_t kv_block) {
    size_t total = 0, L = fs_model_held(m)->n_layers;
    for (size_t l = 0; l < L; l++) {
        void *self;
        const fs_attention_vtable *vt = fs_model_attention(m, l, &self);
        size_t b;
        ATTN_CALL(m, l, "paged_block_bytes", b = vt->paged_block_bytes(self, kv_block));
        total += (b + 63) & ~(size_t)63;
    }
    return total;
}

static void list_remove(fs_kv_pool *p, int32_t b) {
    int32_t pr = p->prev[b], nx = p->next[b];
    if (pr != NONE) p->next[pr] = nx;
    else p->head = nx;
    if (nx != NONE) p->prev[nx] = pr;
    else p->tail = pr;
    p->prev[b] = p->next[b] = NONE;
    p->n_free--;
}

static void list_append(fs_kv_pool *p, int32_t b) {
    p->prev[b] = p->tail;
    p->next[b] = NONE;
    if (p->tail != NONE) p->next[p->tail] = b;
    else p->head = b;
    p->tail = b;
    p->n_free++;
}

static int alloc_tables(fs_kv_pool *p) {
    size_t n = p->n;
    p->n_buckets = 1;
    while (p->n_buckets < 2 * n) p->n_buckets *= 2;
    p->layer = calloc(p->L, sizeof *p->layer);
    p->layer_bytes = calloc(p->L, sizeof *p->layer_bytes);
    p->refs = calloc(n, sizeof *p->refs);
    p->prev = malloc(n * sizeof *p->prev);
    p->next = malloc(n * sizeof *p->next);
    p->published = calloc(n, 1);
    p->hash = calloc(n, sizeof *p->hash);
    p->parent = calloc(n, sizeof *p->parent);
    p->tokens = calloc(n * p->kv_block, sizeof *p->tokens);
    p->chain = malloc(n * sizeof *p->chain);
    p->bucket = malloc(p->n_buckets * sizeof *p->bucket);
    p->swap_stack = malloc((p->n_swap ? p->n_swap : 1) * sizeof *p->swap_stack);
    return p->layer && p->layer_bytes && p->refs && p->prev && p->next && p->published && p->hash && p->parent &&
           p->tokens && p->chain && p->bucket && p->swap_stack;
}

int fs_kv_pool_create(fs_kv_pool **out, const fs_model *m, size_t kv_block, size_t n_blocks, size_t n_swap,
                      fs_error *err) {
    return fs_kv_pool_create_on(out, m, kv_block, n_blocks, n_swap, NULL, err);
}

int fs_kv_pool_create_on(fs_kv_pool **out, const fs_model *m, size_t kv_block, size_t n_blocks, size_t n_swap,
                         fs_backend_handle *backend, fs_error *err) {
    *out = NULL;
    if (kv_block == 0 || n_blocks == 0 || n_blocks > INT32_MAX || n_swap > INT32_MAX)
        return fs_error_set(err, FS_ERR_INVALID, "KV pool: %zu blocks of %zu tokens", n_blocks, kv_block);
    fs_kv_pool *p = calloc(1, sizeof *p);
    if (!p) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    p->L = fs_model_held(m)->n_layers;
    p->kv_block = kv_block;
    p->n = n_blocks;
    p->n_swap = n_swap;
    p->bk = backend;
    int ok = alloc_tables(p);
    for (size_t l = 0; ok && l < p->L; l++) {
        void *self;
        const fs_attention_vtable *vt = fs_model_attention(m, l, &self);
        size_t bytes;
        ATTN_CALL(m, l, "paged_block_bytes", bytes = vt->paged_block_bytes(self, kv_block));
        p->layer_bytes[l] = (bytes + 63) & ~(size_t)63;
        p->block_bytes += p->layer_bytes[l];
        /* written once here, as vLLM and llama.cpp take their caches whole
         * at start: the pool's memory is claimed when the server starts (a
         * machine without it fails now, not under load), and the process's
         * RSS stays flat afterwards, whichever blocks the LRU order hands
         * out (it walks the whole pool before reusing a released block) */
        ok = (p->layer[l] = bytes_alloc(p, n_blocks * p->layer_bytes[l], FS_MEM_DEVICE)) != NULL;
        if (ok) ok = bytes_zero(p, p->layer[l], n_blocks * p->layer_bytes[l]) == FS_OK;
    }
    if (ok && n_swap) ok = (p->swap = bytes_alloc(p, n_swap * p->block_bytes, FS_MEM_HOST_PINNED)) != NULL;
    if (!ok) {
        size_t bb = p->block_bytes;
        fs_kv_pool_destroy(p);
        return fs_error_set(err, FS_ERR_NOMEM, "out of %s memory for a KV pool of %zu blocks (%zu bytes each)%s",
                            backend && backend->device.type != FS_DEVICE_CPU ? "device" : "host", n_blocks, bb,
                            n_swap ? " and its swap area" : "");
    }
    p->head = p->tail = NONE;
    for (size_t b = 0; b < n_blocks; b++) list_append(p, (int32_t)b);
    for (size_t i = 0; i < p->n_buckets; i++) p->bucket[i] = NONE;
    for (size_t s = 0; s < n_swap; s++) p->swap_stack[s] = (int32_t)(n_swap - 1 - s);
    p->swap_top = n_swap;
    *out = p;
    return FS_OK;
}

void fs_kv_pool_destroy(fs_kv_pool *p) {
    if (!p) return;
    for (size_t l = 0; p->layer && l < p->L; l++) bytes_free(p, p->layer[l], FS_MEM_DEVICE);
    free(p->layer);
    free(p->layer_bytes);
    free(p->refs);
    free(p->prev);
    free(p->next);
    free(p->published);
    free(p->hash);
    free(p->parent);
    free(p->tokens);
    free(p->chain);
    free(p->bucket);
    bytes_free(p, p->swap, FS_MEM_HOST_PINNED);
    free(p->swap_stack);
    free(p);
}

size_t fs_kv_pool_kv_block(const fs_kv_pool *p) { return p->kv_block; }
size_t fs_kv_pool_blocks(const fs_kv_pool *p) { return p->n; }
size_t fs_kv_pool_free(const fs_kv_pool *p) { return p->n_free; }
size_t fs_kv_pool_swap_blocks(const fs_kv_pool *p) { return p->n_swap; }
size_t fs_kv_pool_swap_free(const fs_kv_pool *p) { return p->swap_top; }
void *fs_kv_pool_layer(const fs_kv_pool *p, size_t layer) { return p->layer[layer]; }
size_t fs_kv_pool_layer_bytes(const fs_kv_pool *p, size_t layer) { return p->layer_bytes[layer]; }

static void unpublish(fs_kv_pool *p, int32_t b) {
    if (!p->published[b]) return;
    int32_t *at = &p->bucket[p->hash[b] & (p->n_buckets - 1)];
    while (*at != b) at = &p->chain[*at];
    *at = p->chain[b];
    p->published[b] = 0;
}

int32_t fs_kv_pool_alloc(fs_kv_pool *p) {
    int32_t b = p->head;
    if (b == NONE) return NONE;
    list_remove(p, b);
    unpublish(p, b); /* evicted: its content is about to change */
    p->refs[b] = 1;
    return b;
}

void fs_kv_pool_ref(fs_kv_pool *p, int32_t b) {
    if (p->refs[b]++ == 0) list_remove(p, b);
}

void fs_kv_pool_unref(fs_kv_pool *p, int32_t b) {
    if (--p->refs[b] == 0) list_append(p, b);
}

unsigned fs_kv_pool_refs(const fs_kv_pool *p, int32_t b) { return p->refs[b]; }

static void copy_block(fs_kv_pool *p, int32_t dst, int32_t src) {
    for (size_t l = 0; l < p->L; l++)
        bytes_copy(p, p->layer[l] + (size_t)dst * p->layer_bytes[l], p->layer[l] + (size_t)src * p->layer_bytes[l],
                   p->layer_bytes[l], FS_COPY_DEVICE_TO_DEVICE);
}

int fs_kv_pool_status(const fs_kv_pool *p, fs_error *err) {
    if (!p->fault.status) return FS_OK;
    return fs_error_set(err, p->fault.status, "KV pool: a block copy failed: %s", p->fault.message);
}

int fs_kv_pool_cow(fs_kv_pool *p, int32_t *b, fs_error *err) {
    if (p->refs[*b] <= 1) return FS_OK;
    int32_t c = fs_kv_pool_alloc(p);
    if (c == NONE) return fs_error_set(err, FS_ERR_BUSY, "KV pool full: no block for a copy-on-write");
    copy_block(p, c, *b);
    fs_kv_pool_unref(p, *b);
    *b = c;
    return FS_OK;
}

uint64_t fs_kv_hash(uint64_t parent, const int32_t *tokens, size_t n) {
    uint64_t h = fs_rng_mix(parent, n);
    for (size_t i = 0; i < n; i++) h = fs_rng_mix(h, (uint32_t)tokens[i]);
    return h;
}

int32_t fs_kv_pool_lookup(fs_kv_pool *p, uint64_t hash, uint64_t parent, const int32_t *tokens) {
    for (int32_t b = p->bucket[hash & (p->n_buckets - 1)]; b != NONE; b = p->chain[b])
        if (p->hash[b] == hash && p->parent[b] == parent &&
            memcmp(p->tokens + (size_t)b * p->kv_block, tokens, p->kv_block * sizeof *tokens) == 0) {
            fs_kv_pool_ref(p, b);
            return b;
        }
    return NONE;
}

void fs_kv_pool_publish(fs_kv_pool *p, int32_t b, uint64_t hash, uint64_t parent, const int32_t *tokens) {
    if (p->published[b]) return;
    for (int32_t o = p->bucket[hash & (p->n_buckets - 1)]; o != NONE; o = p->chain[o])
        if (p->hash[o] == hash && p->parent[o] == parent) return;
    p->published[b] = 1;
    p->hash[b] = hash;
    p->parent[b] = parent;
    memcpy(p->tokens + (size_t)b * p->kv_block, tokens, p->kv_block * sizeof *tokens);
    int32_t *head = &p->bucket[hash & (p->n_buckets - 1)];
    p->chain[b] = *head;
    *head = b;
}

int32_t fs_kv_pool_swap_out(fs_kv_pool *p, int32_t b) {
    if (p->swap_top == 0) return NONE;
    int32_t s = p->swap_stack[--p->swap_top];
    char *dst = p->swap + (size_t)s * p->block_bytes;
    for (size_t l = 0; l < p->L; l++) {
        bytes_copy(p, dst, p->layer[l] + (size_t)b * p->layer_bytes[l], p->layer_bytes[l], FS_COPY_DEVICE_TO_HOST);
        dst += p->layer_bytes[l];
    }
    fs_kv_pool_unref(p, b);
    return s;
}

int32_t fs_kv_pool_swap_in(fs_kv_pool *p, int32_t s) {
    int32_t b = fs_kv_pool_alloc(p);
    if (b == NONE) return NONE;
    const char *src = p->swap + (size_t)s * p->block_bytes;
    for (size_t l = 0; l < p->L; l++) {
        bytes_copy(p, p->layer[l] + (size_t)b * p->layer_bytes[l], src, p->layer_bytes[l], FS_COPY_HOST_TO_DEVICE);
        src += p->layer_bytes[l];
    }
    fs_kv_pool_swap_drop(p, s);
    return b;
}

void fs_kv_pool_swap_drop(fs_kv_pool *p, int32_t s) { p->swap_stack[p->swap_top++] = s; }
