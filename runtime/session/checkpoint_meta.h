/* checkpoint_meta.h — the metadata fsrun writes beside the tensors of its
 * checkpoints, read back strictly (checkpoint.h has the layout):
 *
 *   model.safetensors            fastserve_format = "fastserve/2" (or, in the
 *                                first layout, format = "fastserve/1"),
 *                                fastserve_version, graph (the INI text), step
 *   training_state.safetensors   format = "fastserve-training-state/1", step,
 *                                optimizer_t, rng, loss, val_loss
 *
 * Every field is parsed whole (no sign, no spaces, no trailing text, no
 * overflow) and range-checked; a bad one is FS_ERR_INVALID naming the file,
 * the field and its value: a checkpoint is trusted only as far as it can
 * be read. A file without fsrun's fields (Hugging Face's) has no layout and
 * nothing else is read from it.
 *
 * The readers take the metadata through a lookup function, so they serve a
 * safetensors file, a shard index and the fuzzer alike. */
#ifndef FS_CHECKPOINT_META_H
#define FS_CHECKPOINT_META_H

#include <stdint.h>

#include "core/graph.h"
#include "core/rng.h"
#include "fastserve/plugin.h"

#define FS_CKPT_FORMAT_V1 "fastserve/1"    /* weights, moments and state in model.safetensors */
#define FS_CKPT_FORMAT_V2 "fastserve/2"    /* weights in model.safetensors, the rest beside */
#define FS_CKPT_STATE_FORMAT "fastserve-training-state/1"

/* The metadata value of `key`, or NULL when absent. */
typedef const char *(*fs_meta_get_fn)(const void *src, const char *key);

enum { FS_CKPT_FOREIGN = 0, FS_CKPT_V1 = 1, FS_CKPT_V2 = 2 };

/* What model.safetensors says of itself. */
typedef struct fs_ckpt_weights_meta {
    int layout;      /* FS_CKPT_FOREIGN, FS_CKPT_V1 or FS_CKPT_V2 */
    int has_step;
    uint64_t step;
    fs_graph *graph; /* the graph it was trained with, or NULL (absent, or a foreign file) */
} fs_ckpt_weights_meta;

int fs_ckpt_meta_weights(fs_ckpt_weights_meta *m, fs_meta_get_fn get, const void *src, const char *file,
                         fs_error *err);
void fs_ckpt_meta_weights_release(fs_ckpt_weights_meta *m);

/* What a training state says: every field required. */
typedef struct fs_ckpt_state_meta {
    uint64_t step;        /* optimizer steps done */
    uint64_t optimizer_t; /* AdamW updates done (<= step: skipped steps make none) */
    fs_rng rng;           /* not all zero (xoshiro's one invalid state) */
    double loss;          /* finite */
    double val_loss;      /* finite and >= 0, or -1 for none */
} fs_ckpt_state_meta;

/* `layout` says which fields the state's file must hold its format in:
 * FS_CKPT_V1's state is the weights file itself. */
int fs_ckpt_meta_state(fs_ckpt_state_meta *m, int layout, fs_meta_get_fn get, const void *src, const char *file,
                       fs_error *err);

/* A decimal count in [0, max] ("0", "12"; no sign, spaces or leading
 * zeros); messages name file and key. */
int fs_meta_parse_count(const char *file, const char *key, const char *text, uint64_t max, uint64_t *out,
                        fs_error *err);

#endif
