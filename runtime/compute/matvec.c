/* matvec.c — see matvec.h. */
#include "compute/matvec.h"

#include <omp.h>
#include <string.h>

#include "core/host.h"
#include "compute/simd.h"

typedef struct split_job {
    size_t out, align;
    int parts;
    fs_rows_fn fn;
    void *arg;
} split_job;

static void split_part(const split_job *j, int p) {
    size_t units = (j->out + j->align - 1) / j->align;
    size_t o0 = units * (size_t)p / (size_t)j->parts * j->align;
    size_t o1 = p + 1 == j->parts ? j->out : units * (size_t)(p + 1) / (size_t)j->parts * j->align;
    if (o1 > j->out) o1 = j->out;
    if (o0 < o1) j->fn(j->arg, p, o0, o1);
}

int fs_matvec_split(size_t out, size_t align, int threads, fs_rows_fn fn, void *arg) {
    if (align == 0) align = 1;
    size_t units = (out + align - 1) / align;
    if (threads > FS_MATVEC_MAX_THREADS) threads = FS_MATVEC_MAX_THREADS;
    if ((size_t)threads > units) threads = (int)units;
    if (threads <= 1 || omp_in_parallel()) {
        if (out) fn(arg, 0, 0, out);
        return 1;
    }
    split_job j = {out, align, threads, fn, arg};
#pragma omp parallel num_threads(threads)
    {
        /* the runtime may give fewer threads than asked: every part still runs */
        for (int p = omp_get_thread_num(); p < j.parts; p += omp_get_num_threads()) split_part(&j, p);
    }
    return threads;
}

/* ---- f32 ---- */

/* y[r * ldy + k] = W[o + k] . x[r] + bias[o + k] for k < nout (<= 4),
 * r < R: the nout weight rows are loaded once per step of the dot product
 * and used for every input row. R and nout are constants in the common
 * instances, so the accumulators live in registers. `next` (or NULL) is
 * the next tile's first row: its rows are prefetched at the same offsets,
 * since each row is only a few KiB, too short for the hardware prefetcher
 * to get going on the four streams of the next tile by itself (measured:
 * 30% more bandwidth on one core). */
static inline __attribute__((always_inline)) void f32_tile(float *y, size_t ldy, const float *x, size_t R,
                                                           const float *W, size_t in, const float *bias, size_t o,
                                                           size_t nout, const float *next) {
    fs_vf acc[4][FS_MATVEC_MAX_ROWS];
    for (size_t k = 0; k < 4; k++)
        for (size_t r = 0; r < R; r++) acc[k][r] = fs_vf_zero();
    size_t i = 0;
    for (; i + FS_VW <= in; i += FS_VW) {
        if (next && i % 16 == 0) /* a cache line of each */
            for (size_t k = 0; k < 4; k++) __builtin_prefetch(next + k * in + i);
        fs_vf w[4];
        for (size_t k = 0; k < nout; k++) w[k] = fs_vf_load(W + (o + k) * in + i);
        for (size_t r = 0; r < R; r++) {
            fs_vf xv = fs_vf_load(x + r * in + i);
            for (size_t k = 0; k < nout; k++) acc[k][r] += w[k] * xv;
        }
    }
    for (size_t k = 0; k < nout; k++)
        for (size_t r = 0; r < R; r++) {
            float s = fs_vf_sum(acc[k][r]);
            for (size_t t = i; t < in; t++) s += W[(o + k) * in + t] * x[r * in + t];
            y[r * ldy + k] = s + (bias ? bias[o + k] : 0.0f);
        }
}

/* Outputs [o0, o1) for R (<= FS_MATVEC_MAX_ROWS) input rows, 4 at a time;
 * y points at output o0 of the first row; W has `out` rows in all. */
static void f32_span(float *y, size_t ldy, const float *x, size_t R, const float *W, size_t in, const float *bias,
                     size_t o0, size_t o1, size_t out) {
    for (size_t o = o0; o < o1; o += 4) {
        float *yo = y + (o - o0);
        const float *next = o + 8 <= out ? W + (o + 4) * in : NULL;
        if (o1 - o < 4) {
            f32_tile(yo, ldy, x, R, W, in, bias, o, o1 - o, NULL);
            continue;
        }
        switch (R) { /* constant bounds for the compiler */
        case 1: f32_tile(yo, ldy, x, 1, W, in, bias, o, 4, next); break;
        case 2: f32_tile(yo, ldy, x, 2, W, in, bias, o, 4, next); break;
        case 3: f32_tile(yo, ldy, x, 3, W, in, bias, o, 4, next); break;
        default: f32_tile(yo, ldy, x, 4, W, in, bias, o, 4, next); break;
        }
    }
}

