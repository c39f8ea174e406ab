/* longformer_band.c — the blocked sliding-window kernel.
 *
 * Dilation d splits a head's sequence into d interleaved classes (positions
 * r, r+d, r+2d, ...): a token only ever sees tokens of its own class, and
 * inside a class the dilated window is a plain window. A class is a strided
 * matrix (row stride d*D), read in place: no gather.
 *
 * Within a class, queries go in blocks of `block` rows; the keys any row of
 * a block can see form one contiguous range (the band), so each block is
 *   S = scale * Q_blk K_band^T          (block x band matmul)
 *   P = masked softmax(S)
 *   O_blk = P V_band                    (block x D matmul)
 * with the global tokens as a few extra columns (their local K and V,
 * gathered once per head). The band is at most block + 2 * window wide, so
 * a block costs O(block * window) and the whole pass O(T * window).
 *
 * Threads: one parallel_for per pass, over the (b, h) pairs, each thread
 * running whole heads with the register-tiled matmul below. The host's
 * sgemm, called once per block from the calling thread, was a fork and a
 * barrier per call with OpenMP BLAS: measured at T = 4k on two shared
 * cores, 650 ms of barrier waiting against 47 ms of work. (sgemm may now
 * be called inside parallel_for, where it runs on the calling thread; the
 * tiles below, at 85-100% of single-thread OpenBLAS on these shapes, stay
 * as fast without it.)
 *
 * Rows of global tokens are zeroed here: longformer_global.c owns them. */
#include <math.h>
#include <string.h>

#include "longformer.h"

/* ---- a small matmul: C = alpha * A B (+ C), B and C row-major ----
 * A(i, k) is A[i * sai + k * sak], so A or A^T without a copy. Tiles of
 * 4 rows x 32 columns keep the accumulators in registers; the compiler
 * vectorises the column loop. */

#define TILE_R 4
#define TILE_C 32

static inline __attribute__((always_inline)) void mm_tile(size_t rows, size_t cols, size_t K, float alpha,
                                                          const float *A, size_t sai, size_t sak, const float *Bm,
                                                          size_t ldb, int accumulate, float *C, size_t ldc) {
    float acc[TILE_R][TILE_C];
    for (size_t r = 0; r < TILE_R; r++)
        for (size_t c = 0; c < TILE_C; c++) acc[r][c] = 0.0f;
    for (size_t k = 0; k < K; k++) {
        const float *b = Bm + k * ldb;
        for (size_t r = 0; r < rows; r++) {
            float x = A[r * sai + k * sak];
            for (size_t c = 0; c < cols; c++) acc[r][c] += x * b[c];
        }
    }
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            C[r * ldc + c] = alpha * acc[r][c] + (accumulate ? C[r * ldc + c] : 0.0f);
}

static __attribute__((noinline)) void mm(size_t m, size_t n, size_t K, float alpha, const float *A, size_t sai, size_t sak, const float *Bm,
               size_t ldb, int accumulate, float *C, size_t ldc) {
    for (size_t i = 0; i < m; i += TILE_R) {
        size_t rows = m - i < TILE_R ? m - i : TILE_R;
        for (size_t j = 0; j < n; j += TILE_C) {
            size_t cols = n - j < TILE_C ? n - j : TILE_C;
            const float *a = A + i * sai;
            float *c = C + i * ldc + j;
            if (rows == TILE_R && cols == TILE_C) /* the common case, with constant bounds */
                mm_tile(TILE_R, TILE_C, K, alpha, a, sai, sak, Bm + j, ldb, accumulate, c, ldc);
            else
                mm_tile(rows, cols, K, alpha, a, sai, sak, Bm + j, ldb, accumulate, c, ldc);
        }
    }
}

/* dst (D, n) = the n rows src[i * ld] of length D, transposed. */
static void transpose(float *dst, const float *src, size_t n, size_t ld, size_t D) {
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < D; c++) dst[c * n + i] = src[i * ld + c];
}

/* ---- masks and softmax of one block ---- */

/* The block, its band and the sequence it belongs to, as the row loops see
 * them. Indices s are within the class: position = r + s * d. */
typedef struct band_block {
    float *S, *dP;   /* (m, L): scores -> probabilities; backward dP -> dS */
    float *Sg, *dPg; /* (m, gv): the same for the global columns */
    float *lse;      /* this (b, h)'s row statistics, indexed by position */
    const uint8_t *gflag;
    const int32_t *gl;
    size_t m, L, gv, k0, a0, n, r, d, w;
    int causal;
    float scale;
} band_block;

