/* common.cu — what every attention plugin's device half needs besides the
 * engine: errors, the device, copies, rowsum(dO * O), and the small row
 * kernels longformer's global projection uses (gather, scatter-add, bias,
 * column sums in row order: deterministic). */
#include "attention_cuda.h"
#include "flash.cuh"

#define T256 256

static unsigned blocks_for(size_t n) {
    size_t b = (n + T256 - 1) / T256;
    return b == 0 ? 1 : b > 65535u * 32u ? 65535u * 32u : (unsigned)b;
}

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

const char *fs_att_cuda_error(int e) { return cudaGetErrorString((cudaError_t)e); }

int fs_att_cuda_set_device(int device) { return (int)cudaSetDevice(device); }

int fs_att_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    cudaGetLastError();
    return n;
}

int fs_att_cuda_memcpy(void *stream, void *dst, const void *src, size_t bytes, int kind) {
    static const cudaMemcpyKind kinds[] = {cudaMemcpyDefault, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                           cudaMemcpyDeviceToDevice};
    if (!bytes) return 0;
    return (int)cudaMemcpyAsync(dst, src, bytes, kinds[kind >= 1 && kind <= 3 ? kind : 0], (cudaStream_t)stream);
}

int fs_att_cuda_memset(void *stream, void *p, int value, size_t bytes) {
    return bytes ? (int)cudaMemsetAsync(p, value, bytes, (cudaStream_t)stream) : 0;
}

int fs_att_cuda_sync(void *stream) { return (int)cudaStreamSynchronize((cudaStream_t)stream); }

/* delta (rows) = rowsum(dout * out), one warp per row of D. */
template <int DT>
__global__ void fa_delta(float *delta, const void *dout, const void *out, size_t rows, size_t D) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    unsigned lane = threadIdx.x % 32;
    if (row >= rows) return;
    float s = 0.0f;
    for (size_t d = lane; d < D; d += 32) s += fs_load(dout, row * D + d, DT) * fs_load(out, row * D + d, DT);
    s = fa_warp_sum(s);
    if (lane == 0) delta[row] = s;
}

int fs_att_delta(void *stream, float *delta, const void *dout, const void *out, size_t rows, size_t D, int dtype) {
    cudaStream_t s = (cudaStream_t)stream;
    unsigned blocks = (unsigned)((rows + 7) / 8);
    if (!blocks) return 0;
    if (dtype == FS_DTYPE_BF16)
        fa_delta<FS_DTYPE_BF16><<<blocks, 256, 0, s>>>(delta, dout, out, rows, D);
    else
        fa_delta<FS_DTYPE_F32><<<blocks, 256, 0, s>>>(delta, dout, out, rows, D);
    return (int)cudaGetLastError();
}

__global__ void gather_rows_kernel(float *dst, const float *src, const int32_t *idx, size_t n, size_t C) {
    GRID_STRIDE(i, n * C) dst[i] = src[(size_t)idx[i / C] * C + i % C];
}

int fs_att_gather_rows(void *stream, float *dst, const float *src, const int32_t *idx, size_t n, size_t C) {
    if (!n) return 0;
    gather_rows_kernel<<<blocks_for(n * C), T256, 0, (cudaStream_t)stream>>>(dst, src, idx, n, C);
    return (int)cudaGetLastError();
}

/* rows idx[] are distinct (positions of one sequence): no two threads add to one element */
__global__ void scatter_add_rows_kernel(float *dst, const float *src, const int32_t *idx, size_t n, size_t C) {
    GRID_STRIDE(i, n * C) dst[(size_t)idx[i / C] * C + i % C] += src[i];
}

int fs_att_scatter_add_rows(void *stream, float *dst, const float *src, const int32_t *idx, size_t n, size_t C) {
    if (!n) return 0;
    scatter_add_rows_kernel<<<blocks_for(n * C), T256, 0, (cudaStream_t)stream>>>(dst, src, idx, n, C);
    return (int)cudaGetLastError();
}

__global__ void add_bias_kernel(float *x, const float *bias, size_t n, size_t C, size_t ld) {
    GRID_STRIDE(i, n * C) x[(i / C) * ld + i % C] += bias[i % C];
}

int fs_att_add_bias(void *stream, float *x, const float *bias, size_t n, size_t C, size_t ld) {
    if (!n) return 0;
    add_bias_kernel<<<blocks_for(n * C), T256, 0, (cudaStream_t)stream>>>(x, bias, n, C, ld);
    return (int)cudaGetLastError();
}

__global__ void column_sums_kernel(float *out, const float *x, size_t n, size_t C, size_t ld) {
    GRID_STRIDE(c, C) {
        float s = 0.0f;
        for (size_t r = 0; r < n; r++) s += x[r * ld + c];
        out[c] += s;
    }
}

int fs_att_column_sums(void *stream, float *out, const float *x, size_t n, size_t C, size_t ld) {
    if (!n || !C) return 0;
    column_sums_kernel<<<blocks_for(C), T256, 0, (cudaStream_t)stream>>>(out, x, n, C, ld);
    return (int)cudaGetLastError();
}
