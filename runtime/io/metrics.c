/* metrics.c — see metrics.h. */
#include "io/metrics.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core/host.h"
#include "io/utf8.h"

void fs_json_string(FILE *f, const char *s) { fs_json_bytes(f, s, strlen(s)); }

void fs_json_bytes(FILE *f, const char *s, size_t n) { fs_json_utf8(f, s, n); }

int fs_metrics_open(fs_metrics *m, const char *out_dir, const char *progress, uint64_t log_every, int append,
                    fs_error *err) {
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out_dir);
    m->jsonl = fopen(path, append ? "a" : "w");
    if (!m->jsonl) return fs_error_set(err, FS_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    m->tty = strcmp(progress, "on") == 0 || (strcmp(progress, "auto") == 0 && isatty(STDERR_FILENO));
    m->quiet = strcmp(progress, "off") == 0;
    m->log_every = log_every ? log_every : 1;
    return FS_OK;
}

void fs_metrics_close(fs_metrics *m) {
    fs_metrics_break(m);
    if (m->jsonl) fclose(m->jsonl);
    m->jsonl = NULL;
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
        fprintf(m->jsonl,
                "{\"step\": %llu, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f}\n",
                (unsigned long long)step, loss, lr, grad_norm, tokens_per_s);
        fflush(m->jsonl);
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
        fprintf(m->jsonl, "{\"step\": %llu, \"val_loss\": %.6f}\n", (unsigned long long)step, val_loss);
        fflush(m->jsonl);
    }
    if (m->quiet) return;
    fs_metrics_break(m);
    fprintf(stderr, "step %llu: val_loss %.4f\n", (unsigned long long)step, val_loss);
}

void fs_metrics_break(fs_metrics *m) {
    if (m->line_open) {
        fputc('\n', stderr);
        m->line_open = 0;
    }
}
