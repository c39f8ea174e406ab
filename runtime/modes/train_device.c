/* train_device.c — see train_device.h. */
#include "modes/train_device.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/world.h"
#include "model/device_gpt.h"
#include "modes/train_ranks.h"
#include "session/device.h"

/* [train] precision: the activations' type, how f32 GEMMs compute, and
 * which of the device's peaks MFU divides by. */
typedef struct precision {
    const char *name;
    int32_t dtype, compute;
    size_t peak; /* offset of the peak in fs_backend_device_info */
} precision;

static const precision precisions[] = {
    {"fp32", FS_DTYPE_F32, FS_GEMM_COMPUTE_F32, offsetof(fs_backend_device_info, peak_tflops_f32)},
    {"tf32", FS_DTYPE_F32, FS_GEMM_COMPUTE_TF32, offsetof(fs_backend_device_info, peak_tflops_tf32)},
    {"bf16", FS_DTYPE_BF16, FS_GEMM_COMPUTE_F32, offsetof(fs_backend_device_info, peak_tflops_bf16)},
};

struct fs_train_device {
    fs_session *s;
    fs_backend_handle b;
    fs_device_gpt *m;
    fs_device_gpt_attention *layers;
    const precision *prec;
    fs_backend_device_info info;
    double flops_per_token;
    fs_train_ranks *ranks; /* data parallelism under mpirun, or NULL */
    char describe[320];
};

static const precision *find_precision(const char *name) {
    for (size_t i = 0; i < sizeof precisions / sizeof precisions[0]; i++)
        if (!strcmp(precisions[i].name, name)) return &precisions[i];
    return &precisions[0];
}

/* Why the graph cannot train on a backend of device type `type` (empty:
 * it can): what model/device_gpt.h does not do, or a parallel layout
 * other than data parallelism. */
static void unsupported(const fs_session *s, int lm, int32_t type, char *why, size_t cap) {
    why[0] = '\0';
    if (!lm) {
        snprintf(why, cap, "distillation trains on the runtime's own CPU kernels only");
    } else if (s->topo.tensor > 1 || s->topo.pipeline > 1) {
        snprintf(why, cap,
                 "tensor x%d, pipeline x%d: on a backend every rank holds the whole model and the ranks split the "
                 "batch (data parallelism); tensor and pipeline parallelism run on the runtime's own CPU kernels",
                 s->topo.tensor, s->topo.pipeline);
    } else if (s->topo.data > 1 && fs_config_int(s->parallel.config, "zero")) {
        snprintf(why, cap,
                 "%s: ZeRO's optimizer shards run on the runtime's own CPU kernels; on a backend every rank keeps "
                 "the whole optimizer state (set zero = 0)",
                 fs_config_where(s->parallel.config, "zero"));
    } else if (s->mcfg.reversible) {
        snprintf(why, cap, "%s: reversible layers run on the runtime's own CPU kernels only",
                 fs_config_where(s->model_cfg, "reversible"));
    }
    for (size_t l = 0; !why[0] && type == FS_DEVICE_CUDA && l < s->mcfg.n_layer; l++) {
        const fs_attention_vtable *vt = s->layers[l].plugin->desc->vtable;
        if (!(vt->flags & FS_ATTENTION_CUDA))
            snprintf(why, cap, "layer %zu: attention plugin '%s' has no CUDA path (FS_ATTENTION_CUDA)", l,
                     s->layers[l].plugin->desc->name);
    }
}

/* The backend plugin and device the session asks for, when the graph can
 * train there: *plugin NULL for the CPU's own kernels. */
static int choose(fs_session *s, int lm, const fs_plugin **plugin, fs_device *dev, fs_error *err) {
    int rc = fs_session_backend(s, plugin, dev, err);
    if (rc || !*plugin) return rc;
    char why[256];
    unsupported(s, lm, dev->type, why, sizeof why);
    if (!why[0]) return FS_OK;
    *plugin = NULL;
    if (!fs_session_backend_asked(s)) {
        if (fs_world_rank() == 0) fs_log(FS_LOG_INFO, NULL, "[run] device = auto: training on the CPU: %s", why);
        return FS_OK;
    }
    return fs_error_set(err, FS_ERR_INVALID, "%s asks for a compute backend, but %s", fs_session_backend_where(s),
                        why);
}

