/* test_model_shard.c — the model cut as parallel strategies cut it, against
 * the whole model in one piece.
 *
 * Tensor parallelism: two shards run in two threads whose tensor_reduce
 * sums through shared memory (what the MPI all-reduce does between ranks);
 * their loss must equal the whole model's, each held gradient must equal
 * its part of the whole model's gradient. Pipeline: stages and interleaved
 * chunks run one after another, activations handed over by hand, several
 * micro-batches held in activation slots at once (GPipe's order). The
 * reference is the unsharded model, whose numerics test_model.c checks
 * against PyTorch. */
#include <pthread.h>
#include <string.h>

#include "test_util.h"

#define INI "[model]\nvocab_size = 32\nn_layer = 4\nn_head = 4\nn_embd = 16\nmax_seq = 16\n[attention]\nplugin = dense\n"

enum { B = 4, T = 9, L = 4, H = 4, C = 16 };

static fs_session *g_session; /* for the dense plugin and the host API */

static fs_model *make_model(const fs_model_shard *sh) {
    fs_model_config cfg = g_session->mcfg;
    cfg.shard = *sh;
    fs_model *m;
    fs_error err = {0};
    assert_int_equal(fs_model_create(&m, &cfg, &err), 0);
    const fs_plugin_instance *inst = &g_session->layers[0];
    const fs_attention_vtable *vt = inst->plugin->desc->vtable;
    const fs_model_part *part = fs_model_held(m);
    for (size_t l = 0; l < part->n_layers; l++) {
        fs_attention_config ac = {sizeof ac, (int32_t)part->layer_ids[l], part->n_head, C / H, part->attn_width, 16, 1,
                                  {FS_DEVICE_CPU, 0}, FS_DTYPE_F32};
        void *self;
        assert_int_equal(vt->create(&self, &g_session->host.api, (fs_plugin_ctx *)&inst->ctx, &ac, &err), 0);
        fs_attention_origin origin = {inst->plugin, inst->config, 1};
        fs_model_attach_attention(m, l, vt, self, &origin);
    }
    fs_model_init_weights(m, 42);
    return m;
}

typedef struct batch {
    int32_t in[B * T], tg[B * T];
} batch;

static void make_batch(batch *b) {
    fs_rng r;
    fs_rng_seed(&r, 3);
    for (int i = 0; i < B * T; i++) {
        b->in[i] = (int32_t)fs_rng_below(&r, 32);
        b->tg[i] = (int32_t)fs_rng_below(&r, 32);
    }
}

/* The whole model's loss and gradients. */
static fs_model *reference(const batch *b, double *loss) {
    fs_model_shard whole = {0};
    fs_model *m = make_model(&whole);
    fs_error err = {0};
    assert_int_equal(fs_model_forward(m, b->in, B, T, &err), 0);
    *loss = fs_model_loss(m, b->tg, 1.0f);
    assert_int_equal(fs_model_backward(m, NULL, &err), 0);
    return m;
}

static const fs_param_view *find_view(const fs_model *m, const char *name) {
    for (size_t i = 0; i < fs_model_block(m)->n_views; i++)
        if (!strcmp(fs_model_block(m)->views[i].name, name)) return &fs_model_block(m)->views[i];
    return NULL;
}

/* The gradient of a stage's copy of the tied wte. */
static const float *wte_grad(const fs_model *m) {
    return fs_model_block(m)->grads + fs_model_find(m, "transformer.wte.weight")->offset;
}

/* Every tensor of `part` (a shard of tp_rank) against its part of the
 * whole model's tensor: parameters exactly, gradients within rounding. */
