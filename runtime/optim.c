/* optim.c — AdamW, the schedule and clipping. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "ops.h"

int fs_optimizer_init(fs_optimizer *o, const fs_adamw_config *cfg) {
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    return FS_OK;
}

int fs_optimizer_add(fs_optimizer *o, float *param, float *grad, size_t numel, int weight_decay, fs_error *err) {
    if (o->n_groups == o->cap_groups) {
        size_t cap = o->cap_groups ? 2 * o->cap_groups : 64;
        fs_optim_group *g = realloc(o->groups, cap * sizeof *g);
        if (!g) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        o->groups = g;
        o->cap_groups = cap;
    }
    o->groups[o->n_groups++] = (fs_optim_group){param, grad, numel, weight_decay};
    o->numel += numel;
    return FS_OK;
}

int fs_optimizer_ready(fs_optimizer *o, fs_error *err) {
    o->m = fs_calloc(o->numel * sizeof(float));
    o->v = fs_calloc(o->numel * sizeof(float));
    if (!o->m || !o->v)
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory for optimizer state (%zu floats)", 2 * o->numel);
    return FS_OK;
}

void fs_optimizer_release(fs_optimizer *o) {
    if (!o) return;
    free(o->groups);
    fs_free(o->m);
    fs_free(o->v);
    memset(o, 0, sizeof *o);
}

double fs_optimizer_grad_norm(const fs_optimizer *o) {
    double sum = 0.0;
    for (size_t g = 0; g < o->n_groups; g++) {
        const float *x = o->groups[g].grad;
        size_t n = o->groups[g].numel;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (n >= FS_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    }
    return sqrt(sum);
}

double fs_optimizer_clip(fs_optimizer *o, double max_norm) {
    double norm = fs_optimizer_grad_norm(o);
    if (max_norm > 0 && norm > max_norm) {
        float s = (float)(max_norm / (norm + 1e-6));
        for (size_t g = 0; g < o->n_groups; g++) {
            float *x = o->groups[g].grad;
            size_t n = o->groups[g].numel;
#pragma omp parallel for schedule(static) if (n >= FS_PARALLEL_MIN)
            for (size_t i = 0; i < n; i++) x[i] *= s;
        }
    }
    return norm;
}

void adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, uint64_t t) {
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for schedule(static) if (n >= FS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi / bc1, vhat = vi / bc2;
        param[i] = param[i] * decay - lr * mhat / (sqrtf(vhat) + eps);
    }
}

void fs_optimizer_step(fs_optimizer *o, double lr) {
    o->t++;
    size_t off = 0;
    for (size_t g = 0; g < o->n_groups; g++) {
        fs_optim_group *gr = &o->groups[g];
        adamw_update(gr->param, gr->grad, o->m + off, o->v + off, gr->numel, (float)lr, (float)o->cfg.beta1,
                     (float)o->cfg.beta2, (float)o->cfg.eps, gr->weight_decay ? (float)o->cfg.weight_decay : 0.0f,
                     o->t);
        off += gr->numel;
    }
}

double fs_lr_schedule(double lr, double min_ratio, uint64_t step, uint64_t warmup, uint64_t total) {
    if (step < warmup) return lr * (double)(step + 1) / (double)warmup;
    if (total <= warmup + 1) return lr;
    double progress = (double)(step - warmup) / (double)(total - warmup - 1);
    if (progress > 1.0) progress = 1.0;
    double min_lr = lr * min_ratio;
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + cos(3.141592653589793 * progress));
}
