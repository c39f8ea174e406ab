/* test_seq.c — decoding state apart from the weights (model/seq.h), and
 * plugin tensors in the model's one parameter block.
 *
 * The reference for a decoded token is the training forward of the whole
 * prefix (an independent code path: batched matmuls and the plugin's
 * forward, not its decode step). Sequences interleaved over one model must
 * each get exactly what they get alone. */
#include <omp.h>
#include <string.h>

#include "core/threads.h"
#include "test_util.h"

#define TINY                                                                                                     \
    "[model]\nvocab_size = 32\nn_layer = 2\nn_head = 2\nn_embd = 16\nmax_seq = 24\n[attention]\nplugin = %s\n%s"

static fs_session *session_of(const char *plugin, const char *keys) {
    char ini[512];
    snprintf(ini, sizeof ini, TINY, plugin, keys);
    fs_session *s = test_session(ini);
    fs_model_init_weights(s->model, 11);
    fs_error err = {0};
    assert_int_equal(fs_model_init_plugin_params(s->model, &err), 0);
    return s;
}

static void tokens_of(int32_t *t, size_t n, uint32_t salt) {
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)((i * 7 + salt * 13 + 3) % 32);
}

/* Two sequences of different prompts, decoded in alternation over one model,
 * against the forward of each prefix. */
static void check_interleaved(const char *plugin, const char *keys) {
    fs_session *s = session_of(plugin, keys);
    fs_model *m = s->model;
    enum { N = 20, V = 32 };
    int32_t a[N], b[N];
    tokens_of(a, N, 1);
    tokens_of(b, N, 2);
    fs_error err = {0};
    float *want_a = test_fvec(N * V), *want_b = test_fvec(N * V), got[V];
    assert_int_equal(fs_model_forward(m, a, 1, N, &err), 0);
    memcpy(want_a, fs_model_logits(m), N * V * sizeof(float));
    assert_int_equal(fs_model_forward(m, b, 1, N, &err), 0);
    memcpy(want_b, fs_model_logits(m), N * V * sizeof(float));
    fs_seq *sa = test_seq(m, 1, 0), *sb = test_seq(m, 1, 0);
    /* b starts five tokens later: the two are at different positions */
    for (size_t t = 0; t < N + 5; t++) {
        if (t < N) {
            assert_int_equal(fs_seq_decode(sa, &a[t], got, &err), 0);
            test_close("sequence a", got, want_a + t * V, V, 1e-5, 1e-4);
        }
        if (t >= 5) {
            assert_int_equal(fs_seq_decode(sb, &b[t - 5], got, &err), 0);
            test_close("sequence b", got, want_b + (t - 5) * V, V, 1e-5, 1e-4);
        }
    }
    assert_int_equal(fs_seq_pos(sa), N);
    assert_int_equal(fs_seq_pos(sb), N);
    fs_seq_destroy(sa);
    fs_seq_destroy(sb);
    free(want_a);
    free(want_b);
    fs_session_close(s);
}

static void test_interleaved_dense(void **state) {
    (void)state;
    check_interleaved("dense", "");
}

static void test_interleaved_longformer(void **state) {
    (void)state;
    check_interleaved("longformer", "window = 4\nglobal = first:2\n");
}

/* A sequence's thread count holds for its own steps only: the process's
 * setting (OpenMP's per-thread count, fs_threads_get) is what it was. */
static void test_seq_threads_are_its_own(void **state) {
    (void)state;
    fs_session *s = session_of("dense", "");
    fs_threads_set(2);
    int before = omp_get_max_threads(), pool = fs_threads_get();
    fs_seq_config sc = {.B = 1, .threads = 1};
    fs_seq *seq = NULL;
    fs_error err = {0};
    assert_int_equal(fs_seq_create(&seq, s->model, &sc, &err), 0);
    int32_t tok = 3;
    float logits[32];
    assert_int_equal(fs_seq_decode(seq, &tok, logits, &err), 0);
    assert_int_equal(omp_get_max_threads(), before);
    assert_int_equal(fs_threads_get(), pool);
    fs_seq_destroy(seq);
    fs_session_close(s);
}

/* Rows of one sequence sample from their own streams, and a row's stream
 * restarts from its seed. */
