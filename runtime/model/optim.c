/* optim.c — AdamW, the schedule and clipping. */
#include "model/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "compute/ops.h"
#include "compute/update.h"

int fs_optimizer_init(fs_optimizer *o, const fs_adamw_config *cfg) {
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->hi = o->split = SIZE_MAX; /* no shard: ready() makes it "everything" */
    return FS_OK;
}

/* The owned part of the group whose elements are [g0, g0 + n): its indices
 * [*a, *b) within the group and the offset of *a in the moments. 0 when
 * the rank owns none of it. Groups never straddle `split` (shard checks). */
static int owned(const fs_optimizer *o, size_t g0, size_t n, size_t *a, size_t *b, size_t *mo) {
    if (g0 >= o->split) {
        *a = 0;
        *b = n;
        *mo = (o->hi - o->lo) + (g0 - o->split);
        return n > 0;
    }
    size_t lo = g0 > o->lo ? g0 : o->lo, hi = g0 + n < o->hi ? g0 + n : o->hi;
    if (lo >= hi) return 0;
    *a = lo - g0;
    *b = hi - g0;
    *mo = lo - o->lo;
    return 1;
}

int fs_optimizer_shard(fs_optimizer *o, size_t lo, size_t hi, size_t split, fs_error *err) {
    if (lo > hi || hi > split || split > o->numel)
        return fs_error_set(err, FS_ERR_INVALID, "optimizer shard [%zu, %zu) of %zu (of %zu elements) is not a range",
                            lo, hi, split, o->numel);
    size_t g0 = 0;
    for (size_t g = 0; g < o->n_groups; g++) {
        if (g0 < split && g0 + o->groups[g].numel > split)
            return fs_error_set(err, FS_ERR_INVALID, "optimizer shard: element %zu is inside a parameter", split);
        g0 += o->groups[g].numel;
    }
    o->lo = lo;
    o->hi = hi;
    o->split = split;
    return FS_OK;
}

int fs_optimizer_sharded(const fs_optimizer *o) { return o->n_owned < o->numel; }

void fs_optimizer_export(const fs_optimizer *o, float *m, float *v) {
    size_t g0 = 0, a, b, mo;
    for (size_t g = 0; g < o->n_groups; g0 += o->groups[g].numel, g++)
        if (owned(o, g0, o->groups[g].numel, &a, &b, &mo)) {
            memcpy(m + g0 + a, o->m + mo, (b - a) * sizeof(float));
            memcpy(v + g0 + a, o->v + mo, (b - a) * sizeof(float));
        }
}

void fs_optimizer_import(fs_optimizer *o, const float *m, const float *v) {
    size_t g0 = 0, a, b, mo;
    for (size_t g = 0; g < o->n_groups; g0 += o->groups[g].numel, g++)
        if (owned(o, g0, o->groups[g].numel, &a, &b, &mo)) {
            memcpy(o->m + mo, m + g0 + a, (b - a) * sizeof(float));
            memcpy(o->v + mo, v + g0 + a, (b - a) * sizeof(float));
        }
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
    if (o->split == SIZE_MAX) {
        o->lo = 0;
        o->hi = o->split = o->numel;
    }
    o->n_owned = (o->hi - o->lo) + (o->numel - o->split);
    o->m = fs_calloc(o->n_owned * sizeof(float));
    o->v = fs_calloc(o->n_owned * sizeof(float));
    if (!o->m || !o->v)
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory for optimizer state (%zu floats)", 2 * o->n_owned);
    return FS_OK;
}

void fs_optimizer_release(fs_optimizer *o) {
    if (!o) return;
    free(o->groups);
    fs_free(o->m);
    fs_free(o->v);
    memset(o, 0, sizeof *o);
}

double fs_optimizer_sumsq(const fs_optimizer *o, size_t from, size_t to) {
    double sum = 0.0;
    size_t g0 = 0, a, b, mo;
    for (size_t g = 0; g < o->n_groups; g0 += o->groups[g].numel, g++) {
        if (!owned(o, g0, o->groups[g].numel, &a, &b, &mo)) continue;
        if (g0 + a < from) a = from - g0 < b ? from - g0 : b;
        if (g0 + b > to) b = to > g0 + a ? to - g0 : a;
        sum += sumsq_forward(o->groups[g].grad + a, b - a);
    }
    return sum;
}

double fs_optimizer_grad_norm(const fs_optimizer *o) { return sqrt(fs_optimizer_sumsq(o, 0, o->numel)); }

void fs_optimizer_clip_to(fs_optimizer *o, double max_norm, double norm) {
    if (!(max_norm > 0 && norm > max_norm)) return;
    float s = (float)(max_norm / (norm + 1e-6));
    size_t g0 = 0, a, b, mo;
    for (size_t g = 0; g < o->n_groups; g0 += o->groups[g].numel, g++) {
        if (!owned(o, g0, o->groups[g].numel, &a, &b, &mo)) continue;
        scale_inplace(o->groups[g].grad + a, s, b - a);
    }
}

double fs_optimizer_clip(fs_optimizer *o, double max_norm) {
    double norm = fs_optimizer_grad_norm(o);
    fs_optimizer_clip_to(o, max_norm, norm);
    return norm;
}

void fs_optimizer_step(fs_optimizer *o, double lr) {
    o->t++;
    size_t g0 = 0, a, b, mo;
    for (size_t g = 0; g < o->n_groups; g0 += o->groups[g].numel, g++) {
        fs_optim_group *gr = &o->groups[g];
        if (!owned(o, g0, gr->numel, &a, &b, &mo)) continue;
        adamw_update(gr->param + a, gr->grad + a, o->m + mo, o->v + mo, b - a, (float)lr, (float)o->cfg.beta1,
                     (float)o->cfg.beta2, (float)o->cfg.eps, gr->weight_decay ? (float)o->cfg.weight_decay : 0.0f,
                     1.0f, o->t);
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
