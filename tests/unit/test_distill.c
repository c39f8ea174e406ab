/* test_distill.c — the soft_kd loss on the worked example, by hand:
 * z_t = [[2,1],[1,3],[4,2]], z_s = [[1,2],[3,1],[2,4]], T = 2.
 * Teacher soft labels [[0.622459, 0.377541], [0.268941, 0.731059],
 * [0.731059, 0.268941]]; summed KL(p_t || p_s) = 1.046694, so the mean is
 * 0.348898 and the alpha = 1 loss T^2 * 0.348898 = 1.395592. With labels
 * [0, 1, 1] the mean cross-entropy of softmax(z_s) is
 * (1.313262 + 2.126928 + 0.126928) / 3 = 1.189039. */
#include <string.h>

#include "fastserve/distill.h"
#include "test_util.h"

typedef struct kd {
    fs_session *s;
    const fs_distill_vtable *vt;
    void *self;
} kd;

static kd make(double temperature, double alpha) {
    kd k;
    char ini[256];
    snprintf(ini, sizeof ini, "[model]\nn_layer = 1\nn_head = 1\nn_embd = 8\nmax_seq = 4\n"
                              "[distill]\nplugin = soft_kd\ntemperature = %g\nalpha = %g\n",
             temperature, alpha);
    k.s = test_session(ini);
    k.vt = k.s->distill.plugin->desc->vtable;
    fs_plugin_ctx_init(&k.s->layers[0].ctx, &k.s->host, k.s->distill.config, "plugin.distill", "soft_kd");
    fs_distill_config cfg = {.struct_size = sizeof cfg, .vocab = 2, .device = {FS_DEVICE_CPU, 0}};
    fs_error err = {0};
    assert_int_equal(k.vt->create(&k.self, &k.s->host.api, &k.s->layers[0].ctx, &cfg, &err), 0);
    return k;
}

static void release(kd *k) {
    k->vt->destroy(k->self);
    fs_session_close(k->s);
}

static float zt[6] = {2, 1, 1, 3, 4, 2}, zs[6] = {1, 2, 3, 1, 2, 4};
static int32_t labels[3] = {0, 1, 1};

static double run(kd *k, float *student, float *d) {
    fs_distill_args a = {0};
    a.struct_size = sizeof a;
    a.B = 1, a.T = 3, a.V = 2;
    a.teacher_logits = fs_tensor_cpu_f32(zt, 3, 1, 3, 2, 0);
    a.student_logits = fs_tensor_cpu_f32(student, 3, 1, 3, 2, 0);
    a.dstudent_logits = fs_tensor_cpu_f32(d, 3, 1, 3, 2, 0);
    a.labels = labels;
    double loss;
    fs_error err = {0};
    assert_int_equal(k->vt->loss(k->self, &a, &loss, &err), 0);
    return loss;
}

static void test_worked_example(void **state) {
    (void)state;
    float d[6];
    kd k = make(2.0, 1.0);
    assert_true(fabs(run(&k, zs, d) - 1.395592) < 2e-6);
    release(&k);
    k = make(2.0, 0.0);
    assert_true(fabs(run(&k, zs, d) - 1.189039) < 2e-6);
    release(&k);
    k = make(2.0, 0.5);
    assert_true(fabs(run(&k, zs, d) - 0.5 * (1.395592 + 1.189039)) < 2e-6);
    release(&k);
    /* T = 1, alpha = 1: plain KL, no T^2 factor to hide */
    k = make(1.0, 1.0);
    double kl1 = 0;
    for (int n = 0; n < 3; n++) {
        double lt = log(exp(zt[2 * n]) + exp(zt[2 * n + 1])), ls = log(exp(zs[2 * n]) + exp(zs[2 * n + 1]));
        for (int i = 0; i < 2; i++) kl1 += exp(zt[2 * n + i] - lt) * ((zt[2 * n + i] - lt) - (zs[2 * n + i] - ls));
    }
    assert_true(fabs(run(&k, zs, d) - kl1 / 3) < 2e-6);
    release(&k);
}

static void test_gradient_fd(void **state) {
    (void)state;
    double temps[] = {1.0, 2.0, 4.5};
    for (int ti = 0; ti < 3; ti++) {
        kd k = make(temps[ti], 0.3);
        float s[6], d[6], tmp[6];
        memcpy(s, zs, sizeof s);
        run(&k, s, d);
        for (int i = 0; i < 6; i++) {
            float keep = s[i];
            s[i] = keep + 1e-2f;
            double lp = run(&k, s, tmp);
            s[i] = keep - 1e-2f;
            double lm = run(&k, s, tmp);
            s[i] = keep;
            double fd = (lp - lm) / 2e-2;
            if (fabs(fd - d[i]) > 1e-4) {
                fprintf(stderr, "T=%g d[%d]: analytic %.7g, finite difference %.7g\n", temps[ti], i, d[i], fd);
                fail();
            }
        }
        release(&k);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worked_example),
        cmocka_unit_test(test_gradient_fd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
