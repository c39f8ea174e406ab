/* batch.h — the ragged step: one iteration of many sequences over the
 * model's shared, read-only weights. The one decode path: the serving
 * engine's iterations (--mode serve; --mode generate and the sample after
 * training as one request to an inline engine), fs_seq (model/seq.h:
 * generation with a pre-1.2 plugin, distillation's teacher sampling) and
 * tests all run through fs_batch_run.
 *
 * Sequence s adds n_new tokens at positions [start, start + n_new): one
 * (decode) or a chunk of its prompt (chunked prefill), each sequence at
 * its own position. Their rows are stacked, so the embeddings, every
 * LayerNorm, the QKV, output and MLP projections and the LM head are each
 * one product over all rows of the step (each weight read once for all of
 * them); only attention is per sequence, through each layer's plugin:
 *   - its paged step (ABI 1.2) over the sequence's block table in a
 *     fs_kv_pool, or
 *   - for a plugin built before the paged cache (ABI 1.0/1.1), its decode
 *     step, token by token, over the sequence's own per-layer caches (an
 *     fs_seq keeps them; the serving engine refuses such plugins).
 *
 * Batch invariance: every number a row produces depends on that row and
 * its own sequence only, never on the other rows, on how its tokens were
 * cut into steps, or on the thread count. The products use fixed-order
 * kernels (compute/gemm_rows.h) rather than BLAS, LayerNorm sums in fixed
 * lanes, every other op is elementwise, and the plugins' paged steps keep
 * the same rule (attention.h). So a request's logits are bitwise the same
 * alone, among 30 others, chunked differently, preempted and recomputed
 * or sharing a prefix: what makes greedy and seeded sampling reproducible
 * in a server. */
#ifndef FS_BATCH_H
#define FS_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "model/kv_pool.h"
#include "model/model.h"

typedef struct fs_batch_seq {
    size_t start, n_new;
    const int32_t *tokens; /* (start + n_new): every token so far, the new ones at [start, start + n_new) */
    const int32_t *blocks; /* (n_blocks) its block table in the pool (paged layers); covers [0, start + n_new) */
    size_t n_blocks;
    void *const *caches;   /* (L) decode caches of one row for layers without a paged step, else NULL */
    int logits;            /* 1: the logits of its last new token go to the next row of `logits`;
                            * FS_BATCH_LOGITS_ALL: those of every new token, in order, to the next n_new rows
                            * (a prompt's log-probabilities) */
} fs_batch_seq;

#define FS_BATCH_LOGITS_ALL 2

/* Rows of logits sequence s asks of a step: its last new token's, every
 * new token's, or none. */
static inline size_t fs_batch_logit_rows(const fs_batch_seq *s) {
    return s->logits == FS_BATCH_LOGITS_ALL ? s->n_new : s->logits != 0;
}

/* A step's sequences checked against a model of `vocab` tokens and work
 * memory for max_rows tokens and max_logits logits: every sequence adds a
 * token, every new token is in the vocabulary, the totals fit. *rows and
 * *n_logits get the totals. What fs_batch_run and the device step
 * (model/device_batch.h) both check first. */
int fs_batch_check(const fs_batch_seq *seqs, size_t n, size_t vocab, size_t max_rows, size_t max_logits,
                   size_t *rows, size_t *n_logits, fs_error *err);

typedef struct fs_batch fs_batch;

/* Work memory for steps of up to max_rows tokens and max_logits rows of
 * logits (the model must be whole: no tensor or pipeline split). */
int fs_batch_create(fs_batch **out, const fs_model *m, size_t max_rows, size_t max_logits, fs_error *err);
void fs_batch_destroy(fs_batch *b); /* accepts NULL */
size_t fs_batch_max_rows(const fs_batch *b);

/* The weights a step multiplies by, made once from a model: the four
 * projections of every layer in the form the step reads fastest.
 *   FS_WEIGHTS_F32   packed into column panels (fs_gemm_rows_pack): the
 *                    same fixed-order products, the same bits, with W read
 *                    in memory order and no copying per step. A second
 *                    copy of the projections (the model's stay for
 *                    training, eval and reloads); the head reads the
 *                    model's own wte.
 *   FS_WEIGHTS_BF16, FS_WEIGHTS_Q8   compact copies of the projections and
 *                    the head ([generate] weights, compute/qweights.h);
 *                    bf16's sums are split by the thread count, so its bits
 *                    also depend on that count (an engine with [run]
 *                    threads = 0 changes it with the load).
 * Rows stay independent of one another in every format. They belong to
 * the model they were made from (a server holds one per loaded checkpoint,
 * so requests on a reloaded model read its weights, not the first's) and
 * serve steps of up to max_rows tokens and max_logits logits. */
typedef struct fs_step_weights fs_step_weights;
int fs_step_weights_create(fs_step_weights **out, const fs_model *m, int format, size_t max_rows, size_t max_logits,
                           fs_error *err);
void fs_step_weights_destroy(fs_step_weights *sw); /* accepts NULL */

/* One step over the n sequences (rows in order); logits (n_logits, V) in
 * the order of the sequences that ask (a row each, or n_new rows each with
 * FS_BATCH_LOGITS_ALL: every row's logits are the same either way). sw: the
 * step weights of m, or NULL to read the model's own f32 weights unpacked
 * (tests, one-off steps). pool may be NULL when no layer is paged. Runs on
 * the calling thread's OpenMP thread count. Changes nothing but the blocks
 * of the new positions (and the legacy caches). */
int fs_batch_run(fs_batch *b, const fs_model *m, const fs_step_weights *sw, fs_kv_pool *pool, const fs_batch_seq *seqs,
                 size_t n, float *logits, fs_error *err);

/* 1 when layer l's plugin has the paged step (ABI 1.2, FS_ATTENTION_PAGED). */
int fs_model_layer_paged(const fs_model *m, size_t l);
/* 1 when every layer's is. */
int fs_model_paged(const fs_model *m);
/* FS_OK when the serving engine can run m (--mode serve, and --mode
 * generate's one request): every layer's plugin has the paged step (ABI
 * 1.2), keeps a bounded cache only with paged_retain, and was created
 * causal (fs_attention_origin). Else the first layer that cannot, named
 * with its plugin, the plugin's ABI version and file, what it lacks, and
 * the fix. */
int fs_model_servable(const fs_model *m, fs_error *err);

/* Bounded caches (every layer FS_ATTENTION_BOUNDED_CACHE and paged): the
 * most blocks of kv_block tokens one sequence holds between steps (every
 * layer's paged_max_blocks; their sum when the layers differ); 0 when a
 * layer's cache is not bounded (a sequence holds all its blocks). */
size_t fs_model_paged_max_blocks(const fs_model *m, size_t kv_block);
/* keep (n_blocks = ceil(len / kv_block)) = 1 for each block of a sequence
 * of len tokens that some layer's plugin still reads (paged_retain, OR over
 * the layers); every block is kept when a layer has no paged_retain. */
int fs_model_paged_retain(const fs_model *m, size_t len, const int32_t *tokens, size_t kv_block, uint8_t *keep,
                          size_t n_blocks, fs_error *err);

/* The row of wpe that position pos embeds with: past max_seq (bounded
 * caches only) it cycles through the table's second half (attention.h). */
size_t fs_model_embed_position(const fs_model *m, size_t pos);

#endif
