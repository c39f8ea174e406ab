/* longformer_math.h — which keys a longformer query sees, as the CUDA
 * kernels (longformer_cuda.cu) ask it, in functions nvcc and a plain C
 * compiler both compile; the same rules as longformer_band.c's and
 * longformer_global.c's CPU loops (tests/unit/test_attention_tiles.c holds
 * them equal).
 *
 * Head h has dilation d: positions r, r + d, r + 2d, ... form class r, and
 * a local token only sees its own class, where the dilated window is a
 * plain one. Class coordinates: s is the s-th position of the class
 * (position r + s * d), n the class's length. */
#ifndef FS_LONGFORMER_MATH_H
#define FS_LONGFORMER_MATH_H

#include "flash_math.h"

FS_HD size_t fs_lf_class_len(size_t T, size_t r, size_t d) { return r < T ? (T - 1 - r) / d + 1 : 0; }

/* Row s's band, inclusive: keys s - w .. s + w of the class (causal: .. s). */
FS_HD void fs_lf_band(size_t s, size_t n, size_t w, int causal, size_t *lo, size_t *hi) {
    *lo = s > w ? s - w : 0;
    *hi = causal ? s : (s + w < n ? s + w : n - 1);
}

FS_HD int fs_lf_in_band(size_t s, size_t key, size_t n, size_t w, int causal) {
    size_t lo, hi;
    fs_lf_band(s, n, w, causal, &lo, &hi);
    return key >= lo && key <= hi;
}

/* Keys [k0, k1) a tile of query rows [s0, s1) needs: every row's band. */
FS_HD void fs_lf_key_range(size_t s0, size_t s1, size_t n, size_t w, int causal, size_t *k0, size_t *k1) {
    *k0 = s0 > w ? s0 - w : 0;
    *k1 = causal ? s1 : (s1 + w < n ? s1 + w : n);
}

/* Query rows [q0, q1) whose bands may hold a key of [k0, k1). */
FS_HD void fs_lf_query_range(size_t k0, size_t k1, size_t n, size_t w, int causal, size_t *q0, size_t *q1) {
    *q0 = causal ? k0 : (k0 > w ? k0 - w : 0);
    *q1 = k1 + w < n ? k1 + w : n;
}

/* Whether the local row s (position p, class r) sees the global token at
 * position g as an extra column: it must be visible (causal: earlier) and
 * not already in the row's band, where it counts once. */
FS_HD int fs_lf_global_column(size_t s, size_t p, size_t g, size_t r, size_t d, size_t w, int causal) {
    if (causal && g >= p) return 0;
    if (g < r || (g - r) % d) return 1;
    size_t sg = (g - r) / d, first = s > w ? s - w : 0, last = causal ? s : s + w;
    return sg < first || sg > last;
}

/* A global row at position p sees keys j <= p (causal) of the global
 * projection's keys, every one of [0, J) otherwise. */
FS_HD int fs_lf_global_row_sees(size_t p, size_t j, int causal) { return !causal || j <= p; }

#endif
