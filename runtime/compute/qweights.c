/* qweights.c — see qweights.h. */
#include "compute/qweights.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "compute/matvec.h"
#include "compute/simd.h"

_Static_assert(sizeof(fs_q8_block) == 34, "a Q8_0 block is 34 bytes, as llama.cpp's");

/* ---- formats ---- */

static const char *const g_names[] = {[FS_WEIGHTS_F32] = "f32", [FS_WEIGHTS_BF16] = "bf16", [FS_WEIGHTS_Q8] = "q8"};

int fs_wformat_parse(const char *name) {
    for (int f = 0; f < (int)(sizeof g_names / sizeof g_names[0]); f++)
        if (name && strcmp(name, g_names[f]) == 0) return f;
    return -1;
}

const char *fs_wformat_name(fs_wformat f) {
    return (unsigned)f < sizeof g_names / sizeof g_names[0] ? g_names[f] : "?";
}

/* ---- conversions ---- */

/* bf16 and the bit casts are the SDK's (fastserve/bf16.h), shared with the
 * attention plugins' bf16 KV blocks and the CUDA kernels. */


/* fs_ functions are exported, so -fPIC code calls them through the PLT
 * rather than inline them: the kernels use these static copies (a call in
 * an AVX loop also spills every accumulator around a vzeroupper). */
