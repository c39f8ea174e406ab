/* weights.h — a model's tensors from the files Hugging Face and fsrun
 * write, whatever their layout:
 *
 *   - one .safetensors file (fsrun's model.safetensors, save_pretrained's);
 *   - a directory holding model.safetensors, or a sharded checkpoint:
 *     model.safetensors.index.json ({"weight_map": {name: shard file}})
 *     and its model-0000N-of-0000M.safetensors (the index may be named
 *     directly too);
 *   - GPT2Model's names without the "transformer." prefix (the original
 *     gpt2 checkpoints): found under fsrun's names all the same;
 *   - F16, BF16 and F64 tensors: converted to F32 on access.
 *
 * Tensors are claimed as they are looked up, so what the model did not use
 * can be listed afterwards (fs_weights_unclaimed). Nothing is ever written. */
#ifndef FS_WEIGHTS_H
#define FS_WEIGHTS_H

#include <stddef.h>

#include "fastserve/plugin.h"
#include "io/safetensors.h"

typedef struct fs_weights fs_weights;

int fs_weights_open(fs_weights **out, const char *path, fs_error *err);
void fs_weights_close(fs_weights *w); /* accepts NULL */

/* The file (or index) that was opened, for messages; and its directory. */
const char *fs_weights_path(const fs_weights *w);
const char *fs_weights_dir(const fs_weights *w);
/* __metadata__ of the (first) file, or of the index's "metadata"; NULL when absent. */
const char *fs_weights_metadata(const fs_weights *w, const char *key);

/* The tensor fsrun calls `name` (transformer.h.0.attn.c_attn.weight,
 * lm_head.weight, plugin.*, ...), marked as used; NULL when absent. *file
 * (may be NULL) receives the file that holds it. */
const fs_st_tensor *fs_weights_find(fs_weights *w, const char *name, const char **file);
/* Its values as F32 (the file's own memory for F32, a converted copy owned
 * by w otherwise); FS_ERR_INVALID for dtypes that are not floats. */
int fs_weights_f32(fs_weights *w, const fs_st_tensor *t, const char *file, const float **out, fs_error *err);

/* Calls fn for every tensor no lookup used, with its name in the file. */
void fs_weights_unclaimed(const fs_weights *w, void (*fn)(void *arg, const char *name, const fs_st_tensor *t),
                          void *arg);

#endif
