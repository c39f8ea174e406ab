/* backend_cuda.c — the `cuda` compute backend: one NVIDIA GPU.
 *
 * Memory is cudaMalloc'd (device) or cudaMallocHost'd (pinned, for the
 * serving engine's swap), copies and kernels are queued on streams (a
 * fs_backend_stream IS a cudaStream_t, an event a cudaEvent_t), and NULL
 * means the instance's compute stream, a non-blocking stream made at
 * create. GEMMs are cuBLASLt's (gemm_cuda.c), the other ops kernels of our
 * own (ops_*.cu, their arithmetic in kernels_math.h), collectives NCCL's
 * (coll_nccl.c).
 *
 * Every entry makes the instance's device current on the calling thread
 * first, so a decode thread or the collectives' thread may call it. The
 * CUDA runtime is linked statically: this plugin loads on a machine
 * without a driver, where device_count says 0 and create says why. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"
#include "cuda_kernels.h"

int fs_cuda_fail(const cuda_backend *cb, fs_error *err, int e, const char *what) {
    if (e == cudaSuccess) return FS_OK;
    int status = e == cudaErrorMemoryAllocation ? FS_ERR_NOMEM : FS_ERR_RUNTIME;
    return cb->host->error_set(err, status, "cuda backend: %s on device %d: %s (%s)", what, cb->device,
                               cudaGetErrorString((cudaError_t)e), cudaGetErrorName((cudaError_t)e));
}

cudaStream_t fs_cuda_stream(const cuda_backend *cb, fs_backend_stream *s) { return s ? (cudaStream_t)s : cb->stream; }

int fs_cuda_enter(const cuda_backend *cb, fs_error *err) {
    return fs_cuda_fail(cb, err, (int)cudaSetDevice(cb->device), "cudaSetDevice");
}

/* Entry of an op: the device current, then the launch's status. */
#define ENTER(cb, err)                                \
    do {                                              \
        int rc_ = fs_cuda_enter((cb), (err));         \
        if (rc_) return rc_;                          \
    } while (0)
#define LAUNCH(cb, err, what, call)                   \
    do {                                              \
        ENTER(cb, err);                               \
        return fs_cuda_fail((cb), (err), (call), (what)); \
    } while (0)

static int check_dtype(const cuda_backend *cb, int32_t dtype, const char *op, fs_error *err) {
    if (dtype == FS_DTYPE_F32 || dtype == FS_DTYPE_BF16) return FS_OK;
    return cb->host->error_set(err, FS_ERR_UNSUPPORTED, "cuda backend: %s: dtype %d (f32 or bf16 expected)", op,
                               (int)dtype);
}

/* ---- the device ---- */

static int cuda_device_count(int *count, fs_error *err) {
    (void)err;
    int n = 0;
    /* no driver, no device, a driver older than this runtime: none usable */
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    cudaGetLastError(); /* not sticky: clear it */
    *count = n;
    return FS_OK;
}

static void cuda_destroy(void *self) {
    cuda_backend *cb = self;
    if (!cb) return;
    cudaSetDevice(cb->device);
    if (cb->stream) cudaStreamSynchronize(cb->stream);
    fs_cuda_gemm_release(cb);
    cudaFree(cb->params);
    cudaFree(cb->tokens);
    if (cb->stream) cudaStreamDestroy(cb->stream);
    pthread_mutex_destroy(&cb->lock);
    free(cb);
}

/* The ops' scratch comes from cudaMallocAsync's pool, whose default
 * release threshold (0) hands every byte back to the driver at each
 * synchronisation: at least once a step, so the next step would map it
 * again. Keep what was used. */
static void keep_pool(const cuda_backend *cb) {
    cudaMemPool_t pool;
    uint64_t keep = UINT64_MAX;
    if (cudaDeviceGetDefaultMemPool(&pool, cb->device) == cudaSuccess)
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
}

