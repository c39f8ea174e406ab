/* check_window.c — numerical check of the example_window plugin, without
 * fsrun: loads the plugin, hands it a minimal host API, and compares it
 * with an explicit dense-mask computation in double precision.
 *
 *   check_window ./fsplugin_attention_example_window.so
 *
 * For several windows (1 up to beyond T) it checks
 *   - forward against masked softmax(Q K^T / sqrt(D)) V,
 *   - backward (dQ, dK, dV) against central finite differences of that
 *     reference (so the gradients are exact, not just plausible),
 *   - decode, token by token, against forward (ring cache sized for the
 *     context and the plugin's bounded size),
 *   - scores() against the reference probabilities.
 * A template for testing any attention plugin; exit status 0 = all good. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fastserve/attention.h>

/* ---- a minimal host ---- */

typedef struct fake_ctx {
    int64_t window;
} fake_ctx;

static int64_t cfg_int(const fs_plugin_ctx *ctx, const char *key) {
    return strcmp(key, "window") == 0 ? ((const fake_ctx *)(const void *)ctx)->window : 0;
}
/* the members this plugin does not use */
static double cfg_float(const fs_plugin_ctx *ctx, const char *key) { return (void)ctx, (void)key, 0.0; }
static int cfg_bool(const fs_plugin_ctx *ctx, const char *key) { return (void)ctx, (void)key, 0; }
static const char *cfg_string(const fs_plugin_ctx *ctx, const char *key) { return (void)ctx, (void)key, ""; }
static size_t cfg_int_list(const fs_plugin_ctx *ctx, const char *key, int64_t *out, size_t cap) {
    return (void)ctx, (void)key, (void)out, (void)cap, 0;
}
static const char *cfg_where(const fs_plugin_ctx *ctx, const char *key) {
    return (void)ctx, (void)key, "check_window";
}
static void host_log(const fs_plugin_ctx *ctx, int level, const char *fmt, ...) { (void)ctx, (void)level, (void)fmt; }
static void *host_alloc(fs_device device, size_t bytes) {
    void *p = NULL;
    (void)device;
    return posix_memalign(&p, 64, bytes ? (bytes + 63) / 64 * 64 : 64) ? NULL : p;
}
static void host_free(fs_device device, void *p) { (void)device, free(p); }
/* uneven chunks, to catch a plugin that assumes it gets all of [0, n) */
static void host_parallel_for(size_t n, size_t grain, fs_parallel_fn fn, void *arg) {
    (void)grain;
    for (size_t b = 0; b < n; b += 3) fn(arg, b, b + 3 < n ? b + 3 : n);
}
static int host_n_threads(void) { return 1; }
/* plain loops: C = alpha * op(A) op(B) + beta * C, row-major */
static int host_sgemm(fs_device device, int ta, int tb, size_t m, size_t n, size_t k, float alpha, const float *a,
                      size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc) {
    (void)device;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (size_t p = 0; p < k; p++)
                s += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
            c[i * ldc + j] = alpha * s + (beta != 0.0f ? beta * c[i * ldc + j] : 0.0f);
        }
    return FS_OK;
}
static uint64_t host_seed(const fs_plugin_ctx *ctx) { return (void)ctx, 42; }
static int host_error_set(fs_error *err, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fs_error_vset(err, status, fmt, ap);
    va_end(ap);
    return status;
}

static int host_register_param(fs_plugin_ctx *ctx, const char *name, int32_t ndim, const size_t *shape,
                               int weight_decay, fs_tensor *param, fs_tensor *grad, fs_error *err) {
    (void)ctx, (void)ndim, (void)shape, (void)weight_decay, (void)param, (void)grad;
    return host_error_set(err, FS_ERR_UNSUPPORTED, "check_window: no trainable parameters here (%s)", name);
}

static const fs_host_api host = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_host_api),
    .config_int = cfg_int,
    .config_float = cfg_float,
    .config_bool = cfg_bool,
    .config_string = cfg_string,
    .config_int_list = cfg_int_list,
    .config_where = cfg_where,
    .log = host_log,
    .alloc = host_alloc,
    .free = host_free,
    .parallel_for = host_parallel_for,
    .n_threads = host_n_threads,
    .sgemm = host_sgemm,
    .register_param = host_register_param,
    .seed = host_seed,
    .error_set = host_error_set,
};

/* ---- the reference: explicit dense mask, double precision ---- */

enum { B = 2, H = 2, T = 11, D = 4, N = B * H * T * D };

static int visible(size_t t, size_t j, int64_t window) { return j <= t && (int64_t)(t - j) < window; }

