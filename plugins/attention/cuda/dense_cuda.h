/* dense_cuda.h — dense attention's device half (dense_cuda.c over
 * dense_kernels.cu), private to the plugin: dense.c hands an instance
 * created for a CUDA device to these. */
#ifndef FS_DENSE_CUDA_H
#define FS_DENSE_CUDA_H

#include "fastserve/attention.h"

typedef struct dense_cuda dense_cuda;

int dense_cuda_create(dense_cuda **out, const fs_host_api *host, const fs_attention_config *cfg, fs_error *err);
void dense_cuda_destroy(dense_cuda *dc); /* accepts NULL */
size_t dense_cuda_saved_bytes(const dense_cuda *dc, size_t B, size_t T);
int dense_cuda_forward(dense_cuda *dc, const fs_attention_args *a, fs_error *err);
int dense_cuda_backward(dense_cuda *dc, const fs_attention_args *a, fs_error *err);
size_t dense_cuda_cache_bytes(const dense_cuda *dc, size_t B, size_t context);
int dense_cuda_cache_reset(dense_cuda *dc, void *cache, size_t B, size_t context, fs_error *err);
int dense_cuda_decode(dense_cuda *dc, void *cache, const fs_attention_decode_args *a, fs_error *err);
int dense_cuda_scores(dense_cuda *dc, const fs_attention_scores_args *a, fs_error *err);
int dense_cuda_scores_backward(dense_cuda *dc, const fs_attention_scores_args *a, fs_error *err);
/* The serving engine's paged step (FS_ATTENTION_CUDA_PAGED): f32 device tensors, the pool in
 * device memory, the sequences and their tables in host memory. */
int dense_cuda_paged_step(dense_cuda *dc, const fs_attention_paged_args *a, fs_error *err);

#endif
