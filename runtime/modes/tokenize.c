/* tokenize.c — the tokenizer's two modes:
 *
 *   --mode train-tokenizer   learns a byte-level BPE from [data] train with
 *                            [model] vocab_size tokens and writes it where
 *                            [model] tokenizer = bpe:PATH points
 *   --mode tokenize          tokenizes [data] train and val into their
 *                            token caches (token_cache.h) and reports
 *                            tokens per byte: what a training run would
 *                            otherwise do first
 *
 * "train-tokenizer" reads next to train, distill, generate and eval as what
 * it is: training, of the tokenizer rather than the model. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "io/bpe_train.h"
#include "session/checkpoint.h"
#include "dist/world.h"
#include "io/data.h"
#include "io/files.h"
#include "io/metrics.h"
#include "io/tokenizer.h"
#include "modes/modes.h"

/* Special tokens every learned tokenizer gets, after the merges (GPT-2's). */
static const char *const SPECIALS[] = {"<|endoftext|>"};

static void report_file(const char *key, const fs_dataset *d, int last) {
    const fs_token_file *f = &d->file;
    printf("\"%s\": {\"path\": ", key);
    fs_json_string(stdout, d->path);
    printf(", \"bytes\": %zu, \"tokens\": %zu, \"tokens_per_byte\": %.6f, \"seconds\": %.3f, \"from_cache\": %s, "
           "\"cache\": ",
           f->text_bytes, d->n, f->text_bytes ? (double)d->n / (double)f->text_bytes : 0.0, f->seconds,
           f->from_cache ? "true" : "false");
    if (f->cache_path)
        fs_json_string(stdout, f->cache_path);
    else
        printf("null");
    printf("}%s", last ? "" : ", ");
}

int fs_mode_tokenize(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    (void)o;
    *config_error = 1;
    static const char *const keys[] = {"train", "val"};
    fs_dataset d[2];
    memset(d, 0, sizeof d);
    fs_tokenizer *tok;
    int rc = fs_session_tokenizer(s, &tok, err), any = 0;
    for (size_t k = 0; k < 2 && !rc; k++) {
        const char *path = fs_config_string(s->data_cfg, keys[k]);
        if (!path || !*path) continue;
        any = 1;
        rc = fs_session_dataset(s, keys[k], 1, &d[k], err);
    }
    if (!rc && !any)
        rc = fs_error_set(err, FS_ERR_INVALID, "[data] train and val are both unset: --mode tokenize has nothing to do");
    if (!rc) {
        *config_error = 0;
        for (size_t k = 0; k < 2; k++) {
            if (!d[k].path) continue;
            const fs_token_file *f = &d[k].file;
            printf("%s: %zu bytes -> %zu tokens (%.4f a byte)%s%s\n", d[k].path, f->text_bytes, d[k].n,
                   f->text_bytes ? (double)d[k].n / (double)f->text_bytes : 0.0,
                   f->from_cache ? ", from the cache " : f->cache_path ? ", cached in " : "",
                   f->cache_path ? f->cache_path : "");
        }
        printf("{\"mode\": \"tokenize\", \"tokenizer\": ");
        fs_json_string(stdout, fs_config_string(s->model_cfg, "tokenizer"));
        printf(", \"vocab\": %zu, ", fs_tokenizer_vocab_size(tok));
        for (size_t k = 0, left = (d[0].path != NULL) + (d[1].path != NULL); k < 2; k++)
            if (d[k].path) report_file(keys[k], &d[k], --left == 0);
        printf("}\n");
    }
    fs_dataset_release(&d[0]);
    fs_dataset_release(&d[1]);
    return rc;
}

/* Where train-tokenizer writes: PATH itself when it names a .json file,
 * PATH/tokenizer.json for a directory (or a path ending in '/'). */
