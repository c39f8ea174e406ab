/* fastserve/attention.h — the attention plugin vtable.
 *
 * The runtime projects each layer's input to Q, K and V, one (B, H, T, D)
 * tensor each, and hands them to the layer's attention plugin, which
 * computes the (B, H, T, D) output and, in training, the gradients of Q, K
 * and V. The runtime then merges heads and applies the output projection.
 *
 * Memory the plugin needs between forward and backward ("saved") and for
 * generation ("cache") is allocated by the host at the size the plugin asks
 * for, on the model's device, so the plugin owns the layout but not the
 * allocation. One instance serves one layer.
 *
 * Arguments travel in structs that open with their size, so they can grow at
 * the end like the vtable.
 *
 * Since ABI 1.2 a plugin may also serve (FS_ATTENTION_PAGED): a ragged step
 * over many sequences whose keys and values live in a shared pool of
 * fixed-size blocks (see "The paged KV cache" below). A plugin without it
 * still trains and generates (through cache_bytes/cache_reset/decode); the
 * serving engine refuses it. */
#ifndef FASTSERVE_ATTENTION_H
#define FASTSERVE_ATTENTION_H

#include "fastserve/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Capabilities, in fs_attention_vtable.flags. */
#define FS_ATTENTION_CAUSAL 0x1u        /* supports causal masking */
#define FS_ATTENTION_BIDIRECTIONAL 0x2u /* supports non-causal attention */
#define FS_ATTENTION_DECODE 0x4u        /* implements the decode step */
#define FS_ATTENTION_SHARED_QK 0x8u     /* ignores K (keys derived from Q) */
#define FS_ATTENTION_SCORES 0x10u       /* implements scores() */
#define FS_ATTENTION_USES_INPUT 0x20u   /* reads the layer input x (own projections) */
/* The decode cache is bounded: cache_bytes does not depend on max_context
 * and decode accepts any position. When every layer's plugin says so, the
 * runtime generates past [model] max_seq (cache_reset gets max_context 0).
 * Learned position embeddings end at max_seq, so past it the runtime feeds
 * the embedding of a position that cycles through the second half of the
 * table: position p >= max_seq embeds as h + (p - h) mod (max_seq - h),
 * h = max_seq / 2. A window shorter than max_seq - h then sees positions in
 * trained order except across one wrap. decode_args.pos stays absolute. */
#define FS_ATTENTION_BOUNDED_CACHE 0x40u
/* Since ABI 1.2: implements the paged KV cache (paged_block_bytes,
 * paged_step; paged_retain and paged_max_blocks with a bounded cache). */
#define FS_ATTENTION_PAGED 0x80u
/* Devices (since ABI 1.3). Without either flag a plugin runs on the CPU
 * only, and a session on another device refuses it with a line naming it.
 * FS_ATTENTION_CUDA: create accepts a CUDA device (fs_attention_config.
 * device); forward, backward and, with FS_ATTENTION_SCORES, scores take
 * device tensors (F32, or BF16 with F32 statistics in `saved`); the
 * plugin queues its kernels on the host's device_stream(device), in order
 * with the model's ops, and the host's alloc and sgemm serve that device.
 * FS_ATTENTION_CUDA_DECODE: so does the decode step (its cache is device
 * memory). */
#define FS_ATTENTION_CUDA 0x100u
#define FS_ATTENTION_CUDA_DECODE 0x200u
/* Since ABI 1.4: the paged blocks can hold keys and values in bf16
 * (fs_attention_config.kv_dtype = FS_DTYPE_BF16): half the bytes, so twice
 * the tokens in the same pool and half the memory a decode step's
 * attention reads. The plugin rounds each new key and value to bf16 to
 * nearest, ties to even, when it stores them, and computes in f32 from the
 * stored values, in the same fixed order as with f32 blocks (batch
 * invariance holds as before). Without this flag the host only asks f32. */
