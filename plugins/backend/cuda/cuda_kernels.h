/* cuda_kernels.h — the launchers of the cuda backend's kernels (ops_*.cu),
 * callable from C (backend_cuda.c).
 *
 * Each queues its kernels on `stream` (a cudaStream_t) and returns the
 * launch's cudaError_t as an int (0: queued). Arrays are device memory
 * unless a comment says otherwise; `dtype` is FS_DTYPE_F32 or
 * FS_DTYPE_BF16 for activations, everything else f32 (see backend.h).
 * Temporaries come from the stream-ordered pool (cudaMallocAsync), so a
 * launcher never synchronises. */
#ifndef FS_CUDA_KERNELS_H
#define FS_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ops_elementwise.cu ---- */
int fs_cuda_encoder_forward(void *stream, void *out, const int32_t *inp, const float *wte, const float *wpe, size_t B,
                            size_t T, size_t C, size_t pos0, int dtype);
// dwpe only (dwte: fs_cuda_embedding_backward)
int fs_cuda_position_backward(void *stream, float *dwpe, const void *dout, size_t B, size_t T, size_t C, size_t pos0,
                              int dtype);
int fs_cuda_gelu_forward(void *stream, void *out, const void *inp, size_t n, int dtype);
int fs_cuda_gelu_backward(void *stream, void *dinp, const void *inp, const void *dout, size_t n, int dtype);
int fs_cuda_residual_forward(void *stream, void *out, const void *a, const void *b, size_t n, int dtype);
int fs_cuda_residual_backward(void *stream, void *dacc, const void *dout, size_t n, int dtype);
int fs_cuda_split_heads(void *stream, void *q, void *k, void *v, const void *qkv, size_t B, size_t T, size_t H, size_t D,
                        int dtype);
int fs_cuda_split_heads_backward(void *stream, void *dqkv, const void *dq, const void *dk, const void *dv, size_t B,
                                 size_t T, size_t H, size_t D, int dtype);
int fs_cuda_merge_heads(void *stream, void *out, const void *y, size_t B, size_t T, size_t H, size_t D, int dtype);
int fs_cuda_merge_heads_backward(void *stream, void *dy, const void *dout, size_t B, size_t T, size_t H, size_t D,
                                 int dtype);
int fs_cuda_adamw(void *stream, float *param, void *param_copy, float *m, float *v, const float *grad, size_t n,
                  float lr, float beta1, float beta2, float eps, float decay, float bc1, float bc2, float grad_scale,
                  int copy_dtype);
int fs_cuda_scale(void *stream, float *x, float s, size_t n);
int fs_cuda_convert(void *stream, void *dst, int dst_dtype, const void *src, int src_dtype, size_t n);
// c (m rows, ldc apart, n columns, batch matrices stride_c apart) = beta * c: a GEMM with k = 0
int fs_cuda_scale_matrix(void *stream, void *c, float beta, size_t m, size_t n, size_t ldc, size_t batch,
                         size_t stride_c, int dtype);
// c (m rows, ldc apart, n columns) += bias (n, bias_dtype): the GEMM epilogue when cuBLASLt has none for the types
int fs_cuda_add_bias(void *stream, void *c, const void *bias, int bias_dtype, size_t m, size_t n, size_t ldc,
                     size_t batch, size_t stride_c, int dtype);

/* ---- ops_rows.cu ---- */
int fs_cuda_layernorm_forward(void *stream, void *out, float *mean, float *rstd, const void *inp, const float *weight,
                              const float *bias, size_t N, size_t C, int dtype);
int fs_cuda_layernorm_backward(void *stream, void *dinp, float *dweight, float *dbias, const void *dout,
                               const void *inp, const float *weight, const float *mean, const float *rstd, size_t N,
                               size_t C, int dtype);
int fs_cuda_bias_backward(void *stream, float *dbias, const void *dout, size_t N, size_t OC, size_t ldd, int dtype);
int fs_cuda_crossentropy(void *stream, double *loss, void *dlogits, const void *logits, const int32_t *targets,
                         size_t N, size_t V, size_t ld, float scale, int dtype);
int fs_cuda_softmax_forward(void *stream, float *probs, const void *logits, size_t N, size_t V, float temperature,
                            int dtype);
int fs_cuda_sumsq(void *stream, double *out, const float *x, size_t n);

/* ---- ops_sort.cu ---- */
// dwte (V, C) += the rows of dout (B*T, C) at their tokens, each token's rows summed in order (deterministic)
int fs_cuda_embedding_backward(void *stream, float *dwte, const void *dout, const int32_t *inp, size_t BT, size_t C,
                               int dtype);
// tokens (N, device) from logits (N, V) rows ld apart; params (N, device)
int fs_cuda_sample(void *stream, int32_t *tokens, const void *logits, size_t N, size_t V, size_t ld,
                   const fs_sample_params *params, int any_random, int dtype);

#ifdef __cplusplus
}
#endif
#endif
