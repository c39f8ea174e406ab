/* pipeline.c — see pipeline.h. */
#include "dist/pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "compute/ops.h"

static int step_forward(void *ctx, size_t chunk, size_t micro, size_t slot, const float *in, float *out,
                        fs_error *err) {
    fs_pipeline_step *st = ctx;
    fs_model *m = st->m;
    size_t off = micro * st->micro_rows * st->T;
    int head = fs_model_chunk_has_head(m, chunk);
    double loss = 0, t0 = fs_now();
    fs_model_use_slot(m, slot);
    int rc = fs_model_stage_forward(m, chunk, st->inputs + off, in, head ? st->targets + off : NULL, st->micro_rows,
                                    st->T, st->dscale, head ? &loss : NULL, out, err);
    st->busy_s += fs_now() - t0;
    if (!rc && head) {
        st->loss_sum += loss;
        st->n_loss++;
    }
    return rc;
}

static int step_backward(void *ctx, size_t chunk, size_t micro, size_t slot, const float *dout, float *din,
                         fs_error *err) {
    fs_pipeline_step *st = ctx;
    fs_model *m = st->m;
    (void)micro;
    fs_model_use_slot(m, slot);
    double t0 = fs_now();
    int rc = fs_model_stage_backward(m, chunk, dout, din, err);
    st->busy_s += fs_now() - t0;
    return rc;
}

void fs_pipeline_step_ops(fs_pipeline_step *st, fs_stage_ops *ops) {
    memset(ops, 0, sizeof *ops);
    ops->struct_size = sizeof *ops;
    ops->ctx = st;
    ops->act_numel = st->micro_rows * st->T * fs_model_cfg(st->m)->n_embd;
    ops->forward = step_forward;
    ops->backward = step_backward;
}

/* World rank of virtual stage vs within this rank's data and tensor group. */
static int vstage_rank(const fs_parallel_topology *t, size_t vs) {
    size_t pr = vs % (size_t)t->pipeline;
    return (int)(((size_t)t->data_rank * (size_t)t->pipeline + pr) * (size_t)t->tensor + (size_t)t->tensor_rank);
}

int fs_pipeline_loss(fs_model *m, const fs_parallel_topology *topo, fs_comm *comm, const int32_t *inputs,
                     const int32_t *targets, size_t rows, size_t T, double *sum, fs_error *err) {
    size_t C = fs_model_cfg(m)->n_embd, p = (size_t)topo->pipeline, nv = p * fs_model_held(m)->n_chunks;
    size_t BTC = rows * T * C;
    *sum = 0;
    float *a = malloc(BTC * sizeof(float)), *b = malloc(BTC * sizeof(float));
    int rc = a && b ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "out of memory for stage activations");
    fs_model_use_slot(m, 0);
    for (size_t vs = 0; vs < nv && !rc; vs++) {
        if (vs % p != (size_t)topo->pipeline_rank) continue;
        size_t chunk = vs / p;
        fs_tensor ta = fs_tensor_cpu_f32(a, 1, BTC, 0, 0, 0), tb = fs_tensor_cpu_f32(b, 1, BTC, 0, 0, 0);
        if (vs > 0 && (rc = comm->recv(comm, NULL, &ta, vstage_rank(topo, vs - 1), (int)(vs % 30000), err))) break;
        if (vs + 1 == nv) {
            double mean = 0;
            rc = fs_model_stage_forward(m, chunk, inputs, a, targets, rows, T, 0.0f, &mean, NULL, err);
            *sum = mean * (double)(rows * T);
        } else {
            rc = fs_model_stage_forward(m, chunk, inputs, vs ? a : NULL, NULL, rows, T, 0.0f, NULL, b, err);
            if (!rc) rc = comm->send(comm, NULL, &tb, vstage_rank(topo, vs + 1), (int)((vs + 1) % 30000), err);
        }
    }
    free(a);
    free(b);
    return rc;
}
