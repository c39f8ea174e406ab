/* shard.h — this rank's part of the model, from the parallel topology, and
 * whole tensors to and from the parts.
 *
 * The strategy says where a rank stands (tensor rank, pipeline rank, the
 * layers of each virtual stage); fs_shard_map_build turns that into the
 * fs_model_shard the model is created with. Checkpoints always hold the
 * whole model under Hugging Face's names (so a file written by any split
 * loads into any other, and into PyTorch): fs_shard_gather brings every
 * part to rank 0 in the unsharded layout before it writes, and
 * fs_shard_scatter takes a rank's parts out of the whole tensors when it
 * loads. Used by the session (the map) and by checkpoints. */
#ifndef FS_SHARD_H
#define FS_SHARD_H

#include "fastserve/parallel.h"
#include "model/model.h"

typedef struct fs_shard_map {
    fs_model_shard shard;  /* what fs_model_config.shard gets; points into the arrays below */
    size_t n_vstages;      /* pipeline * interleave */
    size_t *vstage_first;  /* (n_vstages) first layer of each virtual stage */
    size_t *vstage_count;  /* (n_vstages) its layer count */
    size_t *layer_ids;     /* this rank's layers */
    size_t *chunk_first;   /* (interleave + 1) */
    int pipeline, tensor;  /* degrees */
} fs_shard_map;

/* From the topology and the strategy's stage_layers (required when
 * pipeline > 1). With pipeline == tensor == 1 the shard is the whole model. */
int fs_shard_map_build(fs_shard_map *map, const fs_parallel_topology *t, const fs_parallel_vtable *vt,
                       size_t vt_size, void *self, size_t n_layer, fs_error *err);
void fs_shard_map_release(fs_shard_map *map);

/* Collective over every rank of data rank 0 (others return at once):
 * rank 0 receives every part of n_vec vectors laid out like m's parameter
 * block (the parameters, the AdamW moments) and assembles whole[k] (each
 * n_full floats, malloc'ed here, rank 0 only) in the layout of
 * full_views. */
int fs_shard_gather(const fs_shard_map *map, const fs_parallel_topology *t, fs_comm *comm, const fs_model *m,
                    const float *const *local, size_t n_vec, const fs_param_view *full_views, size_t n_full_views,
                    size_t n_full, float **whole, fs_error *err);

/* m's parts of a vector in the whole layout (full_views), into `local`
 * laid out like m's parameter block. */
void fs_shard_scatter(const fs_model *m, const fs_param_view *full_views, size_t n_full_views, const float *whole,
                      float *local);

#endif
