/* prometheus.c — the metrics page's text (prometheus.h). */
#include "serve/prometheus.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>

void fs_prom_family(fs_buf *out, const char *name, const char *type, const char *help) {
    fs_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_number(fs_buf *out, double v) {
    if (isinf(v))
        fs_buf_puts(out, v > 0 ? "+Inf" : "-Inf");
    else if (isnan(v))
        fs_buf_puts(out, "NaN");
    else if (v == (double)(long long)v && fabs(v) < 9e15)
        fs_buf_printf(out, "%lld", (long long)v);
    else
        fs_buf_printf(out, "%.17g", v);
}

void fs_prom_sample(fs_buf *out, const char *name, const char *labels, double value) {
    fs_buf_puts(out, name);
    if (labels) fs_buf_printf(out, "{%s}", labels);
    fs_buf_add(out, " ", 1);
    put_number(out, value);
    fs_buf_add(out, "\n", 1);
}

void fs_prom_histogram(fs_buf *out, const char *name, const char *help, const fs_engine_histogram *h) {
    fs_prom_family(out, name, "histogram", help);
    /* the bounds increase up to +Inf (engine.h); anything after is unused */
    for (size_t i = 0; i < FS_ENGINE_HIST_BUCKETS && !isinf(h->le[i]) && (i == 0 || h->le[i] > h->le[i - 1]); i++) {
        fs_buf_printf(out, "%s_bucket{le=\"", name);
        put_number(out, h->le[i]);
        fs_buf_printf(out, "\"} %llu\n", (unsigned long long)h->count[i]);
    }
    fs_buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum ", name, (unsigned long long)h->total, name);
    put_number(out, h->sum);
    fs_buf_printf(out, "\n%s_count %llu\n", name, (unsigned long long)h->total);
}

typedef struct family {
    const char *name, *type, *help;
    size_t offset; /* of a size_t (gauge) or uint64_t (counter) in fs_engine_stats */
} family;

#define G(name, field, help) {name, "gauge", help, offsetof(fs_engine_stats, field)}
#define C(name, field, help) {name, "counter", help, offsetof(fs_engine_stats, field)}

static const family SIMPLE[] = {
    G("fastserve_requests_waiting", waiting, "Requests queued, not yet running."),
    G("fastserve_requests_running", running, "Sequences in the running batch."),
    G("fastserve_requests_swapped", swapped, "Preempted sequences whose KV blocks are in the host swap pool."),
    G("fastserve_kv_blocks_total", kv_blocks_total, "KV cache blocks in the pool."),
    G("fastserve_kv_blocks_used", kv_blocks_used, "KV cache blocks holding tokens of live sequences."),
    G("fastserve_swap_blocks_total", swap_blocks_total, "Blocks in the host swap pool."),
    G("fastserve_swap_blocks_used", swap_blocks_used, "Blocks of the host swap pool in use."),
    C("fastserve_prefix_cache_hits_total", prefix_hits, "Full prompt blocks found shared (their prefill skipped)."),
    C("fastserve_prefix_cache_lookups_total", prefix_lookups, "Full prompt blocks looked up in the prefix cache."),
    C("fastserve_prompt_tokens_total", tokens_in, "Prompt tokens of the requests that arrived."),
    C("fastserve_prompt_tokens_computed_total", prompt_computed,
      "Prompt tokens run through the model (prefill); those found in the prefix cache are not."),
    C("fastserve_generation_tokens_total", tokens_out, "Tokens generated."),
    C("fastserve_preemptions_total", preemptions, "Sequences preempted."),
    C("fastserve_swaps_out_total", swaps_out, "Sequences swapped out to host memory."),
    C("fastserve_swaps_in_total", swaps_in, "Sequences swapped back in."),
    C("fastserve_recomputes_total", recomputes, "Preempted sequences recomputed rather than swapped."),
    C("fastserve_iterations_total", iterations, "Engine iterations (batched steps)."),
};

static const char *const REASONS[] = {"none", "length", "stop", "cancelled", "error", "shutdown"};

void fs_prom_engine(fs_buf *out, const fs_engine_stats *st) {
    for (size_t i = 0; i < sizeof SIMPLE / sizeof SIMPLE[0]; i++) {
        const family *f = &SIMPLE[i];
        const char *p = (const char *)st + f->offset;
        double v = f->type[0] == 'g' ? (double)*(const size_t *)p : (double)*(const uint64_t *)p;
        fs_prom_family(out, f->name, f->type, f->help);
        fs_prom_sample(out, f->name, NULL, v);
    }
    fs_prom_family(out, "fastserve_kv_blocks_free", "gauge", "KV cache blocks free.");
    fs_prom_sample(out, "fastserve_kv_blocks_free", NULL,
                   (double)(st->kv_blocks_total - (st->kv_blocks_used < st->kv_blocks_total ? st->kv_blocks_used
                                                                                              : st->kv_blocks_total)));
    fs_prom_family(out, "fastserve_queue_length", "gauge",
                   "Requests waiting or running per scheduler level (0 = highest priority).");
    char labels[32];
    for (size_t q = 0; q < st->n_queues && q < FS_ENGINE_MAX_QUEUES; q++) {
        snprintf(labels, sizeof labels, "level=\"%zu\"", q);
        fs_prom_sample(out, "fastserve_queue_length", labels, (double)st->queue_len[q]);
    }
    fs_prom_family(out, "fastserve_requests_finished_total", "counter", "Requests the engine ended, by reason.");
    for (size_t r = 1; r < sizeof REASONS / sizeof REASONS[0]; r++) {
        snprintf(labels, sizeof labels, "reason=\"%s\"", REASONS[r]);
        fs_prom_sample(out, "fastserve_requests_finished_total", labels, (double)st->finished[r]);
    }
    fs_prom_histogram(out, "fastserve_time_to_first_token_seconds", "Time from arrival to the first token.",
                      &st->ttft);
    fs_prom_histogram(out, "fastserve_inter_token_latency_seconds", "Time between a request's tokens.", &st->itl);
    fs_prom_histogram(out, "fastserve_e2e_request_latency_seconds", "Time from arrival to the last event.",
                      &st->e2e);
    fs_prom_histogram(out, "fastserve_iteration_seconds", "Time of one engine iteration.", &st->iteration);
}
