/* plan.c — see plan.h.
 *
 * Symbols: L layers, H heads, C width, T = max_seq, V vocabulary, B the
 * global batch; d, t, p the data, tensor and pipeline degrees, v the model
 * chunks per pipeline rank, m the micro-batches of a step; b = B / (d m)
 * sequences and N = b T tokens per micro-batch. All tensors are fp32.
 *
 * Parameters of one layer held by a tensor rank (model.c's layout: QKV,
 * the MLP's first matmul and their biases are split by heads/columns, the
 * two row-parallel weights by rows; their biases and both LayerNorms stay
 * whole): (12 C^2 + 7 C) / t + 6 C. Pipeline rank s holds its layers, plus
 * the embeddings wte (V C) and wpe (T C) on the first stage, ln_f (2 C) and
 * a copy of the tied wte for the head on the last (replicated over t: the
 * LM head is not vocab-parallel in this estimate). Gradients are the same
 * size; AdamW's two moments twice that, divided by d with zero = 1.
 *
 * Activations (runtime/model.c act_sizes and ensure_acts), kept per
 * activation slot: the schedule's slots (pipe_schedule.c: GPipe m, 1F1B
 * min(m, p - s), interleaved as it runs), each holding a micro-batch's
 * activations of every layer of the rank. Per layer and token: ln1, the
 * residual after attention, ln2 and the layer output (C each) and the two
 * LayerNorms' mean and rstd (4 floats) whole; q, k, v, the attention output
 * and its merged heads (5 C) and the MLP's pre- and post-GELU (8 C) split
 * over t; and the dense attention plugin's saved log-sum-exp of every row
 * (saved_bytes = B H T floats per layer, i.e. H per token, split over t):
 *     4 C + 4 + (13 C + H) / t floats.
 * Per slot and token besides: each chunk's input (v C), the token ids (1),
 * the forward scratch (max(C, 4 C / t); max(C, 3 C / t) with ff_chunk)
 * and, on the rank with the head, ln_f's output, mean and rstd and the
 * logits and their gradient (C + 2 + 2 V). Once per rank: the backward scratch (3 C + 16 C / t per
 * token) and, with p > 1, the executor's send/receive buffers
 * (fs_pipe_workspace_floats: 4 v slots N C).
 * [model] reversible = true keeps one layer's activations per slot plus the
 * two-stream state (3 C) and one attention buffer per rank; ff_chunk = k
 * (< N) replaces the 8 C / t MLP floats per layer and token by 2 k 4C / t
 * per slot (and the backward's MLP scratch by 2 k 4C / t).
 *
 * Bytes sent per rank per step:
 *   data      ring all-reduce of the rank's gradients: 2 (d - 1) / d x
 *             gradient bytes (ZeRO-1's reduce-scatter + all-gather: the same)
 *   tensor    Megatron's two all-reduces per layer in forward and two in
 *             backward, of N C floats, each 2 (t - 1) / t, per micro-batch
 *   pipeline  per chunk and micro-batch, the activation to the next virtual
 *             stage and the gradient to the previous (N C floats each), and
 *             the tied embedding's gradient (V C) between the first and
 *             the last stage
 *
 * Step time: training FLOPs = 3 x forward, forward = (24 C^2 + 4 T C) / t
 * per token per layer plus 2 C V per token for the head; compute =
 * FLOPs / FS_PLAN_FLOPS, transfers = bytes / FS_PLAN_BANDWIDTH;
 *     step = max over stages (compute + tensor + pipeline transfers)
 *            / (1 - bubble)
 *          + data all-reduce not hidden behind the backward of the last
 *            micro-batch (2/3 of its compute), as bucketed DDP overlaps it. */
#include "dist/plan.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/host.h"
#include "pipe_schedule.h"
#include "core/schema.h"

/* ---- one candidate ---- */

