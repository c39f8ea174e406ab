/* test_pipe_schedule.c — pipeline schedules, the layer partition and the
 * executor (plugins/parallel/pipe_schedule.h).
 *
 * Schedules are checked structurally (one forward and one backward of every
 * (chunk, micro) per stage, backward after forward), by a whole-pipeline
 * simulation with unit op times (no deadlock; makespan and bubble against
 * the closed forms), by slot counts (GPipe m, 1F1B min(m, p - s)) and by
 * hand-written op orders. The executor runs on an in-process communicator
 * over threads with rendezvous sends (a send completes only when matched,
 * MPI's behaviour for large messages, so a schedule that waits for its
 * sends too early deadlocks here) and toy stage ops out = a_vs * in whose
 * loss and gradients are known in closed form. */
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "pipe_schedule.h"
#include "test_util.h"

static const int TYPES[] = {FS_PIPE_GPIPE, FS_PIPE_1F1B, FS_PIPE_INTERLEAVED};

/* ---- structure ---- */

static void check_structure(const fs_pipe_schedule *s) {
    size_t v = s->interleave, m = s->micro;
    int *fwd_at = malloc(v * m * sizeof *fwd_at), *bwd_at = malloc(v * m * sizeof *bwd_at);
    for (size_t i = 0; i < v * m; i++) fwd_at[i] = bwd_at[i] = -1;
    assert_int_equal(s->n_ops, 2 * v * m);
    for (size_t i = 0; i < s->n_ops; i++) {
        const fs_pipe_op *o = &s->ops[i];
        assert_true(o->chunk < v && o->micro < m && o->slot < s->slots);
        int *at = o->kind == FS_PIPE_FWD ? fwd_at : bwd_at;
        assert_int_equal(at[o->chunk * m + o->micro], -1); /* exactly once */
        at[o->chunk * m + o->micro] = (int)i;
    }
    for (size_t i = 0; i < v * m; i++) {
        assert_true(fwd_at[i] >= 0 && bwd_at[i] >= 0);
        assert_true(bwd_at[i] > fwd_at[i]);
    }
    free(fwd_at);
    free(bwd_at);
}

/* In-flight (chunk, micro) pairs per chunk, counted independently of the
 * builder's free list: the most any chunk holds at once. */
static size_t max_in_flight(const fs_pipe_schedule *s) {
    size_t *n = calloc(s->interleave, sizeof *n), most = 0;
    for (size_t i = 0; i < s->n_ops; i++) {
        const fs_pipe_op *o = &s->ops[i];
        if (o->kind == FS_PIPE_FWD) {
            if (++n[o->chunk] > most) most = n[o->chunk];
        } else {
            n[o->chunk]--;
        }
    }
    free(n);
    return most;
}

/* ---- simulation ---- */

/* Runs every stage's order with forward costing f and backward b per
 * chunk, each op as soon as its stage is free and its input has arrived
 * (zero transfer time): FWD of vs needs FWD of vs - 1 on that micro-batch,
 * BWD of vs needs BWD of vs + 1. Returns the makespan, or -1 when some
 * stage waits forever (the orders deadlock). */
static double simulate(int type, size_t p, size_t m, size_t v, double f, double b) {
    fs_pipe_schedule *s = calloc(p, sizeof *s);
    char msg[256];
    for (size_t st = 0; st < p; st++)
        assert_int_equal(fs_pipe_schedule_build(&s[st], type, p, st, m, v, msg, sizeof msg), 0);
    size_t nv = p * v;
    double *fwd = malloc(nv * m * sizeof *fwd), *bwd = malloc(nv * m * sizeof *bwd);
    for (size_t i = 0; i < nv * m; i++) fwd[i] = bwd[i] = -1;
    size_t *pos = calloc(p, sizeof *pos);
    double *clock = calloc(p, sizeof *clock), makespan = 0;
    for (int progress = 1; progress;) {
        progress = 0;
        for (size_t st = 0; st < p; st++)
            while (pos[st] < s[st].n_ops) {
                const fs_pipe_op *o = &s[st].ops[pos[st]];
                size_t vs = o->chunk * p + st;
                double dep;
                if (o->kind == FS_PIPE_FWD)
                    dep = vs == 0 ? 0 : fwd[(vs - 1) * m + o->micro];
                else
                    dep = vs + 1 == nv ? fwd[vs * m + o->micro] : bwd[(vs + 1) * m + o->micro];
                if (dep < 0) break;
                double start = clock[st] > dep ? clock[st] : dep, end = start + (o->kind == FS_PIPE_FWD ? f : b);
                (o->kind == FS_PIPE_FWD ? fwd : bwd)[vs * m + o->micro] = end;
                clock[st] = end;
                if (end > makespan) makespan = end;
                pos[st]++;
                progress = 1;
            }
    }
    for (size_t st = 0; st < p; st++)
        if (pos[st] < s[st].n_ops) makespan = -1;
    for (size_t st = 0; st < p; st++) fs_pipe_schedule_release(&s[st]);
    free(s);
    free(fwd);
    free(bwd);
    free(pos);
    free(clock);
    return makespan;
}

