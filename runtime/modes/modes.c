/* modes.c — the table of modes (see modes.h). */
#include "modes/modes.h"

#include "core/threads.h"
#include "session/device.h"

#include <stdio.h>
#include <string.h>

/* Each mode's run function, defined in the mode's own file. */
fs_mode_fn fs_mode_train, fs_mode_distill, fs_mode_generate, fs_mode_eval, fs_mode_tokenize, fs_mode_train_tokenizer,
    fs_mode_serve;

const fs_mode fs_modes[] = {
    {"train", fs_mode_train, "train on [data] train; checkpoint and metrics in [run] out (the default)", 1, NULL},
    {"distill", fs_mode_distill, "train as the student of [distill] teacher, or a chain of [distill.stage.N]", 0, NULL},
    {"generate", fs_mode_generate, "continue --prompt or [generate] prompt from the checkpoint", 1, NULL},
    {"eval", fs_mode_eval, "mean loss of the checkpoint over [data] val", 1, NULL},
    {"tokenize", fs_mode_tokenize, "tokenize [data] train and val into their token caches; report tokens per byte", 1, NULL},
    {"train-tokenizer", fs_mode_train_tokenizer, "learn BPE merges on [data] train up to [model] vocab_size", 1, NULL},
    {"serve", fs_mode_serve, "serve the checkpoint over an OpenAI-compatible HTTP API ([serve])", 1,
     FS_THREADS_SPINCOUNT_SERVE},
};
const size_t fs_n_modes = sizeof fs_modes / sizeof fs_modes[0];

const fs_mode *fs_mode_find(const char *name) {
    for (size_t i = 0; i < fs_n_modes; i++)
        if (strcmp(fs_modes[i].name, name) == 0) return &fs_modes[i];
    return NULL;
}

void fs_mode_names(char *buf, size_t cap, const char *sep) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < fs_n_modes && used < cap; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? sep : "", fs_modes[i].name);
        if (n < 0) break;
        used += (size_t)n;
    }
}

int fs_mode_check_device(const fs_mode *mode, const fs_session *s, fs_error *err) {
    if (mode->on_backend || !fs_session_backend_asked(s)) return FS_OK;
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: --mode %s runs on the runtime's own CPU kernels only (train and eval run on a "
                        "compute backend); for %s set [run] device = cpu (or auto) and leave [backend] plugin "
                        "= auto",
                        fs_session_backend_where(s), mode->name, mode->name);
}
