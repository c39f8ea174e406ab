/* distill_augment.c — [distill] augment: more data from the teacher.
 *
 *   augment = generate:R   sequence-level KD (Kim & Rush): for every real
 *       window of the batch the teacher samples R more, prompted with the
 *       window's first augment_prompt tokens at augment_temperature, and the
 *       student learns from all 1 + R (the batch grows to B (1 + R) rows).
 *       Sampling is a function of the teacher, the window and the settings
 *       alone, and the sequences are cached on disk (augment_cache, by
 *       default beside the teacher's checkpoint), so a rerun, a resumed run
 *       or another student of the same teacher reads them instead of
 *       generating them again.
 *   augment = replace:P,K  TinyBERT's word replacement for a language
 *       model: each token after the first is replaced with probability P by
 *       one of the teacher's K most likely tokens for that position (chosen
 *       uniformly), the teacher predicting from the original prefix; inputs
 *       and targets both come from the replaced window. The choice is a
 *       function of the window, so runs are reproducible.
 *
 * Both need one more teacher pass per batch; generate needs the teacher's
 * attention to decode. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/seq.h"
#include "modes/distill/distill_internal.h"

static int parse_uint(const char *s, char **end, size_t *out) {
    if (*s < '0' || *s > '9') return -1;
    unsigned long long v = strtoull(s, end, 10);
    *out = (size_t)v;
    return 0;
}

int fs_augment_plan(fs_augment *a, const fs_config *dc, const fs_model *teacher, const char *teacher_ckpt,
                    size_t T, fs_error *err) {
    memset(a, 0, sizeof *a);
    const char *v = fs_config_string(dc, "augment"), *where = fs_config_where(dc, "augment");
    char *end;
    if (!v || !*v || strcmp(v, "none") == 0) return FS_OK;
    if (strncmp(v, "generate:", 9) == 0) {
        if (parse_uint(v + 9, &end, &a->R) || *end || a->R < 1 || a->R > 64)
            return fs_error_set(err, FS_ERR_INVALID, "%s: generate:R needs R, the sequences per real one, in 1..64",
                                where);
        a->kind = FS_AUG_GENERATE;
        a->prompt = (size_t)fs_config_int(dc, "augment_prompt");
        a->temperature = fs_config_float(dc, "augment_temperature");
        if (a->prompt > T) a->prompt = T;
        for (size_t l = 0; l < fs_model_cfg(teacher)->n_layer; l++)
            if (!(fs_model_attention(teacher, l, NULL)->flags & FS_ATTENTION_DECODE))
                return fs_error_set(err, FS_ERR_UNSUPPORTED,
                                    "%s: the teacher's layer %zu attention plugin cannot decode, so it cannot "
                                    "generate sequences",
                                    where, l);
        const char *path = fs_config_string(dc, "augment_cache");
        if (path && *path)
            snprintf(a->cache_path, sizeof a->cache_path, "%s", path);
        else
            snprintf(a->cache_path, sizeof a->cache_path, "%s.generate-R%zu-T%zu-p%zu-t%g.cache", teacher_ckpt, a->R,
                     T, a->prompt, a->temperature);
    } else if (strncmp(v, "replace:", 8) == 0) {
        a->p = strtod(v + 8, &end);
        if (end == v + 8 || *end != ',' || !(a->p > 0 && a->p <= 1) || parse_uint(end + 1, &end, &a->K) || *end ||
            a->K < 1 || a->K > fs_model_cfg(teacher)->vocab)
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: replace:P,K needs a probability P in (0, 1] and K in 1..%zu (the vocabulary)",
                                where, fs_model_cfg(teacher)->vocab);
        a->kind = FS_AUG_REPLACE;
    } else {
        return fs_error_set(err, FS_ERR_INVALID, "%s: must be none, generate:R or replace:P,K", where);
    }
    return FS_OK;
}

static uint64_t identity(const fs_augment *a, const fs_model *teacher, size_t T) {
    uint64_t h = fs_model_identity(teacher);
    h = fs_hash_u64(h, a->R);
    h = fs_hash_u64(h, T);
    h = fs_hash_u64(h, a->prompt);
    return fs_hash_bytes(h, &a->temperature, sizeof a->temperature);
}

int fs_augment_open(fs_augment *a, const fs_model *teacher, size_t T, fs_error *err) {
    if (a->kind != FS_AUG_GENERATE) return FS_OK;
    return fs_dcache_open(&a->cache, a->cache_path, FS_DCACHE_GENERATE, identity(a, teacher, T),
                          a->R * (T + 1) * sizeof(uint16_t), err);
}

void fs_augment_close(fs_augment *a) {
    fs_dcache_close(a->cache);
    free(a->buf);
    a->cache = NULL;
    a->buf = NULL;
}

size_t fs_augment_rows(const fs_augment *a, size_t B) { return a->kind == FS_AUG_GENERATE ? B * (1 + a->R) : B; }

/* The window (T + 1 tokens) of row b. */
static void window_of(const int32_t *inputs, const int32_t *targets, size_t b, size_t T, int32_t *w) {
    memcpy(w, inputs + b * T, T * sizeof(int32_t));
    w[T] = targets[b * T + T - 1];
}

