/* test_attention_tiles.c — the attention plugins' CUDA arithmetic on the CPU.
 *
 * The device kernels (plugins/attention/cuda/flash.cuh) are one tiled
 * engine: query tiles of FS_FA_BR rows against key tiles of FS_FA_BC with an
 * online softmax, then dQ by query tiles and dK/dV by key tiles over the
 * query ranges a policy gives. Here the same loops run on the CPU (emu_*)
 * with each plugin's policy written from its *_math.h functions, exactly
 * as its .cu file writes them, and the results are compared with the
 * plugins' own CPU forward and backward:
 *   - dense at lengths that are not multiples of the tiles, causal or not;
 *   - dense decode: the keys split among warps, the partials merged, at
 *     every length of a generation (ragged rows are such lengths);
 *   - longformer: the band per dilation class with global columns, global
 *     rows through the global projection (dx included), positions and
 *     token-triggered globals;
 *   - lsh: one round at a time in the sorted order, a key counted in the
 *     first round that shows it, the rounds merged by log-sum-exp, against
 *     the union softmax of lsh.c; its buckets and sort order.
 * A range that missed a visible key, a mask that let one through or a
 * wrong gradient formula all show up here; launch geometry and shared
 * memory are tests/gpu's. */
#include <string.h>

#include "attention/cuda/flash_math.h"
#include "attention/cuda/longformer_math.h"
#include "attention/cuda/lsh_math.h"
#include "attention/lsh.h"
#include "test_util.h"

/* ---- the engine's loops on the CPU ---- */

typedef struct emu {
    void *ctx;
    size_t nq, nk, D;
    float scale;
    int n_segments, accumulate_dq, accumulate_dkdv;
    void (*key_range)(void *ctx, int seg, size_t i0, size_t i1, size_t *j0, size_t *j1);
    void (*query_range)(void *ctx, size_t j0, size_t j1, size_t *i0, size_t *i1);
    int (*active)(void *ctx, size_t i);
    const float *(*q)(void *ctx, size_t i);
    const float *(*k)(void *ctx, int seg, size_t j);
    const float *(*v)(void *ctx, int seg, size_t j);
    float (*score)(void *ctx, int seg, size_t i, size_t j, float raw, int *constant);
    /* forward writes out and lse; backward reads lse, delta, dout and writes dq, dk, dv */
    float *(*out)(void *ctx, size_t i);
    float *(*lse)(void *ctx, size_t i);
    float (*delta)(void *ctx, size_t i);
    const float *(*dout)(void *ctx, size_t i);
    float *(*dq)(void *ctx, size_t i);
    float *(*dk)(void *ctx, size_t j);
    float *(*dv)(void *ctx, size_t j);
} emu;

static float dotf(const float *a, const float *b, size_t D) {
    float s = 0.0f;
    for (size_t c = 0; c < D; c++) s += a[c] * b[c];
    return s;
}

static void emu_forward(const emu *p) {
    size_t D = p->D;
    float *acc = test_fvec(D), s[FS_FA_BC], pr[FS_FA_BC];
    for (size_t i0 = 0; i0 < p->nq; i0 += FS_FA_BR) {
        size_t i1 = i0 + FS_FA_BR < p->nq ? i0 + FS_FA_BR : p->nq;
        for (size_t i = i0; i < i1; i++) {
            float m = -INFINITY, l = 0.0f;
            memset(acc, 0, D * sizeof(float));
            for (int seg = 0; seg < p->n_segments && p->active(p->ctx, i); seg++) {
                size_t j0, j1;
                p->key_range(p->ctx, seg, i0, i1, &j0, &j1);
                for (size_t jt = j0; jt < j1; jt += FS_FA_BC) {
                    size_t n = j1 - jt < FS_FA_BC ? j1 - jt : FS_FA_BC;
                    float tmax = -INFINITY, sum = 0.0f;
                    for (size_t jj = 0; jj < n; jj++) {
                        int cst;
                        s[jj] = p->score(p->ctx, seg, i, jt + jj, dotf(p->q(p->ctx, i), p->k(p->ctx, seg, jt + jj), D), &cst);
                        tmax = fmaxf(tmax, s[jj]);
                    }
                    float mnew = fmaxf(m, tmax);
                    if (mnew == -INFINITY) continue;
                    float alpha = fs_fa_rescale(m, mnew);
                    for (size_t jj = 0; jj < n; jj++) sum += pr[jj] = fs_fa_prob(s[jj], mnew);
                    l = l * alpha + sum;
                    for (size_t d = 0; d < D; d++) {
                        float a = acc[d] * alpha;
                        for (size_t jj = 0; jj < n; jj++) a += pr[jj] * p->v(p->ctx, seg, jt + jj)[d];
                        acc[d] = a;
                    }
                    m = mnew;
                }
            }
            int live = p->active(p->ctx, i) && l > 0.0f;
            float *o = p->out(p->ctx, i);
            for (size_t d = 0; d < D; d++) o[d] = live ? acc[d] / l : 0.0f;
            *p->lse(p->ctx, i) = !p->active(p->ctx, i) ? 0.0f : l > 0.0f ? fs_fa_lse(m, l) : -INFINITY;
        }
    }
    free(acc);
}