static int cuda_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_backend_config *cfg,
                       fs_error *err) {
    *self = NULL;
    int n = 0;
    cuda_device_count(&n, err);
    if (cfg->device.type != FS_DEVICE_CUDA || cfg->device.index < 0 || cfg->device.index >= n)
        return host->error_set(err, n ? FS_ERR_INVALID : FS_ERR_NOT_FOUND,
                               "cuda backend: device cuda:%d asked, %d CUDA device%s visible%s", (int)cfg->device.index,
                               n, n == 1 ? "" : "s",
                               n ? "" : " (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)");
    cuda_backend *cb = calloc(1, sizeof *cb);
    if (!cb) return host->error_set(err, FS_ERR_NOMEM, "cuda backend: out of memory");
    cb->host = host;
    cb->ctx = ctx;
    cb->device = cfg->device.index;
    pthread_mutex_init(&cb->lock, NULL);
    int rc = fs_cuda_enter(cb, err);
    if (!rc) rc = fs_cuda_fail(cb, err, (int)cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking), "stream");
    if (!rc) keep_pool(cb);
    if (!rc) rc = fs_cuda_gemm_init(cb, err);
    if (rc) {
        cuda_destroy(cb);
        return rc;
    }
    *self = cb;
    return FS_OK;
}

/* Vendor figures (dense, no sparsity) for the parts MFU is reported on. */
static void peak_flops(fs_backend_device_info *info) {
    static const struct {
        const char *name; /* substring of the device name */
        double f32, tf32, bf16;
    } parts[] = {
        {"H200", 67.0, 494.7, 989.4},      {"H100 PCIe", 51.2, 378.0, 756.0},
        {"H100 80GB HBM3", 67.0, 494.7, 989.4}, {"H100 SXM", 67.0, 494.7, 989.4},
        {"A100", 19.5, 156.0, 312.0},
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (strstr(info->name, parts[i].name)) {
            info->peak_tflops_f32 = parts[i].f32;
            info->peak_tflops_tf32 = parts[i].tf32;
            info->peak_tflops_bf16 = parts[i].bf16;
            return;
        }
}

static int cuda_device_info(void *self, fs_backend_device_info *info, fs_error *err) {
    cuda_backend *cb = self;
    ENTER(cb, err);
    struct cudaDeviceProp p;
    int rc = fs_cuda_fail(cb, err, (int)cudaGetDeviceProperties(&p, cb->device), "cudaGetDeviceProperties");
    if (rc) return rc;
    memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info;
    snprintf(info->name, sizeof info->name, "%.127s", p.name);
    info->compute_major = p.major;
    info->compute_minor = p.minor;
    info->multiprocessors = p.multiProcessorCount;
    info->total_bytes = p.totalGlobalMem;
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) info->free_bytes = free_b;
    peak_flops(info);
    return FS_OK;
}

/* ---- memory ---- */

static int cuda_alloc(void *self, void **ptr, size_t bytes, int32_t mem, fs_error *err) {
    cuda_backend *cb = self;
    *ptr = NULL;
    ENTER(cb, err);
    size_t n = bytes ? bytes : 256;
    cudaError_t e = mem == FS_MEM_HOST_PINNED ? cudaMallocHost(ptr, n) : cudaMalloc(ptr, n);
    if (e == cudaSuccess) return FS_OK;
    cudaGetLastError();
    char what[96];
    snprintf(what, sizeof what, "%s of %zu bytes", mem == FS_MEM_HOST_PINNED ? "cudaMallocHost" : "cudaMalloc", bytes);
    return fs_cuda_fail(cb, err, (int)e, what);
}

static void cuda_free(void *self, void *ptr, int32_t mem) {
    cuda_backend *cb = self;
    if (!ptr) return;
    cudaSetDevice(cb->device);
    if (mem == FS_MEM_HOST_PINNED)
        cudaFreeHost(ptr);
    else
        cudaFree(ptr);
}