static void invalid(fs_plan_row *row, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void invalid(fs_plan_row *row, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(row->reason, sizeof row->reason, fmt, ap);
    va_end(ap);
    row->valid = 0;
}

typedef struct stage_cost {
    double params, grads, optim, acts, total; /* bytes */
    double comm_data, comm_tensor, comm_pipe; /* bytes sent */
    double flops, work_s, exposed_s;
} stage_cost;

static void stage_estimate(const fs_plan_model *mo, const fs_plan_row *row, const size_t *count, size_t s, size_t slots,
                           size_t workspace_floats, int zero, stage_cost *out) {
    double C = (double)mo->n_embd, H = (double)mo->n_head, T = (double)mo->seq, V = (double)mo->vocab;
    double d = (double)row->data, t = (double)row->tensor, m = (double)row->microbatches;
    size_t p = row->pipeline, v = row->interleave, n_vs = p * v;
    double N = (double)(mo->batch / row->data / row->microbatches) * T;
    double layers = 0;
    for (size_t c = 0; c < v; c++) layers += (double)count[c * p + s];
    int first = s == 0, last = s == p - 1;

    double layer_params = (12 * C * C + 7 * C) / t + 6 * C;
    double P = layers * layer_params + (first ? V * C + T * C : 0) + (last ? 2 * C + (p > 1 ? V * C : 0) : 0);
    out->params = 4 * P;
    out->grads = 4 * P;
    out->optim = 8 * P / (zero ? d : 1);

    /* the MLP's rows at a time (model.h ff_chunk) */
    int chunked = mo->ff_chunk > 0 && (double)mo->ff_chunk < N;
    double FR = chunked ? (double)mo->ff_chunk : N, F = 4 * C / t;
    double per_token_layer = 4 * C + 4 + 5 * C / t + (chunked ? 0 : 2 * F), saved = H / t;
    double slot = mo->reversible ? N * (per_token_layer + 3 * C) : layers * N * (per_token_layer + saved);
    double scratch = 3 * C / t > C ? 3 * C / t : C;
    if (!chunked && F > scratch) scratch = F;
    slot += N * ((double)v * C + 1 + scratch) + (chunked ? 2 * FR * F : 0);
    if (last) slot += N * (C + 2 + 2 * V);
    double acts = (double)slots * slot + (mo->reversible ? N * saved : 0);
    acts += N * (3 * C + 8 * C / t) + 2 * FR * F + (double)workspace_floats;
    out->acts = 4 * acts;
    out->total = out->params + out->grads + out->optim + out->acts;

    out->comm_data = row->data > 1 ? 2 * (d - 1) / d * out->grads : 0;
    out->comm_tensor = row->tensor > 1 ? layers * 4 * m * 2 * (t - 1) / t * N * C * 4 : 0;
    double pipe = 0;
    for (size_t c = 0; c < v && p > 1; c++) {
        size_t vs = c * p + s;
        pipe += ((vs + 1 < n_vs) + (vs > 0)) * m * N * C * 4;
    }
    if (p > 1 && (first || last)) pipe += V * C * 4;
    out->comm_pipe = pipe;

    double tokens = (double)(mo->batch / row->data) * T;
    out->flops = 3 * tokens * (layers * (24 * C * C + 4 * T * C) / t + (last ? 2 * C * V : 0));
    double compute = out->flops / FS_PLAN_FLOPS;
    out->work_s = compute + (out->comm_tensor + out->comm_pipe) / FS_PLAN_BANDWIDTH;
    double hidden = 2.0 / 3.0 * compute / m, data_s = out->comm_data / FS_PLAN_BANDWIDTH;
    out->exposed_s = data_s > hidden ? data_s - hidden : 0;
}

/* The rules a split must follow (heads, layers, batch, micro-batches), as
 * the parallel plugins apply them (plugins/parallel/strategy.c); on a
 * broken one the row says why and 0 is returned. Sets the row's schedule. */
static int split_allowed(const fs_plan_model *mo, const fs_plan_parallel *par, fs_plan_row *row) {
    size_t d = row->data, t = row->tensor, p = row->pipeline;
    size_t v = par->interleave ? par->interleave : 1;
    int type = par->schedule >= 0 ? par->schedule : FS_PIPE_1F1B;
    row->interleave = v;
    row->schedule = type;
    row->microbatches = par->microbatches;
    size_t L = mo->n_layer, B = mo->batch;
    if (mo->n_head % t) {
        invalid(row, "tensor = %zu does not divide n_head = %zu", t, mo->n_head);
        return 0;
    }
    if (p * v > L) {
        if (v > 1)
            invalid(row, "pipeline x interleave = %zu x %zu = %zu virtual stages > n_layer = %zu", p, v, p * v, L);
        else
            invalid(row, "pipeline = %zu > n_layer = %zu: every stage needs a layer", p, L);
        return 0;
    }
    if (B % d) {
        invalid(row, "data = %zu does not divide [train] batch = %zu", d, B);
        return 0;
    }
    if (!row->microbatches) {
        row->microbatches = fs_pipe_default_microbatches(B / d, p, type == FS_PIPE_INTERLEAVED);
        if (!row->microbatches) {
            invalid(row,
                    "no micro-batch count divides batch / data = %zu and is a multiple of pipeline = %zu, "
                    "as schedule = interleaved needs",
                    B / d, p);
            return 0;
        }
    }
    if ((B / d) % row->microbatches) {
        invalid(row, "microbatches = %zu does not divide batch / data = %zu", row->microbatches, B / d);
        return 0;
    }
    return 1;
}

/* Every pipeline stage's costs under its schedule, given the layers of each
 * virtual stage (count): the row takes the worst stage's memory and the
 * largest traffic and work. */
static void estimate_stages(const fs_plan_model *mo, const fs_plan_parallel *par, const size_t *count,
                            fs_plan_row *row) {
    size_t d = row->data, p = row->pipeline, v = row->interleave, m = row->microbatches;
    char msg[200];
    stage_cost worst = {0};
    double work = 0, exposed = 0;
    for (size_t s = 0; s < p; s++) {
        fs_pipe_schedule sched;
        if (fs_pipe_schedule_build(&sched, row->schedule, p, s, m, v, msg, sizeof msg)) {
            invalid(row, "%s", msg);
            return;
        }
        stage_cost c;
        stage_estimate(mo, row, count, s, sched.slots,
                       fs_pipe_workspace_floats(&sched, (mo->batch / d / m) * mo->seq * mo->n_embd), par->zero, &c);
        fs_pipe_schedule_release(&sched);
        if (s == 0 || c.total > worst.total) worst = c;
        if (c.comm_data > row->comm_data) row->comm_data = c.comm_data;
        if (c.comm_tensor > row->comm_tensor) row->comm_tensor = c.comm_tensor;
        if (c.comm_pipe > row->comm_pipe) row->comm_pipe = c.comm_pipe;
        double sent = c.comm_data + c.comm_tensor + c.comm_pipe;
        if (sent > row->comm_total) row->comm_total = sent;
        if (c.flops > row->flops) row->flops = c.flops;
        if (c.work_s > work) work = c.work_s;
        if (c.exposed_s > exposed) exposed = c.exposed_s;
    }
    row->mem_params = worst.params;
    row->mem_grads = worst.grads;
    row->mem_optim = worst.optim;
    row->mem_acts = worst.acts;
    row->mem_total = worst.total;
    size_t chunks = row->schedule == FS_PIPE_INTERLEAVED ? v : 1;
    row->bubble = p > 1 ? (double)(p - 1) / (double)(chunks * m + p - 1) : 0;
    row->step_s = work / (1 - row->bubble) + exposed;
}

void fs_plan_evaluate(const fs_plan_model *mo, const fs_plan_parallel *par, size_t d, size_t t, size_t p,
                      fs_plan_row *row) {
    memset(row, 0, sizeof *row);
    row->data = d;
    row->tensor = t;
    row->pipeline = p;
    row->valid = 1;
    if (!split_allowed(mo, par, row)) return;
    size_t n_vs = p * row->interleave, *first = malloc(n_vs * sizeof *first), *count = malloc(n_vs * sizeof *count);
    char msg[200];
    double embed_cost, head_cost;
    fs_pipe_default_costs(mo->n_embd, mo->seq, mo->vocab, &embed_cost, &head_cost);
    if (!first || !count)
        invalid(row, "out of memory");
    else if (fs_pipe_partition(mo->n_layer, n_vs, par->stages, embed_cost, head_cost, first, count, msg, sizeof msg))
        invalid(row, "[parallel] stages = %s: %s", par->stages, msg);
    else
        estimate_stages(mo, par, count, row);
    free(first);
    free(count);
}

int fs_plan_enumerate(const fs_plan_model *mo, const fs_plan_parallel *par, size_t ranks, double memory_per_rank,
                      fs_plan_row **rows, size_t *n_rows, fs_error *err) {
    *rows = NULL;
    *n_rows = 0;
    if (!ranks) return fs_error_set(err, FS_ERR_INVALID, "--ranks must be >= 1");
    size_t n = 0;
    for (size_t d = 1; d <= ranks; d++)
        if (ranks % d == 0)
            for (size_t t = 1; t <= ranks / d; t++) n += (ranks / d) % t == 0;
    fs_plan_row *r = calloc(n, sizeof *r);
    if (!r) return fs_error_set(err, FS_ERR_NOMEM, "out of memory for %zu candidate splits", n);
    size_t k = 0, best = n;
    for (size_t d = ranks; d >= 1; d--) {
        if (ranks % d) continue;
        for (size_t t = 1; t <= ranks / d; t++) {
            if ((ranks / d) % t) continue;
            fs_plan_row *row = &r[k];
            fs_plan_evaluate(mo, par, d, t, ranks / d / t, row);
            row->fits = row->valid && row->mem_total <= memory_per_rank;
            if (row->fits && (best == n || row->step_s < r[best].step_s)) best = k;
            k++;
        }
    }
    if (best < n) r[best].recommended = 1;
    *rows = r;
    *n_rows = n;
    return FS_OK;
}

/* ---- reading the graph ---- */

static void where(char *buf, size_t cap, const fs_graph_entry *e) {
    if (e->line > 0)
        snprintf(buf, cap, "%s:%d: [%s] %s = %s", e->file, e->line, e->section, e->key, e->value);
    else
        snprintf(buf, cap, "%s: [%s] %s = %s", e->file, e->section, e->key, e->value);
}

/* A [parallel] integer key, left as it is when the graph does not set it. */
static int par_int(const fs_graph *g, const char *key, long long lo, long long hi, size_t *out, fs_error *err) {
    const fs_graph_entry *e = fs_graph_find(g, "parallel", key);
    if (!e) return FS_OK;
    char *end;
    errno = 0;
    long long x = strtoll(e->value, &end, 10);
    if (errno || end == e->value || *end || x < lo || x > hi) {
        char w[512];
        where(w, sizeof w, e);
        return fs_error_set(err, FS_ERR_INVALID, "%s: must be an integer in [%lld, %lld]", w, lo, hi);
    }
    *out = (size_t)x;
    return FS_OK;
}

int fs_plan_read_graph(const fs_graph *g, fs_plan_model *mo, fs_plan_parallel *par, fs_error *err) {
    memset(mo, 0, sizeof *mo);
    memset(par, 0, sizeof *par);
    par->interleave = 1;
    par->schedule = -1;
    fs_config *mc = NULL, *tc = NULL;
    const char *model_sec[] = {"model"}, *train_sec[] = {"train"};
    int rc = fs_config_resolve(&mc, g, model_sec, 1, fs_schema_model.spec, fs_schema_model.n, NULL, err);
    if (!rc) rc = fs_config_resolve(&tc, g, train_sec, 1, fs_schema_train.spec, fs_schema_train.n, NULL, err);
    if (!rc) {
        mo->n_layer = (size_t)fs_config_int(mc, "n_layer");
        mo->n_head = (size_t)fs_config_int(mc, "n_head");
        mo->n_embd = (size_t)fs_config_int(mc, "n_embd");
        mo->seq = (size_t)fs_config_int(mc, "max_seq");
        mo->vocab = (size_t)fs_config_int(mc, "vocab_size");
        mo->batch = (size_t)fs_config_int(tc, "batch");
        mo->reversible = fs_config_bool(mc, "reversible");
        mo->ff_chunk = (size_t)fs_config_int(mc, "ff_chunk");
        if (mo->n_embd % mo->n_head)
            rc = fs_error_set(err, FS_ERR_INVALID, "%s: must be a multiple of [model] n_head = %zu",
                              fs_config_where(mc, "n_embd"), mo->n_head);
    }
    fs_config_destroy(mc);
    fs_config_destroy(tc);
    if (rc) return rc;
    size_t zero = 0;
    if ((rc = par_int(g, "microbatches", 1, 1 << 20, &par->microbatches, err)) ||
        (rc = par_int(g, "interleave", 1, 64, &par->interleave, err)) || (rc = par_int(g, "zero", 0, 1, &zero, err)))
        return rc;
    par->zero = (int)zero;
    const fs_graph_entry *e = fs_graph_find(g, "parallel", "schedule");
    if (e && (par->schedule = fs_pipe_schedule_parse(e->value)) < 0) {
        char w[512];
        where(w, sizeof w, e);
        return fs_error_set(err, FS_ERR_INVALID, "%s: must be gpipe, 1f1b or interleaved", w);
    }
    if ((e = fs_graph_find(g, "parallel", "stages"))) {
        if (strlen(e->value) >= sizeof par->stages) {
            char w[512];
            where(w, sizeof w, e);
            return fs_error_set(err, FS_ERR_INVALID, "%s: longer than %zu characters", w, sizeof par->stages - 1);
        }
        snprintf(par->stages, sizeof par->stages, "%s", e->value);
    }
    return FS_OK;
}

/* ---- the command ---- */

static void fmt_bytes(char *buf, size_t cap, double b) {
    if (b < 1024)
        snprintf(buf, cap, "%.0f B", b);
    else if (b < 1024.0 * 1024)
        snprintf(buf, cap, "%.1f KiB", b / 1024);
    else if (b < 1024.0 * 1024 * 1024)
        snprintf(buf, cap, "%.1f MiB", b / (1024.0 * 1024));
    else
        snprintf(buf, cap, "%.2f GiB", b / (1024.0 * 1024 * 1024));
}

static void fmt_time(char *buf, size_t cap, double s) {
    if (s < 1e-3)
        snprintf(buf, cap, "%.3g us", s * 1e6);
    else if (s < 1)
        snprintf(buf, cap, "%.3g ms", s * 1e3);
    else
        snprintf(buf, cap, "%.3g s", s);
}

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", (unsigned char)*s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static void print_json(FILE *f, const fs_plan_row *rows, size_t n, size_t ranks, double limit) {
    const fs_plan_row *rec = NULL;
    for (size_t i = 0; i < n; i++)
        if (rows[i].recommended) rec = &rows[i];
    fprintf(f, "{\"mode\":\"plan\",\"ranks\":%zu,\"memory_per_rank\":%.17g,\"recommended\":", ranks, limit);
    if (rec)
        fprintf(f, "{\"data\":%zu,\"tensor\":%zu,\"pipeline\":%zu}", rec->data, rec->tensor, rec->pipeline);
    else
        fputs("null", f);
    fputs(",\"splits\":[", f);
    for (size_t i = 0; i < n; i++) {
        const fs_plan_row *r = &rows[i];
        fprintf(f, "%s{\"data\":%zu,\"tensor\":%zu,\"pipeline\":%zu,\"valid\":%s", i ? "," : "", r->data, r->tensor,
                r->pipeline, r->valid ? "true" : "false");
        if (!r->valid) {
            fputs(",\"reason\":", f);
            json_string(f, r->reason);
        } else {
            fprintf(f,
                    ",\"microbatches\":%zu,\"interleave\":%zu,\"schedule\":\"%s\",\"memory\":{\"params\":%.17g,"
                    "\"grads\":%.17g,\"optim\":%.17g,\"activations\":%.17g,\"total\":%.17g},\"comm\":{\"data\":%.17g,"
                    "\"tensor\":%.17g,\"pipeline\":%.17g,\"total\":%.17g},\"bubble\":%.17g,\"flops\":%.17g,"
                    "\"step_s\":%.17g,\"fits\":%s,\"recommended\":%s",
                    r->microbatches, r->interleave, r->pipeline > 1 ? fs_pipe_schedule_name(r->schedule) : "none",
                    r->mem_params, r->mem_grads, r->mem_optim, r->mem_acts, r->mem_total, r->comm_data, r->comm_tensor,
                    r->comm_pipe, r->comm_total, r->bubble, r->flops, r->step_s, r->fits ? "true" : "false",
                    r->recommended ? "true" : "false");
        }
        fputc('}', f);
    }
    fputs("]}\n", f);
}

