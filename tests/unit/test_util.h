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

#include <cmocka.h>

#include "rng.h"
#include "session.h"

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

#endif
