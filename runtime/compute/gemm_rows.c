/* gemm_rows.c — see gemm_rows.h. */
#include "compute/gemm_rows.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FS_ROWS_AVX2 1
#else
#define FS_ROWS_AVX2 0
#endif

#define LANES 8
/* Output columns one thread takes at a time. */
#define PANEL 64
/* Multiply-adds below which a product runs on the calling thread alone. */
#define PARALLEL_MIN ((size_t)1 << 16)

typedef struct gemm_job {
    float *c;
    const float *a, *b, *bias;
    size_t ldc, lda, ldb, m, n, k;
} gemm_job;

/* nt's reduction of the eight lanes (gemm_rows.h). */
static inline float reduce_lanes(const float *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* ---- portable elements: the definition every fast path reproduces ---- */

static float nn_element(const float *a, const float *b, size_t ldb, size_t k) {
    float acc = 0.0f;
    for (size_t i = 0; i < k; i++) acc = fmaf(a[i], b[i * ldb], acc);
    return acc;
}

float fs_dot_rows(const float *a, const float *b, size_t k) {
    float l[LANES] = {0};
    size_t k8 = k - k % LANES, i = 0;
    for (; i < k8; i += LANES)
        for (size_t j = 0; j < LANES; j++) l[j] = fmaf(a[i + j], b[i + j], l[j]);
    for (; i < k; i++) l[i - k8] = fmaf(a[i], b[i], l[i - k8]);
    return reduce_lanes(l);
}

static void nn_scalar(const gemm_job *j, size_t r0, size_t r1, size_t o0, size_t o1) {
    for (size_t r = r0; r < r1; r++)
        for (size_t o = o0; o < o1; o++) {
            float acc = nn_element(j->a + r * j->lda, j->b + o, j->ldb, j->k);
            j->c[r * j->ldc + o] = j->bias ? acc + j->bias[o] : acc;
        }
}

/* Packed W (fs_gemm_rows_pack): the panel of columns [o0, o0 + width)
 * starts at o0 * k (every panel before it is PANEL wide) and its rows are
 * the width rounded up to 8 apart. */
static const float *packed_panel(const gemm_job *j, size_t o0, size_t o1, size_t *ld) {
    *ld = (o1 - o0 + 7) / 8 * 8;
    return j->b + o0 * j->k;
}

/* Columns [from, o1) of the packed panel at o0, element by element. */
static void nn_packed_scalar(const gemm_job *j, size_t o0, size_t from, size_t o1) {
    size_t ld;
    const float *panel = packed_panel(j, o0, o1, &ld);
    for (size_t r = 0; r < j->m; r++)
        for (size_t o = from; o < o1; o++) {
            float acc = nn_element(j->a + r * j->lda, panel + (o - o0), ld, j->k);
            j->c[r * j->ldc + o] = j->bias ? acc + j->bias[o] : acc;
        }
}

#if FS_ROWS_AVX2
/* ---- AVX2 tiles: R rows x V vectors of 8 columns (nn), R rows x O outputs (nt) ---- */

/* W's rows [k0, k1) over one panel's columns [o0, o0 + w), copied side by
 * side (row i at (i - k0) * w): a tile then reads its weights from one
 * contiguous block in L1/L2 instead of one cache line every ldb floats
 * (4 KiB apart for 1024 columns: every line in the same L1 set). Copying
 * changes no value, and an element's chain pauses in C between k blocks (a
 * float stored and reloaded exactly): the same fma chain, the same bits. */
#define KBLOCK 256
typedef struct nn_panel {
    const float *w; /* (k1 - k0, width), rows ld apart (32-byte aligned) */
    size_t width, ld, o0, k0, k1;
} nn_panel;

static _Thread_local float nn_packed[KBLOCK * PANEL] __attribute__((aligned(64)));

static inline __attribute__((always_inline)) void nn_tile(const gemm_job *j, const nn_panel *p, size_t r0,
                                                          size_t o, size_t R, size_t V) {
    __m256 acc[6][8];
    float *c = j->c + r0 * j->ldc + o;
    for (size_t r = 0; r < R; r++)
        for (size_t v = 0; v < V; v++)
            acc[r][v] = p->k0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(c + r * j->ldc + 8 * v);
    const float *a = j->a + r0 * j->lda, *w = p->w + (o - p->o0);
    for (size_t i = p->k0; i < p->k1; i++, w += p->ld) {
        __m256 wv[8];
        for (size_t v = 0; v < V; v++) wv[v] = _mm256_load_ps(w + 8 * v);
        for (size_t r = 0; r < R; r++) {
            __m256 x = _mm256_broadcast_ss(a + r * j->lda + i);
            for (size_t v = 0; v < V; v++) acc[r][v] = _mm256_fmadd_ps(x, wv[v], acc[r][v]);
        }
    }
    int last = p->k1 == j->k;
    for (size_t r = 0; r < R; r++)
        for (size_t v = 0; v < V; v++) {
            __m256 y = acc[r][v];
            if (last && j->bias) y = _mm256_add_ps(y, _mm256_loadu_ps(j->bias + o + 8 * v));
            _mm256_storeu_ps(c + r * j->ldc + 8 * v, y);
        }
}

/* Rows [r0, r0 + R) over the panel's vector columns: as many 8 V-wide
 * tiles as fit, 8-wide ones after. */
static inline __attribute__((always_inline)) void nn_rows(const gemm_job *j, const nn_panel *p, size_t r0, size_t R,
                                                          size_t V) {
    size_t o = p->o0, o1 = p->o0 + p->width;
    for (; o + 8 * V <= o1; o += 8 * V) nn_tile(j, p, r0, o, R, V);
    for (; o + 8 <= o1; o += 8) nn_tile(j, p, r0, o, R, 1);
}

static void nn_panel_rows(const gemm_job *j, const nn_panel *p) {
    size_t r = 0, m = j->m;
    for (; r + 6 <= m; r += 6) nn_rows(j, p, r, 6, 2);
    switch (m - r) {
    case 5: nn_rows(j, p, r, 5, 2); break;
    case 4: nn_rows(j, p, r, 4, 3); break;
    case 3: nn_rows(j, p, r, 3, 3); break;
    case 2: nn_rows(j, p, r, 2, 4); break;
    case 1: nn_rows(j, p, r, 1, 8); break;
    default: break;
    }
}

/* Columns [o0, o1) (at most PANEL): the columns in whole vectors by packed
 * k blocks, the last (o1 - o0) % 8 element by element. */
static void nn_block(const gemm_job *j, size_t o0, size_t o1) {
    size_t w8 = (o1 - o0) - (o1 - o0) % 8;
    if (j->k == 0 || w8 == 0) {
        nn_scalar(j, 0, j->m, o0, o1);
        return;
    }
    for (size_t k0 = 0; k0 < j->k; k0 += KBLOCK) {
        nn_panel p = {nn_packed, w8, w8, o0, k0, k0 + KBLOCK < j->k ? k0 + KBLOCK : j->k};
        for (size_t i = p.k0; i < p.k1; i++) memcpy(nn_packed + (i - k0) * w8, j->b + i * j->ldb + o0, w8 * sizeof(float));
        nn_panel_rows(j, &p);
    }
    if (o0 + w8 < o1) nn_scalar(j, 0, j->m, o0 + w8, o1);
}

/* A panel of a packed W (fs_gemm_rows_pack): the same tiles, their
 * weights read where the packing left them, no copy per call. */
static void nn_packed_block(const gemm_job *j, size_t o0, size_t o1) {
    size_t w8 = (o1 - o0) - (o1 - o0) % 8, ld;
    const float *panel = packed_panel(j, o0, o1, &ld);
    for (size_t k0 = 0; w8 && k0 < j->k; k0 += KBLOCK) {
        nn_panel p = {panel + k0 * ld, w8, ld, o0, k0, k0 + KBLOCK < j->k ? k0 + KBLOCK : j->k};
        nn_panel_rows(j, &p);
    }
    nn_packed_scalar(j, o0, o0 + w8, o1); /* the last width % 8 columns */
}

static inline __attribute__((always_inline)) void nt_tile(const gemm_job *j, size_t r0, size_t o0, size_t R,
                                                          size_t O) {
    __m256 acc[3][8];
    for (size_t r = 0; r < R; r++)
        for (size_t o = 0; o < O; o++) acc[r][o] = _mm256_setzero_ps();
    size_t k = j->k, k8 = k - k % LANES;
    for (size_t i = 0; i < k8; i += LANES) {
        __m256 x[3];
        for (size_t r = 0; r < R; r++) x[r] = _mm256_loadu_ps(j->a + (r0 + r) * j->lda + i);
        for (size_t o = 0; o < O; o++) {
            __m256 w = _mm256_loadu_ps(j->b + (o0 + o) * j->ldb + i);
            for (size_t r = 0; r < R; r++) acc[r][o] = _mm256_fmadd_ps(x[r], w, acc[r][o]);
        }
    }
    for (size_t r = 0; r < R; r++)
        for (size_t o = 0; o < O; o++) {
            float l[LANES];
            _mm256_storeu_ps(l, acc[r][o]);
            const float *a = j->a + (r0 + r) * j->lda, *b = j->b + (o0 + o) * j->ldb;
            for (size_t i = k8; i < k; i++) l[i - k8] = fmaf(a[i], b[i], l[i - k8]);
            float y = reduce_lanes(l);
            j->c[(r0 + r) * j->ldc + o0 + o] = j->bias ? y + j->bias[o0 + o] : y;
        }
}

static inline __attribute__((always_inline)) void nt_rows(const gemm_job *j, size_t r0, size_t R, size_t O,
                                                          size_t o0, size_t o1) {
    size_t o = o0;
    for (; o + O <= o1; o += O) nt_tile(j, r0, o, R, O);
    for (; o < o1; o++) nt_tile(j, r0, o, R, 1);
}

static void nt_block(const gemm_job *j, size_t o0, size_t o1) {
    size_t r = 0, m = j->m;
    for (; r + 3 <= m; r += 3) nt_rows(j, r, 3, 3, o0, o1);
    if (m - r == 2) nt_rows(j, r, 2, 4, o0, o1);
    if (m - r == 1) nt_rows(j, r, 1, 8, o0, o1);
}
#else
/* without AVX2 (the sanitizer build): the definition itself, element by
 * element (many rows; few rows stream, as above) */
static void nn_block(const gemm_job *j, size_t o0, size_t o1) { nn_scalar(j, 0, j->m, o0, o1); }

static void nn_packed_block(const gemm_job *j, size_t o0, size_t o1) { nn_packed_scalar(j, o0, o0, o1); }

static void nt_block(const gemm_job *j, size_t o0, size_t o1) {
    for (size_t r = 0; r < j->m; r++)
        for (size_t o = o0; o < o1; o++) {
            float acc = fs_dot_rows(j->a + r * j->lda, j->b + o * j->ldb, j->k);
            j->c[r * j->ldc + o] = j->bias ? acc + j->bias[o] : acc;
        }
}
#endif

/* ---- few rows (decoding): the same element chains, weights streamed ----
 *
 * A panel tile reads W 64 columns at a time down all k rows: a strided
 * walk the prefetchers follow poorly, fine when many rows share each load
 * but 3x slower than reading W in memory order for one or two rows. Here
 * each thread takes a contiguous range of columns and walks W row by row
 * (i = 0..k-1), updating every output of its range with one fused
 * multiply-add per row: the loops are swapped, not the arithmetic, so each
 * element is the same fma chain from 0 in the same order (gemm_rows.h) and
 * the bits equal the tiles'. The outputs being accumulated stay in L1. */
#define STREAM_ROWS 4
#define STREAM_COLS 4096 /* columns per pass: up to 4 rows of them (64 KiB) stay in L2 */

/* Row r's outputs [o0, o1) += its inputs i .. i + STEP - 1 times W's rows
 * i .. i + STEP - 1, one element's STEP fused multiply-adds in order with
 * the element in a register between them (STEP weight rows streamed side by
 * side, the output loaded and stored once per STEP). */
#define STEP 8
static void nn_stream_step(const gemm_job *j, size_t r, size_t i, size_t o0, size_t o1) {
    float *c = j->c + r * j->ldc;
    const float *x = j->a + r * j->lda + i, *w = j->b + i * j->ldb;
    size_t ld = j->ldb, o = o0;
#if FS_ROWS_AVX2
    __m256 xv[STEP];
    for (size_t t = 0; t < STEP; t++) xv[t] = _mm256_set1_ps(x[t]);
    for (; o + 8 <= o1; o += 8) {
        __m256 acc = _mm256_loadu_ps(c + o);
        for (size_t t = 0; t < STEP; t++) acc = _mm256_fmadd_ps(xv[t], _mm256_loadu_ps(w + t * ld + o), acc);
        _mm256_storeu_ps(c + o, acc);
    }
#endif
    for (; o < o1; o++)
        for (size_t t = 0; t < STEP; t++) c[o] = fmaf(x[t], w[t * ld + o], c[o]);
}

static void nn_stream_range(const gemm_job *j, size_t o0, size_t o1) {
    for (size_t r = 0; r < j->m; r++) memset(j->c + r * j->ldc + o0, 0, (o1 - o0) * sizeof(float));
    size_t i = 0;
    for (; i + STEP <= j->k; i += STEP)
        for (size_t r = 0; r < j->m; r++) nn_stream_step(j, r, i, o0, o1);
    for (; i < j->k; i++) /* the last k % STEP, one weight row at a time */
        for (size_t r = 0; r < j->m; r++) {
            float *c = j->c + r * j->ldc;
            const float *w = j->b + i * j->ldb;
            float x = j->a[r * j->lda + i];
            for (size_t o = o0; o < o1; o++) c[o] = fmaf(x, w[o], c[o]);
        }
    if (j->bias)
        for (size_t r = 0; r < j->m; r++)
            for (size_t o = o0; o < o1; o++) j->c[r * j->ldc + o] += j->bias[o];
}

static void nn_stream(const gemm_job *j) {
    int threads = omp_in_parallel() || j->m * j->n * j->k < PARALLEL_MIN ? 1 : omp_get_max_threads();
    size_t units = (j->n + 7) / 8;
    if ((size_t)threads > units) threads = (int)units;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        size_t t = (size_t)omp_get_thread_num(), T = (size_t)omp_get_num_threads();
        size_t o0 = units * t / T * 8, o1 = t + 1 == T ? j->n : units * (t + 1) / T * 8;
        for (size_t o = o0; o < o1; o += STREAM_COLS) nn_stream_range(j, o, o + STREAM_COLS < o1 ? o + STREAM_COLS : o1);
    }
}