static void test_seq_rows_sample_apart(void **state) {
    (void)state;
    fs_session *s = session_of("dense", "");
    fs_seq_config sc = {.B = 2, .sampler = {1.0, 0, 1.0, 99}};
    fs_seq *seq = NULL;
    fs_error err = {0};
    assert_int_equal(fs_seq_create(&seq, s->model, &sc, &err), 0);
    float logits[32] = {0}; /* uniform: every draw is the stream's own */
    int32_t r0[16], r1[16], again[16];
    for (size_t i = 0; i < 16; i++) r0[i] = fs_seq_sample(seq, 0, logits), r1[i] = fs_seq_sample(seq, 1, logits);
    assert_true(memcmp(r0, r1, sizeof r0) != 0);
    fs_seq_seed_row(seq, 1, 99); /* row 0's seed: row 1 now repeats row 0's draws */
    for (size_t i = 0; i < 16; i++) again[i] = fs_seq_sample(seq, 1, logits);
    assert_memory_equal(again, r0, sizeof r0);
    fs_seq_destroy(seq);
    fs_session_close(s);
}

/* An unbounded cache ends at its context with a clear error and changes
 * nothing; a tensor-split model cannot decode. */
static void test_seq_limits(void **state) {
    (void)state;
    fs_session *s = session_of("dense", "");
    fs_seq *seq = test_seq(s->model, 1, 3);
    int32_t tok = 1;
    float logits[32];
    fs_error err = {0};
    for (int i = 0; i < 3; i++) assert_int_equal(fs_seq_decode(seq, &tok, logits, &err), 0);
    assert_int_equal(fs_seq_decode(seq, &tok, logits, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "context of 3 positions"));
    assert_int_equal(fs_seq_pos(seq), 3);
    tok = 32;
    fs_seq_destroy(seq);
    seq = test_seq(s->model, 1, 0);
    assert_int_equal(fs_seq_decode(seq, &tok, logits, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "outside the vocabulary"));
    assert_int_equal(fs_seq_pos(seq), 0);
    fs_seq_destroy(seq);
    fs_model_config cfg = *fs_model_cfg(s->model);
    cfg.shard = (fs_model_shard){.tp_rank = 0, .tp_size = 2};
    fs_model *half;
    assert_int_equal(fs_model_create(&half, &cfg, &err), 0);
    fs_seq_config sc = {.B = 1};
    assert_int_equal(fs_seq_create(&seq, half, &sc, &err), FS_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "whole model"));
    fs_model_destroy(half);
    fs_session_close(s);
}

/* Plugin tensors go to the end of the model's block, in registration
 * order, and never move: what a plugin got at create still points at its
 * tensor after more registrations (here: a block grown past many pages). */
static void test_plugin_tensors_in_the_block(void **state) {
    (void)state;
    fs_session *s = session_of("longformer", "window = 4\nglobal = first:2\n");
    fs_model *m = s->model;
    const fs_param_block *pb = fs_model_block(m);
    size_t n_own = pb->n - pb->n_plugin, n_views = pb->n_views, C = 16;
    assert_int_equal(pb->n_plugin, 2 * (C * 3 * C + 3 * C)); /* c_attn_global weight and bias, both layers */
    const fs_param_view *w0 = fs_model_find(m, "plugin.layer0.attention.c_attn_global.weight");
    assert_non_null(w0);
    assert_true(w0->plugin);
    assert_int_equal(w0->offset, n_own);
    float *before = pb->params + w0->offset, first = before[0];
    float *p, *g;
    fs_error err = {0};
    size_t big[2] = {1024, 1024}; /* 4 MiB: many pages past the first registrations */
    assert_int_equal(fs_model_add_plugin_param(m, "extra.big", 2, big, 1, &p, &g, &err), 0);
    pb = fs_model_block(m);
    assert_int_equal(pb->n_views, n_views + 1);
    assert_true(pb->params + fs_model_find(m, "plugin.layer0.attention.c_attn_global.weight")->offset == before);
    assert_true(before[0] == first);
    assert_true(p == pb->params + pb->n - big[0] * big[1] && g == pb->grads + pb->n - big[0] * big[1]);
    for (size_t i = 0; i < big[0] * big[1]; i++) assert_true(p[i] == 0.0f && g[i] == 0.0f);
    p[big[0] * big[1] - 1] = 1.0f; /* the last float is writable */
    assert_int_equal(fs_model_add_plugin_param(m, "extra.big", 1, big, 0, &p, &g, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "twice"));
    /* zero_grad covers plugin tensors too */
    pb->grads[w0->offset] = 5.0f;
    fs_model_zero_grad(m);
    assert_true(pb->grads[w0->offset] == 0.0f);
    fs_session_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interleaved_dense),
        cmocka_unit_test(test_interleaved_longformer),
        cmocka_unit_test(test_seq_threads_are_its_own),
        cmocka_unit_test(test_seq_rows_sample_apart),
        cmocka_unit_test(test_seq_limits),
        cmocka_unit_test(test_plugin_tensors_in_the_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
