/* pipeline.h — the runtime's half of pipeline parallelism.
 *
 * The strategy owns the schedule (GPipe, 1F1B, interleaved 1F1B) and the
 * messages between stages; the runtime owns the arithmetic. A step hands
 * the strategy an fs_stage_ops whose forward and backward run one model
 * chunk on one micro-batch in one activation slot (fs_pipeline_step_ops).
 * Evaluation needs no schedule: fs_pipeline_loss sends each micro-batch
 * through the virtual stages in order, forward only. Used by the train
 * loop. */
#ifndef FS_PIPELINE_H
#define FS_PIPELINE_H

#include "fastserve/parallel.h"
#include "model/model.h"

typedef struct fs_pipeline_step {
    fs_model *m;
    const int32_t *inputs, *targets; /* (rows, T): this data rank's rows of the step */
    size_t micro_rows, T;            /* rows of one micro-batch */
    float dscale;                    /* each micro-batch's loss weight in the step's gradient */
    double loss_sum;                 /* of the micro-batches' mean losses (last stage only) */
    size_t n_loss;
    double busy_s;                   /* seconds spent computing (the rest of the schedule is waiting) */
} fs_pipeline_step;

void fs_pipeline_step_ops(fs_pipeline_step *st, fs_stage_ops *ops);

/* Forward-only loss over n_micro micro-batches of `rows` sequences: every
 * rank of the pipeline (one data rank's) calls it with the same tokens;
 * activations go from virtual stage vs's rank to vs + 1's over comm, world
 * ranks from the Megatron layout of topo. *sum gets the summed (not mean)
 * token losses, on the last stage; 0 elsewhere. */
int fs_pipeline_loss(fs_model *m, const fs_parallel_topology *topo, fs_comm *comm, const int32_t *inputs,
                     const int32_t *targets, size_t rows, size_t T, double *sum, fs_error *err);

#endif