static void emu_dq(const emu *p) {
    size_t D = p->D;
    float *acc = test_fvec(D);
    for (size_t i0 = 0; i0 < p->nq; i0 += FS_FA_BR) {
        size_t i1 = i0 + FS_FA_BR < p->nq ? i0 + FS_FA_BR : p->nq;
        for (size_t i = i0; i < i1; i++) {
            memset(acc, 0, D * sizeof(float));
            int live = p->active(p->ctx, i);
            float lse = live ? *p->lse(p->ctx, i) : 0.0f, delta = live ? p->delta(p->ctx, i) : 0.0f;
            for (int seg = 0; seg < p->n_segments && live; seg++) {
                size_t j0, j1;
                p->key_range(p->ctx, seg, i0, i1, &j0, &j1);
                for (size_t j = j0; j < j1; j++) {
                    int cst = 0;
                    float s = p->score(p->ctx, seg, i, j, dotf(p->q(p->ctx, i), p->k(p->ctx, seg, j), D), &cst);
                    float dp = dotf(p->dout(p->ctx, i), p->v(p->ctx, seg, j), D);
                    float ds = cst ? 0.0f : fs_fa_dscore(fs_fa_prob(s, lse), dp, delta);
                    for (size_t d = 0; d < D; d++) acc[d] += ds * p->k(p->ctx, seg, j)[d];
                }
            }
            float *dq = p->dq(p->ctx, i);
            for (size_t d = 0; d < D; d++) dq[d] = (p->accumulate_dq ? dq[d] : 0.0f) + p->scale * acc[d];
        }
    }
    free(acc);
}

static void emu_dkdv(const emu *p) {
    size_t D = p->D;
    float *dk = test_fvec(D), *dv = test_fvec(D);
    for (size_t j0 = 0; j0 < p->nk; j0 += FS_FA_BC) {
        size_t j1 = j0 + FS_FA_BC < p->nk ? j0 + FS_FA_BC : p->nk, qa, qb;
        p->query_range(p->ctx, j0, j1, &qa, &qb);
        for (size_t j = j0; j < j1; j++) {
            memset(dk, 0, D * sizeof(float));
            memset(dv, 0, D * sizeof(float));
            for (size_t i = qa; i < qb; i++) {
                if (!p->active(p->ctx, i)) continue;
                int cst = 0;
                float s = p->score(p->ctx, 0, i, j, dotf(p->q(p->ctx, i), p->k(p->ctx, 0, j), D), &cst);
                float pv = fs_fa_prob(s, *p->lse(p->ctx, i)), dp = dotf(p->dout(p->ctx, i), p->v(p->ctx, 0, j), D);
                float ds = cst ? 0.0f : fs_fa_dscore(pv, dp, p->delta(p->ctx, i));
                for (size_t d = 0; d < D; d++) {
                    dv[d] += pv * p->dout(p->ctx, i)[d];
                    dk[d] += ds * p->q(p->ctx, i)[d];
                }
            }
            float *gk = p->dk(p->ctx, j), *gv = p->dv(p->ctx, j);
            for (size_t d = 0; d < D; d++) {
                gk[d] = (p->accumulate_dkdv ? gk[d] : 0.0f) + p->scale * dk[d];
                gv[d] = (p->accumulate_dkdv ? gv[d] : 0.0f) + dv[d];
            }
        }
    }
    free(dk), free(dv);
}

/* rowsum(dout * out) of n rows */
static void deltas(float *delta, const float *dout, const float *out, size_t n, size_t D) {
    for (size_t i = 0; i < n; i++) delta[i] = dotf(dout + i * D, out + i * D, D);
}

/* ---- a plugin instance on the CPU, with its inputs and gradients ---- */

typedef struct inst {
    fs_session *s;
    const fs_attention_vtable *vt;
    void *self;
    size_t B, H, T, D, C;
    float *q, *k, *v, *out, *dout, *dq, *dk, *dv, *x, *dx;
    int32_t *tokens;
    void *saved;
} inst;

static inst make(const char *plugin, int causal, const char *keys, size_t B, size_t H, size_t T, size_t D) {
    inst a = {0};
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[model]\nn_layer = 1\nn_head = %zu\nn_embd = %zu\nmax_seq = %zu\n[attention]\nplugin = %s\ncausal = %s\n%s",
             H, H * D, T < 2 ? 2 : T, plugin, causal ? "true" : "false", keys ? keys : "");
    a.s = test_session(ini);
    a.vt = a.s->layers[0].plugin->desc->vtable;
    a.self = a.s->layers[0].self;
    a.B = B, a.H = H, a.T = T, a.D = D, a.C = H * D;
    size_t n = B * H * T * D;
    a.q = test_fvec(n), a.k = test_fvec(n), a.v = test_fvec(n), a.out = test_fvec(n), a.dout = test_fvec(n);
    a.dq = test_fvec(n), a.dk = test_fvec(n), a.dv = test_fvec(n);
    a.x = test_fvec(B * T * a.C), a.dx = test_fvec(B * T * a.C);
    test_fill(a.q, n, 1.0f, 41);
    test_fill(a.k, n, 1.0f, 42);
    test_fill(a.v, n, 1.0f, 43);
    test_fill(a.dout, n, 1.0f, 44);
    test_fill(a.x, B * T * a.C, 1.0f, 45);
    a.tokens = calloc(B * T, sizeof(int32_t));
    for (size_t i = 0; i < B * T; i++) a.tokens[i] = (int32_t)((i * 7 + i / 5) % 9);
    a.saved = calloc(1, a.vt->saved_bytes(a.self, B, T));
    return a;
}

static void run(inst *a) {
    fs_attention_args x = test_attention_args(a->B, a->H, a->T, a->D, a->q, a->k, a->v, a->out, a->saved);
    test_attention_grads(&x, a->H, a->D, a->dout, a->dq, a->dk, a->dv);
    x.tokens = a->tokens;
    if (a->vt->flags & FS_ATTENTION_USES_INPUT) {
        x.x = fs_tensor_cpu_f32(a->x, 3, a->B, a->T, a->C, 0);
        x.dx = fs_tensor_cpu_f32(a->dx, 3, a->B, a->T, a->C, 0);
    }
    fs_error err = {0};
    if (a->vt->forward(a->self, &x, &err) || a->vt->backward(a->self, &x, &err)) {
        fprintf(stderr, "%s\n", err.message);
        fail();
    }
}

static void release(inst *a) {
    free(a->q), free(a->k), free(a->v), free(a->out), free(a->dout), free(a->dq), free(a->dk), free(a->dv);
    free(a->x), free(a->dx), free(a->tokens), free(a->saved);
    fs_session_close(a->s);
}

