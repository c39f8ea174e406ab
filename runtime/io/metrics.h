/* metrics.h — what a run reports while it runs: JSON lines in
 * <out>/metrics.jsonl (one per step, one per validation) for plotting
 * tools, and a progress line on stderr: redrawn in place on a terminal
 * (step/total, loss, tok/s, ETA), plain lines every log_every steps
 * otherwise. stdout is kept for results. */
#ifndef FS_METRICS_H
#define FS_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/host.h"

typedef struct fs_metrics {
    FILE *jsonl;
    int tty;          /* redraw in place */
    int quiet;        /* no progress at all */
    uint64_t log_every;
    int line_open;    /* a progress line is on screen */
} fs_metrics;

/* progress: "auto", "on" or "off". append: keep earlier rows (resume). */
int fs_metrics_open(fs_metrics *m, const char *out_dir, const char *progress, uint64_t log_every, int append,
                    fs_error *err);
void fs_metrics_close(fs_metrics *m);

void fs_metrics_step(fs_metrics *m, uint64_t step, uint64_t total, double loss, double lr, double grad_norm,
                     double tokens_per_s, double eta_s);
void fs_metrics_val(fs_metrics *m, uint64_t step, double val_loss);
/* Ends an in-place progress line before other output. */
void fs_metrics_break(fs_metrics *m);

/* Writes s as a JSON string literal (with quotes) to f. */
void fs_json_string(FILE *f, const char *s);
/* The same for n bytes that may include NUL (generated text can: token 0
 * is byte 0) and need not be UTF-8: always valid UTF-8 out, ill-formed
 * sequences as U+FFFD (fs_json_utf8, utf8.h). */
void fs_json_bytes(FILE *f, const char *s, size_t n);

#endif
