/* engine.c — the serving engine's public functions (engine.h): creation
 * and its checks, the engine thread, the inbox other threads write into
 * (arrivals, cancellations, a reload), drain, stats. The iteration itself
 * is engine_iter.c; blocks are engine_blocks.c. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/qweights.h"
#include "core/host.h"
#include "core/threads.h"
#include "serve/engine_internal.h"
#include "session/checkpoint.h"
#include "session/device.h"

#define MIB ((size_t)1 << 20)
/* The logits of prompt positions one iteration may compute (echo with
 * logprobs): a prompt chunk is cut to what they hold, so a vocabulary of
 * 50257 still takes 41 positions a step without a buffer of
 * prefill_chunk rows. */
#define PROMPT_LOGITS_BYTES (8 * MIB)

/* Upper bounds of the histograms' buckets, seconds (the last is +Inf). */
static const double HIST_LE[FS_ENGINE_HIST_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,  0.25,
                                                       0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0, INFINITY};

void fs_engine_config_from(fs_engine_config *cfg, const fs_session *s) {
    const fs_config *c = s->serve_cfg;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->kv_block = (size_t)fs_config_int(c, "kv_block");
    cfg->kv_cache_mb = (size_t)fs_config_int(c, "kv_cache_mb");
    cfg->swap_mb = (size_t)fs_config_int(c, "swap_mb");
    cfg->prefill_chunk = (size_t)fs_config_int(c, "prefill_chunk");
    cfg->max_running = (size_t)fs_config_int(c, "max_running");
    cfg->max_queue = (size_t)fs_config_int(c, "max_queue");
    cfg->max_batch_tokens = (size_t)fs_config_int(c, "max_batch_tokens");
    cfg->prefix_sharing = fs_config_bool(c, "prefix_sharing");
    cfg->threads = (int)fs_config_int(s->run_cfg, "threads");
    cfg->scheduler = fs_config_string(c, "scheduler");
    cfg->weights = fs_wformat_parse(fs_config_string(s->gen_cfg, "weights"));
    cfg->on_device = 0;
}

/* ---- creation ---- */

static int make_scheduler(fs_engine *e, fs_error *err) {
    fs_session *s = e->s;
    const fs_plugin_descriptor *d = s->scheduler.plugin->desc;
    if (e->cfg.scheduler && strcmp(e->cfg.scheduler, d->name) != 0)
        return fs_error_set(err, FS_ERR_INVALID,
                            "the engine's scheduler '%s' is not the graph's ([serve] scheduler = %s): set [serve] "
                            "scheduler = %s",
                            e->cfg.scheduler, d->name, e->cfg.scheduler);
    e->svt = d->vtable;
    fs_plugin_ctx_init(&e->sctx, &s->host, s->scheduler.config, "plugin.serve.scheduler", d->name);
    fs_scheduler_config sc = {.struct_size = sizeof sc, .prefill_chunk = e->cfg.prefill_chunk,
                              .max_seqs = e->cfg.max_running, .max_tokens = e->max_tokens_step,
                              .kv_block = e->cfg.kv_block, .max_levels = FS_ENGINE_MAX_QUEUES};
    fs_error perr = {0};
    int rc;
    SCHED_CALL(e, "create", rc = e->svt->create(&e->sself, &s->host.api, &e->sctx, &sc, &perr));
    if (rc) return fs_error_set(err, rc, "scheduler plugin '%s': %s", d->name, perr.message);
    SCHED_CALL(e, "levels", e->levels = e->svt->levels(e->sself));
    if (e->levels < 1 || e->levels > FS_ENGINE_MAX_QUEUES)
        return fs_error_set(err, FS_ERR_ABI, "scheduler plugin '%s' reports %zu queues (1..%d)", d->name, e->levels,
                            FS_ENGINE_MAX_QUEUES);
    SCHED_CALL(e, "seq_bytes", e->sched_bytes = e->svt->seq_bytes(e->sself));
    return FS_OK;
}

