/* bench_sched.c — the scheduler plugins on a simulated clock, against the
 * best any scheduler could do on the same trace.
 *
 * bench_serve.py measures fcfs and mlfq behind a real server, where every
 * figure carries the machine's noise and a run of a few hundred requests.
 * Here the plugins (loaded from the graph's [serve] scheduler, exactly as
 * the engine loads them) plan every iteration of a simulated engine whose
 * iterations cost what bench_step measures:
 *
 *   iteration seconds = a + b * (decoding rows) + p * (prompt tokens computed)
 *
 * over thousands of requests: Poisson arrivals, prompts of 20-60 tokens,
 * output lengths Pareto(alpha) from out_min up, capped at the context (the
 * trace of bench/serve_loadgen.py). Beside them run two reference policies
 * with the same budgets (max_running sequences, the token budget, prompt
 * chunks):
 *   - las: least attained service first (fewest tokens computed), what an
 *     MLFQ approaches as its quanta shrink: the best a scheduler that does
 *     not know output lengths can aim at on heavy-tailed jobs;
 *   - srpt: shortest remaining work first, knowing every output length in
 *     advance: a bound no real scheduler reaches.
 * For each max_running and load it prints mean and p99 end-to-end latency,
 * TTFT p50/p99, the mean's multiple of each request's latency alone, and
 * the first plugin's mean over each policy's: how much a scheduler can cut the mean at
 * all when iterations cost in proportion to their rows, as on a CPU.
 *
 * The KV pool is not modelled (blocks are unlimited, nothing is preempted
 * for memory): this isolates the order in which requests run.
 *
 * Usage: bench_sched [graph=conf/quickstart.ini] [requests=4000] [seed=1] [schedulers=fcfs,mlfq (plugins)]
 *                    [max_running=4,16,32] [load=0.5,0.7,0.8,0.9,0.95] [rates=r1,r2 (req/s, instead of load)]
 *                    [a_ms=0.12] [b_ms=0.22] [p_ms=0.07] [alpha=1.5] [out_min=8]
 *                    [section.key=value ... as fsrun --set] [NAME.key=value: scheduler NAME's own key,
 *                    e.g. mlfq.quantum_ms=10] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/graph.h"
#include "core/rng.h"
#include "fastserve/scheduler.h"
#include "session/session.h"

#define MAX_LIST 8

typedef struct req {
    double arrival, first, end;
    size_t prompt, out;         /* tokens */
    size_t computed, generated; /* KV computed; tokens sampled so far */
    fs_sched_seq view;
} req;

typedef struct sim_cfg {
    size_t n, max_running, max_tokens, chunk, context, out_min;
    double a, b, p, alpha;
    uint64_t seed;
} sim_cfg;

/* A policy: a scheduler plugin, or (vt NULL) a reference order. */
typedef struct policy {
    const char *name;
    const fs_scheduler_vtable *vt;
    void *self;
    int (*before)(const req *x, const req *y); /* reference order: x runs before y */
} policy;

typedef struct result {
    double mean, p99, ttft50, ttft99, slowdown; /* seconds; slowdown: mean of e2e / alone */
} result;

/* ---- the trace ---- */

static void make_trace(req *r, const sim_cfg *c, double rate) {
    fs_rng g;
    fs_rng_seed(&g, c->seed);
    double t = 0.0;
    for (size_t i = 0; i < c->n; i++) {
        t += -log(1.0 - (double)fs_rng_float(&g)) / rate;
        size_t prompt = 20 + (size_t)fs_rng_below(&g, 41);
        double u = 1.0 - (double)fs_rng_float(&g); /* (0, 1] */
        size_t out = (size_t)((double)c->out_min / pow(u, 1.0 / c->alpha));
        if (out > c->context - prompt) out = c->context - prompt;
        r[i] = (req){.arrival = t, .prompt = prompt, .out = out};
    }
}