/* A block of weight rows is read from memory once: the passes over more
 * than FS_MATVEC_MAX_ROWS input rows find it in cache (about BLOCK_BYTES). */
#define BLOCK_BYTES (64 * 1024)

typedef struct f32_job {
    float *y;
    const float *x, *W, *bias;
    size_t n, in, out;
} f32_job;

static void f32_rows(void *arg, int part, size_t o0, size_t o1) {
    const f32_job *j = arg;
    (void)part;
    size_t block = BLOCK_BYTES / (j->in * sizeof(float)) / 4 * 4;
    if (block < 4) block = 4;
    for (size_t b0 = o0; b0 < o1; b0 += block) {
        size_t b1 = b0 + block < o1 ? b0 + block : o1;
        for (size_t r = 0; r < j->n; r += FS_MATVEC_MAX_ROWS) {
            size_t R = j->n - r < FS_MATVEC_MAX_ROWS ? j->n - r : FS_MATVEC_MAX_ROWS;
            f32_span(j->y + r * j->out + b0, j->out, j->x + r * j->in, R, j->W, j->in, j->bias, b0, b1, j->out);
        }
    }
}

void fs_matvec_f32(float *y, const float *x, const float *W, const float *bias, size_t n, size_t in, size_t out,
                   int threads) {
    f32_job j = {y, x, W, bias, n, in, out};
    fs_matvec_split(out, 16, threads, f32_rows, &j);
}

/* ---- f32, (in, out): the training layout, read as one stream ---- */

/* y[r][c] += sum_i x[r][i] W[i][c] over weight rows [i0, i1), 8 rows at a
 * time. The 8 rows' vectors at column c are loaded once and used for every
 * input row r, whose accumulators are y itself (in cache: n x out floats),
 * so up to IO_GROUP input rows are one pass over W. The weight rows are
 * read in memory order. Threads take contiguous ranges of weight rows, not
 * of columns, each adding into its own partial y: a thread then streams
 * one contiguous region instead of a short piece of every row. Measured on
 * one core: 17-18.6 GB/s where (out, in) dot products reached 10-14
 * (OpenBLAS's sgemv 16-18); on two, for (3072, 768), 20-23 GB/s against
 * 15-17 split by columns. */
typedef struct io_job {
    float *y, *part; /* part: (parts - 1) partial sums of (n, out) after y's */
    const float *x, *W, *bias;
    size_t n, in, out;
} io_job;

#define IO_ROWS 8
/* input rows whose broadcast x values one pass keeps (on the stack) */
#define IO_GROUP 16

static inline __attribute__((always_inline)) void io_step(float *yp, const io_job *j, size_t i, size_t K, size_t r0,
                                                          size_t R) {
    size_t out = j->out, in = j->in, c = 0;
    fs_vf xb[IO_GROUP][IO_ROWS]; /* x[r][i + k] in every lane, made once for all columns */
    for (size_t r = 0; r < R; r++)
        for (size_t k = 0; k < K; k++) xb[r][k] = fs_vf_zero() + j->x[(r0 + r) * in + i + k];
    for (; c + FS_VW <= out; c += FS_VW) {
        fs_vf w[IO_ROWS];
        for (size_t k = 0; k < K; k++) w[k] = fs_vf_load(j->W + (i + k) * out + c);
        for (size_t r = 0; r < R; r++) {
            float *y = yp + (r0 + r) * out + c;
            fs_vf a = fs_vf_load(y);
            for (size_t k = 0; k < K; k++) a += xb[r][k] * w[k];
            memcpy(y, &a, sizeof a);
        }
    }
    for (; c < out; c++)
        for (size_t r = r0; r < r0 + R; r++) {
            float a = yp[r * out + c];
            for (size_t k = 0; k < K; k++) a += j->x[r * in + i + k] * j->W[(i + k) * out + c];
            yp[r * out + c] = a;
        }
}

static void io_rows(void *arg, int part, size_t i0, size_t i1) {
    const io_job *j = arg;
    float *yp = part ? j->part + (size_t)(part - 1) * j->n * j->out : j->y;
    for (size_t r = 0; r < j->n; r++) {
        if (part == 0 && j->bias)
            memcpy(yp + r * j->out, j->bias, j->out * sizeof(float));
        else
            memset(yp + r * j->out, 0, j->out * sizeof(float));
    }
    for (size_t r0 = 0; r0 < j->n; r0 += IO_GROUP) {
        size_t R = j->n - r0 < IO_GROUP ? j->n - r0 : IO_GROUP, i = i0;
        for (; i + IO_ROWS <= i1; i += IO_ROWS) switch (R) { /* constants: x's broadcasts stay in registers */
            case 1: io_step(yp, j, i, IO_ROWS, r0, 1); break;
            case 2: io_step(yp, j, i, IO_ROWS, r0, 2); break;
            default: io_step(yp, j, i, IO_ROWS, r0, R); break;
            }
        if (i < i1) io_step(yp, j, i, i1 - i, r0, R);
    }
}

