/* ops_rows.cu — kernels that reduce along rows or columns: layer norm
 * (a warp per row), the column sums of its parameter gradients and of a
 * bias gradient (per-chunk partials, then chunks added in order: no atomics,
 * the same bits every run), cross-entropy and softmax (a block per row of
 * the vocabulary), the sum of squares of the global norm. */
#include "ops_common.cuh"

#define ROWS_PER_BLOCK (FS_THREADS / FS_WARP) /* warps: one row each */
#define COL_TILE 32                            /* columns per block of a column reduction */
#define COL_ROWS FS_COL_ROWS                   /* threads down a column */

/* ---- layer norm ---- */

template <int DT>
__global__ void layernorm_forward_kernel(void *out, float *mean, float *rstd, const void *inp, const float *w,
                                         const float *b, size_t N, size_t C) {
    size_t row = (size_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / FS_WARP;
    unsigned lane = threadIdx.x % FS_WARP;
    if (row >= N) return;
    const void *x = (const char *)inp + row * C * (DT == FS_DTYPE_BF16 ? 2 : 4);
    void *o = (char *)out + row * C * (DT == FS_DTYPE_BF16 ? 2 : 4);
    float m = fs_warp_reduce(fs_lane_sum(x, DT, C, lane, FS_WARP), fs_op_sum()) / (float)C;
    float var = fs_warp_reduce(fs_lane_sqdev(x, DT, C, m, lane, FS_WARP), fs_op_sum()) / (float)C;
    float s = fs_ln_rstd(var);
    for (size_t i = lane; i < C; i += FS_WARP) fs_store(o, i, DT, fs_ln_forward(fs_load(x, i, DT), m, s, w[i], b[i]));
    if (lane == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = s;
    }
}

int fs_cuda_layernorm_forward(void *stream, void *out, float *mean, float *rstd, const void *inp, const float *weight,
                              const float *bias, size_t N, size_t C, int dtype) {
    unsigned blocks = (unsigned)((N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    if (N == 0) return 0;
    FS_LAUNCH_DT(dtype, layernorm_forward_kernel, blocks, FS_THREADS, 0, stream, out, mean, rstd, inp, weight, bias, N,
                 C);
}

template <int DT>
__global__ void layernorm_backward_kernel(void *dinp, const void *dout, const void *inp, const float *w,
                                          const float *mean, const float *rstd, size_t N, size_t C) {
    size_t row = (size_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / FS_WARP;
    unsigned lane = threadIdx.x % FS_WARP;
    if (row >= N) return;
    size_t off = row * C * (DT == FS_DTYPE_BF16 ? 2 : 4);
    const void *x = (const char *)inp + off, *dy = (const char *)dout + off;
    void *dx = (char *)dinp + off;
    float m = mean[row], s = rstd[row], s1, s2;
    fs_ln_backward_lane(dy, x, DT, w, C, m, s, lane, FS_WARP, &s1, &s2);
    float mean_dnorm = fs_warp_reduce(s1, fs_op_sum()) / (float)C;
    float mean_dnorm_norm = fs_warp_reduce(s2, fs_op_sum()) / (float)C;
    for (size_t i = lane; i < C; i += FS_WARP)
        fs_store(dx, i, DT,
                 fs_ln_backward_dx(fs_load(dy, i, DT), fs_load(x, i, DT), w[i], m, s, mean_dnorm, mean_dnorm_norm));
}

/* Column sums in two steps. Step 1: block (x, chunk) sums columns
 * [32x, 32x + 32) over its chunk of rows, 8 threads down each column, the
 * 8 partials added in order; partial[chunk][c]. For layer norm, a = the
 * normalised input times dy (dweight) and b = dy (dbias); for a bias only b. */
template <int DT>
__global__ void column_partials_kernel(float *pa, float *pb, const void *dy, size_t ldy, const void *x,
                                       const float *mean, const float *rstd, size_t N, size_t C, size_t rows_per_chunk) {
    __shared__ float sa[COL_ROWS][COL_TILE], sb[COL_ROWS][COL_TILE];
    size_t c = (size_t)blockIdx.x * COL_TILE + threadIdx.x, r0 = (size_t)blockIdx.y * rows_per_chunk;
    size_t r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
    float a = 0.0f, b = 0.0f;
    if (c < C)
        for (size_t r = r0 + threadIdx.y; r < r1; r += COL_ROWS) {
            float g = fs_load(dy, r * ldy + c, DT);
            if (x) a += fs_ln_dweight(fs_load(x, r * C + c, DT), mean[r], rstd[r], g);
            b += g;
        }
    sa[threadIdx.y][threadIdx.x] = a;
    sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int k = 1; k < COL_ROWS; k++) a += sa[k][threadIdx.x], b += sb[k][threadIdx.x];
        if (pa) pa[blockIdx.y * C + c] = a;
        pb[blockIdx.y * C + c] = b;
    }
}

/* Step 2: out[c] += the chunks' partials, in chunk order. */
__global__ void column_finish_kernel(float *out_a, float *out_b, const float *pa, const float *pb, size_t C,
                                     size_t chunks) {
    FS_GRID_STRIDE(c, C) {
        float a = 0.0f, b = 0.0f;
        for (size_t k = 0; k < chunks; k++) {
            if (pa) a += pa[k * C + c];
            b += pb[k * C + c];
        }
        if (out_a) out_a[c] += a;
        out_b[c] += b;
    }
}

/* The two steps with their partials from the stream's pool. */
static int column_sums(cudaStream_t s, float *out_a, float *out_b, const void *dy, size_t ldy, const void *x,
                       const float *mean, const float *rstd, size_t N, size_t C, int dtype) {
    if (N == 0 || C == 0) return 0;
    size_t chunks, rows;
    fs_column_chunks(N, &chunks, &rows);
    float *part = NULL;
    size_t n_arrays = out_a ? 2 : 1;
    cudaError_t e = cudaMallocAsync((void **)&part, n_arrays * chunks * C * sizeof(float), s);
    if (e) return (int)e;
    float *pa = out_a ? part : NULL, *pb = part + (out_a ? chunks * C : 0);
    dim3 grid((unsigned)((C + COL_TILE - 1) / COL_TILE), (unsigned)chunks), block(COL_TILE, COL_ROWS);
    if (dtype == FS_DTYPE_BF16)
        column_partials_kernel<FS_DTYPE_BF16><<<grid, block, 0, s>>>(pa, pb, dy, ldy, x, mean, rstd, N, C, rows);
    else
        column_partials_kernel<FS_DTYPE_F32><<<grid, block, 0, s>>>(pa, pb, dy, ldy, x, mean, rstd, N, C, rows);
    column_finish_kernel<<<fs_blocks(C, FS_THREADS), FS_THREADS, 0, s>>>(out_a, out_b, pa, pb, C, chunks);
    e = cudaGetLastError();
    cudaError_t f = cudaFreeAsync(part, s);
    return (int)(e ? e : f);
}

int fs_cuda_layernorm_backward(void *stream, void *dinp, float *dweight, float *dbias, const void *dout,
                               const void *inp, const float *weight, const float *mean, const float *rstd, size_t N,
                               size_t C, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    if (N == 0) return 0;
    unsigned blocks = (unsigned)((N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    if (dtype == FS_DTYPE_BF16)
        layernorm_backward_kernel<FS_DTYPE_BF16><<<blocks, FS_THREADS, 0, s>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    else
        layernorm_backward_kernel<FS_DTYPE_F32><<<blocks, FS_THREADS, 0, s>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    cudaError_t e = cudaGetLastError();
    if (e) return (int)e;
    return column_sums(s, dweight, dbias, dout, C, inp, mean, rstd, N, C, dtype);
}

int fs_cuda_bias_backward(void *stream, float *dbias, const void *dout, size_t N, size_t OC, size_t ldd, int dtype) {
    return column_sums((cudaStream_t)stream, NULL, dbias, dout, ldd, NULL, NULL, NULL, N, OC, dtype);
}

/* ---- a block per row of the vocabulary ---- */

/* Chunk c of a row, 16 bytes (CE_W(DT) elements) in one load, as floats. */
#define CE_W(DT) ((DT) == FS_DTYPE_BF16 ? 8 : 4)
template <int DT>
__device__ __forceinline__ void load_chunk(const void *row, size_t c, float *v) {
    uint4 u = ((const uint4 *)row)[c];
    if (DT == FS_DTYPE_BF16)
        for (int i = 0; i < 8; i++) v[i] = fs_bf16_to_f32(((const fs_bf16 *)&u)[i]);
    else
        for (int i = 0; i < 4; i++) v[i] = ((const float *)&u)[i];
}

template <int DT>
__device__ __forceinline__ void store_chunk(void *row, size_t c, const float *v) {
    uint4 u;
    if (DT == FS_DTYPE_BF16)
        for (int i = 0; i < 8; i++) ((fs_bf16 *)&u)[i] = fs_bf16_from_f32(v[i]);
    else
        for (int i = 0; i < 4; i++) ((float *)&u)[i] = v[i];
    ((uint4 *)row)[c] = u;
}

/* Row loss into row_loss; dlogits (may be the logits: each element is
 * read, then written by the same thread, and the target's logit is read
 * before any write). Two passes over the row, not three: the max and the
 * sum of exponentials together (online softmax, fs_lane_online's order),
 * then the gradient; 16 bytes a load and a store when `chunked` (rows
 * 16-byte aligned: the pointers and ld allow it), else element by
 * element. */
template <int DT>
__global__ void crossentropy_kernel(float *row_loss, void *dlogits, const void *logits, const int32_t *targets,
                                    size_t V, size_t ld, float scale, int chunked) {
    __shared__ float scratch[FS_WARP + 1];
    const size_t W = chunked ? CE_W(DT) : 1, full = V / W;
    size_t row = blockIdx.x, es = DT == FS_DTYPE_BF16 ? 2 : 4;
    const void *z = (const char *)logits + row * ld * es;
    int32_t y = targets[row];
    float zy = fs_load(z, (size_t)y, DT), m = -INFINITY, s = 0.0f, v[8];
    if (chunked) {
        for (size_t c = threadIdx.x; c < full; c += blockDim.x) {
            load_chunk<DT>(z, c, v);
            for (size_t i = 0; i < W; i++) fs_online_add(&m, &s, v[i]);
        }
        for (size_t i = full * W + threadIdx.x; i < V; i += blockDim.x) fs_online_add(&m, &s, fs_load(z, i, DT));
    } else {
        fs_lane_online(z, DT, V, 1, threadIdx.x, blockDim.x, &m, &s);
    }
    float mx = fs_block_reduce(m, fs_op_max(), -INFINITY, scratch);
    float sum = fs_block_reduce(fs_online_rescale(m, s, mx), fs_op_sum(), 0.0f, scratch);
    if (threadIdx.x == 0) row_loss[row] = fs_ce_loss(mx, sum, zy);
    if (!dlogits) return;
    void *d = (char *)dlogits + row * ld * es;
    float inv = 1.0f / sum;
    for (size_t c = threadIdx.x; c < full && chunked; c += blockDim.x) {
        load_chunk<DT>(z, c, v);
        for (size_t i = 0; i < W; i++) v[i] = fs_ce_dlogit(v[i], mx, inv, c * W + i == (size_t)y, scale);
        store_chunk<DT>(d, c, v);
    }
    for (size_t i = (chunked ? full * W : 0) + threadIdx.x; i < V; i += blockDim.x)
        fs_store(d, i, DT, fs_ce_dlogit(fs_load(z, i, DT), mx, inv, i == (size_t)y, scale));
    for (size_t i = V + threadIdx.x; i < ld; i += blockDim.x) fs_store(d, i, DT, 0.0f); /* the pad (backend.h) */
}

/* *out = the sum of n values in double, one block, in a fixed order. */
__global__ void sum_rows_kernel(double *out, const float *x, size_t n, int accumulate) {
    __shared__ double scratch[FS_WARP + 1];
    double s = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i];
    s = fs_block_reduce(s, fs_op_sum(), 0.0, scratch);
    if (threadIdx.x == 0) *out = accumulate ? *out + s : s;
}

int fs_cuda_crossentropy(void *stream, double *loss, void *dlogits, const void *logits, const int32_t *targets,
                         size_t N, size_t V, size_t ld, float scale, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    if (N == 0) return (int)cudaMemsetAsync(loss, 0, sizeof(double), s);
    float *rows = NULL;
    cudaError_t e = cudaMallocAsync((void **)&rows, N * sizeof(float), s);
    if (e) return (int)e;
    size_t es = dtype == FS_DTYPE_BF16 ? 2 : 4;
    int chunked = (ld * es) % 16 == 0 && (uintptr_t)logits % 16 == 0 && (uintptr_t)dlogits % 16 == 0;
    if (dtype == FS_DTYPE_BF16)
        crossentropy_kernel<FS_DTYPE_BF16><<<(unsigned)N, FS_THREADS, 0, s>>>(rows, dlogits, logits, targets, V, ld,
                                                                              scale, chunked);
    else
        crossentropy_kernel<FS_DTYPE_F32><<<(unsigned)N, FS_THREADS, 0, s>>>(rows, dlogits, logits, targets, V, ld,
                                                                             scale, chunked);
    sum_rows_kernel<<<1, 1024, 0, s>>>(loss, rows, N, 0);
    e = cudaGetLastError();
    cudaError_t f = cudaFreeAsync(rows, s);
    return (int)(e ? e : f);
}

template <int DT>
__global__ void softmax_kernel(float *probs, const void *logits, size_t V, float inv_t) {
    __shared__ float scratch[FS_WARP + 1];
    size_t row = blockIdx.x;
    const void *z = (const char *)logits + row * V * (DT == FS_DTYPE_BF16 ? 2 : 4);
    float mx = fs_block_reduce(fs_lane_max(z, DT, V, threadIdx.x, blockDim.x), fs_op_max(), -INFINITY, scratch);
    float sum = fs_block_reduce(fs_lane_sumexp(z, DT, V, mx, inv_t, threadIdx.x, blockDim.x), fs_op_sum(), 0.0f,
                                scratch);
    float *p = probs + row * V;
    for (size_t i = threadIdx.x; i < V; i += blockDim.x) p[i] = expf((fs_load(z, i, DT) - mx) * inv_t) / sum;
}

int fs_cuda_softmax_forward(void *stream, float *probs, const void *logits, size_t N, size_t V, float temperature,
                            int dtype) {
    if (N == 0) return 0;
    FS_LAUNCH_DT(dtype, softmax_kernel, (unsigned)N, FS_THREADS, 0, stream, probs, logits, V, 1.0f / temperature);
}

/* ---- the sum of squares: per-block partials, then one block in order ---- */

#define SUMSQ_BLOCKS 512

__global__ void sumsq_partials_kernel(double *part, const float *x, size_t n) {
    __shared__ double scratch[FS_WARP + 1];
    double s = 0.0;
    FS_GRID_STRIDE(i, n) s += (double)x[i] * (double)x[i];
    s = fs_block_reduce(s, fs_op_sum(), 0.0, scratch);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sumsq_finish_kernel(double *out, const double *part, size_t n) {
    __shared__ double scratch[FS_WARP + 1];
    double s = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += part[i];
    s = fs_block_reduce(s, fs_op_sum(), 0.0, scratch);
    if (threadIdx.x == 0) *out += s;
}

int fs_cuda_sumsq(void *stream, double *out, const float *x, size_t n) {
    cudaStream_t s = (cudaStream_t)stream;
    double *part = NULL;
    cudaError_t e = cudaMallocAsync((void **)&part, SUMSQ_BLOCKS * sizeof(double), s);
    if (e) return (int)e;
    sumsq_partials_kernel<<<SUMSQ_BLOCKS, FS_THREADS, 0, s>>>(part, x, n);
    sumsq_finish_kernel<<<1, FS_THREADS, 0, s>>>(out, part, SUMSQ_BLOCKS);
    e = cudaGetLastError();
    cudaError_t f = cudaFreeAsync(part, s);
    return (int)(e ? e : f);
}
