/* dense_kernels.cu — exact attention on CUDA: the engine (flash.cuh) over
 * one (b, h) per problem (bf16 at head widths 64 and 128 on tensor cores
 * instead, dense_mma.cu), the scores for distillation, and the decode step
 * over a K/V cache. */
#include "attention_cuda.h"
#include "flash.cuh"

/* One (b, h) of (B, H, T, D) tensors: queries and keys are positions. */
struct dense_policy {
    const char *q_, *k_, *v_, *dout_;
    char *out_, *dq_, *dk_, *dv_;
    float *lse_;
    const float *delta_;
    size_t T, D, es, off;
    float scale;
    int causal;
    bool accumulate_dq, accumulate_dkdv;

    __device__ void begin(unsigned problem) { off = (size_t)problem * T; }
    __device__ size_t n_queries() const { return T; }
    __device__ size_t n_keys() const { return T; }
    __device__ int n_segments() const { return 1; }
    __device__ void key_range(int, size_t, size_t i1, size_t *j0, size_t *j1) const {
        *j0 = 0;
        *j1 = fs_dense_key_end(i1, T, causal);
    }
    __device__ void query_range(size_t j0, size_t, size_t *i0, size_t *i1) const {
        *i0 = fs_dense_query_begin(j0, causal);
        *i1 = T;
    }
    __device__ bool active(size_t) const { return true; }
    __device__ size_t row(size_t i) const { return (off + i) * D * es; }
    __device__ const void *q(size_t i) const { return q_ + row(i); }
    __device__ const void *k(int, size_t j) const { return k_ + row(j); }
    __device__ const void *v(int, size_t j) const { return v_ + row(j); }
    __device__ const void *dout(size_t i) const { return dout_ + row(i); }
    __device__ void *out(size_t i) const { return out_ + row(i); }
    __device__ void *dq(size_t i) const { return dq_ + row(i); }
    __device__ void *dk(size_t j) const { return dk_ + row(j); }
    __device__ void *dv(size_t j) const { return dv_ + row(j); }
    __device__ float *lse(size_t i) const { return lse_ + off + i; }
    __device__ float delta(size_t i) const { return delta_[off + i]; }
    __device__ float score(int, size_t i, size_t j, float raw, bool *constant) const {
        *constant = false;
        return fs_dense_visible(i, j, causal) ? raw * scale : -INFINITY;
    }
};

static dense_policy policy(const void *q, const void *k, const void *v, size_t T, size_t D, int causal, float scale,
                           int dtype) {
    dense_policy p = {};
    p.q_ = (const char *)q, p.k_ = (const char *)k, p.v_ = (const char *)v;
    p.T = T, p.D = D, p.es = fs_dtype_bytes(dtype), p.scale = scale, p.causal = causal;
    return p;
}

int fs_dense_cuda_forward(void *stream, void *out, float *lse, const void *q, const void *k, const void *v, size_t BH,
                          size_t T, size_t D, int causal, float scale, int dtype) {
    const void *ptrs[] = {out, q, k, v};
    if (fs_dense_mma_fits(D, dtype, ptrs, 4))
        return fs_dense_mma_forward(stream, out, lse, q, k, v, BH, T, D, causal, scale);
    dense_policy p = policy(q, k, v, T, D, causal, scale, dtype);
    p.out_ = (char *)out, p.lse_ = lse;
    dim3 grid((unsigned)((T + FS_FA_BR - 1) / FS_FA_BR), (unsigned)BH);
    return (int)fa_run(FA_FORWARD, p, dtype, grid, (cudaStream_t)stream);
}

int fs_dense_cuda_backward(void *stream, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                           const void *v, const void *out, const float *lse, float *delta, size_t BH, size_t T,
                           size_t D, int causal, float scale, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    cudaError_t e = (cudaError_t)fs_att_delta(s, delta, dout, out, BH * T, D, dtype);
    if (e) return (int)e;
    const void *ptrs[] = {dq, dk, dv, dout, q, k, v};
    if (fs_dense_mma_fits(D, dtype, ptrs, 7))
        return fs_dense_mma_backward(stream, dq, dk, dv, dout, q, k, v, lse, delta, BH, T, D, causal, scale);
    dense_policy p = policy(q, k, v, T, D, causal, scale, dtype);
    p.dout_ = (const char *)dout, p.lse_ = (float *)lse, p.delta_ = delta;
    p.dq_ = (char *)dq, p.dk_ = (char *)dk, p.dv_ = (char *)dv;
    e = fa_run(FA_DQ, p, dtype, dim3((unsigned)((T + FS_FA_BR - 1) / FS_FA_BR), (unsigned)BH), s);
    if (!e) e = fa_run(FA_DKDV, p, dtype, dim3((unsigned)((T + FS_FA_BC - 1) / FS_FA_BC), (unsigned)BH), s);
    return (int)e;
}