static void test_all_shapes(void **state) {
    (void)state;
    size_t built = 0, interleaved = 0;
    for (size_t p = 1; p <= 4; p++)
        for (size_t m = 1; m <= 8; m++)
            for (size_t v = 1; v <= 3; v++)
                for (size_t k = 0; k < 3; k++) {
                    int type = TYPES[k];
                    int valid = type == FS_PIPE_INTERLEAVED ? p >= 2 && v >= 2 && m % p == 0 : v == 1;
                    for (size_t st = 0; st < p; st++) {
                        fs_pipe_schedule s;
                        char msg[256] = "";
                        int rc = fs_pipe_schedule_build(&s, type, p, st, m, v, msg, sizeof msg);
                        if (!valid) {
                            assert_int_equal(rc, FS_ERR_INVALID);
                            assert_true(strlen(msg) > 10);
                            assert_null(s.ops);
                            continue;
                        }
                        assert_int_equal(rc, 0);
                        check_structure(&s);
                        assert_int_equal(s.slots, max_in_flight(&s));
                        if (type == FS_PIPE_GPIPE) assert_int_equal(s.slots, m);
                        if (type == FS_PIPE_1F1B) assert_int_equal(s.slots, m < p - st ? m : p - st);
                        fs_pipe_schedule_release(&s);
                        built++;
                    }
                    if (!valid) continue;
                    /* A stage is busy m * v * (f + b); the closed form puts
                     * the bubble at (p - 1) / (v * m + p - 1) of the step
                     * (v = 1 for GPipe and 1F1B), i.e. the makespan is
                     * (v * m + p - 1) * (f + b), for any f and b. */
                    static const double costs[][2] = {{1, 2}, {1, 1}, {2, 3}};
                    for (size_t c = 0; c < 3; c++) {
                        double f = costs[c][0], b = costs[c][1], t = simulate(type, p, m, v, f, b);
                        if (t < 0) fail_msg("%s p=%zu m=%zu v=%zu deadlocks", fs_pipe_schedule_name(type), p, m, v);
                        double bubble = 1 - (double)(m * v) * (f + b) / t;
                        double theory = (double)(p - 1) / (double)(v * m + p - 1);
                        if (fabs(bubble - theory) > 1e-12)
                            fail_msg("%s p=%zu m=%zu v=%zu f=%g b=%g: bubble %.6f, theory %.6f",
                                     fs_pipe_schedule_name(type), p, m, v, f, b, bubble, theory);
                        /* interleaving shrinks the bubble of plain 1F1B */
                        if (type == FS_PIPE_INTERLEAVED && !(bubble < (double)(p - 1) / (double)(m + p - 1)))
                            fail_msg("interleaved p=%zu m=%zu v=%zu: bubble %.6f not below 1F1B's", p, m, v, bubble);
                    }
                    if (type == FS_PIPE_INTERLEAVED && m > p) interleaved++;
                }
    /* gpipe and 1f1b: (1 + 2 + 3 + 4) stages x 8 m each; interleaved (p, m):
     * (2; 2,4,6,8), (3; 3,6), (4; 4,8) x v = 2, 3 x p stages = 16 + 12 + 16 */
    assert_int_equal(built, 2 * 80 + 44);
    /* m > p: (2; 4,6,8), (3; 6), (4; 8) x 2 */
    assert_int_equal(interleaved, 10);
}

/* Hand-computed makespans (chunk forward 1, backward 2). */
static void test_makespan_by_hand(void **state) {
    (void)state;
    /* GPipe p = 2, m = 2: stage 0 F0 [0,1] F1 [1,2]; stage 1 F0 [1,2] F1
     * [2,3] B0 [3,5] B1 [5,7]; stage 0 B0 [5,7] B1 [7,9]: 9 = 3 * (2+2-1). */
    assert_true(simulate(FS_PIPE_GPIPE, 2, 2, 1, 1, 2) == 9.0);
    /* 1F1B p = 2, m = 3, stage 0 = F0 F1 B0 F2 B1 B2, stage 1 = F0 B0 F1 B1 F2 B2:
     * s0 F0 [0,1] F1 [1,2]; s1 F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7];
     * s0 B0 [4,6] F2 [6,7] B1 [7,9]; s1 F2 [7,8] B2 [8,10]; s0 B2 [10,12]:
     * 12 = 3 * (3 + 2 - 1). */
    assert_true(simulate(FS_PIPE_1F1B, 2, 3, 1, 1, 2) == 12.0);
    /* interleaved p = 2, v = 2, m = 2 (all forwards first): 4 forwards of
     * cost 1 flow through 4 virtual stages on 2 ranks, then the backwards:
     * 3 * (2 * 2 + 2 - 1) = 15. */
    assert_true(simulate(FS_PIPE_INTERLEAVED, 2, 2, 2, 1, 2) == 15.0);
}

