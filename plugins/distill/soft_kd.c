/* soft_kd.c — Hinton et al.'s knowledge distillation:
 *
 *   loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
 *        + (1 - alpha) * CE(labels, softmax(z_s)),     mean over positions
 *
 * The T^2 factor keeps the soft term's gradient, T * (p_s^T - p_t^T), on the
 * same scale as the hard term's whatever the temperature. */
#include <math.h>
#include <string.h>

#include "fastserve/distill.h"
#include "kd_math.h"

typedef struct soft_kd {
    const fs_host_api *host;
    fs_device device;
    double temperature, alpha;
} soft_kd;

static const fs_param_spec soft_kd_params[] = {
    {.name = "temperature", .type = FS_PARAM_FLOAT, .default_value = "2.0", .min = 0.01, .max = 1000,
     .help = "softmax temperature T of the soft targets (the soft term is scaled by T^2)"},
    {.name = "alpha", .type = FS_PARAM_FLOAT, .default_value = "0.5", .min = 0, .max = 1,
     .help = "weight of the soft (KL) term; 1 - alpha weighs the hard-label cross-entropy"},
};

static int soft_kd_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_distill_config *cfg,
                          fs_error *err) {
    if (cfg->device.type != FS_DEVICE_CPU)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "soft_kd: only the CPU device is implemented");
    soft_kd *s = host->alloc(cfg->device, sizeof *s);
    if (!s) return host->error_set(err, FS_ERR_NOMEM, "soft_kd: out of memory");
    s->host = host;
    s->device = cfg->device;
    s->temperature = host->config_float(ctx, "temperature");
    s->alpha = host->config_float(ctx, "alpha");
    *self = s;
    return FS_OK;
}

static void soft_kd_destroy(void *self) {
    soft_kd *s = self;
    if (s) s->host->free(s->device, s);
}

static uint32_t soft_kd_needs(void *self) {
    (void)self;
    return 0;
}

typedef struct rows_job {
    const soft_kd *s;
    const float *zt, *zs;
    const int32_t *labels;
    float *dzs;
    double *row_loss;
    size_t V, N;
} rows_job;

static void soft_kd_rows(void *arg, size_t begin, size_t end) {
    rows_job *j = arg;
    double T = j->s->temperature, a = j->s->alpha, inv_t = 1.0 / T, inv_n = 1.0 / (double)j->N;
    size_t V = j->V;
    for (size_t n = begin; n < end; n++) {
        const float *zt = j->zt + n * V, *zs = j->zs + n * V;
        float *d = j->dzs + n * V;
        double lt = kd_lse(zt, V, inv_t), ls = kd_lse(zs, V, inv_t), l1 = kd_lse(zs, V, 1.0);
        double kl = 0.0;
        for (size_t i = 0; i < V; i++) {
            double log_pt = zt[i] * inv_t - lt, log_ps = zs[i] * inv_t - ls;
            double pt = exp(log_pt), ps = exp(log_ps), p1 = exp(zs[i] - l1);
            kl += pt * (log_pt - log_ps);
            d[i] = (float)((a * T * (ps - pt) + (1.0 - a) * p1) * inv_n);
        }
        int32_t y = j->labels[n];
        double ce = l1 - zs[y];
        d[y] -= (float)((1.0 - a) * inv_n);
        j->row_loss[n] = a * T * T * kl + (1.0 - a) * ce;
    }
}

static int soft_kd_loss(void *self, fs_distill_args *a, double *loss, fs_error *err) {
    soft_kd *s = self;
    size_t N = a->B * a->T, V = a->V;
    if (a->teacher_logits.device.type != FS_DEVICE_CPU || a->student_logits.device.type != FS_DEVICE_CPU)
        return s->host->error_set(err, FS_ERR_UNSUPPORTED, "soft_kd: expects CPU tensors");
    size_t bad = kd_bad_label(a->labels, N, V);
    if (bad < N)
        return s->host->error_set(err, FS_ERR_INVALID, "soft_kd: label %d at position %zu outside [0, %zu)",
                            (int)a->labels[bad], bad, V);
    double *row_loss = s->host->alloc(s->device, N * sizeof(double));
    if (!row_loss) return s->host->error_set(err, FS_ERR_NOMEM, "soft_kd: out of memory");
    rows_job job = {s, a->teacher_logits.data, a->student_logits.data, a->labels, a->dstudent_logits.data,
                    row_loss, V, N};
    s->host->parallel_for(N, 8, soft_kd_rows, &job);
    double total = 0.0;
    for (size_t n = 0; n < N; n++) total += row_loss[n];
    s->host->free(s->device, row_loss);
    *loss = total / (double)N;
    return FS_OK;
}

static const fs_distill_vtable soft_kd_vtable = {
    .struct_size = sizeof(fs_distill_vtable),
    .create = soft_kd_create,
    .destroy = soft_kd_destroy,
    .needs = soft_kd_needs,
    .loss = soft_kd_loss,
};

static const fs_plugin_descriptor soft_kd_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_DISTILL,
    .name = "soft_kd",
    .version = "1.0.0",
    .summary = "Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)",
    .params = soft_kd_params,
    .n_params = sizeof soft_kd_params / sizeof soft_kd_params[0],
    .vtable = &soft_kd_vtable,
    .vtable_size = sizeof(soft_kd_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(soft_kd_descriptor)
