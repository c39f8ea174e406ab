/* train_ranks.h — data parallelism for training on a compute backend:
 * every rank's gradients made their mean over the ranks, as the data
 * strategy's are on the CPU kernels (plugins/parallel/data_sync.c: a sum,
 * then one multiplication by 1 / ranks).
 *
 * Three ways, by what the backend's memory is:
 *   - a backend with collectives (FS_BACKEND_COLLECTIVES: NCCL on cuda):
 *     dist/comm_coll.h's engine sums device buffers on a stream of its own;
 *   - a backend whose memory is host memory (the cpu backend): the host's
 *     communicator (MPI) sums the buffers in place;
 *   - any other (cuda built without NCCL): the gradients cross through a
 *     host buffer, summed there by the host's communicator, after backward.
 * The first two are bucketed as PyTorch DDP's are: the all-reduce of each
 * range of the block starts as backward finishes it (ln_f and an untied
 * head, each layer from the last, the embeddings: model/device_gpt.h's
 * grads-ready calls) in the last micro-batch of a step, so communication
 * overlaps the rest of backward; finish waits for them, then sums the
 * plugins' own tensors and scales. */
#ifndef FS_TRAIN_RANKS_H
#define FS_TRAIN_RANKS_H

#include "core/backend_handle.h"
#include "fastserve/comm.h"
#include "model/device_gpt.h"

typedef struct fs_train_ranks fs_train_ranks;

/* Collective over every rank of `host` (the world): *out stays NULL on one
 * rank. b, m and host must outlive it. */
int fs_train_ranks_open(fs_train_ranks **out, fs_backend_handle *b, fs_device_gpt *m, fs_comm *host, fs_error *err);
/* Waits for what is still in flight (a failed step's buckets); accepts
 * NULL. */
void fs_train_ranks_close(fs_train_ranks *r);
/* "gradients averaged over 2 ranks by nccl, per layer during backward". */
const char *fs_train_ranks_describe(const fs_train_ranks *r);

/* Before a micro-batch's backward: `last` = 1 in the step's last one,
 * whose backward starts the buckets (earlier ones only accumulate). */
void fs_train_ranks_arm(fs_train_ranks *r, int last);
/* After the step's last backward: every gradient the mean over the ranks.
 * A failed peer or a timeout is FS_ERR_COMM. */
int fs_train_ranks_finish(fs_train_ranks *r, fs_error *err);

#endif
