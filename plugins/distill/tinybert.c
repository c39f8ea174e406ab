/* tinybert.c — TinyBERT's transformer distillation (Jiao et al., 2020) for a
 * causal LM.
 *
 * Layer map: student layer i (0-based) learns from teacher layer
 * g(i) = layer_map[i]; by default TinyBERT's uniform map with
 * k = teacher layers / student layers, g(i) = i*k + k - 1, i.e. the
 * student's hidden state i+1 against the teacher's hidden state (i+1)*k and
 * its attention against teacher layer (i+1)*k - 1, the same layer whose
 * output that hidden state is. The embedding output (hidden state 0) is
 * matched with the teacher's.
 *
 * Intermediate-layer losses, summed over the mapped layers:
 *   embedding  w_embedding * MSE(E_s W_e, E_t)
 *   hidden     w_hidden    * MSE(H_s W_h, H_t)
 *   attention  w_attention * MSE(A_s, A_t), per head
 * where W_e and W_h (student width x teacher width) are this plugin's own
 * parameters, registered with the host, trained by the optimizer, saved in
 * the checkpoint as plugin.distill.proj_embedding / proj_hidden, initialised
 * to the identity when the widths are equal and to N(0, 1/student width)
 * otherwise; W_h is shared by the layers, as in TinyBERT. A is the
 * pre-softmax attention score with masked entries zeroed (TinyBERT's
 * choice), or with attention = probs the post-softmax probabilities. MSE is
 * a mean over elements (for attention over B x H x T x T, masked zeros
 * included, as TinyBERT computes it).
 *
 * Heads: when the counts differ, the teacher's heads are split into as many
 * contiguous groups as the student has heads, group h = teacher heads
 * [h Ht / Hs, max(h Ht / Hs + 1, (h + 1) Ht / Hs)), and student head h
 * learns the mean of its group's maps: with Ht = r Hs, r heads each; with
 * fewer teacher heads, student head h learns teacher head h Ht / Hs.
 *
 * Prediction layer: w_prediction * soft cross-entropy
 * -sum p_t^tau log p_s^tau at temperature tau (TinyBERT: tau = 1, no tau^2),
 * plus w_hard * the hard-label cross-entropy (0 in TinyBERT).
 *
 * Stages (stages = two-stage, the default) run as TinyBERT runs them: the
 * intermediate-layer losses for intermediate_steps, then the prediction
 * loss for prediction_steps, each a training run of its own (phases in
 * fastserve/distill.h); 0 splits [train] steps in half. intermediate,
 * prediction and joint (all losses at once) are single runs.
 *
 * Attention maps come from the attention plugins' scores() hook, and their
 * gradient goes back through scores_backward: dense has both; the sparse
 * kinds (longformer) do not, and fsrun refuses them before training with a
 * message naming the layer (set w_attention = 0 to distil them without). */
#include <math.h>
#include <string.h>

#include "fastserve/distill.h"
#include "kd_math.h"

#define MAX_LAYERS 256

enum { MODE_TWO_STAGE, MODE_INTERMEDIATE, MODE_PREDICTION, MODE_JOINT };

typedef struct tinybert {
    const fs_host_api *host;
    fs_device device;
    size_t Ls, Lt, Cs, Ct, Hs, Ht;
    int mode, phase, probs;
    double w_emb, w_hid, w_att, w_pred, w_hard, temperature;
    uint64_t inter_steps, pred_steps;
    int64_t map[MAX_LAYERS];
    fs_tensor we, dwe, wh, dwh; /* data NULL when not registered */
    float *scratch;             /* (N, Ct) */
    size_t scratch_n;
    double *row_loss;
    size_t row_cap;
} tinybert;