/* ---- dense ---- */

typedef struct dense_ctx {
    const float *q, *k, *v, *dout;
    float *out, *lse, *delta, *dq, *dk, *dv;
    size_t T, D;
    int causal;
    float scale;
} dense_ctx;

#define DC ((dense_ctx *)c)
static void dn_key_range(void *c, int seg, size_t i0, size_t i1, size_t *j0, size_t *j1) {
    (void)seg, (void)i0;
    *j0 = 0, *j1 = fs_dense_key_end(i1, DC->T, DC->causal);
}
static void dn_query_range(void *c, size_t j0, size_t j1, size_t *i0, size_t *i1) {
    (void)j1;
    *i0 = fs_dense_query_begin(j0, DC->causal), *i1 = DC->T;
}
static int dn_active(void *c, size_t i) { (void)c, (void)i; return 1; }
static const float *dn_q(void *c, size_t i) { return DC->q + i * DC->D; }
static const float *dn_k(void *c, int seg, size_t j) { (void)seg; return DC->k + j * DC->D; }
static const float *dn_v(void *c, int seg, size_t j) { (void)seg; return DC->v + j * DC->D; }
static float dn_score(void *c, int seg, size_t i, size_t j, float raw, int *cst) {
    (void)seg;
    *cst = 0;
    return fs_dense_visible(i, j, DC->causal) ? raw * DC->scale : -INFINITY;
}
static float *dn_out(void *c, size_t i) { return DC->out + i * DC->D; }
static float *dn_lse(void *c, size_t i) { return DC->lse + i; }
static float dn_delta(void *c, size_t i) { return DC->delta[i]; }
static const float *dn_dout(void *c, size_t i) { return DC->dout + i * DC->D; }
static float *dn_dq(void *c, size_t i) { return DC->dq + i * DC->D; }
static float *dn_dk(void *c, size_t j) { return DC->dk + j * DC->D; }
static float *dn_dv(void *c, size_t j) { return DC->dv + j * DC->D; }
#undef DC

static void check_dense(int causal, size_t B, size_t H, size_t T, size_t D) {
    inst a = make("dense", causal, NULL, B, H, T, D);
    run(&a);
    size_t n = B * H * T * D;
    float *out = test_fvec(n), *lse = test_fvec(B * H * T), *delta = test_fvec(B * H * T);
    float *dq = test_fvec(n), *dk = test_fvec(n), *dv = test_fvec(n);
    for (size_t bh = 0; bh < B * H; bh++) {
        size_t o = bh * T * D;
        dense_ctx c = {a.q + o, a.k + o, a.v + o, a.dout + o, out + o, lse + bh * T, delta + bh * T, dq + o, dk + o,
                       dv + o, T, D, causal, 1.0f / sqrtf((float)D)};
        emu p = {&c, T, T, D, c.scale, 1, 0, 0, dn_key_range, dn_query_range, dn_active, dn_q, dn_k, dn_v, dn_score,
                 dn_out, dn_lse, dn_delta, dn_dout, dn_dq, dn_dk, dn_dv};
        emu_forward(&p);
        deltas(c.delta, c.dout, c.out, T, D);
        emu_dq(&p);
        emu_dkdv(&p);
        /* the saved log-sum-exp against a direct one in double */
        for (size_t t = 0; t < T; t++) {
            double mx = -INFINITY, s = 0;
            size_t keys = causal ? t + 1 : T;
            for (size_t j = 0; j < keys; j++) mx = fmax(mx, dotf(c.q + t * D, c.k + j * D, D) * c.scale);
            for (size_t j = 0; j < keys; j++) s += exp(dotf(c.q + t * D, c.k + j * D, D) * c.scale - mx);
            assert_true(fabs(lse[bh * T + t] - (mx + log(s))) < 1e-4);
        }
    }
    test_close("dense out", out, a.out, n, 1e-5, 1e-4);
    test_close("dense dq", dq, a.dq, n, 1e-5, 1e-3);
    test_close("dense dk", dk, a.dk, n, 1e-5, 1e-3);
    test_close("dense dv", dv, a.dv, n, 1e-5, 1e-3);
    free(out), free(lse), free(delta), free(dq), free(dk), free(dv);
    release(&a);
}

static void test_dense(void **state) {
    (void)state;
    check_dense(1, 2, 2, 37, 16);  /* T not a multiple of 16 or 32 */
    check_dense(0, 1, 3, 70, 8);
    check_dense(1, 1, 2, 1, 4);    /* one token */
    check_dense(1, 1, 2, 100, 64);
}

/* ---- dense decode: the kernel's split of the keys among warps ---- */

/* One query against n cached keys (rows of D) as decode_kernel does it:
 * warp w takes the 32-key tiles w, w + W, ... with its own online softmax,
 * then the W partials merge (fs_fa_merge). */
static void emu_decode(float *out, const float *q, const float *K, const float *V, size_t n, size_t D, float scale) {
    enum { W = FS_FA_DECODE_WARPS };
    float m[W], l[W], *acc = test_fvec(W * D), pr[32];
    for (size_t w = 0; w < W; w++) {
        m[w] = -INFINITY, l[w] = 0.0f;
        for (size_t j0 = w * 32; j0 < n; j0 += W * 32) {
            size_t tile = n - j0 < 32 ? n - j0 : 32;
            float tmax = -INFINITY, s[32];
            for (size_t jj = 0; jj < 32; jj++) {
                s[jj] = jj < tile ? dotf(q, K + (j0 + jj) * D, D) * scale : -INFINITY;
                tmax = fmaxf(tmax, s[jj]);
            }
            float mnew = fmaxf(m[w], tmax), alpha = fs_fa_rescale(m[w], mnew), sum = 0.0f;
            for (size_t jj = 0; jj < 32; jj++) sum += pr[jj] = fs_fa_prob(s[jj], mnew);
            l[w] = l[w] * alpha + sum;
            for (size_t d = 0; d < D; d++) {
                float a = acc[w * D + d] * alpha;
                for (size_t jj = 0; jj < tile; jj++) a += pr[jj] * V[(j0 + jj) * D + d];
                acc[w * D + d] = a;
            }
            m[w] = mnew;
        }
    }
    for (size_t w = 1; w < W; w++) fs_fa_merge(&m[0], &l[0], acc, m[w], l[w], acc + w * D, D);
    for (size_t d = 0; d < D; d++) out[d] = l[0] > 0.0f ? acc[d] / l[0] : 0.0f;
    free(acc);
}

