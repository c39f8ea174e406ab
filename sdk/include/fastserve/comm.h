/* fastserve/comm.h — the collective-communication interface.
 *
 * Parallel strategies move tensors between ranks only through this table,
 * so one strategy runs on any engine that implements it: the host's
 * single-process communicator, MPI for CPU processes and nodes, NCCL for
 * GPUs. Calls are collective over `group` unless they say otherwise; a
 * failed peer makes them return FS_ERR_COMM rather than hang. */
#ifndef FASTSERVE_COMM_H
#define FASTSERVE_COMM_H

#include "fastserve/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fs_reduce_op { FS_REDUCE_SUM = 0, FS_REDUCE_MAX = 1, FS_REDUCE_MIN = 2 } fs_reduce_op;

typedef struct fs_comm_request fs_comm_request; /* an in-flight non-blocking call */
typedef struct fs_comm_group fs_comm_group;     /* a set of ranks; NULL = the world */

typedef struct fs_comm {
    uint32_t struct_size;
    const char *engine; /* "self", "mpi", "nccl" */
    void *impl;
    int (*rank)(const struct fs_comm *c, const fs_comm_group *group);
    int (*size)(const struct fs_comm *c, const fs_comm_group *group);
    /* Split the world into groups by color (ranks with the same color form
     * one group, ordered by key). */
    int (*group_split)(struct fs_comm *c, int color, int key, fs_comm_group **out, fs_error *err);
    void (*group_free)(struct fs_comm *c, fs_comm_group *g);
    int (*all_reduce)(struct fs_comm *c, const fs_comm_group *g, fs_tensor *t, int op, fs_error *err);
    /* Non-blocking all-reduce; wait() completes it. */
    int (*all_reduce_start)(struct fs_comm *c, const fs_comm_group *g, fs_tensor *t, int op,
                            fs_comm_request **req, fs_error *err);
    int (*wait)(struct fs_comm *c, fs_comm_request *req, fs_error *err);
    int (*broadcast)(struct fs_comm *c, const fs_comm_group *g, fs_tensor *t, int root, fs_error *err);
    /* `out` holds size * numel(in) elements, rank-major. */
    int (*all_gather)(struct fs_comm *c, const fs_comm_group *g, const fs_tensor *in, fs_tensor *out,
                      fs_error *err);
    /* Point to point, peers numbered within g. */
    int (*send)(struct fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag,
                fs_error *err);
    int (*recv)(struct fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag,
                fs_error *err);
    int (*barrier)(struct fs_comm *c, const fs_comm_group *g, fs_error *err);

    /* ---- since ABI 1.1 (check struct_size) ---- */
    /* Non-blocking point to point; wait() completes them. A pipeline's
     * neighbours send to each other at the same time (activations one way,
     * gradients the other): blocking sends of large messages would deadlock. */
    int (*send_start)(struct fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag,
                      fs_comm_request **req, fs_error *err);
    int (*recv_start)(struct fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag,
                      fs_comm_request **req, fs_error *err);
    /* `in` holds size * numel(out) elements; rank r receives the sum of
     * every rank's block r (ZeRO's gradient reduction). */
    int (*reduce_scatter)(struct fs_comm *c, const fs_comm_group *g, const fs_tensor *in, fs_tensor *out,
                          fs_error *err);
    /* Seconds a blocking or waited call may make no progress before it gives
     * up with FS_ERR_COMM (0 = wait forever): a dead peer ends the run
     * instead of hanging it. */
    double timeout_s;
    /* Sets *done to 1 when req has completed (wait() then returns at once
     * and must still be called: it releases req). MPI moves a non-blocking
     * collective forward only inside MPI calls, so a strategy that overlaps
     * communication with computation tests its requests now and then. */
    int (*test)(struct fs_comm *c, fs_comm_request *req, int *done, fs_error *err);
} fs_comm;

#ifdef __cplusplus
}
#endif
#endif