#define FS_ATTENTION_PAGED_BF16 0x400u
/* With FS_ATTENTION_PAGED: an instance created for a CUDA device runs
 * paged_step there. q, k, v, out (and x) are device tensors (F32) and
 * `pool` is device memory (the host allocates the pool through the
 * backend), while `seqs`, their block tables and token ids stay host
 * memory, as on the CPU: the plugin uploads what its kernels read. It
 * queues its kernels on the host's device_stream(device), in order with
 * the model's ops, and paged_step returns once they are queued. The block
 * layout (paged_block_bytes) and kv_dtype (f32 or bf16 blocks) are those
 * of the CPU, so the host may copy blocks as opaque bytes between the
 * device and host memory. */
#define FS_ATTENTION_CUDA_PAGED 0x800u

/* What the instance is for; fixed at create. */
typedef struct fs_attention_config {
    uint32_t struct_size;
    int32_t layer;      /* 0-based layer index */
    size_t n_head;      /* H */
    size_t head_dim;    /* D */
    size_t n_embd;      /* C = H * D */
    size_t max_seq;     /* longest T forward will see */
    int32_t causal;     /* 1: token t sees tokens <= t only */
    fs_device device;
    /* Since ABI 1.4 (read it only when struct_size covers it, else F32):
     * how paged blocks store keys and values, FS_DTYPE_F32 or, for a
     * plugin with FS_ATTENTION_PAGED_BF16, FS_DTYPE_BF16 ([generate]
     * kv_dtype). Training and the decode step are unaffected. */
    int32_t kv_dtype;
} fs_attention_config;

typedef struct fs_attention_args {
    uint32_t struct_size;
    size_t B, T;             /* batch, tokens (T <= max_seq) */
    fs_tensor q, k, v;       /* (B, H, T, D) */
    fs_tensor out;           /* (B, H, T, D), written by forward; backward gets it back as
                              * forward left it (dense reads it: rowsum(dout * out)) */
    void *saved;             /* saved_bytes(B, T) bytes: forward writes, backward reads */
    const int32_t *tokens;   /* (B, T) token ids in host memory (on every device), may be NULL */
    /* backward only: dq, dk, dv are overwritten (not accumulated). */
    fs_tensor dout;          /* (B, H, T, D) */
    fs_tensor dq, dk, dv;    /* (B, H, T, D) */
    /* FS_ATTENTION_USES_INPUT: the normalised layer input the runtime
     * projected Q, K, V from, and in backward its gradient, which the plugin
     * accumulates into (+=); otherwise both are empty (data NULL). */
    fs_tensor x;             /* (B, T, C) */
    fs_tensor dx;            /* (B, T, C) */
} fs_attention_args;

typedef struct fs_attention_decode_args {
    uint32_t struct_size;
    size_t B;
    size_t pos;            /* absolute position of the new token, 0-based */
    fs_tensor q, k, v;     /* (B, H, 1, D) for the new token */
    fs_tensor out;         /* (B, H, 1, D) */
    int32_t token;         /* the new token's id when B == 1, else -1 */
    fs_tensor x;           /* (B, 1, C) normalised input (FS_ATTENTION_USES_INPUT) */
} fs_attention_decode_args;

/* Attention probabilities or scores for distillation: (B, H, T, T) dense
 * pre-softmax scores with masked entries set to 0 (`probs` = 0) or
 * post-softmax probabilities (`probs` = 1). Written from the saved state
 * of the last forward with the same args. */
typedef struct fs_attention_scores_args {
    uint32_t struct_size;
    const fs_attention_args *fwd;
    int32_t probs;
    fs_tensor scores; /* (B, H, T, T) */
} fs_attention_scores_args;

