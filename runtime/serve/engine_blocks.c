/* engine_blocks.c — a sequence's KV blocks in the engine's pool (see
 * engine_internal.h and model/kv_pool.h). A table entry is a pool block,
 * a block the plugins let go (bounded caches) or a block in the swap area.
 *
 * Prefix sharing: a sequence that starts from nothing (new, or preempted
 * and to be recomputed) takes every full block of its tokens already in
 * the pool under the same chained hash (seeded by its weights), and
 * publishes its own full blocks as their keys and values become final. At
 * least its last token is computed (its logits are needed): when every
 * block hits, the last one is copied before that token is written
 * (copy-on-write). */
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "serve/engine_internal.h"

size_t eng_blocks_for(const fs_engine *e, size_t tokens) {
    size_t kb = e->cfg.kv_block;
    return (tokens + kb - 1) / kb;
}

size_t eng_blocks_own(const fs_engine *e, const eseq *s) {
    size_t n = 0;
    for (size_t i = 0; i < s->n_table; i++)
        n += s->table[i] >= 0 && fs_kv_pool_refs(e->pool, s->table[i]) == 1;
    return n;
}

size_t eng_blocks_next(const fs_engine *e, const eseq *s, size_t tokens) {
    size_t kb = e->cfg.kv_block, n = eng_blocks_for(e, s->computed + tokens);
    size_t have = s->n_table < n ? s->n_table : n, first = s->computed / kb, need = n - have;
    if (first < have && s->table[first] >= 0 && fs_kv_pool_refs(e->pool, s->table[first]) > 1) need++; /* copy */
    for (size_t i = 0; i < s->n_table; i++) need += s->table[i] <= SWAPPED_SLOT(0);
    return need;
}

static int table_reserve(eseq *s, size_t entries) {
    if (entries <= s->table_cap) return FS_OK;
    size_t cap = s->table_cap ? s->table_cap : 8;
    while (cap < entries) cap *= 2;
    int32_t *t = realloc(s->table, cap * sizeof *t);
    if (!t) return FS_ERR_NOMEM;
    s->table = t;
    s->table_cap = cap;
    return FS_OK;
}

void eng_prefix_lookup(fs_engine *e, eseq *s) {
    size_t kb = e->cfg.kv_block, n = s->n_tokens;
    /* A request that still owes prompt log-probabilities needs the logits
     * of every position from prompt_lp - 1 on, and a shared block skips
     * its positions' computation. Computing them over the shared blocks
     * instead would write their keys and values again (into private
     * copies: the step writes every row it runs), so sharing would save
     * neither time nor memory there: only blocks before those positions are
     * looked up. The request still publishes its blocks for others. */
    size_t upto = eng_wants_prompt_rows(s) ? s->prompt_lp - 1 : n;
    s->chain = s->w->seed;
    s->chained = 0;
    if (!e->cfg.prefix_sharing || s->computed != 0 || s->n_table != 0) return;
    if (table_reserve(s, n / kb)) return; /* no memory for the table: no sharing, nothing lost */
    for (size_t i = 0; (i + 1) * kb <= upto; i++) {
        const int32_t *toks = s->tokens + i * kb;
        uint64_t h = fs_kv_hash(s->chain, toks, kb);
        e->c.prefix_lookups++;
        int32_t b = fs_kv_pool_lookup(e->pool, h, s->chain, toks);
        if (b < 0) break;
        e->c.prefix_hits++;
        s->table[i] = b;
        s->n_table = i + 1;
        s->chain = h;
        s->chained = i + 1;
    }
    size_t hit = s->chained * kb;
    s->computed = hit < n ? hit : n - 1; /* the last token is computed again: its logits */
    if (!s->started) s->cached_prompt = s->computed < s->n_prompt ? s->computed : s->n_prompt;
}

int eng_blocks_place(fs_engine *e, eseq *s, size_t tokens, fs_error *err) {
    size_t kb = e->cfg.kv_block, last = eng_blocks_for(e, s->computed + tokens);
    if (table_reserve(s, last)) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for a block table");
    for (size_t i = s->computed / kb; i < last; i++) {
        if (i < s->n_table) { /* the block the step goes on writing into */
            int rc = fs_kv_pool_cow(e->pool, &s->table[i], err);
            if (rc) return rc;
            continue;
        }
        int32_t b = fs_kv_pool_alloc(e->pool);
        if (b < 0) return fs_error_set(err, FS_ERR_BUSY, "KV pool full");
        s->table[i] = b;
        s->n_table = i + 1;
    }
    return FS_OK;
}

