/* strategy.c — see strategy.h. */
#include "strategy.h"

#include <stdio.h>
#include <string.h>

#include "data_sync.h"
#include "pipe_schedule.h"

const fs_param_spec fs_strategy_params[FS_STRATEGY_N_PARAMS] = {
    {"data", FS_PARAM_INT, "0", 0, 65536, NULL,
     "data-parallel degree: replicas, each a slice of the batch (0 = the rest under plugin = data, else 1)"},
    {"tensor", FS_PARAM_INT, "0", 0, 65536, NULL,
     "tensor-parallel degree: heads and MLP split Megatron-style (0 = the rest under plugin = tensor, else 1)"},
    {"pipeline", FS_PARAM_INT, "0", 0, 65536, NULL,
     "pipeline stages: layers split into stages (0 = the rest under plugin = pipeline, else 1)"},
    {"bucket_mb", FS_PARAM_FLOAT, "25", 1e-6, 1e6, NULL,
     "data: megabytes of gradients per all-reduce bucket, started during backward (PyTorch DDP's 25)"},
    {"zero", FS_PARAM_INT, "0", 0, 1, NULL,
     "data: 1 = ZeRO stage 1, optimizer state sharded over the data ranks, parameters gathered after the step"},
    {"microbatches", FS_PARAM_INT, "0", 0, 65536, NULL,
     "pipeline: micro-batches per step (0 = 1 without a pipeline, else the most up to 4 x pipeline dividing "
     "the per-rank batch)"},
    {"schedule", FS_PARAM_ENUM, "1f1b", 0, 0, "gpipe|1f1b|interleaved",
     "pipeline schedule: gpipe, 1f1b (PipeDream-Flush) or interleaved 1F1B (Megatron-LM)"},
    {"interleave", FS_PARAM_INT, "1", 1, 64, NULL,
     "pipeline: model chunks (virtual stages) per rank; > 1 only with schedule = interleaved"},
    {"stages", FS_PARAM_STRING, "", 0, 0, NULL,
     "pipeline: layers of each (virtual) stage, e.g. 0-3,4-7 (empty = balanced by cost)"},
    {"timeout", FS_PARAM_FLOAT, "300", 0, 1e7, NULL,
     "seconds a collective may wait for the other ranks before the run fails (0 = forever)"},
};

static const fs_device cpu = {FS_DEVICE_CPU, 0};

typedef struct strategy {
    const fs_host_api *host;
    fs_comm *comm;
    int world, rank;
    fs_grid grid;
    fs_grid_coords at;
    fs_comm_group *group[FS_GROUPS];
    size_t microbatches, interleave;
    fs_data_sync sync;
    fs_pipe_schedule schedule;
    size_t *stage_first, *stage_count; /* (pipeline * interleave) */
    float *pipe_ws;                    /* fs_pipe_run's buffers, kept across steps */
    size_t pipe_ws_floats;
} strategy;

void fs_strategy_destroy(void *self) {
    strategy *s = self;
    if (!s) return;
    const fs_host_api *h = s->host;
    fs_data_sync_release(&s->sync);
    fs_pipe_schedule_release(&s->schedule);
    for (int g = 0; g < FS_GROUPS; g++)
        if (s->group[g]) s->comm->group_free(s->comm, s->group[g]);
    h->free(cpu, s->stage_first);
    h->free(cpu, s->stage_count);
    h->free(cpu, s->pipe_ws);
    h->free(cpu, s);
}

/* The micro-batch count when the graph leaves it to us: 1 without a
 * pipeline; with one, the most that divides the per-rank batch up to
 * 4 x pipeline (more micro-batches shrink the bubble, (p - 1) / (m + p - 1),
 * until they get too small to compute efficiently), a multiple of pipeline
 * for the interleaved schedule. 0 when none fits. */
static size_t auto_microbatches(size_t local_batch, size_t pipeline, int interleaved) {
    if (pipeline == 1) return 1;
    for (size_t m = 4 * pipeline; m >= 1; m--)
        if (local_batch % m == 0 && (!interleaved || m % pipeline == 0)) return m;
    return 0;
}

