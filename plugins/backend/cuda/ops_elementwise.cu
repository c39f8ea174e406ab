/* ops_elementwise.cu — kernels with one independent result per element:
 * the embedding's forward and the position table's gradient, GELU,
 * residuals, the head permutations, AdamW, scaling, conversion, a bias
 * added after a GEMM. Grid-stride loops over kernels_math.h's functions. */
#include "ops_common.cuh"

template <int DT>
__global__ void encoder_forward_kernel(void *out, const int32_t *inp, const float *wte, const float *wpe, size_t T,
                                       size_t C, size_t pos0, size_t n) {
    FS_GRID_STRIDE(i, n) {
        size_t bt = i / C, c = i % C, t = bt % T;
        fs_store(out, i, DT, wte[(size_t)inp[bt] * C + c] + wpe[(pos0 + t) * C + c]);
    }
}

int fs_cuda_encoder_forward(void *stream, void *out, const int32_t *inp, const float *wte, const float *wpe, size_t B,
                            size_t T, size_t C, size_t pos0, int dtype) {
    size_t n = B * T * C;
    FS_LAUNCH_DT(dtype, encoder_forward_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, out, inp, wte, wpe, T,
                 C, pos0, n);
}

/* dwpe[pos0 + t] += sum over b of dout[b, t]: each (t, c) sums its batch
 * in order, no two threads write one element. */
template <int DT>
__global__ void position_backward_kernel(float *dwpe, const void *dout, size_t B, size_t T, size_t C, size_t pos0) {
    FS_GRID_STRIDE(i, T * C) {
        size_t t = i / C, c = i % C;
        float s = 0.0f;
        for (size_t b = 0; b < B; b++) s += fs_load(dout, (b * T + t) * C + c, DT);
        dwpe[(pos0 + t) * C + c] += s;
    }
}

int fs_cuda_position_backward(void *stream, float *dwpe, const void *dout, size_t B, size_t T, size_t C, size_t pos0,
                              int dtype) {
    FS_LAUNCH_DT(dtype, position_backward_kernel, fs_blocks(T * C, FS_THREADS), FS_THREADS, 0, stream, dwpe, dout, B,
                 T, C, pos0);
}

template <int DT>
__global__ void gelu_forward_kernel(void *out, const void *inp, size_t n) {
    FS_GRID_STRIDE(i, n) fs_store(out, i, DT, fs_gelu_forward(fs_load(inp, i, DT)));
}

int fs_cuda_gelu_forward(void *stream, void *out, const void *inp, size_t n, int dtype) {
    FS_LAUNCH_DT(dtype, gelu_forward_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, out, inp, n);
}

template <int DT>
__global__ void gelu_backward_kernel(void *dinp, const void *inp, const void *dout, size_t n) {
    FS_GRID_STRIDE(i, n) fs_store(dinp, i, DT, fs_gelu_backward(fs_load(inp, i, DT), fs_load(dout, i, DT)));
}

int fs_cuda_gelu_backward(void *stream, void *dinp, const void *inp, const void *dout, size_t n, int dtype) {
    FS_LAUNCH_DT(dtype, gelu_backward_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, dinp, inp, dout, n);
}

template <int DT>
__global__ void residual_forward_kernel(void *out, const void *a, const void *b, size_t n) {
    FS_GRID_STRIDE(i, n) fs_store(out, i, DT, fs_load(a, i, DT) + fs_load(b, i, DT));
}

int fs_cuda_residual_forward(void *stream, void *out, const void *a, const void *b, size_t n, int dtype) {
    FS_LAUNCH_DT(dtype, residual_forward_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, out, a, b, n);
}

int fs_cuda_residual_backward(void *stream, void *dacc, const void *dout, size_t n, int dtype) {
    FS_LAUNCH_DT(dtype, residual_forward_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, dacc, dacc, dout, n);
}