/* probs (B*H, T, T) and out (N); returns sum(out * r) */
static double reference(const double *q, const double *k, const double *v, const double *r, int64_t window,
                        double *probs) {
    double loss = 0.0, scale = 1.0 / sqrt((double)D);
    for (size_t bh = 0; bh < B * H; bh++)
        for (size_t t = 0; t < T; t++) {
            double s[T], mx = -INFINITY, sum = 0.0;
            for (size_t j = 0; j < T; j++) {
                s[j] = 0.0;
                if (!visible(t, j, window)) continue;
                for (size_t c = 0; c < D; c++) s[j] += q[(bh * T + t) * D + c] * k[(bh * T + j) * D + c];
                s[j] *= scale;
                mx = s[j] > mx ? s[j] : mx;
            }
            for (size_t j = 0; j < T; j++) {
                s[j] = visible(t, j, window) ? exp(s[j] - mx) : 0.0;
                sum += s[j];
            }
            for (size_t j = 0; j < T; j++) {
                s[j] /= sum;
                if (probs) probs[(bh * T + t) * T + j] = s[j];
            }
            for (size_t c = 0; c < D; c++) {
                double o = 0.0;
                for (size_t j = 0; j < T; j++) o += s[j] * v[(bh * T + j) * D + c];
                loss += o * r[(bh * T + t) * D + c];
            }
        }
    return loss;
}

static double rel_err(double got, double want) { return fabs(got - want) / (1.0 + fabs(want)); }

static fs_tensor bhtd(float *p, size_t t) { return fs_tensor_cpu_f32(p, 4, B, H, t, D); }

/* Largest relative error of the gradients (dq, dk, dv) against central
 * differences of the reference loss in each input element. */
static double gradient_error(double *qd, double *kd, double *vd, const double *rd, int64_t window, const float *dq,
                             const float *dk, const float *dv) {
    double err = 0.0, h = 1e-5;
    double *xs[3] = {qd, kd, vd};
    const float *gs[3] = {dq, dk, dv};
    for (int x = 0; x < 3; x++)
        for (size_t i = 0; i < N; i++) {
            double keep = xs[x][i];
            xs[x][i] = keep + h;
            double lp = reference(qd, kd, vd, rd, window, NULL);
            xs[x][i] = keep - h;
            double lm = reference(qd, kd, vd, rd, window, NULL);
            xs[x][i] = keep;
            double e = rel_err(gs[x][i], (lp - lm) / (2 * h));
            err = e > err ? e : err;
        }
    return err;
}

/* Decoding q, k, v one token at a time, with a cache sized for `context`
 * (0: the plugin's bounded size), must give forward's out; *max_err gets
 * the largest difference. Returns 1 if a call fails. */
static int decode_error(const fs_attention_vtable *vt, void *self, size_t context, const float *q, const float *k,
                        const float *v, const float *out, double *max_err) {
    fs_error err = {0};
    fs_device cpu = {FS_DEVICE_CPU, 0};
    void *cache = host_alloc(cpu, vt->cache_bytes(self, B, context));
    if (!cache || vt->cache_reset(self, cache, B, context, &err)) {
        fprintf(stderr, "cache_reset: %s\n", err.message);
        host_free(cpu, cache);
        return 1;
    }
    for (size_t t = 0; t < T; t++) {
        float qt[B * H * D], kt[B * H * D], vv[B * H * D], ot[B * H * D];
        for (size_t bh = 0; bh < B * H; bh++) {
            memcpy(qt + bh * D, q + (bh * T + t) * D, D * sizeof(float));
            memcpy(kt + bh * D, k + (bh * T + t) * D, D * sizeof(float));
            memcpy(vv + bh * D, v + (bh * T + t) * D, D * sizeof(float));
        }
        fs_attention_decode_args da;
        memset(&da, 0, sizeof da);
        da.struct_size = sizeof da;
        da.B = B;
        da.pos = t;
        da.q = bhtd(qt, 1), da.k = bhtd(kt, 1), da.v = bhtd(vv, 1), da.out = bhtd(ot, 1);
        da.token = -1;
        if (vt->decode(self, cache, &da, &err)) {
            fprintf(stderr, "decode %zu: %s\n", t, err.message);
            host_free(cpu, cache);
            return 1;
        }
        for (size_t bh = 0; bh < B * H; bh++)
            for (size_t i = 0; i < D; i++) {
                double e = fabs(ot[bh * D + i] - out[(bh * T + t) * D + i]);
                *max_err = e > *max_err ? e : *max_err;
            }
    }
    host_free(cpu, cache);
    return 0;
}

/* scores() of forward `a` must be the reference probabilities, exactly 0
 * outside the window; *max_err gets the largest difference. */
