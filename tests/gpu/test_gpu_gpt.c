/* test_gpu_gpt.c — GPT-2 training on the cuda backend (tests/common/
 * gpt_backend: every op a vtable call, attention through the plugins' CUDA
 * paths), against references computed elsewhere:
 *   - fp32 against the PyTorch fixture: logits, loss, every gradient and
 *     two AdamW steps (tests/reference/gpt_tiny.safetensors, as
 *     test_backend_gpt does on the cpu backend);
 *   - dense and longformer (window 3, dilations 1 and 2) attention on CUDA
 *     against the cpu backend with the same plugin: loss, logits and every
 *     gradient;
 *   - tf32 GEMMs: the loss and logits close to fp32's;
 *   - bf16 activations with f32 master weights: ten AdamW steps whose
 *     losses follow fp32's within 2% + 0.01;
 *   - a second device backend while one is open is refused (the host API's
 *     device memory and stream are process-wide).
 * Without a CUDA device (or without the cuda backend) it prints "skipped:
 * no CUDA device" and exits 77, which ctest reports as skipped. */
#include <string.h>

#include "model/device_gpt.h"
#include "io/safetensors.h"
#include "test_util.h"

#define FIXTURE FS_SOURCE_DIR "/tests/reference/gpt_tiny.safetensors"

typedef struct run {
    fs_backend_handle b;
    fs_device_gpt *m;
} run;

static fs_safetensors *g_st;

static const fs_st_tensor *get(const char *name) { return test_fixture_tensor(g_st, name); }

static size_t meta(const char *key) { return (size_t)atoi(fs_safetensors_metadata(g_st, key)); }

static void die(const fs_error *err) {
    fprintf(stderr, "%s\n", err->message);
    fail();
}

/* Keys for the one attention plugin that needs some (longformer):
 * [attention] of a graph resolved against the plugin's own parameters,
 * made once and kept (with the plugin loaded) while instances use it. */
static struct {
    fs_plugin_registry reg;
    fs_graph *graph;
    fs_config *cfg;
} g_attn;

static const fs_config *attention_config(const char *plugin, const char *ini) {
    fs_error err = {0};
    const fs_plugin *p = NULL;
    const char *sec[] = {"attention"};
    if (g_attn.cfg) return g_attn.cfg;
    if (fs_plugin_registry_get(&g_attn.reg, FS_PLUGIN_ATTENTION, plugin, &p, &err) ||
        fs_graph_load_string(&g_attn.graph, "gpu.ini", ini, &err) ||
        fs_config_resolve(&g_attn.cfg, g_attn.graph, sec, 1, p->desc->params, p->desc->n_params, NULL, &err))
        die(&err);
    return g_attn.cfg;
}

/* A model on `backend` with the fixture's weights. */
static void open_run(run *r, const char *backend, int32_t dtype, int32_t compute, const char *attention) {
    fs_error err = {0};
    if (fs_backend_handle_open(&r->b, backend, 0, NULL, &err)) die(&err);
    /* longformer: a window and dilations shorter than the fixture's T, so
     * the band and the classes are not the whole sequence */
    const char *lf_keys = "[attention]\nwindow = 3\ndilation = 1,2\n";
    const fs_config *acfg = strcmp(attention, "longformer") ? NULL : attention_config("longformer", lf_keys);
    fs_device_gpt_config c = {.V = meta("V"), .maxT = meta("maxT"), .L = meta("L"), .H = meta("H"), .C = meta("C"),
                              .B = meta("B"), .T = meta("T"), .dtype = dtype, .compute = compute,
                              .attention = attention, .attention_config = acfg};
    if (fs_device_gpt_create(&r->m, &r->b, &c, &err)) die(&err);
    float *p = test_fvec(fs_device_gpt_n_params(r->m));
    for (size_t i = 0; i < fs_device_gpt_n_tensors(r->m); i++) {
        const fs_st_tensor *t = get(fs_device_gpt_tensor_name(r->m, i));
        memcpy(p + fs_device_gpt_tensor_offset(r->m, i), t->data, t->nbytes);
    }
    if (fs_device_gpt_set_params(r->m, p, &err)) die(&err);
    free(p);
}

static void close_run(run *r) {
    fs_device_gpt_destroy(r->m);
    fs_backend_handle_close(&r->b);
}

/* Loss, logits (B, T, V) and gradients of one forward and backward (the
 * logits from a forward of their own: with targets the buffer becomes
 * their gradient). */
