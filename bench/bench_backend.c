/* bench_backend.c — GPT-2 training and dense attention on a compute
 * backend (sdk/include/fastserve/backend.h): what scripts/gpu-check.sh
 * measures on a GPU, and what the cpu backend does with the same code.
 *
 *   1. Training: the GPT of tests/common/gpt_backend (every op a vtable
 *      call, attention through the dense plugin created for the backend's
 *      device, AdamW on f32 master weights) at each precision the backend
 *      offers: fp32, tf32 (FS_BACKEND_TF32: tensor-core GEMMs on f32
 *      operands) and bf16 (FS_BACKEND_BF16: bf16 activations and GEMM
 *      operands). Median step time over `steps` after two warm-up steps,
 *      tokens/s, model TFLOP/s (6 per parameter per token plus causal
 *      attention's 6 L C T, the count llm.c and PaLM use) and MFU: that over
 *      the device's peak at the precision (device_info, or peak_tflops= for
 *      a backend that does not know its own, such as the CPU: give it
 *      build/bench/bench_peak's figure). Device memory in use after the
 *      model is made, where the backend reports it.
 *   2. Dense attention forward and forward + backward at each T (batch
 *      attention_batch, default 1; f32 or, with attention_dtype=bf16, bf16
 *      tensors as mixed-precision training hands them): median ms, TFLOP/s
 *      (causal forward 2 B H T^2 D, backward 2.5 times that, the count
 *      FlashAttention's papers use) and the bytes forward saves for
 *      backward, which stay O(T) (a saved log-sum-exp per row, no T x T
 *      buffer), with the device memory in use where the backend reports it.
 *
 * It prints tables and asserts nothing about speed (medians of `reps`
 * runs); it exits 1 when training's loss is not finite, and 77 when the
 * backend's plugin is built but sees no device.
 *
 * Usage: bench_backend [backend=cpu|cuda] [device=0] [shape=tiny|quickstart|gpt2] [B=] [T=]
 *                      [steps=10] [precisions=fp32,tf32,bf16|none] [attention=1024,2048,...|0]
 *                      [heads=12] [head_dim=64] [attention_batch=1] [attention_dtype=f32|bf16]
 *                      [reps=5] [peak_tflops=0] [threads=0]
 * (threads: the CPU's, as fsrun's [run] threads; 0 adapts to the free cores) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/blas.h"
#include "fastserve/bf16.h"
#include "core/host.h"
#include "core/rng.h"
#include "core/threads.h"
#include "model/device_gpt.h"

#define MAX_T 16

typedef struct shape {
    const char *name;
    size_t V, maxT, L, H, C, B, T;
} shape;

static const shape SHAPES[] = {
    {"tiny", 64, 64, 2, 2, 32, 2, 32},
    {"quickstart", 256, 256, 4, 4, 256, 8, 256},
    {"gpt2", 50257, 1024, 12, 12, 768, 8, 1024}, /* GPT-2 small, 124 M parameters */
};

typedef struct precision {
    const char *name;
    int32_t dtype, compute;
    uint32_t needs; /* backend flag it needs, 0: any */
} precision;

static const precision PRECISIONS[] = {
    {"fp32", FS_DTYPE_F32, FS_GEMM_COMPUTE_F32, 0},
    {"tf32", FS_DTYPE_F32, FS_GEMM_COMPUTE_TF32, FS_BACKEND_TF32},
    {"bf16", FS_DTYPE_BF16, FS_GEMM_COMPUTE_F32, FS_BACKEND_BF16},
};
#define N_PRECISIONS (sizeof PRECISIONS / sizeof PRECISIONS[0])

