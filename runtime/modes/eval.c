/* eval.c — held-out loss over consecutive windows, and the eval mode. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "session/checkpoint.h"
#include "io/data.h"
#include "io/metrics.h"
#include "modes/modes.h"
#include "modes/train_device.h"
#include "compute/ops.h"

int fs_evaluate_sum(const fs_dataset *d, size_t T, size_t B, size_t max_windows, fs_batch_loss_fn batch_sum,
                    void *arg, double *sum, size_t *n_tokens, fs_error *err) {
    size_t windows = fs_dataset_windows(d, T);
    if (max_windows && windows > max_windows) windows = max_windows;
    *sum = 0;
    *n_tokens = 0;
    if (windows == 0) return FS_OK;
    if (B > windows) B = windows;
    int32_t *inputs = malloc(B * T * sizeof(int32_t)), *targets = malloc(B * T * sizeof(int32_t));
    if (!inputs || !targets) {
        free(inputs);
        free(targets);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    int rc = FS_OK;
    for (size_t w = 0; w < windows && !rc; w += B) {
        size_t nb = windows - w < B ? windows - w : B;
        double part = 0;
        for (size_t b = 0; b < nb; b++) fs_dataset_window(d, w + b, inputs + b * T, targets + b * T, T);
        rc = batch_sum(arg, inputs, targets, nb, T, &part, err);
        *sum += part;
    }
    free(inputs);
    free(targets);
    *n_tokens = windows * T;
    return rc;
}

static int model_batch_sum(void *arg, const int32_t *inputs, const int32_t *targets, size_t nb, size_t T, double *sum,
                           fs_error *err) {
    fs_model *m = arg;
    int rc = fs_model_forward(m, inputs, nb, T, err);
    if (!rc) *sum = crossentropy_softmax_forward_backward(NULL, fs_model_logits(m), targets, nb * T, fs_model_cfg(m)->vocab, 0.0f);
    return rc;
}

int fs_evaluate(fs_model *m, const fs_dataset *d, size_t B, size_t max_windows, double *loss, size_t *n_tokens,
                fs_error *err) {
    double sum;
    int rc = fs_evaluate_sum(d, fs_model_cfg(m)->max_seq, B, max_windows, model_batch_sum, m, &sum, n_tokens, err);
    *loss = *n_tokens ? sum / (double)*n_tokens : 0.0;
    return rc;
}

/* The mean loss over every window of val, B at a time, on dev (a backend:
 * the CPU model's weights uploaded) or, dev NULL, the CPU's own kernels. */
static int evaluate_on(fs_session *s, fs_train_device *dev, const fs_dataset *val, size_t B, double *loss, size_t *n,
                       fs_error *err) {
    if (!dev) return fs_evaluate(s->model, val, B, 0, loss, n, err);
    double sum = 0;
    int rc = fs_train_device_upload(dev, NULL, err);
    if (!rc) rc = fs_evaluate_sum(val, s->mcfg.max_seq, B, 0, fs_train_device_batch_sum, dev, &sum, n, err);
    *loss = *n ? sum / (double)*n : 0.0;
    return rc;
}

int fs_mode_eval(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    *config_error = 1;
    if (fs_session_require_whole(s, "eval", err)) return err->status;
    const char *path = fs_config_string(s->data_cfg, "val");
    if (!path || !*path)
        return fs_error_set(err, FS_ERR_INVALID, "[data] val: required by --mode eval: set it to a text file");
    fs_dataset val;
    int rc = fs_session_dataset(s, "val", s->mcfg.max_seq + 1, &val, err);
    if (rc) return rc;
    size_t B = (size_t)fs_config_int(s->train_cfg, "batch");
    fs_train_device *dev = NULL; /* the device the session asks for (refusals are configuration errors) */
    if ((rc = fs_train_device_open(&dev, s, 1, B, err))) {
        fs_dataset_release(&val);
        return rc;
    }
    *config_error = 0;
    char ckpt[PATH_MAX];
    if (o->checkpoint)
        snprintf(ckpt, sizeof ckpt, "%s", o->checkpoint);
    else
        fs_session_checkpoint_path(s, ckpt, sizeof ckpt);
    rc = fs_checkpoint_load(ckpt, s, NULL, NULL, err);
    double loss = 0;
    size_t n = 0;
    if (!rc) rc = evaluate_on(s, dev, &val, B, &loss, &n, err);
    if (!rc && !isfinite(loss)) /* JSON has no NaN: a result that is not a number is a failure */
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "%s: the mean loss over %zu tokens is %s: the weights overflow (a run that diverged?): "
                          "evaluate an earlier checkpoint",
                          ckpt, n, isnan(loss) ? "NaN" : "Inf");
    if (!rc) printf("{\"loss\": %.6f, \"tokens\": %zu}\n", loss, n);
    fs_train_device_close(dev);
    fs_dataset_release(&val);
    return rc;
}
