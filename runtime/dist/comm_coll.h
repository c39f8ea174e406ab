/* comm_coll.h — the collective-communication interface (fastserve/comm.h)
 * over a compute backend's collectives on device buffers (backend.h's
 * coll_* members: NCCL on the cuda backend). Its engine name is "nccl" on
 * a CUDA device, "coll" elsewhere.
 *
 * Beside the process's host communicator (MPI, dist/world.h), not instead
 * of it: the host communicator bootstraps this one (rank 0 makes the id
 * with coll_id, the host broadcasts it, every rank calls coll_create), and
 * group_split splits both, so a group knows its rank and size without
 * asking the device.
 *
 * Tensors are device pointers of the backend (fs_tensor.data, numel and
 * dtype; t->device is not read). Ordering with the model's work, which
 * runs on the backend's compute stream (default_stream):
 *   - every call is queued on the engine's own stream (priority 1), after
 *     an event recorded on the compute stream: it sees everything queued
 *     before it there;
 *   - when it completes (a blocking call's return, a request's wait), the
 *     compute stream is made to wait for it, so work queued after sees the
 *     result;
 *   - blocking calls and wait() poll on the host (event_query, then
 *     coll_check) rather than block in the driver: a peer that failed is
 *     FS_ERR_COMM, and one that makes no progress for timeout_s seconds
 *     (0: forever) aborts the communicator (coll_abort) and is FS_ERR_COMM
 *     too, so no rank hangs;
 *   - send_start and recv_start are only recorded; the first wait() or
 *     test() issues every pending one in one coll_group, as NCCL needs for
 *     a pipeline's simultaneous exchange (two blocking sends would wait for
 *     each other's receives). NCCL has no tags: `tag` is not used, and
 *     messages between two ranks match in the order they were sent;
 *   - after any failure every communicator of the engine (its groups too:
 *     one stream carries them all) is aborted and calls are refused with
 *     FS_ERR_COMM.
 *
 * Not thread-safe: one thread drives a communicator, as with MPI's
 * default. */
#ifndef FS_COMM_COLL_H
#define FS_COMM_COLL_H

#include "core/backend_handle.h"
#include "fastserve/comm.h"

/* A communicator over every rank of `host` (collective over it). b must
 * have FS_BACKEND_COLLECTIVES and outlive it; host too. */
int fs_comm_coll_create(fs_comm **out, fs_backend_handle *b, fs_comm *host, fs_error *err);
/* Destroys it (waiting for its queued work, or aborting after a failed
 * peer); accepts NULL. Groups still open and requests never waited for go
 * with it. */
void fs_comm_coll_destroy(fs_comm *c);

#endif