/* The pool: kv_cache_mb of blocks, at least what one sequence needs. */
static int make_pool(fs_engine *e, fs_error *err) {
    const fs_model *m = e->s->model;
    size_t kb = e->cfg.kv_block, bb = fs_kv_block_bytes(m, kb);
    size_t n = e->cfg.kv_blocks ? e->cfg.kv_blocks : e->cfg.kv_cache_mb * MIB / bb;
    size_t n_swap = e->cfg.kv_blocks ? e->cfg.swap_blocks : e->cfg.swap_mb * MIB / bb;
    e->kv_max_blocks = fs_model_paged_max_blocks(m, kb);
    size_t need = e->kv_max_blocks ? e->kv_max_blocks + eng_blocks_for(e, e->cfg.prefill_chunk) + 1
                                   : eng_blocks_for(e, fs_model_cfg(m)->max_seq);
    if (n < need && e->cfg.kv_blocks)
        return fs_error_set(err, FS_ERR_INVALID, "a pool of %zu blocks of %zu tokens; one sequence needs %zu", n, kb,
                            need);
    if (n < need)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: %zu blocks of %zu tokens (%zu bytes each, all layers); one sequence needs %zu: set "
                            "[serve] kv_cache_mb to %zu or more",
                            fs_config_where(e->s->serve_cfg, "kv_cache_mb"), n, kb, bb, need,
                            (need * bb + MIB - 1) / MIB);
    fs_error why = {0};
    int rc = fs_kv_pool_create_on(&e->pool, m, kb, n, n_swap, e->bk, &why);
    if (rc && !e->cfg.kv_blocks) /* the sizes came from the graph: say which keys and what to do */
        return fs_error_set(err, rc, "%s: %s: set [serve] kv_cache_mb (and swap_mb) to what the %s can hold",
                            fs_config_where(e->s->serve_cfg, "kv_cache_mb"), why.message,
                            e->bk && e->bk->device.type != FS_DEVICE_CPU ? "device" : "machine");
    if (rc) *err = why;
    return rc;
}

/* The backend the session's [run] device and [backend] point to, when the
 * engine may use one (cfg.on_device) and the model can step there: e->bk,
 * else NULL (the CPU's own kernels). `auto` falls back to the CPU, with a
 * line saying why; a device asked by name that cannot serve is an error. */
static int open_device(fs_engine *e, fs_error *err) {
    fs_session *s = e->s;
    const fs_plugin *plugin = NULL;
    fs_device dev;
    if (!e->cfg.on_device) return FS_OK;
    int rc = fs_session_backend(s, &plugin, &dev, err);
    if (rc || !plugin) return rc;
    char why[320] = "";
    if (e->cfg.weights != FS_WEIGHTS_F32)
        snprintf(why, sizeof why, "%s: bf16 and q8 are the CPU's decode formats; a device reads f32 weights (set "
                 "weights = f32)", fs_config_where(s->gen_cfg, "weights"));
    else
        fs_device_batch_supported(s->model, dev, why, sizeof why);
    if (why[0] && fs_session_backend_asked(s))
        return fs_error_set(err, FS_ERR_INVALID, "%s asks for a compute backend, but serving cannot run there: %s; "
                            "or set [run] device = cpu", fs_session_backend_where(s), why);
    if (why[0]) {
        fs_log(FS_LOG_INFO, NULL, "[run] device = auto: serving on the CPU: %s", why);
        return FS_OK;
    }
    if ((rc = fs_backend_handle_open_plugin(&e->bk_open, plugin, dev.index, FS_GEMM_COMPUTE_F32, err))) return rc;
    e->bk = &e->bk_open;
    fs_backend_device_info info = {.struct_size = sizeof info};
    fs_error ierr = {0};
    if (e->bk->vt->device_info(e->bk->self, &info, &ierr) == FS_OK)
        fs_log(FS_LOG_INFO, NULL, "serving on %s (backend %s)", info.name, plugin->desc->name);
    return FS_OK;
}

int eng_grow(fs_engine *e, size_t n) {
    if (n <= e->cap_live_arrays) return FS_OK;
    size_t cap = e->cap_live_arrays ? 2 * e->cap_live_arrays : 64;
    while (cap < n) cap *= 2;
#define GROW(field) \
    do { \
        void *p_ = realloc(e->field, cap * sizeof *e->field); \
        if (!p_) return FS_ERR_NOMEM; \
        e->field = p_; \
    } while (0)
    GROW(live);
    GROW(views);
    GROW(run);
    GROW(run_tokens);
    GROW(preempt);
    GROW(bseq);
    GROW(ran);
    GROW(rows);
    GROW(n_rows);
    GROW(out);
    GROW(mark);
#undef GROW
    e->cap_live_arrays = cap;
    return FS_OK;
}