static int grow_buf(fs_augment *a, size_t n, fs_error *err) {
    if (a->buf_cap >= n) return FS_OK;
    free(a->buf);
    a->buf = malloc(n * sizeof(int32_t));
    a->buf_cap = a->buf ? n : 0;
    return a->buf ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
}

static int replace(fs_augment *a, fs_model *teacher, int32_t *inputs, int32_t *targets, size_t B, size_t T,
                   fs_error *err) {
    size_t V = fs_model_cfg(teacher)->vocab;
    int rc = fs_model_forward(teacher, inputs, B, T, err);
    if (rc || (rc = grow_buf(a, T + 1 + a->K, err))) return rc;
    int32_t *w = a->buf, *top = a->buf + T + 1;
    for (size_t b = 0; b < B; b++) {
        window_of(inputs, targets, b, T, w);
        fs_rng r;
        fs_rng_seed(&r, fs_hash_u64(fs_hash_tokens(0, w, T + 1), 0x7265706cull));
        for (size_t t = 1; t <= T; t++) {
            if (!((double)fs_rng_float(&r) < a->p)) continue;
            /* the teacher's prediction for position t, from the original prefix */
            fs_topk(fs_model_logits(teacher) + (b * T + t - 1) * V, V, a->K, top);
            w[t] = top[fs_rng_below(&r, a->K)];
            a->replaced++;
        }
        a->tokens_seen += T;
        memcpy(inputs + b * T, w, T * sizeof(int32_t));
        memcpy(targets + b * T, w + 1, T * sizeof(int32_t));
    }
    return FS_OK;
}

/* Samples R sequences for each window in `win` (n windows of T + 1): one
 * sequence of n R rows decoding in lockstep, row i's random stream a
 * function of its window and its number alone. */
static int sample(fs_augment *a, const fs_model *teacher, const int32_t *win, const uint64_t *keys, size_t n,
                  size_t T, int32_t *seqs, fs_error *err) {
    size_t V = fs_model_cfg(teacher)->vocab, rows = n * a->R, P = a->prompt ? a->prompt : 1;
    int32_t *tok = malloc(rows * sizeof *tok);
    float *logits = malloc(rows * V * sizeof *logits);
    fs_seq *seq = NULL;
    fs_seq_config sc = {.B = rows, .context = T, .sampler = {a->temperature, 0, 1.0, 0}};
    int rc = tok && logits ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    if (!rc) rc = fs_seq_create(&seq, teacher, &sc, err);
    for (size_t i = 0; i < rows && !rc; i++) {
        fs_seq_seed_row(seq, i, fs_hash_u64(keys[i / a->R], i % a->R));
        memcpy(seqs + i * (T + 1), win + (i / a->R) * (T + 1), P * sizeof(int32_t));
    }
    for (size_t pos = 0; pos < T && !rc; pos++) {
        for (size_t i = 0; i < rows; i++) tok[i] = seqs[i * (T + 1) + pos];
        if ((rc = fs_seq_decode(seq, tok, logits, err))) break;
        if (pos + 1 < P) continue;
        for (size_t i = 0; i < rows; i++) seqs[i * (T + 1) + pos + 1] = fs_seq_sample(seq, i, logits + i * V);
    }
    fs_seq_destroy(seq);
    free(tok);
    free(logits);
    return rc;
}

