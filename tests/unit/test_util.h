/* test_util.h — helpers shared by the unit tests: sessions built from INI
 * text (so tests use the real plugin loader and graph validation), random
 * fills and closeness checks with a message that says where they differ. */
#ifndef FS_TEST_UTIL_H
#define FS_TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fastserve/attention.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "session/session.h"
#include "model/seq.h"

/* A tensor of a reference fixture (a .safetensors file in tests/reference), which must be there. */
static inline const fs_st_tensor *test_fixture_tensor(const fs_safetensors *st, const char *name) {
    const fs_st_tensor *t = fs_safetensors_find(st, name);
    if (!t) fprintf(stderr, "fixture has no tensor %s\n", name);
    assert_non_null(t);
    return t;
}

static inline fs_session *test_session(const char *ini) {
    fs_graph *g;
    fs_error err = {0};
    if (fs_graph_load_string(&g, "test.ini", ini, &err)) {
        fprintf(stderr, "graph: %s\n", err.message);
        fail();
    }
    fs_session *s;
    if (fs_session_open(&s, g, &err)) {
        fprintf(stderr, "session: %s\n", err.message);
        fail();
    }
    return s;
}

/* A decoding sequence of B rows over m (context 0: the plugins' bound). */
static inline fs_seq *test_seq(const fs_model *m, size_t B, size_t context) {
    fs_seq_config sc = {.B = B, .context = context};
    fs_seq *seq = NULL;
    fs_error err = {0};
    int rc = fs_seq_create(&seq, m, &sc, &err);
    if (rc) fprintf(stderr, "fs_seq_create: %s\n", err.message);
    assert_int_equal(rc, 0);
    return seq;
}

static inline void test_fill(float *x, size_t n, float scale, uint64_t seed) {
    fs_rng r;
    fs_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * fs_rng_normal(&r);
}

/* |got - want| <= atol + rtol * |want| elementwise; prints the worst. */
static inline void test_close(const char *what, const float *got, const float *want, size_t n, double atol,
                              double rtol) {
    size_t worst = 0;
    double worst_excess = -1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]), tol = atol + rtol * fabs((double)want[i]);
        if (!(d <= tol) && d - tol > worst_excess) {
            worst_excess = d - tol;
            worst = i;
        }
    }
    if (worst_excess >= 0) {
        fprintf(stderr, "%s: element %zu: got %.9g, want %.9g (atol %g, rtol %g)\n", what, worst, got[worst],
                want[worst], atol, rtol);
        fail();
    }
}

/* n zeroed floats (at least one), or the test fails. */
/* The fixed-order dot product of the serving step, written out: eight
 * fmaf lanes (element i in lane i % 8, in order), then the lanes' fixed
 * tree (compute/gemm_rows.h, fs_gemm_rows_nt; plugins/attention/paged.h). */
static inline float test_dot_lanes(const float *a, const float *b, size_t k) {
    float l[8] = {0};
    for (size_t i = 0; i < k; i++) l[i % 8] = fmaf(a[i], b[i], l[i % 8]);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static inline float *test_fvec(size_t n) {
    float *p = (float *)calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

/* Attention arguments over (B, H, T, D) buffers: q, k, v, out and saved;
 * test_attention_grads adds dout and the input gradients for backward. */
static inline fs_attention_args test_attention_args(size_t B, size_t H, size_t T, size_t D, float *q, float *k,
                                                    float *v, float *out, void *saved) {
    fs_attention_args x;
    memset(&x, 0, sizeof x);
    x.struct_size = sizeof x;
    x.B = B;
    x.T = T;
    x.q = fs_tensor_cpu_f32(q, 4, B, H, T, D);
    x.k = fs_tensor_cpu_f32(k, 4, B, H, T, D);
    x.v = fs_tensor_cpu_f32(v, 4, B, H, T, D);
    x.out = fs_tensor_cpu_f32(out, 4, B, H, T, D);
    x.saved = saved;
    return x;
}

static inline void test_attention_grads(fs_attention_args *x, size_t H, size_t D, float *dout, float *dq, float *dk,
                                        float *dv) {
    x->dout = fs_tensor_cpu_f32(dout, 4, x->B, H, x->T, D);
    x->dq = fs_tensor_cpu_f32(dq, 4, x->B, H, x->T, D);
    x->dk = fs_tensor_cpu_f32(dk, 4, x->B, H, x->T, D);
    x->dv = fs_tensor_cpu_f32(dv, 4, x->B, H, x->T, D);
}

/* Opening a session on `ini` must fail with FS_ERR_INVALID and a message
 * holding fragment a (and b, when not NULL). */
static inline void test_session_error(const char *ini, const char *a, const char *b) {
    fs_graph *g;
    fs_error err = {0};
    assert_int_equal(fs_graph_load_string(&g, "test.ini", ini, &err), 0);
    fs_session *s = NULL;
    int rc = fs_session_open(&s, g, &err);
    if (rc == 0) {
        fprintf(stderr, "no error for:\n%s\n", ini);
        fs_session_close(s);
        fail();
    }
    assert_int_equal(rc, FS_ERR_INVALID);
    if (!strstr(err.message, a) || (b && !strstr(err.message, b))) {
        fprintf(stderr, "message \"%s\" lacks \"%s\" or \"%s\"\n", err.message, a, b ? b : "");
        fail();
    }
}

#endif