/* Mean work of one request when max_running rows share every iteration. */
static double request_seconds(const sim_cfg *c) {
    double out = 0.0, prompt = 40.0;
    size_t samples = 100000;
    fs_rng g;
    fs_rng_seed(&g, c->seed ^ 0x5eedu);
    for (size_t i = 0; i < samples; i++) {
        double u = 1.0 - (double)fs_rng_float(&g), o = floor((double)c->out_min / pow(u, 1.0 / c->alpha));
        out += fmin(o, (double)c->context - prompt);
    }
    out /= (double)samples;
    return c->p * prompt + (out - 1.0) * (c->b + c->a / (double)c->max_running);
}

/* A request's latency with the engine to itself. */
static double alone_seconds(const sim_cfg *c, const req *r) {
    double t = 0.0;
    for (size_t done = 0; done < r->prompt; done += c->chunk) {
        size_t n = r->prompt - done < c->chunk ? r->prompt - done : c->chunk;
        t += c->a + c->p * (double)n;
    }
    return t + (double)(r->out - 1) * (c->a + c->b);
}

/* ---- reference orders ---- */

static int las_before(const req *x, const req *y) {
    if (x->computed != y->computed) return x->computed < y->computed;
    return x->arrival < y->arrival;
}

static int srpt_before(const req *x, const req *y) {
    size_t rx = x->prompt + x->out - x->computed, ry = y->prompt + y->out - y->computed;
    if (rx != ry) return rx < ry;
    return x->arrival < y->arrival;
}

/* The plan of a reference order: insertion-sorted live requests, taken
 * while rows and tokens last (a prompt chunk cut to the tokens left). */
static void reference_plan(const policy *pol, req **live, size_t n, const sim_cfg *c, fs_sched_plan *plan) {
    size_t *order = plan->preempt; /* scratch: nothing is preempted here */
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        for (; j > 0 && pol->before(live[i], live[order[j - 1]]); j--) order[j] = order[j - 1];
        order[j] = i;
    }
    size_t tokens = 0;
    plan->n_run = 0;
    for (size_t k = 0; k < n && plan->n_run < c->max_running && tokens < c->max_tokens; k++) {
        size_t i = order[k], t = live[i]->view.tokens_next;
        if (t > c->max_tokens - tokens) t = c->max_tokens - tokens;
        plan->run[plan->n_run] = i;
        plan->run_tokens[plan->n_run++] = t;
        tokens += t;
    }
    plan->n_preempt = 0;
}

/* ---- the simulated engine ---- */

/* The scheduler's view of r: KV computed so far, the tokens its next iteration needs. */
static void refresh_view(req *r, const sim_cfg *c) {
    size_t known = r->prompt + r->generated, pending = known - r->computed;
    fs_sched_seq *v = &r->view;
    v->state = r->computed ? FS_SCHED_RESIDENT : FS_SCHED_WAITING;
    v->prompt_tokens = r->prompt;
    v->generated = r->generated;
    v->max_tokens = r->out;
    v->computed = r->computed;
    v->tokens_next = pending < c->chunk ? pending : c->chunk;
    v->blocks_next = 0;
    v->blocks_freed = 0;
}

/* Runs the planned tokens: returns the iteration's seconds and advances
 * each request (a request whose known tokens are all computed samples one). */
static double run_iteration(req **live, const fs_sched_plan *plan, const sim_cfg *c, double now) {
    double seconds = c->a;
    for (size_t k = 0; k < plan->n_run; k++) {
        req *r = live[plan->run[k]];
        int decoding = r->prompt + r->generated - r->computed == 1;
        seconds += decoding ? c->b : c->p * (double)plan->run_tokens[k];
    }
    for (size_t k = 0; k < plan->n_run; k++) {
        req *r = live[plan->run[k]];
        r->computed += plan->run_tokens[k];
        if (r->computed == r->prompt + r->generated && r->generated++ == 0) r->first = now + seconds;
        r->view.last_run = now + seconds;
    }
    return seconds;
}

