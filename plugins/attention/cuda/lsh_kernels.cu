/* lsh_kernels.cu — Reformer LSH attention on CUDA (f32).
 *
 * Hashing: the rounds' projections are matmuls (the host's sgemm, in
 * lsh_cuda.c), buckets a thread per row (fs_lsh_bucket), and each (b, h,
 * round) is sorted by (bucket, position) with CUB's segmented radix sort
 * (CCCL) over the keys bucket * T + position. Attention: the engine
 * (flash.cuh) over one problem per (b, h, round), queries and keys the
 * round's sorted slots, a query tile's keys the contiguous slots of the
 * chunks it looks at, each key counted in the first round that shows it to
 * the query (lsh_math.h); the rounds then merge by log-sum-exp. Backward
 * runs the rounds into buffers of their own, adds them, and takes the keys'
 * gradient back through the normalisation to q. */
#include <cub/device/device_segmented_radix_sort.cuh>

#include "attention_cuda.h"
#include "flash.cuh"
#include "lsh_math.h"

#define T256 256

static unsigned blocks_for(size_t n) {
    size_t b = (n + T256 - 1) / T256;
    return b == 0 ? 1 : b > 65535u * 32u ? 65535u * 32u : (unsigned)b;
}

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* A warp per row: kn = q / sqrt(|q|^2 + eps). */
__global__ void normalize_kernel(float *kn, const float *q, size_t rows, size_t D) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    unsigned lane = threadIdx.x % 32;
    if (row >= rows) return;
    float s = 0.0f;
    for (size_t d = lane; d < D; d += 32) s += q[row * D + d] * q[row * D + d];
    float inv = fs_lsh_inv_norm(fa_warp_sum(s));
    for (size_t d = lane; d < D; d += 32) kn[row * D + d] = q[row * D + d] * inv;
}

int fs_lsh_cuda_normalize(void *stream, const fs_lsh_cuda_args *a) {
    size_t rows = a->B * a->H * a->T;
    normalize_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, (cudaStream_t)stream>>>(a->kn, a->q, rows, a->D);
    return (int)cudaGetLastError();
}

/* bucket[r] of every row, and its sort key bucket * T + t where round r's
 * order will be: the sort reads the keys from there and writes the order. */
__global__ void buckets_kernel(char *saved, size_t per_bh, size_t off_bucket, size_t off_order, const float *proj,
                               size_t rows, size_t T, size_t half, size_t r) {
    GRID_STRIDE(row, rows) {
        size_t bh = row / T, t = row % T;
        int32_t b = fs_lsh_bucket(proj + row * half, half);
        ((int32_t *)(saved + bh * per_bh + off_bucket))[r * T + t] = b;
        /* the order array holds the keys until the sort reads them */
        ((uint32_t *)(saved + bh * per_bh + off_order))[r * T + t] = (uint32_t)b * (uint32_t)T + (uint32_t)t;
    }
}

int fs_lsh_cuda_buckets(void *stream, const fs_lsh_cuda_args *a, const float *proj, size_t r) {
    size_t rows = a->B * a->H * a->T;
    buckets_kernel<<<blocks_for(rows), T256, 0, (cudaStream_t)stream>>>(a->saved, a->per_bh, a->off_bucket, a->off_order,
                                                                       proj, rows, a->T, a->n_buckets / 2, r);
    return (int)cudaGetLastError();
}

/* Segments are the (b, h) blocks' rounds: segment s = bh * nh + r starts at
 * byte bh * per_bh + off + r * T * 4, i.e. element bh * per_bh / 4 + off / 4 + r * T. */
__global__ void segment_offsets_kernel(int *begin, size_t n_seg, size_t nh, size_t T, size_t per_bh_ints, size_t off_ints) {
    GRID_STRIDE(s, n_seg) begin[s] = (int)((s / nh) * per_bh_ints + off_ints + (s % nh) * T);
}

/* order[slot] = the position the sorted key holds; where[position] = slot. */
__global__ void order_where_kernel(char *saved, size_t per_bh, size_t off_order, size_t off_where, const uint32_t *sorted,
                                   const int *begin, size_t n_seg, size_t nh, size_t T) {
    GRID_STRIDE(e, n_seg * T) {
        size_t seg = e / T, slot = e % T, bh = seg / nh, r = seg % nh;
        uint32_t t = sorted[(size_t)begin[seg] + slot] % (uint32_t)T;
        ((int32_t *)(saved + bh * per_bh + off_order))[r * T + slot] = (int32_t)t;
        ((int32_t *)(saved + bh * per_bh + off_where))[r * T + t] = (int32_t)slot;
    }
}