static void print_table(const char *graph, const fs_plan_model *mo, const fs_plan_parallel *par,
                        const fs_plan_row *rows, size_t n, size_t ranks, double limit, int limit_given) {
    char lim[32];
    fmt_bytes(lim, sizeof lim, limit);
    printf("plan for %s on %zu ranks: n_layer %zu, n_head %zu, n_embd %zu, max_seq %zu, vocab %zu, batch %zu%s\n\n",
           graph, ranks, mo->n_layer, mo->n_head, mo->n_embd, mo->seq, mo->vocab, mo->batch,
           par->zero ? ", zero = 1" : "");
    printf("  %4s %6s %8s %5s %-11s | %10s %10s %10s | %10s %10s %10s %10s | %6s %10s\n", "data", "tensor", "pipeline",
           "micro", "schedule", "mem/rank", "states", "acts", "sent/rank", "data", "tensor", "pipeline", "bubble",
           "step est.");
    for (size_t i = 0; i < n; i++) {
        const fs_plan_row *r = &rows[i];
        if (!r->valid) {
            printf("  %4zu %6zu %8zu   invalid: %s\n", r->data, r->tensor, r->pipeline, r->reason);
            continue;
        }
        char sched[32], mem[16], st[16], ac[16], ct[16], cd[16], cte[16], cp[16], step[16];
        if (r->pipeline > 1 && r->schedule == FS_PIPE_INTERLEAVED)
            snprintf(sched, sizeof sched, "interl. x%zu", r->interleave);
        else
            snprintf(sched, sizeof sched, "%s", r->pipeline > 1 ? fs_pipe_schedule_name(r->schedule) : "-");
        fmt_bytes(mem, sizeof mem, r->mem_total);
        fmt_bytes(st, sizeof st, r->mem_params + r->mem_grads + r->mem_optim);
        fmt_bytes(ac, sizeof ac, r->mem_acts);
        fmt_bytes(ct, sizeof ct, r->comm_total);
        fmt_bytes(cd, sizeof cd, r->comm_data);
        fmt_bytes(cte, sizeof cte, r->comm_tensor);
        fmt_bytes(cp, sizeof cp, r->comm_pipe);
        fmt_time(step, sizeof step, r->step_s);
        printf("%c %4zu %6zu %8zu %5zu %-11s | %10s %10s %10s | %10s %10s %10s %10s | %5.1f%% %10s%s\n",
               r->recommended ? '*' : ' ', r->data, r->tensor, r->pipeline, r->microbatches, sched, mem, st, ac, ct, cd,
               cte, cp, 100 * r->bubble, step,
               r->recommended ? "  <- recommended" : (r->fits ? "" : "  (over memory)"));
    }
    printf("\nmemory: the busiest rank: fp32 parameters + gradients + AdamW moments (states; the moments\n"
           "        / data with zero = 1) + activations of the micro-batches in flight (GPipe m, 1F1B\n"
           "        min(m, p - s) per stage)\n"
           "sent: bytes per rank per step: data = ring all-reduce 2(d-1)/d x gradients; tensor = 4 all-reduces\n"
           "        of B_micro x T x C floats per layer and micro-batch, 2(t-1)/t each; pipeline = activations\n"
           "        and gradients across stage boundaries + the tied embedding's gradient\n"
           "bubble: (p-1)/(m+p-1), interleaved (p-1)/(v*m+p-1)\n"
           "step est.: (compute + tensor + pipeline transfers) / (1 - bubble) + the data all-reduce not hidden\n"
           "        behind the last micro-batch's backward; compute = 3 x forward FLOPs / %.0e FLOP/s per rank,\n"
           "        transfers = bytes / %.0e B/s. It ranks splits; it does not predict wall time.\n",
           FS_PLAN_FLOPS, FS_PLAN_BANDWIDTH);
    if (!par->microbatches)
        printf("micro: [parallel] microbatches not set: 1 without a pipeline, else the most up to 4 x pipeline\n"
               "        dividing batch / data (the parallel plugins' default)\n");
    const fs_plan_row *rec = NULL;
    size_t valid = 0;
    for (size_t i = 0; i < n; i++) {
        if (rows[i].recommended) rec = &rows[i];
        valid += rows[i].valid;
    }
    if (!valid)
        printf("recommended: none: no split is valid\n");
    else if (rec)
        printf("recommended (*): data %zu x tensor %zu x pipeline %zu, the fastest estimate within %s per rank (%s)\n",
               rec->data, rec->tensor, rec->pipeline, lim,
               limit_given ? "--memory-per-rank" : "physical memory / ranks; --memory-per-rank sets it");
    else
        printf("recommended: none: no valid split fits in %s per rank\n", lim);
}