static void compare(const fs_model *ref, const fs_model *m, const float *extra_wte_grad) {
    float *want = malloc(fs_model_block(ref)->n * sizeof(float));
    const fs_param_block *part = fs_model_block(m);
    size_t tp_rank = fs_model_held(m)->tp_rank, tp_size = fs_model_held(m)->tp_size;
    for (size_t i = 0; i < part->n_views; i++) {
        const fs_param_view *v = &part->views[i], *w = find_view(ref, v->name);
        assert_non_null(w);
        assert_int_equal(v->full_shape[0], w->shape[0]);
        assert_int_equal(v->full_shape[1], w->shape[1]);
        fs_param_view_extract(v, tp_rank, tp_size, fs_model_block(ref)->params + w->offset, want);
        test_close(v->name, part->params + v->offset, want, v->numel, 0, 0);
        fs_param_view_extract(v, tp_rank, tp_size, fs_model_block(ref)->grads + w->offset, want);
        float *got = malloc(v->numel * sizeof(float));
        memcpy(got, part->grads + v->offset, v->numel * sizeof(float));
        if (extra_wte_grad && strstr(v->name, "wte"))
            for (size_t j = 0; j < v->numel; j++) got[j] += extra_wte_grad[j];
        char what[128];
        snprintf(what, sizeof what, "grad %s (tensor rank %zu)", v->name, tp_rank);
        test_close(what, got, want, v->numel, 2e-6, 1e-4);
        free(got);
    }
    free(want);
}

/* ---- tensor parallelism: two shards in two threads ---- */

typedef struct tp_shared {
    pthread_barrier_t bar;
    float *slot[2];
    size_t n;
} tp_shared;

typedef struct tp_rank_arg {
    tp_shared *sh;
    int rank;
    fs_model *m;
    const batch *b;
    double loss;
    int rc;
} tp_rank_arg;

/* all-reduce of two ranks: each publishes its buffer, both add the other's */
static int tp_reduce(void *arg, float *x, size_t n, fs_error *err) {
    (void)err;
    tp_rank_arg *a = arg;
    tp_shared *sh = a->sh;
    float *mine = malloc(n * sizeof(float));
    memcpy(mine, x, n * sizeof(float));
    sh->slot[a->rank] = mine;
    pthread_barrier_wait(&sh->bar);
    const float *other = sh->slot[1 - a->rank];
    /* the same order of addition on both ranks: identical results, as MPI's */
    for (size_t i = 0; i < n; i++) x[i] = a->rank == 0 ? mine[i] + other[i] : other[i] + mine[i];
    pthread_barrier_wait(&sh->bar);
    free(mine);
    return FS_OK;
}

static void *tp_run(void *p) {
    tp_rank_arg *a = p;
    fs_error err = {0};
    fs_model_set_tensor_reduce(a->m, tp_reduce, a);
    a->rc = fs_model_forward(a->m, a->b->in, B, T, &err);
    if (!a->rc) {
        a->loss = fs_model_loss(a->m, a->b->tg, 1.0f);
        a->rc = fs_model_backward(a->m, NULL, &err);
    }
    return NULL;
}

static void tensor_parallel_case(int reversible, size_t ff_chunk) {
    batch b;
    make_batch(&b);
    g_session->mcfg.reversible = reversible;
    g_session->mcfg.ff_chunk = ff_chunk;
    double want;
    fs_model *ref = reference(&b, &want);
    tp_shared sh;
    pthread_barrier_init(&sh.bar, NULL, 2);
    tp_rank_arg a[2];
    pthread_t th[2];
    for (int r = 0; r < 2; r++) {
        fs_model_shard s = {.tp_rank = (size_t)r, .tp_size = 2};
        a[r] = (tp_rank_arg){&sh, r, make_model(&s), &b, 0, 0};
        assert_int_equal(fs_model_block(a[r].m)->n < fs_model_block(ref)->n, 1);
    }
    for (int r = 0; r < 2; r++) pthread_create(&th[r], NULL, tp_run, &a[r]);
    for (int r = 0; r < 2; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < 2; r++) {
        assert_int_equal(a[r].rc, 0);
        assert_true(fabs(a[r].loss - want) < 1e-5 * want);
        compare(ref, a[r].m, NULL);
        fs_model_destroy(a[r].m);
    }
    pthread_barrier_destroy(&sh.bar);
    fs_model_destroy(ref);
    g_session->mcfg.reversible = 0;
    g_session->mcfg.ff_chunk = 0;
}