int fs_lsh_cuda_sort(void *stream, const fs_lsh_cuda_args *a) {
    cudaStream_t s = (cudaStream_t)stream;
    size_t n_seg = a->B * a->H * a->nh, per = a->per_bh / 4, total = a->B * a->H * per;
    int bits = 1;
    while (bits < 32 && ((uint64_t)1 << bits) < (uint64_t)a->n_buckets * a->T) bits++;
    /* sorted into a copy of the whole saved block (same offsets), so the
     * segments can be read where they are */
    const uint32_t *in = (const uint32_t *)a->saved;
    size_t temp_bytes = 0;
    int *off = NULL;
    cudaError_t e = cub::DeviceSegmentedRadixSort::SortKeys(NULL, temp_bytes, in, (uint32_t *)NULL, (int)total,
                                                            (int)n_seg, off, off, 0, bits, s);
    char *buf = NULL;
    size_t head = ((n_seg * 2 * sizeof(int) + 255) & ~(size_t)255) + ((total * sizeof(uint32_t) + 255) & ~(size_t)255);
    if (!e) e = cudaMallocAsync((void **)&buf, head + temp_bytes, s);
    if (e) return (int)e;
    int *begin = (int *)buf, *end = begin + n_seg;
    uint32_t *sorted = (uint32_t *)(buf + ((n_seg * 2 * sizeof(int) + 255) & ~(size_t)255));
    segment_offsets_kernel<<<blocks_for(n_seg), T256, 0, s>>>(begin, n_seg, a->nh, a->T, per, a->off_order / 4);
    segment_offsets_kernel<<<blocks_for(n_seg), T256, 0, s>>>(end, n_seg, a->nh, a->T, per, a->off_order / 4 + a->T);
    e = cub::DeviceSegmentedRadixSort::SortKeys(buf + head, temp_bytes, in, sorted, (int)total, (int)n_seg, begin, end,
                                                0, bits, s);
    if (!e) {
        order_where_kernel<<<blocks_for(n_seg * a->T), T256, 0, s>>>(a->saved, a->per_bh, a->off_order, a->off_where,
                                                                     sorted, begin, n_seg, a->nh, a->T);
        e = cudaGetLastError();
    }
    cudaError_t f = cudaFreeAsync(buf, s);
    return (int)(e ? e : f);
}

/* One problem per (b, h, round): queries and keys are the round's slots. */
struct lsh_policy {
    const char *saved;
    size_t per_bh, off_order, off_where, off_lse;
    const float *q_, *kn_, *v_, *dout_, *delta_;
    float *out_r, *lse_r, *dq_r, *dkn_r, *dv_r;
    size_t T, D, nh, chunk, back, ahead;
    float scale;
    int causal, forward;
    bool accumulate_dq, accumulate_dkdv;
    size_t bh, r;
    const int32_t *order, *where;

    __device__ void begin(unsigned problem) {
        bh = problem / nh, r = problem % nh;
        order = (const int32_t *)(saved + bh * per_bh + off_order) + r * T;
        where = (const int32_t *)(saved + bh * per_bh + off_where);
    }
    __device__ size_t pos(size_t u) const { return (size_t)order[u]; }
    __device__ size_t n_queries() const { return T; }
    __device__ size_t n_keys() const { return T; }
    __device__ int n_segments() const { return 1; }
    __device__ void key_range(int, size_t u0, size_t u1, size_t *j0, size_t *j1) const {
        size_t lo, hi;
        fs_lsh_window(u0 / chunk, back, ahead, chunk, T, j0, &hi);
        fs_lsh_window((u1 - 1) / chunk, back, ahead, chunk, T, &lo, j1);
    }
    __device__ void query_range(size_t k0, size_t k1, size_t *i0, size_t *i1) const {
        size_t lo, hi; /* the chunks that look at these keys */
        fs_lsh_window(k0 / chunk, ahead, back, chunk, T, i0, &hi);
        fs_lsh_window((k1 - 1) / chunk, ahead, back, chunk, T, &lo, i1);
    }
    __device__ bool active(size_t) const { return true; }
    __device__ size_t row(size_t p) const { return (bh * T + p) * D; }
    __device__ size_t round_row(size_t p) const { return ((bh * nh + r) * T + p) * D; }
    __device__ const void *q(size_t u) const { return q_ + row(pos(u)); }
    __device__ const void *k(int, size_t u) const { return kn_ + row(pos(u)); }
    __device__ const void *v(int, size_t u) const { return v_ + row(pos(u)); }
    __device__ const void *dout(size_t u) const { return dout_ + row(pos(u)); }
    __device__ void *out(size_t u) const { return out_r + round_row(pos(u)); }
    __device__ void *dq(size_t u) const { return dq_r + round_row(pos(u)); }
    __device__ void *dk(size_t u) const { return dkn_r + round_row(pos(u)); }
    __device__ void *dv(size_t u) const { return dv_r + round_row(pos(u)); }
    __device__ float *lse(size_t u) const {
        return forward ? lse_r + (bh * nh + r) * T + pos(u) : (float *)(saved + bh * per_bh + off_lse) + pos(u);
    }
    __device__ float delta(size_t u) const { return delta_[bh * T + pos(u)]; }
    __device__ float score(int, size_t u, size_t u2, float raw, bool *constant) const {
        size_t pi = pos(u), pj = pos(u2);
        *constant = pi == pj;
        if (!fs_lsh_sees(u / chunk, u2 / chunk, back, ahead) || (causal && pj > pi) ||
            fs_lsh_first_round(where, nh, T, chunk, back, ahead, pi, pj) != r)
            return -INFINITY;
        return fs_lsh_score(raw, scale, pi == pj);
    }
};

