/* paged_math.h — the arithmetic of dense attention's paged step on CUDA
 * (dense_paged.cu), in functions nvcc (device) and a plain C compiler
 * (host) both compile, as flash_math.h's are.
 *
 * A block of FS_PG_WARPS warps serves one (row, head) and attends over the
 * row's n = position + 1 keys. Keys go to warps in tiles of FS_PG_TILE
 * consecutive positions, warp w taking tiles w, w + W, w + 2W, ...
 * (fs_pg_tile_begin). In a tile, lane j scores key j and the warp's online
 * softmax (m, l) takes the tile in (fs_pg_enter, fs_pg_prob); its values
 * are read in chunks of FS_PG_CHUNK(es) elements (one 128-bit load): G =
 * D / chunk lanes cover a row of D, so 32 / G rows are read side by side
 * and subgroup g of the warp accumulates the tile's keys g, g + 32 / G, ...
 * At the end the subgroups' accumulators (one max: the warp's) add in
 * subgroup order, then the warps' (m, l, acc) merge in warp order
 * (fs_pg_merge). Where each key goes and the order of every sum depend on
 * n, D and the stored element size only: a row's output has the same bits
 * in any step (attention.h's batch invariance).
 *
 * tests/unit/test_cuda_math.c runs these splits on the CPU against the
 * softmax in double. */
#ifndef FS_PAGED_MATH_H
#define FS_PAGED_MATH_H

#include "flash_math.h"

#define FS_PG_WARPS 4  /* warps of a block, one (row, head) per block */
#define FS_PG_TILE 32  /* keys of a warp's tile: one per lane */
#define FS_PG_DMAX 128 /* the widest head the kernels serve */

/* Elements of one 128-bit load of stored keys or values (es: 4 or 2 bytes). */
FS_HD size_t fs_pg_chunk(size_t es) { return 16 / es; }

/* Whether the kernels serve heads of width D stored in es-byte elements:
 * a row is whole chunks, and at most FS_PG_DMAX wide. */
FS_HD int fs_pg_fits(size_t D, size_t es) {
    return (es == 4 || es == 2) && D > 0 && D <= FS_PG_DMAX && D % fs_pg_chunk(es) == 0;
}

/* Lanes reading one value row (G), and rows a warp reads at once. */
FS_HD size_t fs_pg_group(size_t D, size_t es) { return D / fs_pg_chunk(es); }
FS_HD size_t fs_pg_rows_at_once(size_t D, size_t es) { return 32 / fs_pg_group(D, es); }

/* The element offset in a block of head h's key (v = 0) or value (v = 1)
 * of the token in `slot`: dense.c's dense_entry (per head, the keys of
 * consecutive slots adjacent, then the values). */
FS_HD size_t fs_pg_entry(size_t kv_block, size_t D, size_t h, int v, size_t slot) {
    return ((2 * h + (size_t)v) * kv_block + slot) * D;
}

/* The first position of warp w's i-th tile. */
FS_HD size_t fs_pg_tile_begin(unsigned warp, size_t i) { return (i * FS_PG_WARPS + warp) * FS_PG_TILE; }

/* The running max m takes a tile whose largest score is tile_max; returns
 * the factor the running sum and accumulator are multiplied by (0 while
 * nothing was seen). */
FS_HD float fs_pg_enter(float *m, float tile_max) {
    float mn = fmaxf(*m, tile_max), alpha = fs_fa_rescale(*m, mn);
    *m = mn;
    return alpha;
}

/* A key's weight under the running max m (0 for a lane past the row's keys). */
FS_HD float fs_pg_prob(float s, float m) { return fs_fa_prob(s, m); }

/* (m, l) absorbs a partial (m2, l2); the accumulators then combine as
 * acc * a + acc2 * b. An empty partial (m2 = -inf: a warp that had no
 * tile) leaves everything as it was: a = 1, b = 0. */
FS_HD void fs_pg_merge(float *m, float *l, float m2, float l2, float *a, float *b) {
    float mn = fs_fa_merge_scales(*m, m2, a, b);
    if (mn == -INFINITY) {
        *a = 1.0f, *b = 0.0f;
        return;
    }
    *l = *l * *a + l2 * *b;
    *m = mn;
}

/* An output coordinate from its accumulator and the row's sum. */
FS_HD float fs_pg_out(float acc, float l) { return l > 0.0f ? acc / l : 0.0f; }

#endif
