/* cuda_backend.h — private to the cuda backend plugin: the instance and
 * what its files share. backend_cuda.c is the vtable (device, memory,
 * streams, ops), gemm_cuda.c the matmuls (cuBLASLt, cuBLAS when cuBLASLt
 * offers no algorithm), coll_nccl.c the collectives, ops_*.cu the kernels. */
#ifndef FS_CUDA_BACKEND_H
#define FS_CUDA_BACKEND_H

#include <pthread.h>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "fastserve/backend.h"

#define FS_GEMM_CACHE 64 /* matmul plans kept (a model has a dozen shapes) */
#define FS_NCCL_GROUP_COLLS 16 /* communicators one coll_group may use */

typedef struct gemm_plan gemm_plan;

typedef struct cuda_backend {
    const fs_host_api *host;
    fs_plugin_ctx *ctx;
    int device;
    cudaStream_t stream;        /* the compute stream: what NULL means */
    cublasLtHandle_t lt;
    cublasHandle_t blas;        /* the fallback */
    void *workspace;            /* cuBLASLt's */
    size_t workspace_bytes;
    fs_sample_params *params;   /* (params_cap) on the device: sample's rows */
    int32_t *tokens;            /* (params_cap) */
    size_t params_cap;
    pthread_mutex_t lock;       /* the plan cache, the cuBLAS handle's stream, sample's buffers */
    gemm_plan *plans;           /* (FS_GEMM_CACHE) */
    size_t n_plans, next_plan;
    /* coll_nccl.c: inside coll_group(1) .. coll_group(0), the communicators
     * the group's calls used, settled once ncclGroupEnd has queued them */
    int group_depth;
    fs_backend_coll *group_colls[FS_NCCL_GROUP_COLLS];
    size_t n_group_colls;
} cuda_backend;

/* "cuda backend: what: the CUDA error" with FS_ERR_NOMEM for allocation
 * failures, FS_ERR_RUNTIME otherwise; FS_OK when e is cudaSuccess. */
int fs_cuda_fail(const cuda_backend *cb, fs_error *err, int e, const char *what);
/* The stream a call means: s, or the compute stream for NULL. */
cudaStream_t fs_cuda_stream(const cuda_backend *cb, fs_backend_stream *s);
/* Makes the instance's device current on the calling thread. */
int fs_cuda_enter(const cuda_backend *cb, fs_error *err);

/* gemm_cuda.c */
int fs_cuda_gemm_init(cuda_backend *cb, fs_error *err);
void fs_cuda_gemm_release(cuda_backend *cb);
int fs_cuda_gemm(void *self, fs_backend_stream *s, const fs_gemm_args *g, fs_error *err);
/* The type of g's bias elements (F32 unless g is new enough to say BF16). */
int32_t fs_cuda_bias_dtype(const fs_gemm_args *g);

/* coll_nccl.c (built with FS_CUDA_NCCL): the vtable's coll_* members. */
int fs_nccl_id(void *self, uint8_t id[FS_BACKEND_COLL_ID_BYTES], fs_error *err);
int fs_nccl_create(void *self, fs_backend_coll **c, const uint8_t id[FS_BACKEND_COLL_ID_BYTES], int n_ranks, int rank,
                   fs_error *err);
int fs_nccl_split(void *self, fs_backend_coll *c, int color, int key, fs_backend_coll **out, fs_error *err);
void fs_nccl_destroy(void *self, fs_backend_coll *c);
int fs_nccl_all_reduce(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count, int32_t dtype,
                       int32_t op, fs_error *err);
int fs_nccl_broadcast(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count, int32_t dtype,
                      int root, fs_error *err);
int fs_nccl_all_gather(void *self, fs_backend_coll *c, fs_backend_stream *s, void *out, const void *in, size_t count,
                       int32_t dtype, fs_error *err);
int fs_nccl_reduce_scatter(void *self, fs_backend_coll *c, fs_backend_stream *s, void *out, const void *in,
                           size_t count, int32_t dtype, int32_t op, fs_error *err);
int fs_nccl_send(void *self, fs_backend_coll *c, fs_backend_stream *s, const void *buf, size_t count, int32_t dtype,
                 int peer, fs_error *err);
int fs_nccl_recv(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count, int32_t dtype, int peer,
                 fs_error *err);
int fs_nccl_group(void *self, int begin, fs_error *err);
int fs_nccl_check(void *self, fs_backend_coll *c, fs_error *err);
void fs_nccl_abort(void *self, fs_backend_coll *c);

#endif
