/* host.c — the fs_host_api table handed to plugins, logging, memory. */
#include "core/host.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compute/blas.h"
#include "compute/gemm_rows.h"

static int g_log_level = FS_LOG_INFO;

void fs_log_set_level(int level) { g_log_level = level; }

static void vlog(int level, const char *who, const char *fmt, va_list ap) {
    if (level < g_log_level) return;
    static const char *names[] = {"debug", "info", "warning", "error"};
    const char *lv = names[level < 0 ? 0 : level > 3 ? 3 : level];
    if (who && *who)
        fprintf(stderr, "fsrun: %s: %s: ", who, lv);
    else
        fprintf(stderr, "fsrun: %s: ", lv);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void fs_log(int level, const char *who, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(level, who, fmt, ap);
    va_end(ap);
}

int fs_error_set(fs_error *err, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fs_error_vset(err, status, fmt, ap);
    va_end(ap);
    return status;
}

double fs_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void *fs_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 64;
    if (posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63) != 0) return NULL;
    return p;
}

void *fs_calloc(size_t bytes) {
    void *p = fs_alloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void fs_free(void *p) { free(p); }

/* ---- the host API as plugins see it ---- */

static int64_t api_config_int(const fs_plugin_ctx *ctx, const char *key) {
    return ctx && ctx->config ? fs_config_int(ctx->config, key) : 0;
}
static double api_config_float(const fs_plugin_ctx *ctx, const char *key) {
    return ctx && ctx->config ? fs_config_float(ctx->config, key) : 0.0;
}
static int api_config_bool(const fs_plugin_ctx *ctx, const char *key) {
    return ctx && ctx->config ? fs_config_bool(ctx->config, key) : 0;
}
static const char *api_config_string(const fs_plugin_ctx *ctx, const char *key) {
    return ctx && ctx->config ? fs_config_string(ctx->config, key) : NULL;
}
static size_t api_config_int_list(const fs_plugin_ctx *ctx, const char *key, int64_t *out, size_t cap) {
    return ctx && ctx->config ? fs_config_int_list(ctx->config, key, out, cap) : 0;
}
static const char *api_config_where(const fs_plugin_ctx *ctx, const char *key) {
    return ctx && ctx->config ? fs_config_where(ctx->config, key) : key;
}

static void api_log(const fs_plugin_ctx *ctx, int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(level, ctx ? ctx->plugin_name : "plugin", fmt, ap);
    va_end(ap);
}

/* The device backend (fs_host_set_backend): process-wide, like the device. */
static struct {
    const fs_backend_vtable *vt;
    void *self;
    int32_t index, compute;
} g_device;

void fs_host_set_backend(const fs_backend_vtable *vt, void *self, int32_t index, int32_t compute) {
    g_device.vt = vt;
    g_device.self = vt ? self : NULL;
    g_device.index = index;
    g_device.compute = compute;
}

const void *fs_host_backend(void) { return g_device.self; }

/* The backend for tensors on `dev`, or NULL (the CPU, or no backend there). */
static const fs_backend_vtable *device_backend(fs_device dev) {
    if (dev.type == FS_DEVICE_CPU || !g_device.vt) return NULL;
    if (g_device.vt->device_type != dev.type || g_device.index != dev.index) return NULL;
    return g_device.vt;
}

static void *api_alloc(fs_device dev, size_t bytes) {
    if (dev.type == FS_DEVICE_CPU) return fs_calloc(bytes);
    const fs_backend_vtable *vt = device_backend(dev);
    void *p = NULL;
    fs_error err = {0};
    if (!vt || vt->alloc(g_device.self, &p, bytes, FS_MEM_DEVICE, &err)) return NULL;
    /* zero-filled like host memory: queued before anything that uses it */
    if (vt->memset(g_device.self, NULL, p, 0, bytes, &err)) {
        vt->free(g_device.self, p, FS_MEM_DEVICE);
        return NULL;
    }
    return p;
}

static void api_free(fs_device dev, void *p) {
    if (dev.type == FS_DEVICE_CPU) {
        fs_free(p);
        return;
    }
    const fs_backend_vtable *vt = device_backend(dev);
    if (vt && p) vt->free(g_device.self, p, FS_MEM_DEVICE);
}

static void *api_device_stream(fs_device dev) {
    const fs_backend_vtable *vt = device_backend(dev);
    return vt ? (void *)vt->default_stream(g_device.self) : NULL;
}

static int api_n_threads(void) { return fs_threads_get(); }

static int api_sgemm(fs_device dev, int ta, int tb, size_t m, size_t n, size_t k, float alpha, const float *a,
                     size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc) {
    if (dev.type == FS_DEVICE_CPU) {
        fs_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return FS_OK;
    }
    const fs_backend_vtable *vt = device_backend(dev);
    if (!vt) return FS_ERR_UNSUPPORTED;
    fs_gemm_args g = {.struct_size = sizeof g, .c = c, .a = a, .b = b, .c_dtype = FS_DTYPE_F32,
                      .ab_dtype = FS_DTYPE_F32, .trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k,
                      .lda = lda, .ldb = ldb, .ldc = ldc, .batch = 1, .alpha = alpha, .beta = beta,
                      .compute = g_device.compute};
    fs_error err = {0};
    return vt->gemm(g_device.self, NULL, &g, &err);
}

static int api_sgemm_rows(fs_device dev, int tb, size_t m, size_t n, size_t k, const float *a, size_t lda,
                          const float *b, size_t ldb, const float *bias, float *c, size_t ldc) {
    if (dev.type != FS_DEVICE_CPU) return FS_ERR_UNSUPPORTED;
    if (tb)
        fs_gemm_rows_nt(c, ldc, a, lda, b, ldb, bias, m, n, k);
    else
        fs_gemm_rows_nn(c, ldc, a, lda, b, ldb, bias, m, n, k);
    return FS_OK;
}

static int api_register_param(fs_plugin_ctx *ctx, const char *name, int32_t ndim, const size_t *shape,
                              int weight_decay, fs_tensor *param, fs_tensor *grad, fs_error *err) {
    fs_host *h = ctx->host;
    if (ndim < 1 || ndim > FS_TENSOR_MAX_DIMS)
        return fs_error_set(err, FS_ERR_INVALID, "%s: parameter '%s': ndim %d outside 1..%d", ctx->scope, name,
                            (int)ndim, FS_TENSOR_MAX_DIMS);
    if (!h->place_param)
        return fs_error_set(err, FS_ERR_INVALID, "%s: parameter '%s': this instance has no model to hold it",
                            ctx->scope, name);
    char full[256];
    snprintf(full, sizeof full, "%s.%s", ctx->scope, name);
    float *p, *g;
    fs_error perr = {0};
    int rc = h->place_param(h->place_arg, full, ndim, shape, weight_decay, &p, &g, &perr);
    if (rc) return fs_error_set(err, rc, "%s: %s", ctx->scope, perr.message);
    *param = fs_tensor_cpu_f32(p, ndim, 0, 0, 0, 0);
    *grad = fs_tensor_cpu_f32(g, ndim, 0, 0, 0, 0);
    for (int i = 0; i < ndim; i++) param->shape[i] = grad->shape[i] = shape[i];
    return FS_OK;
}

static uint64_t api_seed(const fs_plugin_ctx *ctx) {
    /* FNV-1a of the scope mixed into the run seed: stable across runs and
     * different for every instance. */
    uint64_t x = 1469598103934665603ull;
    for (const char *s = ctx->scope; *s; s++) x = (x ^ (unsigned char)*s) * 1099511628211ull;
    return x ^ (ctx->host->seed * 0x9E3779B97F4A7C15ull);
}

static int api_error_set(fs_error *err, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fs_error_vset(err, status, fmt, ap);
    va_end(ap);
    return status;
}

void fs_host_init(fs_host *h, uint64_t seed) {
    memset(h, 0, sizeof *h);
    h->seed = seed;
    h->api = (fs_host_api){
        .abi_version = FS_ABI_VERSION,
        .struct_size = sizeof(fs_host_api),
        .config_int = api_config_int,
        .config_float = api_config_float,
        .config_bool = api_config_bool,
        .config_string = api_config_string,
        .config_int_list = api_config_int_list,
        .config_where = api_config_where,
        .log = api_log,
        .alloc = api_alloc,
        .free = api_free,
        .parallel_for = fs_parallel_for,
        .n_threads = api_n_threads,
        .sgemm = api_sgemm,
        .register_param = api_register_param,
        .seed = api_seed,
        .error_set = api_error_set,
        .sgemm_rows = api_sgemm_rows,
        .device_stream = api_device_stream,
    };
}

void fs_plugin_ctx_init(fs_plugin_ctx *ctx, fs_host *h, const fs_config *cfg, const char *scope,
                        const char *plugin_name) {
    memset(ctx, 0, sizeof *ctx);
    ctx->host = h;
    ctx->config = cfg;
    snprintf(ctx->scope, sizeof ctx->scope, "%s", scope);
    ctx->plugin_name = plugin_name;
}
