/* test_reversible.c — [model] reversible and ff_chunk with every attention
 * plugin, the runtime's skipping of K for shared-QK plugins, and an untied
 * LM head ([model] tie_word_embeddings = false) through the same gradient
 * check and against its decode step.
 *
 * test_model.c checks both against PyTorch with dense attention; here the
 * reference is central finite differences of the model's own loss (in
 * double over float activations), on models whose weights are scaled up so
 * every sublayer is far from linear. */
#include <string.h>

#include "model/seq.h"
#include "test_util.h"

#define BASE "[model]\nvocab_size = 32\nn_head = 2\nn_embd = 16\nmax_seq = 16\n"

enum { B = 2, T = 11 };

typedef struct batch {
    int32_t in[B * T], tg[B * T];
} batch;

static void make_batch(batch *b, uint64_t seed) {
    fs_rng r;
    fs_rng_seed(&r, seed);
    for (int i = 0; i < B * T; i++) {
        b->in[i] = (int32_t)(fs_rng_below(&r, 32));
        b->tg[i] = (int32_t)(fs_rng_below(&r, 32));
    }
}

static fs_session *model_session(const char *ini, uint64_t seed) {
    fs_session *s = test_session(ini);
    fs_model *m = s->model;
    fs_error err = {0};
    fs_model_init_weights(m, seed);
    assert_int_equal(fs_model_init_plugin_params(m, &err), 0);
    /* GPT-2's 0.02 init leaves the blocks nearly linear: scale the matrices
     * and give LayerNorm weights and biases structure */
    fs_rng r;
    fs_rng_seed(&r, seed + 7);
    for (size_t i = 0; i < fs_model_block(m)->n_views; i++) {
        float *p = fs_model_block(m)->params + fs_model_block(m)->views[i].offset;
        for (size_t j = 0; j < fs_model_block(m)->views[i].numel; j++)
            p[j] = fs_model_block(m)->views[i].ndim == 2 ? 10.0f * p[j] : p[j] + 0.1f * fs_rng_normal(&r);
    }
    return s;
}

static double loss_of(fs_model *m, const batch *b) {
    fs_error err = {0};
    assert_int_equal(fs_model_forward(m, b->in, B, T, &err), 0);
    return fs_model_loss(m, b->tg, 1.0f);
}

/* Analytic gradients of a few entries of every tensor against central
 * differences: the entry with the largest gradient and two random ones. */
static void check_gradients(fs_session *s, const batch *b) {
    fs_model *m = s->model;
    fs_error err = {0};
    fs_model_zero_grad(m);
    loss_of(m, b);
    assert_int_equal(fs_model_backward(m, NULL, &err), 0);
    float *g = malloc(fs_model_block(m)->n * sizeof(float));
    memcpy(g, fs_model_block(m)->grads, fs_model_block(m)->n * sizeof(float));
    fs_rng r;
    fs_rng_seed(&r, 99);
    const double h = 1e-3;
    for (size_t i = 0; i < fs_model_block(m)->n_views; i++) {
        const fs_param_view *v = &fs_model_block(m)->views[i];
        if (strstr(v->name, "wpe")) continue; /* rows past T have no gradient: covered by test_model */
        size_t pick[3] = {0, fs_rng_below(&r, v->numel), fs_rng_below(&r, v->numel)};
        for (size_t j = 1; j < v->numel; j++)
            if (fabsf(g[v->offset + j]) > fabsf(g[v->offset + pick[0]])) pick[0] = j;
        float gmax = fabsf(g[v->offset + pick[0]]);
        for (int k = 0; k < 3; k++) {
            float *p = fs_model_block(m)->params + v->offset + pick[k], keep = *p;
            *p = keep + (float)h;
            double lp = loss_of(m, b);
            *p = keep - (float)h;
            double lm = loss_of(m, b);
            *p = keep;
            float fd = (float)((lp - lm) / (2 * h)), got = g[v->offset + pick[k]];
            char what[160];
            snprintf(what, sizeof what, "%s[%zu]", v->name, pick[k]);
            test_close(what, &got, &fd, 1, 1e-4 + 2e-2 * gmax, 2e-2);
        }
    }
    free(g);
}

static void fd_case(const char *ini) {
    fs_session *s = model_session(ini, 5);
    batch b;
    make_batch(&b, 17);
    check_gradients(s, &b);
    fs_session_close(s);
}

static void test_reversible_dense(void **state) {
    (void)state;
    fd_case(BASE "n_layer = 3\nreversible = true\n[attention]\nplugin = dense\n");
}

static void test_reversible_longformer(void **state) {
    (void)state;
    fd_case(BASE "n_layer = 3\nreversible = true\nff_chunk = 4\n[attention]\nplugin = longformer\nwindow = 4\n");
}

/* A chunk covering the sequence and one round: the hashes cannot change
 * which keys a query sees, so the loss is smooth in every weight. */
static void test_reversible_lsh(void **state) {
    (void)state;
    fd_case(BASE "n_layer = 3\nreversible = true\n[attention]\nplugin = lsh\nn_hashes = 1\nn_buckets = 2\n"
                 "chunk = 16\n");
}

/* An untied head: lm_head.weight's and wte's gradients (now the embedding's
 * alone) against finite differences, standard and reversible; then the
 * decode step's logits equal the forward's at every position. */