/* Host memory CUDA has not page-locked (malloc's): async copies from or to
 * it are staged, and the caller may reuse it only once they are done. */
static int pageable(const void *host) {
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, host) != cudaSuccess) {
        cudaGetLastError(); /* older drivers fail on unregistered memory: clear it */
        return 1;
    }
    return a.type == cudaMemoryTypeUnregistered;
}

static int cuda_copy(void *self, fs_backend_stream *s, void *dst, const void *src, size_t bytes, int32_t kind,
                     fs_error *err) {
    cuda_backend *cb = self;
    static const enum cudaMemcpyKind kinds[] = {cudaMemcpyDefault, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                                cudaMemcpyDeviceToDevice};
    if (kind < FS_COPY_HOST_TO_DEVICE || kind > FS_COPY_DEVICE_TO_DEVICE)
        return cb->host->error_set(err, FS_ERR_INVALID, "cuda backend: copy kind %d", (int)kind);
    if (!bytes) return FS_OK;
    ENTER(cb, err);
    cudaStream_t st = fs_cuda_stream(cb, s);
    int rc = fs_cuda_fail(cb, err, (int)cudaMemcpyAsync(dst, src, bytes, kinds[kind], st), "cudaMemcpyAsync");
    if (rc || kind == FS_COPY_DEVICE_TO_DEVICE || !pageable(kind == FS_COPY_HOST_TO_DEVICE ? src : dst)) return rc;
    /* backend.h promises that a pageable host buffer is free when copy
     * returns; CUDA only says such a copy "might be synchronous" */
    return fs_cuda_fail(cb, err, (int)cudaStreamSynchronize(st), "cudaStreamSynchronize after a pageable copy");
}

static int cuda_memset(void *self, fs_backend_stream *s, void *ptr, int value, size_t bytes, fs_error *err) {
    cuda_backend *cb = self;
    if (!bytes) return FS_OK;
    LAUNCH(cb, err, "cudaMemsetAsync", (int)cudaMemsetAsync(ptr, value, bytes, fs_cuda_stream(cb, s)));
}

/* ---- streams and events ---- */

static int cuda_stream_create(void *self, fs_backend_stream **s, int32_t priority, fs_error *err) {
    cuda_backend *cb = self;
    ENTER(cb, err);
    int least = 0, greatest = 0;
    cudaDeviceGetStreamPriorityRange(&least, &greatest);
    cudaStream_t st = NULL;
    /* CUDA counts priorities down: the greatest is the smallest number */
    int rc = fs_cuda_fail(cb, err,
                          (int)cudaStreamCreateWithPriority(&st, cudaStreamNonBlocking, priority > 0 ? greatest : least),
                          "cudaStreamCreateWithPriority");
    *s = (fs_backend_stream *)st;
    return rc;
}

static void cuda_stream_destroy(void *self, fs_backend_stream *s) {
    cuda_backend *cb = self;
    if (!s || (cudaStream_t)s == cb->stream) return;
    cudaSetDevice(cb->device);
    cudaStreamDestroy((cudaStream_t)s);
}

static int cuda_stream_synchronize(void *self, fs_backend_stream *s, fs_error *err) {
    cuda_backend *cb = self;
    LAUNCH(cb, err, "cudaStreamSynchronize", (int)cudaStreamSynchronize(fs_cuda_stream(cb, s)));
}