/* Every step of a generation through the CPU plugin's decode, against the
 * emulated kernel at that many keys: lengths below, at and past one warp's
 * tile and all four warps' (a ragged batch's rows are such lengths). */
static void check_dense_decode(size_t B, size_t H, size_t D, size_t steps) {
    inst a = make("dense", 1, NULL, 1, H, steps, D);
    size_t BH = B * H;
    void *cache = calloc(1, a.vt->cache_bytes(a.self, B, steps));
    fs_error err = {0};
    assert_int_equal(a.vt->cache_reset(a.self, cache, B, steps, &err), 0);
    float *q = test_fvec(BH * D), *k = test_fvec(BH * D), *v = test_fvec(BH * D), *out = test_fvec(BH * D);
    float *K = test_fvec(BH * steps * D), *V = test_fvec(BH * steps * D), *want = test_fvec(D);
    for (size_t pos = 0; pos < steps; pos++) {
        test_fill(q, BH * D, 1.0f, 100 + pos), test_fill(k, BH * D, 1.0f, 200 + pos), test_fill(v, BH * D, 1.0f, 300 + pos);
        for (size_t bh = 0; bh < BH; bh++) {
            memcpy(K + (bh * steps + pos) * D, k + bh * D, D * sizeof(float));
            memcpy(V + (bh * steps + pos) * D, v + bh * D, D * sizeof(float));
        }
        fs_attention_decode_args x;
        memset(&x, 0, sizeof x);
        x.struct_size = sizeof x, x.B = B, x.pos = pos, x.token = -1;
        x.q = fs_tensor_cpu_f32(q, 4, B, H, 1, D), x.k = fs_tensor_cpu_f32(k, 4, B, H, 1, D);
        x.v = fs_tensor_cpu_f32(v, 4, B, H, 1, D), x.out = fs_tensor_cpu_f32(out, 4, B, H, 1, D);
        if (a.vt->decode(a.self, cache, &x, &err)) {
            fprintf(stderr, "%s\n", err.message);
            fail();
        }
        for (size_t bh = 0; bh < BH; bh++) {
            emu_decode(want, q + bh * D, K + bh * steps * D, V + bh * steps * D, pos + 1, D, 1.0f / sqrtf((float)D));
            test_close("dense decode", out + bh * D, want, D, 1e-5, 1e-4);
        }
    }
    free(q), free(k), free(v), free(out), free(K), free(V), free(want), free(cache);
    release(&a);
}

static void test_dense_decode(void **state) {
    (void)state;
    check_dense_decode(2, 2, 16, 300); /* past 4 warps x 32 keys twice */
    check_dense_decode(1, 3, 64, 40);
}

/* ---- longformer ---- */

typedef struct lf_ctx {
    const float *q, *k, *v, *dout; /* one (b, h): (T, D) */
    float *out, *lse, *delta, *dq, *dk, *dv;
    const uint8_t *gflag;          /* (T) */
    const int32_t *gl;             /* (g) global positions, ascending */
    size_t g, T, D, r, d, n, w;
    int causal;
    float scale;
} lf_ctx;

#define LC ((lf_ctx *)c)
static size_t lf_pos(void *c, size_t s) { return LC->r + s * LC->d; }
static void lf_key_range(void *c, int seg, size_t i0, size_t i1, size_t *j0, size_t *j1) {
    if (seg == 0) fs_lf_key_range(i0, i1, LC->n, LC->w, LC->causal, j0, j1);
    else *j0 = 0, *j1 = LC->g;
}
static void lf_query_range(void *c, size_t j0, size_t j1, size_t *i0, size_t *i1) {
    fs_lf_query_range(j0, j1, LC->n, LC->w, LC->causal, i0, i1);
}
static int lf_active(void *c, size_t s) { return !LC->gflag[lf_pos(c, s)]; }
static const float *lf_q(void *c, size_t s) { return LC->q + lf_pos(c, s) * LC->D; }
static const float *lf_k(void *c, int seg, size_t j) {
    return LC->k + (seg ? (size_t)LC->gl[j] : lf_pos(c, j)) * LC->D;
}
static const float *lf_v(void *c, int seg, size_t j) {
    return LC->v + (seg ? (size_t)LC->gl[j] : lf_pos(c, j)) * LC->D;
}
static float lf_score(void *c, int seg, size_t s, size_t j, float raw, int *cst) {
    *cst = 0;
    int vis = seg ? fs_lf_global_column(s, lf_pos(c, s), (size_t)LC->gl[j], LC->r, LC->d, LC->w, LC->causal)
                  : fs_lf_in_band(s, j, LC->n, LC->w, LC->causal);
    return vis ? raw * LC->scale : -INFINITY;
}
static float *lf_out(void *c, size_t s) { return LC->out + lf_pos(c, s) * LC->D; }
static float *lf_lse(void *c, size_t s) { return LC->lse + lf_pos(c, s); }
static float lf_delta(void *c, size_t s) { return LC->delta[lf_pos(c, s)]; }
static const float *lf_dout(void *c, size_t s) { return LC->dout + lf_pos(c, s) * LC->D; }
static float *lf_dq(void *c, size_t s) { return LC->dq + lf_pos(c, s) * LC->D; }
static float *lf_dk(void *c, size_t j) { return LC->dk + lf_pos(c, j) * LC->D; }
static float *lf_dv(void *c, size_t j) { return LC->dv + lf_pos(c, j) * LC->D; }

