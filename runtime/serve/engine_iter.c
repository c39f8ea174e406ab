/* engine_iter.c — one iteration of the serving engine (engine_internal.h).
 *
 *   1. requests cancelled, past their timeout or past drain's deadline end;
 *   2. the scheduler plugin sees every live request and plans the
 *      iteration: which run, with how many tokens, which resident ones give
 *      their blocks back (checked and trimmed to the budgets);
 *   3. the preempted ones are swapped out (or dropped to be recomputed);
 *      each one to run is swapped in, bound to the current weights at its
 *      first step, finds its shared prefix blocks, gets blocks for its new
 *      positions;
 *   4. one ragged step per weights generation (model/batch.h);
 *   5. blocks published and released, tokens sampled from each request's
 *      own stream, events sent, finished requests retired after the
 *      scheduler has been told what the iteration cost. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "serve/engine_internal.h"

void eng_histogram_add(fs_engine_histogram *h, double seconds) {
    for (size_t i = 0; i < FS_ENGINE_HIST_BUCKETS; i++)
        if (seconds <= h->le[i]) h->count[i]++;
    h->total++;
    h->sum += seconds;
}

static void fill_event(const eseq *s, fs_request_event *ev) {
    memset(ev, 0, sizeof *ev);
    ev->id = s->id;
    ev->token = -1;
    ev->prompt_tokens = s->n_prompt;
    ev->completion_tokens = s->generated;
    ev->cached_prompt_tokens = s->cached_prompt;
}

/* Drops s from live and frees it; its final event has been sent. */
static void retire(fs_engine *e, eseq *s, fs_finish_reason reason) {
    (void)reason; /* counted when its final event went out (count_finish) */
    eng_blocks_free(e, s);
    SCHED_CALL(e, "finish", e->svt->finish(e->sself, &s->view, fs_now()));
    if (s->w) {
        s->w->users--;
        eng_gen_release(e, s->w);
    }
    size_t i = 0;
    while (i < e->n_live && e->live[i] != s) i++;
    if (i < e->n_live) memmove(e->live + i, e->live + i + 1, (e->n_live - i - 1) * sizeof *e->live);
    e->n_live--;
    pthread_mutex_lock(&e->mu);
    e->live_count--;
    if (!s->started) e->waiting--;
    pthread_cond_broadcast(&e->quiet);
    pthread_mutex_unlock(&e->mu);
    free(s->view.data);
    free(s->tokens);
    free(s->table);
    free(s);
}

/* s ends with `reason`: counted, and the stats published, before its final
 * event goes out, so a client holding its whole reply finds its request
 * and the tokens computed for it in /metrics. */
static void count_finish(fs_engine *e, const eseq *s, fs_finish_reason reason) {
    e->c.finished[reason]++;
    eng_histogram_add(&e->c.e2e, fs_now() - s->t_submit);
    eng_publish_stats(e);
}

void eng_finish(fs_engine *e, eseq *s, fs_finish_reason reason, const char *error) {
    fs_request_event ev;
    fill_event(s, &ev);
    ev.finish = reason;
    ev.error = error;
    count_finish(e, s, reason);
    s->sink(s->arg, &ev);
    retire(e, s, reason);
}

/* ---- 1. endings that do not wait for a step ---- */

static void end_cancelled(fs_engine *e, double now) {
    int shutdown = e->draining && now >= e->drain_deadline;
    for (size_t i = e->n_live; i-- > 0;) {
        eseq *s = e->live[i];
        int late = s->p.timeout_s > 0 && now - s->t_submit > s->p.timeout_s;
        if (shutdown) eng_finish(e, s, FS_FINISH_SHUTDOWN, NULL);
        else if (s->cancel) eng_finish(e, s, (fs_finish_reason)s->cancel, NULL);
        else if (late) eng_finish(e, s, FS_FINISH_CANCELLED, NULL);
        else if (s->p.max_tokens == 0 && !eng_wants_prompt_rows(s)) eng_finish(e, s, FS_FINISH_LENGTH, NULL);
    }
}

/* ---- 2. the plan ---- */