static int cuda_event_create(void *self, fs_backend_event **e, fs_error *err) {
    cuda_backend *cb = self;
    cudaEvent_t ev = NULL;
    ENTER(cb, err);
    int rc = fs_cuda_fail(cb, err, (int)cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
    *e = (fs_backend_event *)ev;
    return rc;
}

static void cuda_event_destroy(void *self, fs_backend_event *e) {
    cuda_backend *cb = self;
    if (!e) return;
    cudaSetDevice(cb->device);
    cudaEventDestroy((cudaEvent_t)e);
}

static int cuda_event_record(void *self, fs_backend_event *e, fs_backend_stream *s, fs_error *err) {
    cuda_backend *cb = self;
    LAUNCH(cb, err, "cudaEventRecord", (int)cudaEventRecord((cudaEvent_t)e, fs_cuda_stream(cb, s)));
}

static int cuda_stream_wait_event(void *self, fs_backend_stream *s, fs_backend_event *e, fs_error *err) {
    cuda_backend *cb = self;
    LAUNCH(cb, err, "cudaStreamWaitEvent", (int)cudaStreamWaitEvent(fs_cuda_stream(cb, s), (cudaEvent_t)e, 0));
}

static int cuda_event_query(void *self, fs_backend_event *e, int *done, fs_error *err) {
    cuda_backend *cb = self;
    ENTER(cb, err);
    cudaError_t q = cudaEventQuery((cudaEvent_t)e);
    *done = q == cudaSuccess;
    return q == cudaErrorNotReady ? FS_OK : fs_cuda_fail(cb, err, (int)q, "cudaEventQuery");
}

static int cuda_event_synchronize(void *self, fs_backend_event *e, fs_error *err) {
    cuda_backend *cb = self;
    LAUNCH(cb, err, "cudaEventSynchronize", (int)cudaEventSynchronize((cudaEvent_t)e));
}

static int cuda_synchronize(void *self, fs_error *err) {
    cuda_backend *cb = self;
    LAUNCH(cb, err, "cudaDeviceSynchronize", (int)cudaDeviceSynchronize());
}

static fs_backend_stream *cuda_default_stream(void *self) { return (fs_backend_stream *)((cuda_backend *)self)->stream; }

/* ---- ops ---- */

#define OP_DT(cb, err, dtype, name)                          \
    do {                                                     \
        int rc_ = check_dtype((cb), (dtype), (name), (err)); \
        if (rc_) return rc_;                                 \
    } while (0)

static int cuda_bias_backward(void *self, fs_backend_stream *s, float *dbias, const void *dout, size_t N, size_t OC,
                              size_t ldd, int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "bias_backward");
    LAUNCH(cb, err, "bias_backward", fs_cuda_bias_backward(fs_cuda_stream(cb, s), dbias, dout, N, OC, ldd, dtype));
}

static int cuda_encoder_forward(void *self, fs_backend_stream *s, void *out, const int32_t *inp, const float *wte,
                                const float *wpe, size_t B, size_t T, size_t C, size_t pos0, int32_t dtype,
                                fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "encoder_forward");
    LAUNCH(cb, err, "encoder_forward",
           fs_cuda_encoder_forward(fs_cuda_stream(cb, s), out, inp, wte, wpe, B, T, C, pos0, dtype));
}

static int cuda_encoder_backward(void *self, fs_backend_stream *s, float *dwte, float *dwpe, const void *dout,
                                 const int32_t *inp, size_t B, size_t T, size_t C, size_t pos0, int32_t dtype,
                                 fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "encoder_backward");
    ENTER(cb, err);
    cudaStream_t st = fs_cuda_stream(cb, s);
    int rc = fs_cuda_fail(cb, err, fs_cuda_embedding_backward(st, dwte, dout, inp, B * T, C, dtype), "encoder_backward");
    if (rc) return rc;
    return fs_cuda_fail(cb, err, fs_cuda_position_backward(st, dwpe, dout, B, T, C, pos0, dtype), "encoder_backward");
}

static int cuda_layernorm_forward(void *self, fs_backend_stream *s, void *out, float *mean, float *rstd,
                                  const void *inp, const float *weight, const float *bias, size_t N, size_t C,
                                  int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "layernorm_forward");
    LAUNCH(cb, err, "layernorm_forward",
           fs_cuda_layernorm_forward(fs_cuda_stream(cb, s), out, mean, rstd, inp, weight, bias, N, C, dtype));
}

