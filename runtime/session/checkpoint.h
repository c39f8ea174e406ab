/* checkpoint.h — model, plugin parameters, optimizer and RNG state in one
 * .safetensors file.
 *
 * Tensor names and shapes are Hugging Face GPT2LMHeadModel's
 * (transformer.wte.weight, transformer.h.0.attn.c_attn.weight (C, 3C), ...),
 * so a dense byte-vocabulary checkpoint loads there. Beside them:
 * plugin-owned parameters as "plugin.layerN.<kind>.<name>", the AdamW
 * moments as "optimizer.exp_avg" / "optimizer.exp_avg_sq" (flat, in the
 * optimizer's group order), and in __metadata__ the graph's INI text
 * ("graph"), "step", "optimizer_t", "rng", "loss", "val_loss" and "format" = "fastserve/1".
 * Writes are atomic (see safetensors.h). */
#ifndef FS_CHECKPOINT_H
#define FS_CHECKPOINT_H

#include <stdint.h>

#include "model/optim.h"
#include "core/rng.h"
#include "session/session.h"

typedef struct fs_train_state {
    uint64_t step; /* optimizer steps done */
    fs_rng rng;    /* batch sampling */
    double loss;     /* of the last step (reported when a finished run is resumed) */
    double val_loss; /* of the last validation; < 0 when none */
} fs_train_state;

/* Collective when several ranks run: every rank calls it (a sharded
 * optimizer's moments are gathered first), rank 0 writes the one full file. */
int fs_checkpoint_save(const char *path, const fs_session *s, const fs_optimizer *opt, const fs_train_state *ts,
                       fs_error *err);
/* Loads weights (and, when opt/ts are not NULL, the training state, which
 * must then be present). Checks names, dtypes, shapes and finiteness before
 * touching the model; on failure the model is unchanged. Every rank reads
 * the whole file and keeps its part (a sharded optimizer its range), so a
 * checkpoint resumes on any number of ranks. */
int fs_checkpoint_load(const char *path, fs_session *s, fs_optimizer *opt, fs_train_state *ts, fs_error *err);

/* mkdir -p */
int fs_mkdirs(const char *dir, fs_error *err);

#endif
