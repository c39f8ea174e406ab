/* test_optim_shard.c — ZeRO-1 in the optimizer: ranks that each step only
 * their range of the flat vector (and all plugin-owned parameters) must
 * end with exactly the parameters of one optimizer that steps everything;
 * the sums of squares of the ranges add up to the full one; the state
 * moves through export/import (what checkpoints see) unchanged; and one
 * AdamW step matches hand-computed values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/optim.h"
#include "test_util.h"

/* a flat vector of 3 tensors (6 + 5 + 7 floats) and one plugin parameter (4) */
#define NF 18
#define NP 4
static const size_t sizes[3] = {6, 5, 7};

typedef struct rank_state {
    float flat[NF], flat_g[NF], plug[NP], plug_g[NP];
    fs_optimizer opt;
} rank_state;

static void setup_rank(rank_state *r, size_t lo, size_t hi, int shard) {
    test_fill(r->flat, NF, 0.5f, 1);
    test_fill(r->plug, NP, 0.5f, 2);
    fs_adamw_config c = {1e-2, 0.9, 0.95, 1e-8, 0.1};
    fs_optimizer_init(&r->opt, &c);
    fs_error err = {0};
    size_t off = 0;
    for (int i = 0; i < 3; off += sizes[i], i++)
        assert_int_equal(fs_optimizer_add(&r->opt, r->flat + off, r->flat_g + off, sizes[i], i != 1, &err), 0);
    assert_int_equal(fs_optimizer_add(&r->opt, r->plug, r->plug_g, NP, 1, &err), 0);
    if (shard) assert_int_equal(fs_optimizer_shard(&r->opt, lo, hi, NF, &err), 0);
    assert_int_equal(fs_optimizer_ready(&r->opt, &err), 0);
}

static void grads(rank_state *r, uint64_t step) {
    test_fill(r->flat_g, NF, 1.0f, 100 + step);
    test_fill(r->plug_g, NP, 1.0f, 200 + step);
}

static void test_shards_equal_full(void **state) {
    (void)state;
    /* three ranks, shards of ceil(18 / 3) = 6: [0,6) [6,12) [12,18); the
     * middle one cuts the second and third tensors */
    rank_state full, r[3];
    setup_rank(&full, 0, NF, 0);
    for (int k = 0; k < 3; k++) setup_rank(&r[k], 6 * (size_t)k, 6 * (size_t)k + 6, 1);
    assert_false(fs_optimizer_sharded(&full.opt));
    assert_true(fs_optimizer_sharded(&r[1].opt));
    assert_int_equal(r[1].opt.n_owned, 6 + NP);
    for (uint64_t step = 0; step < 3; step++) {
        grads(&full, step);
        double sum = 0;
        for (int k = 0; k < 3; k++) {
            grads(&r[k], step);
            /* plugin parameters are replicated: count them on one rank */
            sum += fs_optimizer_sumsq(&r[k].opt, 0, NF) + (k == 0 ? fs_optimizer_sumsq(&r[k].opt, NF, NF + NP) : 0);
        }
        double norm = sqrt(sum), want = fs_optimizer_grad_norm(&full.opt);
        assert_true(fabs(norm - want) <= 1e-12 * want);
        fs_optimizer_clip_to(&full.opt, 1.0, want);
        fs_optimizer_step(&full.opt, 1e-2);
        for (int k = 0; k < 3; k++) {
            fs_optimizer_clip_to(&r[k].opt, 1.0, want); /* the same scale, so the steps agree bit for bit */
            fs_optimizer_step(&r[k].opt, 1e-2);
            /* "params_updated": every rank takes the owner's range */
            for (int q = 0; q < 3; q++)
                if (q != k) memcpy(r[q].flat + 6 * k, r[k].flat + 6 * k, 6 * sizeof(float));
        }
    }
    for (int k = 0; k < 3; k++) {
        test_close("flat", r[k].flat, full.flat, NF, 0, 0);
        test_close("plugin", r[k].plug, full.plug, NP, 0, 0);
    }
    /* the checkpoint's view: the ranks' exports together are the full state */
    float m[NF + NP] = {0}, v[NF + NP] = {0};
    for (int k = 0; k < 3; k++) fs_optimizer_export(&r[k].opt, m, v);
    test_close("exp_avg", m, full.opt.m, NF + NP, 0, 0);
    test_close("exp_avg_sq", v, full.opt.v, NF + NP, 0, 0);
    /* and a rank that imports the full state holds its part */
    rank_state back;
    setup_rank(&back, 6, 12, 1);
    fs_optimizer_import(&back.opt, full.opt.m, full.opt.v);
    test_close("imported m", back.opt.m, full.opt.m + 6, 6, 0, 0);
    test_close("imported plugin m", back.opt.m + 6, full.opt.m + NF, NP, 0, 0);
    for (int k = 0; k < 3; k++) fs_optimizer_release(&r[k].opt);
    fs_optimizer_release(&full.opt);
    fs_optimizer_release(&back.opt);
}

static void test_shard_checks(void **state) {
    (void)state;
    rank_state r;
    setup_rank(&r, 0, NF, 0);
    fs_optimizer o;
    fs_adamw_config c = {1e-2, 0.9, 0.95, 1e-8, 0.1};
    fs_optimizer_init(&o, &c);
    fs_error err = {0};
    assert_int_equal(fs_optimizer_add(&o, r.flat, r.flat_g, 6, 1, &err), 0);
    assert_int_equal(fs_optimizer_add(&o, r.flat + 6, r.flat_g + 6, 5, 1, &err), 0);
    /* split inside the second tensor: refused */
    assert_int_equal(fs_optimizer_shard(&o, 0, 3, 8, &err), FS_ERR_INVALID);
    assert_int_equal(fs_optimizer_shard(&o, 4, 3, 6, &err), FS_ERR_INVALID);
    /* an empty shard is fine (a rank past the end of a small vector) */
    assert_int_equal(fs_optimizer_shard(&o, 6, 6, 6, &err), 0);
    assert_int_equal(fs_optimizer_ready(&o, &err), 0);
    assert_int_equal(o.n_owned, 5);
    fs_optimizer_release(&o);
    fs_optimizer_release(&r.opt);
}

static void test_one_step_by_hand(void **state) {
    (void)state;
    /* p = 1, g = 0.5, lr 0.1, betas 0.9 / 0.99, eps 0, decay 0.1, t = 1:
     * m = 0.05, v = 0.0025, mhat = 0.5, vhat = 0.25 -> step 0.1 * 0.5 / 0.5
     * = 0.1; p = 1 * (1 - 0.1 * 0.1) - 0.1 = 0.89. A shard that does not
     * own the element leaves it at 1. */
    float p[2] = {1, 1}, g[2] = {0.5f, 0.5f};
    fs_adamw_config c = {0.1, 0.9, 0.99, 0.0, 0.1};
    fs_optimizer o;
    fs_optimizer_init(&o, &c);
    fs_error err = {0};
    assert_int_equal(fs_optimizer_add(&o, p, g, 2, 1, &err), 0);
    assert_int_equal(fs_optimizer_shard(&o, 0, 1, 2, &err), 0);
    assert_int_equal(fs_optimizer_ready(&o, &err), 0);
    fs_optimizer_step(&o, 0.1);
    assert_float_equal(p[0], 0.89f, 1e-6);
    assert_float_equal(p[1], 1.0f, 0);
    assert_float_equal(fs_optimizer_sumsq(&o, 0, 2), 0.25, 1e-12);
    fs_optimizer_release(&o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shards_equal_full),
        cmocka_unit_test(test_shard_checks),
        cmocka_unit_test(test_one_step_by_hand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
