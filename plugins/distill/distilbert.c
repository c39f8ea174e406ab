/* distilbert.c — DistilBERT's triple loss (Sanh et al., 2019), as its
 * training code computes it for a causal LM (DistilGPT-2):
 *
 *   loss = alpha_ce  * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
 *        + alpha_clm * CE(labels, softmax(z_s))
 *        + alpha_cos * mean over positions and layer pairs of (1 - cos(h_s, h_t))
 *
 * each term a mean over the B * T positions. Defaults are DistilBERT's:
 * 5.0 / 2.0 / 1.0 at T = 2. The soft term is the KL divergence, which is
 * the soft-target cross-entropy less the teacher's entropy: the same
 * gradient, T * (p_s - p_t) per logit before the weight, and 0 when the
 * student matches the teacher. The T^2 keeps that gradient on the scale of
 * the hard term whatever the temperature.
 *
 * The cosine term aligns the directions of the hidden states. With
 * cos_layers = last (DistilBERT) it compares the two models' last layer
 * outputs (before the final LayerNorm); with cos_layers = mapped every
 * student layer i is compared with teacher layer layer_map[i] (default
 * uniform: teacher layer i*k + k - 1, k = teacher layers / student layers).
 * The comparison is direct, with no projection, so, as in DistilBERT, the
 * student must be as wide as the teacher: a narrower student is refused
 * when alpha_cos > 0 (set alpha_cos = 0, or use tinybert, which learns a
 * projection). Teacher logits of -1e30 (a top-k teacher cache) carry zero
 * probability and are handled exactly. */
#include <math.h>
#include <string.h>

#include "fastserve/distill.h"
#include "kd_math.h"

#define MAX_LAYERS 256

typedef struct distilbert {
    const fs_host_api *host;
    fs_device device;
    double temperature, alpha_ce, alpha_clm, alpha_cos;
    size_t n_pairs;
    size_t pair_s[MAX_LAYERS], pair_t[MAX_LAYERS]; /* hidden-state indices: 0 = embeddings, i = layer i - 1 */
} distilbert;

static const fs_param_spec distilbert_params[] = {
    {.name = "temperature", .type = FS_PARAM_FLOAT, .default_value = "2.0", .min = 0.01, .max = 1000,
     .help = "softmax temperature T of the soft targets (the soft term is scaled by T^2)"},
    {.name = "alpha_ce", .type = FS_PARAM_FLOAT, .default_value = "5.0", .min = 0, .max = 1e6,
     .help = "weight of the soft-target term T^2 KL(teacher_T || student_T)"},
    {.name = "alpha_clm", .type = FS_PARAM_FLOAT, .default_value = "2.0", .min = 0, .max = 1e6,
     .help = "weight of the hard-label (next-token) cross-entropy"},
    {.name = "alpha_cos", .type = FS_PARAM_FLOAT, .default_value = "1.0", .min = 0, .max = 1e6,
     .help = "weight of the cosine loss between hidden states (needs equal widths)"},
    {.name = "cos_layers", .type = FS_PARAM_ENUM, .default_value = "last", .choices = "last|mapped",
     .help = "cosine on the last layer's output, or on every student layer against layer_map"},
    {.name = "layer_map", .type = FS_PARAM_INT_LIST, .default_value = "-1", .min = -1, .max = 65535,
     .help = "cos_layers = mapped: teacher layer per student layer; -1 = uniform i*k+k-1, k = Lt/Ls"},
};

/* Student layer i <- teacher layer map[i] (0-based), checked. */
static int layer_map(const fs_host_api *host, fs_plugin_ctx *ctx, const fs_distill_config *cfg, const char *who,
                     int64_t *map, fs_error *err) {
    size_t Ls = cfg->student_layers, Lt = cfg->teacher_layers;
    int64_t given[MAX_LAYERS + 1];
    size_t n = host->config_int_list(ctx, "layer_map", given, MAX_LAYERS + 1);
    if (Ls > MAX_LAYERS) return host->error_set(err, FS_ERR_INVALID, "%s: at most %d student layers", who, MAX_LAYERS);
    if (n == 1 && given[0] == -1) {
        if (Lt < Ls)
            return host->error_set(err, FS_ERR_INVALID,
                                   "%s: the student has %zu layers, the teacher only %zu: no uniform map; give "
                                   "layer_map, one teacher layer per student layer",
                                   who, Ls, Lt);
        size_t k = Lt / Ls;
        for (size_t i = 0; i < Ls; i++) map[i] = (int64_t)(i * k + k - 1);
        return FS_OK;
    }
    if (n != Ls)
        return host->error_set(err, FS_ERR_INVALID, "%s: lists %zu teacher layers for a student of %zu layers: give one "
                                                    "per student layer (or -1 for the uniform map)",
                               host->config_where(ctx, "layer_map"), n, Ls);
    for (size_t i = 0; i < n; i++) {
        if (given[i] < 0 || (size_t)given[i] >= Lt)
            return host->error_set(err, FS_ERR_INVALID,
                                   "%s: teacher layer %lld (for student layer %zu) does not exist: the teacher has %zu "
                                   "layers, 0-%zu",
                                   host->config_where(ctx, "layer_map"), (long long)given[i], i, Lt, Lt - 1);
        map[i] = given[i];
    }
    return FS_OK;
}

