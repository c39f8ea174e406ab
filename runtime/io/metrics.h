/* metrics.h — what a run reports while it runs: JSON lines in
 * <out>/metrics.jsonl (one per step, one per validation) for plotting
 * tools, and a progress line on stderr: redrawn in place on a terminal
 * (step/total, loss, tok/s, ETA), plain lines every log_every steps
 * otherwise. stdout is kept for results. Every row is valid JSON (a NaN
 * is null), and a row that cannot be written (a full disk) is said when it
 * happens; training goes on. */
#ifndef FS_METRICS_H
#define FS_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/host.h"

typedef struct fs_metrics {
    FILE *jsonl;
    char path[4096];  /* of metrics.jsonl, for messages */
    int failed;       /* a row could not be written (said once, when it happened) */
    int tty;          /* redraw in place */
    int quiet;        /* no progress at all */
    uint64_t log_every;
    int line_open;    /* a progress line is on screen */
} fs_metrics;

/* progress: "auto", "on" or "off". append: keep earlier rows (resume),
 * those up to resume_step (the checkpoint's): rows of later steps that a
 * killed run wrote, and a torn last row, are dropped. */
int fs_metrics_open(fs_metrics *m, const char *out_dir, const char *progress, uint64_t log_every, int append,
                    uint64_t resume_step, fs_error *err);
void fs_metrics_close(fs_metrics *m);

void fs_metrics_step(fs_metrics *m, uint64_t step, uint64_t total, double loss, double lr, double grad_norm,
                     double tokens_per_s, double eta_s);
void fs_metrics_val(fs_metrics *m, uint64_t step, double val_loss);
/* A step dropped for a NaN or Inf ([train] on_nonfinite = skip): a row
 * {"step", "skipped": true, "reason"} and a progress line. */
void fs_metrics_skipped(fs_metrics *m, uint64_t step, uint64_t total, const char *why, uint64_t in_row,
                        uint64_t max_in_row);
/* Ends an in-place progress line before other output. */
void fs_metrics_break(fs_metrics *m);

/* Writes s as a JSON string literal (with quotes) to f. */
void fs_json_string(FILE *f, const char *s);
/* The same for n bytes that may include NUL (generated text can: token 0
 * is byte 0) and need not be UTF-8: always valid UTF-8 out, ill-formed
 * sequences as U+FFFD (fs_json_utf8, utf8.h). */
void fs_json_bytes(FILE *f, const char *s, size_t n);

#endif
