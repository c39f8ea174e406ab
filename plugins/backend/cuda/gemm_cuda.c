/* gemm_cuda.c — the backend's GEMM on cuBLASLt.
 *
 * Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so each
 * call hands cuBLASLt our B as its A and our A as its B, with the same
 * leading dimensions. F32 operands compute in full f32 or, with
 * FS_GEMM_COMPUTE_TF32, on tensor cores with TF32 inputs; BF16 operands
 * accumulate in f32 and write BF16 or F32 (the weight gradients of mixed
 * precision, accumulated into f32 with beta 1). A bias rides in the
 * epilogue: f32, or bf16 (fs_gemm_args.bias_dtype), which is the one
 * cuBLASLt fuses into a bf16 D (an f32 bias there falls back to a kernel
 * of its own after the product).
 *
 * A plan (descriptor, layouts and the heuristic's algorithm) is made once
 * per shape, types and pointer alignments and kept in a small cache: a
 * training step has a dozen shapes, and the heuristic costs tens of
 * microseconds a call. When cuBLASLt has no algorithm for a combination,
 * the plan says so and the call goes to cublasGemmStridedBatchedEx, the
 * bias to a kernel. The workspace serves the compute stream only: GEMMs on
 * other streams may run at the same time, and get algorithms without one. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"
#include "cuda_kernels.h"

#define WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLASLt's recommendation for Hopper */

typedef struct gemm_key {
    int32_t ab, c, ta, tb, compute, bias; /* bias: 0 none, else 1 + its fs_dtype */
    int32_t side_stream; /* not the compute stream: no workspace (kernels on two streams would share it) */
    uint32_t align_a, align_b, align_c, align_bias;
    size_t m, n, k, lda, ldb, ldc, batch, sa, sb, sc;
} gemm_key;

struct gemm_plan {
    gemm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc; /* cuBLAS's A (our B), B (our A), C = D */
    cublasLtMatmulAlgo_t algo;
    int has_algo;         /* 0: cublasGemmStridedBatchedEx */
    int bias_in_epilogue; /* 0: fs_cuda_add_bias after */
};

static uint32_t alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && a % al) al /= 2;
    return al;
}

static cudaDataType_t cuda_type(int32_t dtype) { return dtype == FS_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

static cublasComputeType_t compute_type(const gemm_key *k) {
    return k->ab == FS_DTYPE_F32 && k->compute == FS_GEMM_COMPUTE_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                       : CUBLAS_COMPUTE_32F;
}

static void key_of(gemm_key *k, const fs_gemm_args *g, int side_stream) {
    memset(k, 0, sizeof *k); /* padding too: keys compare with memcmp */
    k->side_stream = side_stream;
    k->ab = g->ab_dtype;
    k->c = g->c_dtype;
    k->ta = g->trans_a != 0;
    k->tb = g->trans_b != 0;
    k->compute = g->ab_dtype == FS_DTYPE_F32 ? g->compute : FS_GEMM_COMPUTE_F32;
    k->bias = g->bias ? 1 + fs_cuda_bias_dtype(g) : 0;
    k->align_a = alignment(g->a);
    k->align_b = alignment(g->b);
    k->align_c = alignment(g->c);
    k->align_bias = g->bias ? alignment(g->bias) : 0;
    k->m = g->m, k->n = g->n, k->k = g->k;
    k->lda = g->lda, k->ldb = g->ldb, k->ldc = g->ldc;
    k->batch = g->batch > 1 ? g->batch : 1;
    if (k->batch > 1) k->sa = g->stride_a, k->sb = g->stride_b, k->sc = g->stride_c;
}

static void plan_release(gemm_plan *p) {
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    memset(p, 0, sizeof *p);
}

static cublasStatus_t layout(cublasLtMatrixLayout_t *l, int32_t dtype, size_t rows, size_t cols, size_t ld,
                             size_t batch, size_t stride) {
    cublasStatus_t st = cublasLtMatrixLayoutCreate(l, cuda_type(dtype), rows, cols, (int64_t)ld);
    if (st || batch <= 1) return st;
    int32_t count = (int32_t)batch;
    int64_t offset = (int64_t)stride;
    st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
    if (!st) st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset, sizeof offset);
    return st;
}

/* The heuristic's best algorithm for the plan as described, given the
 * alignments of this call's pointers. */
