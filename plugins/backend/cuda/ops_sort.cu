/* ops_sort.cu — the ops that sort with CUB (CCCL): the token embedding's
 * gradient, deterministic (rows sorted by token, each token's rows summed
 * in their order by one block: no atomics), and sampling (the rows'
 * probabilities sorted descending, ties by id, then each row's choice by
 * kernels_math.h's fs_sample_keep and fs_sample_pick, exactly the CPU's). */
#include <limits.h>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "ops_common.cuh"

/* ---- the embedding's gradient ---- */

__global__ void iota_kernel(int32_t *x, size_t n) {
    FS_GRID_STRIDE(i, n) x[i] = (int32_t)i;
}

/* Block i handles sorted position i when a run of equal tokens starts
 * there: dwte[token] += the run's rows of dout, in row order. */
template <int DT>
__global__ void embedding_runs_kernel(float *dwte, const void *dout, const int32_t *tok, const int32_t *row, size_t n,
                                      size_t C) {
    size_t i = blockIdx.x;
    if (i >= n || !fs_run_start(tok, i)) return;
    size_t end = i + 1;
    while (end < n && tok[end] == tok[i]) end++;
    float *dst = dwte + (size_t)tok[i] * C;
    for (size_t c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0.0f;
        for (size_t j = i; j < end; j++) s += fs_load(dout, (size_t)row[j] * C + c, DT);
        dst[c] += s;
    }
}

int fs_cuda_embedding_backward(void *stream, float *dwte, const void *dout, const int32_t *inp, size_t BT, size_t C,
                               int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    if (BT == 0) return 0;
    int32_t *buf = NULL;
    void *temp = NULL;
    size_t temp_bytes = 0;
    if (BT > (size_t)INT_MAX) return (int)cudaErrorInvalidValue; /* CUB's sort counts in int */
    int n = (int)BT;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                                    (const int32_t *)NULL, (int32_t *)NULL, n, 0, 32, s);
    if (!e) e = cudaMallocAsync((void **)&buf, 3 * BT * sizeof(int32_t) + temp_bytes, s);
    if (e) return (int)e;
    int32_t *rows = buf, *tok_sorted = buf + BT, *rows_sorted = buf + 2 * BT;
    temp = buf + 3 * BT;
    iota_kernel<<<fs_blocks(BT, FS_THREADS), FS_THREADS, 0, s>>>(rows, BT);
    /* stable: a token's rows stay in row order */
    e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, inp, tok_sorted, rows, rows_sorted, n, 0, 32, s);
    if (!e) {
        if (dtype == FS_DTYPE_BF16)
            embedding_runs_kernel<FS_DTYPE_BF16><<<(unsigned)BT, 128, 0, s>>>(dwte, dout, tok_sorted, rows_sorted, BT, C);
        else
            embedding_runs_kernel<FS_DTYPE_F32><<<(unsigned)BT, 128, 0, s>>>(dwte, dout, tok_sorted, rows_sorted, BT, C);
        e = cudaGetLastError();
    }
    cudaError_t f = cudaFreeAsync(buf, s);
    return (int)(e ? e : f);
}

/* ---- sampling ---- */

/* Greedy rows: the first maximum. */
template <int DT>
__global__ void argmax_kernel(int32_t *tokens, const void *logits, size_t V, size_t ld,
                              const fs_sample_params *params) {
    __shared__ float sv[FS_THREADS];
    __shared__ size_t si[FS_THREADS];
    size_t row = blockIdx.x;
    if (params[row].temperature > 0.0f) return;
    const void *z = (const char *)logits + row * ld * (DT == FS_DTYPE_BF16 ? 2 : 4);
    float best;
    size_t arg;
    fs_lane_argmax(z, DT, V, threadIdx.x, blockDim.x, &best, &arg);
    sv[threadIdx.x] = best;
    si[threadIdx.x] = arg;
    __syncthreads();
    /* max with the smallest index among equals: any order gives one answer */
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            float b = sv[threadIdx.x];
            size_t a = si[threadIdx.x];
            if (si[threadIdx.x + half] < V) fs_argmax_combine(&b, &a, sv[threadIdx.x + half], si[threadIdx.x + half]);
            sv[threadIdx.x] = b;
            si[threadIdx.x] = a;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) tokens[row] = (int32_t)si[0];
}

/* Random rows: keys of e^((z - mx) / T) / sum, the sampler's probabilities. */
template <int DT>
__global__ void sample_keys_kernel(uint64_t *keys, const void *logits, size_t V, size_t ld,
                                   const fs_sample_params *params) {
    __shared__ float scratch[FS_WARP + 1];
    __shared__ double dscratch[FS_WARP + 1];
    size_t row = blockIdx.x;
    float temp = params[row].temperature;
    uint64_t *k = keys + row * V;
    if (temp <= 0.0f) { /* greedy: any keys, never read */
        for (size_t i = threadIdx.x; i < V; i += blockDim.x) k[i] = i;
        return;
    }
    const void *z = (const char *)logits + row * ld * (DT == FS_DTYPE_BF16 ? 2 : 4);
    float mx = fs_block_reduce(fs_lane_max(z, DT, V, threadIdx.x, blockDim.x), fs_op_max(), -INFINITY, scratch);
    double s = 0.0;
    for (size_t i = threadIdx.x; i < V; i += blockDim.x)
        s += (double)expf((float)((double)(fs_load(z, i, DT) - mx) / (double)temp));
    double sum = fs_block_reduce(s, fs_op_sum(), 0.0, dscratch);
    for (size_t i = threadIdx.x; i < V; i += blockDim.x) {
        float e = expf((float)((double)(fs_load(z, i, DT) - mx) / (double)temp));
        k[i] = fs_sample_key((float)(e / sum), (uint32_t)i);
    }
}