static int distilbert_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_distill_config *cfg,
                             fs_error *err) {
    if (cfg->device.type != FS_DEVICE_CPU)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "distilbert: only the CPU device is implemented");
    double cos_w = host->config_float(ctx, "alpha_cos");
    int mapped = strcmp(host->config_string(ctx, "cos_layers"), "mapped") == 0;
    int64_t map[MAX_LAYERS];
    if (cos_w > 0 && cfg->student_embd != cfg->teacher_embd)
        return host->error_set(err, FS_ERR_INVALID,
                               "%s: the cosine loss compares student and teacher hidden states directly, so, as in "
                               "DistilBERT, their widths must match, but the student's n_embd is %zu and the "
                               "teacher's %zu: set alpha_cos = 0, or use tinybert, which learns a projection",
                               host->config_where(ctx, "alpha_cos"), cfg->student_embd, cfg->teacher_embd);
    if (mapped && cos_w > 0) {
        int rc = layer_map(host, ctx, cfg, host->config_where(ctx, "cos_layers"), map, err);
        if (rc) return rc;
    } else {
        int64_t given[2];
        size_t n = host->config_int_list(ctx, "layer_map", given, 2);
        if (!(n == 1 && given[0] == -1) && cos_w > 0)
            return host->error_set(err, FS_ERR_INVALID, "%s: a layer map applies to cos_layers = mapped only",
                                   host->config_where(ctx, "layer_map"));
    }
    distilbert *d = host->alloc(cfg->device, sizeof *d);
    if (!d) return host->error_set(err, FS_ERR_NOMEM, "distilbert: out of memory");
    d->host = host;
    d->device = cfg->device;
    d->temperature = host->config_float(ctx, "temperature");
    d->alpha_ce = host->config_float(ctx, "alpha_ce");
    d->alpha_clm = host->config_float(ctx, "alpha_clm");
    d->alpha_cos = cos_w;
    d->n_pairs = 0;
    if (cos_w > 0 && mapped) {
        for (size_t i = 0; i < cfg->student_layers; i++) {
            d->pair_s[d->n_pairs] = i + 1;
            d->pair_t[d->n_pairs++] = (size_t)map[i] + 1;
        }
    } else if (cos_w > 0) {
        d->pair_s[0] = cfg->student_layers;
        d->pair_t[0] = cfg->teacher_layers;
        d->n_pairs = 1;
    }
    *self = d;
    return FS_OK;
}

static void distilbert_destroy(void *self) {
    distilbert *d = self;
    if (d) d->host->free(d->device, d);
}

static uint32_t distilbert_needs(void *self) {
    distilbert *d = self;
    return d->n_pairs ? FS_DISTILL_NEEDS_HIDDEN : 0;
}

typedef struct logits_job {
    const distilbert *d;
    const float *zt, *zs;
    const int32_t *labels;
    float *dzs;
    double *row_loss;
    size_t V, N;
} logits_job;

static void logits_rows(void *arg, size_t begin, size_t end) {
    logits_job *j = arg;
    const distilbert *d = j->d;
    double T = d->temperature, inv_t = 1.0 / T, inv_n = 1.0 / (double)j->N;
    size_t V = j->V;
    for (size_t n = begin; n < end; n++) {
        const float *zt = j->zt + n * V, *zs = j->zs + n * V;
        float *g = j->dzs + n * V;
        double lt = kd_lse(zt, V, inv_t), ls = kd_lse(zs, V, inv_t), l1 = kd_lse(zs, V, 1.0);
        double kl = 0.0;
        for (size_t i = 0; i < V; i++) {
            double log_pt = zt[i] * inv_t - lt, log_ps = zs[i] * inv_t - ls;
            double pt = exp(log_pt), ps = exp(log_ps), p1 = exp(zs[i] - l1);
            if (pt > 0) kl += pt * (log_pt - log_ps);
            g[i] = (float)((d->alpha_ce * T * (ps - pt) + d->alpha_clm * p1) * inv_n);
        }
        int32_t y = j->labels[n];
        g[y] -= (float)(d->alpha_clm * inv_n);
        j->row_loss[n] = d->alpha_ce * T * T * kl + d->alpha_clm * (l1 - zs[y]);
    }
}