static inline uint16_t f32_to_fp16(float x) {
#if defined(__F16C__)
    return (uint16_t)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t u = fs_f32_bits(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* rounds to >= 65536: inf */
    if (a < 0x38800000u) {                                    /* below 2^-14: subnormal or zero */
        float f = fs_bits_f32(a) * 16777216.0f;                  /* in units of 2^-24, the smallest subnormal */
        uint32_t m = (uint32_t)f;
        float rest = f - (float)m;
        if (rest > 0.5f || (rest == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t e = ((a >> 23) - 112) << 10, m = (a >> 13) & 0x3ffu, r = a & 0x1fffu;
    uint32_t h = e | m;
    if (r > 0x1000u || (r == 0x1000u && (m & 1))) h++; /* may carry into the exponent: still right */
    return (uint16_t)(sign | h);
#endif
}

static inline float fp16_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return (sign ? -1.0f : 1.0f) * (float)m * 5.9604644775390625e-8f; /* m 2^-24 */
    if (e == 31) return fs_bits_f32(sign | 0x7f800000u | (m << 13));
    return fs_bits_f32(sign | ((e + 112) << 23) | (m << 13));
#endif
}

uint16_t fs_f32_to_fp16(float x) { return f32_to_fp16(x); }
float fs_fp16_to_f32(uint16_t h) { return fp16_to_f32(h); }


void fs_q8_quantize(fs_q8_block *dst, const float *x, size_t n) {
    for (size_t b = 0; b < n / FS_Q8_BLOCK; b++) {
        const float *v = x + b * FS_Q8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < FS_Q8_BLOCK; i++) amax = fmaxf(amax, fabsf(v[i]));
        float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        dst[b].d = f32_to_fp16(d);
        for (int i = 0; i < FS_Q8_BLOCK; i++) dst[b].q[i] = (int8_t)roundf(v[i] * id);
    }
}

/* ---- bf16: (in, out) with rows in pairs ----
 *
 * Stored as (ceil(in / 2), out) 32-bit pairs: pair (p, c) holds W[2p][c]
 * in its low half and W[2p + 1][c] in its high half (a zero row pads an
 * odd `in`). Read as f32 (in, out) is (matvec.h): one stream, y updated
 * in place. A pair widens to the two floats with one shift and one mask,
 * and it is the operand layout of AVX512-BF16's VDPBF16PS, which
 * multiplies each pair by a pair of x and adds both products. */

static int g_bf16_native = -1;

int fs_bf16_native(void) {
    if (g_bf16_native < 0) {
        __builtin_cpu_init();
        g_bf16_native = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl");
    }
    return g_bf16_native;
}

typedef struct bf16_job {
    const fs_qweight *w;
    float *y, *part; /* part: the partial sums of parts 1.. (matvec.h) */
    const float *x, *bias;
    const uint32_t *xp; /* native: x as bf16 pairs, (n, ceil(in / 2)) */
    size_t n;
} bf16_job;

#define PAIRS 4 /* pair rows a step: 8 weight rows, as f32's IO_ROWS */

/* Pair rows [p, p + P) into yp (n, out) for every input row. */
static inline __attribute__((always_inline)) void bf16_step(const bf16_job *j, float *yp, size_t p, size_t P) {
    const uint32_t *W = j->w->data;
    size_t out = j->w->out, in = j->w->in, c = 0;
    fs_vu hi = (fs_vu){0} + 0xffff0000u;
    for (; c + FS_VW <= out; c += FS_VW) {
        fs_vf even[PAIRS], odd[PAIRS];
        for (size_t k = 0; k < P; k++) {
            fs_vu u;
            memcpy(&u, W + (p + k) * out + c, sizeof u);
            fs_vu e = u << 16, o = u & hi;
            memcpy(&even[k], &e, sizeof e);
            memcpy(&odd[k], &o, sizeof o);
        }
        for (size_t r = 0; r < j->n; r++) {
            float *y = yp + r * out + c;
            const float *x = j->x + r * in + 2 * p;
            fs_vf a = fs_vf_load(y);
            for (size_t k = 0; k < P; k++) a += x[2 * k] * even[k] + (2 * (p + k) + 1 < in ? x[2 * k + 1] : 0.0f) * odd[k];
            memcpy(y, &a, sizeof a);
        }
    }
    for (; c < out; c++)
        for (size_t r = 0; r < j->n; r++) {
            float a = yp[r * out + c];
            for (size_t k = 0; k < P; k++) {
                uint32_t u = W[(p + k) * out + c];
                size_t i = 2 * (p + k);
                a += j->x[r * in + i] * fs_bf16_to_f32((uint16_t)u);
                if (i + 1 < in) a += j->x[r * in + i + 1] * fs_bf16_to_f32((uint16_t)(u >> 16));
            }
            yp[r * out + c] = a;
        }
}

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* x rows to bf16 pairs, round to nearest even (VCVTNE2PS2BF16 does the
 * same in hardware; this runs once per call on n x in values). */
static void bf16_pairs(uint32_t *dst, const float *x, size_t n, size_t in) {
    size_t np = (in + 1) / 2;
    for (size_t r = 0; r < n; r++)
        for (size_t p = 0; p < np; p++) {
            uint32_t lo = fs_bf16_from_f32(x[r * in + 2 * p]);
            uint32_t hi = 2 * p + 1 < in ? fs_bf16_from_f32(x[r * in + 2 * p + 1]) : 0;
            dst[r * np + p] = lo | hi << 16;
        }
}

/* Pair rows [p, p + P) into yp with VDPBF16PS, P a constant where this
 * is inlined (the weight vectors stay in registers: with P known only at
 * run time they went through the stack, and 1-thread decoding read the
 * weights at half the bandwidth f32's does). Two accumulators halve the
 * chain of dependent products; each output's order of additions is the
 * same for every n, so a row's result does not depend on its batch. */
#define NATIVE_PAIRS 8 /* 16 weight rows a step */

BF16_TARGET static inline __attribute__((always_inline)) void bf16_native_step(const bf16_job *j, float *yp, size_t p,
                                                                                const size_t P) {
    const uint32_t *W = j->w->data;
    size_t out = j->w->out, np = (j->w->in + 1) / 2, c;
    for (c = 0; c + 16 <= out; c += 16) {
        __m512i w[NATIVE_PAIRS];
        for (size_t k = 0; k < P; k++) w[k] = _mm512_loadu_si512((const void *)(W + (p + k) * out + c));
        for (size_t r = 0; r < j->n; r++) {
            float *y = yp + r * out + c;
            const uint32_t *xp = j->xp + r * np + p;
            __m512 a0 = _mm512_loadu_ps(y), a1 = _mm512_setzero_ps();
            for (size_t k = 0; k + 1 < P; k += 2) {
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)w[k], (__m512bh)_mm512_set1_epi32((int)xp[k]));
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)w[k + 1], (__m512bh)_mm512_set1_epi32((int)xp[k + 1]));
            }
            if (P % 2) a0 = _mm512_dpbf16_ps(a0, (__m512bh)w[P - 1], (__m512bh)_mm512_set1_epi32((int)xp[P - 1]));
            _mm512_storeu_ps(y, _mm512_add_ps(a0, a1));
        }
    }
    for (; c < out; c++) /* the last columns: the same products, one at a time */
        for (size_t r = 0; r < j->n; r++) {
            float a = yp[r * out + c];
            for (size_t k = 0; k < P; k++) {
                uint32_t u = W[(p + k) * out + c], xv = j->xp[r * np + p + k];
                a += fs_bf16_to_f32((uint16_t)u) * fs_bf16_to_f32((uint16_t)xv) +
                     fs_bf16_to_f32((uint16_t)(u >> 16)) * fs_bf16_to_f32((uint16_t)(xv >> 16));
            }
            yp[r * out + c] = a;
        }
}