static int cuda_layernorm_backward(void *self, fs_backend_stream *s, void *dinp, float *dweight, float *dbias,
                                   const void *dout, const void *inp, const float *weight, const float *mean,
                                   const float *rstd, size_t N, size_t C, int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "layernorm_backward");
    LAUNCH(cb, err, "layernorm_backward",
           fs_cuda_layernorm_backward(fs_cuda_stream(cb, s), dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C,
                                      dtype));
}

static int cuda_gelu_forward(void *self, fs_backend_stream *s, void *out, const void *inp, size_t n, int32_t dtype,
                             fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "gelu_forward");
    LAUNCH(cb, err, "gelu_forward", fs_cuda_gelu_forward(fs_cuda_stream(cb, s), out, inp, n, dtype));
}

static int cuda_gelu_backward(void *self, fs_backend_stream *s, void *dinp, const void *inp, const void *dout,
                              size_t n, int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "gelu_backward");
    LAUNCH(cb, err, "gelu_backward", fs_cuda_gelu_backward(fs_cuda_stream(cb, s), dinp, inp, dout, n, dtype));
}

static int cuda_residual_forward(void *self, fs_backend_stream *s, void *out, const void *a, const void *b, size_t n,
                                 int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "residual_forward");
    LAUNCH(cb, err, "residual_forward", fs_cuda_residual_forward(fs_cuda_stream(cb, s), out, a, b, n, dtype));
}

static int cuda_residual_backward(void *self, fs_backend_stream *s, void *dacc, const void *dout, size_t n,
                                  int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "residual_backward");
    LAUNCH(cb, err, "residual_backward", fs_cuda_residual_backward(fs_cuda_stream(cb, s), dacc, dout, n, dtype));
}

static int cuda_split_heads(void *self, fs_backend_stream *s, void *q, void *k, void *v, const void *qkv, size_t B,
                            size_t T, size_t H, size_t D, int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "attention_split_heads");
    LAUNCH(cb, err, "attention_split_heads", fs_cuda_split_heads(fs_cuda_stream(cb, s), q, k, v, qkv, B, T, H, D, dtype));
}

static int cuda_split_heads_backward(void *self, fs_backend_stream *s, void *dqkv, const void *dq, const void *dk,
                                     const void *dv, size_t B, size_t T, size_t H, size_t D, int32_t dtype,
                                     fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "attention_split_heads_backward");
    LAUNCH(cb, err, "attention_split_heads_backward",
           fs_cuda_split_heads_backward(fs_cuda_stream(cb, s), dqkv, dq, dk, dv, B, T, H, D, dtype));
}

static int cuda_merge_heads(void *self, fs_backend_stream *s, void *out, const void *y, size_t B, size_t T, size_t H,
                            size_t D, int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "attention_merge_heads");
    LAUNCH(cb, err, "attention_merge_heads", fs_cuda_merge_heads(fs_cuda_stream(cb, s), out, y, B, T, H, D, dtype));
}

static int cuda_merge_heads_backward(void *self, fs_backend_stream *s, void *dy, const void *dout, size_t B, size_t T,
                                     size_t H, size_t D, int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "attention_merge_heads_backward");
    LAUNCH(cb, err, "attention_merge_heads_backward",
           fs_cuda_merge_heads_backward(fs_cuda_stream(cb, s), dy, dout, B, T, H, D, dtype));
}

static int cuda_crossentropy(void *self, fs_backend_stream *s, double *loss, void *dlogits, const void *logits,
                             const int32_t *targets, size_t N, size_t V, size_t ld, float scale, int32_t dtype,
                             fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "crossentropy_forward_backward");
    if (ld < V) return cb->host->error_set(err, FS_ERR_INVALID, "cuda backend: cross-entropy rows of %zu < V = %zu", ld, V);
    LAUNCH(cb, err, "crossentropy_forward_backward",
           fs_cuda_crossentropy(fs_cuda_stream(cb, s), loss, dlogits, logits, targets, N, V, ld, scale, dtype));
}