/* Op order as text: "F0.1" = forward of chunk 0, micro-batch 1. */
static void order_text(const fs_pipe_schedule *s, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < s->n_ops && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%c%zu.%zu", i ? " " : "", s->ops[i].kind == FS_PIPE_FWD ? 'F' : 'B',
                              s->ops[i].chunk, s->ops[i].micro);
}

static void expect_order(int type, size_t p, size_t st, size_t m, size_t v, const char *want, size_t slots) {
    fs_pipe_schedule s;
    char msg[256], got[1024];
    assert_int_equal(fs_pipe_schedule_build(&s, type, p, st, m, v, msg, sizeof msg), 0);
    order_text(&s, got, sizeof got);
    if (strcmp(got, want))
        fail_msg("%s p=%zu stage %zu:\n got  %s\n want %s", fs_pipe_schedule_name(type), p, st, got, want);
    assert_int_equal(s.slots, slots);
    fs_pipe_schedule_release(&s);
}

static void test_orders_by_hand(void **state) {
    (void)state;
    expect_order(FS_PIPE_GPIPE, 3, 1, 3, 1, "F0.0 F0.1 F0.2 B0.0 B0.1 B0.2", 3);
    /* 1F1B p = 4: stage 0 warms up with 3 forwards, stage 3 with none */
    expect_order(FS_PIPE_1F1B, 4, 0, 6, 1, "F0.0 F0.1 F0.2 F0.3 B0.0 F0.4 B0.1 F0.5 B0.2 B0.3 B0.4 B0.5", 4);
    expect_order(FS_PIPE_1F1B, 4, 3, 6, 1, "F0.0 B0.0 F0.1 B0.1 F0.2 B0.2 F0.3 B0.3 F0.4 B0.4 F0.5 B0.5", 1);
    expect_order(FS_PIPE_1F1B, 4, 1, 2, 1, "F0.0 F0.1 B0.0 B0.1", 2); /* warm-up capped at m */
    /* Megatron-LM's interleaving, p = 2, v = 2, m = 4 (8 chunk-forwards).
     * Forward k: chunk (k % 4) / 2, micro (k / 4) * 2 + k % 2; backward k:
     * chunk 1 - (k % 4) / 2. Stage 0 warms up with (2-0-1)*2 + (2-1)*2 = 4
     * forwards, stage 1 with 2; then forward k + warm-up, backward k. */
    expect_order(FS_PIPE_INTERLEAVED, 2, 0, 4, 2,
                 "F0.0 F0.1 F1.0 F1.1 F0.2 B1.0 F0.3 B1.1 F1.2 B0.0 F1.3 B0.1 B1.2 B1.3 B0.2 B0.3", 4);
    expect_order(FS_PIPE_INTERLEAVED, 2, 1, 4, 2,
                 "F0.0 F0.1 F1.0 B1.0 F1.1 B1.1 F0.2 B0.0 F0.3 B0.1 F1.2 B1.2 F1.3 B1.3 B0.2 B0.3", 3);
}

