/* cpu.c — the `cpu` compute backend: the runtime's own kernels
 * (runtime/compute/, linked in as the static library fs_compute) behind the
 * backend vtable.
 *
 * Memory is host memory, streams and events are tokens (every op has run
 * when it returns), and matmuls go to the host's sgemm: fsrun's OpenBLAS,
 * configured by fsrun (core type, threads) and counted in its matmul
 * statistics, so a model calling through this table computes exactly what
 * it computed calling the kernels directly. The kernels are f32; BF16
 * (mixed precision) is refused with a message naming the fix. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compute/bias.h"
#include "compute/blas.h"
#include "compute/ops.h"
#include "compute/sample.h"
#include "compute/update.h"
#include "fastserve/backend.h"

typedef struct cpu_backend {
    const fs_host_api *host;
    fs_plugin_ctx *ctx;
} cpu_backend;

/* The host that created the first instance: every host of a process is
 * the same fsrun, and its sgemm serves ops.c below. */
static const fs_host_api *g_host;

/* ops.c calls fs_sgemm (compute/blas.h). In fsrun that is compute/blas.c
 * around OpenBLAS; in this plugin it is the host's sgemm, so BLAS is
 * loaded, configured and accounted for once, by fsrun. */
void fs_sgemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
              const float *b, size_t ldb, float beta, float *c, size_t ldc) {
    fs_device cpu = {FS_DEVICE_CPU, 0};
    g_host->sgemm(cpu, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* The one token every stream and event is. */
static char g_token;

static int need_f32(const cpu_backend *cb, int32_t dtype, const char *op, fs_error *err) {
    if (dtype == FS_DTYPE_F32) return FS_OK;
    return cb->host->error_set(err, FS_ERR_UNSUPPORTED,
                               "cpu backend: %s: the CPU kernels compute in f32 (dtype %d asked); bf16 mixed "
                               "precision needs [run] device = cuda",
                               op, (int)dtype);
}

/* ---- the device ---- */

static int cpu_device_count(int *count, fs_error *err) {
    (void)err;
    *count = 1;
    return FS_OK;
}

static int cpu_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_backend_config *cfg,
                      fs_error *err) {
    *self = NULL;
    if (cfg->device.type != FS_DEVICE_CPU || cfg->device.index != 0)
        return host->error_set(err, FS_ERR_INVALID, "cpu backend: device %d:%d is not the CPU", (int)cfg->device.type,
                               (int)cfg->device.index);
    cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb) return host->error_set(err, FS_ERR_NOMEM, "cpu backend: out of memory");
    cb->host = host;
    cb->ctx = ctx;
    if (!g_host) g_host = host;
    *self = cb;
    return FS_OK;
}

static void cpu_destroy(void *self) { free(self); }

static int cpu_device_info(void *self, fs_backend_device_info *info, fs_error *err) {
    cpu_backend *cb = self;
    (void)err;
    memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info;
    int threads = cb->host->n_threads();
    snprintf(info->name, sizeof info->name, "CPU (%d threads)", threads);
    long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    info->total_bytes = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
    info->free_bytes = avail > 0 && page > 0 ? (size_t)avail * (size_t)page : 0;
    info->multiprocessors = threads;
    return FS_OK;
}

/* ---- memory ---- */

static int cpu_alloc(void *self, void **ptr, size_t bytes, int32_t mem, fs_error *err) {
    cpu_backend *cb = self;
    (void)mem; /* host memory is all one kind here */
    *ptr = NULL;
    if (posix_memalign(ptr, 256, bytes ? (bytes + 255) & ~(size_t)255 : 256) != 0)
        return cb->host->error_set(err, FS_ERR_NOMEM, "cpu backend: out of memory for %zu bytes", bytes);
    return FS_OK;
}

static void cpu_free(void *self, void *ptr, int32_t mem) {
    (void)self, (void)mem;
    free(ptr);
}

static int cpu_copy(void *self, fs_backend_stream *s, void *dst, const void *src, size_t bytes, int32_t kind,
                    fs_error *err) {
    cpu_backend *cb = self;
    (void)s;
    if (kind < FS_COPY_HOST_TO_DEVICE || kind > FS_COPY_DEVICE_TO_DEVICE)
        return cb->host->error_set(err, FS_ERR_INVALID, "cpu backend: copy kind %d", (int)kind);
    if (bytes) memmove(dst, src, bytes);
    return FS_OK;
}

static int cpu_memset(void *self, fs_backend_stream *s, void *ptr, int value, size_t bytes, fs_error *err) {
    (void)self, (void)s, (void)err;
    if (bytes) memset(ptr, value, bytes);
    return FS_OK;
}