BF16_TARGET static void bf16_native_rows(const bf16_job *j, float *yp, size_t p0, size_t p1) {
    size_t p = p0;
    for (; p + NATIVE_PAIRS <= p1; p += NATIVE_PAIRS) bf16_native_step(j, yp, p, NATIVE_PAIRS);
    for (; p < p1; p++) bf16_native_step(j, yp, p, 1);
}

/* Pair rows [p0, p1): part 0 into y (from the bias), the others into their
 * partial sums; threads take contiguous ranges of W, as f32's (matvec.c). */
static void bf16_rows(void *arg, int part, size_t p0, size_t p1) {
    const bf16_job *j = arg;
    size_t out = j->w->out;
    float *yp = part ? j->part + (size_t)(part - 1) * j->n * out : j->y;
    for (size_t r = 0; r < j->n; r++) {
        if (part == 0 && j->bias)
            memcpy(yp + r * out, j->bias, out * sizeof(float));
        else
            memset(yp + r * out, 0, out * sizeof(float));
    }
    if (j->xp) {
        bf16_native_rows(j, yp, p0, p1);
        return;
    }
    size_t p = p0;
    for (; p + PAIRS <= p1; p += PAIRS) bf16_step(j, yp, p, PAIRS);
    if (p < p1) bf16_step(j, yp, p, p1 - p);
}

/* ---- q8 ---- */

#if defined(__AVX2__)
/* Sum over one block of wq[i] * xq[i] as 8 int32 lanes, in float: the
 * sign of w moves onto x so that VPMADDUBSW's unsigned operand is |w|
 * (|q| <= 127 keeps its int16 pair sums from saturating). */
static inline __m256 q8_block_dot(const int8_t *wq, const int8_t *xq) {
    __m256i w = _mm256_loadu_si256((const __m256i *)wq), x = _mm256_loadu_si256((const __m256i *)xq);
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* 2 outputs x R rows: each weight block is loaded once for all R rows. */
static inline __attribute__((always_inline)) void q8_tile(float *y, size_t ldy, const fs_q8_block *xq, size_t R,
                                                          const fs_q8_block *W, size_t nb, const float *bias,
                                                          size_t o, size_t nout, const fs_q8_block *next) {
#if defined(__AVX2__)
    __m256 acc[2][FS_MATVEC_MAX_ROWS];
    for (size_t k = 0; k < 2; k++)
        for (size_t r = 0; r < R; r++) acc[k][r] = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        if (next) /* the next tile's blocks at the same offset (see f32_tile, matvec.c) */
            for (size_t k = 0; k < 2; k++) __builtin_prefetch(next + k * nb + b);
        for (size_t k = 0; k < nout; k++) {
            const fs_q8_block *wb = W + (o + k) * nb + b;
            float dw = fp16_to_f32(wb->d);
            for (size_t r = 0; r < R; r++) {
                const fs_q8_block *xb = xq + r * nb + b;
                __m256 s = _mm256_set1_ps(dw * fp16_to_f32(xb->d));
                acc[k][r] = _mm256_fmadd_ps(s, q8_block_dot(wb->q, xb->q), acc[k][r]);
            }
        }
    }
    for (size_t k = 0; k < nout; k++)
        for (size_t r = 0; r < R; r++) y[r * ldy + k] = hsum256(acc[k][r]) + (bias ? bias[o + k] : 0.0f);
#else
    (void)next;
    float acc[2][FS_MATVEC_MAX_ROWS] = {{0}};
    for (size_t b = 0; b < nb; b++)
        for (size_t k = 0; k < nout; k++) {
            const fs_q8_block *wb = W + (o + k) * nb + b;
            for (size_t r = 0; r < R; r++) {
                const fs_q8_block *xb = xq + r * nb + b;
                int32_t s = 0;
                for (int i = 0; i < FS_Q8_BLOCK; i++) s += (int32_t)wb->q[i] * xb->q[i];
                acc[k][r] += fp16_to_f32(wb->d) * fp16_to_f32(xb->d) * (float)s;
            }
        }
    for (size_t k = 0; k < nout; k++)
        for (size_t r = 0; r < R; r++) y[r * ldy + k] = acc[k][r] + (bias ? bias[o + k] : 0.0f);
#endif
}