static void update_view(fs_engine *e, eseq *s) {
    fs_sched_seq *v = &s->view;
    size_t pending = s->n_tokens - s->computed;
    v->generated = s->generated;
    v->computed = s->computed;
    v->tokens_next = pending < e->cfg.prefill_chunk ? pending : e->cfg.prefill_chunk;
    v->blocks_next = eng_blocks_next(e, s, v->tokens_next);
    v->blocks_freed = v->state == FS_SCHED_RESIDENT ? eng_blocks_own(e, s) : 0;
}

/* Keeps the plan within the rules of scheduler.h, dropping what breaks them. */
static void check_plan(fs_engine *e, fs_sched_plan *plan, const fs_sched_budget *b) {
    size_t n = e->n_live, tokens = 0, kept = 0, dropped = 0;
    uint8_t *seen = e->mark;
    memset(seen, 0, n);
    if (plan->n_preempt > n) dropped += plan->n_preempt - n, plan->n_preempt = n;
    if (plan->n_run > n) dropped += plan->n_run - n, plan->n_run = n;
    for (size_t j = 0; j < plan->n_preempt; j++) {
        size_t i = plan->preempt[j];
        if (i >= n || seen[i] || e->views[i]->state != FS_SCHED_RESIDENT) {
            dropped++;
            continue;
        }
        seen[i] = 2;
        plan->preempt[kept++] = i;
    }
    plan->n_preempt = kept;
    kept = 0;
    for (size_t j = 0; j < plan->n_run; j++) {
        size_t i = plan->run[j], t = plan->run_tokens[j];
        if (i >= n || seen[i] || t == 0 || t > e->views[i]->tokens_next || tokens + t > b->max_tokens ||
            kept == b->max_seqs) {
            dropped++;
            continue;
        }
        seen[i] = 1;
        tokens += t;
        plan->run[kept] = i;
        plan->run_tokens[kept++] = t;
    }
    plan->n_run = kept;
    if (dropped)
        fs_log(FS_LOG_WARN, "serve", "scheduler '%s' broke its budget (%zu entries dropped)",
               e->s->scheduler.plugin->desc->name, dropped);
}

static int plan_iteration(fs_engine *e, double now, fs_sched_plan *plan) {
    for (size_t i = 0; i < e->n_live; i++) {
        update_view(e, e->live[i]);
        e->views[i] = &e->live[i]->view;
    }
    fs_sched_budget b = {.struct_size = sizeof b, .max_seqs = e->cfg.max_running, .max_tokens = e->max_tokens_step,
                         .free_blocks = fs_kv_pool_free(e->pool)};
    *plan = (fs_sched_plan){.struct_size = sizeof *plan, .run = e->run, .run_tokens = e->run_tokens,
                            .preempt = e->preempt};
    fs_error perr = {0};
    int rc;
    SCHED_CALL(e, "schedule", rc = e->svt->schedule(e->sself, now, e->views, e->n_live, &b, plan, &perr));
    if (rc) {
        fs_log(FS_LOG_ERROR, "serve", "scheduler '%s': %s", e->s->scheduler.plugin->desc->name, perr.message);
        plan->n_run = plan->n_preempt = 0;
        return rc;
    }
    check_plan(e, plan, &b);
    return FS_OK;
}

/* ---- 3. blocks for the plan ---- */

static void bind_weights(fs_engine *e, eseq *s) {
    if (s->w) return;
    s->w = e->current;
    s->w->users++;
}

static void mark_started(fs_engine *e, eseq *s) {
    if (s->started) return;
    s->started = 1;
    pthread_mutex_lock(&e->mu);
    e->waiting--;
    pthread_mutex_unlock(&e->mu);
}

/* Gets s ready to compute up to `want` tokens; returns how many it will
 * (0: not this iteration: the pool had too few blocks, or the iteration
 * has no rows of logits left for the prompt positions s needs them of). */