/* q, k, v (B, H, T, D) <- qkv (B, T, 3C); backward the other way. */
/* ---- the heads' permutations ----
 * A head's D elements are contiguous in both layouts, so the moves go 16
 * bytes at a time wherever a head's row is a whole number of 16-byte
 * chunks and the buffers are aligned to them (GPT-2's D 64: 8 bf16 or 4
 * f32 a move, 8 and 4 times fewer instructions than element by element);
 * elsewhere element by element. The index maps are kernels_math.h's, at
 * each chunk's first element. */

/* Elements per 16-byte chunk when every pointer and a head's row allow
 * it, else 0. */
static size_t chunk_elems(size_t D, int dtype, const void *const *ptrs, size_t n) {
    size_t es = dtype == FS_DTYPE_BF16 ? 2 : 4;
    if ((D * es) % 16) return 0;
    for (size_t i = 0; i < n; i++)
        if ((uintptr_t)ptrs[i] % 16) return 0;
    return 16 / es;
}

/* Chunk c of q, k, v (B, H, T, D) <- its place in qkv (B, T, 3C), w
 * elements a chunk; the backward the other way; merge between (B, H, T,
 * D) and (B, T, C). */
__global__ void split_heads_chunks(uint4 *q, uint4 *k, uint4 *v, const uint4 *qkv, size_t T, size_t H, size_t D,
                                   size_t w, size_t n_chunks) {
    size_t C = H * D;
    FS_GRID_STRIDE(c, n_chunks) {
        size_t src = fs_qkv_index(c * w, T, H, D) / w;
        q[c] = qkv[src];
        k[c] = qkv[src + C / w];
        v[c] = qkv[src + 2 * C / w];
    }
}

__global__ void split_heads_backward_chunks(uint4 *dqkv, const uint4 *dq, const uint4 *dk, const uint4 *dv, size_t T,
                                            size_t H, size_t D, size_t w, size_t n_chunks) {
    size_t C = H * D;
    FS_GRID_STRIDE(c, n_chunks) {
        size_t dst = fs_qkv_index(c * w, T, H, D) / w;
        dqkv[dst] = dq[c];
        dqkv[dst + C / w] = dk[c];
        dqkv[dst + 2 * C / w] = dv[c];
    }
}

__global__ void merge_heads_chunks(uint4 *out, uint4 *y, size_t T, size_t H, size_t D, size_t w, size_t n_chunks,
                                   int merge) {
    FS_GRID_STRIDE(c, n_chunks) {
        size_t m = fs_merged_index(c * w, T, H, D) / w;
        if (merge) out[m] = y[c];
        else y[c] = out[m];
    }
}

template <int DT>
__global__ void split_heads_kernel(void *q, void *k, void *v, const void *qkv, size_t T, size_t H, size_t D, size_t n) {
    size_t C = H * D;
    FS_GRID_STRIDE(o, n) {
        size_t src = fs_qkv_index(o, T, H, D);
        fs_store(q, o, DT, fs_load(qkv, src, DT));
        fs_store(k, o, DT, fs_load(qkv, src + C, DT));
        fs_store(v, o, DT, fs_load(qkv, src + 2 * C, DT));
    }
}

int fs_cuda_split_heads(void *stream, void *q, void *k, void *v, const void *qkv, size_t B, size_t T, size_t H, size_t D,
                        int dtype) {
    size_t n = B * H * T * D;
    const void *ptrs[] = {q, k, v, qkv};
    size_t w = chunk_elems(D, dtype, ptrs, 4);
    if (w) {
        split_heads_chunks<<<fs_blocks(n / w, FS_THREADS), FS_THREADS, 0, (cudaStream_t)stream>>>(
            (uint4 *)q, (uint4 *)k, (uint4 *)v, (const uint4 *)qkv, T, H, D, w, n / w);
        return (int)cudaGetLastError();
    }
    FS_LAUNCH_DT(dtype, split_heads_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, q, k, v, qkv, T, H, D, n);
}