static void q8_span(float *y, size_t ldy, const fs_q8_block *xq, size_t R, const fs_q8_block *W, size_t nb,
                    const float *bias, size_t o0, size_t o1, size_t out) {
    for (size_t o = o0; o < o1; o += 2) {
        float *yo = y + (o - o0);
        const fs_q8_block *next = o + 4 <= out ? W + (o + 2) * nb : NULL;
        if (o1 - o < 2) {
            q8_tile(yo, ldy, xq, R, W, nb, bias, o, 1, NULL);
            continue;
        }
        switch (R) {
        case 1: q8_tile(yo, ldy, xq, 1, W, nb, bias, o, 2, next); break;
        case 2: q8_tile(yo, ldy, xq, 2, W, nb, bias, o, 2, next); break;
        case 3: q8_tile(yo, ldy, xq, 3, W, nb, bias, o, 2, next); break;
        default: q8_tile(yo, ldy, xq, 4, W, nb, bias, o, 2, next); break;
        }
    }
}

/* ---- the product, by format ---- */

typedef struct q8_job {
    const fs_qweight *w;
    float *y;
    const fs_q8_block *xq; /* x quantized, (n, in / 32) */
    const float *bias;
    size_t n;
} q8_job;

/* Weight rows in blocks of about 64 KiB, each read from memory once for all n rows. */
static void q8_rows(void *arg, int part, size_t o0, size_t o1) {
    const q8_job *j = arg;
    const fs_qweight *w = j->w;
    size_t nb = w->in / FS_Q8_BLOCK, row = nb * sizeof(fs_q8_block), block = (64 * 1024) / row / 2 * 2;
    (void)part;
    if (block < 2) block = 2;
    for (size_t b0 = o0; b0 < o1; b0 += block) {
        size_t b1 = b0 + block < o1 ? b0 + block : o1;
        for (size_t r = 0; r < j->n; r += FS_MATVEC_MAX_ROWS) {
            size_t R = j->n - r < FS_MATVEC_MAX_ROWS ? j->n - r : FS_MATVEC_MAX_ROWS;
            q8_span(j->y + r * w->out + b0, w->out, j->xq + r * nb, R, w->data, nb, j->bias, b0, b1, w->out);
        }
    }
}

size_t fs_qweight_work_bytes(fs_wformat format, size_t n, size_t in) {
    switch (format) {
    case FS_WEIGHTS_BF16: return fs_bf16_native() ? n * ((in + 1) / 2) * sizeof(uint32_t) : 0;
    case FS_WEIGHTS_Q8: return n * (in / FS_Q8_BLOCK) * sizeof(fs_q8_block);
    default: return 0;
    }
}

void fs_qweight_matvec(const fs_qweight *w, float *y, const float *x, const float *bias, size_t n, void *work,
                       int threads) {
    switch (w->format) {
    case FS_WEIGHTS_F32:
        if (w->layout == FS_LAYOUT_IN_OUT)
            fs_matvec_f32_io(y, x, w->data, bias, n, w->in, w->out, threads);
        else
            fs_matvec_f32(y, x, w->data, bias, n, w->in, w->out, threads);
        return;
    case FS_WEIGHTS_BF16: {
        if (threads > FS_MATVEC_MAX_THREADS) threads = FS_MATVEC_MAX_THREADS;
        float *part = threads > 1 ? fs_matvec_partials((size_t)(threads - 1) * n * w->out) : NULL;
        if (!part) threads = 1;
        bf16_job j = {w, y, part, x, bias, NULL, n};
        if (fs_bf16_native()) {
            bf16_pairs(work, x, n, w->in);
            j.xp = work;
        }
        int parts = fs_matvec_split((w->in + 1) / 2, PAIRS, threads, bf16_rows, &j);
        fs_matvec_add_partials(y, part, parts, n * w->out);
        return;
    }
    case FS_WEIGHTS_Q8: {
        size_t nb = w->in / FS_Q8_BLOCK;
        for (size_t r = 0; r < n; r++) fs_q8_quantize((fs_q8_block *)work + r * nb, x + r * w->in, w->in);
        q8_job j = {w, y, work, bias, n};
        fs_matvec_split(w->out, 16, threads, q8_rows, &j);
        return;
    }
    }
}

