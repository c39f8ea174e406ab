/* checkpoint.h — a run directory in Hugging Face's layout:
 *
 *   model.safetensors            the weights only: GPT2LMHeadModel's names and
 *                                shapes (transformer.wte.weight,
 *                                transformer.h.0.attn.c_attn.weight (C, 3C), ...,
 *                                lm_head.weight when untied), plugin-owned
 *                                parameters as "plugin.layerN.<kind>.<name>";
 *                                __metadata__ format = "pt" (what transformers
 *                                reads), fastserve_format = "fastserve/2",
 *                                fastserve_version, graph (the INI text), step
 *   training_state.safetensors   what --resume needs besides: the AdamW moments
 *                                "exp_avg" / "exp_avg_sq" (flat, in the
 *                                optimizer's group order) and in __metadata__
 *                                step, optimizer_t, rng, loss, val_loss
 *   config.json                  GPT2Config (hf_config.h), for GPT-2 models
 *   tokenizer.json               with a BPE tokenizer (tokenizer.h)
 *
 * Every file is written atomically (files.h), the weights before the
 * state; a resume checks that both are at the same step. Loading reads what
 * fsrun wrote, the first format (format = "fastserve/1": moments and state
 * inside model.safetensors) and what Hugging Face writes (weights.h:
 * directories, shards, bare GPT2Model names, F16/BF16), checking config.json
 * when it is there. */
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
#define FS_TRAINING_STATE_FILE "training_state.safetensors"

/* Loads weights from path (a file or a directory, weights.h) and, when
 * opt/ts are not NULL, the training state beside them, which must then be
 * present. Checks names, dtypes, shapes (a mismatch names the [model] key to
 * set), finiteness, config.json, the graph the weights were trained with
 * (graph_check.h: a key that changes their function is an error; with opt
 * or ts, a resume, other changes are said once), every metadata field
 * (checkpoint_meta.h; a resume's step at most [train] steps) and the
 * tensors left over (an untied lm_head.weight the graph would drop, layers
 * beyond n_layer, tensors of another model) before touching the model; on
 * failure the model is unchanged. Every rank reads
 * the whole file and keeps its part (a sharded optimizer its range), so a
 * checkpoint resumes on any number of ranks. */
int fs_checkpoint_load(const char *path, fs_session *s, fs_optimizer *opt, fs_train_state *ts, fs_error *err);
/* The same for [model] init: weights only, and the attention plugins'
 * parameters may be absent (*plugins_loaded says whether they were there);
 * a new run starts from them, so another graph's weights are taken (the
 * differences said once) and tensors it does not use are a warning. */
int fs_checkpoint_load_init(const char *path, fs_session *s, int *plugins_loaded, fs_error *err);

/* What a run killed while writing the checkpoint at path left behind: the
 * state's rename it did not reach is done (when the state's temporary file
 * is complete and at the weights' step), and every temporary file of a
 * process that is gone is removed, each said. Rank 0 of a run that writes
 * path, before reading it; a resume on any rank finishes the rename in
 * memory too, so the ranks need not wait for it. */
void fs_checkpoint_recover(const char *path);

/* The step in the metadata of the checkpoint at path (strictly: a bad
 * value is an error naming the field). */
int fs_checkpoint_read_step(const char *path, uint64_t *step, fs_error *err);

/* mkdir -p */
int fs_mkdirs(const char *dir, fs_error *err);

#endif