/* ---- scores for distillation: one thread per (b, h, t, j) ---- */

template <int DT>
__global__ void scores_kernel(float *scores, const void *q, const void *k, const float *lse, size_t BH, size_t T,
                              size_t D, int causal, float scale, int probs) {
    size_t n = BH * T * T;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        size_t j = e % T, t = (e / T) % T, bh = e / (T * T);
        float out = 0.0f;
        if (fs_dense_visible(t, j, causal)) {
            float raw = 0.0f;
            for (size_t c = 0; c < D; c++)
                raw += fs_load(q, (bh * T + t) * D + c, DT) * fs_load(k, (bh * T + j) * D + c, DT);
            out = probs ? fs_fa_prob(raw * scale, lse[bh * T + t]) : raw * scale;
        }
        scores[e] = out;
    }
}

static unsigned grid_for(size_t n) {
    size_t b = (n + 255) / 256;
    return b == 0 ? 1 : b > 65535u * 32u ? 65535u * 32u : (unsigned)b;
}

int fs_dense_cuda_scores(void *stream, float *scores, const void *q, const void *k, const float *lse, size_t BH,
                         size_t T, size_t D, int causal, float scale, int probs, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    unsigned g = grid_for(BH * T * T);
    if (dtype == FS_DTYPE_BF16)
        scores_kernel<FS_DTYPE_BF16><<<g, 256, 0, s>>>(scores, q, k, lse, BH, T, D, causal, scale, probs);
    else
        scores_kernel<FS_DTYPE_F32><<<g, 256, 0, s>>>(scores, q, k, lse, BH, T, D, causal, scale, probs);
    return (int)cudaGetLastError();
}

/* One (T, T) block in place: masked entries 0; with probabilities, dP ->
 * P (dP - rowsum(dP * P)) with P recomputed from q, k and the lse. A warp
 * per row. */
template <int DT>
__global__ void scores_grad_kernel(float *ds, const void *q, const void *k, const float *lse, size_t T, size_t D,
                                   int causal, float scale, int probs) {
    size_t t = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    unsigned lane = threadIdx.x % 32;
    if (t >= T) return;
    float *row = ds + t * T, dot = 0.0f;
    for (size_t j = lane; j < T; j += 32) {
        float p = 0.0f;
        if (fs_dense_visible(t, j, causal) && probs) {
            float raw = 0.0f;
            for (size_t c = 0; c < D; c++) raw += fs_load(q, t * D + c, DT) * fs_load(k, j * D + c, DT);
            p = fs_fa_prob(raw * scale, lse[t]);
        }
        if (!fs_dense_visible(t, j, causal)) row[j] = 0.0f;
        dot += p * row[j];
    }
    if (!probs) return;
    dot = fa_warp_sum(dot);
    for (size_t j = lane; j < T; j += 32) {
        if (!fs_dense_visible(t, j, causal)) continue;
        float raw = 0.0f;
        for (size_t c = 0; c < D; c++) raw += fs_load(q, t * D + c, DT) * fs_load(k, j * D + c, DT);
        row[j] = fs_fa_dscore(fs_fa_prob(raw * scale, lse[t]), row[j], dot);
    }
}

int fs_dense_cuda_scores_grad(void *stream, float *ds, const void *q, const void *k, const float *lse, size_t T,
                              size_t D, int causal, float scale, int probs, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    unsigned g = (unsigned)((T + 7) / 8);
    if (dtype == FS_DTYPE_BF16)
        scores_grad_kernel<FS_DTYPE_BF16><<<g, 256, 0, s>>>(ds, q, k, lse, T, D, causal, scale, probs);
    else
        scores_grad_kernel<FS_DTYPE_F32><<<g, 256, 0, s>>>(ds, q, k, lse, T, D, causal, scale, probs);
    return (int)cudaGetLastError();
}

/* ---- decode ---- */

template <int DT>
__global__ void append_kernel(float *kc, float *vc, const void *k, const void *v, size_t BH, size_t context, size_t D,
                              size_t pos) {
    size_t n = BH * D;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        size_t bh = e / D, d = e % D, at = (bh * context + pos) * D + d;
        kc[at] = fs_load(k, e, DT);
        vc[at] = fs_load(v, e, DT);
    }
}

int fs_dense_cuda_append(void *stream, float *kc, float *vc, const void *k, const void *v, size_t BH, size_t context,
                         size_t D, size_t pos, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    if (dtype == FS_DTYPE_BF16)
        append_kernel<FS_DTYPE_BF16><<<grid_for(BH * D), 256, 0, s>>>(kc, vc, k, v, BH, context, D, pos);
    else
        append_kernel<FS_DTYPE_F32><<<grid_for(BH * D), 256, 0, s>>>(kc, vc, k, v, BH, context, D, pos);
    return (int)cudaGetLastError();
}