float fs_qweight_at(const fs_qweight *w, size_t o, size_t i) {
    switch (w->format) {
    case FS_WEIGHTS_F32:
        return ((const float *)w->data)[w->layout == FS_LAYOUT_IN_OUT ? i * w->ld + o : o * w->ld + i];
    case FS_WEIGHTS_BF16: {
        uint32_t u = ((const uint32_t *)w->data)[i / 2 * w->out + o];
        return fs_bf16_to_f32((uint16_t)(i % 2 ? u >> 16 : u));
    }
    case FS_WEIGHTS_Q8: {
        const fs_q8_block *b = (const fs_q8_block *)w->data + o * (w->in / FS_Q8_BLOCK) + i / FS_Q8_BLOCK;
        return fp16_to_f32(b->d) * b->q[i % FS_Q8_BLOCK];
    }
    }
    return 0.0f;
}

/* ---- making one ---- */

int fs_qweight_create(fs_qweight *w, fs_wformat format, const float *src, size_t ld, int transposed, size_t out,
                      size_t in, fs_error *err) {
    memset(w, 0, sizeof *w);
    if (fs_wformat_parse(fs_wformat_name(format)) < 0)
        return fs_error_set(err, FS_ERR_INVALID, "weights format %d: expected f32, bf16 or q8", (int)format);
    if (format == FS_WEIGHTS_Q8 && in % FS_Q8_BLOCK)
        return fs_error_set(err, FS_ERR_INVALID,
                            "weights = q8 needs every matrix's input size to be a multiple of %d; this one has %zu "
                            "(use bf16 or f32)",
                            FS_Q8_BLOCK, in);
    w->format = format;
    w->out = out;
    w->in = in;
    /* element (o, i) of the source */
#define SRC(o, i) (transposed ? src[(i) * ld + (o)] : src[(o) * ld + (i)])
    if (format == FS_WEIGHTS_F32) { /* the training weights themselves, in either layout */
        w->layout = transposed ? FS_LAYOUT_IN_OUT : FS_LAYOUT_OUT_IN;
        w->ld = ld;
        w->data = (void *)src;
        w->bytes = out * in * sizeof(float);
        if (ld == (transposed ? out : in)) return FS_OK;
        /* a block of columns of a wider matrix: a packed copy */
        w->data = fs_alloc(w->bytes);
        if (!w->data) goto nomem;
        w->owned = 1;
        w->ld = transposed ? out : in;
        for (size_t o = 0; o < out; o++)
            for (size_t i = 0; i < in; i++)
                ((float *)w->data)[transposed ? i * out + o : o * in + i] = SRC(o, i);
        return FS_OK;
    }
    if (format == FS_WEIGHTS_BF16) {
        size_t np = (in + 1) / 2;
        w->layout = FS_LAYOUT_IN_OUT;
        w->bytes = np * out * sizeof(uint32_t);
        uint32_t *d = w->data = fs_alloc(w->bytes);
        if (!d) goto nomem;
        w->owned = 1;
        for (size_t p = 0; p < np; p++)
            for (size_t o = 0; o < out; o++)
                d[p * out + o] = fs_bf16_from_f32(SRC(o, 2 * p)) |
                                 (2 * p + 1 < in ? (uint32_t)fs_bf16_from_f32(SRC(o, 2 * p + 1)) << 16 : 0);
        return FS_OK;
    }
    w->layout = FS_LAYOUT_OUT_IN;
    w->bytes = out * (in / FS_Q8_BLOCK) * sizeof(fs_q8_block);
    w->data = fs_alloc(w->bytes);
    float *row = transposed ? fs_alloc(in * sizeof(float)) : NULL; /* one gathered column */
    if (!w->data || (transposed && !row)) {
        fs_free(row);
        goto nomem;
    }
    w->owned = 1;
    for (size_t o = 0; o < out; o++) {
        const float *r = src + o * ld;
        if (transposed) {
            for (size_t i = 0; i < in; i++) row[i] = src[i * ld + o];
            r = row;
        }
        fs_q8_quantize((fs_q8_block *)w->data + o * (in / FS_Q8_BLOCK), r, in);
    }
    fs_free(row);
    return FS_OK;
#undef SRC
nomem:
    if (w->owned) fs_free(w->data);
    memset(w, 0, sizeof *w);
    return fs_error_set(err, FS_ERR_NOMEM, "out of memory for a %zu x %zu %s weight copy", out, in,
                        fs_wformat_name(format));
}

void fs_qweight_destroy(fs_qweight *w) {
    if (!w) return;
    if (w->owned) fs_free(w->data);
    memset(w, 0, sizeof *w);
}