template <int DT>
__global__ void split_heads_backward_kernel(void *dqkv, const void *dq, const void *dk, const void *dv, size_t T,
                                            size_t H, size_t D, size_t n) {
    size_t C = H * D;
    FS_GRID_STRIDE(o, n) {
        size_t dst = fs_qkv_index(o, T, H, D);
        fs_store(dqkv, dst, DT, fs_load(dq, o, DT));
        fs_store(dqkv, dst + C, DT, fs_load(dk, o, DT));
        fs_store(dqkv, dst + 2 * C, DT, fs_load(dv, o, DT));
    }
}

int fs_cuda_split_heads_backward(void *stream, void *dqkv, const void *dq, const void *dk, const void *dv, size_t B,
                                 size_t T, size_t H, size_t D, int dtype) {
    size_t n = B * H * T * D;
    const void *ptrs[] = {dqkv, dq, dk, dv};
    size_t w = chunk_elems(D, dtype, ptrs, 4);
    if (w) {
        split_heads_backward_chunks<<<fs_blocks(n / w, FS_THREADS), FS_THREADS, 0, (cudaStream_t)stream>>>(
            (uint4 *)dqkv, (const uint4 *)dq, (const uint4 *)dk, (const uint4 *)dv, T, H, D, w, n / w);
        return (int)cudaGetLastError();
    }
    FS_LAUNCH_DT(dtype, split_heads_backward_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, dqkv, dq, dk, dv,
                 T, H, D, n);
}

/* out (B, T, C) <- y (B, H, T, D) when `merge`, y <- out otherwise. */
template <int DT>
__global__ void merge_heads_kernel(void *out, void *y, size_t T, size_t H, size_t D, size_t n, int merge) {
    FS_GRID_STRIDE(o, n) {
        size_t m = fs_merged_index(o, T, H, D);
        if (merge)
            fs_store(out, m, DT, fs_load(y, o, DT));
        else
            fs_store(y, o, DT, fs_load(out, m, DT));
    }
}

/* merge_heads_chunks when the buffers allow it: 1 queued (the launch's status in *rc), 0 not */
static int merge_chunked(void *stream, void *out, void *y, size_t n, size_t T, size_t H, size_t D, int dtype,
                         int merge, int *rc) {
    const void *ptrs[] = {out, y};
    size_t w = chunk_elems(D, dtype, ptrs, 2);
    if (!w) return 0;
    merge_heads_chunks<<<fs_blocks(n / w, FS_THREADS), FS_THREADS, 0, (cudaStream_t)stream>>>(
        (uint4 *)out, (uint4 *)y, T, H, D, w, n / w, merge);
    *rc = (int)cudaGetLastError();
    return 1;
}

int fs_cuda_merge_heads(void *stream, void *out, const void *y, size_t B, size_t T, size_t H, size_t D, int dtype) {
    size_t n = B * H * T * D;
    int rc;
    if (merge_chunked(stream, out, (void *)y, n, T, H, D, dtype, 1, &rc)) return rc;
    FS_LAUNCH_DT(dtype, merge_heads_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, out, (void *)y, T, H, D, n,
                 1);
}

int fs_cuda_merge_heads_backward(void *stream, void *dy, const void *dout, size_t B, size_t T, size_t H, size_t D,
                                 int dtype) {
    size_t n = B * H * T * D;
    int rc;
    if (merge_chunked(stream, (void *)dout, dy, n, T, H, D, dtype, 0, &rc)) return rc;
    FS_LAUNCH_DT(dtype, merge_heads_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, (void *)dout, dy, T, H, D,
                 n, 0);
}

