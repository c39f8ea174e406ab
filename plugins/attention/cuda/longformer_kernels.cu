/* longformer_kernels.cu — longformer attention on CUDA: the engine
 * (flash.cuh) over three policies, each the rules of longformer_math.h.
 *
 *   band:    one problem per (b, h, dilation class r): queries and keys are
 *            the class's positions (rows d*D apart, read in place), two key
 *            segments: the band (a contiguous range of the class) and the
 *            sequence's global tokens as extra columns. Global rows are not
 *            this pass's: their output stays 0 for the global pass.
 *   columns: dK and dV of the global tokens as columns: keys are the
 *            globals, queries every position of (b, h).
 *   rows:    the global rows, queries the globals' own projection Qg
 *            (B, gmax, C), keys and values the global projection of every
 *            position (B, jmax, 2C). */
#include "attention_cuda.h"
#include "flash.cuh"
#include "longformer_math.h"

/* What the three policies share: the (B, H, T, D) tensors, the saved
 * globals and the configuration. */
struct lf_common {
    const char *q_, *k_, *v_, *dout_;
    char *out_, *dq_, *dk_, *dv_;
    float *lse_;
    const float *delta_;
    const uint8_t *gflag;   /* (B, T) */
    const int32_t *glist;   /* (B, gmax) */
    const int32_t *gcount;  /* (B) */
    const int32_t *dil;     /* (H) */
    size_t B, H, T, D, es, gmax, w, dmax;
    float scale;
    int causal;
    bool accumulate_dq, accumulate_dkdv;
};

struct lf_band_policy : lf_common {
    size_t bh, b, r, d, n, g;
    const int32_t *gl;

    __device__ void begin(unsigned problem) {
        bh = problem / dmax, r = problem % dmax, b = bh / H;
        d = (size_t)dil[bh % H];
        n = r < d ? fs_lf_class_len(T, r, d) : 0;
        gl = glist + b * gmax;
        g = (size_t)gcount[b];
    }
    __device__ size_t pos(size_t s) const { return r + s * d; }
    __device__ size_t row(size_t p) const { return (bh * T + p) * D * es; }
    __device__ size_t n_queries() const { return n; }
    __device__ size_t n_keys() const { return n; }
    __device__ int n_segments() const { return g ? 2 : 1; }
    __device__ void key_range(int seg, size_t i0, size_t i1, size_t *j0, size_t *j1) const {
        if (seg == 0) fs_lf_key_range(i0, i1, n, w, causal, j0, j1);
        else *j0 = 0, *j1 = g;
    }
    __device__ void query_range(size_t j0, size_t j1, size_t *i0, size_t *i1) const {
        fs_lf_query_range(j0, j1, n, w, causal, i0, i1);
    }
    __device__ bool active(size_t s) const { return !gflag[b * T + pos(s)]; }
    __device__ size_t key_pos(int seg, size_t j) const { return seg ? (size_t)gl[j] : pos(j); }
    __device__ const void *q(size_t s) const { return q_ + row(pos(s)); }
    __device__ const void *k(int seg, size_t j) const { return k_ + row(key_pos(seg, j)); }
    __device__ const void *v(int seg, size_t j) const { return v_ + row(key_pos(seg, j)); }
    __device__ const void *dout(size_t s) const { return dout_ + row(pos(s)); }
    __device__ void *out(size_t s) const { return out_ + row(pos(s)); }
    __device__ void *dq(size_t s) const { return dq_ + row(pos(s)); }
    __device__ void *dk(size_t j) const { return dk_ + row(pos(j)); }
    __device__ void *dv(size_t j) const { return dv_ + row(pos(j)); }
    __device__ float *lse(size_t s) const { return lse_ + bh * T + pos(s); }
    __device__ float delta(size_t s) const { return delta_[bh * T + pos(s)]; }
    __device__ float score(int seg, size_t s, size_t j, float raw, bool *constant) const {
        *constant = false;
        int vis = seg ? fs_lf_global_column(s, pos(s), (size_t)gl[j], r, d, w, causal) : fs_lf_in_band(s, j, n, w, causal);
        return vis ? raw * scale : -INFINITY;
    }
};