static int find_algo(cuda_backend *cb, gemm_plan *p) {
    const gemm_key *k = &p->key;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    if (cublasLtMatmulPreferenceCreate(&pref)) return 0;
    uint64_t ws = k->side_stream ? 0 : cb->workspace_bytes;
    /* cuBLAS's A is our B */
    uint32_t al[4] = {k->align_b, k->align_a, k->align_c, k->align_c};
    cublasLtMatmulPreferenceAttributes_t attr[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    for (int i = 0; i < 4 && !st; i++) st = cublasLtMatmulPreferenceSetAttribute(pref, attr[i], &al[i], sizeof al[i]);
    if (!st && cublasLtMatmulAlgoGetHeuristic(cb->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &result, &found) ==
                   CUBLAS_STATUS_SUCCESS &&
        found > 0)
        p->algo = result.algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return found > 0;
}

static int plan_make(cuda_backend *cb, gemm_plan *p, const gemm_key *k) {
    memset(p, 0, sizeof *p);
    p->key = *k;
    cublasOperation_t ta = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N, tb = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st = cublasLtMatmulDescCreate(&p->desc, compute_type(k), CUDA_R_32F);
    if (!st) st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (!st) st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (!st) st = layout(&p->la, k->ab, k->tb ? k->k : k->n, k->tb ? k->n : k->k, k->ldb, k->batch, k->sb);
    if (!st) st = layout(&p->lb, k->ab, k->ta ? k->m : k->k, k->ta ? k->k : k->m, k->lda, k->batch, k->sa);
    if (!st) st = layout(&p->lc, k->c, k->n, k->m, k->ldc, k->batch, k->sc);
    if (st) {
        plan_release(p);
        return (int)st;
    }
    if (k->bias && k->align_bias >= 16) { /* cuBLASLt's bias epilogue reads the bias in 16-byte vectors */
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = cuda_type(k->bias - 1);
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
        p->bias_in_epilogue = 1;
    }
    p->has_algo = find_algo(cb, p);
    if (!p->has_algo && k->bias) { /* no fused bias for these types: the kernel adds it */
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
        p->bias_in_epilogue = 0;
        p->has_algo = find_algo(cb, p);
    }
    return 0;
}

/* The plan for k, made on a miss (the oldest entry makes room). */
static gemm_plan *plan_for(cuda_backend *cb, const gemm_key *k, int *status) {
    for (size_t i = 0; i < cb->n_plans; i++)
        if (memcmp(&cb->plans[i].key, k, sizeof *k) == 0) return &cb->plans[i];
    size_t slot = cb->n_plans < FS_GEMM_CACHE ? cb->n_plans++ : cb->next_plan++ % FS_GEMM_CACHE;
    plan_release(&cb->plans[slot]);
    *status = plan_make(cb, &cb->plans[slot], k);
    return *status ? NULL : &cb->plans[slot];
}

int32_t fs_cuda_bias_dtype(const fs_gemm_args *g) {
    return FS_HAS_MEMBER(g, g->struct_size, fs_gemm_args, bias_dtype) && g->bias_dtype == FS_DTYPE_BF16 ? FS_DTYPE_BF16
                                                                                                       : FS_DTYPE_F32;
}

static int check_args(const cuda_backend *cb, const fs_gemm_args *g, fs_error *err) {
    int ok_types = (g->ab_dtype == FS_DTYPE_F32 && g->c_dtype == FS_DTYPE_F32) ||
                   (g->ab_dtype == FS_DTYPE_BF16 && (g->c_dtype == FS_DTYPE_BF16 || g->c_dtype == FS_DTYPE_F32));
    if (!ok_types)
        return cb->host->error_set(err, FS_ERR_UNSUPPORTED,
                                   "cuda backend: gemm of dtype %d operands into dtype %d: supported are f32 x f32 -> "
                                   "f32 and bf16 x bf16 -> bf16 or f32",
                                   (int)g->ab_dtype, (int)g->c_dtype);
    size_t a_cols = g->trans_a ? g->m : g->k, b_cols = g->trans_b ? g->k : g->n;
    if (g->lda < a_cols || g->ldb < b_cols || g->ldc < g->n)
        return cb->host->error_set(err, FS_ERR_INVALID,
                                   "cuda backend: gemm (%zu x %zu x %zu): lda %zu >= %zu, ldb %zu >= %zu, ldc %zu >= "
                                   "%zu",
                                   g->m, g->n, g->k, g->lda, a_cols, g->ldb, b_cols, g->ldc, g->n);
    return FS_OK;
}

/* cuBLAS's strided batched GEMM, for what cuBLASLt had no algorithm for:
 * its sizes are ints. */
static int gemm_fallback(cuda_backend *cb, cudaStream_t s, const gemm_plan *p, const fs_gemm_args *g) {
    const gemm_key *k = &p->key;
    if (k->m > INT_MAX || k->n > INT_MAX || k->k > INT_MAX || k->lda > INT_MAX || k->ldb > INT_MAX ||
        k->ldc > INT_MAX || k->batch > INT_MAX)
        return (int)CUBLAS_STATUS_NOT_SUPPORTED;
    cublasStatus_t st = cublasSetStream(cb->blas, s);
    if (!st) st = k->side_stream ? cublasSetWorkspace(cb->blas, NULL, 0)
                                 : cublasSetWorkspace(cb->blas, cb->workspace, cb->workspace_bytes);
    if (st) return (int)st;
    return (int)cublasGemmStridedBatchedEx(cb->blas, k->tb ? CUBLAS_OP_T : CUBLAS_OP_N, k->ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                           (int)k->n, (int)k->m, (int)k->k, &g->alpha, g->b, cuda_type(k->ab),
                                           (int)k->ldb, (long long)k->sb, g->a, cuda_type(k->ab), (int)k->lda,
                                           (long long)k->sa, &g->beta, g->c, cuda_type(k->c), (int)k->ldc,
                                           (long long)k->sc, (int)k->batch, compute_type(k), CUBLAS_GEMM_DEFAULT);
}

/* k = 0: no product, C = beta C (+ bias), as BLAS and the cpu backend
 * have it (cuBLASLt refuses an empty inner dimension). */
static int gemm_empty(cuda_backend *cb, cudaStream_t s, const fs_gemm_args *g, fs_error *err) {
    size_t batch = g->batch > 1 ? g->batch : 1, sc = batch > 1 ? g->stride_c : 0;
    int rc = fs_cuda_fail(cb, err, fs_cuda_scale_matrix(s, g->c, g->beta, g->m, g->n, g->ldc, batch, sc, g->c_dtype),
                          "gemm with k = 0");
    if (!rc && g->bias)
        rc = fs_cuda_fail(cb, err,
                          fs_cuda_add_bias(s, g->c, g->bias, fs_cuda_bias_dtype(g), g->m, g->n, g->ldc, batch, sc,
                                           g->c_dtype),
                          "gemm bias");
    return rc;
}

int fs_cuda_gemm(void *self, fs_backend_stream *stream, const fs_gemm_args *g, fs_error *err) {
    cuda_backend *cb = self;
    if (g->m == 0 || g->n == 0) return FS_OK;
    int rc = check_args(cb, g, err);
    if (rc || (rc = fs_cuda_enter(cb, err))) return rc;
    cudaStream_t s = fs_cuda_stream(cb, stream);
    if (g->k == 0) return gemm_empty(cb, s, g, err);
    gemm_key key;
    key_of(&key, g, s != cb->stream);
    int status = 0;
    pthread_mutex_lock(&cb->lock);
    gemm_plan *p = plan_for(cb, &key, &status);
    if (p && p->has_algo) {
        if (p->bias_in_epilogue)
            cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias, sizeof g->bias);
        status = (int)cublasLtMatmul(cb->lt, p->desc, &g->alpha, g->b, p->la, g->a, p->lb, &g->beta, g->c, p->lc, g->c,
                                     p->lc, &p->algo, key.side_stream ? NULL : cb->workspace,
                                     key.side_stream ? 0 : cb->workspace_bytes, s);
    } else if (p) {
        status = gemm_fallback(cb, s, p, g);
    }
    int bias_after = p && g->bias && !(p->has_algo && p->bias_in_epilogue);
    pthread_mutex_unlock(&cb->lock);
    if (status)
        return cb->host->error_set(err, FS_ERR_RUNTIME, "cuda backend: gemm %zu x %zu x %zu (batch %zu): cuBLAS status %d",
                                   g->m, g->n, g->k, key.batch, status);
    if (bias_after)
        return fs_cuda_fail(cb, err,
                            fs_cuda_add_bias(s, g->c, g->bias, key.bias - 1, g->m, g->n, g->ldc, key.batch, key.sc,
                                             g->c_dtype),
                            "gemm bias");
    return FS_OK;
}