static int generate(fs_augment *a, fs_model *teacher, int32_t *inputs, int32_t *targets, size_t B, size_t T,
                    fs_error *err) {
    size_t W = T + 1, R = a->R;
    int rc = grow_buf(a, B * W + B * R * W + (R * W + 1) / 2 + 1, err);
    if (rc) return rc;
    int32_t *win = a->buf, *seqs = win + B * W;
    uint16_t *rec = (uint16_t *)(seqs + B * R * W);
    uint64_t keys[4096];
    size_t miss[4096], n_miss = 0;
    if (B > 4096) return fs_error_set(err, FS_ERR_INVALID, "augment = generate: at most 4096 rows per batch");
    for (size_t b = 0; b < B; b++) {
        window_of(inputs, targets, b, T, win + b * W);
        keys[b] = fs_hash_tokens(0, win + b * W, W);
        rc = fs_dcache_get(a->cache, keys[b], rec, err);
        if (rc < 0) return rc;
        if (rc == 1) {
            for (size_t i = 0; i < R * W; i++) seqs[b * R * W + i] = rec[i];
            a->reused += R;
        } else {
            miss[n_miss++] = b;
        }
    }
    if (n_miss) {
        /* gather the missed windows in front, sample them together */
        int32_t *mwin = malloc(n_miss * W * sizeof(int32_t)), *mseq = malloc(n_miss * R * W * sizeof(int32_t));
        uint64_t *mkeys = malloc(n_miss * sizeof(uint64_t));
        rc = mwin && mseq && mkeys ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < n_miss && !rc; i++) {
            memcpy(mwin + i * W, win + miss[i] * W, W * sizeof(int32_t));
            mkeys[i] = keys[miss[i]];
        }
        if (!rc) rc = sample(a, teacher, mwin, mkeys, n_miss, T, mseq, err);
        for (size_t i = 0; i < n_miss && !rc; i++) {
            for (size_t j = 0; j < R * W; j++) rec[j] = (uint16_t)mseq[i * R * W + j];
            if (!fs_dcache_has(a->cache, mkeys[i])) rc = fs_dcache_put(a->cache, mkeys[i], rec, err);
            a->generated += R;
        }
        /* as a rerun will read them: a window repeated in the batch gets the
         * sequences stored first (its own may differ: BLAS by row position) */
        for (size_t i = 0; i < n_miss && !rc; i++) {
            rc = fs_dcache_get(a->cache, mkeys[i], rec, err);
            if (rc == 1) {
                for (size_t j = 0; j < R * W; j++) seqs[miss[i] * R * W + j] = rec[j];
                rc = FS_OK;
            } else if (rc == 0) {
                rc = fs_error_set(err, FS_ERR_IO, "%s: a record just written is missing", fs_dcache_path(a->cache));
            }
        }
        free(mwin);
        free(mseq);
        free(mkeys);
        if (rc) return rc;
    }
    /* rows B .. B + B R: window b's sequences in order */
    for (size_t i = 0; i < B * R; i++) {
        memcpy(inputs + (B + i) * T, seqs + i * W, T * sizeof(int32_t));
        memcpy(targets + (B + i) * T, seqs + i * W + 1, T * sizeof(int32_t));
    }
    return FS_OK;
}

int fs_augment_batch(fs_augment *a, fs_model *teacher, int32_t *inputs, int32_t *targets, size_t B, size_t T,
                     fs_error *err) {
    switch (a->kind) {
    case FS_AUG_REPLACE: return replace(a, teacher, inputs, targets, B, T, err);
    case FS_AUG_GENERATE: return generate(a, teacher, inputs, targets, B, T, err);
    default: return FS_OK;
    }
}