/* Tells the scheduler what the iteration cost, then retires the finished. */
static size_t account_and_retire(const policy *pol, req **live, size_t n, const fs_sched_plan *plan, double start,
                                 double seconds, fs_sched_seq **ran) {
    if (pol->vt) {
        size_t total = 0;
        for (size_t k = 0; k < plan->n_run; k++) {
            ran[k] = &live[plan->run[k]]->view;
            total += plan->run_tokens[k];
        }
        fs_sched_iteration it = {.struct_size = sizeof it, .start = start, .seconds = seconds, .ran = ran,
                                 .tokens = plan->run_tokens, .n_ran = plan->n_run, .total_tokens = total};
        pol->vt->account(pol->self, &it);
    }
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        req *r = live[i];
        if (r->generated < r->out) {
            live[kept++] = r;
            continue;
        }
        r->end = start + seconds;
        if (pol->vt) pol->vt->finish(pol->self, &r->view, r->end);
        free(r->view.data);
    }
    return kept;
}

typedef struct sim_bufs {
    req **live;
    fs_sched_seq **views, **ran;
    size_t *run, *run_tokens, *preempt;
} sim_bufs;

/* Arrivals up to `now` join the live set (in arrival order). */
static size_t admit(const policy *pol, req *r, size_t *next, const sim_cfg *c, double now, req **live, size_t n) {
    for (; *next < c->n && r[*next].arrival <= now; (*next)++) {
        req *q = &r[*next];
        q->view = (fs_sched_seq){.id = *next + 1, .arrival = q->arrival, .last_run = q->arrival};
        q->view.data = pol->vt ? calloc(1, pol->vt->seq_bytes(pol->self) + 1) : NULL;
        refresh_view(q, c);
        if (pol->vt) pol->vt->arrive(pol->self, &q->view, q->arrival);
        live[n++] = q;
    }
    return n;
}

/* The next iteration's plan; 0, or -1 when a plugin fails. */
static int plan_next(const policy *pol, const sim_bufs *w, size_t n, const sim_cfg *c, double now,
                     fs_sched_plan *plan) {
    for (size_t i = 0; i < n; i++) {
        refresh_view(w->live[i], c);
        w->views[i] = &w->live[i]->view;
    }
    *plan = (fs_sched_plan){.struct_size = sizeof *plan, .run = w->run, .run_tokens = w->run_tokens,
                            .preempt = w->preempt};
    if (!pol->vt) {
        reference_plan(pol, w->live, n, c, plan);
        return 0;
    }
    fs_sched_budget b = {.struct_size = sizeof b, .max_seqs = c->max_running, .max_tokens = c->max_tokens,
                         .free_blocks = SIZE_MAX / 4};
    fs_error err = {0};
    if (pol->vt->schedule(pol->self, now, w->views, n, &b, plan, &err)) {
        fprintf(stderr, "bench_sched: %s: %s\n", pol->name, err.message);
        return -1;
    }
    return 0;
}

/* Replays the trace r under pol; 0, or -1 on a plugin error or a stall. */
static int simulate(const policy *pol, req *r, const sim_cfg *c, const sim_bufs *w) {
    size_t n = 0, next = 0;
    double now = 0.0;
    fs_sched_plan plan;
    while (n || next < c->n) {
        if (!n && r[next].arrival > now) now = r[next].arrival;
        n = admit(pol, r, &next, c, now, w->live, n);
        if (plan_next(pol, w, n, c, now, &plan)) return -1;
        if (plan.n_run == 0) {
            if (next == c->n) {
                fprintf(stderr, "bench_sched: %s planned nothing with %zu requests live\n", pol->name, n);
                return -1;
            }
            now = r[next].arrival;
            continue;
        }
        double seconds = run_iteration(w->live, &plan, c, now);
        n = account_and_retire(pol, w->live, n, &plan, now, seconds, w->ran);
        now += seconds;
    }
    return 0;
}