static int check(strategy *s, const fs_host_api *h, fs_plugin_ctx *ctx, const fs_parallel_config *cfg, int own,
                 fs_error *err) {
    char msg[400];
    int64_t asked[3] = {h->config_int(ctx, "data"), h->config_int(ctx, "tensor"), h->config_int(ctx, "pipeline")};
    int bad;
    if (fs_grid_resolve(&s->grid, s->world, own, asked, &bad, msg, sizeof msg))
        return h->error_set(err, FS_ERR_INVALID, "%s: %s", h->config_where(ctx, fs_grid_dim_name(bad)), msg);
    s->at = fs_grid_coords_of(&s->grid, s->rank);
    size_t D = (size_t)s->grid.degree[FS_GRID_DATA], Tn = (size_t)s->grid.degree[FS_GRID_TENSOR],
           P = (size_t)s->grid.degree[FS_GRID_PIPELINE];
    if (cfg->n_head % Tn)
        return h->error_set(err, FS_ERR_INVALID,
                            "%s: tensor = %zu does not divide [model] n_head = %zu: tensor parallelism gives each "
                            "rank whole heads; choose a divisor of %zu",
                            h->config_where(ctx, "tensor"), Tn, cfg->n_head, cfg->n_head);
    s->interleave = (size_t)h->config_int(ctx, "interleave");
    const char *sched = h->config_string(ctx, "schedule");
    int type = fs_pipe_schedule_parse(sched);
    if (P * s->interleave > cfg->n_layer)
        return h->error_set(err, FS_ERR_INVALID,
                            "%s: pipeline %zu x interleave %zu = %zu stages, but [model] n_layer = %zu: every stage "
                            "needs a layer; use fewer stages",
                            h->config_where(ctx, "pipeline"), P, s->interleave, P * s->interleave, cfg->n_layer);
    if (cfg->batch % D)
        return h->error_set(err, FS_ERR_INVALID,
                            "%s: data = %zu does not divide [train] batch = %zu: each data rank takes batch / data "
                            "sequences; make batch a multiple of %zu",
                            h->config_where(ctx, "data"), D, cfg->batch, D);
    size_t local = cfg->batch / D;
    s->microbatches = (size_t)h->config_int(ctx, "microbatches");
    if (s->microbatches == 0) {
        s->microbatches = auto_microbatches(local, P, type == FS_PIPE_INTERLEAVED);
        if (!s->microbatches)
            return h->error_set(err, FS_ERR_INVALID,
                                "%s: no micro-batch count divides the per-rank batch %zu (batch / data) and is a "
                                "multiple of pipeline = %zu, as schedule = interleaved needs: set microbatches",
                                h->config_where(ctx, "microbatches"), local, P);
    } else if (local % s->microbatches) {
        return h->error_set(err, FS_ERR_INVALID,
                            "%s: does not divide the per-rank batch %zu ([train] batch = %zu / data = %zu): choose "
                            "a divisor of %zu",
                            h->config_where(ctx, "microbatches"), local, cfg->batch, D, local);
    }
    if (s->interleave > 1 && type != FS_PIPE_INTERLEAVED)
        return h->error_set(err, FS_ERR_INVALID, "%s: interleave = %zu needs schedule = interleaved",
                            h->config_where(ctx, "interleave"), s->interleave);
    int rc = fs_pipe_schedule_build(&s->schedule, type, P, (size_t)s->at.c[FS_GRID_PIPELINE], s->microbatches,
                                    s->interleave, msg, sizeof msg);
    if (rc) return h->error_set(err, rc, "%s: %s", h->config_where(ctx, "schedule"), msg);
    size_t V = P * s->interleave;
    s->stage_first = h->alloc(cpu, V * sizeof(size_t));
    s->stage_count = h->alloc(cpu, V * sizeof(size_t));
    if (!s->stage_first || !s->stage_count) return h->error_set(err, FS_ERR_NOMEM, "parallel: out of memory");
    double embed_cost, head_cost;
    fs_pipe_default_costs(cfg->n_embd, cfg->seq, cfg->vocab, &embed_cost, &head_cost);
    rc = fs_pipe_partition(cfg->n_layer, V, h->config_string(ctx, "stages"), embed_cost, head_cost, s->stage_first,
                           s->stage_count, msg, sizeof msg);
    if (rc) return h->error_set(err, rc, "%s: %s", h->config_where(ctx, "stages"), msg);
    return FS_OK;
}

