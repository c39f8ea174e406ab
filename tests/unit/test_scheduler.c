/* test_scheduler.c — the scheduler plugins (fcfs, mlfq) on a simulated
 * clock: every call gets `now` from the test, and iterations are reported
 * with the durations the test chooses, so each rule is checked against
 * numbers worked out by hand:
 *   - fcfs: arrival order; no start ahead of an older request waiting for
 *     room; the newest resident request gives its blocks to an older one;
 *   - both: the token and block budgets (a prompt chunk cut to the tokens
 *     left);
 *   - mlfq: skip-join from a fit of measured iterations, demotion when a
 *     quantum is used up, promotion after starvation_ms, a new short
 *     request ahead of a long one, and lower-priority residents evicted
 *     for a higher one's blocks. */
#include <string.h>

#include "fastserve/scheduler.h"
#include "test_util.h"

#define GRAPH "[model]\nvocab_size = 32\nn_layer = 1\nn_head = 1\nn_embd = 8\nmax_seq = 16\n[serve]\nscheduler = %s\n%s"

typedef struct sched {
    fs_session *s;
    const fs_scheduler_vtable *vt;
    void *self;
    fs_plugin_ctx ctx;
} sched;

static sched sched_open(const char *name, const char *keys, size_t chunk) {
    char ini[512];
    snprintf(ini, sizeof ini, GRAPH, name, keys);
    sched q = {.s = test_session(ini)};
    const fs_plugin_descriptor *d = q.s->scheduler.plugin->desc;
    assert_string_equal(d->name, name);
    q.vt = d->vtable;
    fs_plugin_ctx_init(&q.ctx, &q.s->host, q.s->scheduler.config, "plugin.serve.scheduler", name);
    fs_scheduler_config c = {.struct_size = sizeof c, .prefill_chunk = chunk, .max_seqs = 8, .max_tokens = 64,
                             .kv_block = 16, .max_levels = 16};
    fs_error err = {0};
    assert_int_equal(q.vt->create(&q.self, &q.s->host.api, &q.ctx, &c, &err), 0);
    return q;
}

static void sched_close(sched *q) {
    q->vt->destroy(q->self);
    fs_session_close(q->s);
}

enum { N = 8 };

typedef struct world {
    fs_sched_seq seq[N];
    fs_sched_seq *ptr[N];
    char data[N][64];
    size_t n;
    size_t run[N], run_tokens[N], preempt[N];
    fs_sched_plan plan;
} world;

/* A request arriving at `now`: a prompt of `prompt` tokens still to compute. */
static fs_sched_seq *arrive(sched *q, world *w, double now, size_t prompt, size_t chunk) {
    fs_sched_seq *s = &w->seq[w->n];
    memset(s, 0, sizeof *s);
    s->id = w->n + 1;
    s->arrival = s->last_run = now;
    s->state = FS_SCHED_WAITING;
    s->prompt_tokens = prompt;
    s->max_tokens = 100;
    s->tokens_next = prompt < chunk ? prompt : chunk;
    s->blocks_next = (s->tokens_next + 15) / 16;
    assert_true(q->vt->seq_bytes(q->self) <= sizeof w->data[0]);
    memset(w->data[w->n], 0, sizeof w->data[0]);
    s->data = w->data[w->n];
    w->ptr[w->n++] = s;
    q->vt->arrive(q->self, s, now);
    return s;
}

static void plan(sched *q, world *w, double now, size_t max_seqs, size_t max_tokens, size_t free_blocks) {
    fs_sched_budget b = {.struct_size = sizeof b, .max_seqs = max_seqs, .max_tokens = max_tokens,
                         .free_blocks = free_blocks};
    w->plan = (fs_sched_plan){.struct_size = sizeof w->plan, .run = w->run, .run_tokens = w->run_tokens,
                              .preempt = w->preempt};
    fs_error err = {0};
    assert_int_equal(q->vt->schedule(q->self, now, w->ptr, w->n, &b, &w->plan, &err), 0);
}

/* An iteration of `seconds` in which every planned request ran. */
static void iterate(sched *q, world *w, double start, double seconds) {
    fs_sched_seq *ran[N];
    size_t total = 0;
    for (size_t i = 0; i < w->plan.n_run; i++) {
        ran[i] = w->ptr[w->run[i]];
        ran[i]->state = FS_SCHED_RESIDENT;
        ran[i]->last_run = start + seconds;
        total += w->run_tokens[i];
    }
    fs_sched_iteration it = {.struct_size = sizeof it, .start = start, .seconds = seconds, .ran = ran,
                             .tokens = w->run_tokens, .n_ran = w->plan.n_run, .total_tokens = total};
    q->vt->account(q->self, &it);
}