/* The global columns' dK and dV: keys are the globals, queries every
 * position of the (b, h) (each in its own class). */
static void gc_query_range(void *c, size_t j0, size_t j1, size_t *i0, size_t *i1) {
    (void)c, (void)j0, (void)j1;
    *i0 = 0, *i1 = LC->T;
}
static int gc_active(void *c, size_t t) { return !LC->gflag[t]; }
static const float *gc_q(void *c, size_t t) { return LC->q + t * LC->D; }
static const float *gc_k(void *c, int seg, size_t j) { (void)seg; return LC->k + (size_t)LC->gl[j] * LC->D; }
static const float *gc_v(void *c, int seg, size_t j) { (void)seg; return LC->v + (size_t)LC->gl[j] * LC->D; }
static float gc_score(void *c, int seg, size_t t, size_t j, float raw, int *cst) {
    (void)seg;
    *cst = 0;
    size_t r = t % LC->d, s = t / LC->d;
    return fs_lf_global_column(s, t, (size_t)LC->gl[j], r, LC->d, LC->w, LC->causal) ? raw * LC->scale : -INFINITY;
}
static float *gc_lse(void *c, size_t t) { return LC->lse + t; }
static float gc_delta(void *c, size_t t) { return LC->delta[t]; }
static const float *gc_dout(void *c, size_t t) { return LC->dout + t * LC->D; }
static float *gc_dk(void *c, size_t j) { return LC->dk + (size_t)LC->gl[j] * LC->D; }
static float *gc_dv(void *c, size_t j) { return LC->dv + (size_t)LC->gl[j] * LC->D; }
#undef LC

/* The global rows: queries are the globals' own projection Qg, keys and
 * values the global projection of every position up to J. */
typedef struct gr_ctx {
    const float *qg, *kvg; /* (g, C), (J, 2C) of one sequence; head h at h * D */
    const float *dout;     /* (T, D) of (b, h) */
    float *out, *glse, *delta, *dqg, *dkvg;
    const int32_t *gl;
    size_t g, J, C, D, h;
    int causal;
    float scale;
} gr_ctx;

#define GC ((gr_ctx *)c)
static void gr_key_range(void *c, int seg, size_t i0, size_t i1, size_t *j0, size_t *j1) {
    (void)seg, (void)i0;
    size_t last = (size_t)GC->gl[i1 - 1] + 1;
    *j0 = 0, *j1 = GC->causal && last < GC->J ? last : GC->J;
}
static void gr_query_range(void *c, size_t j0, size_t j1, size_t *i0, size_t *i1) {
    (void)j0, (void)j1;
    *i0 = 0, *i1 = GC->g;
}
static const float *gr_q(void *c, size_t i) { return GC->qg + i * GC->C + GC->h * GC->D; }
static const float *gr_k(void *c, int seg, size_t j) { (void)seg; return GC->kvg + j * 2 * GC->C + GC->h * GC->D; }
static const float *gr_v(void *c, int seg, size_t j) {
    (void)seg;
    return GC->kvg + j * 2 * GC->C + GC->C + GC->h * GC->D;
}
static float gr_score(void *c, int seg, size_t i, size_t j, float raw, int *cst) {
    (void)seg;
    *cst = 0;
    return j < GC->J && fs_lf_global_row_sees((size_t)GC->gl[i], j, GC->causal) ? raw * GC->scale : -INFINITY;
}
static float *gr_out(void *c, size_t i) { return GC->out + (size_t)GC->gl[i] * GC->D; }
static float *gr_lse(void *c, size_t i) { return GC->glse + i; }
static float gr_delta(void *c, size_t i) { return GC->delta[GC->gl[i]]; }
static const float *gr_dout(void *c, size_t i) { return GC->dout + (size_t)GC->gl[i] * GC->D; }
static float *gr_dq(void *c, size_t i) { return GC->dqg + i * GC->C + GC->h * GC->D; }
static float *gr_dk(void *c, size_t j) { return GC->dkvg + j * 2 * GC->C + GC->h * GC->D; }
static float *gr_dv(void *c, size_t j) { return GC->dkvg + j * 2 * GC->C + GC->C + GC->h * GC->D; }
#undef GC

/* y (n, m) = x (n, k) @ W (k, m, row stride ldw) + bias (m), in double */
static void project(float *y, const float *x, size_t n, size_t k, const float *W, size_t ldw, const float *bias,
                    size_t m) {
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < m; j++) {
            double s = bias[j];
            for (size_t p = 0; p < k; p++) s += (double)x[i * k + p] * W[p * ldw + j];
            y[i * m + j] = (float)s;
        }
}

/* What the plugin's saved state says about sequence b's globals. */
static size_t globals_of(const inst *a, int32_t *gl, uint8_t *gflag, size_t b, const char *mode, const int32_t *list,
                         size_t n_list) {
    size_t g = 0;
    memset(gflag, 0, a->T);
    for (size_t t = 0; t < a->T; t++) {
        int glob = 0;
        for (size_t i = 0; i < n_list; i++)
            glob |= strcmp(mode, "pos") == 0 ? (size_t)list[i] == t : list[i] == a->tokens[b * a->T + t];
        if (glob) gl[g++] = (int32_t)t, gflag[t] = 1;
    }
    return g;
}

/* Through the global projection, for one batch row: dx (T, C) += dkvg
 * W_kv^T on rows < J, and dqg W_q^T at the g globals (W (C, 3C)). */