int fs_strategy_create(int own, void **self, const fs_host_api *host, fs_plugin_ctx *ctx,
                       const fs_parallel_config *cfg, fs_error *err) {
    *self = NULL;
    if (!cfg->comm || !FS_HAS_MEMBER(cfg->comm, cfg->comm->struct_size, fs_comm, reduce_scatter))
        return host->error_set(err, FS_ERR_ABI, "parallel: the host's communicator predates ABI 1.1");
    strategy *s = host->alloc(cpu, sizeof *s);
    if (!s) return host->error_set(err, FS_ERR_NOMEM, "parallel: out of memory");
    memset(s, 0, sizeof *s);
    s->host = host;
    s->comm = cfg->comm;
    s->world = s->comm->size(s->comm, NULL);
    s->rank = s->comm->rank(s->comm, NULL);
    /* every check before the first collective: all ranks fail alike */
    s->grid.world = s->world;
    s->grid.degree[0] = s->grid.degree[1] = s->grid.degree[2] = 1;
    int rc = check(s, host, ctx, cfg, own, err);
    if (!rc) {
        s->comm->timeout_s = host->config_float(ctx, "timeout");
        for (int g = 0; g < FS_GROUPS && !rc; g++) {
            int color, key;
            fs_grid_split_key(&s->grid, g, s->rank, &color, &key);
            rc = s->comm->group_split(s->comm, color, key, &s->group[g], err);
        }
    }
    if (!rc)
        rc = fs_data_sync_init(&s->sync, host, s->comm, s->group[FS_GROUP_DATA], host->config_float(ctx, "bucket_mb"),
                               (int)host->config_int(ctx, "zero"), err);
    if (rc) {
        fs_strategy_destroy(s);
        return rc;
    }
    *self = s;
    return FS_OK;
}

int fs_strategy_topology(void *self, fs_parallel_topology *out, fs_error *err) {
    (void)err;
    strategy *s = self;
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->rank = s->rank;
    out->world = s->world;
    out->data = s->grid.degree[FS_GRID_DATA];
    out->tensor = s->grid.degree[FS_GRID_TENSOR];
    out->pipeline = s->grid.degree[FS_GRID_PIPELINE];
    out->data_rank = s->at.c[FS_GRID_DATA];
    out->tensor_rank = s->at.c[FS_GRID_TENSOR];
    out->pipeline_rank = s->at.c[FS_GRID_PIPELINE];
    out->interleave = (int32_t)s->interleave;
    out->microbatches = (int32_t)s->microbatches;
    return FS_OK;
}

int fs_strategy_batch_slice(void *self, size_t global_batch, size_t *offset, size_t *count, fs_error *err) {
    strategy *s = self;
    size_t D = (size_t)s->grid.degree[FS_GRID_DATA];
    if (global_batch % D)
        return s->host->error_set(err, FS_ERR_INVALID, "batch %zu does not split over %zu data ranks", global_batch, D);
    *count = global_batch / D;
    *offset = (size_t)s->at.c[FS_GRID_DATA] * *count;
    return FS_OK;
}

int fs_strategy_grads_ready(void *self, float *grads, size_t offset, size_t count, fs_error *err) {
    return fs_data_sync_ready(&((strategy *)self)->sync, grads, offset, count, err);
}

int fs_strategy_grads_finish(void *self, float *grads, size_t n, fs_error *err) {
    return fs_data_sync_finish(&((strategy *)self)->sync, grads, n, err);
}