typedef struct opts {
    const char *backend;
    int device;
    shape s;
    size_t steps, reps, heads, head_dim, Ts[MAX_T], nT, attn_batch;
    int want[N_PRECISIONS], threads;
    int32_t attn_dtype;
    double peak_tflops;
} opts;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, size_t n) {
    qsort(t, n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void die(const char *what, const fs_error *err) {
    fprintf(stderr, "bench_backend: %s: %s\n", what, err->message);
    exit(1);
}

/* MiB of device memory in use, or -1 when the backend does not say (or
 * the device is the CPU, whose "free memory" is the whole machine's). */
static double used_mib(fs_backend_handle *b) {
    fs_backend_device_info info = {.struct_size = sizeof info};
    fs_error err = {0};
    if (b->device.type == FS_DEVICE_CPU || b->vt->device_info(b->self, &info, &err) || info.total_bytes == 0)
        return -1.0;
    return (double)(info.total_bytes - info.free_bytes) / (1024.0 * 1024.0);
}

/* ---- 1. training ---- */

/* N(0, 0.02) weights, ones for the layer norms' gains, zeros for biases
 * would be GPT-2's; speed does not depend on the values, so all N(0, 0.02). */
static void random_params(fs_device_gpt *m, fs_rng *g) {
    size_t n = fs_device_gpt_n_params(m);
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_backend: out of memory for %zu parameters\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) p[i] = 0.02f * fs_rng_normal(g);
    fs_error err = {0};
    if (fs_device_gpt_set_params(m, p, &err)) die("parameters", &err);
    free(p);
}

/* One AdamW training step; returns its loss. */
static double train_step(fs_device_gpt *m, const int32_t *in, const int32_t *tg, uint64_t t) {
    fs_error err = {0};
    double loss = 0.0;
    if (fs_device_gpt_zero_grad(m, &err) || fs_device_gpt_forward(m, in, tg, &loss, &err) || fs_device_gpt_backward(m, &err) ||
        fs_device_gpt_adamw(m, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, t, &err) || fs_device_gpt_sync(m, &err))
        die("training step", &err);
    return loss;
}

static double peak_for(fs_backend_handle *b, const precision *p, double override) {
    if (override > 0) return override;
    fs_backend_device_info info = {.struct_size = sizeof info};
    fs_error err = {0};
    if (b->vt->device_info(b->self, &info, &err)) return 0.0;
    return p->dtype == FS_DTYPE_BF16 ? info.peak_tflops_bf16
           : p->compute == FS_GEMM_COMPUTE_TF32 ? info.peak_tflops_tf32
                                                : info.peak_tflops_f32;
}

/* 0, or 1 when the loss came out NaN or infinite (a broken backend: the
 * figures would mean nothing). */
static int train_row(fs_backend_handle *b, const opts *o, const precision *p) {
    fs_device_gpt_config cfg = {.V = o->s.V, .maxT = o->s.maxT, .L = o->s.L, .H = o->s.H, .C = o->s.C, .B = o->s.B,
                                .T = o->s.T, .dtype = p->dtype, .compute = p->compute, .attention = "dense"};
    fs_device_gpt *m;
    fs_error err = {0};
    double before = used_mib(b);
    if (fs_device_gpt_create(&m, b, &cfg, &err)) {
        printf("| %s | - | - | - | - | - | %s |\n", p->name, err.message);
        return 0;
    }
    double mem = before < 0 ? -1.0 : used_mib(b) - before;
    fs_rng g;
    fs_rng_seed(&g, 1);
    random_params(m, &g);
    size_t BT = o->s.B * o->s.T;
    int32_t *tok = malloc((BT + 1) * sizeof *tok);
    double *t = malloc(o->steps * sizeof *t), loss = 0.0;
    for (size_t i = 0; i <= BT; i++) tok[i] = (int32_t)fs_rng_below(&g, o->s.V);
    for (uint64_t w = 1; w <= 2; w++) train_step(m, tok, tok + 1, w);
    for (size_t i = 0; i < o->steps; i++) {
        double t0 = fs_now();
        loss = train_step(m, tok, tok + 1, 3 + i);
        t[i] = fs_now() - t0;
    }
    double s = median(t, o->steps), tflops = fs_device_gpt_train_flops(m) / s / 1e12, peak = peak_for(b, p, o->peak_tflops);
    char mfu[32] = "-", mems[32] = "-";
    if (peak > 0) snprintf(mfu, sizeof mfu, "%.3f", tflops / peak);
    if (mem >= 0) snprintf(mems, sizeof mems, "%.0f", mem);
    printf("| %s | %.2f | %.0f | %.3f | %s | %s | loss %.3f after %zu steps |\n", p->name, s * 1e3, (double)BT / s,
           tflops, mfu, mems, loss, o->steps + 2);
    free(tok);
    free(t);
    fs_device_gpt_destroy(m);
    if (isfinite(loss)) return 0;
    fprintf(stderr, "bench_backend: %s training gave a loss of %f\n", p->name, loss);
    return 1;
}

static int bench_training(fs_backend_handle *b, const opts *o) {
    int bad = 0;
    size_t P = o->s.V * o->s.C + o->s.maxT * o->s.C + o->s.L * 12 * o->s.C * o->s.C + o->s.C * (13 * o->s.L + 2);
    printf("\n### Training: %s shape (V %zu, L %zu, H %zu, C %zu, about %.1f M parameters), B %zu, T %zu, "
           "AdamW\n\n", o->s.name, o->s.V, o->s.L, o->s.H, o->s.C, (double)P / 1e6, o->s.B, o->s.T);
    printf("| precision | step ms | tokens/s | model TFLOP/s | MFU | device MiB | |\n|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < N_PRECISIONS; i++) {
        const precision *p = &PRECISIONS[i];
        if (!o->want[i]) continue;
        if (p->needs && !(b->vt->flags & p->needs)) {
            printf("| %s | - | - | - | - | - | not offered by the %s backend |\n", p->name, o->backend);
            continue;
        }
        bad |= train_row(b, o, p);
    }
    return bad;
}

/* ---- 2. dense attention ---- */

typedef struct attn_case {
    fs_backend_handle *b;
    const fs_attention_vtable *vt;
    void *self;
    fs_plugin_ctx ctx;
    fs_attention_args a;
    void *buf[8]; /* q k v out dout dq dk dv, (B, H, T, D) on the device */
} attn_case;

static void attn_open(attn_case *c, fs_backend_handle *b, const opts *o, size_t T) {
    fs_error err = {0};
    const fs_plugin *p;
    size_t B = o->attn_batch, H = o->heads, D = o->head_dim, n = B * H * T * D;
    size_t es = o->attn_dtype == FS_DTYPE_BF16 ? sizeof(fs_bf16) : sizeof(float);
    memset(c, 0, sizeof *c);
    c->b = b;
    if (fs_plugin_registry_get(&b->reg, FS_PLUGIN_ATTENTION, "dense", &p, &err)) die("dense attention", &err);
    c->vt = p->desc->vtable;
    fs_plugin_ctx_init(&c->ctx, &b->host, NULL, "layer0.attention", "dense");
    fs_attention_config ac = {sizeof ac, 0, H, D, H * D, T, 1, b->device, o->attn_dtype};
    if (c->vt->create(&c->self, &b->host.api, &c->ctx, &ac, &err)) die("dense attention", &err);
    float *host = malloc(n * sizeof *host);
    fs_rng g;
    fs_rng_seed(&g, T);
    for (size_t i = 0; i < 8; i++) {
        for (size_t j = 0; j < n; j++) host[j] = fs_rng_normal(&g);
        if (es != sizeof(float)) /* bf16 in place: the first half of host */
            for (size_t j = 0; j < n; j++) ((fs_bf16 *)host)[j] = fs_bf16_from_f32(host[j]);
        if (b->vt->alloc(b->self, &c->buf[i], n * es, FS_MEM_DEVICE, &err) ||
            b->vt->copy(b->self, NULL, c->buf[i], host, n * es, FS_COPY_HOST_TO_DEVICE, &err))
            die("attention buffers", &err);
    }
    free(host);
    fs_tensor *t[8] = {&c->a.q, &c->a.k, &c->a.v, &c->a.out, &c->a.dout, &c->a.dq, &c->a.dk, &c->a.dv};
    for (size_t i = 0; i < 8; i++) {
        *t[i] = fs_tensor_cpu_f32(c->buf[i], 4, B, H, T, D);
        t[i]->dtype = o->attn_dtype;
        t[i]->device = b->device;
    }
    c->a.struct_size = sizeof c->a;
    c->a.B = B;
    c->a.T = T;
    if (b->vt->alloc(b->self, &c->a.saved, c->vt->saved_bytes(c->self, B, T), FS_MEM_DEVICE, &err))
        die("attention saved state", &err);
}

static void attn_close(attn_case *c) {
    c->vt->destroy(c->self);
    for (size_t i = 0; i < 8; i++) c->b->vt->free(c->b->self, c->buf[i], FS_MEM_DEVICE);
    c->b->vt->free(c->b->self, c->a.saved, FS_MEM_DEVICE);
}

/* Seconds of one forward (and backward when `both`), after the device finishes. */
static double attn_run(attn_case *c, int both) {
    fs_error err = {0};
    double t0 = fs_now();
    if (c->vt->forward(c->self, &c->a, &err) || (both && c->vt->backward(c->self, &c->a, &err)) ||
        c->b->vt->synchronize(c->b->self, &err))
        die("dense attention", &err);
    return fs_now() - t0;
}

static void bench_attention(fs_backend_handle *b, const opts *o) {
    size_t B = o->attn_batch, H = o->heads, D = o->head_dim;
    printf("\n### Dense attention, causal, B %zu, H %zu, D %zu, %s: median of %zu\n\n", B, H, D,
           o->attn_dtype == FS_DTYPE_BF16 ? "bf16" : "f32", o->reps);
    printf("| T | forward ms | forward TFLOP/s | forward + backward ms | TFLOP/s | saved MiB | device MiB in use |\n"
           "|---|---|---|---|---|---|---|\n");
    double *t = malloc(o->reps * sizeof *t);
    for (size_t i = 0; i < o->nT; i++) {
        size_t T = o->Ts[i];
        double before = used_mib(b), fwd_flop = 2.0 * (double)(B * H * D) * (double)T * (double)T;
        attn_case c;
        attn_open(&c, b, o, T);
        attn_run(&c, 1); /* faults memory in, loads kernels */
        for (size_t r = 0; r < o->reps; r++) t[r] = attn_run(&c, 0);
        double fwd = median(t, o->reps);
        for (size_t r = 0; r < o->reps; r++) t[r] = attn_run(&c, 1);
        double fb = median(t, o->reps), mem = before < 0 ? -1.0 : used_mib(b) - before;
        char mems[32] = "-";
        if (mem >= 0) snprintf(mems, sizeof mems, "%.1f", mem);
        printf("| %zu | %.3f | %.2f | %.3f | %.2f | %.2f | %s |\n", T, fwd * 1e3, fwd_flop / fwd * 1e-12, fb * 1e3,
               3.5 * fwd_flop / fb * 1e-12, (double)c.vt->saved_bytes(c.self, B, T) / (1024.0 * 1024.0), mems);
        attn_close(&c);
    }
    free(t);
}

/* ---- arguments ---- */

static int parse_sizes(const char *s, size_t *v, size_t cap, size_t *n) {
    *n = 0;
    for (char *end; *s; s = *end ? end + 1 : end) {
        unsigned long long x = strtoull(s, &end, 10);
        if (end == s || *n == cap || (*end && *end != ',')) return 0;
        if (x) v[(*n)++] = (size_t)x;
    }
    return 1;
}

static int parse_dtype(int32_t *dtype, const char *s) {
    if (!strcmp(s, "f32")) *dtype = FS_DTYPE_F32;
    else if (!strcmp(s, "bf16")) *dtype = FS_DTYPE_BF16;
    else return 0;
    return 1;
}

static int parse_precisions(opts *o, const char *s) {
    memset(o->want, 0, sizeof o->want);
    if (!strcmp(s, "none")) return 1; /* attention only */
    for (const char *end; *s; s = *end ? end + 1 : end) {
        end = s + strcspn(s, ",");
        size_t i = 0;
        while (i < N_PRECISIONS && (strlen(PRECISIONS[i].name) != (size_t)(end - s) ||
                                    strncmp(PRECISIONS[i].name, s, (size_t)(end - s))))
            i++;
        if (i == N_PRECISIONS) return 0;
        o->want[i] = 1;
    }
    return 1;
}

static int parse_shape(opts *o, const char *name) {
    for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++)
        if (!strcmp(SHAPES[i].name, name)) {
            o->s = SHAPES[i];
            return 1;
        }
    return 0;
}