typedef struct cos_job {
    const float *hs, *ht;
    float *dhs;
    double *row_loss;
    size_t C;
    double scale; /* alpha_cos / (N * pairs) */
} cos_job;

/* 1 - cos(s, t) per position; d/ds = -(t / (|s||t|) - cos * s / |s|^2) */
static void cos_rows(void *arg, size_t begin, size_t end) {
    cos_job *j = arg;
    size_t C = j->C;
    for (size_t n = begin; n < end; n++) {
        const float *s = j->hs + n * C, *t = j->ht + n * C;
        float *g = j->dhs + n * C;
        double st = 0, ss = 0, tt = 0;
        for (size_t c = 0; c < C; c++) {
            st += (double)s[c] * t[c];
            ss += (double)s[c] * s[c];
            tt += (double)t[c] * t[c];
        }
        double ns = sqrt(ss), nt = sqrt(tt), den = ns * nt;
        if (den < 1e-8) den = 1e-8; /* PyTorch's eps: no gradient through the clamp */
        double cs = st / den;
        j->row_loss[n] = 1.0 - cs;
        if (ns * nt < 1e-8) {
            for (size_t c = 0; c < C; c++) g[c] += (float)(-j->scale * t[c] / den);
            continue;
        }
        for (size_t c = 0; c < C; c++) g[c] += (float)(-j->scale * (t[c] / den - cs * s[c] / ss));
    }
}

static int distilbert_loss(void *self, fs_distill_args *a, double *loss, fs_error *err) {
    distilbert *d = self;
    size_t N = a->B * a->T, V = a->V;
    if (a->teacher_logits.device.type != FS_DEVICE_CPU || a->student_logits.device.type != FS_DEVICE_CPU)
        return d->host->error_set(err, FS_ERR_UNSUPPORTED, "distilbert: expects CPU tensors");
    size_t bad = kd_bad_label(a->labels, N, V);
    if (bad < N)
        return d->host->error_set(err, FS_ERR_INVALID, "distilbert: label %d at position %zu outside [0, %zu)",
                            (int)a->labels[bad], bad, V);
    if (d->n_pairs && (!a->student_hidden || !a->teacher_hidden || !a->dstudent_hidden))
        return d->host->error_set(err, FS_ERR_INVALID, "distilbert: the host passed no hidden states");
    double *row_loss = d->host->alloc(d->device, N * sizeof(double));
    if (!row_loss) return d->host->error_set(err, FS_ERR_NOMEM, "distilbert: out of memory");
    logits_job lj = {d, a->teacher_logits.data, a->student_logits.data, a->labels, a->dstudent_logits.data,
                     row_loss, V, N};
    d->host->parallel_for(N, 8, logits_rows, &lj);
    double total = 0.0;
    for (size_t n = 0; n < N; n++) total += row_loss[n];
    total /= (double)N;
    for (size_t p = 0; p < d->n_pairs; p++) {
        const fs_tensor *s = &a->student_hidden[d->pair_s[p]], *t = &a->teacher_hidden[d->pair_t[p]];
        size_t C = s->shape[2];
        if (t->shape[2] != C) {
            d->host->free(d->device, row_loss);
            return d->host->error_set(err, FS_ERR_INVALID, "distilbert: hidden widths %zu and %zu differ", C,
                                      t->shape[2]);
        }
        cos_job cj = {s->data, t->data, a->dstudent_hidden[d->pair_s[p]].data, row_loss, C,
                      d->alpha_cos / ((double)N * (double)d->n_pairs)};
        d->host->parallel_for(N, 16, cos_rows, &cj);
        double sum = 0.0;
        for (size_t n = 0; n < N; n++) sum += row_loss[n];
        total += d->alpha_cos * sum / ((double)N * (double)d->n_pairs);
    }
    d->host->free(d->device, row_loss);
    *loss = total;
    return FS_OK;
}

static const fs_distill_vtable distilbert_vtable = {
    .struct_size = sizeof(fs_distill_vtable),
    .create = distilbert_create,
    .destroy = distilbert_destroy,
    .needs = distilbert_needs,
    .loss = distilbert_loss,
};

static const fs_plugin_descriptor distilbert_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_DISTILL,
    .name = "distilbert",
    .version = "1.0.0",
    .summary = "DistilBERT: alpha_ce * T^2 * KL + alpha_clm * CE(labels) + alpha_cos * (1 - cos(hidden)); equal widths",
    .params = distilbert_params,
    .n_params = sizeof distilbert_params / sizeof distilbert_params[0],
    .vtable = &distilbert_vtable,
    .vtable_size = sizeof(distilbert_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(distilbert_descriptor)