/* Where key j of row (b, h) lives: contiguous caches (BH, context, D). The
 * serving engine's paged step maps j through block tables in kernels of
 * its own (dense_paged.cu). */
struct contiguous_kv {
    const float *k, *v;
    size_t context, D;
    __device__ const float *key(size_t bh, size_t j) const { return k + (bh * context + j) * D; }
    __device__ const float *value(size_t bh, size_t j) const { return v + (bh * context + j) * D; }
};

/* Block per (b, h): warp w scores keys w*32 + lane, then every 128th, with
 * its own online softmax; the warps' (max, sum, acc) merge at the end. */
template <int DT, int DMAX, class KV>
__global__ void decode_kernel(void *out, const void *q, KV kv, const int32_t *lens, size_t len, size_t H, size_t D,
                              float scale) {
    __shared__ float qs[DMAX], wm[FS_FA_DECODE_WARPS], wl[FS_FA_DECODE_WARPS], wacc[FS_FA_DECODE_WARPS][DMAX];
    size_t bh = blockIdx.x, n = lens ? (size_t)lens[bh / H] : len;
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (size_t d = threadIdx.x; d < D; d += blockDim.x) qs[d] = fs_load(q, bh * D + d, DT);
    __syncthreads();
    float m = -INFINITY, l = 0.0f, acc[DMAX / 32];
#pragma unroll
    for (int cc = 0; cc < DMAX / 32; cc++) acc[cc] = 0.0f;
    for (size_t j0 = (size_t)warp * 32; j0 < n; j0 += FS_FA_DECODE_WARPS * 32) {
        size_t j = j0 + lane;
        float s = -INFINITY;
        if (j < n) {
            const float *kr = kv.key(bh, j);
            float raw = 0.0f;
            for (size_t c = 0; c < D; c++) raw += qs[c] * kr[c];
            s = raw * scale;
        }
        float mnew = fmaxf(m, fa_warp_max(s));
        float alpha = fs_fa_rescale(m, mnew), p = fs_fa_prob(s, mnew);
        l = l * alpha + fa_warp_sum(p);
        size_t tile = n - j0 < 32 ? n - j0 : 32;
#pragma unroll
        for (int cc = 0; cc < DMAX / 32; cc++) {
            size_t d = lane + 32 * cc;
            float a = acc[cc] * alpha;
            for (size_t jj = 0; jj < tile; jj++) {
                float pj = __shfl_sync(0xffffffffu, p, (int)jj);
                if (d < D) a += pj * kv.value(bh, j0 + jj)[d];
            }
            acc[cc] = a;
        }
        m = mnew;
    }
    if (lane == 0) wm[warp] = m, wl[warp] = l;
#pragma unroll
    for (int cc = 0; cc < DMAX / 32; cc++)
        if (lane + 32 * cc < DMAX) wacc[warp][lane + 32 * cc] = acc[cc];
    __syncthreads();
    if (warp != 0) return;
    float M = wm[0], Lsum = wl[0];
    for (unsigned w = 1; w < FS_FA_DECODE_WARPS; w++) {
        float a, b, mn = fs_fa_merge_scales(M, wm[w], &a, &b);
        if (mn == -INFINITY) continue;
        for (size_t d = lane; d < D; d += 32) wacc[0][d] = wacc[0][d] * a + wacc[w][d] * b;
        Lsum = Lsum * a + wl[w] * b;
        M = mn;
    }
    for (size_t d = lane; d < D; d += 32) fs_store(out, bh * D + d, DT, Lsum > 0.0f ? wacc[0][d] / Lsum : 0.0f);
}

int fs_dense_cuda_decode(void *stream, void *out, const void *q, const float *kc, const float *vc, const int32_t *lens,
                         size_t len, size_t B, size_t H, size_t context, size_t D, float scale, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    contiguous_kv kv = {kc, vc, context, D};
    unsigned g = (unsigned)(B * H);
    if (D > 128) return (int)cudaErrorInvalidValue;
    if (dtype == FS_DTYPE_BF16) {
        if (D <= 64) decode_kernel<FS_DTYPE_BF16, 64><<<g, FS_FA_DECODE_WARPS * 32, 0, s>>>(out, q, kv, lens, len, H, D, scale);
        else decode_kernel<FS_DTYPE_BF16, 128><<<g, FS_FA_DECODE_WARPS * 32, 0, s>>>(out, q, kv, lens, len, H, D, scale);
    } else {
        if (D <= 64) decode_kernel<FS_DTYPE_F32, 64><<<g, FS_FA_DECODE_WARPS * 32, 0, s>>>(out, q, kv, lens, len, H, D, scale);
        else decode_kernel<FS_DTYPE_F32, 128><<<g, FS_FA_DECODE_WARPS * 32, 0, s>>>(out, q, kv, lens, len, H, D, scale);
    }
    return (int)cudaGetLastError();
}