static void global_dx(float *dx, const float *dkvg, const float *dqg, const float *wg, const int32_t *gl, size_t g,
                      size_t J, size_t C) {
    for (size_t i = 0; i < J; i++)
        for (size_t p = 0; p < C; p++) {
            double s = 0;
            for (size_t j = 0; j < 2 * C; j++) s += (double)dkvg[i * 2 * C + j] * wg[p * 3 * C + C + j];
            dx[i * C + p] += (float)s;
        }
    for (size_t i = 0; i < g; i++)
        for (size_t p = 0; p < C; p++) {
            double s = 0;
            for (size_t j = 0; j < C; j++) s += (double)dqg[i * C + j] * wg[p * 3 * C + j];
            dx[(size_t)gl[i] * C + p] += (float)s;
        }
}

static void check_longformer(int causal, const char *keys, const char *mode, const int32_t *list, size_t n_list,
                             size_t w, const size_t *dil, size_t B, size_t H, size_t T, size_t D) {
    inst a = make("longformer", causal, keys, B, H, T, D);
    /* the global projection: random, not a copy of anything */
    const fs_param_block *pb = fs_model_block(a.s->model);
    float *wg = NULL, *bg = NULL;
    for (size_t i = 0; i < pb->n_views; i++) {
        if (strstr(pb->views[i].name, "c_attn_global.weight")) wg = pb->params + pb->views[i].offset;
        if (strstr(pb->views[i].name, "c_attn_global.bias")) bg = pb->params + pb->views[i].offset;
    }
    size_t C = a.C, n = B * H * T * D;
    if (wg) test_fill(wg, C * 3 * C, 0.3f, 46), test_fill(bg, 3 * C, 0.3f, 47);
    run(&a);
    float *out = test_fvec(n), *lse = test_fvec(B * H * T), *glse = test_fvec(B * H * T), *delta = test_fvec(B * H * T);
    float *dq = test_fvec(n), *dk = test_fvec(n), *dv = test_fvec(n), *dx = test_fvec(B * T * C);
    int32_t *gl = calloc(T, sizeof *gl);
    uint8_t *gflag = calloc(T, 1);
    float *xg = test_fvec(T * C), *qg = test_fvec(T * C), *kvg = test_fvec(T * 2 * C);
    float *dqg = test_fvec(T * C), *dkvg = test_fvec(T * 2 * C);
    for (size_t b = 0; b < B; b++) {
        size_t g = wg ? globals_of(&a, gl, gflag, b, mode, list, n_list) : 0;
        size_t J = g == 0 ? 0 : causal ? (size_t)gl[g - 1] + 1 : T;
        const float *xb = a.x + b * T * C;
        if (g) {
            for (size_t i = 0; i < g; i++) memcpy(xg + i * C, xb + (size_t)gl[i] * C, C * sizeof(float));
            project(qg, xg, g, C, wg, 3 * C, bg, C);
            project(kvg, xb, J, C, wg + C, 3 * C, bg + C, 2 * C);
            memset(dqg, 0, T * C * sizeof(float)), memset(dkvg, 0, T * 2 * C * sizeof(float));
        }
        for (size_t h = 0; h < H; h++) {
            size_t bh = b * H + h, o = bh * T * D;
            lf_ctx c = {a.q + o, a.k + o, a.v + o, a.dout + o, out + o, lse + bh * T, delta + bh * T, dq + o, dk + o,
                        dv + o, gflag, gl, g, T, D, 0, dil[h], 0, w, causal, 1.0f / sqrtf((float)D)};
            emu band = {&c, 0, 0, D, c.scale, 2, 0, 0, lf_key_range, lf_query_range, lf_active, lf_q, lf_k, lf_v,
                        lf_score, lf_out, lf_lse, lf_delta, lf_dout, lf_dq, lf_dk, lf_dv};
            for (c.r = 0; c.r < dil[h] && c.r < T; c.r++) { /* forward, every class */
                c.n = band.nq = band.nk = fs_lf_class_len(T, c.r, c.d);
                emu_forward(&band);
            }
            gr_ctx gc = {qg, kvg, a.dout + o, out + o, glse + bh * T, delta + bh * T, dqg, dkvg, gl, g, J, C, D, h, causal,
                         c.scale};
            emu grows = {&gc, g, J, D, c.scale, 1, 0, 0, gr_key_range, gr_query_range, dn_active, gr_q, gr_k, gr_v,
                         gr_score, gr_out, gr_lse, gr_delta, gr_dout, gr_dq, gr_dk, gr_dv};
            if (g) emu_forward(&grows);
            deltas(c.delta, c.dout, c.out, T, D);
            for (c.r = 0; c.r < dil[h] && c.r < T; c.r++) { /* backward: band rows and keys */
                c.n = band.nq = band.nk = fs_lf_class_len(T, c.r, c.d);
                emu_dq(&band);
                emu_dkdv(&band);
            }
            emu cols = {&c, T, g, D, c.scale, 1, 0, 1, NULL, gc_query_range, gc_active, gc_q, gc_k, gc_v, gc_score,
                        NULL, gc_lse, gc_delta, gc_dout, NULL, gc_dk, gc_dv};
            if (g) {
                emu_dkdv(&cols);
                emu_dq(&grows);
                emu_dkdv(&grows);
            }
        }
        if (g) global_dx(dx + b * T * C, dkvg, dqg, wg, gl, g, J, C);
    }
    /* the CPU's saved log-sum-exps: local rows (B, H, T) first in its layout */
    test_close("longformer lse", lse, (const float *)a.saved, B * H * T, 1e-5, 1e-4);
    test_close("longformer out", out, a.out, n, 1e-5, 1e-4);
    test_close("longformer dq", dq, a.dq, n, 1e-5, 1e-3);
    test_close("longformer dk", dk, a.dk, n, 1e-5, 1e-3);
    test_close("longformer dv", dv, a.dv, n, 1e-5, 1e-3);
    if (wg) test_close("longformer dx", dx, a.dx, B * T * C, 1e-5, 1e-3);
    free(out), free(lse), free(glse), free(delta), free(dq), free(dk), free(dv), free(dx), free(gl), free(gflag);
    free(xg), free(qg), free(kvg), free(dqg), free(dkvg);
    release(&a);
}