/* Keys: the globals of (b, h); queries: every position, each in its class. */
struct lf_columns_policy : lf_common {
    size_t bh, b, d, g;
    const int32_t *gl;

    __device__ void begin(unsigned problem) {
        bh = problem, b = bh / H, d = (size_t)dil[bh % H];
        gl = glist + b * gmax;
        g = (size_t)gcount[b];
    }
    __device__ size_t row(size_t p) const { return (bh * T + p) * D * es; }
    __device__ size_t n_queries() const { return T; }
    __device__ size_t n_keys() const { return g; }
    __device__ int n_segments() const { return 1; }
    __device__ void key_range(int, size_t, size_t, size_t *j0, size_t *j1) const { *j0 = 0, *j1 = g; }
    __device__ void query_range(size_t, size_t, size_t *i0, size_t *i1) const { *i0 = 0, *i1 = T; }
    __device__ bool active(size_t t) const { return !gflag[b * T + t]; }
    __device__ const void *q(size_t t) const { return q_ + row(t); }
    __device__ const void *k(int, size_t j) const { return k_ + row((size_t)gl[j]); }
    __device__ const void *v(int, size_t j) const { return v_ + row((size_t)gl[j]); }
    __device__ const void *dout(size_t t) const { return dout_ + row(t); }
    __device__ void *out(size_t) const { return NULL; }
    __device__ void *dq(size_t) const { return NULL; }
    __device__ void *dk(size_t j) const { return dk_ + row((size_t)gl[j]); }
    __device__ void *dv(size_t j) const { return dv_ + row((size_t)gl[j]); }
    __device__ float *lse(size_t t) const { return lse_ + bh * T + t; }
    __device__ float delta(size_t t) const { return delta_[bh * T + t]; }
    __device__ float score(int, size_t t, size_t j, float raw, bool *constant) const {
        *constant = false;
        return fs_lf_global_column(t / d, t, (size_t)gl[j], t % d, d, w, causal) ? raw * scale : -INFINITY;
    }
};

/* The global rows of (b, h) through the global projection (f32). */
struct lf_rows_policy : lf_common {
    const float *qg_, *kvg_;   /* (B, gmax, C), (B, jmax, 2C) */
    float *dqg_, *dkvg_, *glse_;
    const int32_t *jspan;      /* (B): keys of the global projection each sequence has */
    size_t C, jmax;
    size_t bh, b, h, g, J;
    const int32_t *gl;

    __device__ void begin(unsigned problem) {
        bh = problem, b = bh / H, h = bh % H;
        gl = glist + b * gmax;
        g = (size_t)gcount[b];
        J = (size_t)jspan[b];
    }
    __device__ size_t n_queries() const { return g; }
    __device__ size_t n_keys() const { return J; }
    __device__ int n_segments() const { return 1; }
    __device__ void key_range(int, size_t, size_t i1, size_t *j0, size_t *j1) const {
        size_t last = (size_t)gl[i1 - 1] + 1;
        *j0 = 0, *j1 = causal && last < J ? last : J;
    }
    __device__ void query_range(size_t, size_t, size_t *i0, size_t *i1) const { *i0 = 0, *i1 = g; }
    __device__ bool active(size_t) const { return true; }
    __device__ size_t kv(size_t j) const { return (b * jmax + j) * 2 * C + h * D; }
    __device__ const void *q(size_t i) const { return qg_ + (b * gmax + i) * C + h * D; }
    __device__ const void *k(int, size_t j) const { return kvg_ + kv(j); }
    __device__ const void *v(int, size_t j) const { return kvg_ + kv(j) + C; }
    __device__ const void *dout(size_t i) const { return dout_ + (bh * T + (size_t)gl[i]) * D * es; }
    __device__ void *out(size_t i) const { return out_ + (bh * T + (size_t)gl[i]) * D * es; }
    __device__ void *dq(size_t i) const { return dqg_ + (b * gmax + i) * C + h * D; }
    __device__ void *dk(size_t j) const { return dkvg_ + kv(j); }
    __device__ void *dv(size_t j) const { return dkvg_ + kv(j) + C; }
    __device__ float *lse(size_t i) const { return glse_ + bh * gmax + i; }
    __device__ float delta(size_t i) const { return delta_[bh * T + (size_t)gl[i]]; }
    __device__ float score(int, size_t i, size_t j, float raw, bool *constant) const {
        *constant = false;
        return j < J && fs_lf_global_row_sees((size_t)gl[i], j, causal) ? raw * scale : -INFINITY;
    }
};