static const fs_param_spec tinybert_params[] = {
    {.name = "stages", .type = FS_PARAM_ENUM, .default_value = "two-stage",
     .choices = "two-stage|intermediate|prediction|joint",
     .help = "intermediate then prediction (two runs), one of them, or every loss at once"},
    {.name = "intermediate_steps", .type = FS_PARAM_INT, .default_value = "0", .min = 0, .max = FS_PARAM_UNBOUNDED,
     .help = "two-stage: steps of the intermediate-layer stage (0 = half of [train] steps)"},
    {.name = "prediction_steps", .type = FS_PARAM_INT, .default_value = "0", .min = 0, .max = FS_PARAM_UNBOUNDED,
     .help = "two-stage: steps of the prediction-layer stage (0 = the rest of [train] steps)"},
    {.name = "layer_map", .type = FS_PARAM_INT_LIST, .default_value = "-1", .min = -1, .max = 65535,
     .help = "teacher layer per student layer; -1 = uniform i*k+k-1, k = teacher/student layers"},
    {.name = "attention", .type = FS_PARAM_ENUM, .default_value = "scores", .choices = "scores|probs",
     .help = "attention maps compared: pre-softmax scores (masked zeroed) or probabilities"},
    {.name = "w_embedding", .type = FS_PARAM_FLOAT, .default_value = "1.0", .min = 0, .max = 1e6,
     .help = "weight of the embedding-output MSE (through W_e)"},
    {.name = "w_hidden", .type = FS_PARAM_FLOAT, .default_value = "1.0", .min = 0, .max = 1e6,
     .help = "weight of the hidden-state MSE (through W_h), summed over layers"},
    {.name = "w_attention", .type = FS_PARAM_FLOAT, .default_value = "1.0", .min = 0, .max = 1e6,
     .help = "weight of the attention-map MSE, summed over layers (needs scores())"},
    {.name = "w_prediction", .type = FS_PARAM_FLOAT, .default_value = "1.0", .min = 0, .max = 1e6,
     .help = "weight of the prediction-layer soft cross-entropy"},
    {.name = "w_hard", .type = FS_PARAM_FLOAT, .default_value = "0.0", .min = 0, .max = 1e6,
     .help = "weight of the hard-label cross-entropy in the prediction stage"},
    {.name = "temperature", .type = FS_PARAM_FLOAT, .default_value = "1.0", .min = 0.01, .max = 1000,
     .help = "temperature tau of the prediction-layer soft cross-entropy"},
};

static int does_intermediate(const tinybert *t) {
    return t->mode == MODE_INTERMEDIATE || t->mode == MODE_JOINT || (t->mode == MODE_TWO_STAGE && t->phase == 0);
}
static int does_prediction(const tinybert *t) {
    return t->mode == MODE_PREDICTION || t->mode == MODE_JOINT || (t->mode == MODE_TWO_STAGE && t->phase == 1);
}

