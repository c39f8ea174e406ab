/* test_model.c — the whole GPT against PyTorch.
 *
 * tests/reference/gpt_tiny.safetensors was written by
 * tests/reference/make_fixtures.py: a from-scratch float64 PyTorch GPT-2
 * with Hugging Face tensor names, its logits, loss, every gradient and the
 * parameters after two AdamW steps. Here the same weights go through the
 * runtime's own graph, plugin loader and dense attention plugin. */
#include <string.h>

#include "model/optim.h"
#include "io/safetensors.h"
#include "test_util.h"

#define TINY "[attention]\nplugin = dense\n[model]\nvocab_size = 64\nn_head = 2\nn_embd = 16\nmax_seq = 16\n"
#define FIXTURE_DIR FS_SOURCE_DIR "/tests/reference/"

typedef struct fixture {
    fs_safetensors *st;
    fs_session *s;
    const int32_t *inputs, *targets;
    size_t B, T;
} fixture;

static const fs_st_tensor *get(const fixture *f, const char *name) { return test_fixture_tensor(f->st, name); }

/* The fixture's weights in a session built from `ini`. */
static int setup_with(void **state, const char *path, const char *ini) {
    fixture *f = calloc(1, sizeof *f);
    fs_error err = {0};
    if (fs_safetensors_open(&f->st, path, &err)) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    f->s = test_session(ini);
    fs_model *m = f->s->model;
    for (size_t i = 0; i < fs_model_block(m)->n_views; i++) {
        const fs_st_tensor *t = get(f, fs_model_block(m)->views[i].name);
        assert_int_equal(t->nbytes, fs_model_block(m)->views[i].numel * sizeof(float));
        memcpy(fs_model_block(m)->params + fs_model_block(m)->views[i].offset, t->data, t->nbytes);
    }
    const fs_st_tensor *in = get(f, "input_ids");
    f->B = in->shape[0];
    f->T = in->shape[1];
    f->inputs = in->data;
    f->targets = get(f, "targets")->data;
    *state = f;
    return 0;
}

static int setup(void **state) {
    return setup_with(state, FIXTURE_DIR "gpt_tiny.safetensors", TINY "n_layer = 2\n");
}
/* The MLP 5 tokens at a time (22 rows: chunks of 5,5,5,5,2) must give the
 * same logits and gradients as all at once. */
static int setup_ff_chunk(void **state) {
    return setup_with(state, FIXTURE_DIR "gpt_tiny.safetensors", TINY "n_layer = 2\nff_chunk = 5\n");
}
/* 4 reversible layers against PyTorch's autograd through the same
 * function (make_fixtures.py: forward_reversible), which stores every
 * activation: the runtime rebuilds them from the layer outputs instead. */
static int setup_reversible(void **state) {
    return setup_with(state, FIXTURE_DIR "gpt_tiny_reversible.safetensors", TINY "n_layer = 4\nreversible = true\n");
}
static int setup_reversible_ff_chunk(void **state) {
    return setup_with(state, FIXTURE_DIR "gpt_tiny_reversible.safetensors",
                      TINY "n_layer = 4\nreversible = true\nff_chunk = 3\n");
}

static int teardown(void **state) {
    fixture *f = *state;
    fs_session_close(f->s);
    fs_safetensors_close(f->st);
    free(f);
    return 0;
}

static void test_forward_logits_and_loss(void **state) {
    fixture *f = *state;
    fs_model *m = f->s->model;
    fs_error err = {0};
    assert_int_equal(fs_model_forward(m, f->inputs, f->B, f->T, &err), 0);
    const fs_st_tensor *logits = get(f, "logits");
    test_close("logits", fs_model_logits(m), logits->data, f->B * f->T * 64, 2e-5, 1e-4);
    double loss = fs_model_loss(m, f->targets, 1.0f);
    float want = *(const float *)get(f, "loss")->data;
    assert_true(fabs(loss - want) < 1e-5);
}

static void test_all_gradients(void **state) {
    fixture *f = *state;
    fs_model *m = f->s->model;
    fs_error err = {0};
    fs_model_zero_grad(m);
    assert_int_equal(fs_model_forward(m, f->inputs, f->B, f->T, &err), 0);
    fs_model_loss(m, f->targets, 1.0f);
    assert_int_equal(fs_model_backward(m, NULL, &err), 0);
    char name[160];
    for (size_t i = 0; i < fs_model_block(m)->n_views; i++) {
        snprintf(name, sizeof name, "grad.%s", fs_model_block(m)->views[i].name);
        const fs_st_tensor *g = get(f, name);
        /* gradients are O(1e-2..1): absolute tolerance scaled to the tensor */
        float mx = 0;
        const float *want = g->data;
        for (size_t j = 0; j < fs_model_block(m)->views[i].numel; j++) mx = fabsf(want[j]) > mx ? fabsf(want[j]) : mx;
        test_close(name, fs_model_block(m)->grads + fs_model_block(m)->views[i].offset, want, fs_model_block(m)->views[i].numel, 1e-6 + 2e-4 * mx, 1e-3);
    }
}

