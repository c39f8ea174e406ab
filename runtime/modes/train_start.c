/* train_start.c — what a training run starts from, and what it may
 * overwrite (see train.h). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/host.h"
#include "session/checkpoint.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "modes/train.h"

/* The directory a weights path lives in (the path itself for a directory). */
static int weights_dir(const char *path, char *buf) {
    char tmp[PATH_MAX];
    if (fs_is_dir(path)) {
        snprintf(tmp, sizeof tmp, "%s", path);
    } else {
        const char *slash = strrchr(path, '/');
        snprintf(tmp, sizeof tmp, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    }
    return realpath(tmp, buf) ? 0 : -1;
}

/* The step the checkpoint at ckpt reached, or -1 when it cannot be read. */
static long long step_of(const char *ckpt) {
    uint64_t step;
    fs_error ignored = {0};
    return fs_checkpoint_read_step(ckpt, &step, &ignored) ? -1 : (long long)step;
}

int fs_train_check_out(const fs_session *s, int resume, fs_error *err) {
    const char *init = fs_config_string(s->model_cfg, "init"), *out = fs_config_string(s->run_cfg, "out");
    char ckpt[PATH_MAX];
    fs_session_checkpoint_path(s, ckpt, sizeof ckpt);
    if (*init) {
        char a[PATH_MAX], b[PATH_MAX];
        if (access(init, R_OK) != 0)
            return fs_error_set(err, FS_ERR_NOT_FOUND, "%s: %s (a .safetensors file or a Hugging Face model directory)",
                                fs_config_where(s->model_cfg, "init"), strerror(errno));
        if (!weights_dir(init, a) && !weights_dir(ckpt, b) && !strcmp(a, b))
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: the weights are in %s, where this run writes ([run] out = %s); the source of "
                                "[model] init is never written: choose another [run] out",
                                fs_config_where(s->model_cfg, "init"), a, out);
    }
    if (resume || access(ckpt, F_OK) != 0 || fs_config_bool(s->run_cfg, "overwrite")) return FS_OK;
    long long step = step_of(ckpt);
    char at[48] = "";
    if (step >= 0) snprintf(at, sizeof at, ", at step %lld", step);
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: already holds a checkpoint (%s%s): continue it with --resume, replace it with [run] "
                        "overwrite = true, or choose another [run] out",
                        fs_config_where(s->run_cfg, "out"), ckpt, at);
}

int fs_train_init_weights(fs_session *s, uint64_t seed, int resume, fs_error *err) {
    const char *init = fs_config_string(s->model_cfg, "init");
    fs_model_init_weights(s->model, seed);
    int plugins_loaded = 0;
    if (*init && !resume) {
        fs_error lerr = {0};
        int rc = fs_checkpoint_load_init(init, s, &plugins_loaded, &lerr);
        if (rc) return fs_error_set(err, rc, "%s: %s", fs_config_where(s->model_cfg, "init"), lerr.message);
        fs_log(FS_LOG_INFO, NULL, "starting from the weights of %s", init);
    }
    /* the plugins' own parameters follow the layer weights (longformer's
     * global projection starts as c_attn), unless the file had them */
    return plugins_loaded ? FS_OK : fs_model_init_plugin_params(s->model, err);
}