static int cuda_softmax_forward(void *self, fs_backend_stream *s, float *probs, const void *logits, size_t N,
                                size_t V, float temperature, int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "softmax_forward");
    LAUNCH(cb, err, "softmax_forward", fs_cuda_softmax_forward(fs_cuda_stream(cb, s), probs, logits, N, V, temperature, dtype));
}

static int cuda_adamw_update(void *self, fs_backend_stream *s, float *param, void *param_copy, float *m, float *v,
                             const float *grad, size_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float grad_scale, uint64_t t, int32_t copy_dtype, fs_error *err) {
    cuda_backend *cb = self;
    if (param_copy) OP_DT(cb, err, copy_dtype, "adamw_update (the parameters' copy)");
    /* as compute/update.c: corrections in f32 from powf, once per call */
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t), decay = 1.0f - lr * weight_decay;
    LAUNCH(cb, err, "adamw_update",
           fs_cuda_adamw(fs_cuda_stream(cb, s), param, param_copy, m, v, grad, n, lr, beta1, beta2, eps, decay, bc1, bc2,
                         grad_scale, param_copy ? copy_dtype : FS_DTYPE_F32));
}

static int cuda_sumsq(void *self, fs_backend_stream *s, double *out, const float *x, size_t n, fs_error *err) {
    cuda_backend *cb = self;
    LAUNCH(cb, err, "sumsq", fs_cuda_sumsq(fs_cuda_stream(cb, s), out, x, n));
}

static int cuda_scale(void *self, fs_backend_stream *s, float *x, float scale, size_t n, fs_error *err) {
    cuda_backend *cb = self;
    LAUNCH(cb, err, "scale", fs_cuda_scale(fs_cuda_stream(cb, s), x, scale, n));
}

static int cuda_convert(void *self, fs_backend_stream *s, void *dst, int32_t dst_dtype, const void *src,
                        int32_t src_dtype, size_t n, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dst_dtype, "convert");
    OP_DT(cb, err, src_dtype, "convert");
    LAUNCH(cb, err, "convert", fs_cuda_convert(fs_cuda_stream(cb, s), dst, dst_dtype, src, src_dtype, n));
}

/* Parameters to the device, kernels, tokens back: synchronous. */
static int cuda_sample(void *self, fs_backend_stream *s, int32_t *tokens, const void *logits, size_t N, size_t V,
                       size_t ld, const fs_sample_params *params, int32_t dtype, fs_error *err) {
    cuda_backend *cb = self;
    OP_DT(cb, err, dtype, "sample");
    if (N == 0) return FS_OK;
    ENTER(cb, err);
    cudaStream_t st = fs_cuda_stream(cb, s);
    int any_random = 0, rc = FS_OK;
    for (size_t i = 0; i < N; i++) any_random |= params[i].temperature > 0.0f;
    pthread_mutex_lock(&cb->lock);
    if (cb->params_cap < N) {
        cudaFree(cb->params);
        cudaFree(cb->tokens);
        cb->params = NULL;
        cb->tokens = NULL;
        cb->params_cap = 0;
        rc = fs_cuda_fail(cb, err, (int)cudaMalloc((void **)&cb->params, N * sizeof *params), "sample parameters");
        if (!rc) rc = fs_cuda_fail(cb, err, (int)cudaMalloc((void **)&cb->tokens, N * sizeof *tokens), "sample tokens");
        if (!rc) cb->params_cap = N;
    }
    if (!rc)
        rc = fs_cuda_fail(cb, err, (int)cudaMemcpyAsync(cb->params, params, N * sizeof *params, cudaMemcpyHostToDevice, st),
                          "sample parameters");
    if (!rc) rc = fs_cuda_fail(cb, err, fs_cuda_sample(st, cb->tokens, logits, N, V, ld, cb->params, any_random, dtype),
                               "sample");
    if (!rc)
        rc = fs_cuda_fail(cb, err, (int)cudaMemcpyAsync(tokens, cb->tokens, N * sizeof *tokens, cudaMemcpyDeviceToHost, st),
                          "sample tokens");
    if (!rc) rc = fs_cuda_fail(cb, err, (int)cudaStreamSynchronize(st), "sample");
    pthread_mutex_unlock(&cb->lock);
    return rc;
}