/* ---- figures ---- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static result summarize(const req *r, const sim_cfg *c, double *scratch) {
    result s = {0};
    for (size_t i = 0; i < c->n; i++) {
        scratch[i] = r[i].end - r[i].arrival;
        s.mean += scratch[i] / (double)c->n;
        s.slowdown += scratch[i] / alone_seconds(c, &r[i]) / (double)c->n;
    }
    qsort(scratch, c->n, sizeof *scratch, cmp_double);
    s.p99 = scratch[(c->n * 99) / 100];
    for (size_t i = 0; i < c->n; i++) scratch[i] = r[i].first - r[i].arrival;
    qsort(scratch, c->n, sizeof *scratch, cmp_double);
    s.ttft50 = scratch[c->n / 2];
    s.ttft99 = scratch[(c->n * 99) / 100];
    return s;
}

/* ---- the runs ---- */

typedef struct bench {
    sim_cfg c;
    const char *graph;
    const char *sets[32];
    size_t n_sets;
    size_t max_running[MAX_LIST], n_mr;
    double load[MAX_LIST], rates[MAX_LIST];
    size_t n_load, n_rates;
    char names[MAX_LIST][64]; /* scheduler plugins; the first is every ratio's baseline */
    size_t n_names;
} bench;

/* The assignment `set` as the session of scheduler `name` takes it: a
 * plugin's own keys come as NAME.KEY=VALUE (each plugin refuses the
 * others' keys) and go to [serve]; NULL when it is another plugin's. */
static const char *assignment_for(const bench *bn, const char *set, const char *name, char *buf, size_t cap) {
    for (size_t i = 0; i < bn->n_names; i++) {
        size_t len = strlen(bn->names[i]);
        if (strncmp(set, bn->names[i], len) || set[len] != '.') continue;
        if (strcmp(bn->names[i], name)) return NULL;
        snprintf(buf, cap, "serve.%s", set + len + 1);
        return buf;
    }
    return set;
}

/* A session on the graph (with the --set style assignments) whose [serve]
 * scheduler is `name`. */
static fs_session *open_session(const bench *bn, const char *name) {
    fs_graph *g;
    fs_session *s;
    fs_error err = {0};
    char set[96], buf[256];
    snprintf(set, sizeof set, "serve.scheduler=%s", name);
    if (fs_graph_load(&g, bn->graph, &err)) goto fail;
    for (size_t i = 0; i < bn->n_sets; i++) {
        const char *a = assignment_for(bn, bn->sets[i], name, buf, sizeof buf);
        if (a && fs_graph_set(g, a, &err)) goto fail;
    }
    if (fs_graph_set(g, set, &err) || fs_session_open(&s, g, &err)) goto fail;
    return s;
fail:
    fprintf(stderr, "bench_sched: %s\n", err.message);
    exit(1);
}

/* One policy over the trace at one rate: a fresh plugin instance each time. */
static int run_policy(fs_session *s, policy *pol, req *r, const sim_cfg *c, const sim_bufs *w, result *out,
                      double *scratch) {
    fs_plugin_ctx ctx;
    if (s) {
        pol->vt = s->scheduler.plugin->desc->vtable;
        fs_plugin_ctx_init(&ctx, &s->host, s->scheduler.config, "plugin.serve.scheduler", pol->name);
        fs_scheduler_config sc = {.struct_size = sizeof sc, .prefill_chunk = c->chunk, .max_seqs = c->max_running,
                                  .max_tokens = c->max_tokens, .kv_block = 16, .max_levels = 16};
        fs_error err = {0};
        if (pol->vt->create(&pol->self, &s->host.api, &ctx, &sc, &err)) {
            fprintf(stderr, "bench_sched: %s: %s\n", pol->name, err.message);
            return -1;
        }
    }
    for (size_t i = 0; i < c->n; i++) r[i].computed = r[i].generated = 0;
    int rc = simulate(pol, r, c, w);
    if (pol->vt) pol->vt->destroy(pol->self);
    if (!rc) *out = summarize(r, c, scratch);
    return rc;
}

#define MAX_POLICIES (MAX_LIST + 2)

static void print_row(double load, double rate, const char *name, const result *x, double base_mean) {
    printf("| %.2f | %.1f | %s | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f |\n", load, rate, name, x->mean * 1e3,
           x->p99 * 1e3, x->ttft50 * 1e3, x->ttft99 * 1e3, x->slowdown, base_mean / x->mean);
}