static void test_longformer(void **state) {
    (void)state;
    size_t d1[2] = {1, 1}, d12[2] = {1, 2}, d3[3] = {3, 1, 2};
    int32_t pos[2] = {0, 9}, tok[1] = {4};
    check_longformer(1, "window = 3\n", "none", NULL, 0, 3, d1, 2, 2, 29, 8);
    check_longformer(0, "window = 4\ndilation = 1,2\n", "none", NULL, 0, 4, d12, 1, 2, 37, 8);
    check_longformer(1, "window = 2\ndilation = 1,2\nglobal = 0,9\n", "pos", pos, 2, 2, d12, 2, 2, 29, 8);
    check_longformer(0, "window = 3\ndilation = 3,1,2\nglobal = 0,9\n", "pos", pos, 2, 3, d3, 1, 3, 40, 4);
    check_longformer(1, "window = 2\nglobal = token:4\n", "tok", tok, 1, 2, d1, 2, 2, 31, 8);
    check_longformer(0, "window = 5\ndilation = 1,2\nglobal = token:4\n", "tok", tok, 1, 5, d12, 1, 2, 45, 8);
}

/* ---- lsh ---- */

typedef struct lsh_ctx {
    const float *q, *kn, *v, *dout;    /* (T, D) of one (b, h) */
    const int32_t *order, *where;      /* this round's order (T); every round's where (nh, T) */
    float *out_r, *lse_r;              /* forward: this round's, by position */
    const float *lse;                  /* backward: the union's, by position */
    const float *delta;
    float *dq_r, *dkn_r, *dv_r;
    size_t T, D, nh, chunk, back, ahead, round;
    int causal;
    float scale;
} lsh_ctx;

#define HC ((lsh_ctx *)c)
static size_t hp(void *c, size_t u) { return (size_t)HC->order[u]; }
static void lsh_key_range(void *c, int seg, size_t u0, size_t u1, size_t *j0, size_t *j1) {
    (void)seg;
    size_t lo, hi;
    fs_lsh_window(u0 / HC->chunk, HC->back, HC->ahead, HC->chunk, HC->T, j0, &hi);
    fs_lsh_window((u1 - 1) / HC->chunk, HC->back, HC->ahead, HC->chunk, HC->T, &lo, j1);
}
static void lsh_query_range(void *c, size_t k0, size_t k1, size_t *i0, size_t *i1) {
    size_t lo, hi; /* the reverse window: chunks that look at these keys */
    fs_lsh_window(k0 / HC->chunk, HC->ahead, HC->back, HC->chunk, HC->T, i0, &hi);
    fs_lsh_window((k1 - 1) / HC->chunk, HC->ahead, HC->back, HC->chunk, HC->T, &lo, i1);
}
static const float *lsh_q(void *c, size_t u) { return HC->q + hp(c, u) * HC->D; }
static const float *lsh_k(void *c, int seg, size_t u) { (void)seg; return HC->kn + hp(c, u) * HC->D; }
static const float *lsh_v(void *c, int seg, size_t u) { (void)seg; return HC->v + hp(c, u) * HC->D; }
static float lsh_score(void *c, int seg, size_t u, size_t u2, float raw, int *cst) {
    (void)seg;
    size_t pi = hp(c, u), pj = hp(c, u2);
    *cst = pi == pj;
    if (!fs_lsh_sees(u / HC->chunk, u2 / HC->chunk, HC->back, HC->ahead) || (HC->causal && pj > pi) ||
        fs_lsh_first_round(HC->where, HC->nh, HC->T, HC->chunk, HC->back, HC->ahead, pi, pj) != HC->round)
        return -INFINITY;
    return fs_lsh_score(raw, HC->scale, pi == pj);
}
static float *lsh_out(void *c, size_t u) { return HC->out_r + hp(c, u) * HC->D; }
static float *lsh_lse_fwd(void *c, size_t u) { return HC->lse_r + hp(c, u); }
static float *lsh_lse_bwd(void *c, size_t u) { return (float *)HC->lse + hp(c, u); }
static float lsh_delta(void *c, size_t u) { return HC->delta[hp(c, u)]; }
static const float *lsh_dout(void *c, size_t u) { return HC->dout + hp(c, u) * HC->D; }
static float *lsh_dq(void *c, size_t u) { return HC->dq_r + hp(c, u) * HC->D; }
static float *lsh_dk(void *c, size_t u) { return HC->dkn_r + hp(c, u) * HC->D; }
static float *lsh_dv(void *c, size_t u) { return HC->dv_r + hp(c, u) * HC->D; }
#undef HC

/* One (b, h)'s saved buckets from q's projections by the rotations (rot
 * (nh, D, nb / 2)), and its order: the one a sort of bucket * T + t gives. */
static void check_lsh_buckets(const float *q, const float *rot, const int32_t *bucket, const int32_t *order,
                              float *proj, size_t nh, size_t nb, size_t T, size_t D) {
    for (size_t r = 0; r < nh; r++)
        for (size_t t = 0; t < T; t++) {
            for (size_t c = 0; c < nb / 2; c++) {
                float s = 0.0f;
                for (size_t d = 0; d < D; d++) s += q[t * D + d] * rot[(r * D + d) * (nb / 2) + c];
                proj[c] = s;
            }
            assert_int_equal(fs_lsh_bucket(proj, nb / 2), bucket[r * T + t]);
            size_t rank = 0; /* slot = how many keys (bucket, position) sort before this one */
            for (size_t u = 0; u < T; u++)
                rank += (size_t)bucket[r * T + u] * T + u < (size_t)bucket[r * T + t] * T + t;
            assert_int_equal(order[r * T + rank], (int32_t)t);
        }
}