static size_t prepare(fs_engine *e, eseq *s, size_t want) {
    fs_error err = {0};
    int rows = eng_wants_prompt_rows(s);
    if (rows && e->prompt_rows == e->prompt_rows_max) return 0;
    if (s->view.state == FS_SCHED_SWAPPED && eng_blocks_swap_in(e, s, &err)) return 0;
    bind_weights(e, s);
    if (s->view.state == FS_SCHED_WAITING) {
        eng_prefix_lookup(e, s);
        mark_started(e, s);
    }
    size_t pending = s->n_tokens - s->computed, t = want < pending ? want : pending;
    if (rows && t > e->prompt_rows_max - e->prompt_rows) t = e->prompt_rows_max - e->prompt_rows;
    int rc = eng_blocks_place(e, s, t, &err);
    if (s->n_table > 0) s->view.state = FS_SCHED_RESIDENT;
    if (!rc && rows) e->prompt_rows += t;
    return rc ? 0 : t;
}

/* ---- 4. the step ---- */

/* One ragged step for the sequences ran[0, n) bound to weights w. */
static int step_generation(fs_engine *e, weights_gen *w, const size_t *idx, size_t n, const size_t *tokens,
                           float *logits, fs_error *err) {
    for (size_t j = 0; j < n; j++) {
        eseq *s = e->ran[idx[j]];
        size_t t = tokens[idx[j]];
        e->bseq[j] = (fs_batch_seq){.start = s->computed, .n_new = t, .tokens = s->tokens, .blocks = s->table,
                                    .n_blocks = eng_blocks_for(e, s->computed + t),
                                    .logits = eng_wants_prompt_rows(s) ? FS_BATCH_LOGITS_ALL
                                                                       : s->computed + t == s->n_tokens};
    }
    int rc = w->db ? fs_device_batch_run(w->db, e->pool, e->bseq, n, logits, err)
                   : fs_batch_run(e->batch, w->model, w->sw, e->pool, e->bseq, n, logits, err);
    for (size_t j = 0; !rc && j < n; j++) /* the prompt's positions among the rows just run */
        if (e->bseq[j].start < e->ran[idx[j]]->n_prompt) {
            size_t end = e->bseq[j].start + e->bseq[j].n_new, np = e->ran[idx[j]]->n_prompt;
            e->c.prompt_computed += (end < np ? end : np) - e->bseq[j].start;
        }
    return rc;
}

/* ---- 5. tokens and events ---- */