/* splitmix64 + Box-Muller: the projection's initial values from the host's seed */
static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double normal(uint64_t *s) {
    double u1 = ((double)(mix(s) >> 11) + 0.5) / 9007199254740992.0, u2 = (double)(mix(s) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static int projection(tinybert *t, fs_plugin_ctx *ctx, const char *name, uint64_t salt, fs_tensor *w, fs_tensor *dw,
                      fs_error *err) {
    size_t shape[2] = {t->Cs, t->Ct};
    int rc = t->host->register_param(ctx, name, 2, shape, 1, w, dw, err);
    if (rc) return rc;
    float *p = w->data;
    uint64_t s = t->host->seed(ctx) ^ salt;
    double sd = 1.0 / sqrt((double)t->Cs);
    for (size_t i = 0; i < t->Cs; i++)
        for (size_t j = 0; j < t->Ct; j++)
            p[i * t->Ct + j] = t->Cs == t->Ct ? (i == j ? 1.0f : 0.0f) : (float)(sd * normal(&s));
    return FS_OK;
}

static void tinybert_destroy(void *self) {
    tinybert *t = self;
    if (!t) return;
    t->host->free(t->device, t->scratch);
    t->host->free(t->device, t->row_loss);
    t->host->free(t->device, t);
}

static int tinybert_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_distill_config *cfg,
                           fs_error *err) {
    if (cfg->device.type != FS_DEVICE_CPU)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "tinybert: only the CPU device is implemented");
    size_t Ls = cfg->student_layers, Lt = cfg->teacher_layers;
    if (Ls > MAX_LAYERS) return host->error_set(err, FS_ERR_INVALID, "tinybert: at most %d student layers", MAX_LAYERS);
    tinybert *t = host->alloc(cfg->device, sizeof *t);
    if (!t) return host->error_set(err, FS_ERR_NOMEM, "tinybert: out of memory");
    memset(t, 0, sizeof *t);
    t->host = host;
    t->device = cfg->device;
    t->Ls = Ls, t->Lt = Lt, t->Cs = cfg->student_embd, t->Ct = cfg->teacher_embd;
    t->Hs = cfg->student_heads, t->Ht = cfg->teacher_heads;
    const char *mode = host->config_string(ctx, "stages");
    t->mode = !strcmp(mode, "intermediate") ? MODE_INTERMEDIATE
              : !strcmp(mode, "prediction") ? MODE_PREDICTION
              : !strcmp(mode, "joint")      ? MODE_JOINT
                                            : MODE_TWO_STAGE;
    t->probs = strcmp(host->config_string(ctx, "attention"), "probs") == 0;
    t->w_emb = host->config_float(ctx, "w_embedding");
    t->w_hid = host->config_float(ctx, "w_hidden");
    t->w_att = host->config_float(ctx, "w_attention");
    t->w_pred = host->config_float(ctx, "w_prediction");
    t->w_hard = host->config_float(ctx, "w_hard");
    t->temperature = host->config_float(ctx, "temperature");
    t->inter_steps = (uint64_t)host->config_int(ctx, "intermediate_steps");
    t->pred_steps = (uint64_t)host->config_int(ctx, "prediction_steps");
    int64_t given[MAX_LAYERS + 1];
    size_t n = host->config_int_list(ctx, "layer_map", given, MAX_LAYERS + 1);
    int rc = FS_OK;
    if (n == 1 && given[0] == -1) {
        if (Lt < Ls)
            rc = host->error_set(err, FS_ERR_INVALID,
                                 "%s: the student has %zu layers, the teacher only %zu: there is no uniform map; list "
                                 "one teacher layer per student layer",
                                 host->config_where(ctx, "layer_map"), Ls, Lt);
        size_t k = Lt / (Ls ? Ls : 1);
        for (size_t i = 0; i < Ls; i++) t->map[i] = (int64_t)(i * k + k - 1);
    } else if (n != Ls) {
        rc = host->error_set(err, FS_ERR_INVALID,
                             "%s: lists %zu teacher layers for a student of %zu layers: give one per student layer (or "
                             "-1 for TinyBERT's uniform map)",
                             host->config_where(ctx, "layer_map"), n, Ls);
    } else {
        for (size_t i = 0; i < n && !rc; i++) {
            if (given[i] < 0 || (size_t)given[i] >= Lt)
                rc = host->error_set(err, FS_ERR_INVALID,
                                     "%s: teacher layer %lld (for student layer %zu) does not exist: the teacher has "
                                     "%zu layers, 0-%zu",
                                     host->config_where(ctx, "layer_map"), (long long)given[i], i, Lt, Lt - 1);
            t->map[i] = given[i];
        }
    }
    if (!rc && t->mode != MODE_PREDICTION && t->w_emb > 0)
        rc = projection(t, ctx, "proj_embedding", 0x656d62ull, &t->we, &t->dwe, err);
    if (!rc && t->mode != MODE_PREDICTION && t->w_hid > 0)
        rc = projection(t, ctx, "proj_hidden", 0x686964ull, &t->wh, &t->dwh, err);
    if (rc) {
        tinybert_destroy(t);
        return rc;
    }
    *self = t;
    return FS_OK;
}