static void test_tensor_parallel(void **state) {
    (void)state;
    tensor_parallel_case(0, 0);
}

static void test_tensor_parallel_reversible_chunked(void **state) {
    (void)state;
    tensor_parallel_case(1, 7);
}

/* ---- pipeline: stages and chunks run in order by hand ---- */

/* Virtual stages of layers {0,1} and {2,3} on two "ranks", or with
 * interleave: rank 0 holds chunks {0} and {2}, rank 1 {1} and {3}. Two
 * micro-batches of 2 sequences each, both forwards before both backwards,
 * in two activation slots. */
static void pipeline_case(int interleaved) {
    g_session->mcfg.reversible = 0;
    g_session->mcfg.ff_chunk = 0;
    batch b;
    make_batch(&b);
    double want;
    fs_model *ref = reference(&b, &want);
    size_t ids_plain[2][2] = {{0, 1}, {2, 3}}, ids_inter[2][2] = {{0, 2}, {1, 3}};
    size_t first_plain[2] = {0, 2}, first_inter[3] = {0, 1, 2};
    fs_model *st[2];
    for (int r = 0; r < 2; r++) {
        fs_model_shard s = {.n_local = 2,
                            .layer_ids = interleaved ? ids_inter[r] : ids_plain[r],
                            .n_chunks = interleaved ? 2 : 1,
                            .chunk_first = interleaved ? first_inter : first_plain,
                            .has_embed = r == 0,
                            .has_head = r == 1};
        st[r] = make_model(&s);
        fs_error err = {0};
        assert_int_equal(fs_model_set_slots(st[r], 2, &err), 0);
    }
    /* the virtual stages in order: (rank, chunk) */
    int order_plain[2][2] = {{0, 0}, {1, 0}}, order_inter[4][2] = {{0, 0}, {1, 0}, {0, 1}, {1, 1}};
    int (*order)[2] = interleaved ? order_inter : order_plain;
    int nv = interleaved ? 4 : 2;
    enum { MB = B / 2 };
    float act[5][MB * T * C], grad[5][MB * T * C];
    double loss = 0;
    fs_error err = {0};
    for (int micro = 0; micro < 2; micro++) {
        const int32_t *in = b.in + micro * MB * T, *tg = b.tg + micro * MB * T;
        for (int v = 0; v < nv; v++) {
            fs_model *m = st[order[v][0]];
            size_t chunk = (size_t)order[v][1];
            fs_model_use_slot(m, (size_t)micro);
            double l = 0;
            int last = v == nv - 1;
            assert_int_equal(fs_model_stage_forward(m, chunk, in, v ? act[v] : NULL, last ? tg : NULL, MB, T, 0.5f,
                                                    last ? &l : NULL, last ? NULL : act[v + 1], &err),
                             0);
            loss += 0.5 * l;
        }
    }
    for (int micro = 0; micro < 2; micro++)
        for (int v = nv; v-- > 0;) {
            fs_model *m = st[order[v][0]];
            fs_model_use_slot(m, (size_t)micro);
            assert_int_equal(fs_model_stage_backward(m, (size_t)order[v][1], v == nv - 1 ? NULL : grad[v + 1],
                                                     v ? grad[v] : NULL, &err),
                             0);
        }
    assert_true(fabs(loss - want) < 1e-5 * want);
    /* the tied embedding: first and last stage each hold wte, and its
     * gradient is the sum of theirs (what embedding_all_reduce does) */
    compare(ref, st[0], wte_grad(st[1]));
    compare(ref, st[1], wte_grad(st[0]));
    for (int r = 0; r < 2; r++) fs_model_destroy(st[r]);
    fs_model_destroy(ref);
}

static void test_pipeline_stages(void **state) {
    (void)state;
    pipeline_case(0);
}

static void test_pipeline_interleaved_chunks(void **state) {
    (void)state;
    pipeline_case(1);
}

/* The parts by hand, 2 tensor ranks: c_attn (2, 6) is [Q | K | V], 2
 * columns each; rank 1 holds the second column of each block. c_proj
 * (4, 2) by rows: rank 1 holds rows 2 and 3. c_fc's bias (4): its last 2. */