/* ---- The paged KV cache (since ABI 1.2, FS_ATTENTION_PAGED) ----
 *
 * A server runs many sequences at once, each at its own position, and
 * keeps their keys and values in one pool of fixed-size blocks, as vLLM's
 * PagedAttention does: a block holds `kv_block` consecutive positions of
 * one sequence, and the sequence's block table names the block of each
 * run of positions (blocks[i] holds positions [i * kv_block,
 * (i + 1) * kv_block)). One block id covers every layer; each layer has
 * its own pool of blocks of paged_block_bytes bytes.
 *
 * Who owns what:
 *   - the plugin owns what a block holds and how (paged_block_bytes: a
 *     layout of its choice for kv_block tokens: keys and values, and
 *     whatever else it reads later, e.g. hash buckets or a second
 *     projection's keys), and writes and reads blocks only through the
 *     tables it is given;
 *   - the host owns the pool, the block tables, and every copy of a block
 *     (copy-on-write of a shared block, swapping a preempted sequence's
 *     blocks out to host memory and back): it moves blocks as opaque bytes,
 *     so a plugin keeps no pointers into them and no per-sequence state
 *     anywhere else.
 *
 * A step (paged_step) is ragged: sequence s adds n_new tokens at positions
 * [start, start + n_new) (decode: 1; a chunk of a prompt: many; a
 * preempted sequence being recomputed: its tokens again). The plugin
 * writes each new token's entry into its block, then computes each new
 * token's output over the entries of its own sequence at positions up to
 * its own (paged attention is causal; a bidirectional layer is refused at
 * create or in paged_step). Blocks are never shared between sequences for
 * positions a step writes (the host copies a shared block first).
 *
 * Rules a paged plugin keeps, which the serving engine relies on:
 *   - Content: a block's entries are a function of the sequence's tokens
 *     up to them (and the weights) only, so the host may share the blocks
 *     of a common prompt prefix between sequences (hashing their tokens)
 *     and recompute a preempted sequence's blocks instead of saving them.
 *   - Batch invariance: a new token's output is a function of its own q,
 *     k, v (and x) and of its sequence's entries only, computed in an order
 *     that depends on neither the other rows of the step, nor how the
 *     sequence's tokens were cut into steps, nor the thread count. The
 *     engine promises a request the same tokens, bit for bit, alone or
 *     among others; BLAS products on shapes that vary with the step break
 *     that (their kernels change with the shape): use loops with a fixed
 *     order, or the host's sgemm_rows.
 *   - Bounded caches (FS_ATTENTION_BOUNDED_CACHE): after each step the host
 *     asks paged_retain which blocks a later token may still read and
 *     frees the others (their table entries become FS_PAGED_NO_BLOCK), so
 *     a sequence streams past max_seq with at most paged_max_blocks blocks.
 *
 * Positions are absolute; past max_seq (bounded caches only) the runtime
 * embeds them as described at FS_ATTENTION_BOUNDED_CACHE. */

/* A block-table entry the plugin has released (paged_retain). */
#define FS_PAGED_NO_BLOCK (-1)

/* One sequence of a paged step. Its new tokens are rows [row, row + n_new)
 * of the step's q, k, v, out and x. */
typedef struct fs_attention_paged_seq {
    size_t start;          /* tokens already in its cache: the position of its first new token */
    size_t n_new;          /* new tokens this step (>= 1) */
    size_t row;            /* its first row in the step's tensors */
    const int32_t *blocks; /* (n_blocks) its block table; covers [0, start + n_new) */
    size_t n_blocks;
    const int32_t *tokens; /* (start + n_new) its token ids, every position so far */
} fs_attention_paged_seq;

typedef struct fs_attention_paged_args {
    uint32_t struct_size;
    size_t n_seqs;
    const fs_attention_paged_seq *seqs; /* (n_seqs), rows in order, no two sharing a row */
    size_t n_rows;       /* N: the new tokens of all sequences */
    fs_tensor q, k, v;   /* (N, H, D) the new tokens' projections */
    fs_tensor out;       /* (N, H, D), written */
    fs_tensor x;         /* (N, C) normalised layer input (FS_ATTENTION_USES_INPUT), else empty */
    void *pool;          /* this layer's blocks: block b at (char *)pool + b * block_bytes */
    size_t kv_block;     /* tokens per block */
    size_t block_bytes;  /* paged_block_bytes(kv_block) */
} fs_attention_paged_args;