static int scores_error(const fs_attention_vtable *vt, void *self, const fs_attention_args *a, const double *probs,
                        double *max_err) {
    static float scores[B * H * T * T];
    fs_error err = {0};
    fs_attention_scores_args sa = {sizeof sa, a, 1, fs_tensor_cpu_f32(scores, 4, B, H, T, T)};
    if (vt->scores(self, &sa, &err)) {
        fprintf(stderr, "scores: %s\n", err.message);
        return 1;
    }
    for (size_t i = 0; i < B * H * T * T; i++) {
        double e = fabs(scores[i] - probs[i]);
        if (probs[i] == 0.0 && scores[i] != 0.0) e = 1.0;
        *max_err = e > *max_err ? e : *max_err;
    }
    return 0;
}

static int check_window(const fs_attention_vtable *vt, int64_t window) {
    static float q[N], k[N], v[N], out[N], r[N], dq[N], dk[N], dv[N];
    static double qd[N], kd[N], vd[N], rd[N], probs[B * H * T * T];
    srand((unsigned)window);
    for (size_t i = 0; i < N; i++) {
        qd[i] = q[i] = (float)(2.0 * rand() / RAND_MAX - 1.0) * 2.0f;
        kd[i] = k[i] = (float)(2.0 * rand() / RAND_MAX - 1.0) * 2.0f;
        vd[i] = v[i] = (float)(2.0 * rand() / RAND_MAX - 1.0);
        rd[i] = r[i] = (float)(2.0 * rand() / RAND_MAX - 1.0);
        dq[i] = dk[i] = dv[i] = 1e6f; /* backward must overwrite, not accumulate */
    }
    fake_ctx ctx = {window};
    fs_attention_config cfg = {sizeof cfg, 0, H, D, H * D, T, 1, {FS_DEVICE_CPU, 0}, FS_DTYPE_F32};
    fs_error err = {0};
    void *self = NULL;
    if (vt->create(&self, &host, (fs_plugin_ctx *)(void *)&ctx, &cfg, &err)) {
        fprintf(stderr, "window %lld: create: %s\n", (long long)window, err.message);
        return 1;
    }
    void *saved = host_alloc(cfg.device, vt->saved_bytes(self, B, T));
    fs_attention_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.B = B;
    a.T = T;
    a.q = bhtd(q, T), a.k = bhtd(k, T), a.v = bhtd(v, T), a.out = bhtd(out, T);
    a.saved = saved;
    a.dout = bhtd(r, T), a.dq = bhtd(dq, T), a.dk = bhtd(dk, T), a.dv = bhtd(dv, T);
    if (vt->forward(self, &a, &err) || vt->backward(self, &a, &err)) {
        fprintf(stderr, "window %lld: %s\n", (long long)window, err.message);
        return 1;
    }
    /* forward: the loss sum(out * r) against the reference's */
    double loss = 0.0;
    for (size_t i = 0; i < N; i++) loss += (double)out[i] * r[i];
    double fwd_err = rel_err(loss, reference(qd, kd, vd, rd, window, probs));
    double grad_err = gradient_error(qd, kd, vd, rd, window, dq, dk, dv);
    /* decode, with a cache for the context and the plugin's bounded one */
    double dec_err = 0.0, sc_err = 0.0;
    int failed = decode_error(vt, self, T, q, k, v, out, &dec_err) || decode_error(vt, self, 0, q, k, v, out, &dec_err);
    if (!failed && (vt->flags & FS_ATTENTION_SCORES)) failed = scores_error(vt, self, &a, probs, &sc_err);
    vt->destroy(self);
    host_free(cfg.device, saved);
    if (failed) {
        fprintf(stderr, "window %lld: a call failed (above)\n", (long long)window);
        return 1;
    }
    int bad = fwd_err > 1e-5 || grad_err > 1e-4 || dec_err > 1e-5 || sc_err > 1e-5;
    printf("window %3lld (T = %d): forward %.1e  gradients %.1e  decode %.1e  scores %.1e  %s\n", (long long)window,
           T, fwd_err, grad_err, dec_err, sc_err, bad ? "FAIL" : "ok");
    return bad;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PLUGIN.so\n", argv[0]);
        return 2;
    }
    void *so = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    fs_plugin_entry_fn entry;
    *(void **)&entry = dlsym(so, FS_PLUGIN_ENTRY_SYMBOL);
    const fs_plugin_descriptor *d = entry ? entry() : NULL;
    if (!d || d->abi_version != FS_ABI_VERSION || d->kind != FS_PLUGIN_ATTENTION ||
        d->vtable_size < sizeof(fs_attention_vtable)) {
        fprintf(stderr, "%s: not an attention plugin for this SDK\n", argv[1]);
        return 1;
    }
    const fs_attention_vtable *vt = d->vtable;
    int fails = 0;
    const int64_t windows[] = {1, 2, 5, T - 1, T, 3 * T};
    for (size_t i = 0; i < sizeof windows / sizeof windows[0]; i++) fails += check_window(vt, windows[i]);
    printf("%s: %s\n", d->name, fails ? "FAILED" : "all checks passed");
    dlclose(so);
    return fails ? 1 : 0;
}