/* Every policy at every load for one max_running: the plugins, then las and srpt. */
static int run_table(const bench *bn, fs_session **sess, sim_cfg c, const sim_bufs *w, req *r, double *scratch) {
    policy pols[MAX_POLICIES];
    size_t n_pol = 0;
    for (size_t i = 0; i < bn->n_names; i++) pols[n_pol++] = (policy){bn->names[i], NULL, NULL, NULL};
    pols[n_pol++] = (policy){"las", NULL, NULL, las_before};
    pols[n_pol++] = (policy){"srpt", NULL, NULL, srpt_before};
    double per_request = request_seconds(&c);
    size_t points = bn->n_rates ? bn->n_rates : bn->n_load;
    printf("\n### max_running %zu: capacity about %.1f requests/s (%.2f ms of work each when %zu rows share "
           "an iteration)\n\n", c.max_running, 1.0 / per_request, per_request * 1e3, c.max_running);
    printf("| load | rate req/s | policy | e2e mean ms | e2e p99 ms | TTFT p50 ms | TTFT p99 ms | mean x alone | "
           "%s mean / this |\n|---|---|---|---|---|---|---|---|---|\n", bn->names[0]);
    for (size_t k = 0; k < points; k++) {
        double rate = bn->n_rates ? bn->rates[k] : bn->load[k] / per_request, load = rate * per_request;
        make_trace(r, &c, rate);
        result res[MAX_POLICIES];
        for (size_t i = 0; i < n_pol; i++)
            if (run_policy(i < bn->n_names ? sess[i] : NULL, &pols[i], r, &c, w, &res[i], scratch)) return -1;
        for (size_t i = 0; i < n_pol; i++) print_row(load, rate, pols[i].name, &res[i], res[0].mean);
    }
    return 0;
}

/* "fcfs,mlfq" into bn->names; 0 if malformed. */
static int parse_names(bench *bn, const char *s) {
    bn->n_names = 0;
    for (const char *end; *s; s = *end ? end + 1 : end) {
        end = s + strcspn(s, ",");
        size_t len = (size_t)(end - s);
        if (len == 0 || len >= sizeof bn->names[0] || bn->n_names == MAX_LIST) return 0;
        memcpy(bn->names[bn->n_names], s, len);
        bn->names[bn->n_names++][len] = 0;
    }
    return bn->n_names > 0;
}

/* "1,2.5,3" into v (at most MAX_LIST); the count, 0 if malformed. */
static size_t parse_list(const char *s, double *v) {
    size_t n = 0;
    for (char *end; *s; s = *end ? end + 1 : end) {
        double x = strtod(s, &end);
        if (end == s || !(x > 0) || n == MAX_LIST || (*end && *end != ',')) return 0;
        v[n++] = x;
    }
    return n;
}

static int parse_arg(bench *bn, const char *a) {
    double v[MAX_LIST];
    size_t n;
    const char *eq = strchr(a, '=');
    if (!eq) return 0;
    const char *val = eq + 1;
#define KEY(k) (!strncmp(a, k "=", sizeof k))
    if (KEY("graph")) bn->graph = val;
    else if (KEY("requests")) return (bn->c.n = strtoul(val, NULL, 10)) >= 10;
    else if (KEY("seed")) bn->c.seed = strtoull(val, NULL, 10);
    else if (KEY("a_ms")) return (bn->c.a = atof(val) / 1e3) >= 0;
    else if (KEY("b_ms")) return (bn->c.b = atof(val) / 1e3) > 0;
    else if (KEY("p_ms")) return (bn->c.p = atof(val) / 1e3) > 0;
    else if (KEY("alpha")) return (bn->c.alpha = atof(val)) > 0;
    else if (KEY("out_min")) return (bn->c.out_min = strtoul(val, NULL, 10)) >= 1;
    else if (KEY("load")) return (bn->n_load = parse_list(val, bn->load)) > 0;
    else if (KEY("rates")) return (bn->n_rates = parse_list(val, bn->rates)) > 0;
    else if (KEY("schedulers")) return parse_names(bn, val);
    else if (KEY("max_running")) {
        if (!(n = parse_list(val, v))) return 0;
        for (bn->n_mr = 0; bn->n_mr < n; bn->n_mr++) bn->max_running[bn->n_mr] = (size_t)v[bn->n_mr];
    } else if (strchr(a, '.') && strchr(a, '.') < eq && bn->n_sets < 32) bn->sets[bn->n_sets++] = a;
    else return 0;
#undef KEY
    return 1;
}