static void check_lsh(int causal, size_t nh, size_t nb, size_t chunk, size_t back, size_t ahead, size_t B, size_t H,
                      size_t T, size_t D) {
    char keys[256];
    snprintf(keys, sizeof keys, "n_hashes = %zu\nn_buckets = %zu\nchunk = %zu\nlookback = %zu\nlookahead = %zu\n", nh, nb,
             chunk, back, ahead);
    inst a = make("lsh", causal, keys, B, H, T, D);
    run(&a);
    lsh_saved_layout lay;
    lsh_saved_layout_for(nh, T, &lay);
    size_t n = B * H * T * D;
    float *out = test_fvec(n), *dq = test_fvec(n), *dv = test_fvec(n), *kn = test_fvec(T * D);
    float *out_r = test_fvec(nh * T * D), *lse_r = test_fvec(nh * T), *lse = test_fvec(T), *delta = test_fvec(T);
    float *dq_r = test_fvec(nh * T * D), *dkn_r = test_fvec(nh * T * D), *dv_r = test_fvec(nh * T * D);
    const float *rot = fs_model_block(a.s->model)->params + fs_model_find(a.s->model, "plugin.layer0.attention.rotations")->offset;
    float *proj = test_fvec(nb / 2);
    for (size_t bh = 0; bh < B * H; bh++) {
        const char *base = (const char *)a.saved + bh * lay.per_bh;
        const int32_t *bucket = (const int32_t *)(base + lay.bucket), *order = (const int32_t *)(base + lay.order);
        const int32_t *where = (const int32_t *)(base + lay.where);
        size_t o = bh * T * D;
        const float *q = a.q + o;
        for (size_t t = 0; t < T; t++) { /* the keys: q / |q| */
            float ss = 0.0f;
            for (size_t c = 0; c < D; c++) ss += q[t * D + c] * q[t * D + c];
            float inv = fs_lsh_inv_norm(ss);
            for (size_t c = 0; c < D; c++) kn[t * D + c] = q[t * D + c] * inv;
        }
        check_lsh_buckets(q, rot, bucket, order, proj, nh, nb, T, D);
        lsh_ctx c = {q, kn, a.v + o, a.dout + o, NULL, where, NULL, NULL, lse, delta, NULL, NULL, NULL, T, D, nh, chunk,
                     back, ahead, 0, causal, 1.0f / sqrtf((float)D)};
        emu p = {&c, T, T, D, c.scale, 1, 0, 0, lsh_key_range, lsh_query_range, dn_active, lsh_q, lsh_k, lsh_v,
                 lsh_score, lsh_out, lsh_lse_fwd, lsh_delta, lsh_dout, lsh_dq, lsh_dk, lsh_dv};
        for (size_t r = 0; r < nh; r++) {
            c.round = r, c.order = order + r * T, c.out_r = out_r + r * T * D, c.lse_r = lse_r + r * T;
            emu_forward(&p);
        }
        for (size_t t = 0; t < T; t++) { /* the rounds merged */
            lse[t] = fs_lsh_combine_lse(lse_r + t, nh, T);
            for (size_t d = 0; d < D; d++) {
                float s = 0.0f;
                for (size_t r = 0; r < nh; r++) s += expf(lse_r[r * T + t] - lse[t]) * out_r[(r * T + t) * D + d];
                out[o + t * D + d] = s;
            }
        }
        test_close("lsh lse", lse, (const float *)(base + lay.lse), T, 1e-4, 1e-5);
        deltas(delta, a.dout + o, out + o, T, D);
        p.lse = lsh_lse_bwd;
        for (size_t r = 0; r < nh; r++) {
            c.round = r, c.order = order + r * T, c.dq_r = dq_r + r * T * D, c.dkn_r = dkn_r + r * T * D;
            c.dv_r = dv_r + r * T * D;
            emu_dq(&p);
            emu_dkdv(&p);
        }
        for (size_t t = 0; t < T; t++) { /* the rounds added, the keys' gradient through the normalisation */
            float ss = 0.0f, qd = 0.0f, dkn[256];
            for (size_t d = 0; d < D; d++) {
                float gq = 0.0f, gk = 0.0f, gv = 0.0f;
                for (size_t r = 0; r < nh; r++) {
                    gq += dq_r[(r * T + t) * D + d];
                    gk += dkn_r[(r * T + t) * D + d];
                    gv += dv_r[(r * T + t) * D + d];
                }
                dq[o + t * D + d] = gq, dkn[d] = gk, dv[o + t * D + d] = gv;
                ss += q[t * D + d] * q[t * D + d], qd += q[t * D + d] * gk;
            }
            float inv = fs_lsh_inv_norm(ss);
            for (size_t d = 0; d < D; d++) dq[o + t * D + d] += fs_lsh_normalize_backward(q[t * D + d], dkn[d], inv, qd);
        }
    }
    test_close("lsh out", out, a.out, n, 1e-5, 1e-4);
    test_close("lsh dq", dq, a.dq, n, 1e-5, 1e-3);
    test_close("lsh dv", dv, a.dv, n, 1e-5, 1e-3);
    free(out), free(dq), free(dv), free(kn), free(out_r), free(lse_r), free(lse), free(delta), free(dq_r), free(dkn_r),
        free(dv_r), free(proj);
    release(&a);
}

static void test_lsh(void **state) {
    (void)state;
    check_lsh(1, 1, 4, 64, 1, 0, 1, 2, 40, 8);   /* one chunk: full shared-QK attention */
    check_lsh(1, 2, 4, 8, 1, 0, 2, 2, 40, 8);    /* two rounds: duplicates counted once */
    check_lsh(0, 3, 6, 8, 1, 1, 1, 2, 45, 16);   /* bidirectional, lookahead */
    check_lsh(1, 4, 8, 5, 2, 0, 1, 2, 50, 4);    /* chunks that do not divide the tiles */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense),
        cmocka_unit_test(test_dense_decode),
        cmocka_unit_test(test_longformer),
        cmocka_unit_test(test_lsh),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