/* Full blocks whose keys and values are final, published under their chain. */
static void publish(fs_engine *e, eseq *s) {
    size_t kb = e->cfg.kv_block;
    if (!e->cfg.prefix_sharing) return;
    while ((s->chained + 1) * kb <= s->computed) {
        size_t i = s->chained;
        const int32_t *toks = s->tokens + i * kb;
        uint64_t h = fs_kv_hash(s->chain, toks, kb);
        if (s->table[i] >= 0) fs_kv_pool_publish(e->pool, s->table[i], h, s->chain, toks);
        s->chain = h;
        s->chained++;
    }
}

static int ensure_keep(fs_engine *e, size_t n) {
    if (n <= e->keep_cap) return FS_OK;
    uint8_t *k = realloc(e->keep, 2 * n);
    if (!k) return FS_ERR_NOMEM;
    e->keep = k;
    e->keep_cap = 2 * n;
    return FS_OK;
}

int eng_blocks_settle(fs_engine *e, eseq *s, fs_error *err) {
    publish(e, s);
    if (!e->kv_max_blocks) return FS_OK;
    size_t nb = eng_blocks_for(e, s->computed);
    if (ensure_keep(e, nb)) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    int rc = fs_model_paged_retain(s->w->model, s->computed, s->tokens, e->cfg.kv_block, e->keep, nb, err);
    if (rc) return rc;
    for (size_t i = 0; i < nb && i < s->n_table; i++)
        if (!e->keep[i] && s->table[i] >= 0) {
            fs_kv_pool_unref(e->pool, s->table[i]);
            s->table[i] = ENTRY_RELEASED;
        }
    return FS_OK;
}

/* Every entry back; s starts again from nothing. */
static void drop_all(fs_engine *e, eseq *s) {
    for (size_t i = 0; i < s->n_table; i++) {
        if (s->table[i] >= 0) fs_kv_pool_unref(e->pool, s->table[i]);
        else if (s->table[i] <= SWAPPED_SLOT(0)) fs_kv_pool_swap_drop(e->pool, SLOT_OF(s->table[i]));
    }
    s->n_table = 0;
    s->computed = 0;
    s->chained = 0;
}

int eng_blocks_evict(fs_engine *e, eseq *s) {
    size_t own = eng_blocks_own(e, s);
    if (own > 0 && fs_kv_pool_swap_free(e->pool) >= own) {
        for (size_t i = 0; i < s->n_table; i++)
            if (s->table[i] >= 0 && fs_kv_pool_refs(e->pool, s->table[i]) == 1)
                s->table[i] = SWAPPED_SLOT(fs_kv_pool_swap_out(e->pool, s->table[i]));
        s->view.state = FS_SCHED_SWAPPED;
        e->c.swaps_out++;
        return 1;
    }
    drop_all(e, s);
    s->view.state = FS_SCHED_WAITING;
    e->c.recomputes++;
    return 0;
}

int eng_blocks_swap_in(fs_engine *e, eseq *s, fs_error *err) {
    for (size_t i = 0; i < s->n_table; i++)
        if (s->table[i] <= SWAPPED_SLOT(0)) {
            int32_t b = fs_kv_pool_swap_in(e->pool, SLOT_OF(s->table[i]));
            if (b < 0) return fs_error_set(err, FS_ERR_BUSY, "KV pool full");
            s->table[i] = b;
        }
    s->view.state = FS_SCHED_RESIDENT;
    e->c.swaps_in++;
    return FS_OK;
}

void eng_blocks_free(fs_engine *e, eseq *s) { drop_all(e, s); }

void eng_blocks_count(const fs_engine *e, size_t *used, size_t *swap_used) {
    *used = fs_kv_pool_blocks(e->pool) - fs_kv_pool_free(e->pool);
    *swap_used = fs_kv_pool_swap_blocks(e->pool) - fs_kv_pool_swap_free(e->pool);
}