/* ---- streams and events: work is done when a call returns ---- */

static int cpu_stream_create(void *self, fs_backend_stream **s, int32_t priority, fs_error *err) {
    (void)self, (void)priority, (void)err;
    *s = (fs_backend_stream *)&g_token;
    return FS_OK;
}
static void cpu_stream_destroy(void *self, fs_backend_stream *s) { (void)self, (void)s; }
static int cpu_stream_synchronize(void *self, fs_backend_stream *s, fs_error *err) {
    (void)self, (void)s, (void)err;
    return FS_OK;
}
static int cpu_event_create(void *self, fs_backend_event **e, fs_error *err) {
    (void)self, (void)err;
    *e = (fs_backend_event *)&g_token;
    return FS_OK;
}
static void cpu_event_destroy(void *self, fs_backend_event *e) { (void)self, (void)e; }
static int cpu_event_record(void *self, fs_backend_event *e, fs_backend_stream *s, fs_error *err) {
    (void)self, (void)e, (void)s, (void)err;
    return FS_OK;
}
static int cpu_stream_wait_event(void *self, fs_backend_stream *s, fs_backend_event *e, fs_error *err) {
    (void)self, (void)s, (void)e, (void)err;
    return FS_OK;
}
static int cpu_event_query(void *self, fs_backend_event *e, int *done, fs_error *err) {
    (void)self, (void)e, (void)err;
    *done = 1;
    return FS_OK;
}
static int cpu_event_synchronize(void *self, fs_backend_event *e, fs_error *err) {
    (void)self, (void)e, (void)err;
    return FS_OK;
}
static int cpu_synchronize(void *self, fs_error *err) {
    (void)self, (void)err;
    return FS_OK;
}
static fs_backend_stream *cpu_default_stream(void *self) {
    (void)self;
    return (fs_backend_stream *)&g_token;
}

/* ---- GEMM ---- */

/* One product of the batch, bias included: with beta 0 the rows start as
 * the bias and the product adds to them (ops.c's matmul_forward). */
static void gemm_one(const fs_gemm_args *g, const float *a, const float *b, float *c) {
    float beta = g->beta;
    if (g->bias && beta == 0.0f) {
        for (size_t i = 0; i < g->m; i++) memcpy(c + i * g->ldc, g->bias, g->n * sizeof(float));
        beta = 1.0f;
    }
    fs_sgemm(g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha, a, g->lda, b, g->ldb, beta, c, g->ldc);
    if (g->bias && g->beta != 0.0f)
        for (size_t i = 0; i < g->m; i++)
            for (size_t j = 0; j < g->n; j++) c[i * g->ldc + j] += g->bias[j];
}

static int cpu_gemm(void *self, fs_backend_stream *s, const fs_gemm_args *g, fs_error *err) {
    cpu_backend *cb = self;
    (void)s;
    int rc;
    if ((rc = need_f32(cb, g->ab_dtype, "gemm", err)) || (rc = need_f32(cb, g->c_dtype, "gemm", err))) return rc;
    if (g->bias && FS_HAS_MEMBER(g, g->struct_size, fs_gemm_args, bias_dtype) &&
        (rc = need_f32(cb, g->bias_dtype, "gemm bias", err)))
        return rc;
    size_t batch = g->batch ? g->batch : 1;
    for (size_t i = 0; i < batch; i++)
        gemm_one(g, (const float *)g->a + i * g->stride_a, (const float *)g->b + i * g->stride_b,
                 (float *)g->c + i * g->stride_c);
    return FS_OK;
}

static int cpu_bias_backward(void *self, fs_backend_stream *s, float *dbias, const void *dout, size_t N, size_t OC,
                             size_t ldd, int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "bias_backward", err);
    if (!rc) bias_backward(dbias, dout, N, OC, ldd);
    return rc;
}

/* ---- the model's ops: ops.c ---- */

static int cpu_encoder_forward(void *self, fs_backend_stream *s, void *out, const int32_t *inp, const float *wte,
                               const float *wpe, size_t B, size_t T, size_t C, size_t pos0, int32_t dtype,
                               fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "encoder_forward", err);
    if (!rc) encoder_forward(out, inp, wte, wpe, B, T, C, pos0);
    return rc;
}

static int cpu_encoder_backward(void *self, fs_backend_stream *s, float *dwte, float *dwpe, const void *dout,
                                const int32_t *inp, size_t B, size_t T, size_t C, size_t pos0, int32_t dtype,
                                fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "encoder_backward", err);
    if (!rc) encoder_backward(dwte, dwpe, dout, inp, B, T, C, pos0);
    return rc;
}

