/* test_distill_scores.c — the attention-map path that TinyBERT's loss needs:
 * fs_model_attention_scores (dense's scores()) and the gradient of a loss on
 * those maps back into the weights (fs_model_backward_ex through dense's
 * scores_backward), both pre-softmax scores and probabilities, checked
 * against finite differences of L = sum_l sum G_l * A_l(weights) for random
 * G_l (nonzero on the masked entries too, which must not count). */
#include <string.h>

#include "test_util.h"

static fs_session *tiny(void) {
    return test_session("[model]\nvocab_size = 16\nn_layer = 2\nn_head = 2\nn_embd = 8\nmax_seq = 5\n"
                        "[attention]\nplugin = dense\n");
}

enum { B = 2, T = 5, H = 2, L = 2 };

static double objective(fs_model *m, const int32_t *tok, const float *G, int probs, float *scores) {
    fs_error err = {0};
    assert_int_equal(fs_model_forward(m, tok, B, T, &err), 0);
    double sum = 0;
    for (size_t l = 0; l < L; l++) {
        assert_int_equal(fs_model_attention_scores(m, l, probs, scores, &err), 0);
        for (size_t i = 0; i < (size_t)B * H * T * T; i++) sum += (double)G[l * B * H * T * T + i] * scores[i];
    }
    return sum;
}

static void check(int probs) {
    fs_session *s = tiny();
    fs_model *m = s->model;
    fs_model_init_weights(m, 7);
    /* larger weights than GPT-2's 0.02, so the maps are not all ~uniform, but not so large that
     * the softmax saturates and a float finite difference stops being accurate */
    for (size_t i = 0; i < fs_model_block(m)->n; i++) fs_model_block(m)->params[i] *= 4.0f;
    int32_t tok[B * T];
    for (size_t i = 0; i < B * T; i++) tok[i] = (int32_t)((i * 7 + 3) % 16);
    size_t n = (size_t)B * H * T * T;
    float *G = malloc(L * n * sizeof(float)), *scores = malloc(n * sizeof(float));
    test_fill(G, L * n, 1.0f, 99);
    objective(m, tok, G, probs, scores);
    /* masked entries read as 0 */
    assert_int_equal(fs_model_attention_scores(m, 0, probs, scores, &(fs_error){0}), 0);
    for (size_t bh = 0; bh < (size_t)B * H; bh++)
        for (size_t t = 0; t < T; t++)
            for (size_t j = t + 1; j < T; j++) assert_true(scores[(bh * T + t) * T + j] == 0.0f);
    fs_model_zero_grad(m);
    memset(fs_model_dlogits(m), 0, (size_t)B * T * 16 * sizeof(float));
    const float *dscores[L] = {G, G + n};
    fs_error err = {0};
    assert_int_equal(fs_model_backward_ex(m, NULL, dscores, probs, &err), 0);
    /* the query/key weights and biases of both layers, the first LayerNorm,
     * token embeddings: everything the scores depend on */
    const char *names[] = {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight",
                           "transformer.h.1.attn.c_attn.bias", "transformer.h.0.ln_1.weight", "transformer.wte.weight",
                           "transformer.h.0.mlp.c_fc.weight"};
    size_t checked = 0, nonzero = 0;
    for (size_t v = 0; v < fs_model_block(m)->n_views; v++) {
        int want = 0;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) want |= !strcmp(fs_model_block(m)->views[v].name, names[i]);
        if (!want) continue;
        for (size_t j = 0; j < fs_model_block(m)->views[v].numel; j += 7) {
            float *p = fs_model_block(m)->params + fs_model_block(m)->views[v].offset + j;
            float keep = *p, h = 1e-3f;
            *p = keep + h;
            float up = *p;
            double lp = objective(m, tok, G, probs, scores);
            *p = keep - h;
            float dn = *p;
            double lm = objective(m, tok, G, probs, scores);
            *p = keep;
            double fd = (lp - lm) / ((double)up - (double)dn), an = fs_model_block(m)->grads[fs_model_block(m)->views[v].offset + j];
            if (fabs(fd - an) > 2e-3 + 1e-2 * fabs(fd)) {
                fprintf(stderr, "probs=%d %s[%zu]: analytic %.7g, finite difference %.7g\n", probs, fs_model_block(m)->views[v].name,
                        j, an, fd);
                fail();
            }
            checked++;
            nonzero += fabs(an) > 1e-4;
        }
    }
    assert_true(checked > 100);
    assert_true(nonzero > checked / 4);
    free(G);
    free(scores);
    fs_session_close(s);
}

static void test_scores_backward(void **state) {
    (void)state;
    check(0);
}

static void test_probs_backward(void **state) {
    (void)state;
    check(1);
}

/* fs_model_backward_ex with no attention gradient is fs_model_backward */
static void test_backward_ex_plain(void **state) {
    (void)state;
    fs_session *s = tiny();
    fs_model *m = s->model;
    fs_model_init_weights(m, 3);
    int32_t tok[B * T], tg[B * T];
    for (size_t i = 0; i < B * T; i++) tok[i] = (int32_t)(i % 16), tg[i] = (int32_t)((i + 1) % 16);
    fs_error err = {0};
    float *g1 = malloc(fs_model_block(m)->n * sizeof(float));
    assert_int_equal(fs_model_forward(m, tok, B, T, &err), 0);
    fs_model_loss(m, tg, 1.0f);
    fs_model_zero_grad(m);
    assert_int_equal(fs_model_backward(m, NULL, &err), 0);
    memcpy(g1, fs_model_block(m)->grads, fs_model_block(m)->n * sizeof(float));
    fs_model_zero_grad(m);
    const float *none[L] = {NULL, NULL};
    assert_int_equal(fs_model_backward_ex(m, NULL, none, 0, &err), 0);
    assert_memory_equal(g1, fs_model_block(m)->grads, fs_model_block(m)->n * sizeof(float));
    free(g1);
    fs_session_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scores_backward),
        cmocka_unit_test(test_probs_backward),
        cmocka_unit_test(test_backward_ex_plain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
