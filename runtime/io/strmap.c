/* strmap.c — see strmap.h. */
#include "io/strmap.h"

#include <stdlib.h>
#include <string.h>

static inline uint64_t mix(uint64_t x) {
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    return x;
}

uint64_t fs_hash64(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t h = seed ^ (0x9E3779B97F4A7C15ull * (n + 1));
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ mix(w)) * 0x9E3779B97F4A7C15ull;
    }
    uint64_t tail = 0;
    for (size_t k = 0; i + k < n; k++) tail |= (uint64_t)p[i + k] << (8 * k);
    return mix(h ^ mix(tail ^ n));
}

/* ---- byte strings ---- */

void fs_strmap_init(fs_strmap *m) { memset(m, 0, sizeof *m); }

void fs_strmap_release(fs_strmap *m) {
    free(m->slots);
    free(m->arena);
    memset(m, 0, sizeof *m);
}

void fs_strmap_clear(fs_strmap *m) {
    if (m->slots) memset(m->slots, 0, m->cap * sizeof *m->slots);
    m->n = 0;
    m->arena_len = 0;
}

static uint64_t key_hash(const void *key, size_t len) {
    uint64_t h = fs_hash64(key, len, 0x5EED);
    return h ? h : 1;
}

static fs_strmap_slot *probe(const fs_strmap *m, uint64_t h, const void *key, size_t len) {
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        fs_strmap_slot *s = &m->slots[i];
        if (!s->hash || (s->hash == h && s->len == len && !memcmp(m->arena + s->key, key, len))) return s;
    }
}

static int strmap_grow(fs_strmap *m) {
    size_t ncap = m->cap ? 2 * m->cap : 64;
    fs_strmap_slot *old = m->slots, *ns = calloc(ncap, sizeof *ns);
    if (!ns) return -1;
    size_t ocap = m->cap;
    m->slots = ns;
    m->cap = ncap;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].hash) *probe(m, old[i].hash, m->arena + old[i].key, old[i].len) = old[i];
    free(old);
    return 0;
}

uint64_t *fs_strmap_find(const fs_strmap *m, const void *key, size_t len) {
    if (!m->cap) return NULL;
    fs_strmap_slot *s = probe(m, key_hash(key, len), key, len);
    return s->hash ? &s->value : NULL;
}

uint64_t *fs_strmap_put(fs_strmap *m, const void *key, size_t len, int *added) {
    if (added) *added = 0;
    if (2 * (m->n + 1) > m->cap && strmap_grow(m)) return NULL;
    uint64_t h = key_hash(key, len);
    fs_strmap_slot *s = probe(m, h, key, len);
    if (s->hash) return &s->value;
    if (m->arena_len + len + 1 > m->arena_cap) {
        size_t ncap = m->arena_cap ? m->arena_cap : 4096;
        while (ncap < m->arena_len + len + 1) ncap *= 2;
        char *na = realloc(m->arena, ncap);
        if (!na) return NULL;
        m->arena = na;
        m->arena_cap = ncap;
    }
    memcpy(m->arena + m->arena_len, key, len);
    m->arena[m->arena_len + len] = '\0';
    s->hash = h;
    s->key = m->arena_len;
    s->len = len;
    s->value = 0;
    m->arena_len += len + 1;
    m->n++;
    if (added) *added = 1;
    return &s->value;
}

/* ---- 64-bit keys ---- */

void fs_u64map_init(fs_u64map *m) { memset(m, 0, sizeof *m); }

void fs_u64map_release(fs_u64map *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static fs_u64map_slot *probe64(const fs_u64map *m, uint64_t key) {
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)mix(key) & mask;; i = (i + 1) & mask)
        if (!m->slots[i].used || m->slots[i].key == key) return &m->slots[i];
}

uint64_t *fs_u64map_find(const fs_u64map *m, uint64_t key) {
    if (!m->cap) return NULL;
    fs_u64map_slot *s = probe64(m, key);
    return s->used ? &s->value : NULL;
}

uint64_t *fs_u64map_put(fs_u64map *m, uint64_t key, int *added) {
    if (added) *added = 0;
    if (2 * (m->n + 1) > m->cap) {
        size_t ncap = m->cap ? 2 * m->cap : 64, ocap = m->cap;
        fs_u64map_slot *old = m->slots, *ns = calloc(ncap, sizeof *ns);
        if (!ns) return NULL;
        m->slots = ns;
        m->cap = ncap;
        for (size_t i = 0; i < ocap; i++)
            if (old[i].used) *probe64(m, old[i].key) = old[i];
        free(old);
    }
    fs_u64map_slot *s = probe64(m, key);
    if (!s->used) {
        s->used = 1;
        s->key = key;
        s->value = 0;
        m->n++;
        if (added) *added = 1;
    }
    return &s->value;
}
