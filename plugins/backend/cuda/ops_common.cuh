/* ops_common.cuh — device helpers shared by the cuda backend's kernels:
 * launch sizes, the dtype switch, and block reductions in the fixed order
 * kernels_math.h documents (and its CPU emulation reproduces). */
#ifndef FS_CUDA_OPS_COMMON_CUH
#define FS_CUDA_OPS_COMMON_CUH

#include <cuda_runtime.h>

#include "cuda_kernels.h"
#include "kernels_math.h"

#define FS_THREADS 256

/* Blocks for a grid-stride loop over n items. */
static inline unsigned fs_blocks(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    if (b == 0) b = 1;
    return b > 65535u * 32u ? 65535u * 32u : (unsigned)b;
}

#define FS_GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* Launches KERNEL<FS_DTYPE_F32> or KERNEL<FS_DTYPE_BF16> by `dt`, then
 * returns the launch's status. */
#define FS_LAUNCH_DT(dt, kernel, grid, block, smem, stream, ...)                                      \
    do {                                                                                              \
        if ((dt) == FS_DTYPE_BF16)                                                                    \
            kernel<FS_DTYPE_BF16><<<(grid), (block), (smem), (cudaStream_t)(stream)>>>(__VA_ARGS__);  \
        else                                                                                          \
            kernel<FS_DTYPE_F32><<<(grid), (block), (smem), (cudaStream_t)(stream)>>>(__VA_ARGS__);   \
        return (int)cudaGetLastError();                                                               \
    } while (0)

/* Butterfly over a warp; every lane then takes lane 0's result, the value
 * fs_tree_reduce's emulation takes. */
template <typename T, typename Op>
__device__ __forceinline__ T fs_warp_reduce(T v, Op op) {
    for (int off = FS_WARP / 2; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
    return __shfl_sync(0xffffffffu, v, 0);
}

struct fs_op_sum {
    template <typename T>
    __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct fs_op_max {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/* The block's reduction of one value per thread (blockDim.x a multiple of
 * 32): each warp, then warp 0 over the warps' lane-0 results padded with
 * `identity`. Every thread gets the result. `scratch` holds 33 values. */
template <typename T, typename Op>
__device__ __forceinline__ T fs_block_reduce(T v, Op op, T identity, T *scratch) {
    unsigned lane = threadIdx.x % FS_WARP, warp = threadIdx.x / FS_WARP, n_warps = blockDim.x / FS_WARP;
    v = fs_warp_reduce(v, op);
    if (n_warps == 1) return v;
    __syncthreads(); /* scratch may still be read by a previous reduction */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = lane < n_warps ? scratch[lane] : identity;
        w = fs_warp_reduce(w, op);
        if (lane == 0) scratch[FS_WARP] = w;
    }
    __syncthreads();
    return scratch[FS_WARP];
}

#endif