static int cpu_layernorm_forward(void *self, fs_backend_stream *s, void *out, float *mean, float *rstd,
                                 const void *inp, const float *weight, const float *bias, size_t N, size_t C,
                                 int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "layernorm_forward", err);
    if (!rc) layernorm_forward(out, mean, rstd, inp, weight, bias, N, C);
    return rc;
}

static int cpu_layernorm_backward(void *self, fs_backend_stream *s, void *dinp, float *dweight, float *dbias,
                                  const void *dout, const void *inp, const float *weight, const float *mean,
                                  const float *rstd, size_t N, size_t C, int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "layernorm_backward", err);
    if (!rc) layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    return rc;
}

static int cpu_gelu_forward(void *self, fs_backend_stream *s, void *out, const void *inp, size_t n, int32_t dtype,
                            fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "gelu_forward", err);
    if (!rc) gelu_forward(out, inp, n);
    return rc;
}

static int cpu_gelu_backward(void *self, fs_backend_stream *s, void *dinp, const void *inp, const void *dout,
                             size_t n, int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "gelu_backward", err);
    if (!rc) gelu_backward(dinp, inp, dout, n);
    return rc;
}

static int cpu_residual_forward(void *self, fs_backend_stream *s, void *out, const void *a, const void *b, size_t n,
                                int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "residual_forward", err);
    if (!rc) residual_forward(out, a, b, n);
    return rc;
}

static int cpu_residual_backward(void *self, fs_backend_stream *s, void *dacc, const void *dout, size_t n,
                                 int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "residual_backward", err);
    if (!rc) add_inplace(dacc, dout, n);
    return rc;
}

static int cpu_split_heads(void *self, fs_backend_stream *s, void *q, void *k, void *v, const void *qkv, size_t B,
                           size_t T, size_t H, size_t D, int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "attention_split_heads", err);
    if (!rc) attention_split_heads(q, k, v, qkv, B, T, H, D);
    return rc;
}

static int cpu_split_heads_backward(void *self, fs_backend_stream *s, void *dqkv, const void *dq, const void *dk,
                                    const void *dv, size_t B, size_t T, size_t H, size_t D, int32_t dtype,
                                    fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "attention_split_heads_backward", err);
    if (!rc) attention_split_heads_backward(dqkv, dq, dk, dv, B, T, H, D);
    return rc;
}

static int cpu_merge_heads(void *self, fs_backend_stream *s, void *out, const void *y, size_t B, size_t T, size_t H,
                           size_t D, int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "attention_merge_heads", err);
    if (!rc) attention_merge_heads(out, y, B, T, H, D);
    return rc;
}

static int cpu_merge_heads_backward(void *self, fs_backend_stream *s, void *dy, const void *dout, size_t B, size_t T,
                                    size_t H, size_t D, int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "attention_merge_heads_backward", err);
    if (!rc) attention_merge_heads_backward(dy, dout, B, T, H, D);
    return rc;
}

static int cpu_crossentropy(void *self, fs_backend_stream *s, double *loss, void *dlogits, const void *logits,
                            const int32_t *targets, size_t N, size_t V, size_t ld, float scale, int32_t dtype,
                            fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "crossentropy_forward_backward", err);
    if (rc) return rc;
    /* ops.c writes each row's gradient over what it reads for the loss: in
     * place, the loss comes from a read-only pass first */
    int in_place = dlogits == logits;
    if (ld == V) {
        double total = crossentropy_softmax_forward_backward(in_place ? NULL : dlogits, logits, targets, N, V, scale);
        if (in_place) crossentropy_softmax_forward_backward(dlogits, logits, targets, N, V, scale);
        *loss = total;
        return FS_OK;
    }
    double total = 0.0; /* padded rows: one row at a time */
    for (size_t n = 0; n < N; n++) {
        const float *z = (const float *)logits + n * ld;
        float *d = dlogits ? (float *)dlogits + n * ld : NULL;
        total += crossentropy_softmax_forward_backward(in_place ? NULL : d, z, targets + n, 1, V, scale);
        if (in_place) crossentropy_softmax_forward_backward(d, z, targets + n, 1, V, scale);
        if (d) memset(d + V, 0, (ld - V) * sizeof *d); /* the pad (backend.h) */
    }
    *loss = total;
    return FS_OK;
}

static int cpu_softmax_forward(void *self, fs_backend_stream *s, float *probs, const void *logits, size_t N,
                               size_t V, float temperature, int32_t dtype, fs_error *err) {
    (void)s;
    int rc = need_f32(self, dtype, "softmax_forward", err);
    if (!rc) softmax_forward(probs, logits, N, V, temperature);
    return rc;
}