/* The partial sums of threads 1.. live in a buffer of the calling thread
 * that grows to the largest step it has seen: allocated once, not per call
 * (each thread that decodes has its own, so sequences on several threads
 * never share it). */
static _Thread_local float *g_part;
static _Thread_local size_t g_part_floats;

float *fs_matvec_partials(size_t floats) {
    if (floats > g_part_floats) {
        fs_free(g_part);
        g_part = fs_alloc(floats * sizeof(float));
        g_part_floats = g_part ? floats : 0;
    }
    return g_part;
}

void fs_matvec_add_partials(float *y, const float *part, int parts, size_t count) {
    for (int p = 1; p < parts; p++)
        for (size_t e = 0; e < count; e++) y[e] += part[(size_t)(p - 1) * count + e];
}

void fs_matvec_f32_io(float *y, const float *x, const float *W, const float *bias, size_t n, size_t in, size_t out,
                      int threads) {
    if (threads > FS_MATVEC_MAX_THREADS) threads = FS_MATVEC_MAX_THREADS;
    float *part = threads > 1 ? fs_matvec_partials((size_t)(threads - 1) * n * out) : NULL;
    if (!part) threads = 1; /* no memory for partial sums: one thread still gives the answer */
    io_job j = {y, part, x, W, bias, n, in, out};
    int parts = fs_matvec_split(in, IO_ROWS, threads, io_rows, &j);
    fs_matvec_add_partials(y, part, parts, n * out);
}

/* ---- the vocabulary projection with top-k ---- */

typedef struct topk_list {
    int ids[FS_TOPK_MAX];
    float vals[FS_TOPK_MAX];
    size_t n;
} topk_list;

/* Inserts (id, v) into the descending list of at most k; equal values
 * keep the lower id first. */
static void topk_push(topk_list *l, size_t k, int id, float v) {
    if (l->n == k && !(v > l->vals[k - 1] || (v == l->vals[k - 1] && id < l->ids[k - 1]))) return;
    size_t i = l->n < k ? l->n++ : k - 1;
    while (i > 0 && (l->vals[i - 1] < v || (l->vals[i - 1] == v && l->ids[i - 1] > id))) {
        l->vals[i] = l->vals[i - 1];
        l->ids[i] = l->ids[i - 1];
        i--;
    }
    l->vals[i] = v;
    l->ids[i] = id;
}

typedef struct topk_job {
    const float *x, *W;
    size_t C, V, k;
    topk_list *parts;
} topk_job;

/* 64 logits at a time into a buffer on the stack, then into the part's list. */
static void topk_rows(void *arg, int part, size_t o0, size_t o1) {
    const topk_job *j = arg;
    topk_list *l = &j->parts[part];
    float buf[64];
    for (size_t b0 = o0; b0 < o1; b0 += 64) {
        size_t b1 = b0 + 64 < o1 ? b0 + 64 : o1;
        f32_span(buf, 0, j->x, 1, j->W, j->C, NULL, b0, b1, j->V);
        for (size_t o = b0; o < b1; o++) topk_push(l, j->k, (int)o, buf[o - b0]);
    }
}

void fs_matvec_topk_f32(int *ids, float *vals, size_t k, const float *x, const float *W, size_t C, size_t V,
                        int threads) {
    if (k > FS_TOPK_MAX) k = FS_TOPK_MAX;
    if (k > V) k = V;
    if (k == 0) return;
    topk_list parts[FS_MATVEC_MAX_THREADS], all = {.n = 0};
    for (int t = 0; t < FS_MATVEC_MAX_THREADS; t++) parts[t].n = 0;
    topk_job j = {x, W, C, V, k, parts};
    int n = fs_matvec_split(V, 64, threads, topk_rows, &j);
    for (int t = 0; t < n; t++)
        for (size_t i = 0; i < parts[t].n; i++) topk_push(&all, k, parts[t].ids[i], parts[t].vals[i]);
    memcpy(ids, all.ids, k * sizeof(int));
    memcpy(vals, all.vals, k * sizeof(float));
}