/* Row s's band, inclusive, relative to the block's first key k0. */
static void row_band(const band_block *j, size_t s, size_t *lo, size_t *hi) {
    size_t first = s > j->w ? s - j->w : 0, last = j->causal ? s : (s + j->w < j->n ? s + j->w : j->n - 1);
    *lo = first - j->k0;
    *hi = last - j->k0;
}

/* A global column counts for row s unless it is not yet visible (causal)
 * or already in the row's band (it must be counted once). */
static int global_visible(const band_block *j, size_t s, size_t p, size_t g) {
    if (j->causal && g >= p) return 0;
    if (g < j->r || (g - j->r) % j->d) return 1;
    size_t sg = (g - j->r) / j->d;
    size_t first = s > j->w ? s - j->w : 0, last = j->causal ? s : s + j->w;
    return sg < first || sg > last;
}

static void forward_rows(const band_block *j) {
    for (size_t i = 0; i < j->m; i++) {
        size_t s = j->a0 + i, p = j->r + s * j->d;
        float *row = j->S + i * j->L, *grow = j->Sg + i * j->gv;
        if (j->gflag[p]) {
            memset(row, 0, j->L * sizeof(float));
            memset(grow, 0, j->gv * sizeof(float));
            j->lse[p] = 0.0f;
            continue;
        }
        size_t lo, hi;
        row_band(j, s, &lo, &hi);
        float mx = -INFINITY;
        for (size_t c = lo; c <= hi; c++) mx = row[c] > mx ? row[c] : mx;
        for (size_t c = 0; c < j->gv; c++)
            if (global_visible(j, s, p, (size_t)j->gl[c])) mx = grow[c] > mx ? grow[c] : mx;
            else grow[c] = -INFINITY;
        float sum = 0.0f;
        for (size_t c = lo; c <= hi; c++) sum += row[c] = fs_fast_expf(row[c] - mx);
        for (size_t c = 0; c < j->gv; c++)
            if (grow[c] != -INFINITY) sum += grow[c] = fs_fast_expf(grow[c] - mx);
            else grow[c] = 0.0f;
        float inv = 1.0f / sum;
        for (size_t c = 0; c < lo; c++) row[c] = 0.0f;
        for (size_t c = lo; c <= hi; c++) row[c] *= inv;
        for (size_t c = hi + 1; c < j->L; c++) row[c] = 0.0f;
        for (size_t c = 0; c < j->gv; c++) grow[c] *= inv;
        j->lse[p] = mx + logf(sum);
    }
}

/* P from the saved statistics, then dS = P * (dP - rowsum(P * dP)) * scale
 * in place of dP. Masked entries get P = 0 and therefore dS = 0. */
static void backward_rows(const band_block *j) {
    for (size_t i = 0; i < j->m; i++) {
        size_t s = j->a0 + i, p = j->r + s * j->d;
        float *row = j->S + i * j->L, *drow = j->dP + i * j->L;
        float *grow = j->Sg + i * j->gv, *dgrow = j->dPg + i * j->gv;
        if (j->gflag[p]) {
            memset(row, 0, j->L * sizeof(float));
            memset(drow, 0, j->L * sizeof(float));
            memset(grow, 0, j->gv * sizeof(float));
            memset(dgrow, 0, j->gv * sizeof(float));
            continue;
        }
        size_t lo, hi;
        row_band(j, s, &lo, &hi);
        float lse = j->lse[p], dot = 0.0f;
        for (size_t c = 0; c < lo; c++) row[c] = 0.0f;
        for (size_t c = lo; c <= hi; c++) {
            row[c] = fs_fast_expf(row[c] - lse);
            dot += row[c] * drow[c];
        }
        for (size_t c = hi + 1; c < j->L; c++) row[c] = 0.0f;
        for (size_t c = 0; c < j->gv; c++) {
            grow[c] = global_visible(j, s, p, (size_t)j->gl[c]) ? fs_fast_expf(grow[c] - lse) : 0.0f;
            dot += grow[c] * dgrow[c];
        }
        for (size_t c = 0; c < j->L; c++) drow[c] = row[c] * (drow[c] - dot) * j->scale;
        for (size_t c = 0; c < j->gv; c++) dgrow[c] = grow[c] * (dgrow[c] - dot) * j->scale;
    }
}