/* ---- optimizer: compute/update.c ---- */

static int cpu_adamw_update(void *self, fs_backend_stream *s, float *param, void *param_copy, float *m, float *v,
                            const float *grad, size_t n, float lr, float beta1, float beta2, float eps,
                            float weight_decay, float grad_scale, uint64_t t, int32_t copy_dtype, fs_error *err) {
    (void)s;
    if (param_copy) {
        int rc = need_f32(self, copy_dtype, "adamw_update (the parameters' copy)", err);
        if (rc) return rc;
    }
    adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t);
    if (param_copy && param_copy != param) memcpy(param_copy, param, n * sizeof(float));
    return FS_OK;
}

static int cpu_sumsq(void *self, fs_backend_stream *s, double *out, const float *x, size_t n, fs_error *err) {
    (void)self, (void)s, (void)err;
    *out += sumsq_forward(x, n);
    return FS_OK;
}

static int cpu_scale(void *self, fs_backend_stream *s, float *x, float scale, size_t n, fs_error *err) {
    (void)self, (void)s, (void)err;
    scale_inplace(x, scale, n);
    return FS_OK;
}

static int cpu_convert(void *self, fs_backend_stream *s, void *dst, int32_t dst_dtype, const void *src,
                       int32_t src_dtype, size_t n, fs_error *err) {
    (void)s;
    int rc;
    if ((rc = need_f32(self, dst_dtype, "convert", err)) || (rc = need_f32(self, src_dtype, "convert", err)))
        return rc;
    if (dst != src && n) memmove(dst, src, n * sizeof(float));
    return FS_OK;
}

/* ---- sampling: compute/sample.c, row by row ---- */

static int cpu_sample(void *self, fs_backend_stream *s, int32_t *tokens, const void *logits, size_t N, size_t V,
                      size_t ld, const fs_sample_params *params, int32_t dtype, fs_error *err) {
    cpu_backend *cb = self;
    (void)s;
    int rc = need_f32(cb, dtype, "sample", err);
    if (rc) return rc;
    float *work = malloc(2 * (V ? V : 1) * sizeof(float));
    if (!work) return cb->host->error_set(err, FS_ERR_NOMEM, "cpu backend: sample: out of memory");
    for (size_t n = 0; n < N; n++) {
        const fs_sample_params *p = &params[n];
        tokens[n] = sample_forward((const float *)logits + n * ld, V, p->temperature, p->top_k, p->top_p, p->u, work);
    }
    free(work);
    return FS_OK;
}

static const fs_backend_vtable cpu_vtable = {
    .struct_size = sizeof(fs_backend_vtable),
    .flags = 0,
    .device_type = FS_DEVICE_CPU,
    .device_count = cpu_device_count,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .device_info = cpu_device_info,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .memset = cpu_memset,
    .stream_create = cpu_stream_create,
    .stream_destroy = cpu_stream_destroy,
    .stream_synchronize = cpu_stream_synchronize,
    .event_create = cpu_event_create,
    .event_destroy = cpu_event_destroy,
    .event_record = cpu_event_record,
    .stream_wait_event = cpu_stream_wait_event,
    .event_query = cpu_event_query,
    .event_synchronize = cpu_event_synchronize,
    .synchronize = cpu_synchronize,
    .default_stream = cpu_default_stream,
    .gemm = cpu_gemm,
    .bias_backward = cpu_bias_backward,
    .encoder_forward = cpu_encoder_forward,
    .encoder_backward = cpu_encoder_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .residual_forward = cpu_residual_forward,
    .residual_backward = cpu_residual_backward,
    .attention_split_heads = cpu_split_heads,
    .attention_split_heads_backward = cpu_split_heads_backward,
    .attention_merge_heads = cpu_merge_heads,
    .attention_merge_heads_backward = cpu_merge_heads_backward,
    .crossentropy_forward_backward = cpu_crossentropy,
    .softmax_forward = cpu_softmax_forward,
    .adamw_update = cpu_adamw_update,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .convert = cpu_convert,
    .sample = cpu_sample,
};

static const fs_plugin_descriptor cpu_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_BACKEND,
    .name = "cpu",
    .version = "1.0.0",
    .summary = "the CPU: fsrun's OpenBLAS matmuls and OpenMP kernels, f32",
    .params = NULL,
    .n_params = 0,
    .vtable = &cpu_vtable,
    .vtable_size = sizeof(cpu_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(cpu_descriptor)