/* [train] precision on the chosen backend (bf16 needs FS_BACKEND_BF16). */
static int check_precision(const fs_train_device *d, fs_error *err) {
    if (d->prec->dtype != FS_DTYPE_BF16 || (d->b.vt->flags & FS_BACKEND_BF16)) return FS_OK;
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: backend '%s' has no bf16 arithmetic (FS_BACKEND_BF16): use fp32 or tf32 there, "
                        "or [run] device = cuda",
                        fs_config_where(d->s->train_cfg, "precision"), d->b.plugin->desc->name);
}

/* The device model's tensors are the CPU model's, in the same order: the
 * block moves whole. */
static int check_layout(const fs_train_device *d, fs_error *err) {
    const fs_param_block *pb = fs_model_block(d->s->model);
    size_t n = fs_device_gpt_n_tensors(d->m);
    if (n != pb->n_views || fs_device_gpt_n_params(d->m) != pb->n)
        return fs_error_set(err, FS_ERR_RUNTIME, "device model: %zu tensors (%zu floats), the CPU model %zu (%zu)", n,
                            fs_device_gpt_n_params(d->m), pb->n_views, pb->n);
    for (size_t i = 0; i < n; i++) {
        const fs_param_view *v = &pb->views[i];
        if (strcmp(v->name, fs_device_gpt_tensor_name(d->m, i)) || v->offset != fs_device_gpt_tensor_offset(d->m, i) ||
            v->numel != fs_device_gpt_tensor_numel(d->m, i))
            return fs_error_set(err, FS_ERR_RUNTIME, "device model: tensor %zu is %s, the CPU model's %s", i,
                                fs_device_gpt_tensor_name(d->m, i), v->name);
    }
    return FS_OK;
}

static int create_model(fs_train_device *d, size_t B, fs_error *err) {
    fs_session *s = d->s;
    d->layers = calloc(s->mcfg.n_layer, sizeof *d->layers);
    if (!d->layers) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    for (size_t l = 0; l < s->mcfg.n_layer; l++)
        d->layers[l] = (fs_device_gpt_attention){s->layers[l].plugin->desc->vtable, s->layers[l].plugin->desc->name,
                                                 s->layers[l].config};
    fs_device_gpt_config c = {.V = s->mcfg.vocab, .maxT = s->mcfg.max_seq, .L = s->mcfg.n_layer,
                              .H = s->mcfg.n_head, .C = s->mcfg.n_embd, .B = B, .T = s->mcfg.max_seq,
                              .dtype = d->prec->dtype, .compute = d->prec->compute, .layers = d->layers,
                              .host = &s->host, .untied_head = s->mcfg.untied_head};
    int rc = fs_device_gpt_create(&d->m, &d->b, &c, err);
    if (!rc) rc = check_layout(d, err);
    if (!rc) rc = fs_device_gpt_device_info(d->m, &d->info, err);
    if (rc) return rc;
    d->flops_per_token = fs_device_gpt_train_flops(d->m) / (double)(B * s->mcfg.max_seq);
    snprintf(d->describe, sizeof d->describe, "%s (%s:%d, backend %s, %s)", d->info.name,
             d->b.device.type == FS_DEVICE_CUDA ? "cuda" : "cpu", (int)d->b.device.index, d->b.plugin->desc->name,
             d->prec->name);
    return FS_OK;
}

/* Several ranks: their gradients averaged (train_ranks.h). */
static int open_ranks(fs_train_device *d, fs_error *err) {
    int rc = fs_train_ranks_open(&d->ranks, &d->b, d->m, d->s->comm, err);
    size_t n = strlen(d->describe);
    if (!rc && d->ranks) snprintf(d->describe + n, sizeof d->describe - n, ", %s", fs_train_ranks_describe(d->ranks));
    return rc;
}

int fs_train_device_open(fs_train_device **out, fs_session *s, int lm, size_t B, fs_error *err) {
    *out = NULL;
    const fs_plugin *plugin;
    fs_device dev;
    int rc = choose(s, lm, &plugin, &dev, err);
    if (rc || !plugin) return rc;
    fs_train_device *d = calloc(1, sizeof *d);
    if (!d) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    d->s = s;
    d->prec = find_precision(fs_config_string(s->train_cfg, "precision"));
    rc = fs_backend_handle_open_plugin(&d->b, plugin, (int)dev.index, d->prec->compute, err);
    if (!rc) rc = check_precision(d, err);
    if (!rc) rc = create_model(d, B, err);
    if (!rc) rc = open_ranks(d, err);
    if (rc) {
        fs_train_device_close(d);
        return rc;
    }
    *out = d;
    return FS_OK;
}