#if FS_CUDA_NCCL
#define COLL(name) fs_nccl_##name
#define COLL_FLAG FS_BACKEND_COLLECTIVES
#else
#define COLL(name) NULL
#define COLL_FLAG 0u
#endif

static const fs_backend_vtable cuda_vtable = {
    .struct_size = sizeof(fs_backend_vtable),
    .flags = FS_BACKEND_ASYNC | FS_BACKEND_BF16 | FS_BACKEND_TF32 | FS_BACKEND_PINNED | COLL_FLAG,
    .device_type = FS_DEVICE_CUDA,
    .device_count = cuda_device_count,
    .create = cuda_create,
    .destroy = cuda_destroy,
    .device_info = cuda_device_info,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .copy = cuda_copy,
    .memset = cuda_memset,
    .stream_create = cuda_stream_create,
    .stream_destroy = cuda_stream_destroy,
    .stream_synchronize = cuda_stream_synchronize,
    .event_create = cuda_event_create,
    .event_destroy = cuda_event_destroy,
    .event_record = cuda_event_record,
    .stream_wait_event = cuda_stream_wait_event,
    .event_query = cuda_event_query,
    .event_synchronize = cuda_event_synchronize,
    .synchronize = cuda_synchronize,
    .default_stream = cuda_default_stream,
    .gemm = fs_cuda_gemm,
    .bias_backward = cuda_bias_backward,
    .encoder_forward = cuda_encoder_forward,
    .encoder_backward = cuda_encoder_backward,
    .layernorm_forward = cuda_layernorm_forward,
    .layernorm_backward = cuda_layernorm_backward,
    .gelu_forward = cuda_gelu_forward,
    .gelu_backward = cuda_gelu_backward,
    .residual_forward = cuda_residual_forward,
    .residual_backward = cuda_residual_backward,
    .attention_split_heads = cuda_split_heads,
    .attention_split_heads_backward = cuda_split_heads_backward,
    .attention_merge_heads = cuda_merge_heads,
    .attention_merge_heads_backward = cuda_merge_heads_backward,
    .crossentropy_forward_backward = cuda_crossentropy,
    .softmax_forward = cuda_softmax_forward,
    .adamw_update = cuda_adamw_update,
    .sumsq = cuda_sumsq,
    .scale = cuda_scale,
    .convert = cuda_convert,
    .sample = cuda_sample,
    .coll_id = COLL(id),
    .coll_create = COLL(create),
    .coll_split = COLL(split),
    .coll_destroy = COLL(destroy),
    .coll_all_reduce = COLL(all_reduce),
    .coll_broadcast = COLL(broadcast),
    .coll_all_gather = COLL(all_gather),
    .coll_reduce_scatter = COLL(reduce_scatter),
    .coll_send = COLL(send),
    .coll_recv = COLL(recv),
    .coll_group = COLL(group),
    .coll_check = COLL(check),
    .coll_abort = COLL(abort),
};

static const fs_plugin_descriptor cuda_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_BACKEND,
    .name = "cuda",
    .version = "1.0.0",
    .summary = "NVIDIA GPUs: cuBLASLt GEMMs (f32, tf32, bf16), kernels for every op, NCCL collectives",
    .params = NULL,
    .n_params = 0,
    .vtable = &cuda_vtable,
    .vtable_size = sizeof(cuda_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(cuda_descriptor)
