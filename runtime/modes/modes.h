/* modes.h — what fsrun does with an open session: train, distill,
 * generate, eval. Each prints its results to stdout (human text first, one
 * JSON line last, so scripts read the last line) and progress to stderr.
 *
 * A mode returns 0 or a negative fs_status; *config_error tells main()
 * whether the failure was in the set-up checks (exit status 2: the graph,
 * its files, the command line) or during the work (exit status 1). */
#ifndef FS_MODES_H
#define FS_MODES_H

#include <stddef.h>
#include <stdint.h>

#include "core/session.h"

typedef struct fs_run_options {
    const char *checkpoint; /* --checkpoint FILE, or NULL for <out>/model.safetensors */
    const char *prompt;     /* --prompt TEXT, or NULL for [generate] prompt */
    int resume;             /* --resume */
} fs_run_options;

int fs_mode_train(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err);
int fs_mode_distill(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err);
int fs_mode_generate(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err);
int fs_mode_eval(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err);

/* Sampling parameters of [generate]. */
typedef struct fs_sampler {
    double temperature; /* 0 = greedy */
    size_t top_k;       /* 0 = off */
    double top_p;       /* 1 = off */
    uint64_t seed;
} fs_sampler;

/* Runs the prompt through the decode step and samples up to max_tokens
 * more, stopping early at the context limit of the attention plugins
 * (*stopped_at_context set). out receives the new tokens; returns how many
 * were generated in *n_out; *seconds is the time spent generating. */
int fs_generate(fs_model *m, const int32_t *prompt, size_t n_prompt, size_t max_tokens, const fs_sampler *sp,
                int32_t *out, size_t *n_out, double *seconds, int *stopped_at_context, fs_error *err);

/* Picks a token from logits (V) with temperature, top-k and top-p; work is
 * 2 V floats of scratch. */
int32_t fs_sample_token(const float *logits, size_t V, const fs_sampler *sp, uint64_t *rng_state, float *work);

/* Mean cross-entropy over up to max_windows consecutive windows of T tokens
 * of `tokens`, computed B windows at a time; *n_tokens receives the number
 * of predicted tokens. */
struct fs_dataset;
int fs_evaluate(fs_model *m, const struct fs_dataset *d, size_t B, size_t max_windows, double *loss,
                size_t *n_tokens, fs_error *err);

/* The same walk over the windows with the summed (not mean) token loss of
 * each batch of nb windows from `batch_sum` (a pipeline computes it across
 * its stages): *sum gets their total, *n_tokens the tokens predicted. */
typedef int (*fs_batch_loss_fn)(void *arg, const int32_t *inputs, const int32_t *targets, size_t nb, size_t T,
                                double *sum, fs_error *err);
int fs_evaluate_sum(const struct fs_dataset *d, size_t T, size_t B, size_t max_windows, fs_batch_loss_fn batch_sum,
                    void *arg, double *sum, size_t *n_tokens, fs_error *err);

#endif
