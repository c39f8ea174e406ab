/* train_device.h — the training loop's model on a compute backend (and
 * the eval mode's, which runs its validation batches alone).
 *
 * When [run] device and [backend] (session/device.h) give the train mode a
 * backend, the loop (train.c) keeps everything but the arithmetic: the
 * data, the schedule, the non-finite rule, metrics, validation batches,
 * checkpoints and resume. The arithmetic moves to the device: forward,
 * loss, backward, the gradient norm, clipping and AdamW run there on
 * model/device_gpt.h, and the parameters and AdamW's moments stay there
 * between steps. The CPU model's block and the loop's fs_optimizer are the
 * host side of the same state: uploaded once after initialisation (or a
 * resumed checkpoint), downloaded before each checkpoint and the closing
 * sample, so checkpoints are the CPU path's (f32 safetensors that
 * transformers and every mode load).
 *
 * Under mpirun the ranks split each batch (data parallelism): each holds
 * the whole model on its own device (its local rank's GPU) and the
 * gradients are averaged across ranks before the norm and AdamW, which
 * then run identically everywhere. Tensor and pipeline parallelism and
 * ZeRO stay on the CPU kernels.
 *
 * What the device model does not do (model/device_gpt.h) keeps a graph on
 * the CPU: with device = auto it trains there, with a backend asked for
 * explicitly it is a configuration error naming the reason. */
#ifndef FS_TRAIN_DEVICE_H
#define FS_TRAIN_DEVICE_H

#include "model/optim.h"
#include "session/session.h"

typedef struct fs_train_device fs_train_device;

/* The device the session's training runs on: *out NULL for the runtime's
 * own CPU kernels (nothing asked, or auto where the graph or the objective
 * needs them). `lm` is 1 for the plain language-model objective (distill's
 * objectives run on the CPU); B is the rows of a micro-batch. */
int fs_train_device_open(fs_train_device **out, fs_session *s, int lm, size_t B, fs_error *err);
void fs_train_device_close(fs_train_device *d); /* accepts NULL */

/* "NVIDIA H100 80GB HBM3 (cuda:0, backend cuda, bf16)", for the log. */
const char *fs_train_device_describe(const fs_train_device *d);
/* The backend's name and the precision, for the summary line. */
const char *fs_train_device_backend(const fs_train_device *d);
const char *fs_train_device_precision(const fs_train_device *d);
/* Training FLOPs per token (6 N plus attention) and the device's peak
 * FLOP/s at the run's precision (0 when unknown): the summary's MFU. */
double fs_train_device_flops_per_token(const fs_train_device *d);
double fs_train_device_peak_flops(const fs_train_device *d);

/* The CPU model's parameters and opt's moments (opt NULL: the parameters
 * alone, for evaluation) onto the device, and back. */
int fs_train_device_upload(fs_train_device *d, const fs_optimizer *opt, fs_error *err);
int fs_train_device_download(fs_train_device *d, fs_optimizer *opt, fs_error *err);

int fs_train_device_zero_grad(fs_train_device *d, fs_error *err);
/* Forward, loss and backward of B rows (B, T); gradients accumulate,
 * scaled by dscale; *loss is the unscaled mean. `last`: the step's last
 * micro-batch, whose backward starts the ranks' all-reduces. */
int fs_train_device_micro_batch(fs_train_device *d, const int32_t *inputs, const int32_t *targets, size_t B,
                                float dscale, int last, double *loss, fs_error *err);
/* Data parallelism under mpirun: every rank's gradients made their mean
 * over the ranks (modes/train_ranks.h). Nothing on one rank. */
int fs_train_device_grads_finish(fs_train_device *d, fs_error *err);
/* The sum of squares of every gradient. */
int fs_train_device_grad_sumsq(fs_train_device *d, double *sumsq, fs_error *err);
/* AdamW at lr on the gradients scaled by grad_scale (clipping), as step
 * opt->t + 1 (which it counts, as fs_optimizer_step does). */
int fs_train_device_update(fs_train_device *d, fs_optimizer *opt, double lr, float grad_scale, fs_error *err);

/* fs_batch_loss_fn (modes.h) on the device: the summed loss of nb windows,
 * for validation. arg: the fs_train_device. */
int fs_train_device_batch_sum(void *arg, const int32_t *inputs, const int32_t *targets, size_t nb, size_t T,
                              double *sum, fs_error *err);

#endif