/* A generation of weights: model m (its session `owned`, NULL for the
 * creator's) and its step weights, made here: outside the engine's lock. */
static int gen_new(fs_engine *e, fs_session *owned, const fs_model *m, weights_gen **out, fs_error *err) {
    weights_gen *w = calloc(1, sizeof *w);
    if (!w) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    fs_session *from = owned ? owned : e->s;
    fs_device_batch_config dc = {.struct_size = sizeof dc, .backend = e->bk, .host = &from->host,
                                 .kv_dtype = fs_session_kv_dtype(from), .max_rows = e->max_tokens_step,
                                 .max_logits = e->cfg.max_running + e->prompt_rows_max};
    int rc = e->bk ? fs_device_batch_create(&w->db, m, &dc, err)
                   : fs_step_weights_create(&w->sw, m, e->cfg.weights, e->max_tokens_step,
                                            e->cfg.max_running + e->prompt_rows_max, err);
    if (rc) {
        free(w);
        return rc;
    }
    w->session = owned;
    w->model = m;
    *out = w;
    return FS_OK;
}

/* Its prefix-hash seed, one per generation (blocks of other weights never
 * match): called under the engine's lock once the engine runs. */
static void gen_number(fs_engine *e, weights_gen *w) { w->seed = fs_rng_mix(0x6b76626c6f636b73ull, e->n_gens++); }

static void gen_free(weights_gen *w) {
    fs_step_weights_destroy(w->sw);
    fs_device_batch_destroy(w->db);
    fs_session_close(w->session);
    free(w);
}

/* Frees w once no request runs on it and a newer one is current. */
void eng_gen_release(fs_engine *e, weights_gen *w) {
    if (w->users > 0 || w == e->current) return;
    for (weights_gen **at = &e->gens; *at; at = &(*at)->next)
        if (*at == w) {
            *at = w->next;
            gen_free(w);
            return;
        }
}

static int engine_init(fs_engine *e, fs_session *s, const fs_engine_config *cfg, fs_error *err) {
    e->s = s;
    e->cfg = *cfg;
    if (!FS_HAS_MEMBER(cfg, cfg->struct_size, fs_engine_config, weights)) e->cfg.weights = FS_WEIGHTS_F32;
    if (!FS_HAS_MEMBER(cfg, cfg->struct_size, fs_engine_config, on_device)) e->cfg.on_device = 0;
    if (!e->cfg.kv_block || !e->cfg.prefill_chunk || !e->cfg.max_running)
        return fs_error_set(err, FS_ERR_INVALID, "[serve] kv_block, prefill_chunk and max_running must be >= 1");
    e->max_tokens_step = cfg->max_batch_tokens ? cfg->max_batch_tokens : cfg->prefill_chunk + cfg->max_running;
    e->threads = cfg->threads > 0 ? cfg->threads : fs_threads_get();
    e->adaptive = cfg->threads <= 0;
    for (size_t i = 0; i < FS_ENGINE_HIST_BUCKETS; i++)
        e->c.ttft.le[i] = e->c.itl.le[i] = e->c.e2e.le[i] = e->c.iteration.le[i] = HIST_LE[i];
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_cond_init(&e->quiet, NULL);
    e->next_id = 1;
    int rc = fs_session_require_whole(s, "serve", err);
    if (!rc) rc = fs_model_servable(s->model, err);
    if (!rc) rc = open_device(e, err);
    if (!rc) rc = make_pool(e, err);
    if (!rc) rc = make_scheduler(e, err);
    size_t V = fs_model_cfg(s->model)->vocab, P = PROMPT_LOGITS_BYTES / (V * sizeof(float));
    e->prompt_rows_max = P < 1 ? 1 : P > e->max_tokens_step ? e->max_tokens_step : P;
    if (!rc && !e->bk)
        rc = fs_batch_create(&e->batch, s->model, e->max_tokens_step, cfg->max_running + e->prompt_rows_max, err);
    if (!rc) rc = gen_new(e, NULL, s->model, &e->current, err);
    if (rc) return rc;
    gen_number(e, e->current);
    e->gens = e->current;
    e->logits = fs_alloc((cfg->max_running + e->prompt_rows_max) * V * sizeof(float));
    e->work = fs_alloc(2 * V * sizeof(float) + 16);
    if (!e->logits || !e->work || eng_grow(e, 64))
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory for the serving engine");
    eng_publish_stats(e);
    return FS_OK;
}

