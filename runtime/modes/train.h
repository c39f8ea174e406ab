/* train.h — the training loop shared by the train and distill modes.
 *
 * One optimizer step: zero the gradients; for each of grad_accum
 * micro-batches draw B windows of max_seq + 1 tokens, run the objective
 * (forward, loss, backward); let the parallel strategy finish the
 * gradients; clip; AdamW at the scheduled lr. Validation, checkpoints,
 * metrics and resume are the loop's; only the objective differs. */
#ifndef FS_TRAIN_H
#define FS_TRAIN_H

#include "modes/modes.h"

/* Forward + loss + backward for one micro-batch, accumulating gradients
 * scaled by dscale; *loss is the unscaled mean loss. */
typedef int (*fs_objective_fn)(void *arg, fs_session *s, const int32_t *inputs, const int32_t *targets, size_t B,
                               size_t T, float dscale, double *loss, fs_error *err);

typedef struct fs_objective {
    const char *mode; /* "train" or "distill", for the summary */
    fs_objective_fn fn;
    void *arg;
    /* optional: more optimizer groups (plugin-owned parameters outside the
     * session's host, e.g. a distill plugin's) are already in s->host. */
} fs_objective;

int fs_train_loop(fs_session *s, const fs_run_options *o, const fs_objective *obj, int *config_error,
                  fs_error *err);

/* Set-up checks of the run's directories (train_start.c): [model] init
 * exists and is not [run] out (its source is never written); a fresh run
 * (no resume) refuses an out that holds a checkpoint unless [run]
 * overwrite = true. */
int fs_train_check_out(const fs_session *s, int resume, fs_error *err);
/* The weights a run starts from: GPT-2's initialisation from seed, then
 * [model] init's weights unless resuming, then the attention plugins' own
 * parameters (unless the init file held them). */
int fs_train_init_weights(fs_session *s, uint64_t seed, int resume, fs_error *err);

/* Plain cross-entropy training objective. */
int fs_objective_lm(void *arg, fs_session *s, const int32_t *inputs, const int32_t *targets, size_t B, size_t T,
                    float dscale, double *loss, fs_error *err);

#endif