static uint32_t tinybert_needs(void *self) {
    tinybert *t = self;
    uint32_t n = 0;
    if (!does_intermediate(t)) return 0;
    if (t->w_emb > 0 || t->w_hid > 0) n |= FS_DISTILL_NEEDS_HIDDEN;
    if (t->w_att > 0) n |= FS_DISTILL_NEEDS_ATTENTION | (t->probs ? FS_DISTILL_NEEDS_ATTENTION_PROBS : 0);
    return n;
}

static size_t tinybert_phases(void *self, uint64_t total, const char **names, uint64_t *steps, size_t cap) {
    tinybert *t = self;
    if (t->mode != MODE_TWO_STAGE) {
        if (cap >= 1) {
            names[0] = t->mode == MODE_INTERMEDIATE ? "intermediate" : t->mode == MODE_PREDICTION ? "prediction" : "joint";
            steps[0] = total;
        }
        return 1;
    }
    uint64_t i = t->inter_steps, p = t->pred_steps;
    if (!i && !p) {
        i = total / 2;
        p = total - i;
    } else if (!p) {
        p = total > i ? total - i : 0;
    } else if (!i) {
        i = total > p ? total - p : 0;
    }
    if (cap >= 2) {
        names[0] = "intermediate";
        steps[0] = i;
        names[1] = "prediction";
        steps[1] = p;
    }
    return 2;
}

static int tinybert_set_phase(void *self, size_t phase, fs_error *err) {
    tinybert *t = self;
    size_t n = t->mode == MODE_TWO_STAGE ? 2 : 1;
    if (phase >= n) return t->host->error_set(err, FS_ERR_INVALID, "tinybert: no phase %zu (it has %zu)", phase, n);
    t->phase = (int)phase;
    return FS_OK;
}

/* ---- losses ---- */

typedef struct resid_job {
    float *r;        /* in: projected student (N, Ct); out: residual */
    const float *ht; /* teacher (N, Ct) */
    double *row_loss;
    size_t C;
} resid_job;

static void resid_rows(void *arg, size_t begin, size_t end) {
    resid_job *j = arg;
    for (size_t n = begin; n < end; n++) {
        float *r = j->r + n * j->C;
        const float *h = j->ht + n * j->C;
        double s = 0;
        for (size_t c = 0; c < j->C; c++) {
            r[c] -= h[c];
            s += (double)r[c] * r[c];
        }
        j->row_loss[n] = s;
    }
}

/* w * MSE(hs W, ht) over N x Ct; d hs += c R W^T, dW += c hs^T R, c = 2w / (N Ct) */
static int mse_projected(tinybert *t, const fs_tensor *hs, const fs_tensor *ht, float *dhs, const fs_tensor *w,
                         const fs_tensor *dw, double weight, size_t N, double *loss, fs_error *err) {
    size_t Cs = t->Cs, Ct = t->Ct;
    const fs_host_api *h = t->host;
    int rc = h->sgemm(t->device, 0, 0, N, Ct, Cs, 1.0f, hs->data, Cs, w->data, Ct, 0.0f, t->scratch, Ct);
    if (rc) return h->error_set(err, rc, "tinybert: sgemm failed");
    resid_job j = {t->scratch, ht->data, t->row_loss, Ct};
    h->parallel_for(N, 16, resid_rows, &j);
    double s = 0;
    for (size_t n = 0; n < N; n++) s += t->row_loss[n];
    float c = (float)(2.0 * weight / ((double)N * (double)Ct));
    rc = h->sgemm(t->device, 0, 1, N, Cs, Ct, c, t->scratch, Ct, w->data, Ct, 1.0f, dhs, Cs);
    if (!rc) rc = h->sgemm(t->device, 1, 0, Cs, Ct, N, c, hs->data, Cs, t->scratch, Ct, 1.0f, dw->data, Ct);
    if (rc) return h->error_set(err, rc, "tinybert: sgemm failed");
    *loss += weight * s / ((double)N * (double)Ct);
    return FS_OK;
}