static double step(run *r, float *logits, float *grads) {
    fs_error err = {0};
    double loss = 0;
    const int32_t *in = get("input_ids")->data, *tg = get("targets")->data;
    if (logits && (fs_device_gpt_forward(r->m, in, NULL, NULL, &err) || fs_device_gpt_get_logits(r->m, logits, &err))) die(&err);
    if (fs_device_gpt_zero_grad(r->m, &err) || fs_device_gpt_forward(r->m, in, tg, &loss, &err) || fs_device_gpt_backward(r->m, &err)) die(&err);
    if (grads && fs_device_gpt_get_grads(r->m, grads, &err)) die(&err);
    return loss;
}

/* Per tensor, an absolute tolerance scaled to its largest entry. */
static void close_block(const run *r, const char *what, const float *got, const float *want, double rel_of_max) {
    for (size_t i = 0; i < fs_device_gpt_n_tensors(r->m); i++) {
        const float *w = want + fs_device_gpt_tensor_offset(r->m, i);
        float mx = 0;
        for (size_t j = 0; j < fs_device_gpt_tensor_numel(r->m, i); j++) mx = fabsf(w[j]) > mx ? fabsf(w[j]) : mx;
        char name[200];
        snprintf(name, sizeof name, "%s %s", what, fs_device_gpt_tensor_name(r->m, i));
        test_close(name, got + fs_device_gpt_tensor_offset(r->m, i), w, fs_device_gpt_tensor_numel(r->m, i), 1e-6 + rel_of_max * mx, 1e-3);
    }
}

static void test_fixture_fp32(void **state) {
    (void)state;
    run r;
    open_run(&r, "cuda", FS_DTYPE_F32, FS_GEMM_COMPUTE_F32, "dense");
    size_t n = meta("B") * meta("T") * meta("V"), P = fs_device_gpt_n_params(r.m);
    float *logits = test_fvec(n), *g = test_fvec(P), *want = test_fvec(P);
    double loss = step(&r, logits, g);
    test_close("logits", logits, get("logits")->data, n, 2e-5, 1e-4);
    assert_true(fabs(loss - *(const float *)get("loss")->data) < 1e-5);
    char name[200];
    for (size_t i = 0; i < fs_device_gpt_n_tensors(r.m); i++) {
        snprintf(name, sizeof name, "grad.%s", fs_device_gpt_tensor_name(r.m, i));
        memcpy(want + fs_device_gpt_tensor_offset(r.m, i), get(name)->data, fs_device_gpt_tensor_numel(r.m, i) * sizeof(float));
    }
    close_block(&r, "gradient", g, want, 2e-4);
    fs_error err = {0};
    for (uint64_t t = 1; t <= 2; t++) {
        if (t == 2) step(&r, NULL, NULL);
        if (fs_device_gpt_adamw(r.m, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, t, &err)) die(&err);
    }
    if (fs_device_gpt_get_params(r.m, g, &err)) die(&err);
    size_t C = meta("C");
    for (size_t i = 0; i < fs_device_gpt_n_tensors(r.m); i++) { /* the key bias skipped: see test_backend_gpt */
        snprintf(name, sizeof name, "adamw2.%s", fs_device_gpt_tensor_name(r.m, i));
        const float *w = get(name)->data, *got = g + fs_device_gpt_tensor_offset(r.m, i);
        int key_bias = strstr(name, "c_attn.bias") != NULL;
        for (size_t j = 0; j < fs_device_gpt_tensor_numel(r.m, i); j++)
            if (!key_bias || j < C || j >= 2 * C) test_close(name, &got[j], &w[j], 1, 2e-4, 1e-4);
    }
    free(logits), free(g), free(want);
    close_run(&r);
}

/* The same model and plugin on both backends. */
static void check_attention(const char *attention) {
    run cpu, gpu;
    open_run(&cpu, "cpu", FS_DTYPE_F32, FS_GEMM_COMPUTE_F32, attention);
    open_run(&gpu, "cuda", FS_DTYPE_F32, FS_GEMM_COMPUTE_F32, attention);
    size_t n = meta("B") * meta("T") * meta("V"), P = fs_device_gpt_n_params(cpu.m);
    float *l1 = test_fvec(n), *l2 = test_fvec(n), *g1 = test_fvec(P), *g2 = test_fvec(P);
    double a = step(&cpu, l1, g1), b = step(&gpu, l2, g2);
    fprintf(stderr, "%s: loss cpu %.7f cuda %.7f\n", attention, a, b);
    assert_true(fabs(a - b) <= 1e-5 * fabs(a));
    test_close(attention, l2, l1, n, 2e-5, 1e-4);
    close_block(&cpu, attention, g2, g1, 2e-4);
    free(l1), free(l2), free(g1), free(g2);
    close_run(&gpu);
    close_run(&cpu);
}

