/* kv_pool.h — the paged KV cache's blocks (attention.h, "The paged KV
 * cache"): a pool of fixed-size blocks, each holding kv_block consecutive
 * positions of one sequence for every layer, as vLLM's block manager keeps
 * them.
 *
 * A block id covers all layers: layer l's part of block b is
 * paged_block_bytes(kv_block) bytes of its plugin's layout at
 * fs_kv_pool_layer(p, l) + b * fs_kv_pool_layer_bytes(p, l). The pool
 * moves blocks as opaque bytes; what they hold is the plugins' business.
 *
 *   - Reference counts: a block is in use while some sequence's table
 *     names it; a sequence about to write into a block others share copies
 *     it first (fs_kv_pool_cow: copy-on-write).
 *   - Prefix sharing: a full block whose keys and values are final can be
 *     published under the hash of its tokens chained over every token
 *     before it (fs_kv_hash), so a later sequence with the same prefix
 *     takes the block instead of computing it. A released block keeps its
 *     content and stays findable until the pool needs the space (free
 *     blocks are reused least recently released first, as vLLM's evictor
 *     does), so a finished request's system prompt serves the next one.
 *   - Swapping: a preempted sequence's blocks can be copied into a host
 *     swap area of its own size (FastServe's offload) and back.
 *   - On a device (fs_kv_pool_create_on): the blocks are the backend's
 *     device memory, the swap area its pinned host memory, and every copy
 *     (copy-on-write, swap out, swap in) is queued on the backend's
 *     compute stream without waiting: the step that reads and writes the
 *     blocks runs on that stream after them, and the host never touches
 *     the bytes. The bookkeeping (references, hashes, the free list) stays
 *     on the host either way.
 *
 * Not thread-safe: the engine's thread (or one fs_seq) owns a pool. */
#ifndef FS_KV_POOL_H
#define FS_KV_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

struct fs_backend_handle;
typedef struct fs_kv_pool fs_kv_pool;

/* Bytes one block takes over all layers of m (every layer's plugin must
 * have a paged step). */
size_t fs_kv_block_bytes(const fs_model *m, size_t kv_block);

/* n_blocks blocks of kv_block tokens for m's layers, and n_swap blocks of
 * swap area (0: none). */
int fs_kv_pool_create(fs_kv_pool **out, const fs_model *m, size_t kv_block, size_t n_blocks, size_t n_swap,
                      fs_error *err);
/* The same on a backend's device (NULL: host memory, as above). The
 * layers' block sizes are those of m's own (CPU) instances: a plugin's
 * device path keeps the CPU's layout (FS_ATTENTION_CUDA_PAGED). */
int fs_kv_pool_create_on(fs_kv_pool **out, const fs_model *m, size_t kv_block, size_t n_blocks, size_t n_swap,
                         struct fs_backend_handle *backend, fs_error *err);
void fs_kv_pool_destroy(fs_kv_pool *p); /* accepts NULL */
/* FS_OK, or the first block copy the backend refused to queue (a device
 * pool's copies report nothing where they are made; the step checks). */
int fs_kv_pool_status(const fs_kv_pool *p, fs_error *err);

size_t fs_kv_pool_kv_block(const fs_kv_pool *p);
size_t fs_kv_pool_blocks(const fs_kv_pool *p);      /* all of them */
size_t fs_kv_pool_free(const fs_kv_pool *p);        /* not in use (cached content included: it can be evicted) */
size_t fs_kv_pool_swap_blocks(const fs_kv_pool *p); /* the swap area */
size_t fs_kv_pool_swap_free(const fs_kv_pool *p);
void *fs_kv_pool_layer(const fs_kv_pool *p, size_t layer);
size_t fs_kv_pool_layer_bytes(const fs_kv_pool *p, size_t layer);

/* A free block with one reference (its cached content, if any, evicted),
 * or -1 when none is free. */
int32_t fs_kv_pool_alloc(fs_kv_pool *p);
/* One more reference to b (a shared block). */
void fs_kv_pool_ref(fs_kv_pool *p, int32_t b);
/* One reference less; at none the block is free (its content stays
 * findable while published). */
void fs_kv_pool_unref(fs_kv_pool *p, int32_t b);
unsigned fs_kv_pool_refs(const fs_kv_pool *p, int32_t b);
/* Makes *b private before a write: with other references it becomes a
 * fresh copy (this caller's reference moves to it). FS_ERR_BUSY when no
 * block is free. */
int fs_kv_pool_cow(fs_kv_pool *p, int32_t *b, fs_error *err);

/* The chained hash of a full block: its tokens and the hash of the block
 * before it (for the first block, a seed naming the weights). */
uint64_t fs_kv_hash(uint64_t parent, const int32_t *tokens, size_t n);
/* The block published under (hash, parent, tokens), with a new reference,
 * or -1. */
int32_t fs_kv_pool_lookup(fs_kv_pool *p, uint64_t hash, uint64_t parent, const int32_t *tokens);
/* Publishes full block b (kv_block tokens, hash chained from parent); a
 * block already published under the hash keeps it. */
void fs_kv_pool_publish(fs_kv_pool *p, int32_t b, uint64_t hash, uint64_t parent, const int32_t *tokens);

/* Copies block b into a free swap slot and drops this reference to b;
 * returns the slot, or -1 when the swap area is full (b untouched). */
int32_t fs_kv_pool_swap_out(fs_kv_pool *p, int32_t b);
/* A fresh block (one reference) holding swap slot s's content; the slot is
 * freed. -1 when no block is free (the slot untouched). */
int32_t fs_kv_pool_swap_in(fs_kv_pool *p, int32_t s);
void fs_kv_pool_swap_drop(fs_kv_pool *p, int32_t s);

#endif