/* ---- one pass over every (b, h) ---- */

typedef struct band_pass {
    lf_plugin *lf;
    const fs_attention_args *a;
    lf_state *st;
    float *work;        /* n_slots x slot_floats */
    size_t slot_floats, n_slots;
    size_t G, Lc;       /* most globals in a sequence; widest band */
} band_pass;

/* Work memory of one thread: Kt, Vt (D, Lc); S, dP (block, Lc); Sg, dPg
 * (block, G); Kg, Vg, dKg, dVg (G, D); KgT, VgT (D, G). */
static size_t slot_floats(const lf_plugin *lf, size_t G, size_t Lc) {
    size_t D = lf->cfg.head_dim, bw = lf->block;
    return 2 * D * Lc + 2 * bw * Lc + 2 * bw * G + 6 * G * D + 16;
}

/* Globals a block whose last position is p_last can see. */
static size_t globals_for_block(const lf_plugin *lf, const int32_t *gl, size_t g, size_t p_last) {
    if (!lf->cfg.causal) return g;
    size_t n = 0;
    while (n < g && (size_t)gl[n] < p_last) n++;
    return n;
}

/* Rows gl[0..g) of a (T, D) matrix into a (g, D) one. */
static void gather_rows(float *dst, const float *src, const int32_t *gl, size_t g, size_t D) {
    for (size_t i = 0; i < g; i++) memcpy(dst + i * D, src + (size_t)gl[i] * D, D * sizeof(float));
}

static void head(const band_pass *bp, size_t bh, float *ws, int backward) {
    const lf_plugin *lf = bp->lf;
    const fs_attention_args *a = bp->a;
    const lf_state *st = bp->st;
    size_t H = lf->cfg.n_head, D = lf->cfg.head_dim, T = a->T, w = lf->window, bw = lf->block;
    size_t b = bh / H, h = bh % H, d = lf->dil[h], ld = d * D, g = (size_t)st->gcount[b], G = bp->G, Lc = bp->Lc;
    size_t off = bh * T * D;
    const float *q = (const float *)a->q.data + off, *k = (const float *)a->k.data + off;
    const float *v = (const float *)a->v.data + off;
    const float *dout = backward ? (const float *)a->dout.data + off : NULL;
    float *out = backward ? NULL : (float *)a->out.data + off;
    float *dq = backward ? (float *)a->dq.data + off : NULL, *dk = backward ? (float *)a->dk.data + off : NULL;
    float *dv = backward ? (float *)a->dv.data + off : NULL;
    float *Kt = ws, *Vt = Kt + D * Lc, *S = Vt + D * Lc, *dP = S + bw * Lc, *Sg = dP + bw * Lc, *dPg = Sg + bw * G;
    float *Kg = dPg + bw * G, *Vg = Kg + G * D, *dKg = Vg + G * D, *dVg = dKg + G * D, *KgT = dVg + G * D;
    float *VgT = KgT + G * D;
    const int32_t *gl = st->glist + b * st->gmax;
    gather_rows(Kg, k, gl, g, D);
    gather_rows(Vg, v, gl, g, D);
    transpose(KgT, Kg, g, D, D);
    if (backward) {
        transpose(VgT, Vg, g, D, D);
        memset(dKg, 0, g * D * sizeof(float));
        memset(dVg, 0, g * D * sizeof(float));
        memset(dq, 0, T * D * sizeof(float));
        memset(dk, 0, T * D * sizeof(float));
        memset(dv, 0, T * D * sizeof(float));
    }
    for (size_t r = 0; r < d && r < T; r++) {
        size_t n = (T - 1 - r) / d + 1;
        for (size_t a0 = 0; a0 < n; a0 += bw) {
            size_t m = n - a0 < bw ? n - a0 : bw;
            size_t k0 = a0 > w ? a0 - w : 0;
            size_t k1 = lf->cfg.causal ? a0 + m : (a0 + m + w < n ? a0 + m + w : n);
            size_t L = k1 - k0, gv = globals_for_block(lf, gl, g, r + (a0 + m - 1) * d);
            size_t qo = (r + a0 * d) * D, ko = (r + k0 * d) * D;
            band_block blk = {S,  dP, Sg, dPg, st->lse + bh * T, st->gflag + b * T, gl, m, L, gv, k0, a0, n, r, d,
                              w,  lf->cfg.causal, lf->scale};
            transpose(Kt, k + ko, L, ld, D);
            mm(m, L, D, lf->scale, q + qo, ld, 1, Kt, L, 0, S, L);
            if (gv) mm(m, gv, D, lf->scale, q + qo, ld, 1, KgT, g, 0, Sg, gv);
            if (!backward) {
                forward_rows(&blk);
                mm(m, D, L, 1.0f, S, L, 1, v + ko, ld, 0, out + qo, ld);
                if (gv) mm(m, D, gv, 1.0f, Sg, gv, 1, Vg, D, 1, out + qo, ld);
                continue;
            }
            transpose(Vt, v + ko, L, ld, D);
            mm(m, L, D, 1.0f, dout + qo, ld, 1, Vt, L, 0, dP, L);
            if (gv) mm(m, gv, D, 1.0f, dout + qo, ld, 1, VgT, g, 0, dPg, gv);
            backward_rows(&blk);
            /* dV += P^T dO; dQ = dS K; dK += dS^T Q (bands of blocks overlap: accumulate) */
            mm(L, D, m, 1.0f, S, 1, L, dout + qo, ld, 1, dv + ko, ld);
            mm(m, D, L, 1.0f, dP, L, 1, k + ko, ld, 0, dq + qo, ld);
            mm(L, D, m, 1.0f, dP, 1, L, q + qo, ld, 1, dk + ko, ld);
            if (gv) {
                mm(gv, D, m, 1.0f, Sg, 1, gv, dout + qo, ld, 1, dVg, D);
                mm(m, D, gv, 1.0f, dPg, gv, 1, Kg, D, 1, dq + qo, ld);
                mm(gv, D, m, 1.0f, dPg, 1, gv, q + qo, ld, 1, dKg, D);
            }
        }
    }
    for (size_t i = 0; backward && i < g; i++) {
        float *dkr = dk + (size_t)gl[i] * D, *dvr = dv + (size_t)gl[i] * D;
        for (size_t c = 0; c < D; c++) {
            dkr[c] += dKg[i * D + c];
            dvr[c] += dVg[i * D + c];
        }
    }
}