int main(int argc, char **argv) {
    bench bn = {.c = {.n = 4000, .a = 0.12e-3, .b = 0.22e-3, .p = 0.07e-3, .alpha = 1.5, .out_min = 8, .seed = 1},
                .graph = "conf/quickstart.ini", .max_running = {4, 16, 32}, .n_mr = 3,
                .load = {0.5, 0.7, 0.8, 0.9, 0.95}, .n_load = 5, .names = {"fcfs", "mlfq"}, .n_names = 2};
    for (int i = 1; i < argc; i++)
        if (!parse_arg(&bn, argv[i])) {
            fprintf(stderr, "bench_sched: bad argument '%s'\nusage: bench_sched [graph=conf/quickstart.ini] "
                            "[requests=4000] [seed=1] [max_running=4,16,32] [load=0.5,0.7,0.8,0.9,0.95] [rates=r1,r2] "
                            "[schedulers=fcfs,mlfq] "
                            "[a_ms=0.12] [b_ms=0.22] [p_ms=0.07] [alpha=1.5] [out_min=8] [section.key=value ...] "
                            "[SCHEDULER.key=value ...]\n",
                    argv[i]);
            return 2;
        }
    fs_session *sess[MAX_LIST];
    for (size_t i = 0; i < bn.n_names; i++) sess[i] = open_session(&bn, bn.names[i]);
    const fs_config *serve = sess[0]->serve_cfg;
    bn.c.chunk = (size_t)fs_config_int(serve, "prefill_chunk");
    bn.c.context = fs_model_cfg(sess[0]->model)->max_seq;
    if (bn.c.context < 61 + bn.c.out_min) {
        fprintf(stderr, "bench_sched: the model's context (%zu) leaves no room for 60-token prompts\n", bn.c.context);
        return 2;
    }
    printf("bench_sched: %s, %zu requests a point (Poisson arrivals, prompts of 20-60 tokens, outputs Pareto(%.2f) "
           "from %zu, context %zu); iteration = %.3f ms + %.3f ms a decoding row + %.3f ms a prompt token; "
           "plugins with the graph's [serve] keys\n", bn.graph, bn.c.n, bn.c.alpha, bn.c.out_min, bn.c.context,
           bn.c.a * 1e3, bn.c.b * 1e3, bn.c.p * 1e3);
    req *r = calloc(bn.c.n, sizeof *r);
    double *scratch = calloc(bn.c.n, sizeof *scratch);
    sim_bufs w = {calloc(bn.c.n, sizeof(req *)), calloc(bn.c.n, sizeof(fs_sched_seq *)),
                  calloc(bn.c.n, sizeof(fs_sched_seq *)), calloc(bn.c.n, sizeof(size_t)),
                  calloc(bn.c.n, sizeof(size_t)), calloc(bn.c.n, sizeof(size_t))};
    int rc = 0;
    for (size_t i = 0; i < bn.n_mr && !rc; i++) {
        sim_cfg c = bn.c;
        c.max_running = bn.max_running[i];
        size_t budget = (size_t)fs_config_int(serve, "max_batch_tokens");
        c.max_tokens = budget ? budget : c.chunk + c.max_running;
        rc = run_table(&bn, sess, c, &w, r, scratch);
    }
    free(r);
    free(scratch);
    free(w.live), free(w.views), free(w.ran), free(w.run), free(w.run_tokens), free(w.preempt);
    for (size_t i = 0; i < bn.n_names; i++) fs_session_close(sess[i]);
    return rc ? 1 : 0;
}