/* "123", "512M", "4G", "1.5GiB": bytes, binary multiples. */
static int parse_bytes(const char *s, double *out) {
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (errno || end == s || !(x > 0)) return -1;
    double mult = 1;
    switch (*end) {
    case 'K':
    case 'k': mult = 1024.0; break;
    case 'M':
    case 'm': mult = 1024.0 * 1024; break;
    case 'G':
    case 'g': mult = 1024.0 * 1024 * 1024; break;
    case 'T':
    case 't': mult = 1024.0 * 1024 * 1024 * 1024; break;
    case '\0': break;
    default: return -1;
    }
    if (*end) {
        end++;
        if (!strcmp(end, "iB") || !strcmp(end, "B")) end += strlen(end);
    }
    if (*end) return -1;
    *out = x * mult;
    return 0;
}

/* --opt VALUE or --opt=VALUE: returns the value, advancing *i; NULL if absent. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, int *missing) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n)) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n]) return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

/* What fsrun --plan was given. */
typedef struct plan_args {
    const char *graph_path, *ranks_s, *mem_s; /* mem_s NULL: physical memory / ranks */
    int json;
    const char **sets; /* --set assignments, n_sets of them */
    size_t n_sets;
    size_t ranks;
    double limit; /* bytes per rank */
} plan_args;

