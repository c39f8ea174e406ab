/* data_sync.h — the gradient traffic of data parallelism.
 *
 * Every data rank holds a replica and computes the gradient of its slice
 * of the global batch; before the optimizer steps, the gradients are
 * summed over the data group and divided by its size (each rank's loss is
 * a mean over its own rows, the global batch's over all of them).
 *
 * Plain: gradients go in buckets, as PyTorch DDP does. The runtime reports
 * ranges of final gradients during backward (last layer first); adjacent
 * ranges gather into an open bucket, which is all-reduced (non-blocking)
 * as soon as it holds bucket_mb, so the all-reduce of the last layers runs
 * while backward computes the first ones. A bucket always holds whole
 * ranges (one layer at least), so it may exceed bucket_mb. grads_finish
 * starts what is left (the open bucket, ranges never reported), waits for
 * everything and scales.
 *
 * ZeRO stage 1 (zero = 1): rank r of d keeps the optimizer state of shard
 * r of the flat vector: equal shards of ceil(n / d) floats (the last ones
 * padded, or empty when n is small). grads_finish reduce-scatters the
 * gradients so that each rank gets its shard's sum; the runtime steps that
 * shard; params_updated all-gathers the shards into whole parameters. The
 * reduce-scatter runs after backward (not overlapped): ZeRO-1 trades that
 * for d times less optimizer memory.
 *
 * The bucketing and shard arithmetic are pure functions, unit-tested
 * without a communicator (tests/unit/test_parallel_grid.c). */
#ifndef FS_PARALLEL_DATA_SYNC_H
#define FS_PARALLEL_DATA_SYNC_H

#include <stddef.h>

#include "fastserve/comm.h"
#include "fastserve/parallel.h"

typedef struct fs_range {
    size_t lo, hi; /* [lo, hi) in floats of the flat vector */
} fs_range;

/* ---- pure arithmetic ---- */

typedef struct fs_bucketer {
    size_t cap; /* floats that close a bucket */
    size_t lo, hi;
    int open;
} fs_bucketer;

void fs_bucketer_init(fs_bucketer *b, size_t cap);
/* A range of final gradients. Writes the buckets this closes (0, 1 or 2:
 * the open one when the range is not adjacent to it, then the one the
 * range completes) to out, in the order to start them. */
size_t fs_bucketer_add(fs_bucketer *b, size_t off, size_t count, fs_range out[2]);
/* Closes the open bucket, if any (0 or 1 written). */
size_t fs_bucketer_flush(fs_bucketer *b, fs_range out[1]);
/* The parts of [0, n) that none of done[0 .. k) covers, ascending; at most
 * k + 1 of them. Sorts done. */
size_t fs_ranges_gaps(fs_range *done, size_t k, size_t n, fs_range *out);

/* ZeRO shards: ceil(n / parts) floats each; shard i is
 * [min(n, i S), min(n, (i + 1) S)). */
size_t fs_shard_size(size_t n, size_t parts);
fs_range fs_shard_range(size_t n, size_t parts, size_t index);

/* ---- the traffic ---- */

typedef struct fs_sync_bucket fs_sync_bucket;

typedef struct fs_data_sync {
    const fs_host_api *host;
    fs_comm *comm;
    fs_comm_group *group; /* the data group (not owned) */
    int size, rank;
    int zero;
    fs_bucketer bucketer;
    fs_sync_bucket *buckets; /* started this step */
    size_t n_buckets, cap_buckets;
    float *stage;            /* ZeRO: size * shard floats */
    float *shard;            /* ZeRO: shard floats */
    size_t stage_n;          /* the n the buffers are sized for */
    fs_parallel_stats stats;
} fs_data_sync;

/* bucket_mb: megabytes (2^20 bytes) that close a bucket. */
int fs_data_sync_init(fs_data_sync *d, const fs_host_api *host, fs_comm *comm, fs_comm_group *group,
                      double bucket_mb, int zero, fs_error *err);
void fs_data_sync_release(fs_data_sync *d);

/* grads_ready: gradients [off, off + count) are final. */
int fs_data_sync_ready(fs_data_sync *d, float *grads, size_t off, size_t count, fs_error *err);
/* grads_finish: every gradient summed over the data group and divided by
 * its size (ZeRO: only this rank's shard is). */
int fs_data_sync_finish(fs_data_sync *d, float *grads, size_t n, fs_error *err);
/* grads_extra: n more gradients, all-reduced in full and scaled. */
int fs_data_sync_extra(fs_data_sync *d, float *grads, size_t n, fs_error *err);
/* optimizer_shard: this rank's [lo, hi) of a flat vector of n floats. */
void fs_data_sync_shard(const fs_data_sync *d, size_t n, size_t *lo, size_t *hi);
/* params_updated: each rank's shard of x (n floats) to every rank. */
int fs_data_sync_gather(fs_data_sync *d, float *x, size_t n, fs_error *err);

#endif