const char *fs_engine_backend(const fs_engine *e) { return e->bk ? e->bk->plugin->desc->name : "none"; }

/* ---- the inbox ---- */

static void arrive(fs_engine *e, eseq *s) {
    e->live[e->n_live++] = s;
    s->view.id = s->id;
    s->view.arrival = s->view.last_run = s->t_submit;
    s->view.state = FS_SCHED_WAITING;
    s->view.prompt_tokens = s->n_prompt;
    s->view.max_tokens = s->p.max_tokens;
    e->c.tokens_in += s->n_prompt;
    SCHED_CALL(e, "arrive", e->svt->arrive(e->sself, &s->view, s->t_submit));
}

/* A request the engine could not take (no memory for its bookkeeping). */
static void refuse(fs_engine *e, eseq *s) {
    fs_request_event ev = {.id = s->id, .token = -1, .finish = FS_FINISH_ERROR, .prompt_tokens = s->n_prompt,
                           .error = "out of memory"};
    s->sink(s->arg, &ev);
    pthread_mutex_lock(&e->mu);
    e->live_count--;
    e->waiting--;
    pthread_cond_broadcast(&e->quiet);
    pthread_mutex_unlock(&e->mu);
    free(s->tokens);
    free(s->view.data);
    free(s);
}

void eng_take_inbox(fs_engine *e) {
    pthread_mutex_lock(&e->mu);
    size_t n = e->n_inbox;
    eseq **in = e->inbox;
    e->inbox = NULL;
    e->n_inbox = e->cap_inbox = 0;
    size_t room = eng_grow(e, e->n_live + n) ? e->cap_live_arrays - e->n_live : n;
    for (size_t c = 0; c < e->n_cancels; c++) {
        for (size_t i = 0; i < e->n_live; i++)
            if (e->live[i]->id == e->cancels[c]) e->live[i]->cancel = (int)e->cancel_why[c];
        for (size_t i = 0; i < n; i++)
            if (in[i]->id == e->cancels[c]) in[i]->cancel = (int)e->cancel_why[c];
    }
    e->n_cancels = 0;
    weights_gen *w = e->reload;
    e->reload = NULL;
    pthread_mutex_unlock(&e->mu);
    for (size_t i = 0; i < n; i++) {
        if (i < room) arrive(e, in[i]);
        else refuse(e, in[i]);
    }
    free(in);
    if (w) {
        weights_gen *old = e->current;
        w->next = e->gens;
        e->gens = w;
        e->current = w;
        eng_gen_release(e, old);
        pthread_mutex_lock(&e->mu);
        e->reloads_done++;
        pthread_cond_broadcast(&e->quiet);
        pthread_mutex_unlock(&e->mu);
    }
}

void eng_publish_stats(fs_engine *e) {
    fs_engine_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    for (size_t i = 0; i < e->n_live; i++) {
        const fs_sched_seq *v = &e->live[i]->view;
        st.waiting += v->state == FS_SCHED_WAITING;
        st.running += v->state == FS_SCHED_RESIDENT;
        st.swapped += v->state == FS_SCHED_SWAPPED;
        if (v->level >= 0 && (size_t)v->level < e->levels) st.queue_len[v->level]++;
    }
    st.n_queues = e->levels;
    st.kv_blocks_total = fs_kv_pool_blocks(e->pool);
    st.swap_blocks_total = fs_kv_pool_swap_blocks(e->pool);
    eng_blocks_count(e, &st.kv_blocks_used, &st.swap_blocks_used);
    const engine_counters *c = &e->c;
    st.prefix_hits = c->prefix_hits;
    st.prefix_lookups = c->prefix_lookups;
    st.tokens_in = c->tokens_in;
    st.tokens_out = c->tokens_out;
    st.prompt_computed = c->prompt_computed;
    st.preemptions = c->preemptions;
    st.swaps_out = c->swaps_out;
    st.swaps_in = c->swaps_in;
    st.recomputes = c->recomputes;
    memcpy(st.finished, c->finished, sizeof st.finished);
    st.iterations = c->iterations;
    st.ttft = c->ttft;
    st.itl = c->itl;
    st.e2e = c->e2e;
    st.iteration = c->iteration;
    pthread_mutex_lock(&e->mu);
    st.waiting += e->n_inbox; /* submitted, not yet seen by the engine */
    e->shown = st;
    pthread_mutex_unlock(&e->mu);
}