typedef struct att_job {
    const tinybert *t;
    const float *as, *at;
    float *das;
    double *row_loss;
    size_t B, T;
    double c; /* 2 w / (B Hs T T) */
} att_job;

/* rows of (B, Hs, T) against the mean of each head's teacher group */
static void att_rows(void *arg, size_t begin, size_t end) {
    att_job *j = arg;
    const tinybert *t = j->t;
    size_t T = j->T, Hs = t->Hs, Ht = t->Ht;
    for (size_t r = begin; r < end; r++) {
        size_t b = r / (Hs * T), h = (r / T) % Hs, q = r % T;
        size_t lo = h * Ht / Hs, hi = (h + 1) * Ht / Hs;
        if (hi < lo + 1) hi = lo + 1;
        const float *s = j->as + r * T;
        float *g = j->das + r * T;
        double sum = 0, inv = 1.0 / (double)(hi - lo);
        for (size_t k = 0; k < T; k++) {
            double m = 0;
            for (size_t th = lo; th < hi; th++) m += j->at[((b * Ht + th) * T + q) * T + k];
            double d = (double)s[k] - m * inv;
            sum += d * d;
            g[k] += (float)(j->c * d);
        }
        j->row_loss[r] = sum;
    }
}

typedef struct pred_job {
    const tinybert *t;
    const float *zt, *zs;
    const int32_t *labels;
    float *dzs;
    double *row_loss;
    size_t V, N;
} pred_job;

/* w_pred * -sum p_t log p_s (tau) + w_hard * CE; d/dz_s = (w_pred (p_s - p_t) / tau + w_hard (p1 - y)) / N */
static void pred_rows(void *arg, size_t begin, size_t end) {
    pred_job *j = arg;
    const tinybert *t = j->t;
    double tau = t->temperature, inv_t = 1.0 / tau, inv_n = 1.0 / (double)j->N;
    size_t V = j->V;
    for (size_t n = begin; n < end; n++) {
        const float *zt = j->zt + n * V, *zs = j->zs + n * V;
        float *g = j->dzs + n * V;
        double lt = kd_lse(zt, V, inv_t), ls = kd_lse(zs, V, inv_t), l1 = kd_lse(zs, V, 1.0), ce = 0;
        for (size_t i = 0; i < V; i++) {
            double pt = exp(zt[i] * inv_t - lt), log_ps = zs[i] * inv_t - ls, p1 = exp(zs[i] - l1);
            if (pt > 0) ce -= pt * log_ps;
            g[i] = (float)((t->w_pred * (exp(log_ps) - pt) * inv_t + t->w_hard * p1) * inv_n);
        }
        int32_t y = j->labels[n];
        g[y] -= (float)(t->w_hard * inv_n);
        j->row_loss[n] = t->w_pred * ce + t->w_hard * (l1 - zs[y]);
    }
}

static int grow(tinybert *t, size_t N, size_t rows, fs_error *err) {
    if (t->scratch_n < N) {
        t->host->free(t->device, t->scratch);
        t->scratch = t->host->alloc(t->device, N * t->Ct * sizeof(float));
        t->scratch_n = t->scratch ? N : 0;
    }
    if (t->row_cap < rows) {
        t->host->free(t->device, t->row_loss);
        t->row_loss = t->host->alloc(t->device, rows * sizeof(double));
        t->row_cap = t->row_loss ? rows : 0;
    }
    if (!t->scratch || !t->row_loss) return t->host->error_set(err, FS_ERR_NOMEM, "tinybert: out of memory");
    return FS_OK;
}