int fs_strategy_grads_extra(void *self, float *grads, size_t n, fs_error *err) {
    return fs_data_sync_extra(&((strategy *)self)->sync, grads, n, err);
}

int fs_strategy_reduce_sum(void *self, double *values, size_t n, fs_error *err) {
    strategy *s = self;
    if (s->world == 1 || n == 0) return FS_OK;
    fs_tensor t = fs_tensor_cpu_f32(NULL, 1, n, 0, 0, 0);
    t.data = values;
    t.dtype = FS_DTYPE_F64;
    return s->comm->all_reduce(s->comm, NULL, &t, FS_REDUCE_SUM, err);
}

int fs_strategy_optimizer_shard(void *self, size_t n, size_t *lo, size_t *hi, fs_error *err) {
    (void)err;
    fs_data_sync_shard(&((strategy *)self)->sync, n, lo, hi);
    return FS_OK;
}

int fs_strategy_params_updated(void *self, float *params, size_t n, fs_error *err) {
    return fs_data_sync_gather(&((strategy *)self)->sync, params, n, err);
}

static int group_sum(strategy *s, int group, float *x, size_t n, fs_error *err) {
    fs_tensor t = fs_tensor_cpu_f32(x, 1, n, 0, 0, 0);
    return s->comm->all_reduce(s->comm, s->group[group], &t, FS_REDUCE_SUM, err);
}

int fs_strategy_tensor_all_reduce(void *self, float *x, size_t n, fs_error *err) {
    strategy *s = self;
    if (s->grid.degree[FS_GRID_TENSOR] == 1) return FS_OK;
    return group_sum(s, FS_GROUP_TENSOR, x, n, err);
}

int fs_strategy_embedding_all_reduce(void *self, float *grad, size_t n, fs_error *err) {
    strategy *s = self;
    if (s->grid.degree[FS_GRID_PIPELINE] == 1 || !fs_grid_in_embedding(&s->grid, s->rank)) return FS_OK;
    return group_sum(s, FS_GROUP_EMBEDDING, grad, n, err);
}

int fs_strategy_stage_layers(void *self, size_t vstage, size_t *first, size_t *count, fs_error *err) {
    strategy *s = self;
    size_t V = (size_t)s->grid.degree[FS_GRID_PIPELINE] * s->interleave;
    if (vstage >= V)
        return s->host->error_set(err, FS_ERR_INVALID, "stage_layers: virtual stage %zu of %zu", vstage, V);
    *first = s->stage_first[vstage];
    *count = s->stage_count[vstage];
    return FS_OK;
}

int fs_strategy_pipeline_slots(void *self, size_t *slots, fs_error *err) {
    (void)err;
    *slots = ((strategy *)self)->schedule.slots;
    return FS_OK;
}

int fs_strategy_run_schedule(void *self, const fs_stage_ops *ops, fs_error *err) {
    strategy *s = self;
    size_t need = fs_pipe_workspace_floats(&s->schedule, ops->act_numel);
    if (need > s->pipe_ws_floats) {
        s->host->free(cpu, s->pipe_ws);
        s->pipe_ws = s->host->alloc(cpu, need * sizeof(float));
        s->pipe_ws_floats = s->pipe_ws ? need : 0;
        if (!s->pipe_ws) return s->host->error_set(err, FS_ERR_NOMEM, "pipeline: out of memory (%zu floats)", need);
    }
    return fs_pipe_run_ws(&s->schedule, ops, s->comm, s->group[FS_GROUP_PIPELINE], s->pipe_ws, err);
}

int fs_strategy_stats(void *self, fs_parallel_stats *out, fs_error *err) {
    (void)err;
    strategy *s = self;
    /* the caller's struct may be older (shorter) than ours */
    fs_parallel_stats st = s->sync.stats;
    size_t n = out->struct_size && out->struct_size < sizeof st ? out->struct_size : sizeof st;
    st.struct_size = (uint32_t)n;
    memcpy(out, &st, n);
    return FS_OK;
}