static lf_common common(const fs_lf_cuda_args *a) {
    lf_common c = {};
    c.q_ = (const char *)a->q, c.k_ = (const char *)a->k, c.v_ = (const char *)a->v, c.dout_ = (const char *)a->dout;
    c.out_ = (char *)a->out, c.dq_ = (char *)a->dq, c.dk_ = (char *)a->dk, c.dv_ = (char *)a->dv;
    c.lse_ = a->lse, c.delta_ = a->delta;
    c.gflag = a->gflag, c.glist = a->glist, c.gcount = a->gcount, c.dil = a->dil;
    c.B = a->B, c.H = a->H, c.T = a->T, c.D = a->D, c.es = fs_dtype_bytes(a->dtype);
    c.gmax = a->gmax, c.w = a->window, c.dmax = a->dmax, c.scale = a->scale, c.causal = a->causal;
    return c;
}

static unsigned tiles(size_t n, size_t tile) { return (unsigned)((n + tile - 1) / tile); }

int fs_lf_cuda_band_forward(void *stream, const fs_lf_cuda_args *a) {
    lf_band_policy p;
    static_cast<lf_common &>(p) = common(a);
    return (int)fa_run_f32(FA_FORWARD, p, dim3(tiles(a->T, FS_FA_BR), (unsigned)(a->B * a->H * a->dmax)),
                       (cudaStream_t)stream);
}

int fs_lf_cuda_band_backward(void *stream, const fs_lf_cuda_args *a) {
    cudaStream_t s = (cudaStream_t)stream;
    lf_band_policy p;
    static_cast<lf_common &>(p) = common(a);
    unsigned problems = (unsigned)(a->B * a->H * a->dmax);
    cudaError_t e = fa_run_f32(FA_DQ, p, dim3(tiles(a->T, FS_FA_BR), problems), s);
    if (!e) e = fa_run_f32(FA_DKDV, p, dim3(tiles(a->T, FS_FA_BC), problems), s);
    if (e || a->gmax == 0) return (int)e;
    lf_columns_policy c;
    static_cast<lf_common &>(c) = common(a);
    c.accumulate_dkdv = true; /* onto the band's */
    return (int)fa_run_f32(FA_DKDV, c, dim3(tiles(a->gmax, FS_FA_BC), (unsigned)(a->B * a->H)), s);
}

static lf_rows_policy rows_policy(const fs_lf_cuda_args *a) {
    lf_rows_policy p;
    static_cast<lf_common &>(p) = common(a);
    p.qg_ = a->qg, p.kvg_ = a->kvg, p.dqg_ = a->dqg, p.dkvg_ = a->dkvg, p.glse_ = a->glse;
    p.jspan = a->jspan, p.C = a->H * a->D, p.jmax = a->jmax;
    return p;
}

int fs_lf_cuda_global_forward(void *stream, const fs_lf_cuda_args *a) {
    if (a->gmax == 0) return 0;
    lf_rows_policy p = rows_policy(a);
    return (int)fa_run_f32(FA_FORWARD, p, dim3(tiles(a->gmax, FS_FA_BR), (unsigned)(a->B * a->H)),
                       (cudaStream_t)stream);
}

int fs_lf_cuda_global_backward(void *stream, const fs_lf_cuda_args *a) {
    if (a->gmax == 0) return 0;
    cudaStream_t s = (cudaStream_t)stream;
    lf_rows_policy p = rows_policy(a);
    unsigned problems = (unsigned)(a->B * a->H);
    cudaError_t e = fa_run_f32(FA_DQ, p, dim3(tiles(a->gmax, FS_FA_BR), problems), s);
    if (!e) e = fa_run_f32(FA_DKDV, p, dim3(tiles(a->jmax, FS_FA_BC), problems), s);
    return (int)e;
}