void fs_train_device_close(fs_train_device *d) {
    if (!d) return;
    fs_train_ranks_close(d->ranks);
    fs_device_gpt_destroy(d->m);
    fs_backend_handle_close(&d->b);
    free(d->layers);
    free(d);
}

const char *fs_train_device_describe(const fs_train_device *d) { return d->describe; }
const char *fs_train_device_backend(const fs_train_device *d) { return d->b.plugin->desc->name; }
const char *fs_train_device_precision(const fs_train_device *d) { return d->prec->name; }
double fs_train_device_flops_per_token(const fs_train_device *d) { return d->flops_per_token; }

double fs_train_device_peak_flops(const fs_train_device *d) {
    double tflops;
    memcpy(&tflops, (const char *)&d->info + d->prec->peak, sizeof tflops);
    return tflops * 1e12;
}

/* The loop's optimizer holds the whole state in block order (one group per
 * tensor, no ZeRO shard: every rank keeps all of it). */
static int check_optimizer(const fs_train_device *d, const fs_optimizer *opt, fs_error *err) {
    if (opt->numel == fs_device_gpt_n_params(d->m) && opt->n_owned == opt->numel) return FS_OK;
    return fs_error_set(err, FS_ERR_RUNTIME, "device training: the optimizer holds %zu of %zu floats", opt->n_owned,
                        fs_device_gpt_n_params(d->m));
}

int fs_train_device_upload(fs_train_device *d, const fs_optimizer *opt, fs_error *err) {
    int rc = opt ? check_optimizer(d, opt, err) : FS_OK;
    if (!rc) rc = fs_device_gpt_set_params(d->m, fs_model_block(d->s->model)->params, err);
    return rc || !opt ? rc : fs_device_gpt_set_moments(d->m, opt->m, opt->v, err);
}

int fs_train_device_download(fs_train_device *d, fs_optimizer *opt, fs_error *err) {
    int rc = check_optimizer(d, opt, err);
    if (!rc) rc = fs_device_gpt_get_params(d->m, fs_model_block(d->s->model)->params, err);
    return rc ? rc : fs_device_gpt_get_moments(d->m, opt->m, opt->v, err);
}

int fs_train_device_zero_grad(fs_train_device *d, fs_error *err) { return fs_device_gpt_zero_grad(d->m, err); }

int fs_train_device_micro_batch(fs_train_device *d, const int32_t *inputs, const int32_t *targets, size_t B,
                                float dscale, int last, double *loss, fs_error *err) {
    int rc = fs_device_gpt_forward_rows(d->m, inputs, targets, B, dscale, loss, err);
    fs_train_ranks_arm(d->ranks, last);
    return rc ? rc : fs_device_gpt_backward(d->m, err);
}

int fs_train_device_grads_finish(fs_train_device *d, fs_error *err) { return fs_train_ranks_finish(d->ranks, err); }

int fs_train_device_grad_sumsq(fs_train_device *d, double *sumsq, fs_error *err) {
    double norm;
    int rc = fs_device_gpt_grad_norm(d->m, &norm, err);
    *sumsq = norm * norm;
    return rc;
}

int fs_train_device_update(fs_train_device *d, fs_optimizer *opt, double lr, float grad_scale, fs_error *err) {
    const fs_adamw_config *c = &opt->cfg;
    opt->t++;
    return fs_device_gpt_adamw(d->m, (float)lr, (float)c->beta1, (float)c->beta2, (float)c->eps,
                               (float)c->weight_decay, grad_scale, opt->t, err);
}

int fs_train_device_batch_sum(void *arg, const int32_t *inputs, const int32_t *targets, size_t nb, size_t T,
                              double *sum, fs_error *err) {
    fs_train_device *d = arg;
    double mean;
    int rc = fs_device_gpt_forward_rows(d->m, inputs, targets, nb, 1.0f, &mean, err);
    *sum = rc ? 0.0 : mean * (double)(nb * T);
    return rc;
}
