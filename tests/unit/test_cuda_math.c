/* test_cuda_math.c — the cuda backend's kernel arithmetic on the CPU.
 *
 * plugins/backend/cuda/kernels_math.h holds what every kernel computes
 * per element, per lane of a row and per row; the kernels are loops over
 * it with warp and block reductions in a fixed tree. Here the lanes run
 * one after another and fs_tree_reduce combines them in the device's
 * order, and the results are compared with the runtime's CPU kernels
 * (compute/ops.c, update.c, sample.c, bias.c), with finite differences and
 * with hand-worked values. No GPU is needed; tests/gpu checks the launches.
 *
 * Also dense attention's paged step (plugins/attention/cuda/paged_math.h):
 * its split of a row's keys among warps and lanes, run here lane by lane
 * with other splits too, against the softmax in double. */
#include <string.h>

#include "attention/cuda/paged_math.h"
#include "backend/cuda/kernels_math.h"
#include "compute/bias.h"
#include "compute/ops.h"
#include "compute/sample.h"
#include "compute/update.h"
#include "test_util.h"

#define BLOCK 256 /* threads of a row-per-block kernel (FS_THREADS) */

/* ---- bf16 ---- */

/* The nearest bf16 to x by arithmetic in double (ties to the even
 * mantissa): an independent statement of round-to-nearest-even. */
static uint16_t bf16_reference(float x) {
    uint32_t u = fs_f32_bits(x);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double dl = fabs((double)fs_bf16_to_f32(lo) - x), dh = fabs((double)fs_bf16_to_f32(hi) - x);
    if ((hi & 0x7f80u) == 0x7f80u && (lo & 0x7f80u) != 0x7f80u) /* hi is infinity: compare with 2^128 */
        dh = fabs(ldexp(x < 0 ? -1.0 : 1.0, 128) - x);
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1u) ? hi : lo;
}