/* Slot i runs heads i, i + n_slots, ... with its own work memory. */
static void forward_slots(void *arg, size_t begin, size_t end) {
    const band_pass *bp = arg;
    for (size_t i = begin; i < end; i++)
        for (size_t bh = i; bh < bp->a->B * bp->lf->cfg.n_head; bh += bp->n_slots)
            head(bp, bh, bp->work + i * bp->slot_floats, 0);
}

static void backward_slots(void *arg, size_t begin, size_t end) {
    const band_pass *bp = arg;
    for (size_t i = begin; i < end; i++)
        for (size_t bh = i; bh < bp->a->B * bp->lf->cfg.n_head; bh += bp->n_slots)
            head(bp, bh, bp->work + i * bp->slot_floats, 1);
}

static int run(lf_plugin *lf, const fs_attention_args *a, lf_state *st, int backward, fs_error *err) {
    band_pass bp = {lf, a, st, NULL, 0, 0, 0, 0};
    size_t BH = a->B * lf->cfg.n_head, L = lf->block + (lf->cfg.causal ? 1 : 2) * lf->window;
    for (size_t b = 0; b < st->B; b++) bp.G = (size_t)st->gcount[b] > bp.G ? (size_t)st->gcount[b] : bp.G;
    bp.Lc = L < a->T ? L : a->T;
    bp.slot_floats = slot_floats(lf, bp.G, bp.Lc);
    int threads = lf->host->n_threads();
    bp.n_slots = 4 * (size_t)(threads > 0 ? threads : 1);
    if (bp.n_slots > BH) bp.n_slots = BH;
    bp.work = lf_scratch(lf, bp.n_slots * bp.slot_floats);
    if (!bp.work) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory for work space");
    lf->host->parallel_for(bp.n_slots, 1, backward ? backward_slots : forward_slots, &bp);
    return FS_OK;
}

int lf_band_forward(lf_plugin *lf, const fs_attention_args *a, lf_state *st, fs_error *err) {
    return run(lf, a, st, 0, err);
}

int lf_band_backward(lf_plugin *lf, const fs_attention_args *a, lf_state *st, fs_error *err) {
    return run(lf, a, st, 1, err);
}