static void test_bad_shapes(void **state) {
    (void)state;
    struct {
        int type;
        size_t p, st, m, v;
        const char *fragment;
    } bad[] = {
        {FS_PIPE_1F1B, 0, 0, 4, 1, "must be >= 1"},
        {FS_PIPE_1F1B, 2, 2, 4, 1, "outside 0..1"},
        {FS_PIPE_GPIPE, 2, 0, 4, 2, "interleave = 2"},
        {FS_PIPE_1F1B, 2, 0, 4, 3, "use schedule = interleaved"},
        {FS_PIPE_INTERLEAVED, 1, 0, 4, 2, "pipeline >= 2"},
        {FS_PIPE_INTERLEAVED, 2, 0, 4, 1, "interleave >= 2"},
        {FS_PIPE_INTERLEAVED, 4, 0, 6, 2, "microbatches (6) to be a multiple of pipeline (4)"},
        {7, 2, 0, 4, 1, "unknown pipeline schedule"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fs_pipe_schedule s;
        char msg[256] = "";
        assert_int_equal(
            fs_pipe_schedule_build(&s, bad[i].type, bad[i].p, bad[i].st, bad[i].m, bad[i].v, msg, sizeof msg),
            FS_ERR_INVALID);
        if (!strstr(msg, bad[i].fragment)) fail_msg("case %zu: '%s' lacks '%s'", i, msg, bad[i].fragment);
        fs_pipe_schedule_release(&s);
    }
    assert_int_equal(fs_pipe_schedule_parse("1f1b"), FS_PIPE_1F1B);
    assert_int_equal(fs_pipe_schedule_parse("interleaved"), FS_PIPE_INTERLEAVED);
    assert_int_equal(fs_pipe_schedule_parse("gpipe"), FS_PIPE_GPIPE);
    assert_int_equal(fs_pipe_schedule_parse("GPipe"), -1);
    /* default micro-batches: 1 without a pipeline, else the most up to 4 p
     * dividing the per-rank batch (a multiple of p when interleaved) */
    assert_int_equal(fs_pipe_default_microbatches(12, 1, 0), 1);
    assert_int_equal(fs_pipe_default_microbatches(12, 2, 0), 6); /* 8, 7 do not divide 12 */
    assert_int_equal(fs_pipe_default_microbatches(64, 4, 0), 16);
    assert_int_equal(fs_pipe_default_microbatches(7, 2, 0), 7);   /* 7 <= 8 and divides 7 */
    assert_int_equal(fs_pipe_default_microbatches(9, 2, 1), 0);   /* no even divisor of 9 */
    assert_int_equal(fs_pipe_default_microbatches(12, 4, 1), 12); /* 16 does not divide 12; 12 = 3 x 4 */
    fs_pipe_schedule_release(NULL);
}

/* ---- partition ---- */

static void expect_partition(size_t n, size_t k, const char *spec, double e, double h, const char *want) {
    size_t first[64], count[64];
    char msg[256] = "", got[512] = "";
    int rc = fs_pipe_partition(n, k, spec, e, h, first, count, msg, sizeof msg);
    if (rc) fail_msg("partition %zu/%zu '%s': %s", n, k, spec ? spec : "", msg);
    size_t len = 0;
    for (size_t i = 0; i < k; i++)
        len +=
            (size_t)snprintf(got + len, sizeof got - len, "%s%zu-%zu", i ? "," : "", first[i], first[i] + count[i] - 1);
    if (strcmp(got, want)) fail_msg("partition %zu layers / %zu (e %g, h %g): got %s, want %s", n, k, e, h, got, want);
}

static void test_partition(void **state) {
    (void)state;
    expect_partition(8, 4, NULL, 0, 0, "0-1,2-3,4-5,6-7");
    expect_partition(8, 1, "", 0, 0, "0-7");
    /* 7 layers, 2 stages: max 4 either way; the later stage takes 4 */
    expect_partition(7, 2, NULL, 0, 0, "0-2,3-6");
    /* the head costs 1 layer: (4, 3 + 1) */
    expect_partition(7, 2, NULL, 0, 1, "0-3,4-6");
    /* 8 layers, 4 stages, embedding 1 and head 2: (2,2,2,2) costs 3,2,2,4;
     * the best largest cost is 3: (1,3,3,1) costs 2,3,3,3, and (2,3,2,1)
     * 3,3,2,3 too: the later stages take as many layers as they can */
    expect_partition(8, 4, NULL, 1, 2, "0-0,1-3,4-6,7-7");
    /* a head worth 2.5 layers on 6 layers / 3 stages: (2, 3, 1) costs 2, 3,
     * 3.5; (3, 2, 1): 3, 2, 3.5 -> max 3.5, the later stages full */
    expect_partition(6, 3, NULL, 0, 2.5, "0-1,2-4,5-5");
    /* every stage one layer */
    expect_partition(3, 3, NULL, 5, 5, "0-0,1-1,2-2");
    /* by hand, with spaces and single layers */
    expect_partition(8, 3, "0-3, 4 ,5-7", 0, 0, "0-3,4-4,5-7");
    expect_partition(8, 2, "0-3,4-7", 9, 9, "0-3,4-7");
}

static void test_partition_errors(void **state) {
    (void)state;
    struct {
        size_t n, k;
        const char *spec, *fragment;
    } bad[] = {
        {8, 2, "0-3,5-7", "layers 4..4 belong to no stage (gap between '0-3' and '5-7')"},
        {8, 2, "0-4,4-7", "overlaps range 1 '0-4'"},
        {8, 2, "0-3,4-8", "layer 8 is out of range (layers are 0..7)"},
        {8, 3, "0-3,4-7", "2 ranges for 3 virtual stages"},
        {8, 2, "1-3,4-7", "layers 0..0 belong to no stage"},
        {8, 2, "0-3,4-6", "layers 7..7 belong to no stage"},
        {8, 2, "0-3,7-4", "runs backwards"},
        {8, 2, "0-3,x", "range 2 'x' is not a layer range"},
        {8, 2, "0-3,,4-7", "range 2 '' is not a layer range"},
        {8, 2, "0-3,4-", "is not a layer range"},
        {4, 8, NULL, "8 virtual stages (pipeline x interleave) for n_layer = 4"},
        {4, 0, NULL, "must be >= 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t first[16], count[16];
        char msg[256] = "";
        assert_int_equal(fs_pipe_partition(bad[i].n, bad[i].k, bad[i].spec, 0, 0, first, count, msg, sizeof msg),
                         FS_ERR_INVALID);
        if (!strstr(msg, bad[i].fragment)) fail_msg("case %zu: '%s' lacks '%s'", i, msg, bad[i].fragment);
    }
    size_t first[2], count[2];
    char msg[128];
    assert_int_equal(fs_pipe_partition(4, 2, NULL, -1, 0, first, count, msg, sizeof msg), FS_ERR_INVALID);
    double e, h;
    fs_pipe_default_costs(768, 1024, 50257, &e, &h);
    /* 2 C V / (24 C^2 + 4 T C) = 2 * 50257 / (24 * 768 + 4 * 1024) = 4.47 */
    assert_true(e == 0.0 && fabs(h - 100514.0 / 22528.0) < 1e-12);
}

/* ---- a communicator over threads ---- */

typedef struct fake_world fake_world;

struct fs_comm_request {
    int is_send, src, dst, tag, done, pending, waited;
    float *data;
    size_t n;
    fs_comm_request *next_all;
};

struct fake_world {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int size;
    double timeout_s;
    fs_comm_request *all; /* every request, freed with the world */
    int duplicates;       /* two unmatched messages with the same (src, dst, tag) */
    int mismatches;       /* a send and its receive of different sizes */
    size_t sent_floats;
};

typedef struct fake_rank {
    fake_world *w;
    int rank;
    fs_comm comm;
} fake_rank;

static int fk_rank(const fs_comm *c, const fs_comm_group *g) {
    (void)g;
    return ((const fake_rank *)c->impl)->rank;
}
static int fk_size(const fs_comm *c, const fs_comm_group *g) {
    (void)g;
    return ((const fake_rank *)c->impl)->w->size;
}

static int fk_start(fs_comm *c, int is_send, const fs_tensor *t, int peer, int tag, fs_comm_request **req,
                    fs_error *err) {
    fake_rank *r = c->impl;
    fake_world *w = r->w;
    if (peer < 0 || peer >= w->size || peer == r->rank) {
        err->status = FS_ERR_INVALID;
        snprintf(err->message, sizeof err->message, "fake comm: bad peer %d", peer);
        return FS_ERR_INVALID;
    }
    fs_comm_request *q = calloc(1, sizeof *q);
    q->is_send = is_send;
    q->src = is_send ? r->rank : peer;
    q->dst = is_send ? peer : r->rank;
    q->tag = tag;
    q->data = t->data;
    q->n = fs_tensor_numel(t);
    pthread_mutex_lock(&w->mu);
    q->next_all = w->all;
    w->all = q;
    fs_comm_request *match = NULL;
    for (fs_comm_request *o = w->all; o; o = o->next_all)
        if (o->pending && o->src == q->src && o->dst == q->dst && o->tag == q->tag) {
            if (o->is_send == is_send)
                w->duplicates++;
            else if (!match)
                match = o;
        }
    if (match) {
        fs_comm_request *s = is_send ? q : match, *rv = is_send ? match : q;
        if (s->n != rv->n) w->mismatches++;
        memcpy(rv->data, s->data,
               (s->n < rv->n ? s->n : rv->n) * sizeof(float)); /* the sender's buffer now, not at send_start */
        w->sent_floats += s->n;
        match->pending = 0;
        match->done = q->done = 1;
        pthread_cond_broadcast(&w->cv);
    } else {
        q->pending = 1;
    }
    pthread_mutex_unlock(&w->mu);
    *req = q;
    return FS_OK;
}

static int fk_send_start(fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag,
                         fs_comm_request **req, fs_error *err) {
    (void)g;
    return fk_start(c, 1, t, peer, tag, req, err);
}
static int fk_recv_start(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag, fs_comm_request **req,
                         fs_error *err) {
    (void)g;
    return fk_start(c, 0, t, peer, tag, req, err);
}

static int fk_wait(fs_comm *c, fs_comm_request *q, fs_error *err) {
    fake_rank *r = c->impl;
    fake_world *w = r->w;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    double t = (double)deadline.tv_sec + deadline.tv_nsec * 1e-9 + w->timeout_s;
    deadline.tv_sec = (time_t)t;
    deadline.tv_nsec = (long)((t - (double)deadline.tv_sec) * 1e9);
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    while (!q->done && rc == 0) rc = pthread_cond_timedwait(&w->cv, &w->mu, &deadline);
    int done = q->done;
    q->waited++;
    pthread_mutex_unlock(&w->mu);
    if (!done) {
        err->status = FS_ERR_COMM;
        snprintf(err->message, sizeof err->message,
                 "fake comm: rank %d: %s of tag %d with rank %d timed out after %g s", r->rank,
                 q->is_send ? "send" : "receive", q->tag, q->is_send ? q->dst : q->src, w->timeout_s);
        return FS_ERR_COMM;
    }
    return FS_OK;
}

static void world_init(fake_world *w, int size, double timeout_s) {
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->size = size;
    w->timeout_s = timeout_s;
}

static void world_release(fake_world *w) {
    for (fs_comm_request *q = w->all, *next; q; q = next) {
        next = q->next_all;
        free(q);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

static void rank_init(fake_rank *r, fake_world *w, int rank) {
    memset(r, 0, sizeof *r);
    r->w = w;
    r->rank = rank;
    r->comm.struct_size = sizeof r->comm;
    r->comm.engine = "fake";
    r->comm.impl = r;
    r->comm.rank = fk_rank;
    r->comm.size = fk_size;
    r->comm.send_start = fk_send_start;
    r->comm.recv_start = fk_recv_start;
    r->comm.wait = fk_wait;
    r->comm.timeout_s = w->timeout_s;
}

/* ---- toy stage ops: virtual stage vs computes out = a_vs * in ---- */

#define NX 5

typedef struct toy_model {
    size_t p, v, m, n_vs;
    double a[12][NX], x[8][NX], t[8][NX]; /* per vstage; per micro-batch input and target */
} toy_model;

typedef struct toy_stage {
    const toy_model *tm;
    size_t stage, slots;
    float a[3][NX]; /* this stage's chunks */
    double da[3][NX], loss;
    float xf[8][NX];
    /* per (chunk, slot): the micro-batch in it, the `in` pointer and a copy */
    int busy[3][8];
    size_t micro_in[3][8];
    const float *in_ptr[3][8];
    float in_copy[3][8][NX];
    int problems;
    int fail_forward_at; /* -1 = never: else the forward number that fails */
    int forwards;
} toy_stage;

static void problem(toy_stage *ts, const char *what, size_t chunk, size_t micro) {
    fprintf(stderr, "stage %zu chunk %zu micro %zu: %s\n", ts->stage, chunk, micro, what);
    ts->problems++;
}

static int toy_forward(void *ctx, size_t chunk, size_t micro, size_t slot, const float *in, float *out, fs_error *err) {
    toy_stage *ts = ctx;
    const toy_model *tm = ts->tm;
    size_t vs = chunk * tm->p + ts->stage;
    int first = vs == 0, last = vs + 1 == tm->n_vs;
    if (ts->fail_forward_at >= 0 && ts->forwards++ == ts->fail_forward_at) {
        err->status = FS_ERR_RUNTIME;
        snprintf(err->message, sizeof err->message, "toy forward failed");
        return FS_ERR_RUNTIME;
    }
    if (slot >= ts->slots || ts->busy[chunk][slot]) {
        problem(ts, "forward into a busy or out-of-range slot", chunk, micro);
        return FS_OK;
    }
    if ((in == NULL) != first || (out == NULL) != last) problem(ts, "in/out NULL-ness", chunk, micro);
    const float *x = first ? ts->xf[micro] : in;
    ts->busy[chunk][slot] = 1;
    ts->micro_in[chunk][slot] = micro;
    ts->in_ptr[chunk][slot] = x;
    memcpy(ts->in_copy[chunk][slot], x, sizeof ts->in_copy[chunk][slot]);
    for (size_t i = 0; i < NX; i++) {
        float y = ts->a[chunk][i] * x[i];
        if (last)
            ts->loss += (double)y * tm->t[micro][i];
        else
            out[i] = y;
    }
    return FS_OK;
}

static int toy_backward(void *ctx, size_t chunk, size_t micro, size_t slot, const float *dout, float *din,
                        fs_error *err) {
    (void)err;
    toy_stage *ts = ctx;
    const toy_model *tm = ts->tm;
    size_t vs = chunk * tm->p + ts->stage;
    int first = vs == 0, last = vs + 1 == tm->n_vs;
    if (slot >= ts->slots || !ts->busy[chunk][slot] || ts->micro_in[chunk][slot] != micro) {
        problem(ts, "backward from a slot that does not hold this micro-batch", chunk, micro);
        return FS_OK;
    }
    if ((dout == NULL) != last || (din == NULL) != first) problem(ts, "dout/din NULL-ness", chunk, micro);
    const float *x = ts->in_ptr[chunk][slot]; /* the executor promised it is still there */
    if (memcmp(x, ts->in_copy[chunk][slot], sizeof ts->in_copy[chunk][slot]))
        problem(ts, "the forward's input changed before its backward", chunk, micro);
    for (size_t i = 0; i < NX; i++) {
        double g = last ? tm->t[micro][i] : (double)dout[i];
        ts->da[chunk][i] += g * x[i];
        if (!first) din[i] = (float)(ts->a[chunk][i] * g);
    }
    ts->busy[chunk][slot] = 0;
    return FS_OK;
}

typedef struct toy_thread {
    toy_stage ts;
    fake_rank fr;
    int type;
    int rc;
    fs_error err;
    int use_workspace;
} toy_thread;

static void *toy_main(void *arg) {
    toy_thread *th = arg;
    const toy_model *tm = th->ts.tm;
    fs_pipe_schedule s;
    char msg[256];
    th->rc = fs_pipe_schedule_build(&s, th->type, tm->p, th->ts.stage, tm->m, tm->v, msg, sizeof msg);
    if (th->rc) {
        snprintf(th->err.message, sizeof th->err.message, "%s", msg);
        return NULL;
    }
    th->ts.slots = s.slots;
    fs_stage_ops ops = {sizeof ops, &th->ts, NX, toy_forward, toy_backward};
    float *ws = NULL;
    if (th->use_workspace) ws = malloc((fs_pipe_workspace_floats(&s, NX) + 1) * sizeof(float));
    th->rc = th->use_workspace ? fs_pipe_run_ws(&s, &ops, &th->fr.comm, NULL, ws, &th->err)
                               : fs_pipe_run(&s, &ops, &th->fr.comm, NULL, &th->err);
    free(ws);
    fs_pipe_schedule_release(&s);
    return NULL;
}

static void toy_init(toy_model *tm, size_t p, size_t m, size_t v, uint64_t seed) {
    memset(tm, 0, sizeof *tm);
    tm->p = p;
    tm->m = m;
    tm->v = v;
    tm->n_vs = p * v;
    fs_rng r;
    fs_rng_seed(&r, seed);
    /* a in [0.5, 1.5] so products of 12 factors stay O(1) */
    for (size_t k = 0; k < tm->n_vs; k++)
        for (size_t i = 0; i < NX; i++) tm->a[k][i] = (float)(0.5f + fs_rng_float(&r));
    for (size_t u = 0; u < m; u++)
        for (size_t i = 0; i < NX; i++) {
            tm->x[u][i] = (float)fs_rng_normal(&r);
            tm->t[u][i] = (float)fs_rng_normal(&r);
        }
}

/* Runs the pipeline on p threads and checks the loss and every d a_vs
 * against the closed form: loss = sum_u sum_i t_u x_u prod_k a_k and
 * d loss / d a_k[i] = sum_u t_u[i] x_u[i] prod_{j != k} a_j[i]. */
static void run_toy(int type, size_t p, size_t m, size_t v, int use_workspace) {
    toy_model tm;
    toy_init(&tm, p, m, v, 1000 + p * 100 + m * 10 + v);
    fake_world w;
    world_init(&w, (int)p, 30.0);
    toy_thread *th = calloc(p, sizeof *th);
    pthread_t *tid = calloc(p, sizeof *tid);
    for (size_t st = 0; st < p; st++) {
        toy_stage *ts = &th[st].ts;
        ts->tm = &tm;
        ts->stage = st;
        ts->fail_forward_at = -1;
        for (size_t c = 0; c < v; c++)
            for (size_t i = 0; i < NX; i++) ts->a[c][i] = (float)tm.a[c * p + st][i];
        for (size_t u = 0; u < m; u++)
            for (size_t i = 0; i < NX; i++) ts->xf[u][i] = (float)tm.x[u][i];
        rank_init(&th[st].fr, &w, (int)st);
        th[st].type = type;
        th[st].use_workspace = use_workspace;
        pthread_create(&tid[st], NULL, toy_main, &th[st]);
    }
    for (size_t st = 0; st < p; st++) pthread_join(tid[st], NULL);
    double loss = 0, want_loss = 0;
    for (size_t st = 0; st < p; st++) {
        if (th[st].rc)
            fail_msg("%s p=%zu m=%zu v=%zu stage %zu: %s", fs_pipe_schedule_name(type), p, m, v, st,
                     th[st].err.message);
        assert_int_equal(th[st].ts.problems, 0);
        loss += th[st].ts.loss;
    }
    assert_int_equal(w.duplicates, 0);
    assert_int_equal(w.mismatches, 0);
    /* every request completed exactly once (MPI would leak the others) */
    for (fs_comm_request *q = w.all; q; q = q->next_all) assert_int_equal(q->waited, 1);
    /* every boundary carries one activation and one gradient per micro-batch */
    assert_int_equal(w.sent_floats, (p * v - 1) * 2 * m * NX);
    for (size_t u = 0; u < m; u++)
        for (size_t i = 0; i < NX; i++) {
            double prod = tm.t[u][i] * tm.x[u][i];
            for (size_t k = 0; k < tm.n_vs; k++) prod *= tm.a[k][i];
            want_loss += prod;
        }
    if (fabs(loss - want_loss) > 1e-5 * (1 + fabs(want_loss)))
        fail_msg("%s p=%zu m=%zu v=%zu: loss %.9g, want %.9g", fs_pipe_schedule_name(type), p, m, v, loss, want_loss);
    for (size_t k = 0; k < tm.n_vs; k++)
        for (size_t i = 0; i < NX; i++) {
            double want = 0;
            for (size_t u = 0; u < m; u++) {
                double prod = tm.t[u][i] * tm.x[u][i];
                for (size_t j = 0; j < tm.n_vs; j++)
                    if (j != k) prod *= tm.a[j][i];
                want += prod;
            }
            double got = th[k % p].ts.da[k / p][i];
            if (fabs(got - want) > 1e-5 * (1 + fabs(want)))
                fail_msg("%s p=%zu m=%zu v=%zu: d a[%zu][%zu] = %.9g, want %.9g", fs_pipe_schedule_name(type), p, m, v,
                         k, i, got, want);
        }
    world_release(&w);
    free(th);
    free(tid);
}

static void test_executor(void **state) {
    (void)state;
    size_t runs = 0;
    for (size_t p = 1; p <= 4; p++)
        for (size_t m = 1; m <= 8; m++)
            for (size_t v = 1; v <= 3; v++)
                for (size_t k = 0; k < 3; k++) {
                    int type = TYPES[k];
                    if (type == FS_PIPE_INTERLEAVED ? !(p >= 2 && v >= 2 && m % p == 0) : v != 1) continue;
                    run_toy(type, p, m, v, 0);
                    runs++;
                }
    assert_true(runs > 70);
    run_toy(FS_PIPE_INTERLEAVED, 2, 4, 3, 1); /* caller-owned workspace */
    run_toy(FS_PIPE_1F1B, 3, 5, 1, 1);
}

/* A stage whose neighbour never runs: the executor returns the comm's
 * FS_ERR_COMM (after its timeout) with where it was, instead of hanging. */
static void test_dead_peer(void **state) {
    (void)state;
    toy_model tm;
    toy_init(&tm, 2, 2, 1, 7);
    fake_world w;
    world_init(&w, 2, 0.2);
    toy_thread th;
    memset(&th, 0, sizeof th);
    th.ts.tm = &tm;
    th.ts.stage = 0;
    th.ts.fail_forward_at = -1;
    rank_init(&th.fr, &w, 0);
    th.type = FS_PIPE_1F1B;
    toy_main(&th);
    assert_int_equal(th.rc, FS_ERR_COMM);
    assert_non_null(strstr(th.err.message, "pipeline stage 0"));
    assert_non_null(strstr(th.err.message, "timed out"));
    world_release(&w);
}

/* A failing forward stops the step with its own error. */
static void test_ops_error(void **state) {
    (void)state;
    toy_model tm;
    toy_init(&tm, 1, 3, 1, 9);
    toy_thread th;
    memset(&th, 0, sizeof th);
    th.ts.tm = &tm;
    th.ts.fail_forward_at = 1;
    th.type = FS_PIPE_GPIPE;
    toy_main(&th); /* one stage: no communicator needed */
    assert_int_equal(th.rc, FS_ERR_RUNTIME);
    assert_string_equal(th.err.message, "toy forward failed");
}

static void test_bad_calls(void **state) {
    (void)state;
    fs_pipe_schedule s;
    char msg[128];
    assert_int_equal(fs_pipe_schedule_build(&s, FS_PIPE_1F1B, 2, 1, 2, 1, msg, sizeof msg), 0);
    toy_stage ts;
    memset(&ts, 0, sizeof ts);
    fs_stage_ops ops = {sizeof ops, &ts, NX, toy_forward, toy_backward};
    fake_world w;
    world_init(&w, 3, 1.0);
    fake_rank fr;
    rank_init(&fr, &w, 1);
    fs_error err = {0};
    /* the group has 3 ranks, the schedule 2 stages */
    assert_int_equal(fs_pipe_run(&s, &ops, &fr.comm, NULL, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "stage 1 of 2"));
    /* a 1.0 communicator without non-blocking point to point */
    fr.comm.struct_size = (uint32_t)offsetof(fs_comm, send_start);
    assert_int_equal(fs_pipe_run(&s, &ops, &fr.comm, NULL, &err), FS_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "'fake'"));
    assert_int_equal(fs_pipe_workspace_floats(&s, 10), 4 * 1 * 1 * 10); /* stage 1 of 2: one slot */
    fs_pipe_schedule_release(&s);
    world_release(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_shapes),     cmocka_unit_test(test_makespan_by_hand),
        cmocka_unit_test(test_orders_by_hand), cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_partition),      cmocka_unit_test(test_partition_errors),
        cmocka_unit_test(test_executor),       cmocka_unit_test(test_dead_peer),
        cmocka_unit_test(test_ops_error),      cmocka_unit_test(test_bad_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