/* ---- running ---- */

/* Iterations until nothing is left (or, with a thread, until stopped). */
static void run_loop(fs_engine *e, int until_idle) {
    for (;;) {
        eng_take_inbox(e);
        /* under load the free cores change: every product of the step is
         * split by columns or rows whatever the count, so the bits do not */
        if (e->adaptive) omp_set_num_threads(e->threads = fs_threads_adapt());
        int idle = 0;
        fs_error err = {0};
        if (eng_iteration(e, &idle, &err)) fs_log(FS_LOG_ERROR, "serve", "%s", err.message);
        eng_publish_stats(e);
        pthread_mutex_lock(&e->mu);
        int more = e->n_inbox || e->n_cancels || e->reload;
        if (idle == 1 && !more) {
            e->at_rest = 1;
            pthread_cond_broadcast(&e->quiet);
            if (until_idle || e->stop) {
                pthread_mutex_unlock(&e->mu);
                return;
            }
            pthread_cond_wait(&e->wake, &e->mu);
        } else if (idle == 2 && !more) { /* every request waits for room another frees: nothing will */
            if (++e->empty_plans > 1000 && e->n_live) {
                pthread_mutex_unlock(&e->mu);
                eng_finish(e, e->live[0], FS_FINISH_ERROR, "the scheduler ran nothing for 1000 iterations");
                pthread_mutex_lock(&e->mu);
            }
        } else {
            e->empty_plans = 0;
        }
        int stop = e->stop && !until_idle;
        pthread_mutex_unlock(&e->mu);
        if (stop) return;
    }
}

/* Ends every request still here with FS_FINISH_SHUTDOWN. */
static void shut_down_all(fs_engine *e) {
    eng_take_inbox(e);
    while (e->n_live) eng_finish(e, e->live[e->n_live - 1], FS_FINISH_SHUTDOWN, NULL);
    eng_publish_stats(e);
}

static void *engine_main(void *arg) {
    fs_engine *e = arg;
    omp_set_num_threads(e->threads);
    run_loop(e, 0);
    shut_down_all(e);
    return NULL;
}

static int create(fs_engine **out, fs_session *s, const fs_engine_config *cfg, int inline_mode, fs_error *err) {
    *out = NULL;
    fs_engine *e = calloc(1, sizeof *e);
    if (!e) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    e->inline_mode = inline_mode;
    int rc = engine_init(e, s, cfg, err);
    if (!rc && !inline_mode) {
        if (pthread_create(&e->thread, NULL, engine_main, e) != 0)
            rc = fs_error_set(err, FS_ERR_RUNTIME, "could not start the engine thread");
        else
            e->has_thread = 1;
    }
    if (rc) {
        fs_engine_destroy(e);
        return rc;
    }
    *out = e;
    return FS_OK;
}

int fs_engine_create(fs_engine **out, fs_session *s, const fs_engine_config *cfg, fs_error *err) {
    return create(out, s, cfg, 0, err);
}

int fs_engine_create_inline(fs_engine **out, fs_session *s, const fs_engine_config *cfg, fs_error *err) {
    return create(out, s, cfg, 1, err);
}

int fs_engine_run_until_idle(fs_engine *e, fs_error *err) {
    (void)err;
    int outer = omp_get_max_threads();
    omp_set_num_threads(e->threads);
    run_loop(e, 1);
    omp_set_num_threads(outer);
    return FS_OK;
}

