/* shard.c — see shard.h. */
#include "dist/shard.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"

void fs_shard_map_release(fs_shard_map *map) {
    if (!map) return;
    free(map->vstage_first);
    free(map->vstage_count);
    free(map->layer_ids);
    free(map->chunk_first);
    memset(map, 0, sizeof *map);
}

int fs_shard_map_build(fs_shard_map *map, const fs_parallel_topology *t, const fs_parallel_vtable *vt,
                       size_t vt_size, void *self, size_t n_layer, fs_error *err) {
    memset(map, 0, sizeof *map);
    size_t p = (size_t)(t->pipeline > 0 ? t->pipeline : 1), v = (size_t)(t->interleave > 0 ? t->interleave : 1);
    map->pipeline = (int)p;
    map->tensor = t->tensor > 0 ? t->tensor : 1;
    map->n_vstages = p * v;
    map->vstage_first = calloc(map->n_vstages, sizeof(size_t));
    map->vstage_count = calloc(map->n_vstages, sizeof(size_t));
    map->layer_ids = calloc(n_layer ? n_layer : 1, sizeof(size_t));
    map->chunk_first = calloc(v + 1, sizeof(size_t));
    if (!map->vstage_first || !map->vstage_count || !map->layer_ids || !map->chunk_first) {
        fs_shard_map_release(map);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    if (map->n_vstages == 1) {
        map->vstage_count[0] = n_layer;
    } else {
        if (!FS_HAS_MEMBER(vt, vt_size, fs_parallel_vtable, stage_layers) || !vt->stage_layers) {
            fs_shard_map_release(map);
            return fs_error_set(err, FS_ERR_UNSUPPORTED, "the parallel plugin pipelines but cannot say which "
                                "layers a stage holds (no stage_layers)");
        }
        size_t next = 0;
        for (size_t vs = 0; vs < map->n_vstages; vs++) {
            int rc = vt->stage_layers(self, vs, &map->vstage_first[vs], &map->vstage_count[vs], err);
            if (rc) {
                fs_shard_map_release(map);
                return rc;
            }
            if (map->vstage_first[vs] != next || map->vstage_count[vs] == 0) {
                fs_shard_map_release(map);
                return fs_error_set(err, FS_ERR_INVALID, "the parallel plugin's stages do not cover layers 0..%zu "
                                    "in order (virtual stage %zu starts at %zu with %zu layers)",
                                    n_layer - 1, vs, map->vstage_first[vs], map->vstage_count[vs]);
            }
            next += map->vstage_count[vs];
        }
        if (next != n_layer) {
            fs_shard_map_release(map);
            return fs_error_set(err, FS_ERR_INVALID, "the parallel plugin's stages hold %zu of %zu layers", next,
                                n_layer);
        }
    }
    size_t n = 0, pr = (size_t)t->pipeline_rank;
    for (size_t c = 0; c < v; c++) {
        size_t vs = c * p + pr;
        map->chunk_first[c] = n;
        for (size_t k = 0; k < map->vstage_count[vs]; k++) map->layer_ids[n++] = map->vstage_first[vs] + k;
    }
    map->chunk_first[v] = n;
    fs_model_shard *sh = &map->shard;
    sh->tp_rank = (size_t)t->tensor_rank;
    sh->tp_size = (size_t)map->tensor;
    if (map->n_vstages > 1) {
        sh->n_local = n;
        sh->layer_ids = map->layer_ids;
        sh->n_chunks = v;
        sh->chunk_first = map->chunk_first;
        sh->has_embed = pr == 0;
        sh->has_head = pr == p - 1;
    }
    return FS_OK;
}

/* The world rank of data rank 0 that holds global layer `layer` (SIZE_MAX:
 * the embeddings, on pipeline rank 0; SIZE_MAX - 1: ln_f, on the last) at
 * tensor rank tr. */
static int owner_of(const fs_shard_map *map, size_t layer, int tr) {
    size_t p = (size_t)map->pipeline, pr = 0;
    if (layer == SIZE_MAX) {
        pr = 0;
    } else if (layer == SIZE_MAX - 1) {
        pr = p - 1;
    } else {
        for (size_t vs = 0; vs < map->n_vstages; vs++)
            if (layer >= map->vstage_first[vs] && layer < map->vstage_first[vs] + map->vstage_count[vs]) pr = vs % p;
    }
    return (int)(pr * (size_t)map->tensor) + tr; /* data rank 0 */
}

/* The owner layer of a whole tensor by name (SIZE_MAX: embeddings,
 * SIZE_MAX - 1: ln_f and an untied lm_head, on the last stage). */
static size_t tensor_layer(const char *name) {
    size_t layer;
    if (sscanf(name, "transformer.h.%zu.", &layer) == 1) return layer;
    return strstr(name, "ln_f") || !strcmp(name, "lm_head.weight") ? SIZE_MAX - 1 : SIZE_MAX;
}

static const fs_param_view *find_view(const fs_param_view *views, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(views[i].name, name)) return &views[i];
    return NULL;
}