static int output_path(const char *spec, const char *where, char *out, size_t cap, fs_error *err) {
    if (strncmp(spec, "bpe:", 4) || !spec[4])
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: --mode train-tokenizer learns a BPE tokenizer: set it to bpe:PATH, the tokenizer.json "
                            "to write",
                            where);
    const char *path = spec + 4;
    size_t n = strlen(path);
    if (fs_is_dir(path) || path[n - 1] == '/')
        snprintf(out, cap, "%.*s/tokenizer.json", (int)(path[n - 1] == '/' ? n - 1 : n), path);
    else if (n > 5 && !strcmp(path + n - 5, ".json"))
        snprintf(out, cap, "%s", path);
    else
        return fs_error_set(err, FS_ERR_INVALID, "%s: PATH must be a .json file or a directory to write tokenizer.json in",
                            where);
    return FS_OK;
}

static int make_parent(const char *path, fs_error *err) {
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return FS_OK;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    return fs_mkdirs(dir, err);
}

int fs_mode_train_tokenizer(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err) {
    (void)o;
    *config_error = 1;
    const char *where = fs_config_where(s->model_cfg, "tokenizer"), *train = fs_config_string(s->data_cfg, "train");
    char out[PATH_MAX];
    int rc = output_path(fs_config_string(s->model_cfg, "tokenizer"), where, out, sizeof out, err);
    if (rc) return rc;
    if (!train || !*train)
        return fs_error_set(err, FS_ERR_INVALID, "[data] train: required by --mode train-tokenizer: set it to a text file");
    if (fs_is_file(out) && !fs_config_bool(s->run_cfg, "overwrite"))
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: %s exists: set [run] overwrite = true to learn it again, or name another file", where,
                            out);
    char *text;
    size_t len;
    fs_error ferr = {0};
    if ((rc = fs_file_read(train, &text, &len, &ferr)))
        return fs_error_set(err, rc, "%s: %s", fs_config_where(s->data_cfg, "train"), ferr.message);
    size_t vocab = (size_t)fs_config_int(s->model_cfg, "vocab_size");
    *config_error = 0;
    double t0 = fs_now();
    fs_tokenizer *tok = NULL;
    rc = fs_bpe_train(&tok, text, len, vocab, SPECIALS, sizeof SPECIALS / sizeof SPECIALS[0], 2, err);
    double learn_s = fs_now() - t0;
    free(text);
    if (!rc) rc = make_parent(out, err);
    if (!rc) rc = fs_tokenizer_save(tok, out, err);
    /* the corpus through it once now: its token cache is what training reads */
    fs_dataset d;
    memset(&d, 0, sizeof d);
    if (!rc) rc = fs_dataset_load(&d, train, fs_config_where(s->data_cfg, "train"), 1, tok,
                                  fs_config_bool(s->data_cfg, "cache"), fs_world_rank() == 0, err);
    if (!rc) {
        size_t n = fs_tokenizer_vocab_size(tok);
        if (n < vocab)
            fs_log(FS_LOG_WARN, NULL, "learned %zu tokens, fewer than [model] vocab_size = %zu: no pair occurs twice "
                   "any more in %s", n, vocab, train);
        printf("%s: %zu tokens (256 bytes, %zu merges, %zu special) learned from %s in %.2f s; %zu bytes -> %zu tokens "
               "(%.4f a byte)\n",
               out, n, n - 256 - 1, (size_t)1, train, learn_s, d.file.text_bytes, d.n,
               (double)d.n / (double)(d.file.text_bytes ? d.file.text_bytes : 1));
        printf("{\"mode\": \"train-tokenizer\", \"tokenizer\": ");
        fs_json_string(stdout, out);
        printf(", \"vocab\": %zu, \"merges\": %zu, \"seconds\": %.3f, ", n, n - 257, learn_s);
        report_file("train", &d, 1);
        printf("}\n");
    }
    fs_dataset_release(&d);
    fs_tokenizer_destroy(tok);
    return rc;
}