static int parse_arg(opts *o, const char *a) {
    const char *v = strchr(a, '=');
    if (!v) return 0;
    v++;
#define KEY(k) (!strncmp(a, k "=", sizeof k))
    if (KEY("backend")) o->backend = v;
    else if (KEY("device")) o->device = atoi(v);
    else if (KEY("shape")) return parse_shape(o, v);
    else if (KEY("B")) return (o->s.B = strtoul(v, NULL, 10)) > 0;
    else if (KEY("T")) return (o->s.T = strtoul(v, NULL, 10)) > 0 && o->s.T <= o->s.maxT;
    else if (KEY("steps")) return (o->steps = strtoul(v, NULL, 10)) > 0;
    else if (KEY("reps")) return (o->reps = strtoul(v, NULL, 10)) > 0;
    else if (KEY("heads")) return (o->heads = strtoul(v, NULL, 10)) > 0;
    else if (KEY("head_dim")) return (o->head_dim = strtoul(v, NULL, 10)) > 0;
    else if (KEY("attention_batch")) return (o->attn_batch = strtoul(v, NULL, 10)) > 0;
    else if (KEY("attention_dtype")) return parse_dtype(&o->attn_dtype, v);
    else if (KEY("precisions")) return parse_precisions(o, v);
    else if (KEY("attention")) return parse_sizes(v, o->Ts, MAX_T, &o->nT);
    else if (KEY("peak_tflops")) return (o->peak_tflops = atof(v)) >= 0;
    else if (KEY("threads")) return (o->threads = atoi(v)) >= 0;
    else return 0;
#undef KEY
    return 1;
}