/* Column panels among the calling thread's OpenMP threads. */
static void run_panels(const gemm_job *j, void (*block)(const gemm_job *, size_t, size_t)) {
    size_t panels = (j->n + PANEL - 1) / PANEL;
    int par = !omp_in_parallel() && omp_get_max_threads() > 1 && panels > 1 && j->m * j->n * j->k >= PARALLEL_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (size_t p = 0; p < panels; p++) {
        size_t o0 = p * PANEL, o1 = o0 + PANEL < j->n ? o0 + PANEL : j->n;
        block(j, o0, o1);
    }
}

void fs_gemm_rows_nn(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb, const float *bias,
                     size_t m, size_t n, size_t k) {
    if (m == 0 || n == 0) return;
    gemm_job j = {c, a, b, bias, ldc, lda, ldb, m, n, k};
    if (m <= STREAM_ROWS)
        nn_stream(&j);
    else
        run_panels(&j, nn_block);
}

void fs_gemm_rows_nt(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb, const float *bias,
                     size_t m, size_t n, size_t k) {
    if (m == 0 || n == 0) return;
    gemm_job j = {c, a, b, bias, ldc, lda, ldb, m, n, k};
    run_panels(&j, nt_block);
}

size_t fs_gemm_rows_packed_floats(size_t k, size_t n) { return k * ((n + 7) / 8 * 8); }

void fs_gemm_rows_pack(float *packed, const float *b, size_t ldb, size_t k, size_t n) {
    for (size_t o0 = 0; o0 < n; o0 += PANEL) {
        size_t width = n - o0 < PANEL ? n - o0 : PANEL, ld = (width + 7) / 8 * 8;
        float *panel = packed + o0 * k;
        for (size_t i = 0; i < k; i++) {
            memcpy(panel + i * ld, b + i * ldb + o0, width * sizeof(float));
            memset(panel + i * ld + width, 0, (ld - width) * sizeof(float));
        }
    }
}

void fs_gemm_rows_nn_packed(float *c, size_t ldc, const float *a, size_t lda, const float *packed, const float *bias,
                            size_t m, size_t n, size_t k) {
    if (m == 0 || n == 0) return;
    gemm_job j = {c, a, packed, bias, ldc, lda, 0, m, n, k};
    run_panels(&j, nn_packed_block);
}
