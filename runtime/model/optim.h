/* optim.h — AdamW (decoupled weight decay, as torch.optim.AdamW), the
 * learning-rate schedule (linear warm-up, cosine decay to a floor) and
 * global-norm gradient clipping.
 *
 * The optimizer sees "groups": contiguous float ranges with a weight-decay
 * flag. The model's parameter block contributes one group per tensor (decay
 * on matrices and embeddings only), each plugin-owned parameter one more.
 * Its moments live in one block in group order, which is what checkpoints
 * save.
 *
 * ZeRO stage 1: a rank may own only part of the state. Elements (in group
 * order) [0, split) are the runtime's flat parameter vector, of which this
 * rank steps [lo, hi); elements from split on (plugin-owned parameters,
 * replicated on every rank) it always steps. Moments exist only for owned
 * elements; checkpoints move the full state through fs_optimizer_export /
 * _import. Without a shard everything is owned. */
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
    size_t numel; /* sum over groups: the full state a checkpoint holds */
    size_t lo, hi, split; /* owned: [lo, hi) of [0, split), and [split, numel) */
    size_t n_owned;       /* (hi - lo) + (numel - split) */
    float *m, *v;         /* (n_owned): [lo, hi) first, then [split, numel) */
    uint64_t t;           /* steps taken */
} fs_optimizer;

int fs_optimizer_init(fs_optimizer *o, const fs_adamw_config *cfg);
int fs_optimizer_add(fs_optimizer *o, float *param, float *grad, size_t numel, int weight_decay, fs_error *err);
/* ZeRO-1: own only [lo, hi) of the first `split` elements (and all from
 * split on). Call after the groups are added, before ready. */
int fs_optimizer_shard(fs_optimizer *o, size_t lo, size_t hi, size_t split, fs_error *err);
/* Allocates the zeroed moments once all groups are added. */
int fs_optimizer_ready(fs_optimizer *o, fs_error *err);
/* 1 when this rank owns less than the whole state. */
int fs_optimizer_sharded(const fs_optimizer *o);
/* The owned moments into full-size (numel) m and v at their places (the
 * rest is left alone), and back: the checkpoint's view of the state. */
void fs_optimizer_export(const fs_optimizer *o, float *m, float *v);
void fs_optimizer_import(fs_optimizer *o, const float *m, const float *v);
void fs_optimizer_release(fs_optimizer *o);

/* L2 norm of all (owned) gradients (in double). */
double fs_optimizer_grad_norm(const fs_optimizer *o);
/* Sum of squares of the owned gradients among elements [from, to): a
 * rank's share of a global norm that a reduction over ranks completes. */
double fs_optimizer_sumsq(const fs_optimizer *o, size_t from, size_t to);
/* Scales gradients so their norm is at most max_norm (0 disables); returns
 * the norm before clipping. */
double fs_optimizer_clip(fs_optimizer *o, double max_norm);
/* The same with a norm computed elsewhere (over every rank's gradients):
 * scales the owned gradients by max_norm / norm when norm > max_norm > 0. */
void fs_optimizer_clip_to(fs_optimizer *o, double max_norm, double norm);
/* One AdamW step of the owned elements. */
void fs_optimizer_step(fs_optimizer *o, double lr);

/* lr at step (0-based) of `total`: linear warm-up over `warmup` steps, then
 * cosine from lr to lr * min_ratio at the last step. */
double fs_lr_schedule(double lr, double min_ratio, uint64_t step, uint64_t warmup, uint64_t total);

#endif
