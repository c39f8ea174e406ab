/* strmap.h — the tokenizer's hash maps: byte strings to 64-bit values
 * (vocabulary, pre-token cache, word counts) and 64-bit keys to 64-bit
 * values (merges by pair). Open addressing with linear probing, a
 * power-of-two table kept at most half full. Keys are copied into an
 * arena owned by the map. */
#ifndef FS_STRMAP_H
#define FS_STRMAP_H

#include <stddef.h>
#include <stdint.h>

/* A 64-bit hash of n bytes (not cryptographic; fast on long inputs, so it
 * also fingerprints whole corpora). */
uint64_t fs_hash64(const void *data, size_t n, uint64_t seed);

typedef struct fs_strmap_slot {
    uint64_t hash; /* 0 = empty */
    size_t key;    /* offset into the arena */
    size_t len;
    uint64_t value;
} fs_strmap_slot;

typedef struct fs_strmap {
    fs_strmap_slot *slots;
    size_t cap, n;
    char *arena;
    size_t arena_len, arena_cap;
} fs_strmap;

void fs_strmap_init(fs_strmap *m);
void fs_strmap_release(fs_strmap *m);
void fs_strmap_clear(fs_strmap *m); /* keeps the memory */
/* The value of key, or NULL. */
uint64_t *fs_strmap_find(const fs_strmap *m, const void *key, size_t len);
/* The value of key, inserted as 0 when absent (*added = 1 then); NULL when
 * out of memory. The pointer is valid until the next insertion. */
uint64_t *fs_strmap_put(fs_strmap *m, const void *key, size_t len, int *added);
/* The key of an occupied slot. */
static inline const char *fs_strmap_key(const fs_strmap *m, const fs_strmap_slot *s) { return m->arena + s->key; }

typedef struct fs_u64map_slot {
    uint64_t key, value;
    int used;
} fs_u64map_slot;

typedef struct fs_u64map {
    fs_u64map_slot *slots;
    size_t cap, n;
} fs_u64map;

void fs_u64map_init(fs_u64map *m);
void fs_u64map_release(fs_u64map *m);
uint64_t *fs_u64map_find(const fs_u64map *m, uint64_t key);
uint64_t *fs_u64map_put(fs_u64map *m, uint64_t key, int *added);

#endif