/* Sorted keys back to probabilities, for the pick. */
__global__ void sorted_probs_kernel(float *p, const uint64_t *keys, size_t n) {
    FS_GRID_STRIDE(i, n) p[i] = fs_sample_key_p(keys[i]);
}

/* One thread per random row: the CPU sampler's own arithmetic. */
__global__ void sample_pick_kernel(int32_t *tokens, const float *p, const uint64_t *keys, size_t N, size_t V,
                                   const fs_sample_params *params) {
    FS_GRID_STRIDE(row, N) {
        const fs_sample_params *q = &params[row];
        if (q->temperature <= 0.0f) continue;
        size_t keep = fs_sample_keep(p + row * V, V, q->top_k, (double)q->top_p);
        size_t at = fs_sample_pick(p + row * V, keep, q->u);
        tokens[row] = (int32_t)fs_sample_key_id(keys[row * V + at]);
    }
}

__global__ void row_offsets_kernel(int *off, size_t N, size_t V) {
    FS_GRID_STRIDE(i, N + 1) off[i] = (int)(i * V);
}

/* Sorts each row's keys ascending (probabilities descending). */
static cudaError_t sort_rows(cudaStream_t s, uint64_t *out, const uint64_t *in, size_t N, size_t V) {
    int *off = NULL;
    size_t temp_bytes = 0;
    if (N * V > (size_t)INT_MAX) return cudaErrorInvalidValue; /* CUB's segmented sort counts in int */
    int n = (int)(N * V);
    cudaError_t e = cub::DeviceSegmentedRadixSort::SortKeys(NULL, temp_bytes, in, out, n, (int)N, off, off + 1, 0, 64,
                                                            s);
    char *buf = NULL;
    if (!e) e = cudaMallocAsync((void **)&buf, (N + 1) * sizeof(int) + 256 + temp_bytes, s);
    if (e) return e;
    off = (int *)buf;
    void *temp = buf + (((N + 1) * sizeof(int) + 255) & ~(size_t)255);
    row_offsets_kernel<<<fs_blocks(N + 1, FS_THREADS), FS_THREADS, 0, s>>>(off, N, V);
    e = cub::DeviceSegmentedRadixSort::SortKeys(temp, temp_bytes, in, out, n, (int)N, off, off + 1, 0, 64, s);
    cudaError_t f = cudaFreeAsync(buf, s);
    return e ? e : f;
}

int fs_cuda_sample(void *stream, int32_t *tokens, const void *logits, size_t N, size_t V, size_t ld,
                   const fs_sample_params *params, int any_random, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    if (N == 0) return 0;
    if (dtype == FS_DTYPE_BF16)
        argmax_kernel<FS_DTYPE_BF16><<<(unsigned)N, FS_THREADS, 0, s>>>(tokens, logits, V, ld, params);
    else
        argmax_kernel<FS_DTYPE_F32><<<(unsigned)N, FS_THREADS, 0, s>>>(tokens, logits, V, ld, params);
    cudaError_t e = cudaGetLastError();
    if (e || !any_random) return (int)e;
    char *buf = NULL;
    size_t nv = N * V;
    if ((e = cudaMallocAsync((void **)&buf, nv * (2 * sizeof(uint64_t) + sizeof(float)), s))) return (int)e;
    uint64_t *keys = (uint64_t *)buf, *sorted = keys + nv;
    float *p = (float *)(sorted + nv);
    if (dtype == FS_DTYPE_BF16)
        sample_keys_kernel<FS_DTYPE_BF16><<<(unsigned)N, FS_THREADS, 0, s>>>(keys, logits, V, ld, params);
    else
        sample_keys_kernel<FS_DTYPE_F32><<<(unsigned)N, FS_THREADS, 0, s>>>(keys, logits, V, ld, params);
    e = cudaGetLastError();
    if (!e) e = sort_rows(s, sorted, keys, N, V);
    if (!e) {
        sorted_probs_kernel<<<fs_blocks(nv, FS_THREADS), FS_THREADS, 0, s>>>(p, sorted, nv);
        sample_pick_kernel<<<fs_blocks(N, 64), 64, 0, s>>>(tokens, p, sorted, N, V, params);
        e = cudaGetLastError();
    }
    cudaError_t f = cudaFreeAsync(buf, s);
    return (int)(e ? e : f);
}
