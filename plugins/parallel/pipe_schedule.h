/* pipe_schedule.h — pipeline-parallel schedules, the layer partition and
 * the executor that runs a schedule over fs_comm.
 *
 * Internal to the parallel plugins (linked in as the static library
 * fs_pipe_schedule) and to `fsrun --plan`, which builds the same schedules
 * to count activation slots; not part of the SDK.
 *
 * Terms (as sdk/include/fastserve/parallel.h has them):
 *   p = stages (pipeline ranks), v = interleave (model chunks per rank),
 *   m = micro-batches per step. Virtual stage vs = chunk * p + stage
 *   (Megatron-LM's interleaving), so the forward of vs on stage s sends its
 *   output to vs + 1, on stage (s + 1) % p, which is chunk + 1 when
 *   s == p - 1; backward sends the input gradient to vs - 1.
 *
 * Schedules (the per-stage op order of one step):
 *   GPipe        every forward (micro 0..m-1), then every backward
 *                (micro 0..m-1): m micro-batches in flight.
 *   1F1B         PipeDream-Flush: min(p - s - 1, m) warm-up forwards, then
 *                one forward and one backward alternately, then the
 *                remaining backwards: at most min(m, p - s) in flight.
 *   interleaved  Megatron-LM's interleaved 1F1B over m * v (chunk, micro)
 *                forwards taken in groups of p micro-batches per chunk;
 *                warm-up (p - s - 1) * 2 + (v - 1) * p forwards (all of them
 *                when m == p), capped at m * v. Needs p >= 2, v >= 2 and
 *                m % p == 0, as Megatron-LM does.
 * With equal costs the bubble fraction (idle time / step time) is
 * (p - 1) / (m + p - 1) for GPipe and 1F1B and (p - 1) / (v * m + p - 1)
 * for interleaved (tests/unit/test_pipe_schedule.c simulates them). */
#ifndef FS_PIPE_SCHEDULE_H
#define FS_PIPE_SCHEDULE_H

#include <stddef.h>

#include "fastserve/comm.h"
#include "fastserve/parallel.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { FS_PIPE_GPIPE = 0, FS_PIPE_1F1B = 1, FS_PIPE_INTERLEAVED = 2 };
enum { FS_PIPE_FWD = 0, FS_PIPE_BWD = 1 };

/* One forward or backward of model chunk `chunk` on micro-batch `micro`,
 * using activation slot `slot` (< the schedule's `slots`). */
typedef struct fs_pipe_op {
    int kind; /* FS_PIPE_FWD or FS_PIPE_BWD */
    size_t chunk, micro, slot;
} fs_pipe_op;

typedef struct fs_pipe_schedule {
    fs_pipe_op *ops; /* 2 * micro * interleave, in execution order */
    size_t n_ops;
    /* Activation slots a chunk needs at most: a slot is taken (lowest free
     * first) by a micro-batch's forward on a chunk and freed by its
     * backward there. The runtime keeps `slots` per chunk. */
    size_t slots;
    int type;
    size_t stages, stage, micro, interleave;
} fs_pipe_schedule;

/* The op order of stage `stage` (0 .. stages - 1) for one step. Returns 0,
 * or FS_ERR_INVALID with a one-line reason in msg for an impossible shape
 * (stages, micro or interleave 0; stage out of range; gpipe or 1f1b with
 * interleave != 1; interleaved with stages < 2, interleave < 2 or micro not
 * a multiple of stages), FS_ERR_NOMEM. On failure *s is empty (release is
 * still safe). */
int fs_pipe_schedule_build(fs_pipe_schedule *s, int type, size_t stages, size_t stage, size_t micro, size_t interleave,
                           char *msg, size_t cap);
void fs_pipe_schedule_release(fs_pipe_schedule *s); /* accepts NULL and empty */

/* Micro-batches when the graph does not say: 1 without a pipeline; with
 * one, the most that divides the per-rank batch up to 4 x pipeline (more
 * shrink the bubble until they get too small to compute efficiently), a
 * multiple of pipeline for the interleaved schedule. 0 when none fits. */
size_t fs_pipe_default_microbatches(size_t local_batch, size_t pipeline, int interleaved);

/* "gpipe", "1f1b", "interleaved" -> FS_PIPE_*, -1 for anything else. */
int fs_pipe_schedule_parse(const char *name);
const char *fs_pipe_schedule_name(int type);

