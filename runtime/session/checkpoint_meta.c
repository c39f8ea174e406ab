/* checkpoint_meta.c — see checkpoint_meta.h. */
#include "session/checkpoint_meta.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"

/* The value as messages show it: quoted, cut to a readable length, its
 * control bytes escaped (a message is one line, whatever the file holds). */
static void shown(char *buf, size_t cap, const char *text) {
    size_t o = 0, i = 0;
    if (cap < 16) return;
    buf[o++] = '"';
    for (; text[i] && i < 40 && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\n')
            o += (size_t)snprintf(buf + o, cap - o, "\\n");
        else if (c < 0x20 || c == 0x7f)
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    snprintf(buf + o, cap - o, "%s\"", text[i] ? "..." : "");
}

static int bad_field(const char *file, const char *key, const char *text, const char *want, fs_error *err) {
    char v[64];
    shown(v, sizeof v, text);
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: metadata %s = %s: %s; the file is damaged or was not written by fsrun", file, key, v,
                        want);
}

static int missing_field(const char *file, const char *key, const char *what, fs_error *err) {
    return fs_error_set(err, FS_ERR_INVALID, "%s: no metadata %s (%s): the file is damaged or is not %s", file, key,
                        what, "fsrun's");
}

int fs_meta_parse_count(const char *file, const char *key, const char *text, uint64_t max, uint64_t *out,
                        fs_error *err) {
    char want[96];
    snprintf(want, sizeof want, "must be a whole number from 0 to %" PRIu64, max);
    size_t n = strlen(text);
    if (n == 0 || n > 20 || (text[0] == '0' && n > 1)) return bad_field(file, key, text, want, err);
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(text[i] - '0');
        if (d > 9 || v > (UINT64_MAX - d) / 10) return bad_field(file, key, text, want, err);
        v = v * 10 + d;
    }
    if (v > max) return bad_field(file, key, text, want, err);
    *out = v;
    return FS_OK;
}

/* A finite number written whole ("%.17g"): strtod must use every byte. */
static int parse_real(const char *file, const char *key, const char *text, double *out, fs_error *err) {
    char *end;
    errno = 0;
    double v = *text && !strchr(" \t\n", *text) ? strtod(text, &end) : NAN;
    if (isnan(v) || !isfinite(v) || *end || errno == ERANGE)
        return bad_field(file, key, text, "must be a finite number", err);
    *out = v;
    return FS_OK;
}

/* "%016x %016x %016x %016x": the batch sampler's four state words. */
static int parse_rng(const char *file, const char *text, fs_rng *rng, fs_error *err) {
    static const char *const want = "must be four words of 16 hexadecimal digits, not all zero";
    if (strlen(text) != 4 * 16 + 3) return bad_field(file, "rng", text, want, err);
    uint64_t any = 0;
    for (int w = 0; w < 4; w++) {
        const char *p = text + 17 * w;
        uint64_t v = 0;
        for (int i = 0; i < 16; i++) {
            const char *hex = "0123456789abcdef", *hit = p[i] ? strchr(hex, p[i] >= 'A' && p[i] <= 'F' ? p[i] + 32 : p[i]) : NULL;
            if (!hit) return bad_field(file, "rng", text, want, err);
            v = v << 4 | (uint64_t)(hit - hex);
        }
        if (w < 3 && p[16] != ' ') return bad_field(file, "rng", text, want, err);
        rng->s[w] = v;
        any |= v;
    }
    return any ? FS_OK : bad_field(file, "rng", text, want, err);
}

/* The largest step or count a checkpoint may hold: [train] steps is an int64. */
#define MAX_COUNT ((uint64_t)INT64_MAX)

/* The layout from the format fields; a newer fsrun's is refused by name. */
static int layout_of(fs_meta_get_fn get, const void *src, const char *file, int *layout, fs_error *err) {
    const char *fmt = get(src, "format"), *ff = get(src, "fastserve_format");
    *layout = FS_CKPT_FOREIGN;
    if (fmt && !strcmp(fmt, FS_CKPT_FORMAT_V1)) *layout = FS_CKPT_V1;
    if (!ff) return FS_OK;
    if (!strcmp(ff, FS_CKPT_FORMAT_V2)) {
        *layout = FS_CKPT_V2;
        return FS_OK;
    }
    char v[64];
    shown(v, sizeof v, ff);
    return fs_error_set(err, FS_ERR_INVALID,
                        "%s: metadata fastserve_format = %s: this fsrun reads " FS_CKPT_FORMAT_V1
                        " and " FS_CKPT_FORMAT_V2 " checkpoints (a newer fsrun wrote it?)",
                        file, v);
}

int fs_ckpt_meta_weights(fs_ckpt_weights_meta *m, fs_meta_get_fn get, const void *src, const char *file,
                         fs_error *err) {
    memset(m, 0, sizeof *m);
    int rc = layout_of(get, src, file, &m->layout, err);
    if (rc || m->layout == FS_CKPT_FOREIGN) return rc;
    const char *step = get(src, "step"), *graph = get(src, "graph");
    if (step) {
        if ((rc = fs_meta_parse_count(file, "step", step, MAX_COUNT, &m->step, err))) return rc;
        m->has_step = 1;
    }
    if (!graph) return FS_OK;
    char name[512];
    snprintf(name, sizeof name, "%s (its graph)", file);
    fs_error gerr = {0};
    if ((rc = fs_graph_load_string(&m->graph, name, graph, &gerr)))
        return fs_error_set(err, rc, "%s: metadata graph: %s", file, gerr.message);
    return FS_OK;
}

void fs_ckpt_meta_weights_release(fs_ckpt_weights_meta *m) {
    fs_graph_destroy(m->graph);
    m->graph = NULL;
}

int fs_ckpt_meta_state(fs_ckpt_state_meta *m, int layout, fs_meta_get_fn get, const void *src, const char *file,
                       fs_error *err) {
    memset(m, 0, sizeof *m);
    const char *fmt = get(src, "format");
    const char *want_fmt = layout == FS_CKPT_V1 ? FS_CKPT_FORMAT_V1 : FS_CKPT_STATE_FORMAT;
    if (!fmt || strcmp(fmt, want_fmt)) {
        char v[64];
        shown(v, sizeof v, fmt ? fmt : "");
        return fs_error_set(err, FS_ERR_INVALID, "%s: metadata format = %s: not a training state (" FS_CKPT_STATE_FORMAT
                            ")", file, fmt ? v : "(none)");
    }
    static const struct {
        const char *key, *what;
    } fields[] = {{"step", "optimizer steps done"},
                  {"optimizer_t", "AdamW's update count"},
                  {"rng", "the batch sampler's state"},
                  {"loss", "the last step's loss"},
                  {"val_loss", "the last validation loss"}};
    const char *v[5];
    for (size_t i = 0; i < 5; i++)
        if (!(v[i] = get(src, fields[i].key))) return missing_field(file, fields[i].key, fields[i].what, err);
    int rc;
    if ((rc = fs_meta_parse_count(file, "step", v[0], MAX_COUNT, &m->step, err)) ||
        (rc = fs_meta_parse_count(file, "optimizer_t", v[1], m->step, &m->optimizer_t, err)) ||
        (rc = parse_rng(file, v[2], &m->rng, err)) || (rc = parse_real(file, "loss", v[3], &m->loss, err)) ||
        (rc = parse_real(file, "val_loss", v[4], &m->val_loss, err)))
        return rc;
    if (m->val_loss < 0 && m->val_loss != -1)
        return bad_field(file, "val_loss", v[4], "must be a loss >= 0, or -1 for none", err);
    return FS_OK;
}