/* AdamW; the copy (bf16 GEMM operands) follows the f32 master. */
template <int DT>
__global__ void adamw_kernel(float *param, void *copy, float *m, float *v, const float *grad, size_t n, float lr,
                             float beta1, float beta2, float eps, float decay, float bc1, float bc2, float grad_scale) {
    FS_GRID_STRIDE(i, n) {
        float mi = m[i], vi = v[i];
        float p = fs_adamw_element(param[i], grad[i] * grad_scale, &mi, &vi, lr, beta1, beta2, eps, decay, bc1, bc2);
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
        if (copy) fs_store(copy, i, DT, p);
    }
}

int fs_cuda_adamw(void *stream, float *param, void *param_copy, float *m, float *v, const float *grad, size_t n,
                  float lr, float beta1, float beta2, float eps, float decay, float bc1, float bc2, float grad_scale,
                  int copy_dtype) {
    FS_LAUNCH_DT(copy_dtype, adamw_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, param, param_copy, m, v,
                 grad, n, lr, beta1, beta2, eps, decay, bc1, bc2, grad_scale);
}

__global__ void scale_kernel(float *x, float s, size_t n) {
    FS_GRID_STRIDE(i, n) x[i] *= s;
}

int fs_cuda_scale(void *stream, float *x, float s, size_t n) {
    scale_kernel<<<fs_blocks(n, FS_THREADS), FS_THREADS, 0, (cudaStream_t)stream>>>(x, s, n);
    return (int)cudaGetLastError();
}

template <int DT>
__global__ void convert_kernel(void *dst, const void *src, int src_dtype, size_t n) {
    FS_GRID_STRIDE(i, n) fs_store(dst, i, DT, fs_load(src, i, src_dtype));
}

int fs_cuda_convert(void *stream, void *dst, int dst_dtype, const void *src, int src_dtype, size_t n) {
    if (dst_dtype == src_dtype) {
        size_t bytes = n * (dst_dtype == FS_DTYPE_BF16 ? 2 : 4);
        return dst == src ? 0 : (int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)stream);
    }
    FS_LAUNCH_DT(dst_dtype, convert_kernel, fs_blocks(n, FS_THREADS), FS_THREADS, 0, stream, dst, src, src_dtype, n);
}

template <int DT>
__global__ void scale_matrix_kernel(void *c, float beta, size_t m, size_t n, size_t ldc, size_t stride_c,
                                    size_t total) {
    FS_GRID_STRIDE(i, total) {
        size_t j = i % n, r = (i / n) % m, b = i / (n * m), at = b * stride_c + r * ldc + j;
        fs_store(c, at, DT, beta == 0.0f ? 0.0f : beta * fs_load(c, at, DT)); /* beta 0 writes zeros, as BLAS */
    }
}

int fs_cuda_scale_matrix(void *stream, void *c, float beta, size_t m, size_t n, size_t ldc, size_t batch,
                         size_t stride_c, int dtype) {
    size_t total = m * n * batch;
    FS_LAUNCH_DT(dtype, scale_matrix_kernel, fs_blocks(total, FS_THREADS), FS_THREADS, 0, stream, c, beta, m, n, ldc,
                 stride_c, total);
}

template <int DT>
__global__ void add_bias_kernel(void *c, const void *bias, int bias_dtype, size_t m, size_t n, size_t ldc,
                                size_t stride_c, size_t total) {
    FS_GRID_STRIDE(i, total) {
        size_t j = i % n, r = (i / n) % m, b = i / (n * m), at = b * stride_c + r * ldc + j;
        fs_store(c, at, DT, fs_load(c, at, DT) + fs_load(bias, j, bias_dtype));
    }
}

int fs_cuda_add_bias(void *stream, void *c, const void *bias, int bias_dtype, size_t m, size_t n, size_t ldc,
                     size_t batch, size_t stride_c, int dtype) {
    size_t total = m * n * batch;
    FS_LAUNCH_DT(dtype, add_bias_kernel, fs_blocks(total, FS_THREADS), FS_THREADS, 0, stream, c, bias, bias_dtype, m,
                 n, ldc, stride_c, total);
}