/* Reads argv into a (a->sets has room for argc entries). Returns 0, or 2
 * after printing the usage error. */
static int parse_plan_args(int argc, char **argv, plan_args *a) {
    const char *v;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *arg = argv[i];
        if (!strcmp(arg, "--plan") && (i + 1 >= argc || argv[i + 1][0] == '-')) {
            continue; /* fsrun GRAPH.ini --plan --ranks N: the graph comes as an operand */
        } else if ((v = opt_value(argc, argv, &i, "--plan", &missing))) {
            if (a->graph_path) {
                fprintf(stderr, "fsrun: more than one graph file ('%s' and '%s')\n", a->graph_path, v);
                return 2;
            }
            a->graph_path = v;
        } else if ((v = opt_value(argc, argv, &i, "--ranks", &missing))) {
            a->ranks_s = v;
        } else if ((v = opt_value(argc, argv, &i, "--memory-per-rank", &missing))) {
            a->mem_s = v;
        } else if ((v = opt_value(argc, argv, &i, "--set", &missing))) {
            a->sets[a->n_sets++] = v;
        } else if (!missing && !strcmp(arg, "--json")) {
            a->json = 1;
        } else if (missing) {
            fprintf(stderr, "fsrun: %s needs a value (fsrun --help)\n", arg);
            return 2;
        } else if (arg[0] == '-' && arg[1]) {
            fprintf(stderr, "fsrun: unknown option '%s' with --plan (fsrun --help lists them)\n", arg);
            return 2;
        } else if (!a->graph_path) {
            a->graph_path = arg;
        } else {
            fprintf(stderr, "fsrun: more than one graph file ('%s' and '%s')\n", a->graph_path, arg);
            return 2;
        }
    }
    return 0;
}