static void test_attention_plugins(void **state) {
    (void)state;
    check_attention("dense");
    check_attention("longformer");
}

/* One model at a time: a process drives one device backend at a time
 * (core/backend_handle.h). */
static double logits_of(int32_t compute, float *logits) {
    run r;
    open_run(&r, "cuda", FS_DTYPE_F32, compute, "dense");
    double loss = step(&r, logits, NULL);
    close_run(&r);
    return loss;
}

static void test_tf32(void **state) {
    (void)state;
    size_t n = meta("B") * meta("T") * meta("V");
    float *l1 = test_fvec(n), *l2 = test_fvec(n);
    double a = logits_of(FS_GEMM_COMPUTE_F32, l1), b = logits_of(FS_GEMM_COMPUTE_TF32, l2);
    fprintf(stderr, "tf32: loss %.6f against fp32 %.6f\n", b, a);
    assert_true(fabs(a - b) <= 1e-3 * fabs(a));
    test_close("tf32 logits", l2, l1, n, 1e-2, 1e-2); /* 10-bit mantissas in the products */
    free(l1), free(l2);
}

/* Mixed precision trains like fp32: the same ten AdamW steps, each model
 * in turn (one device backend at a time). */
#define BF16_STEPS 10

static void train_losses(int32_t dtype, double *loss) {
    run r;
    fs_error err = {0};
    open_run(&r, "cuda", dtype, FS_GEMM_COMPUTE_F32, "dense");
    for (uint64_t t = 1; t <= BF16_STEPS; t++) {
        loss[t - 1] = step(&r, NULL, NULL);
        if (fs_device_gpt_adamw(r.m, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, t, &err)) die(&err);
    }
    close_run(&r);
}

static void test_bf16_follows_fp32(void **state) {
    (void)state;
    double a[BF16_STEPS], b[BF16_STEPS];
    train_losses(FS_DTYPE_F32, a);
    train_losses(FS_DTYPE_BF16, b);
    assert_true(fabs(a[0] - *(const float *)get("loss")->data) < 1e-5); /* the fixture's, before any update */
    for (int t = 0; t < BF16_STEPS; t++) {
        fprintf(stderr, "step %2d: fp32 %.5f bf16 %.5f\n", t + 1, a[t], b[t]);
        assert_true(fabs(a[t] - b[t]) <= 0.02 * fabs(a[t]) + 0.01);
    }
}

/* Two device backends at once are refused with a line that says why. */
static void test_one_backend_at_a_time(void **state) {
    (void)state;
    fs_backend_handle a, b;
    fs_error err = {0};
    if (fs_backend_handle_open(&a, "cuda", 0, NULL, &err)) die(&err);
    assert_int_equal(fs_backend_handle_open(&b, "cuda", 0, NULL, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "one at a time"));
    fs_backend_handle_close(&b);
    fs_backend_handle_close(&a);
    memset(&err, 0, sizeof err);
    if (fs_backend_handle_open(&b, "cuda", 0, NULL, &err)) die(&err); /* free again once the first is closed */
    fs_backend_handle_close(&b);
}

/* 1 when a CUDA device can be had (the backend is built and sees one). */
static int have_cuda(void) {
    fs_backend_handle b;
    int n = 0;
    fs_error err = {0};
    fs_backend_handle_open(&b, "cuda", 0, &n, &err);
    fs_backend_handle_close(&b);
    return n > 0;
}

int main(void) {
    if (!have_cuda()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    fs_error err = {0};
    if (fs_safetensors_open(&g_st, FIXTURE, &err)) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_fp32),
        cmocka_unit_test(test_attention_plugins),
        cmocka_unit_test(test_tf32),
        cmocka_unit_test(test_one_backend_at_a_time),
        cmocka_unit_test(test_bf16_follows_fp32),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fs_config_destroy(g_attn.cfg);
    fs_graph_destroy(g_attn.graph);
    fs_plugin_registry_release(&g_attn.reg);
    fs_safetensors_close(g_st);
    return rc;
}
