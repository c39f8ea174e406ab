/* grid.h — the ranks of a run as a (data, tensor, pipeline) grid, and the
 * groups each rank belongs to.
 *
 * Pure arithmetic, shared by the parallel plugins (strategy.c splits the
 * communicator with it) and unit-tested on its own. The layout is
 * Megatron-LM's, as sdk/include/fastserve/parallel.h documents it: tensor
 * fastest, then pipeline, then data,
 *   rank = (data_rank * pipeline + pipeline_rank) * tensor + tensor_rank,
 * so a tensor group (the chattiest: two all-reduces per layer) is made of
 * neighbouring ranks, which mpirun places on the same machine. */
#ifndef FS_PARALLEL_GRID_H
#define FS_PARALLEL_GRID_H

#include <stddef.h>
#include <stdint.h>

/* The three dimensions, also the index of each degree in arrays. */
enum { FS_GRID_DATA = 0, FS_GRID_TENSOR = 1, FS_GRID_PIPELINE = 2 };
/* The groups: ranks that differ only in one coordinate, plus the embedding
 * group (the first and the last pipeline stage of one data and tensor
 * coordinate: they share the tied embedding). */
enum { FS_GROUP_DATA = 0, FS_GROUP_TENSOR = 1, FS_GROUP_PIPELINE = 2, FS_GROUP_EMBEDDING = 3, FS_GROUPS = 4 };

typedef struct fs_grid {
    int world;
    int degree[3]; /* data, tensor, pipeline; their product is world */
} fs_grid;

typedef struct fs_grid_coords {
    int c[3]; /* data_rank, tensor_rank, pipeline_rank */
} fs_grid_coords;

/* "data", "tensor", "pipeline": the [parallel] key of each dimension. */
const char *fs_grid_dim_name(int dim);

/* Resolves the degrees a graph asked for on `world` ranks. asked[d] = 0
 * means automatic: the plugin's own dimension `own` takes world / the
 * product of the others, any other dimension 1. Returns 0, or -1 with a
 * reason and fix in msg (naming the keys and values) and in *bad_dim the
 * key the message is about. */
int fs_grid_resolve(fs_grid *g, int world, int own, const int64_t asked[3], int *bad_dim, char *msg, size_t cap);

fs_grid_coords fs_grid_coords_of(const fs_grid *g, int rank);
int fs_grid_rank_of(const fs_grid *g, fs_grid_coords c);

/* Colour and key for fs_comm.group_split: the ranks of one group share a
 * colour and are ordered by key (their coordinate along the group). A rank
 * outside every embedding group (a middle pipeline stage) gets a group of
 * its own, so every rank can take part in the same splits. */
void fs_grid_split_key(const fs_grid *g, int group, int rank, int *color, int *key);

/* 1 when `rank` holds the tied embedding (first or last pipeline stage). */
int fs_grid_in_embedding(const fs_grid *g, int rank);

#endif
