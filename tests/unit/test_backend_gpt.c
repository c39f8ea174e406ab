/* test_backend_gpt.c — GPT-2 composed from the cpu backend's ops
 * (tests/common/gpt_backend.c: every op a vtable call) against PyTorch:
 * tests/reference/gpt_tiny.safetensors (make_fixtures.py) holds the
 * weights, logits, loss, every gradient and the weights after two AdamW
 * steps. tests/gpu runs the same composition on the cuda backend. */
#include <string.h>

#include "model/device_gpt.h"
#include "io/safetensors.h"
#include "test_util.h"

#define FIXTURE FS_SOURCE_DIR "/tests/reference/gpt_tiny.safetensors"

typedef struct fixture {
    fs_safetensors *st;
    fs_backend_handle b;
    fs_device_gpt *m;
    const int32_t *inputs, *targets;
    size_t B, T, V;
    float *host; /* one block of parameters */
} fixture;

static const fs_st_tensor *get(const fixture *f, const char *name) { return test_fixture_tensor(f->st, name); }

static size_t meta(const fixture *f, const char *key) { return (size_t)atoi(fs_safetensors_metadata(f->st, key)); }

/* The block with every tensor taken from the fixture under `prefix`. */
static void block_from_fixture(const fixture *f, const char *prefix, float *out) {
    char name[160];
    for (size_t i = 0; i < fs_device_gpt_n_tensors(f->m); i++) {
        snprintf(name, sizeof name, "%s%s", prefix, fs_device_gpt_tensor_name(f->m, i));
        const fs_st_tensor *t = get(f, name);
        assert_int_equal(t->nbytes, fs_device_gpt_tensor_numel(f->m, i) * sizeof(float));
        memcpy(out + fs_device_gpt_tensor_offset(f->m, i), t->data, t->nbytes);
    }
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    fs_error err = {0};
    if (fs_safetensors_open(&f->st, FIXTURE, &err) || fs_backend_handle_open(&f->b, "cpu", 0, NULL, &err)) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    fs_device_gpt_config c = {.V = meta(f, "V"), .maxT = meta(f, "maxT"), .L = meta(f, "L"), .H = meta(f, "H"),
                              .C = meta(f, "C"), .B = meta(f, "B"), .T = meta(f, "T"), .dtype = FS_DTYPE_F32,
                              .compute = FS_GEMM_COMPUTE_F32, .attention = "dense"};
    if (fs_device_gpt_create(&f->m, &f->b, &c, &err)) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    f->B = c.B, f->T = c.T, f->V = c.V;
    f->inputs = get(f, "input_ids")->data;
    f->targets = get(f, "targets")->data;
    f->host = test_fvec(fs_device_gpt_n_params(f->m));
    block_from_fixture(f, "", f->host);
    assert_int_equal(fs_device_gpt_set_params(f->m, f->host, &err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    fs_device_gpt_destroy(f->m);
    fs_backend_handle_close(&f->b);
    fs_safetensors_close(f->st);
    free(f->host);
    free(f);
    return 0;
}

static void test_logits_and_loss(void **state) {
    fixture *f = *state;
    fs_error err = {0};
    float *logits = test_fvec(f->B * f->T * f->V);
    assert_int_equal(fs_device_gpt_forward(f->m, f->inputs, NULL, NULL, &err), 0);
    assert_int_equal(fs_device_gpt_get_logits(f->m, logits, &err), 0);
    test_close("logits", logits, get(f, "logits")->data, f->B * f->T * f->V, 2e-5, 1e-4);
    double loss = 0;
    assert_int_equal(fs_device_gpt_forward(f->m, f->inputs, f->targets, &loss, &err), 0);
    float want = *(const float *)get(f, "loss")->data;
    assert_true(fabs(loss - want) < 1e-5);
    free(logits);
}

/* Gradients are O(1e-2..1): an absolute tolerance scaled to each tensor. */
static void compare_block(const fixture *f, const char *prefix, const float *got, double rel_of_max, double rtol) {
    char name[160];
    for (size_t i = 0; i < fs_device_gpt_n_tensors(f->m); i++) {
        snprintf(name, sizeof name, "%s%s", prefix, fs_device_gpt_tensor_name(f->m, i));
        const fs_st_tensor *t = get(f, name);
        const float *want = t->data;
        float mx = 0;
        for (size_t j = 0; j < fs_device_gpt_tensor_numel(f->m, i); j++) mx = fabsf(want[j]) > mx ? fabsf(want[j]) : mx;
        test_close(name, got + fs_device_gpt_tensor_offset(f->m, i), want, fs_device_gpt_tensor_numel(f->m, i), 1e-6 + rel_of_max * mx,
                   rtol);
    }
}

static void test_all_gradients(void **state) {
    fixture *f = *state;
    fs_error err = {0};
    double loss = 0;
    assert_int_equal(fs_device_gpt_zero_grad(f->m, &err), 0);
    assert_int_equal(fs_device_gpt_forward(f->m, f->inputs, f->targets, &loss, &err), 0);
    assert_int_equal(fs_device_gpt_backward(f->m, &err), 0);
    float *g = test_fvec(fs_device_gpt_n_params(f->m));
    assert_int_equal(fs_device_gpt_get_grads(f->m, g, &err), 0);
    compare_block(f, "grad.", g, 2e-4, 1e-3);
    /* the global norm through sumsq, against the gradients read back */
    double norm = 0, want = 0;
    for (size_t i = 0; i < fs_device_gpt_n_params(f->m); i++) want += (double)g[i] * g[i];
    assert_int_equal(fs_device_gpt_grad_norm(f->m, &norm, &err), 0);
    assert_true(fabs(norm - sqrt(want)) <= 1e-6 * sqrt(want));
    free(g);
}

/* torch.optim.AdamW, lr 1e-2, betas (0.9, 0.95), eps 1e-8, decay 0.1 on the
 * matrices and embeddings, loss and gradient recomputed before each step. */
static void test_two_adamw_steps(void **state) {
    fixture *f = *state;
    fs_error err = {0};
    for (uint64_t t = 1; t <= 2; t++) {
        double loss = 0;
        assert_int_equal(fs_device_gpt_zero_grad(f->m, &err), 0);
        assert_int_equal(fs_device_gpt_forward(f->m, f->inputs, f->targets, &loss, &err), 0);
        assert_int_equal(fs_device_gpt_backward(f->m, &err), 0);
        assert_int_equal(fs_device_gpt_adamw(f->m, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, t, &err), 0);
    }
    float *p = test_fvec(fs_device_gpt_n_params(f->m));
    assert_int_equal(fs_device_gpt_get_params(f->m, p, &err), 0);
    /* Adam divides by sqrt(v): where the true gradient is 0 (the key bias:
     * softmax ignores a constant added to every score of a row) both sides
     * normalise rounding noise and may move by +-lr in any direction. Those
     * entries, the middle third of c_attn.bias, are skipped (test_model.c
     * does the same); their zero gradient was checked above. */
    size_t C = meta(f, "C");
    char name[160];
    for (size_t i = 0; i < fs_device_gpt_n_tensors(f->m); i++) {
        snprintf(name, sizeof name, "adamw2.%s", fs_device_gpt_tensor_name(f->m, i));
        const float *want = get(f, name)->data, *got = p + fs_device_gpt_tensor_offset(f->m, i);
        int key_bias = strstr(name, "c_attn.bias") != NULL;
        for (size_t j = 0; j < fs_device_gpt_tensor_numel(f->m, i); j++) {
            if (key_bias && j >= C && j < 2 * C) continue;
            char what[200];
            snprintf(what, sizeof what, "%s[%zu]", name, j);
            test_close(what, &got[j], &want[j], 1, 2e-4, 1e-4); /* 2% of one step of lr 1e-2 */
        }
    }
    free(p);
}

/* Backward without a forward that had targets is refused, not garbage. */
static void test_backward_needs_targets(void **state) {
    fixture *f = *state;
    fs_error err = {0};
    assert_int_equal(fs_device_gpt_forward(f->m, f->inputs, NULL, NULL, &err), 0);
    assert_int_equal(fs_device_gpt_backward(f->m, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "targets"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_logits_and_loss, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_gradients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_adamw_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backward_needs_targets, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
