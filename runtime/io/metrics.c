/* metrics.c — see metrics.h. */
#include "io/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/host.h"
#include "io/files.h"
#include "io/utf8.h"

void fs_json_string(FILE *f, const char *s) { fs_json_bytes(f, s, strlen(s)); }

void fs_json_bytes(FILE *f, const char *s, size_t n) { fs_json_utf8(f, s, n); }

/* How every row begins (fs_metrics_step, _val, _skipped). */
#define ROW_STEP "\x7b\"step\": %llu"

/* The rows a resumed run continues: those up to its step (a killed run
 * wrote rows for steps its checkpoint never reached, and maybe half a
 * row), rewritten atomically when any must go. */
static int keep_rows_through(const char *path, uint64_t step, fs_error *err) {
    char *text;
    size_t len, kept = 0;
    if (fs_file_read(path, &text, &len, err)) return err->status == FS_ERR_NOT_FOUND ? FS_OK : err->status;
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        unsigned long long s;
        if (!nl || sscanf(line, ROW_STEP, &s) != 1 || s > step) break;
        kept = (size_t)(nl + 1 - text);
        line = nl + 1;
    }
    int rc = FS_OK;
    if (kept < len) {
        const void *parts[1] = {text};
        size_t lens[1] = {kept};
        rc = fs_file_write_atomic(path, parts, lens, 1, err);
        if (!rc)
            fs_log(FS_LOG_INFO, NULL, "%s: dropped %zu bytes of rows past step %llu (written by a run that stopped "
                   "before its checkpoint)", path, len - kept, (unsigned long long)step);
    }
    free(text);
    return rc;
}

int fs_metrics_open(fs_metrics *m, const char *out_dir, const char *progress, uint64_t log_every, int append,
                    uint64_t resume_step, fs_error *err) {
    memset(m, 0, sizeof *m);
    snprintf(m->path, sizeof m->path, "%s/metrics.jsonl", out_dir);
    int rc = append ? keep_rows_through(m->path, resume_step, err) : FS_OK;
    if (rc) return rc;
    m->jsonl = fopen(m->path, append ? "a" : "w");
    if (!m->jsonl) return fs_error_set(err, FS_ERR_IO, "%s: cannot write: %s", m->path, strerror(errno));
    m->tty = strcmp(progress, "on") == 0 || (strcmp(progress, "auto") == 0 && isatty(STDERR_FILENO));
    m->quiet = strcmp(progress, "off") == 0;
    m->log_every = log_every ? log_every : 1;
    return FS_OK;
}

/* A row is on disk when its fflush succeeds; the first that is not is said
 * at once (a full disk), not at the end of the run. */
static void row_written(fs_metrics *m, uint64_t step) {
    if (fflush(m->jsonl) == 0 && !ferror(m->jsonl)) return;
    int e = errno;
    clearerr(m->jsonl);
    if (m->failed++) return;
    fs_metrics_break(m);
    fs_log(FS_LOG_WARN, NULL, "%s: cannot write the row of step %llu: %s; training goes on, but rows are missing "
           "until there is room", m->path, (unsigned long long)step, strerror(e));
}

void fs_metrics_close(fs_metrics *m) {
    fs_metrics_break(m);
    if (m->jsonl && fclose(m->jsonl) != 0 && !m->failed++)
        fs_log(FS_LOG_WARN, NULL, "%s: cannot write its last rows: %s", m->path, strerror(errno));
    m->jsonl = NULL;
}

/* %.*f, or null for a value JSON cannot hold. */
static void json_number(FILE *f, const char *fmt, double x) {
    if (isfinite(x))
        fprintf(f, fmt, x);
    else
        fputs("null", f);
}

static void eta_text(char *buf, size_t cap, double s) {
    if (s < 0 || s > 1e7) {
        snprintf(buf, cap, "--:--");
        return;
    }
    unsigned long t = (unsigned long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, cap, "%lu:%02lu", t / 60, t % 60);
}

void fs_metrics_step(fs_metrics *m, uint64_t step, uint64_t total, double loss, double lr, double grad_norm,
                     double tokens_per_s, double eta_s) {
    if (m->jsonl) {
        fprintf(m->jsonl, "{\"step\": %llu, \"loss\": ", (unsigned long long)step);
        json_number(m->jsonl, "%.6f", loss);
        fprintf(m->jsonl, ", \"lr\": %.6e, \"grad_norm\": ", lr);
        json_number(m->jsonl, "%.6f", grad_norm);
        fprintf(m->jsonl, ", \"tokens_per_s\": %.1f}\n", tokens_per_s);
        row_written(m, step);
    }
    if (m->quiet) return;
    char eta[32];
    eta_text(eta, sizeof eta, eta_s);
    if (m->tty) {
        fprintf(stderr, "\r\033[Kstep %llu/%llu | loss %.4f | %.0f tok/s | ETA %s", (unsigned long long)step,
                (unsigned long long)total, loss, tokens_per_s, eta);
        m->line_open = 1;
    } else if (step % m->log_every == 0 || step == total || step == 1) {
        fprintf(stderr, "step %llu/%llu loss %.4f lr %.3e %.0f tok/s ETA %s\n", (unsigned long long)step,
                (unsigned long long)total, loss, lr, tokens_per_s, eta);
    }
    fflush(stderr);
}

void fs_metrics_val(fs_metrics *m, uint64_t step, double val_loss) {
    if (m->jsonl) {
        fprintf(m->jsonl, "{\"step\": %llu, \"val_loss\": ", (unsigned long long)step);
        json_number(m->jsonl, "%.6f", val_loss);
        fputs("}\n", m->jsonl);
        row_written(m, step);
    }
    if (m->quiet) return;
    fs_metrics_break(m);
    fprintf(stderr, "step %llu: val_loss %.4f\n", (unsigned long long)step, val_loss);
}

void fs_metrics_skipped(fs_metrics *m, uint64_t step, uint64_t total, const char *why, uint64_t in_row,
                        uint64_t max_in_row) {
    if (m->jsonl) {
        fprintf(m->jsonl, "{\"step\": %llu, \"skipped\": true, \"reason\": ", (unsigned long long)step);
        fs_json_string(m->jsonl, why);
        fputs("}\n", m->jsonl);
        row_written(m, step);
    }
    if (m->quiet) return;
    fs_metrics_break(m);
    fprintf(stderr, "step %llu/%llu skipped: %s (%llu in a row; [train] max_skipped = %llu)\n",
            (unsigned long long)step, (unsigned long long)total, why, (unsigned long long)in_row,
            (unsigned long long)max_in_row);
}

void fs_metrics_break(fs_metrics *m) {
    if (m->line_open) {
        fputc('\n', stderr);
        m->line_open = 0;
    }
}