void fs_engine_destroy(fs_engine *e) {
    if (!e) return;
    if (e->has_thread) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        pthread_cond_broadcast(&e->wake);
        pthread_cond_broadcast(&e->quiet);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    } else if (e->svt) {
        shut_down_all(e);
    }
    if (e->reload) gen_free(e->reload);
    while (e->gens) {
        weights_gen *w = e->gens;
        e->gens = w->next;
        gen_free(w);
    }
    if (e->svt) SCHED_CALL(e, "destroy", e->svt->destroy(e->sself));
    fs_kv_pool_destroy(e->pool);
    fs_batch_destroy(e->batch);
    if (e->bk) fs_backend_handle_close(e->bk); /* after everything on its device */
    fs_free(e->logits);
    fs_free(e->work);
    free(e->live);
    free(e->views);
    free(e->run);
    free(e->run_tokens);
    free(e->preempt);
    free(e->bseq);
    free(e->ran);
    free(e->rows);
    free(e->n_rows);
    free(e->out);
    free(e->mark);
    free(e->keep);
    free(e->inbox);
    free(e->cancels);
    free(e->cancel_why);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->wake);
    pthread_cond_destroy(&e->quiet);
    free(e);
}

/* ---- requests ---- */

static int check_request(const fs_engine *e, const fs_request_params *p, fs_error *err) {
    const fs_model_config *mc = fs_model_cfg(e->s->model);
    if (!p->prompt || p->n_prompt == 0) return fs_error_set(err, FS_ERR_INVALID, "the prompt has no tokens");
    for (size_t i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || (size_t)p->prompt[i] >= mc->vocab)
            return fs_error_set(err, FS_ERR_INVALID, "prompt token %zu is %d, outside the vocabulary [0, %zu)", i,
                                (int)p->prompt[i], mc->vocab);
    if (p->logprobs > FS_ENGINE_MAX_LOGPROBS)
        return fs_error_set(err, FS_ERR_INVALID, "logprobs = %zu: at most %d", p->logprobs, FS_ENGINE_MAX_LOGPROBS);
    if (e->kv_max_blocks) return FS_OK; /* a bounded cache streams on */
    if (p->n_prompt + p->max_tokens > mc->max_seq)
        return fs_error_set(err, FS_ERR_INVALID,
                            "the prompt (%zu tokens) plus max_tokens (%zu) is past the context of %zu tokens ([model] "
                            "max_seq)",
                            p->n_prompt, p->max_tokens, mc->max_seq);
    return FS_OK;
}

static eseq *request_new(const fs_request_params *p, fs_request_sink sink, void *arg, size_t sched_bytes) {
    eseq *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->p.prompt = NULL;
    s->sink = sink;
    s->arg = arg;
    s->n_prompt = s->n_tokens = p->n_prompt;
    s->cap = p->n_prompt + (p->max_tokens < 4096 ? p->max_tokens : 4096) + 1;
    s->tokens = malloc(s->cap * sizeof *s->tokens);
    s->view.data = calloc(1, sched_bytes ? sched_bytes : 1);
    if (!s->tokens || !s->view.data) {
        free(s->tokens);
        free(s->view.data);
        free(s);
        return NULL;
    }
    memcpy(s->tokens, p->prompt, p->n_prompt * sizeof *s->tokens);
    s->prompt_lp = p->prompt_logprobs ? 1 : p->n_prompt;
    fs_rng_seed(&s->rng, p->sampler.seed);
    s->t_submit = fs_now();
    return s;
}

int fs_engine_submit(fs_engine *e, const fs_request_params *p, fs_request_sink sink, void *arg, uint64_t *id,
                     fs_error *err) {
    int rc = check_request(e, p, err);
    if (rc) return rc;
    eseq *s = request_new(p, sink, arg, e->sched_bytes);
    if (!s) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&e->mu);
    if (e->draining || e->stop) rc = fs_error_set(err, FS_ERR_UNSUPPORTED, "the server is shutting down");
    else if (e->waiting >= e->cfg.max_queue)
        rc = fs_error_set(err, FS_ERR_BUSY, "%zu requests already wait ([serve] max_queue)", e->waiting);
    else if (e->n_inbox == e->cap_inbox) {
        size_t cap = e->cap_inbox ? 2 * e->cap_inbox : 16;
        eseq **in = realloc(e->inbox, cap * sizeof *in);
        if (!in) rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        else e->inbox = in, e->cap_inbox = cap;
    }
    if (!rc) {
        s->id = s->view.id = e->next_id++;
        e->inbox[e->n_inbox++] = s;
        e->at_rest = 0;
        e->waiting++;
        e->live_count++;
        if (id) *id = s->id;
        pthread_cond_broadcast(&e->wake);
    }
    pthread_mutex_unlock(&e->mu);
    if (rc) {
        free(s->tokens);
        free(s->view.data);
        free(s);
    }
    return rc;
}