static void test_bf16_rounding(void **state) {
    (void)state;
    assert_int_equal(fs_bf16_from_f32(1.0f), 0x3f80);
    assert_int_equal(fs_bf16_from_f32(fs_bits_f32(0x3f808000u)), 0x3f80); /* 1 + 2^-8: a tie, to even */
    assert_int_equal(fs_bf16_from_f32(fs_bits_f32(0x3f818000u)), 0x3f82); /* 1 + 3 * 2^-8: a tie, to even */
    assert_int_equal(fs_bf16_from_f32(fs_bits_f32(0x3f808001u)), 0x3f81); /* above the tie */
    assert_int_equal(fs_bf16_from_f32(-2.0f), 0xc000);
    assert_int_equal(fs_bf16_from_f32(INFINITY), 0x7f80);
    assert_int_equal(fs_bf16_from_f32(fs_bits_f32(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to infinity */
    assert_true(isnan(fs_bf16_to_f32(fs_bf16_from_f32(NAN))));
    assert_true(fs_bf16_to_f32(0x4049) == 3.140625f);
    fs_rng r;
    fs_rng_seed(&r, 11);
    for (int i = 0; i < 200000; i++) {
        float x = ldexpf(fs_rng_normal(&r), (int)fs_rng_below(&r, 60) - 30);
        if (fs_bf16_from_f32(x) != bf16_reference(x)) {
            fprintf(stderr, "%a: 0x%04x, want 0x%04x\n", (double)x, fs_bf16_from_f32(x), bf16_reference(x));
            fail();
        }
    }
    uint16_t h[3];
    float f[3] = {1.5f, -0.0078125f, 65536.0f};
    for (int i = 0; i < 3; i++) fs_store(h, (size_t)i, FS_DTYPE_BF16, f[i]);
    for (int i = 0; i < 3; i++) assert_true(fs_load(h, (size_t)i, FS_DTYPE_BF16) == f[i]); /* exact in bf16 */
}

/* ---- per element ---- */

static void test_gelu(void **state) {
    (void)state;
    size_t n = 2001;
    float *x = test_fvec(n), *want = test_fvec(n), *dy = test_fvec(n), *dwant = test_fvec(n);
    for (size_t i = 0; i < n; i++) x[i] = -10.0f + 0.01f * (float)i;
    test_fill(dy, n, 1.0f, 3);
    gelu_forward(want, x, n);
    gelu_backward(dwant, x, dy, n);
    for (size_t i = 0; i < n; i++) {
        assert_true(fabsf(fs_gelu_forward(x[i]) - want[i]) <= 1e-6f + 1e-6f * fabsf(want[i]));
        /* ops.c's tanh is fs_fast_tanhf (2e-7 absolute): 1 - tanh^2 times up to
         * 0.5 |x| (1 + 0.134 x^2) ~ 60 at |x| = 10 makes 3e-5 |dy| */
        assert_true(fabsf(fs_gelu_backward(x[i], dy[i]) - dwant[i]) <= 5e-5f * fabsf(dy[i]) + 1e-5f * fabsf(dwant[i]));
        /* and the derivative against a central difference in double */
        double h = 1e-3, fd = ((double)fs_gelu_forward(x[i] + (float)h) - fs_gelu_forward(x[i] - (float)h)) / (2 * h);
        assert_true(fabs(fs_gelu_backward(x[i], 1.0f) - fd) < 2e-3);
    }
    free(x), free(want), free(dy), free(dwant);
}

static void test_adamw_element(void **state) {
    (void)state;
    size_t n = 5000;
    float *p = test_fvec(n), *g = test_fvec(n), *m = test_fvec(n), *v = test_fvec(n);
    test_fill(p, n, 1.0f, 4);
    test_fill(g, n, 0.1f, 5);
    test_fill(m, n, 0.01f, 6);
    for (size_t i = 0; i < n; i++) v[i] = 1e-4f * (float)(i % 7);
    float *p2 = test_fvec(n), *m2 = test_fvec(n), *v2 = test_fvec(n);
    memcpy(p2, p, n * 4), memcpy(m2, m, n * 4), memcpy(v2, v, n * 4);
    float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.7f;
    uint64_t t = 5;
    adamw_update(p, g, m, v, n, lr, b1, b2, eps, wd, gs, t);
    float bc1 = 1.0f - powf(b1, (float)t), bc2 = 1.0f - powf(b2, (float)t), decay = 1.0f - lr * wd;
    for (size_t i = 0; i < n; i++) {
        p2[i] = fs_adamw_element(p2[i], g[i] * gs, &m2[i], &v2[i], lr, b1, b2, eps, decay, bc1, bc2);
        assert_true(fabsf(p2[i] - p[i]) <= 1e-6f * (1.0f + fabsf(p[i])));
        assert_true(fabsf(m2[i] - m[i]) <= 1e-7f && fabsf(v2[i] - v[i]) <= 1e-9f);
    }
    free(p), free(g), free(m), free(v), free(p2), free(m2), free(v2);
}

static void test_head_permutations(void **state) {
    (void)state;
    size_t B = 2, T = 5, H = 3, D = 4, C = H * D, n = B * H * T * D;
    float *qkv = test_fvec(B * T * 3 * C), *q = test_fvec(n), *k = test_fvec(n), *v = test_fvec(n), *out = test_fvec(B * T * C);
    for (size_t i = 0; i < B * T * 3 * C; i++) qkv[i] = (float)i;
    attention_split_heads(q, k, v, qkv, B, T, H, D);
    attention_merge_heads(out, q, B, T, H, D);
    for (size_t o = 0; o < n; o++) {
        size_t src = fs_qkv_index(o, T, H, D);
        assert_true(q[o] == qkv[src] && k[o] == qkv[src + C] && v[o] == qkv[src + 2 * C]);
        assert_true(out[fs_merged_index(o, T, H, D)] == q[o]);
    }
    free(qkv), free(q), free(k), free(v), free(out);
}

/* ---- rows, the device's way ---- */

/* sum over a row as a kernel computes it: `lanes` partials, then the tree */
static float row_sum(const float *x, size_t n, unsigned lanes) {
    float part[BLOCK];
    for (unsigned l = 0; l < lanes; l++) part[l] = fs_lane_sum(x, FS_DTYPE_F32, n, l, lanes);
    return fs_tree_reduce(part, lanes, 0);
}

static void test_tree_order(void **state) {
    (void)state;
    /* the tree on 32 lanes: exact on integers, and lane order matters for
     * floats in the way the device's butterfly does */
    float v[64];
    for (int i = 0; i < 64; i++) v[i] = (float)(i + 1);
    assert_true(fs_tree_reduce(v, 64, 0) == 2080.0f);
    for (int i = 0; i < 64; i++) v[i] = (float)((i * 37) % 64);
    assert_true(fs_tree_reduce(v, 64, 1) == 63.0f);
    float x[1000];
    test_fill(x, 1000, 1.0f, 7);
    double want = 0;
    for (int i = 0; i < 1000; i++) want += x[i];
    assert_true(fabs(row_sum(x, 1000, 32) - want) < 1e-4 && fabs(row_sum(x, 1000, 256) - want) < 1e-4);
}

/* Layer norm as a warp per row computes it, against ops.c. */
static void test_layernorm(void **state) {
    (void)state;
    size_t N = 37, C = 100;
    float *x = test_fvec(N * C), *w = test_fvec(C), *b = test_fvec(C), *dy = test_fvec(N * C);
    test_fill(x, N * C, 2.0f, 8);
    for (size_t i = 0; i < N * C; i++) x[i] += 3.0f; /* a mean far from 0 */
    test_fill(w, C, 1.0f, 9);
    test_fill(b, C, 1.0f, 10);
    test_fill(dy, N * C, 1.0f, 11);
    float *out = test_fvec(N * C), *mean = test_fvec(N), *rstd = test_fvec(N), *got = test_fvec(N * C);
    layernorm_forward(out, mean, rstd, x, w, b, N, C);
    float *gm = test_fvec(N), *gs = test_fvec(N), *part = test_fvec(FS_WARP);
    for (size_t r = 0; r < N; r++) {
        const float *xr = x + r * C;
        float m = row_sum(xr, C, FS_WARP) / (float)C;
        for (unsigned l = 0; l < FS_WARP; l++) part[l] = fs_lane_sqdev(xr, FS_DTYPE_F32, C, m, l, FS_WARP);
        float s = fs_ln_rstd(fs_tree_reduce(part, FS_WARP, 0) / (float)C);
        gm[r] = m, gs[r] = s;
        for (size_t i = 0; i < C; i++) got[r * C + i] = fs_ln_forward(xr[i], m, s, w[i], b[i]);
    }
    test_close("ln mean", gm, mean, N, 1e-6, 1e-6);
    test_close("ln rstd", gs, rstd, N, 1e-6, 1e-5);
    test_close("ln out", got, out, N * C, 1e-5, 1e-5);
    /* backward: dx per row, dweight and dbias by column chunks */
    float *dx = test_fvec(N * C), *dw = test_fvec(C), *db = test_fvec(C), *gdx = test_fvec(N * C);
    layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C);
    for (size_t r = 0; r < N; r++) {
        float s1[FS_WARP], s2[FS_WARP];
        for (unsigned l = 0; l < FS_WARP; l++)
            fs_ln_backward_lane(dy + r * C, x + r * C, FS_DTYPE_F32, w, C, gm[r], gs[r], l, FS_WARP, &s1[l], &s2[l]);
        float a = fs_tree_reduce(s1, FS_WARP, 0) / (float)C, c2 = fs_tree_reduce(s2, FS_WARP, 0) / (float)C;
        for (size_t i = 0; i < C; i++)
            gdx[r * C + i] = fs_ln_backward_dx(dy[r * C + i], x[r * C + i], w[i], gm[r], gs[r], a, c2);
    }
    test_close("ln dx", gdx, dx, N * C, 1e-5, 1e-4);
    float *gw = test_fvec(C), *gb = test_fvec(C);
    size_t chunks, rows;
    fs_column_chunks(N, &chunks, &rows);
    for (size_t c = 0; c < C; c++)
        for (size_t k = 0; k < chunks; k++) {
            float a[FS_COL_ROWS] = {0}, bb[FS_COL_ROWS] = {0};
            size_t r1 = (k + 1) * rows < N ? (k + 1) * rows : N;
            for (unsigned ty = 0; ty < FS_COL_ROWS; ty++)
                for (size_t r = k * rows + ty; r < r1; r += FS_COL_ROWS) {
                    a[ty] += fs_ln_dweight(x[r * C + c], gm[r], gs[r], dy[r * C + c]);
                    bb[ty] += dy[r * C + c];
                }
            for (unsigned ty = 1; ty < FS_COL_ROWS; ty++) a[0] += a[ty], bb[0] += bb[ty];
            gw[c] += a[0], gb[c] += bb[0];
        }
    test_close("ln dweight", gw, dw, C, 1e-4, 1e-4);
    test_close("ln dbias", gb, db, C, 1e-4, 1e-4);
    free(x), free(w), free(b), free(dy), free(out), free(mean), free(rstd), free(got), free(gm), free(gs), free(part);
    free(dx), free(dw), free(db), free(gdx), free(gw), free(gb);
}

/* Column sums as the bias gradient's kernel makes them, against bias.c. */
static void test_bias_columns(void **state) {
    (void)state;
    size_t N = 600, OC = 45, ld = 48; /* three chunks, padded rows */
    float *dout = test_fvec(N * ld), *want = test_fvec(OC), *got = test_fvec(OC);
    test_fill(dout, N * ld, 1.0f, 12);
    bias_backward(want, dout, N, OC, ld);
    size_t chunks, rows;
    fs_column_chunks(N, &chunks, &rows);
    assert_int_equal(chunks, 3);
    for (size_t c = 0; c < OC; c++)
        for (size_t k = 0; k < chunks; k++) {
            float s[FS_COL_ROWS] = {0};
            size_t r1 = (k + 1) * rows < N ? (k + 1) * rows : N;
            for (unsigned ty = 0; ty < FS_COL_ROWS; ty++)
                for (size_t r = k * rows + ty; r < r1; r += FS_COL_ROWS) s[ty] += dout[r * ld + c];
            for (unsigned ty = 1; ty < FS_COL_ROWS; ty++) s[0] += s[ty];
            got[c] += s[0];
        }
    test_close("bias columns", got, want, OC, 1e-4, 1e-5);
    free(dout), free(want), free(got);
}

/* Cross-entropy and softmax as a block per row computes them, against ops.c. */
static void test_crossentropy_and_softmax(void **state) {
    (void)state;
    size_t N = 5, V = 1000;
    float *z = test_fvec(N * V), *d = test_fvec(N * V), *got = test_fvec(N * V), *p = test_fvec(N * V);
    test_fill(z, N * V, 4.0f, 13);
    int32_t y[5] = {0, 999, 500, 3, 3};
    double want = crossentropy_softmax_forward_backward(d, z, y, N, V, 0.2f), loss = 0;
    softmax_forward(p, z, N, V, 0.7f);
    float part[BLOCK];
    for (size_t r = 0; r < N; r++) {
        const float *zr = z + r * V;
        /* cross-entropy: one online pass, in 16-byte chunks of 4 (and,
         * when the row's alignment forbids them, element by element) */
        float lm[BLOCK], ls[BLOCK], mx = 0, sum = 0;
        const size_t widths[] = {4, 1};
        for (size_t wi = 0; wi < 2; wi++) {
            for (unsigned l = 0; l < BLOCK; l++)
                fs_lane_online(zr, FS_DTYPE_F32, V, widths[wi], l, BLOCK, &lm[l], &ls[l]);
            memcpy(part, lm, sizeof part);
            mx = fs_tree_reduce(part, BLOCK, 1);
            for (unsigned l = 0; l < BLOCK; l++) part[l] = fs_online_rescale(lm[l], ls[l], mx);
            sum = fs_tree_reduce(part, BLOCK, 0);
            double ref = 0; /* the sum of e^(z - max) in double */
            for (size_t i = 0; i < V; i++) ref += exp((double)zr[i] - mx);
            assert_true(fabs(sum - ref) <= 1e-5 * ref);
        }
        for (unsigned l = 0; l < BLOCK; l++) part[l] = fs_lane_max(zr, FS_DTYPE_F32, V, l, BLOCK);
        assert_true(fs_tree_reduce(part, BLOCK, 1) == mx);
        loss += fs_ce_loss(mx, sum, zr[y[r]]);
        for (size_t i = 0; i < V; i++) got[r * V + i] = fs_ce_dlogit(zr[i], mx, 1.0f / sum, i == (size_t)y[r], 0.2f);
        /* softmax at temperature 0.7 */
        for (unsigned l = 0; l < BLOCK; l++) part[l] = fs_lane_sumexp(zr, FS_DTYPE_F32, V, mx, 1.0f / 0.7f, l, BLOCK);
        float st = fs_tree_reduce(part, BLOCK, 0);
        for (size_t i = 0; i < V; i++) {
            float pi = expf((zr[i] - mx) * (1.0f / 0.7f)) / st;
            assert_true(fabsf(pi - p[r * V + i]) <= 1e-7f + 1e-5f * p[r * V + i]);
        }
    }
    assert_true(fabs(loss - want) < 1e-4);
    test_close("dlogits", got, d, N * V, 1e-8, 1e-4);
    free(z), free(d), free(got), free(p);
}

/* ---- argmax and sampling ---- */

static void test_argmax_lanes(void **state) {
    (void)state;
    float z[300];
    test_fill(z, 300, 1.0f, 14);
    z[77] = z[290] = 9.0f; /* two equal maxima: the first wins */
    float best = -INFINITY;
    size_t arg = 300;
    for (unsigned l = 0; l < BLOCK; l++) {
        float b;
        size_t a;
        fs_lane_argmax(z, FS_DTYPE_F32, 300, l, BLOCK, &b, &a);
        if (a < 300) fs_argmax_combine(&best, &arg, b, a);
    }
    assert_int_equal(arg, 77);
    float *work = test_fvec(600);
    assert_int_equal(sample_forward(z, 300, 0.0, 0, 1.0, 0.5f, work), 77); /* the CPU's greedy agrees */
    free(work);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The kernel's way (probabilities as in sample.c, keys sorted ascending,
 * then fs_sample_keep and fs_sample_pick) against sample.c itself. */
static void test_sampling_matches_cpu(void **state) {
    (void)state;
    size_t V = 400;
    float *z = test_fvec(V), *work = test_fvec(2 * V), *p = test_fvec(V);
    uint64_t *keys = malloc(V * sizeof *keys);
    fs_rng r;
    fs_rng_seed(&r, 15);
    for (int trial = 0; trial < 300; trial++) {
        test_fill(z, V, trial % 3 == 0 ? 0.5f : 3.0f, (uint64_t)trial + 100);
        if (trial % 5 == 0) z[7] = z[8] = z[9] = 4.0f; /* ties */
        double temp = 0.3 + 0.01 * (trial % 150), top_p = trial % 4 == 0 ? 1.0 : 0.05 + 0.003 * trial;
        size_t top_k = trial % 3 == 1 ? 0 : (size_t)(1 + trial % 50);
        float u = fs_rng_float(&r);
        int32_t want = sample_forward(z, V, temp, top_k, top_p, u, work);
        float mx = z[0];
        for (size_t i = 1; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        double sum = 0;
        for (size_t i = 0; i < V; i++) sum += expf((float)((double)(z[i] - mx) / temp));
        for (size_t i = 0; i < V; i++)
            keys[i] = fs_sample_key((float)(expf((float)((double)(z[i] - mx) / temp)) / sum), (uint32_t)i);
        qsort(keys, V, sizeof *keys, cmp_u64);
        for (size_t i = 0; i < V; i++) p[i] = fs_sample_key_p(keys[i]);
        size_t keep = fs_sample_keep(p, V, top_k, top_p);
        int32_t got = (int32_t)fs_sample_key_id(keys[fs_sample_pick(p, keep, u)]);
        if (got != want) {
            fprintf(stderr, "trial %d: token %d, sample.c %d\n", trial, got, want);
            fail();
        }
    }
    free(z), free(work), free(p), free(keys);
}

/* ---- the embedding's gradient: sorted runs ---- */

static void test_embedding_runs(void **state) {
    (void)state;
    size_t B = 3, T = 7, C = 5, V = 6, BT = B * T;
    int32_t inp[21];
    for (size_t i = 0; i < BT; i++) inp[i] = (int32_t)((i * 5 + i / 4) % V);
    float *dout = test_fvec(BT * C), *want = test_fvec(V * C), *wpe = test_fvec(16 * C), *got = test_fvec(V * C);
    test_fill(dout, BT * C, 1.0f, 16);
    encoder_backward(want, wpe, dout, inp, B, T, C, 0);
    /* a stable sort of (token, row), then each run summed in row order */
    int32_t tok[21], row[21];
    size_t n = 0;
    for (int32_t t = 0; t < (int32_t)V; t++)
        for (size_t i = 0; i < BT; i++)
            if (inp[i] == t) tok[n] = t, row[n++] = (int32_t)i;
    for (size_t i = 0; i < BT; i++) {
        if (!fs_run_start(tok, i)) continue;
        for (size_t c = 0; c < C; c++) {
            float s = 0.0f;
            for (size_t j = i; j < BT && tok[j] == tok[i]; j++) s += dout[(size_t)row[j] * C + c];
            got[(size_t)tok[i] * C + c] += s;
        }
    }
    test_close("dwte", got, want, V * C, 1e-6, 1e-6);
    free(dout), free(want), free(wpe), free(got);
}

/* ---- dense attention's paged step ---- */

/* A warp's sum as the device's butterfly (fa_warp_sum) makes it. */
static float warp_sum_emulated(const float *x) {
    float v[32], t[32];
    memcpy(v, x, sizeof v);
    for (int off = 16; off > 0; off /= 2) {
        for (int i = 0; i < 32; i++) t[i] = v[i] + v[i ^ off];
        memcpy(v, t, sizeof v);
    }
    return v[0];
}

/* pg_attend's arithmetic for one row (scores s (n), values v (n, D)),
 * lane by lane, with W warps taking tiles of FS_PG_TILE keys in turn and
 * R value rows read side by side: each warp's online softmax and R
 * subgroup accumulators, the subgroups added in order, the warps merged in
 * order. acc: W * R * D floats of work memory. */
static void paged_emulated(float *out, const float *s, const float *v, size_t n, size_t D, unsigned W, size_t R,
                           float *acc) {
    float M = -INFINITY, L = 0.0f;
    for (unsigned w = 0; w < W; w++) {
        float m = -INFINITY, l = 0.0f, *a = acc + (size_t)w * R * D;
        memset(a, 0, R * D * sizeof(float));
        for (size_t t0 = (size_t)w * FS_PG_TILE; t0 < n; t0 += (size_t)W * FS_PG_TILE) {
            float p[32], tile_max = -INFINITY;
            for (size_t j = 0; j < 32; j++) tile_max = fmaxf(tile_max, t0 + j < n ? s[t0 + j] : -INFINITY);
            float alpha = fs_pg_enter(&m, tile_max);
            for (size_t j = 0; j < 32; j++) p[j] = fs_pg_prob(t0 + j < n ? s[t0 + j] : -INFINITY, m);
            l = l * alpha + warp_sum_emulated(p);
            for (size_t i = 0; i < R * D; i++) a[i] *= alpha;
            size_t tile = n - t0 < FS_PG_TILE ? n - t0 : FS_PG_TILE;
            for (size_t r0 = 0; r0 < tile; r0 += R)
                for (size_t g = 0; g < R && r0 + g < tile; g++)
                    for (size_t d = 0; d < D; d++)
                        a[g * D + d] = fmaf(p[r0 + g], v[(t0 + r0 + g) * D + d], a[g * D + d]);
        }
        for (size_t g = 1; g < R; g++)
            for (size_t d = 0; d < D; d++) a[d] += a[g * D + d];
        if (w == 0) {
            M = m, L = l;
            memcpy(out, a, D * sizeof(float));
            continue;
        }
        float x, y;
        fs_pg_merge(&M, &L, m, l, &x, &y);
        for (size_t d = 0; d < D; d++) out[d] = out[d] * x + a[d] * y;
    }
    for (size_t d = 0; d < D; d++) out[d] = fs_pg_out(out[d], L);
}

/* Every split of a row's keys (warps, value rows side by side) gives the
 * softmax computed in double, at lengths around the tiles' edges and up
 * to a few thousand keys; scores spread wide (weights from 1 to e^-40) and
 * shifted far from 0 (the running max keeps exp in range). */
static void test_paged_splits(void **state) {
    (void)state;
    const size_t lens[] = {1, 2, 31, 32, 33, 127, 128, 129, 200, 1000, 3001};
    const unsigned warps[] = {1, 2, 3, FS_PG_WARPS, 8};
    const size_t rows[] = {1, 2, 4, 5, 8, 10, 32};
    size_t D = 8, nmax = 3001;
    float *s = test_fvec(nmax), *v = test_fvec(nmax * D), *acc = test_fvec(8 * 32 * D), out[8];
    for (int shift = 0; shift < 2; shift++)
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            size_t n = lens[li];
            test_fill(s, n, 4.0f, 300 + li);
            test_fill(v, n * D, 1.0f, 320 + li);
            for (size_t j = 0; j < n; j++) s[j] += shift ? 80.0f : 0.0f;
            double mx = -INFINITY, sum = 0, want[8] = {0};
            for (size_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
            for (size_t j = 0; j < n; j++) {
                double e = exp((double)s[j] - mx);
                sum += e;
                for (size_t d = 0; d < D; d++) want[d] += e * v[j * D + d];
            }
            double vmax = 0;
            for (size_t i = 0; i < n * D; i++) vmax = fabs(v[i]) > vmax ? fabs(v[i]) : vmax;
            for (size_t wi = 0; wi < sizeof warps / sizeof warps[0]; wi++)
                for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++) {
                    paged_emulated(out, s, v, n, D, warps[wi], rows[ri], acc);
                    for (size_t d = 0; d < D; d++)
                        if (!(fabs(out[d] - want[d] / sum) <= 1e-5 * vmax)) {
                            fprintf(stderr, "n %zu, %u warps, %zu rows at once, coordinate %zu: %.9g, want %.9g\n", n,
                                    warps[wi], rows[ri], d, (double)out[d], want[d] / sum);
                            fail();
                        }
                }
        }
    free(s), free(v), free(acc);
}

/* The kernel's layout and limits: which head widths it serves, how lanes
 * cover a value row, dense.c's block layout (each element of a block
 * once), and the warps' tiles covering a row's keys once each. */
static void test_paged_layout(void **state) {
    (void)state;
    const size_t ok[] = {24, 32, 64, 128};
    for (size_t i = 0; i < 4; i++) assert_true(fs_pg_fits(ok[i], 4) && fs_pg_fits(ok[i], 2));
    assert_false(fs_pg_fits(0, 4) || fs_pg_fits(6, 4) || fs_pg_fits(132, 4) || fs_pg_fits(20, 2) || fs_pg_fits(64, 8));
    assert_int_equal(fs_pg_group(128, 4), 32), assert_int_equal(fs_pg_rows_at_once(128, 4), 1);
    assert_int_equal(fs_pg_group(64, 2), 8), assert_int_equal(fs_pg_rows_at_once(64, 2), 4);
    assert_int_equal(fs_pg_group(24, 4), 6), assert_int_equal(fs_pg_rows_at_once(24, 4), 5);
    assert_int_equal(fs_pg_group(24, 2), 3), assert_int_equal(fs_pg_rows_at_once(24, 2), 10);
    size_t H = 3, kb = 5, D = 24, total = 2 * H * kb * D;
    unsigned char *seen = calloc(total > 4000 ? total : 4000, 1);
    assert_non_null(seen);
    for (size_t h = 0; h < H; h++)
        for (int v = 0; v < 2; v++)
            for (size_t slot = 0; slot < kb; slot++)
                for (size_t c = 0; c < D; c++) {
                    size_t at = fs_pg_entry(kb, D, h, v, slot) + c;
                    assert_true(at < total);
                    seen[at]++;
                }
    for (size_t i = 0; i < total; i++) assert_int_equal(seen[i], 1);
    for (size_t n = 1; n < 4000; n += 97) {
        memset(seen, 0, n);
        for (unsigned w = 0; w < FS_PG_WARPS; w++)
            for (size_t t = 0; fs_pg_tile_begin(w, t) < n; t++) {
                size_t j0 = fs_pg_tile_begin(w, t);
                for (size_t j = j0; j < j0 + FS_PG_TILE && j < n; j++) seen[j]++;
            }
        for (size_t j = 0; j < n; j++) assert_int_equal(seen[j], 1);
    }
    free(seen);
    /* an empty partial (a warp with no tile) changes nothing, either side */
    float m = 2.0f, l = 3.0f, a, b;
    fs_pg_merge(&m, &l, -INFINITY, 0.0f, &a, &b);
    assert_true(m == 2.0f && l == 3.0f && a == 1.0f && b == 0.0f);
    m = -INFINITY, l = 0.0f;
    fs_pg_merge(&m, &l, 2.0f, 3.0f, &a, &b);
    assert_true(m == 2.0f && l == 3.0f && a == 0.0f && b == 1.0f);
    assert_true(fs_pg_out(1.0f, 0.0f) == 0.0f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_rounding),     cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_adamw_element),     cmocka_unit_test(test_head_permutations),
        cmocka_unit_test(test_tree_order),        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_bias_columns),      cmocka_unit_test(test_crossentropy_and_softmax),
        cmocka_unit_test(test_argmax_lanes),      cmocka_unit_test(test_sampling_matches_cpu),
        cmocka_unit_test(test_embedding_runs),    cmocka_unit_test(test_paged_splits),
        cmocka_unit_test(test_paged_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