int fs_shard_gather(const fs_shard_map *map, const fs_parallel_topology *t, fs_comm *comm, const fs_model *m,
                    const float *const *local, size_t n_vec, const fs_param_view *full_views, size_t n_full_views,
                    size_t n_full, float **whole, fs_error *err) {
    for (size_t k = 0; k < n_vec; k++) whole[k] = NULL;
    if (t->data_rank != 0) return FS_OK;
    int me = comm->rank(comm, NULL), lead = me == 0, rc = FS_OK;
    size_t big = 0;
    for (size_t i = 0; i < n_full_views; i++) big = full_views[i].numel > big ? full_views[i].numel : big;
    float *buf = lead ? malloc(big * sizeof(float)) : NULL;
    for (size_t k = 0; lead && k < n_vec; k++) whole[k] = calloc(n_full ? n_full : 1, sizeof(float));
    for (size_t k = 0; lead && k < n_vec; k++)
        if (!whole[k] || !buf) rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory for the whole model's tensors");
    /* every rank walks the same tensors in the same order; rank 0 receives
     * in that order, so no send waits on a receive that waits on it */
    for (size_t i = 0; i < n_full_views && !rc; i++) {
        const fs_param_view *fv = &full_views[i];
        int split = fs_model_tensor_split(fv->name);
        int parts = split == FS_SPLIT_NONE ? 1 : map->tensor;
        size_t layer = tensor_layer(fv->name);
        fs_param_view pv;
        for (int tr = 0; tr < parts && !rc; tr++) {
            int owner = owner_of(map, layer, tr);
            fs_param_view_part(fv, split, (size_t)map->tensor, &pv);
            const fs_param_view *lv = owner == me ? fs_model_find(m, fv->name) : NULL;
            if (owner == me && !lv)
                return fs_error_set(err, FS_ERR_RUNTIME, "rank %d should hold %s but does not", me, fv->name);
            for (size_t k = 0; k < n_vec && !rc; k++) {
                int tag = (int)((i * 8 + (size_t)tr * 3 + k) % 30000);
                if (lead && owner == me) {
                    fs_param_view_insert(&pv, (size_t)tr, (size_t)map->tensor, local[k] + lv->offset,
                                         whole[k] + fv->offset);
                } else if (lead) {
                    fs_tensor tt = fs_tensor_cpu_f32(buf, 1, pv.numel, 0, 0, 0);
                    rc = comm->recv(comm, NULL, &tt, owner, tag, err);
                    if (!rc) fs_param_view_insert(&pv, (size_t)tr, (size_t)map->tensor, buf, whole[k] + fv->offset);
                } else if (owner == me) {
                    fs_tensor tt = fs_tensor_cpu_f32((float *)local[k] + lv->offset, 1, lv->numel, 0, 0, 0);
                    rc = comm->send(comm, NULL, &tt, 0, tag, err);
                }
            }
        }
    }
    free(buf);
    if (rc)
        for (size_t k = 0; k < n_vec; k++) {
            free(whole[k]);
            whole[k] = NULL;
        }
    return rc;
}

void fs_shard_scatter(const fs_model *m, const fs_param_view *full_views, size_t n_full_views, const float *whole,
                      float *local) {
    const fs_param_block *pb = fs_model_block(m);
    const fs_model_part *part = fs_model_held(m);
    for (size_t i = 0; i < pb->n_views; i++) {
        const fs_param_view *lv = &pb->views[i], *fv = find_view(full_views, n_full_views, lv->name);
        if (fv) fs_param_view_extract(lv, part->tp_rank, part->tp_size, whole + fv->offset, local + lv->offset);
    }
}