/* The graph, --ranks and the memory per rank, each present and valid: 0,
 * or 2 after printing what is wrong. */
static int check_plan_args(plan_args *a) {
    if (!a->graph_path) {
        fprintf(stderr, "fsrun: --plan needs a graph file: fsrun --plan GRAPH.ini --ranks N\n");
        return 2;
    }
    if (!a->ranks_s) {
        fprintf(stderr, "fsrun: --plan needs --ranks N, the number of processes to plan for\n");
        return 2;
    }
    char *end;
    errno = 0;
    long long ranks = strtoll(a->ranks_s, &end, 10);
    if (errno || end == a->ranks_s || *end || ranks < 1 || ranks > (1 << 20)) {
        fprintf(stderr, "fsrun: --ranks %s: must be a whole number of processes in [1, %d]\n", a->ranks_s, 1 << 20);
        return 2;
    }
    a->ranks = (size_t)ranks;
    if (a->mem_s && parse_bytes(a->mem_s, &a->limit)) {
        fprintf(stderr,
                "fsrun: --memory-per-rank %s: expected a number of bytes, optionally with K, M, G or T (x1024)\n",
                a->mem_s);
        return 2;
    }
    if (!a->mem_s) {
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        a->limit = pages > 0 && page > 0 ? (double)pages * (double)page / (double)ranks : 1e300;
    }
    return 0;
}