/* Which of a sequence's blocks a later token may still read (bounded
 * caches). */
typedef struct fs_attention_retain_args {
    uint32_t struct_size;
    size_t len;            /* tokens in its cache: later tokens come at positions >= len */
    const int32_t *tokens; /* (len) its token ids */
    size_t kv_block;
    size_t n_blocks;       /* ceil(len / kv_block) */
    uint8_t *keep;         /* (n_blocks), zeroed by the host: the plugin sets 1 for each block to keep */
} fs_attention_retain_args;

typedef struct fs_attention_vtable {
    uint32_t struct_size;
    uint32_t flags; /* FS_ATTENTION_* */

    int (*create)(void **self, const fs_host_api *host, fs_plugin_ctx *ctx,
                  const fs_attention_config *cfg, fs_error *err);
    void (*destroy)(void *self); /* accepts NULL */

    size_t (*saved_bytes)(void *self, size_t B, size_t T);
    int (*forward)(void *self, fs_attention_args *args, fs_error *err);
    int (*backward)(void *self, fs_attention_args *args, fs_error *err);

    /* Generation. cache_bytes may be independent of max_context for plugins
     * with a bounded cache. Positions in decode are consecutive from 0 after
     * cache_reset. `max_context` of 0 asks for the plugin's bounded size. */
    size_t (*cache_bytes)(void *self, size_t B, size_t max_context);
    int (*cache_reset)(void *self, void *cache, size_t B, size_t max_context, fs_error *err);
    int (*decode)(void *self, void *cache, fs_attention_decode_args *args, fs_error *err);

    /* Optional (FS_ATTENTION_SCORES). */
    int (*scores)(void *self, fs_attention_scores_args *args, fs_error *err);

    /* Optional: initialise plugin-owned parameters from the layer's own
     * QKV projection, c_attn_weight (C, 3C) and c_attn_bias (3C), Hugging
     * Face layout. Called once for a fresh run, after the runtime
     * initialised its weights; not called when weights come from a
     * checkpoint (which holds the plugin's parameters too). */
    int (*init_params)(void *self, const fs_tensor *c_attn_weight, const fs_tensor *c_attn_bias, fs_error *err);

    /* Optional (with FS_ATTENTION_SCORES), for distillation losses on
     * attention maps: the backward of scores(). args->scores holds
     * d loss / d scores (B, H, T, T) in the layout scores() writes, for the
     * forward args->fwd and the same `probs`; entries scores() masks are
     * ignored. The plugin ADDS the resulting gradients into fwd->dq and
     * fwd->dk (and fwd->dx for FS_ATTENTION_USES_INPUT plugins): the runtime
     * calls it right after backward() of the same layer, so the buffers
     * already hold the output's gradients. */
    int (*scores_backward)(void *self, const fs_attention_scores_args *args, fs_error *err);

    /* Since ABI 1.2, with FS_ATTENTION_PAGED (the serving engine's step; see
     * "The paged KV cache" above). paged_block_bytes: bytes of one block of
     * kv_block tokens in the plugin's layout (a multiple of 64 keeps blocks
     * aligned; the host rounds up). paged_step: one ragged step. */
    size_t (*paged_block_bytes)(void *self, size_t kv_block);
    int (*paged_step)(void *self, fs_attention_paged_args *args, fs_error *err);
    /* With FS_ATTENTION_BOUNDED_CACHE (else NULL: every block is kept):
     * paged_retain marks the blocks a later token may still read;
     * paged_max_blocks is the most blocks one sequence holds between steps
     * at any length (the host adds what one step's new tokens need). */
    int (*paged_retain)(void *self, fs_attention_retain_args *args, fs_error *err);
    size_t (*paged_max_blocks)(void *self, size_t kv_block);
} fs_attention_vtable;

#ifdef __cplusplus
}
#endif
#endif