void fs_engine_cancel(fs_engine *e, uint64_t id) { fs_engine_end(e, id, FS_FINISH_CANCELLED); }

void fs_engine_end(fs_engine *e, uint64_t id, fs_finish_reason why) {
    if (why != FS_FINISH_STOP) why = FS_FINISH_CANCELLED;
    pthread_mutex_lock(&e->mu);
    if (e->n_cancels == e->cap_cancels) {
        size_t cap = e->cap_cancels ? 2 * e->cap_cancels : 16;
        uint64_t *c = realloc(e->cancels, cap * sizeof *c);
        if (c) e->cancels = c;
        fs_finish_reason *w = c ? realloc(e->cancel_why, cap * sizeof *w) : NULL;
        if (w) e->cancel_why = w, e->cap_cancels = cap;
    }
    if (e->n_cancels < e->cap_cancels) {
        e->cancel_why[e->n_cancels] = why;
        e->cancels[e->n_cancels++] = id;
    }
    pthread_cond_broadcast(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

void fs_engine_drain(fs_engine *e, double grace_s) {
    pthread_mutex_lock(&e->mu);
    e->draining = 1;
    e->drain_deadline = fs_now() + grace_s;
    pthread_cond_broadcast(&e->wake);
    if (!e->has_thread) {
        pthread_mutex_unlock(&e->mu);
        fs_error err = {0};
        fs_engine_run_until_idle(e, &err);
        return;
    }
    while (e->live_count > 0 || !e->at_rest) { /* until the stats show the end too */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000; /* wake up to pass the deadline along */
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&e->quiet, &e->mu, &ts);
        pthread_cond_broadcast(&e->wake);
    }
    pthread_mutex_unlock(&e->mu);
}

/* ---- reload ---- */

static int open_weights(fs_engine *e, const char *path, fs_session **out, fs_error *err) {
    char *ini = fs_graph_to_ini(e->s->graph);
    if (!ini) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    fs_graph *g;
    int rc = fs_graph_load_string(&g, fs_graph_path(e->s->graph), ini, err);
    free(ini);
    if (rc) return rc;
    fs_session *s;
    if ((rc = fs_session_open_local(&s, g, err))) return rc;
    if ((rc = fs_checkpoint_load(path, s, NULL, NULL, err))) {
        fs_session_close(s);
        return rc;
    }
    if (fs_kv_block_bytes(s->model, e->cfg.kv_block) != fs_kv_block_bytes(e->s->model, e->cfg.kv_block)) {
        fs_session_close(s);
        return fs_error_set(err, FS_ERR_INVALID, "%s: its KV blocks differ from the served model's", path);
    }
    *out = s;
    return FS_OK;
}

int fs_engine_reload(fs_engine *e, const char *path, fs_error *err) {
    fs_session *s = NULL;
    int rc = open_weights(e, path, &s, err);
    if (rc) return rc;
    weights_gen *w = NULL;
    if ((rc = gen_new(e, s, s->model, &w, err))) {
        fs_session_close(s);
        return rc;
    }
    pthread_mutex_lock(&e->mu);
    gen_number(e, w);
    if (e->reload) gen_free(e->reload); /* a newer checkpoint supersedes one not yet swapped in */
    e->reload = w;
    uint64_t done = e->reloads_done;
    pthread_cond_broadcast(&e->wake);
    while (e->has_thread && e->reloads_done == done && !e->stop) pthread_cond_wait(&e->quiet, &e->mu);
    pthread_mutex_unlock(&e->mu);
    return FS_OK;
}

void fs_engine_stats_get(fs_engine *e, fs_engine_stats *st) {
    pthread_mutex_lock(&e->mu);
    *st = e->shown;
    pthread_mutex_unlock(&e->mu);
}