/* The model and the [parallel] keys of the graph with its --set. */
static int read_plan_graph(const plan_args *a, fs_plan_model *mo, fs_plan_parallel *par, fs_error *err) {
    fs_graph *g = NULL;
    int rc = fs_graph_load(&g, a->graph_path, err);
    for (size_t i = 0; i < a->n_sets && !rc; i++) rc = fs_graph_set(g, a->sets[i], err);
    if (!rc) rc = fs_plan_read_graph(g, mo, par, err);
    fs_graph_destroy(g);
    return rc;
}

int fs_plan_main(int argc, char **argv) {
    plan_args a = {0};
    if (!(a.sets = calloc((size_t)argc + 1, sizeof *a.sets))) return 1;
    int rc = parse_plan_args(argc, argv, &a);
    if (!rc) rc = check_plan_args(&a);
    fs_error err = {0};
    fs_plan_model mo;
    fs_plan_parallel par;
    fs_plan_row *rows = NULL;
    size_t n = 0;
    if (!rc && read_plan_graph(&a, &mo, &par, &err)) {
        fprintf(stderr, "fsrun: %s\n", err.message);
        rc = 2;
    }
    if (!rc && fs_plan_enumerate(&mo, &par, a.ranks, a.limit, &rows, &n, &err)) {
        fprintf(stderr, "fsrun: %s\n", err.message);
        rc = err.status == FS_ERR_NOMEM ? 1 : 2;
    }
    free(a.sets);
    if (rc) return rc;
    if (!a.json) print_table(a.graph_path, &mo, &par, rows, n, a.ranks, a.limit, a.mem_s != NULL);
    print_json(stdout, rows, n, a.ranks, a.limit);
    size_t valid = 0;
    for (size_t i = 0; i < n; i++) valid += rows[i].valid;
    free(rows);
    if (!valid) {
        fflush(stdout);
        fprintf(stderr, "fsrun: no valid (data, tensor, pipeline) split of %zu ranks for %s (the reasons are above)\n",
                a.ranks, a.graph_path);
        return 2;
    }
    return 0;
}
