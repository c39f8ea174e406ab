/* plan.h — `fsrun --plan GRAPH.ini --ranks N`: which (data, tensor,
 * pipeline) split to run a graph with on N ranks.
 *
 * Every ordered factorisation d x t x p = N is a candidate. A candidate is
 * invalid, with the reason, when t does not divide n_head, p x interleave
 * exceeds n_layer, d does not divide [train] batch, the micro-batches do not
 * divide batch / d, or the pipeline schedule cannot take that shape. For
 * the others the plan estimates, on the busiest rank, the memory (fp32
 * parameters, gradients, AdamW moments, and the activations of the
 * micro-batches the schedule keeps in flight, with the runtime's real
 * activation layout), the bytes each rank sends per step, the pipeline
 * bubble, and a step time under a simple cost model; it recommends the
 * fastest candidate that fits the memory per rank. plan.c states every
 * formula; tests/unit/test_plan.c checks them on hand-computed configs.
 *
 * Called by main.c only (and the tests). */
#ifndef FS_PLAN_H
#define FS_PLAN_H

#include <stddef.h>

#include "core/graph.h"

/* The cost model's nominal machine: FLOP/s per rank and bytes/s a rank
 * sends (one core's BLAS-class throughput; a 100 Gb/s link or shared
 * memory). They rank candidates; they do not predict wall time. */
#define FS_PLAN_FLOPS 1e11
#define FS_PLAN_BANDWIDTH 1e10

typedef struct fs_plan_model {
    size_t n_layer, n_head, n_embd, seq, vocab;
    size_t batch;    /* [train] batch: the global batch of one step */
    int reversible;  /* [model] reversible: one layer's activations at a time */
    size_t ff_chunk; /* [model] ff_chunk: MLP rows at a time (0 = all) */
} fs_plan_model;

/* The [parallel] keys the plan reads, whatever plugin the graph names. */
typedef struct fs_plan_parallel {
    size_t microbatches; /* 0 = not set: fs_pipe_default_microbatches */
    size_t interleave;   /* model chunks per pipeline rank (1 = plain) */
    int schedule;        /* FS_PIPE_*, or -1 = not set (1f1b) */
    int zero;            /* 1 = AdamW moments sharded over the data ranks (ZeRO stage 1) */
    char stages[256];    /* a hand partition "0-3,4-7", "" = balanced by cost */
} fs_plan_parallel;

typedef struct fs_plan_row {
    size_t data, tensor, pipeline;
    size_t microbatches, interleave; /* as used for this split */
    int schedule;                    /* FS_PIPE_* as used */
    int valid;
    char reason[256]; /* why not, when !valid */
    /* bytes on the rank with the largest total (pipeline ranks differ) */
    double mem_params, mem_grads, mem_optim, mem_acts, mem_total;
    /* bytes a rank sends per step, each the largest over the pipeline ranks */
    double comm_data, comm_tensor, comm_pipe, comm_total;
    double bubble; /* (p - 1) / (m + p - 1); interleaved (p - 1) / (v m + p - 1) */
    double flops;  /* training FLOPs per step of the busiest rank */
    double step_s; /* the cost model's step time */
    int fits, recommended;
} fs_plan_row;

/* Reads [model] and [train] through the runtime's schemas (so a bad value
 * is the same file:line error a run gives) and the [parallel] keys
 * microbatches, interleave, schedule, zero, stages leniently from the raw
 * entries (other [parallel] keys are the plugin's business). */
int fs_plan_read_graph(const fs_graph *g, fs_plan_model *model, fs_plan_parallel *par, fs_error *err);

/* One candidate: fills *row (valid or not). */
void fs_plan_evaluate(const fs_plan_model *model, const fs_plan_parallel *par, size_t data, size_t tensor,
                      size_t pipeline, fs_plan_row *row);

/* Every split of `ranks`, most data-parallel first (d descending, then t
 * ascending), with fits (mem_total <= memory_per_rank) and the recommended
 * one (the fastest that fits; none when nothing fits) marked. *rows is the
 * caller's to free. */
int fs_plan_enumerate(const fs_plan_model *model, const fs_plan_parallel *par, size_t ranks, double memory_per_rank,
                      fs_plan_row **rows, size_t *n_rows, fs_error *err);

/* `fsrun --plan GRAPH.ini --ranks N [--memory-per-rank BYTES] [--json]
 * [--set section.key=value ...]` with main's argv; returns the exit status
 * (0, or 2 for a usage or graph error and when no split is valid). */
int fs_plan_main(int argc, char **argv);

#endif