int fs_cuda_gemm_init(cuda_backend *cb, fs_error *err) {
    cb->plans = calloc(FS_GEMM_CACHE, sizeof *cb->plans);
    if (!cb->plans) return cb->host->error_set(err, FS_ERR_NOMEM, "cuda backend: out of memory");
    if (cublasLtCreate(&cb->lt) != CUBLAS_STATUS_SUCCESS || cublasCreate(&cb->blas) != CUBLAS_STATUS_SUCCESS)
        return cb->host->error_set(err, FS_ERR_RUNTIME, "cuda backend: cuBLAS/cuBLASLt could not start on device %d",
                                   cb->device);
    cb->workspace_bytes = WORKSPACE_BYTES;
    int rc = fs_cuda_fail(cb, err, (int)cudaMalloc(&cb->workspace, cb->workspace_bytes), "cuBLASLt workspace");
    if (!rc && cublasSetWorkspace(cb->blas, cb->workspace, cb->workspace_bytes) != CUBLAS_STATUS_SUCCESS)
        rc = cb->host->error_set(err, FS_ERR_RUNTIME, "cuda backend: cuBLAS refused its workspace");
    return rc;
}

void fs_cuda_gemm_release(cuda_backend *cb) {
    for (size_t i = 0; cb->plans && i < cb->n_plans; i++) plan_release(&cb->plans[i]);
    free(cb->plans);
    cb->plans = NULL;
    if (cb->lt) cublasLtDestroy(cb->lt);
    if (cb->blas) cublasDestroy(cb->blas);
    cudaFree(cb->workspace);
    cb->lt = NULL;
    cb->blas = NULL;
    cb->workspace = NULL;
}