static void test_parts_by_hand(void **state) {
    (void)state;
    float qkv[12] = {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15}, part[6], back[12] = {0};
    fs_param_view whole = {.name = "transformer.h.0.attn.c_attn.weight", .ndim = 2, .shape = {2, 6},
                           .full_shape = {2, 6}, .numel = 12}, v;
    fs_param_view_part(&whole, FS_SPLIT_QKV, 2, &v);
    assert_int_equal(v.shape[1], 3);
    fs_param_view_extract(&v, 1, 2, qkv, part);
    const float want_qkv[6] = {1, 3, 5, 11, 13, 15};
    test_close("c_attn rank 1", part, want_qkv, 6, 0, 0);
    fs_param_view_insert(&v, 1, 2, part, back);
    const float want_back[12] = {0, 1, 0, 3, 0, 5, 0, 11, 0, 13, 0, 15};
    test_close("c_attn rank 1 back", back, want_back, 12, 0, 0);
    float proj[8] = {0, 1, 2, 3, 4, 5, 6, 7}, bias[4] = {7, 8, 9, 10};
    whole = (fs_param_view){.ndim = 2, .shape = {4, 2}, .full_shape = {4, 2}, .numel = 8};
    fs_param_view_part(&whole, FS_SPLIT_ROWS, 2, &v);
    fs_param_view_extract(&v, 1, 2, proj, part);
    const float want_proj[4] = {4, 5, 6, 7};
    test_close("c_proj rank 1", part, want_proj, 4, 0, 0);
    whole = (fs_param_view){.ndim = 1, .shape = {4, 1}, .full_shape = {4, 1}, .numel = 4};
    fs_param_view_part(&whole, FS_SPLIT_COLS, 2, &v);
    fs_param_view_extract(&v, 1, 2, bias, part);
    const float want_bias[2] = {9, 10};
    test_close("c_fc bias rank 1", part, want_bias, 2, 0, 0);
    assert_int_equal(fs_model_tensor_split("transformer.h.3.attn.c_attn.bias"), FS_SPLIT_QKV);
    assert_int_equal(fs_model_tensor_split("transformer.h.3.attn.c_proj.bias"), FS_SPLIT_NONE);
    assert_int_equal(fs_model_tensor_split("transformer.wte.weight"), FS_SPLIT_NONE);
}

/* Bad shards are refused with a reason. */
static void test_bad_shards(void **state) {
    (void)state;
    fs_model_config cfg = g_session->mcfg;
    fs_model *m;
    fs_error err = {0};
    cfg.shard = (fs_model_shard){.tp_size = 3};
    assert_int_equal(fs_model_create(&m, &cfg, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "n_head"));
    size_t ids[2] = {2, 1};
    cfg.shard = (fs_model_shard){.n_local = 2, .layer_ids = ids, .has_embed = 1};
    assert_int_equal(fs_model_create(&m, &cfg, &err), FS_ERR_INVALID);
    size_t ok_ids[2] = {0, 1}, first[3] = {0, 1, 2};
    cfg.reversible = 1;
    cfg.shard = (fs_model_shard){.n_local = 2, .layer_ids = ok_ids, .n_chunks = 2, .chunk_first = first};
    assert_int_equal(fs_model_create(&m, &cfg, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "reversible"));
    cfg.shard = (fs_model_shard){.n_local = 2, .layer_ids = ok_ids, .has_embed = 1};
    assert_int_equal(fs_model_create(&m, &cfg, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "reversible"));
}

static int setup(void **state) {
    (void)state;
    g_session = test_session(INI);
    fs_threads_set(1); /* two shards run in two threads */
    return 0;
}

static int teardown(void **state) {
    (void)state;
    fs_session_close(g_session);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_parallel),
        cmocka_unit_test(test_tensor_parallel_reversible_chunked),
        cmocka_unit_test(test_pipeline_stages),
        cmocka_unit_test(test_pipeline_interleaved_chunks),
        cmocka_unit_test(test_parts_by_hand),
        cmocka_unit_test(test_bad_shards),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