static void test_untied_head(void **state) {
    (void)state;
    fd_case(BASE "n_layer = 2\ntie_word_embeddings = false\n[attention]\nplugin = dense\n");
    fd_case(BASE "n_layer = 2\ntie_word_embeddings = false\nreversible = true\n[attention]\nplugin = dense\n");
    fs_session *s = model_session(BASE "n_layer = 2\ntie_word_embeddings = false\n[attention]\nplugin = dense\n", 5);
    fs_model *m = s->model;
    const fs_param_view *head = fs_model_find(m, "lm_head.weight"), *wte = fs_model_find(m, "transformer.wte.weight");
    assert_non_null(head);
    assert_true(head->offset != wte->offset);
    batch b;
    make_batch(&b, 17);
    fs_error err = {0};
    assert_int_equal(fs_model_forward(m, b.in, 1, T, &err), 0);
    float *full = malloc(T * 32 * sizeof(float)), logits[32];
    memcpy(full, fs_model_logits(m), T * 32 * sizeof(float));
    fs_seq_config sc = {.B = 1, .context = T};
    fs_seq *seq = NULL;
    assert_int_equal(fs_seq_create(&seq, m, &sc, &err), 0);
    for (size_t t = 0; t < T; t++) {
        assert_int_equal(fs_seq_decode(seq, &b.in[t], logits, &err), 0);
        test_close("decode logits", logits, full + t * 32, 32, 1e-4, 1e-4);
    }
    fs_seq_destroy(seq);
    free(full);
    fs_session_close(s);
}

/* lsh declares FS_ATTENTION_SHARED_QK: the runtime computes no K, so K's
 * block of c_attn gets exactly zero gradient while Q's and V's match
 * finite differences. */
static void test_shared_qk_skips_k(void **state) {
    (void)state;
    const char *ini = BASE "n_layer = 2\n[attention]\nplugin = lsh\nn_hashes = 1\nn_buckets = 2\nchunk = 16\n";
    fd_case(ini);
    fs_session *s = model_session(ini, 5);
    fs_model *m = s->model;
    batch b;
    make_batch(&b, 17);
    fs_error err = {0};
    fs_model_zero_grad(m);
    loss_of(m, &b);
    assert_int_equal(fs_model_backward(m, NULL, &err), 0);
    const size_t C = 16;
    for (size_t l = 0; l < 2; l++) {
        char name[96];
        snprintf(name, sizeof name, "transformer.h.%zu.attn.c_attn.weight", l);
        const float *dw = fs_model_block(m)->grads + fs_model_find(m, name)->offset;
        snprintf(name, sizeof name, "transformer.h.%zu.attn.c_attn.bias", l);
        const float *db = fs_model_block(m)->grads + fs_model_find(m, name)->offset;
        float qv = 0;
        for (size_t r = 0; r < C; r++)
            for (size_t c = 0; c < 3 * C; c++) {
                float d = dw[r * 3 * C + c];
                if (c >= C && c < 2 * C)
                    assert_true(d == 0.0f);
                else
                    qv += fabsf(d);
            }
        for (size_t c = C; c < 2 * C; c++) assert_true(db[c] == 0.0f);
        assert_true(qv > 0);
    }
    fs_session_close(s);
}

static size_t activation_bytes(const char *ini) {
    fs_session *s = model_session(ini, 5);
    batch b;
    make_batch(&b, 17);
    fs_error err = {0};
    loss_of(s->model, &b);
    assert_int_equal(fs_model_backward(s->model, NULL, &err), 0);
    size_t n = fs_model_activation_bytes(s->model);
    fs_session_close(s);
    return n;
}

/* Reversible: the same activation storage for 2 and 8 layers; standard
 * residuals grow with depth; ff_chunk stores less than the whole MLP. */
static void test_activation_memory(void **state) {
    (void)state;
    size_t rev2 = activation_bytes(BASE "n_layer = 2\nreversible = true\n");
    size_t rev8 = activation_bytes(BASE "n_layer = 8\nreversible = true\n");
    size_t std2 = activation_bytes(BASE "n_layer = 2\n");
    size_t std8 = activation_bytes(BASE "n_layer = 8\n");
    size_t chunked8 = activation_bytes(BASE "n_layer = 8\nff_chunk = 4\n");
    assert_int_equal(rev2, rev8);
    assert_true(std8 > 3 * std2 / 2);
    assert_true(rev8 < std8 / 3);
    assert_true(chunked8 < std8);
}

/* Losses on inner hidden states or attention maps need what a reversible
 * model does not keep: a clear error, not wrong gradients. */
static void test_reversible_refuses_inner_losses(void **state) {
    (void)state;
    fs_session *s = model_session(BASE "n_layer = 2\nreversible = true\n", 5);
    batch b;
    make_batch(&b, 17);
    loss_of(s->model, &b);
    float *dh = calloc(B * T * 16, sizeof(float));
    const float *dhidden[3] = {NULL, dh, NULL};
    fs_error err = {0};
    assert_int_equal(fs_model_backward(s->model, dhidden, &err), FS_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "reversible = false"));
    assert_null(fs_model_hidden(s->model, 1));
    free(dh);
    fs_session_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reversible_dense),
        cmocka_unit_test(test_reversible_longformer),
        cmocka_unit_test(test_reversible_lsh),
        cmocka_unit_test(test_shared_qk_skips_k),
        cmocka_unit_test(test_untied_head),
        cmocka_unit_test(test_activation_memory),
        cmocka_unit_test(test_reversible_refuses_inner_losses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
