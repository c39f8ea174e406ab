/* modes.h — what fsrun does with an open session: train, distill,
 * generate, eval, and the tokenizer's tokenize and train-tokenizer (the
 * table fs_modes in modes.c). Each prints its results to stdout (human
 * text first, one JSON line last, so scripts read the last line) and
 * progress to stderr.
 *
 * A mode returns 0 or a negative fs_status; *config_error tells main()
 * whether the failure was in the set-up checks (exit status 2: the graph,
 * its files, the command line) or during the work (exit status 1).
 *
 * Adding a mode: a file of its own defining its fs_mode_fn, and its row in
 * modes.c (with the function's declaration beside it). --mode, [run] mode
 * and fsrun --help follow from the row. */
#ifndef FS_MODES_H
#define FS_MODES_H

#include <stddef.h>
#include <stdint.h>

#include "session/session.h"
#include "model/seq.h"

typedef struct fs_run_options {
    const char *checkpoint; /* --checkpoint FILE, or NULL for <out>/model.safetensors */
    const char *prompt;     /* --prompt TEXT, or NULL for [generate] prompt */
    int resume;             /* --resume */
} fs_run_options;

/* What a mode runs. */
typedef int fs_mode_fn(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err);

typedef struct fs_mode {
    const char *name; /* --mode NAME, [run] mode = NAME */
    fs_mode_fn *run;
    const char *help; /* one line for fsrun --help */
    int on_backend;   /* it runs where [run] device and [backend] point: train and eval through a compute backend,
                       * serve and generate through the serving engine's step on it (model/device_batch.h);
                       * the tokenizer modes do no model arithmetic */
    const char *spincount; /* its OpenMP GOMP_SPINCOUNT (core/threads.h), NULL: fsrun's default */
} fs_mode;

/* FS_ERR_INVALID naming the key and the fix when the graph asks for a
 * backend (session/device.h) and `mode` cannot use one. */
int fs_mode_check_device(const fs_mode *mode, const fs_session *s, fs_error *err);

/* Every mode, in the order --help lists them; [run] mode's default first.
 * [run] mode's choices in core/schema.c are these names in this order
 * (tests/unit/test_modes.c checks: core does not look up into modes). */
extern const fs_mode fs_modes[];
extern const size_t fs_n_modes;

/* The mode called `name`, or NULL. */
const fs_mode *fs_mode_find(const char *name);
/* The names joined by `sep` ("train, distill, generate, eval" with ", "). */
void fs_mode_names(char *buf, size_t cap, const char *sep);

/* [generate]'s sampling keys. */
fs_sampler fs_generate_sampler(const fs_config *gen_cfg);
/* Threads for decoding with m: 1 for a model whose token is too little
 * work to share, 0 (the process's count) otherwise. */
int fs_generate_threads(const fs_model *m);

/* Why fs_generate stopped before max_tokens (*stopped; 0: it did not). */
enum { FS_GENERATE_CONTEXT = 1, FS_GENERATE_EOS = 2 };

/* Runs the prompt through the sequence and samples up to max_tokens more
 * (row 0), stopping early when an unbounded cache is full
 * (FS_GENERATE_CONTEXT) or at the end-of-text token eos (-1: none), which
 * is not kept (FS_GENERATE_EOS: the serving engine's rule). out receives
 * the new tokens, *n_out how many were generated; *seconds is the time
 * spent generating. */
int fs_generate(fs_seq *seq, const int32_t *prompt, size_t n_prompt, size_t max_tokens, int32_t eos, int32_t *out,
                size_t *n_out, double *seconds, int *stopped, fs_error *err);

/* A generation from prompt text with the session's model, tokenizer and
 * [generate] sampler: the prompt's tokens, the new tokens and their text
 * (bytes: a BPE token may end inside a character). */
typedef struct fs_generation {
    int32_t *prompt, *tokens;
    size_t n_prompt, n;
    char *text; /* the new tokens' bytes */
    size_t text_len;
    double seconds;
    int stopped_at_context;
    int stopped_at_eos; /* the tokenizer's end-of-text token came (not kept: it has no text) */
    size_t cache_bytes; /* of the sequence's KV caches */
    char backend[32];   /* what the steps ran through (fs_engine_backend), "none" for the CPU kernels */
} fs_generation;

/* on_device: 1 runs where [run] device and [backend] point (--mode
 * generate), 0 on the CPU (the sample a training run takes). */
int fs_generate_text(fs_session *s, const char *text, size_t len, size_t max_tokens, int on_device,
                     fs_generation *g, fs_error *err);
void fs_generation_release(fs_generation *g);

/* The tokens of a prompt under the session's tokenizer; an empty prompt
 * is the end-of-text token (or a new line without one). */
struct fs_tokens;
int fs_prompt_tokens(fs_session *s, const char *text, size_t len, struct fs_tokens *out, fs_error *err);

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