static lsh_policy policy(const fs_lsh_cuda_args *a, int forward) {
    lsh_policy p = {};
    p.saved = a->saved, p.per_bh = a->per_bh, p.off_order = a->off_order, p.off_where = a->off_where;
    p.off_lse = a->off_lse;
    p.q_ = a->q, p.kn_ = a->kn, p.v_ = a->v, p.dout_ = a->dout, p.delta_ = a->delta;
    p.out_r = a->out_r, p.lse_r = a->lse_r, p.dq_r = a->dq_r, p.dkn_r = a->dkn_r, p.dv_r = a->dv_r;
    p.T = a->T, p.D = a->D, p.nh = a->nh, p.chunk = a->chunk, p.back = a->back, p.ahead = a->ahead;
    p.scale = a->scale, p.causal = a->causal, p.forward = forward;
    return p;
}

/* out = sum over rounds of e^(lse_r - LSE) out_r; the saved lse = LSE. */
__global__ void merge_kernel(float *out, char *saved, size_t per_bh, size_t off_lse, const float *out_r,
                             const float *lse_r, size_t BH, size_t nh, size_t T, size_t D) {
    GRID_STRIDE(e, BH * T * D) {
        size_t d = e % D, t = (e / D) % T, bh = e / (D * T);
        const float *l = lse_r + bh * nh * T + t;
        float L = fs_lsh_combine_lse(l, nh, T), s = 0.0f;
        for (size_t r = 0; r < nh; r++) s += expf(l[r * T] - L) * out_r[((bh * nh + r) * T + t) * D + d];
        out[e] = s;
        if (d == 0) ((float *)(saved + bh * per_bh + off_lse))[t] = L;
    }
}

int fs_lsh_cuda_forward(void *stream, const fs_lsh_cuda_args *a) {
    cudaStream_t s = (cudaStream_t)stream;
    size_t BH = a->B * a->H;
    lsh_policy p = policy(a, 1);
    cudaError_t e = fa_run_f32(FA_FORWARD, p, dim3((unsigned)((a->T + FS_FA_BR - 1) / FS_FA_BR), (unsigned)(BH * a->nh)), s);
    if (e) return (int)e;
    merge_kernel<<<blocks_for(BH * a->T * a->D), T256, 0, s>>>(a->out_w, a->saved, a->per_bh, a->off_lse, a->out_r,
                                                              a->lse_r, BH, a->nh, a->T, a->D);
    return (int)cudaGetLastError();
}

/* A warp per row: the rounds added; dq += the keys' gradient through
 * k = q inv: inv dk - inv^3 q (q . dk). */
__global__ void backward_merge_kernel(float *dq, float *dv, const float *q, const float *dq_r, const float *dkn_r,
                                      const float *dv_r, size_t rows, size_t nh, size_t T, size_t D) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    unsigned lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t bh = row / T, t = row % T;
    float ss = 0.0f, qd = 0.0f;
    for (size_t d = lane; d < D; d += 32) {
        float gk = 0.0f;
        for (size_t r = 0; r < nh; r++) gk += dkn_r[((bh * nh + r) * T + t) * D + d];
        ss += q[row * D + d] * q[row * D + d];
        qd += q[row * D + d] * gk;
    }
    ss = fa_warp_sum(ss), qd = fa_warp_sum(qd);
    float inv = fs_lsh_inv_norm(ss);
    for (size_t d = lane; d < D; d += 32) {
        float gq = 0.0f, gk = 0.0f, gv = 0.0f;
        for (size_t r = 0; r < nh; r++) {
            size_t at = ((bh * nh + r) * T + t) * D + d;
            gq += dq_r[at], gk += dkn_r[at], gv += dv_r[at];
        }
        dq[row * D + d] = gq + fs_lsh_normalize_backward(q[row * D + d], gk, inv, qd);
        dv[row * D + d] = gv;
    }
}

int fs_lsh_cuda_backward(void *stream, const fs_lsh_cuda_args *a) {
    cudaStream_t s = (cudaStream_t)stream;
    size_t BH = a->B * a->H, rows = BH * a->T;
    cudaError_t e = (cudaError_t)fs_att_delta(s, a->delta, a->dout, a->out, rows, a->D, FS_DTYPE_F32);
    lsh_policy p = policy(a, 0);
    dim3 problems((unsigned)((a->T + FS_FA_BR - 1) / FS_FA_BR), (unsigned)(BH * a->nh));
    if (!e) e = fa_run_f32(FA_DQ, p, problems, s);
    if (!e) e = fa_run_f32(FA_DKDV, p, dim3((unsigned)((a->T + FS_FA_BC - 1) / FS_FA_BC), problems.y), s);
    if (e) return (int)e;
    backward_merge_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, s>>>(a->dq, a->dv, a->q, a->dq_r, a->dkn_r, a->dv_r,
                                                                     rows, a->nh, a->T, a->D);
    e = cudaGetLastError();
    if (!e && a->dk) e = cudaMemsetAsync(a->dk, 0, rows * a->D * sizeof(float), s);
    return (int)e;
}