static int runs(const world *w, size_t i) {
    for (size_t k = 0; k < w->plan.n_run; k++)
        if (w->run[k] == i) return 1;
    return 0;
}

static void test_fcfs_order(void **state) {
    (void)state;
    sched q = sched_open("fcfs", "", 16);
    world w = {0};
    assert_int_equal(q.vt->levels(q.self), 1);
    for (size_t i = 0; i < 4; i++) arrive(&q, &w, (double)i, 8, 16);
    plan(&q, &w, 4.0, 2, 64, 100);
    assert_int_equal(w.plan.n_run, 2);
    assert_int_equal(w.run[0], 0);
    assert_int_equal(w.run[1], 1);
    /* the oldest waiting request needs more blocks than are free: nothing
     * younger starts ahead of it, while a resident one goes on */
    w.seq[0].state = FS_SCHED_RESIDENT;
    w.seq[0].tokens_next = 1;
    w.seq[0].blocks_next = 0;
    w.seq[1].blocks_next = 5;
    plan(&q, &w, 5.0, 8, 64, 3);
    assert_int_equal(w.plan.n_run, 1);
    assert_int_equal(w.run[0], 0);
    assert_int_equal(w.plan.n_preempt, 0);
    sched_close(&q);
}

/* Blocks run short: the newest resident request gives its blocks to the
 * older one that needs them. */
static void test_fcfs_preempts_newest(void **state) {
    (void)state;
    sched q = sched_open("fcfs", "", 16);
    world w = {0};
    for (size_t i = 0; i < 3; i++) {
        fs_sched_seq *s = arrive(&q, &w, (double)i, 8, 16);
        s->state = FS_SCHED_RESIDENT;
        s->tokens_next = 1;
        s->blocks_next = 1; /* each crosses into a new block */
        s->blocks_freed = 2;
    }
    plan(&q, &w, 3.0, 8, 64, 1);
    /* 0 takes the free block; 1 takes 2's two (2 preempted); 2 cannot run */
    assert_int_equal(w.plan.n_preempt, 1);
    assert_int_equal(w.preempt[0], 2);
    assert_int_equal(w.plan.n_run, 2);
    assert_true(runs(&w, 0) && runs(&w, 1) && !runs(&w, 2));
    sched_close(&q);
}

/* The token budget: decodes take one each, a prompt chunk the rest, cut. */
static void test_token_budget(void **state) {
    (void)state;
    const char *names[] = {"fcfs", "mlfq"};
    for (size_t k = 0; k < 2; k++) {
        sched q = sched_open(names[k], "", 16);
        world w = {0};
        for (size_t i = 0; i < 3; i++) {
            fs_sched_seq *s = arrive(&q, &w, 0.0, 8, 16);
            s->state = FS_SCHED_RESIDENT;
            s->tokens_next = 1;
            s->blocks_next = 0;
        }
        arrive(&q, &w, 0.5, 40, 16); /* its first chunk: 16 tokens */
        arrive(&q, &w, 0.6, 40, 16);
        plan(&q, &w, 1.0, 8, 20, 100);
        size_t total = 0;
        for (size_t i = 0; i < w.plan.n_run; i++) total += w.run_tokens[i];
        assert_int_equal(total, 20);
        assert_true(runs(&w, 0) && runs(&w, 1) && runs(&w, 2) && runs(&w, 3));
        for (size_t i = 0; i < w.plan.n_run; i++)
            if (w.run[i] == 3) assert_int_equal(w.run_tokens[i], 16);
            else if (w.run[i] == 4) assert_int_equal(w.run_tokens[i], 1); /* what is left */
        sched_close(&q);
    }
}

/* Iterations cost 2 ms plus 0.1 ms a token: after the fit has seen them,
 * a 2000-token prompt (8 chunks of 256: 16 + 200 ms) joins the queue whose
 * quantum first covers 216 ms (25 ms * 2^4 = 400), a 10-token one the top. */