static void test_two_adamw_steps(void **state) {
    fixture *f = *state;
    fs_model *m = f->s->model;
    fs_error err = {0};
    fs_adamw_config ac = {1e-2, 0.9, 0.95, 1e-8, 0.1};
    fs_optimizer opt;
    fs_optimizer_init(&opt, &ac);
    for (size_t i = 0; i < fs_model_block(m)->n_views; i++)
        assert_int_equal(fs_optimizer_add(&opt, fs_model_block(m)->params + fs_model_block(m)->views[i].offset, fs_model_block(m)->grads + fs_model_block(m)->views[i].offset,
                                          fs_model_block(m)->views[i].numel, fs_model_block(m)->views[i].weight_decay, &err),
                         0);
    assert_int_equal(fs_optimizer_ready(&opt, &err), 0);
    for (int step = 0; step < 2; step++) {
        fs_model_zero_grad(m);
        assert_int_equal(fs_model_forward(m, f->inputs, f->B, f->T, &err), 0);
        fs_model_loss(m, f->targets, 1.0f);
        assert_int_equal(fs_model_backward(m, NULL, &err), 0);
        fs_optimizer_step(&opt, 1e-2);
    }
    /* Adam divides by sqrt(v): where the true gradient is 0 (the key bias:
     * softmax ignores a constant added to every score of a row) both sides
     * normalise rounding noise and may move by +-lr in any direction. Those
     * entries, the middle third of c_attn.bias, are skipped; their gradient
     * (zero) was checked by test_all_gradients. */
    char name[160];
    const size_t C = 16;
    for (size_t i = 0; i < fs_model_block(m)->n_views; i++) {
        snprintf(name, sizeof name, "adamw2.%s", fs_model_block(m)->views[i].name);
        const float *want = get(f, name)->data, *got = fs_model_block(m)->params + fs_model_block(m)->views[i].offset;
        int key_bias = strstr(name, "c_attn.bias") != NULL;
        for (size_t j = 0; j < fs_model_block(m)->views[i].numel; j++) {
            if (key_bias && j >= C && j < 2 * C) continue;
            char what[200];
            snprintf(what, sizeof what, "%s[%zu]", name, j);
            /* 2e-4 absolute is 2% of one step of lr 1e-2 */
            test_close(what, &got[j], &want[j], 1, 2e-4, 1e-4);
        }
    }
    fs_optimizer_release(&opt);
}

/* The worked example: X = [[1,2,3],...,[10,11,12]], W = I, one head:
 * non-causal row 1 is [9.999908, 10.999908, 11.999908], rows 2-4 are
 * [10, 11, 12]; causal output equals X. */
static void test_attention_worked_example(void **state) {
    (void)state;
    fs_session *s = test_session("[model]\nn_layer = 1\nn_head = 1\nn_embd = 8\nmax_seq = 4\n"
                                 "[attention]\nplugin = dense\ncausal = false\n");
    const fs_attention_vtable *vt = s->layers[0].plugin->desc->vtable;
    fs_attention_config cfg = {sizeof cfg, 0, 1, 3, 3, 4, 0, {FS_DEVICE_CPU, 0}, FS_DTYPE_F32};
    for (int causal = 0; causal <= 1; causal++) {
        cfg.causal = causal;
        void *self;
        fs_error err = {0};
        assert_int_equal(vt->create(&self, &s->host.api, &s->layers[0].ctx, &cfg, &err), 0);
        float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, out[12];
        void *saved = malloc(vt->saved_bytes(self, 1, 4));
        fs_attention_args a = {0};
        a.struct_size = sizeof a;
        a.B = 1;
        a.T = 4;
        a.q = a.k = a.v = fs_tensor_cpu_f32(x, 4, 1, 1, 4, 3);
        a.out = fs_tensor_cpu_f32(out, 4, 1, 1, 4, 3);
        a.saved = saved;
        assert_int_equal(vt->forward(self, &a, &err), 0);
        const float want_noncausal[12] = {9.999908f, 10.999908f, 11.999908f, 10, 11, 12, 10, 11, 12, 10, 11, 12};
        test_close(causal ? "causal example" : "non-causal example", out, causal ? x : want_noncausal, 12, 1.5e-6,
                   0);
        free(saved);
        vt->destroy(self);
    }
    fs_session_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_forward_logits_and_loss, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_gradients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_adamw_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forward_logits_and_loss, setup_ff_chunk, teardown),
        cmocka_unit_test_setup_teardown(test_all_gradients, setup_ff_chunk, teardown),
        cmocka_unit_test_setup_teardown(test_forward_logits_and_loss, setup_reversible, teardown),
        cmocka_unit_test_setup_teardown(test_all_gradients, setup_reversible, teardown),
        cmocka_unit_test_setup_teardown(test_forward_logits_and_loss, setup_reversible_ff_chunk, teardown),
        cmocka_unit_test_setup_teardown(test_all_gradients, setup_reversible_ff_chunk, teardown),
        cmocka_unit_test(test_attention_worked_example),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
