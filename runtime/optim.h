/* optim.h — AdamW (decoupled weight decay, as torch.optim.AdamW), the
 * learning-rate schedule (linear warm-up, cosine decay to a floor) and
 * global-norm gradient clipping.
 *
 * The optimizer sees "groups": contiguous float ranges with a weight-decay
 * flag. The model's parameter block contributes one group per tensor (decay
 * on matrices and embeddings only), each plugin-owned parameter one more.
 * Its moments live in one block in group order, which is what checkpoints
 * save. */
#ifndef FS_OPTIM_H
#define FS_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/plugin.h"

typedef struct fs_adamw_config {
    double lr, beta1, beta2, eps, weight_decay;
} fs_adamw_config;

typedef struct fs_optim_group {
    float *param, *grad;
    size_t numel;
    int weight_decay;
} fs_optim_group;

typedef struct fs_optimizer {
    fs_adamw_config cfg;
    fs_optim_group *groups;
    size_t n_groups, cap_groups;
    size_t numel; /* sum over groups */
    float *m, *v; /* (numel) */
    uint64_t t;   /* steps taken */
} fs_optimizer;

int fs_optimizer_init(fs_optimizer *o, const fs_adamw_config *cfg);
int fs_optimizer_add(fs_optimizer *o, float *param, float *grad, size_t numel, int weight_decay, fs_error *err);
/* Allocates the zeroed moments once all groups are added. */
int fs_optimizer_ready(fs_optimizer *o, fs_error *err);
void fs_optimizer_release(fs_optimizer *o);

/* L2 norm of all gradients (in double). */
double fs_optimizer_grad_norm(const fs_optimizer *o);
/* Scales gradients so their norm is at most max_norm (0 disables); returns
 * the norm before clipping. */
double fs_optimizer_clip(fs_optimizer *o, double max_norm);
void fs_optimizer_step(fs_optimizer *o, double lr);

/* lr at step (0-based) of `total`: linear warm-up over `warmup` steps, then
 * cosine from lr to lr * min_ratio at the last step. */
double fs_lr_schedule(double lr, double min_ratio, uint64_t step, uint64_t warmup, uint64_t total);

// one AdamW update of n elements (t is 1-based)
void adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, uint64_t t);

#endif