/* Layers [first[i], first[i] + count[i]) of each virtual stage i
 * (0 .. n_vstages - 1).
 *   spec "0-3,4-7" (a range "A-B" inclusive or a single layer "A", one per
 *   virtual stage, covering 0 .. n_layer - 1 in order without gaps or
 *   overlaps): taken as written.
 *   spec NULL or "": balanced by cost. A layer costs 1, the first virtual
 *   stage additionally embed_cost and the last head_cost; the partition is
 *   contiguous, gives every stage at least one layer and minimises the
 *   largest stage cost; among the optimal ones, later stages take as many
 *   layers as they can (earlier stages keep more micro-batches in flight
 *   under 1F1B, so they are the ones to lighten).
 * Errors: FS_ERR_INVALID with a reason in msg (to be prefixed by the
 * caller's "graph.ini:N: [parallel] stages = ...: "), e.g. n_vstages >
 * n_layer, a gap, an overlap, a layer out of range, a wrong number of
 * ranges. */
int fs_pipe_partition(size_t n_layer, size_t n_vstages, const char *spec, double embed_cost, double head_cost,
                      size_t *first, size_t *count, char *msg, size_t cap);

/* Costs for fs_pipe_partition in units of one layer's forward FLOPs for a
 * GPT of width C, sequence T and vocabulary V: a layer does 24 C^2 + 4 T C
 * FLOPs per token (QKV, projection and MLP matmuls; Q K^T and A V), the
 * tied LM head 2 C V, the embedding lookup next to nothing. */
void fs_pipe_default_costs(size_t n_embd, size_t seq, size_t vocab, double *embed_cost, double *head_cost);

/* Floats of the buffers fs_pipe_run needs for schedule s:
 * 4 * interleave * slots * act_numel (per (chunk, slot): the received
 * input, the output being sent, the received output gradient and the
 * input gradient being sent). 0 when stages == 1 (nothing is sent). */
size_t fs_pipe_workspace_floats(const fs_pipe_schedule *s, size_t act_numel);

/* Runs schedule s on this rank. For each op in order:
 *   FWD: receive the input from virtual stage vs - 1 (unless vs == 0),
 *        ops->forward, send the output to vs + 1 (unless vs is the last);
 *   BWD: receive the output gradient from vs + 1 (unless the last),
 *        ops->backward, send the input gradient to vs - 1 (unless vs == 0).
 * Sends are non-blocking (comm->send_start) and completed only when their
 * buffer is needed again or at the end, so neighbours that send to each
 * other at the same time never deadlock, even with rendezvous sends; the
 * receive of the next op is posted before the current op computes. Peers
 * are numbered within pipe_group by pipeline rank (comm->rank(comm,
 * pipe_group) must be s->stage); comm and pipe_group may be NULL when
 * stages == 1. Tags: 2 * (vs * m + micro) + direction, vs the sending
 * virtual stage, m = s->micro: unique within a step and below
 * 2 * stages * interleave * m (MPI guarantees tags up to 32767).
 *
 * Guarantees to ops: `in` stays valid and unchanged from the forward of
 * (chunk, micro) until its backward returns (so the runtime may keep a
 * pointer instead of a copy); `out`, `dout`, `din` are valid during the
 * call only. Each buffer is act_numel floats.
 *
 * Errors: whatever ops or comm return (a dead peer: FS_ERR_COMM after the
 * comm's timeout_s), FS_ERR_INVALID for a bad call. After an error,
 * requests still in flight are abandoned: the step is lost and the run
 * must end. */
int fs_pipe_run(const fs_pipe_schedule *s, const fs_stage_ops *ops, fs_comm *comm, const fs_comm_group *pipe_group,
                fs_error *err);
/* The same with caller-owned buffers: workspace holds at least
 * fs_pipe_workspace_floats(s, ops->act_numel) floats (NULL: fs_pipe_run
 * allocates them for the call), so a run reuses them across steps. */
int fs_pipe_run_ws(const fs_pipe_schedule *s, const fs_stage_ops *ops, fs_comm *comm, const fs_comm_group *pipe_group,
                   float *workspace, fs_error *err);

#ifdef __cplusplus
}
#endif
#endif