static int tinybert_loss(void *self, fs_distill_args *a, double *loss, fs_error *err) {
    tinybert *t = self;
    const fs_host_api *h = t->host;
    size_t B = a->B, T = a->T, N = B * T, V = a->V;
    uint32_t needs = tinybert_needs(t);
    if (a->teacher_logits.device.type != FS_DEVICE_CPU || a->student_logits.device.type != FS_DEVICE_CPU)
        return h->error_set(err, FS_ERR_UNSUPPORTED, "tinybert: expects CPU tensors");
    if (((needs & FS_DISTILL_NEEDS_HIDDEN) && (!a->student_hidden || !a->teacher_hidden || !a->dstudent_hidden)) ||
        ((needs & FS_DISTILL_NEEDS_ATTENTION) &&
         (!a->student_attention || !a->teacher_attention || !a->dstudent_attention)))
        return h->error_set(err, FS_ERR_INVALID, "tinybert: the host passed no hidden states or attention maps");
    size_t rows = N > B * t->Hs * T ? N : B * t->Hs * T;
    int rc = grow(t, N, rows, err);
    if (rc) return rc;
    double total = 0;
    if (does_intermediate(t)) {
        if (t->w_emb > 0 &&
            (rc = mse_projected(t, &a->student_hidden[0], &a->teacher_hidden[0], a->dstudent_hidden[0].data, &t->we,
                                &t->dwe, t->w_emb, N, &total, err)))
            return rc;
        for (size_t i = 0; i < t->Ls && t->w_hid > 0; i++)
            if ((rc = mse_projected(t, &a->student_hidden[i + 1], &a->teacher_hidden[t->map[i] + 1],
                                    a->dstudent_hidden[i + 1].data, &t->wh, &t->dwh, t->w_hid, N, &total, err)))
                return rc;
        for (size_t i = 0; i < t->Ls && t->w_att > 0; i++) {
            double elems = (double)B * (double)t->Hs * (double)T * (double)T;
            att_job j = {t, a->student_attention[i].data, a->teacher_attention[t->map[i]].data,
                         a->dstudent_attention[i].data, t->row_loss, B, T, 2.0 * t->w_att / elems};
            h->parallel_for(B * t->Hs * T, 8, att_rows, &j);
            double s = 0;
            for (size_t r = 0; r < B * t->Hs * T; r++) s += t->row_loss[r];
            total += t->w_att * s / elems;
        }
    }
    if (does_prediction(t)) {
        size_t bad = kd_bad_label(a->labels, N, V);
        if (bad < N)
            return h->error_set(err, FS_ERR_INVALID, "tinybert: label %d at position %zu outside [0, %zu)",
                                (int)a->labels[bad], bad, V);
        pred_job j = {t, a->teacher_logits.data, a->student_logits.data, a->labels, a->dstudent_logits.data,
                      t->row_loss, V, N};
        h->parallel_for(N, 8, pred_rows, &j);
        double s = 0;
        for (size_t n = 0; n < N; n++) s += t->row_loss[n];
        total += s / (double)N;
    } else {
        memset(a->dstudent_logits.data, 0, N * V * sizeof(float));
    }
    *loss = total;
    return FS_OK;
}

static const fs_distill_vtable tinybert_vtable = {
    .struct_size = sizeof(fs_distill_vtable),
    .create = tinybert_create,
    .destroy = tinybert_destroy,
    .needs = tinybert_needs,
    .loss = tinybert_loss,
    .phases = tinybert_phases,
    .set_phase = tinybert_set_phase,
};

static const fs_plugin_descriptor tinybert_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_DISTILL,
    .name = "tinybert",
    .version = "1.0.0",
    .summary = "TinyBERT: embedding/hidden (learned projection) and attention MSE through a layer map, then "
               "prediction soft CE",
    .params = tinybert_params,
    .n_params = sizeof tinybert_params / sizeof tinybert_params[0],
    .vtable = &tinybert_vtable,
    .vtable_size = sizeof(tinybert_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(tinybert_descriptor)
