/* longformer.h — private to the longformer plugin: the instance, the
 * layout of its saved state, and the kernels its files share.
 *
 * The plugin is split by idea: longformer.c reads the configuration and
 * drives training; longformer_band.c is the blocked sliding-window kernel
 * (local rows, with the global tokens as extra columns); longformer_global.c
 * is the global rows with their own Q/K/V projections; longformer_decode.c
 * is the bounded KV cache for generation, longformer_paged.c the same in
 * the serving engine's block pool. Nothing here is part of the SDK. */
#ifndef FS_LONGFORMER_H
#define FS_LONGFORMER_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/attention.h"
#include "fastserve/fastmath.h"

enum { LF_GLOBAL_NONE = 0, LF_GLOBAL_POSITIONS = 1, LF_GLOBAL_TOKENS = 2 };

/* Global rows are processed this many at a time, so their scores never
 * need more than LF_GLOBAL_CHUNK x T floats. */
#define LF_GLOBAL_CHUNK 64

typedef struct lf_plugin {
    const fs_host_api *host;
    fs_attention_config cfg;
    size_t window; /* w: keys at offsets m * d, |m| <= w (m in [0, w] when causal) */
    size_t *dil;   /* (H) dilation of each head */
    size_t dmax;   /* largest dilation: the decode ring holds window * dmax + 1 tokens */
    size_t block;  /* query rows per block of the banded kernel */
    float scale;   /* 1 / sqrt(D) */
    size_t kv_es;  /* bytes of a key or value element in paged blocks: 4 (f32) or 2 (bf16) */

    int gmode;            /* LF_GLOBAL_* */
    int32_t *gpos;        /* LF_GLOBAL_POSITIONS: sorted, distinct, < max_seq */
    size_t n_gpos;
    int32_t *gtok;        /* LF_GLOBAL_TOKENS: token ids that make a token global */
    size_t n_gtok;
    size_t global_cache;  /* LF_GLOBAL_TOKENS: occurrences the decode cache keeps */

    /* the global projection, Hugging Face c_attn layout: (C, 3C) and (3C),
     * columns [Q | K | V]; registered with the host only when globals exist */
    float *wg, *bg, *dwg, *dbg;

    float *scratch; /* grow-only work memory, see lf_scratch */
    size_t scratch_floats;

    struct lf_cuda *cuda; /* the instance is on a CUDA device (cuda/longformer_cuda.c) */
} lf_plugin;

/* Where each piece of the saved state lives for one (B, T). Offsets are in
 * bytes from args->saved, each 64-byte aligned. */
typedef struct lf_saved_layout {
    size_t gmax;    /* global slots per sequence */
    size_t jmax;    /* rows of global K/V kept per sequence */
    size_t lse;     /* (B, H, T) float: log-sum-exp of each local row */
    size_t glse;    /* (B, H, gmax) float: the same for global rows */
    size_t gcount;  /* (B) int32: globals in each sequence */
    size_t glist;   /* (B, gmax) int32: their positions, ascending */
    size_t gflag;   /* (B, T) uint8: 1 where the position is global */
    size_t kvg;     /* (B, jmax, 2C) float: global keys and values */
    size_t total;
} lf_saved_layout;

void lf_saved_layout_for(const lf_plugin *lf, size_t B, size_t T, lf_saved_layout *l);

/* Views of the saved state of one forward. */
typedef struct lf_state {
    size_t B, T, gmax, jmax;
    float *lse, *glse, *kvg;
    int32_t *gcount, *glist;
    uint8_t *gflag;
} lf_state;

/* Which positions of each sequence are global, for this forward: gflag,
 * glist and gcount of st (host memory) from the configuration and, for
 * global = token:..., a->tokens. */
void lf_find_globals(const lf_plugin *lf, const fs_attention_args *a, lf_state *st);

/* Rows of global K/V sequence b needs: every position a global row sees. */
size_t lf_global_span(const lf_plugin *lf, const lf_state *st, size_t b);

/* At least `floats` floats of work memory, or NULL (the instance keeps it). */
float *lf_scratch(lf_plugin *lf, size_t floats);


/* longformer_band.c: local rows of every (b, h), global columns included;
 * rows of global tokens are left at 0 for the global pass to overwrite. */
int lf_band_forward(lf_plugin *lf, const fs_attention_args *a, lf_state *st, fs_error *err);
/* Writes dq, dk, dv (overwrites). */
int lf_band_backward(lf_plugin *lf, const fs_attention_args *a, lf_state *st, fs_error *err);

/* longformer_global.c: global rows through the plugin's own projections. */
int lf_global_forward(lf_plugin *lf, const fs_attention_args *a, lf_state *st, fs_error *err);
/* Accumulates into dx and the projection's gradients. */
int lf_global_backward(lf_plugin *lf, const fs_attention_args *a, lf_state *st, fs_error *err);

/* longformer_decode.c */
size_t lf_cache_bytes(void *self, size_t B, size_t max_context);
int lf_cache_reset(void *self, void *cache, size_t B, size_t max_context, fs_error *err);
int lf_decode(void *self, void *cache, fs_attention_decode_args *a, fs_error *err);

/* longformer_paged.c: serving (attention.h's paged KV cache) */
size_t lf_paged_block_bytes(void *self, size_t kv_block);
int lf_paged_step(void *self, fs_attention_paged_args *a, fs_error *err);
int lf_paged_retain(void *self, fs_attention_retain_args *a, fs_error *err);
size_t lf_paged_max_blocks(void *self, size_t kv_block);

/* 1 when token id `t` makes a token global (LF_GLOBAL_TOKENS). */
int lf_is_global_token(const lf_plugin *lf, int32_t t);

#if FS_CUDA_KERNELS
/* cuda/longformer_cuda.c: training on a CUDA device (f32). */
int lf_cuda_create(lf_plugin *lf, fs_error *err);
void lf_cuda_destroy(lf_plugin *lf);
int lf_cuda_init_params(lf_plugin *lf, const fs_tensor *w, const fs_tensor *b, fs_error *err);
int lf_cuda_forward(lf_plugin *lf, const fs_attention_args *a, fs_error *err);
int lf_cuda_backward(lf_plugin *lf, const fs_attention_args *a, fs_error *err);
#define LF_DEVICES FS_ATTENTION_CUDA
#else
#define LF_DEVICES 0u
#endif

#endif