static void logprobs_of(const float *logits, size_t V, int32_t tok, size_t n_top, fs_request_event *ev) {
    float mx = logits[0];
    for (size_t i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (size_t i = 0; i < V; i++) sum += exp((double)(logits[i] - mx));
    double lse = (double)mx + log(sum);
    ev->logprob = (float)((double)logits[tok] - lse);
    ev->n_top = n_top;
    for (size_t k = 0; k < n_top; k++) { /* the k-th largest, ties to the lower id */
        size_t best = V;
        for (size_t i = 0; i < V; i++) {
            int taken = 0;
            for (size_t j = 0; j < k && !taken; j++) taken = ev->top_token[j] == (int32_t)i;
            if (!taken && (best == V || logits[i] > logits[best])) best = i;
        }
        ev->top_token[k] = (int32_t)best;
        ev->top_logprob[k] = (float)((double)logits[best] - lse);
    }
}

static int push_token(eseq *s, int32_t tok) {
    if (s->n_tokens == s->cap) {
        size_t cap = 2 * s->cap;
        int32_t *t = realloc(s->tokens, cap * sizeof *t);
        if (!t) return FS_ERR_NOMEM;
        s->tokens = t;
        s->cap = cap;
    }
    s->tokens[s->n_tokens++] = tok;
    return FS_OK;
}

/* NULL, or why the logits cannot be sampled from: a NaN or an Inf (the
 * weights overflow) would pick token 0 whatever the model says. */
static const char *logits_fault(const float *logits, size_t V) {
    for (size_t v = 0; v < V; v++)
        if (!isfinite(logits[v]))
            return isnan(logits[v]) ? "the model's logits are NaN: the weights overflow (a run that diverged?): use "
                                      "an earlier checkpoint"
                                    : "the model's logits are Inf: the weights overflow (a run that diverged?): use "
                                      "an earlier checkpoint";
    return NULL;
}

/* Samples s's next token and sends it; returns why s ends (NONE: it goes on). */
static fs_finish_reason emit_token(fs_engine *e, eseq *s, const float *logits, double now) {
    size_t V = fs_model_cfg(s->w->model)->vocab;
    int32_t tok = fs_sample_token(logits, V, &s->p.sampler, s->rng.s, e->work);
    if (fs_request_ends_at(s->p.eos, tok)) return FS_FINISH_STOP; /* its final event carries no token */
    if (push_token(s, tok)) return FS_FINISH_ERROR;
    s->generated++;
    e->c.tokens_out++;
    fs_request_event ev;
    fill_event(s, &ev);
    ev.token = tok;
    if (s->p.logprobs || s->p.token_logprobs) logprobs_of(logits, V, tok, s->p.logprobs, &ev);
    size_t max_seq = fs_model_cfg(s->w->model)->max_seq;
    if (s->generated >= s->p.max_tokens || (!e->kv_max_blocks && s->n_tokens > max_seq)) ev.finish = FS_FINISH_LENGTH;
    if (s->generated == 1) eng_histogram_add(&e->c.ttft, now - s->t_submit);
    else eng_histogram_add(&e->c.itl, now - s->t_last_token);
    s->t_last_token = now;
    if (ev.finish != FS_FINISH_NONE) count_finish(e, s, ev.finish);
    s->sink(s->arg, &ev);
    return ev.finish;
}

/* Prompt token i's log-probabilities, from the logits of position i - 1. */
static void emit_prompt_token(eseq *s, const float *logits, size_t V, size_t i) {
    fs_request_event ev;
    fill_event(s, &ev);
    ev.token = s->tokens[i];
    ev.prompt = 1;
    logprobs_of(logits, V, ev.token, s->p.logprobs, &ev);
    s->sink(s->arg, &ev);
    s->prompt_lp = i + 1;
}

/* The n rows of logits of s's last n positions (just computed): the prompt
 * tokens they predict that are still owed, then, when they reach the end,
 * the next token. Returns how s came out. */
static eng_outcome take_rows(fs_engine *e, eseq *s, const float *rows, size_t n, double now) {
    size_t V = fs_model_cfg(s->w->model)->vocab, first = s->computed - n;
    for (size_t r = 0; r < n; r++) {
        const float *row = rows + r * V;
        size_t next = first + r + 1; /* the token this row predicts */
        int owed = next >= s->prompt_lp && next < s->n_prompt;
        const char *fault = owed || next == s->n_tokens ? logits_fault(row, V) : NULL;
        if (fault) return (eng_outcome){FS_FINISH_ERROR, 0, fault};
        if (owed) emit_prompt_token(s, row, V, next);
    }
    if (s->computed != s->n_tokens) return (eng_outcome){FS_FINISH_NONE, 0, NULL}; /* a prompt chunk */
    if (s->generated >= s->p.max_tokens) return (eng_outcome){FS_FINISH_LENGTH, 0, NULL}; /* echo alone */
    fs_finish_reason r = emit_token(e, s, rows + (n - 1) * V, now);
    return (eng_outcome){r, r == FS_FINISH_LENGTH, r == FS_FINISH_ERROR ? "out of memory" : NULL};
}

/* ---- the iteration ---- */

static void after_step(fs_engine *e, size_t n, const size_t *tokens, double now) {
    for (size_t j = 0; j < n; j++) {
        eseq *s = e->ran[j];
        eng_outcome *o = &e->out[j];
        if (o->reason != FS_FINISH_NONE) continue; /* its step failed */
        s->computed += tokens[j];
        s->view.last_run = now;
        fs_error err = {0};
        if (eng_blocks_settle(e, s, &err)) {
            fs_log(FS_LOG_ERROR, "serve", "request %llu: %s", (unsigned long long)s->id, err.message);
            *o = (eng_outcome){FS_FINISH_ERROR, 0, "the KV cache could not be settled"};
            continue;
        }
        if (e->rows[j]) *o = take_rows(e, s, e->rows[j], e->n_rows[j], now);
    }
}

/* Runs the sequences ran[0, n), one step per weights generation; rows[j]
 * is sequence j's logits (NULL when it wants none). */
static void run_steps(fs_engine *e, size_t n, const size_t *tokens) {
    size_t V = fs_model_cfg(e->s->model)->vocab, *idx = e->preempt; /* the preemptions are done */
    uint8_t *done = e->mark;
    memset(done, 0, n);
    size_t nl = 0; /* logits rows used: each generation's step writes after the last one's */
    for (size_t j0 = 0; j0 < n; j0++) {
        if (done[j0]) continue;
        weights_gen *w = e->ran[j0]->w;
        size_t k = 0;
        for (size_t j = j0; j < n; j++)
            if (!done[j] && e->ran[j]->w == w) idx[k++] = j, done[j] = 1;
        fs_error err = {0};
        if (step_generation(e, w, idx, k, tokens, e->logits + nl * V, &err)) {
            fs_log(FS_LOG_ERROR, "serve", "step: %s", err.message);
            for (size_t i = 0; i < k; i++) e->out[idx[i]] = (eng_outcome){FS_FINISH_ERROR, 0, "the model step failed"};
            continue;
        }
        for (size_t i = 0; i < k; i++) {
            const fs_batch_seq *b = &e->bseq[i];
            size_t r = fs_batch_logit_rows(b);
            e->rows[idx[i]] = r ? e->logits + nl * V : NULL;
            e->n_rows[idx[i]] = r;
            nl += r;
        }
    }
}

static void account(fs_engine *e, size_t n, const size_t *tokens, double start, double end) {
    size_t total = 0;
    for (size_t j = 0; j < n; j++) {
        e->views[j] = &e->ran[j]->view; /* the plan's views are spent */
        total += tokens[j];
    }
    fs_sched_iteration it = {.struct_size = sizeof it, .start = start, .seconds = end - start, .ran = e->views,
                             .tokens = tokens, .n_ran = n, .total_tokens = total};
    SCHED_CALL(e, "account", e->svt->account(e->sself, &it));
    e->c.iterations++;
    eng_histogram_add(&e->c.iteration, end - start);
}

int eng_iteration(fs_engine *e, int *idle, fs_error *err) {
    (void)err;
    double now = fs_now();
    *idle = 0;
    end_cancelled(e, now);
    if (e->n_live == 0) {
        *idle = 1;
        return FS_OK;
    }
    fs_sched_plan plan;
    plan_iteration(e, now, &plan);
    for (size_t j = 0; j < plan.n_preempt; j++) {
        eng_blocks_evict(e, e->live[plan.preempt[j]]);
        e->c.preemptions++;
    }
    /* the plan's order, each with the tokens it gets */
    size_t n = 0, *tokens = e->run_tokens;
    e->prompt_rows = 0;
    for (size_t j = 0; j < plan.n_run; j++) {
        eseq *s = e->live[plan.run[j]];
        size_t t = prepare(e, s, plan.run_tokens[j]);
        if (t == 0) continue;
        e->ran[n] = s;
        tokens[n++] = t; /* n <= j: the plan's entries are read before they are overwritten */
    }
    if (n == 0) {
        *idle = 2; /* requests wait for room */
        return FS_OK;
    }
    for (size_t j = 0; j < n; j++) {
        e->out[j] = (eng_outcome){FS_FINISH_NONE, 0, NULL};
        e->rows[j] = NULL;
        e->n_rows[j] = 0;
    }
    run_steps(e, n, tokens);
    double end = fs_now();
    after_step(e, n, tokens, end);
    account(e, n, tokens, now, end);
    for (size_t j = 0; j < n; j++) {
        eng_outcome o = e->out[j];
        if (o.reason == FS_FINISH_NONE) continue;
        if (o.sent) retire(e, e->ran[j], o.reason);
        else eng_finish(e, e->ran[j], o.reason, o.error);
    }
    return FS_OK;
}