static void test_mlfq_skip_join(void **state) {
    (void)state;
    sched q = sched_open("mlfq", "queues = 6\nquantum_ms = 25\nratio = 2\n", 256);
    world w = {0};
    assert_int_equal(q.vt->levels(q.self), 6);
    assert_int_equal(arrive(&q, &w, 0.0, 2000, 256)->level, 0); /* nothing measured yet: the top */
    const size_t sizes[] = {1, 8, 256, 40, 120, 3};
    double t = 0.0;
    for (size_t i = 0; i < 60; i++) {
        size_t tok = sizes[i % 6];
        w.plan.n_run = 1;
        w.run[0] = 0;
        w.run_tokens[0] = tok;
        double sec = 0.002 + 0.0001 * (double)tok;
        iterate(&q, &w, t, sec);
        t += sec;
    }
    assert_int_equal(arrive(&q, &w, t, 2000, 256)->level, 4);
    assert_int_equal(arrive(&q, &w, t, 10, 256)->level, 0);
    assert_int_equal(arrive(&q, &w, t, 300, 256)->level, 1); /* 4 + 30 ms > 25 */
    sched_close(&q);
}

/* A request demoted when its quantum is used up, promoted back to the top
 * after waiting starvation_ms; a new short one runs ahead of it. */
static void test_mlfq_demotion_and_starvation(void **state) {
    (void)state;
    sched q = sched_open("mlfq", "queues = 4\nquantum_ms = 25\nratio = 2\nstarvation_ms = 1000\n", 64);
    world w = {0};
    fs_sched_seq *a = arrive(&q, &w, 0.0, 8, 64);
    double t = 0.0;
    for (int i = 0; i < 3; i++, t += 0.011) { /* 22 ms < 25 ms in queue 0, then 33 */
        assert_int_equal(a->level, 0);
        plan(&q, &w, t, 1, 64, 100);
        assert_int_equal(w.plan.n_run, 1);
        iterate(&q, &w, t, 0.011);
        a->tokens_next = 1;
        a->blocks_next = 0;
    }
    assert_int_equal(a->level, 1);
    for (int i = 0; i < 5; i++, t += 0.011) { /* 44 ms < 50 in queue 1, then 55 */
        assert_int_equal(a->level, 1);
        plan(&q, &w, t, 1, 64, 100);
        iterate(&q, &w, t, 0.011);
    }
    assert_int_equal(a->level, 2);
    /* a new arrival (queue 0) runs ahead: with room for one, a waits */
    fs_sched_seq *b = arrive(&q, &w, t, 8, 64);
    plan(&q, &w, t, 1, 64, 100);
    assert_int_equal(w.plan.n_run, 1);
    assert_int_equal(w.run[0], 1);
    assert_int_equal(w.plan.n_preempt, 0); /* blocks to spare: a stays resident */
    iterate(&q, &w, t, 0.011);
    (void)b;
    /* b keeps running; a waits: after 1 s without a step it goes back to the top */
    assert_int_equal(a->level, 2);
    plan(&q, &w, t + 0.5, 1, 64, 100);
    assert_int_equal(a->level, 2);
    plan(&q, &w, a->last_run + 1.001, 1, 64, 100);
    assert_int_equal(a->level, 0);
    sched_close(&q);
}

/* A high-priority arrival that needs blocks evicts the lowest-priority
 * resident requests, never a higher one. */
static void test_mlfq_block_budget(void **state) {
    (void)state;
    sched q = sched_open("mlfq", "queues = 4\nquantum_ms = 25\n", 64);
    world w = {0};
    for (size_t i = 0; i < 3; i++) {
        fs_sched_seq *s = arrive(&q, &w, 0.0, 8, 64);
        s->state = FS_SCHED_RESIDENT;
        s->tokens_next = 1;
        s->blocks_next = 0;
        s->blocks_freed = 3;
    }
    w.seq[0].level = 0;
    w.seq[1].level = 2;
    w.seq[2].level = 3;
    fs_sched_seq *c = arrive(&q, &w, 1.0, 64, 64); /* queue 0, after seq 0 */
    c->blocks_next = 5;
    plan(&q, &w, 1.0, 8, 128, 1);
    /* 1 free + 3 (queue 3) + 3 (queue 2): both lower residents go */
    assert_int_equal(w.plan.n_preempt, 2);
    assert_int_equal(w.preempt[0], 2);
    assert_int_equal(w.preempt[1], 1);
    assert_true(runs(&w, 0) && runs(&w, 3));
    size_t blocks = 0;
    for (size_t i = 0; i < w.plan.n_run; i++) blocks += w.ptr[w.run[i]]->blocks_next;
    assert_true(blocks <= 1 + 3 + 3);
    sched_close(&q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fcfs_order),
        cmocka_unit_test(test_fcfs_preempts_newest),
        cmocka_unit_test(test_token_budget),
        cmocka_unit_test(test_mlfq_skip_join),
        cmocka_unit_test(test_mlfq_demotion_and_starvation),
        cmocka_unit_test(test_mlfq_block_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