int main(int argc, char **argv) {
    opts o = {.backend = "cpu", .s = SHAPES[0], .steps = 10, .reps = 5, .heads = 12, .head_dim = 64,
              .Ts = {256, 1024}, .nT = 2, .want = {1, 1, 1}, .attn_batch = 1, .attn_dtype = FS_DTYPE_F32};
    for (int i = 1; i < argc; i++)
        if (!parse_arg(&o, argv[i])) {
            fprintf(stderr, "bench_backend: bad argument '%s' (T must come after shape and fit its context)\n"
                            "usage: bench_backend [backend=cpu|cuda] [device=0] [shape=tiny|quickstart|gpt2] [B=] "
                            "[T=] [steps=10] [precisions=fp32,tf32,bf16] [attention=256,1024|0] [heads=12] "
                            "[head_dim=64] [attention_batch=1] [attention_dtype=f32|bf16] [reps=5] [peak_tflops=0] "
                            "[threads=0]\n", argv[i]);
            return 2;
        }
    fs_blas_fix_coretype(argv, NULL); /* OpenBLAS's kernels and waits as fsrun sets them (may re-execute) */
    fs_threads_set(o.threads);
    fs_backend_handle b;
    fs_error err = {0};
    int n = 0;
    if (fs_backend_handle_open(&b, o.backend, o.device, &n, &err)) {
        fprintf(stderr, "bench_backend: backend %s, device %d: %s\n", o.backend, o.device, err.message);
        return n == 0 && b.plugin ? 77 : 1;
    }
    fs_backend_device_info info = {.struct_size = sizeof info};
    if (b.vt->device_info(b.self, &info, &err)) die("device_info", &err);
    printf("bench_backend: %s backend, %s; peak TFLOP/s fp32 %.1f, tf32 %.1f, bf16 %.1f%s\n", o.backend, info.name,
           info.peak_tflops_f32, info.peak_tflops_tf32, info.peak_tflops_bf16,
           o.peak_tflops > 0 ? " (MFU over peak_tflops= instead)" : "");
    int any = 0;
    for (size_t i = 0; i < N_PRECISIONS; i++) any |= o.want[i];
    int bad = any ? bench_training(&b, &o) : 0;
    if (o.nT) bench_attention(&b, &o);
    fs_backend_handle_close(&b);
    return bad;
}
