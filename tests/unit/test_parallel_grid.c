/* test_parallel_grid.c — the parallel plugins' pure arithmetic: rank <->
 * (data, tensor, pipeline) coordinates in Megatron's order, the groups,
 * resolving the degrees a graph asks for, gradient buckets and ZeRO shard
 * ranges. Expected values are worked out by hand in the comments. The
 * plugin sources are compiled into this test directly (they are not part
 * of fscore). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../plugins/parallel/data_sync.c"
#include "../../plugins/parallel/grid.c"

static fs_grid grid(int d, int t, int p) {
    fs_grid g = {d * t * p, {d, t, p}};
    return g;
}

static void test_coords_megatron_order(void **state) {
    (void)state;
    /* D = T = P = 2: rank = (d * P + p) * T + t, so tensor neighbours are
     * adjacent: rank 5 = 0b101 -> d = 1, p = 0, t = 1; rank 6 -> d 1, p 1, t 0 */
    fs_grid g = grid(2, 2, 2);
    fs_grid_coords c = fs_grid_coords_of(&g, 5);
    assert_int_equal(c.c[FS_GRID_DATA], 1);
    assert_int_equal(c.c[FS_GRID_PIPELINE], 0);
    assert_int_equal(c.c[FS_GRID_TENSOR], 1);
    c = fs_grid_coords_of(&g, 6);
    assert_int_equal(c.c[FS_GRID_DATA], 1);
    assert_int_equal(c.c[FS_GRID_PIPELINE], 1);
    assert_int_equal(c.c[FS_GRID_TENSOR], 0);
    /* a bijection for uneven shapes too */
    int shapes[][3] = {{1, 1, 1}, {3, 1, 1}, {1, 4, 1}, {2, 3, 2}, {3, 2, 4}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        g = grid(shapes[s][0], shapes[s][1], shapes[s][2]);
        for (int r = 0; r < g.world; r++) {
            c = fs_grid_coords_of(&g, r);
            for (int d = 0; d < 3; d++) {
                assert_true(c.c[d] >= 0);
                assert_true(c.c[d] < g.degree[d]);
            }
            assert_int_equal(fs_grid_rank_of(&g, c), r);
        }
    }
}

/* The members of rank r's group, by the colours the split would use. */
static int members(const fs_grid *g, int group, int r, int *out) {
    int color, key, n = 0, c2, k2;
    fs_grid_split_key(g, group, r, &color, &key);
    for (int q = 0; q < g->world; q++) {
        fs_grid_split_key(g, group, q, &c2, &k2);
        if (c2 == color) out[n++] = q;
    }
    return n;
}

static void test_groups(void **state) {
    (void)state;
    fs_grid g = grid(2, 2, 2);
    int m[8], n;
    /* rank 5 = (d 1, p 0, t 1): data group {t 1, p 0} = ranks 1, 5 */
    n = members(&g, FS_GROUP_DATA, 5, m);
    assert_int_equal(n, 2);
    assert_int_equal(m[0], 1);
    assert_int_equal(m[1], 5);
    /* tensor group: the pair 4, 5 */
    n = members(&g, FS_GROUP_TENSOR, 5, m);
    assert_int_equal(n, 2);
    assert_int_equal(m[0], 4);
    assert_int_equal(m[1], 5);
    /* pipeline group: (d 1, t 1) over p = 0, 1: ranks 5, 7 */
    n = members(&g, FS_GROUP_PIPELINE, 5, m);
    assert_int_equal(n, 2);
    assert_int_equal(m[0], 5);
    assert_int_equal(m[1], 7);

    /* every group is the set of ranks that differ from r only in its own
     * coordinate, and the key orders them by that coordinate */
    int shapes[][3] = {{2, 3, 2}, {3, 2, 4}, {4, 1, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        g = grid(shapes[s][0], shapes[s][1], shapes[s][2]);
        int dims[3] = {FS_GRID_DATA, FS_GRID_TENSOR, FS_GRID_PIPELINE};
        int groups[3] = {FS_GROUP_DATA, FS_GROUP_TENSOR, FS_GROUP_PIPELINE};
        for (int r = 0; r < g.world; r++)
            for (int k = 0; k < 3; k++) {
                int mm[64];
                n = members(&g, groups[k], r, mm);
                assert_int_equal(n, g.degree[dims[k]]);
                fs_grid_coords a = fs_grid_coords_of(&g, r);
                for (int i = 0; i < n; i++) {
                    fs_grid_coords b = fs_grid_coords_of(&g, mm[i]);
                    for (int d = 0; d < 3; d++)
                        if (d != dims[k]) assert_int_equal(a.c[d], b.c[d]);
                    int color, key;
                    fs_grid_split_key(&g, groups[k], mm[i], &color, &key);
                    assert_int_equal(key, b.c[dims[k]]);
                }
            }
    }
}

static void test_embedding_group(void **state) {
    (void)state;
    /* D 1, T 2, P 3: stages 0 and 2 share the embedding; stage 1 (ranks 2,
     * 3) holds none and sits alone */
    fs_grid g = grid(1, 2, 3);
    int m[6], n;
    n = members(&g, FS_GROUP_EMBEDDING, 1, m); /* t 1, p 0 */
    assert_int_equal(n, 2);
    assert_int_equal(m[0], 1);
    assert_int_equal(m[1], 5); /* t 1, p 2 */
    assert_false(fs_grid_in_embedding(&g, 2));
    n = members(&g, FS_GROUP_EMBEDDING, 2, m);
    assert_int_equal(n, 1);
    assert_int_equal(m[0], 2);
    n = members(&g, FS_GROUP_EMBEDDING, 3, m);
    assert_int_equal(n, 1);
    assert_int_equal(m[0], 3);
    /* one stage: first = last, a group per (d, t) */
    g = grid(2, 1, 1);
    n = members(&g, FS_GROUP_EMBEDDING, 1, m);
    assert_int_equal(n, 1);
}

static void test_resolve(void **state) {
    (void)state;
    fs_grid g;
    int bad = -1;
    char msg[400];
    int64_t none[3] = {0, 0, 0};
    /* plugin = data on 4 ranks: data 4 */
    assert_int_equal(fs_grid_resolve(&g, 4, FS_GRID_DATA, none, &bad, msg, sizeof msg), 0);
    assert_int_equal(g.degree[0], 4);
    assert_int_equal(g.degree[1], 1);
    assert_int_equal(g.degree[2], 1);
    /* plugin = tensor, data = 2 on 8 ranks: tensor 4 */
    int64_t d2[3] = {2, 0, 0};
    assert_int_equal(fs_grid_resolve(&g, 8, FS_GRID_TENSOR, d2, &bad, msg, sizeof msg), 0);
    assert_int_equal(g.degree[0], 2);
    assert_int_equal(g.degree[1], 4);
    assert_int_equal(g.degree[2], 1);
    /* all written: 2 x 2 x 2 on 8 */
    int64_t all[3] = {2, 2, 2};
    assert_int_equal(fs_grid_resolve(&g, 8, FS_GRID_PIPELINE, all, &bad, msg, sizeof msg), 0);
    /* product 8 on 6 ranks: the plugin's own key is named */
    assert_int_equal(fs_grid_resolve(&g, 6, FS_GRID_PIPELINE, all, &bad, msg, sizeof msg), -1);
    assert_int_equal(bad, FS_GRID_PIPELINE);
    assert_non_null(strstr(msg, "data 2 x tensor 2 x pipeline 2 = 8 ranks, but this run has 6"));
    assert_non_null(strstr(msg, "set pipeline = 0"));
    /* the rest does not divide: tensor 4 on 6 ranks under plugin = data */
    int64_t t4[3] = {0, 4, 0};
    assert_int_equal(fs_grid_resolve(&g, 6, FS_GRID_DATA, t4, &bad, msg, sizeof msg), -1);
    assert_int_equal(bad, FS_GRID_TENSOR);
    assert_non_null(strstr(msg, "multiply to 4, which does not divide the 6 ranks"));
}

static void test_bucketer(void **state) {
    (void)state;
    fs_bucketer b;
    fs_range out[2];
    /* cap 10; backward reports [90, 100), [84, 90), [70, 84), [0, 70):
     * [90,100) is 10 -> closed at once; [84,90) opens; [70,84) is adjacent,
     * makes [70,90) = 20 -> closed; [0,70) -> closed alone */
    fs_bucketer_init(&b, 10);
    assert_int_equal(fs_bucketer_add(&b, 90, 10, out), 1);
    assert_int_equal(out[0].lo, 90);
    assert_int_equal(out[0].hi, 100);
    assert_int_equal(fs_bucketer_add(&b, 84, 6, out), 0);
    assert_int_equal(fs_bucketer_add(&b, 70, 14, out), 1);
    assert_int_equal(out[0].lo, 70);
    assert_int_equal(out[0].hi, 90);
    assert_int_equal(fs_bucketer_add(&b, 0, 70, out), 1);
    assert_int_equal(out[0].lo, 0);
    assert_int_equal(out[0].hi, 70);
    assert_int_equal(fs_bucketer_flush(&b, out), 0);
    /* small ranges gather until the cap; a range that is not adjacent
     * closes the open bucket first */
    fs_bucketer_init(&b, 10);
    assert_int_equal(fs_bucketer_add(&b, 50, 3, out), 0); /* [50,53) */
    assert_int_equal(fs_bucketer_add(&b, 47, 3, out), 0); /* [47,53) */
    assert_int_equal(fs_bucketer_add(&b, 20, 2, out), 1); /* gap: [47,53) closes, [20,22) opens */
    assert_int_equal(out[0].lo, 47);
    assert_int_equal(out[0].hi, 53);
    assert_int_equal(fs_bucketer_add(&b, 22, 9, out), 1); /* ascending neighbour: [20,31) = 11 >= 10 */
    assert_int_equal(out[0].lo, 20);
    assert_int_equal(out[0].hi, 31);
    assert_int_equal(fs_bucketer_add(&b, 10, 2, out), 0);
    assert_int_equal(fs_bucketer_add(&b, 40, 12, out), 2); /* [10,12) closes, then [40,52) closes itself */
    assert_int_equal(out[0].lo, 10);
    assert_int_equal(out[0].hi, 12);
    assert_int_equal(out[1].lo, 40);
    assert_int_equal(out[1].hi, 52);
    assert_int_equal(fs_bucketer_add(&b, 5, 0, out), 0); /* empty ranges are ignored */
    assert_int_equal(fs_bucketer_add(&b, 0, 4, out), 0);
    assert_int_equal(fs_bucketer_flush(&b, out), 1);
    assert_int_equal(out[0].lo, 0);
    assert_int_equal(out[0].hi, 4);
}

static void test_gaps(void **state) {
    (void)state;
    /* [0, 100) with [60,100), [10,20) and [20,30) covered: gaps [0,10), [30,60) */
    fs_range done[3] = {{60, 100}, {20, 30}, {10, 20}}, gaps[4];
    size_t m = fs_ranges_gaps(done, 3, 100, gaps);
    assert_int_equal(m, 2);
    assert_int_equal(gaps[0].lo, 0);
    assert_int_equal(gaps[0].hi, 10);
    assert_int_equal(gaps[1].lo, 30);
    assert_int_equal(gaps[1].hi, 60);
    /* nothing reported: the whole vector */
    m = fs_ranges_gaps(done, 0, 7, gaps);
    assert_int_equal(m, 1);
    assert_int_equal(gaps[0].lo, 0);
    assert_int_equal(gaps[0].hi, 7);
    /* everything covered */
    fs_range all[1] = {{0, 7}};
    assert_int_equal(fs_ranges_gaps(all, 1, 7, gaps), 0);
}

static void test_shards(void **state) {
    (void)state;
    /* n = 10 over 3: S = 4: [0,4) [4,8) [8,10) (the last padded by 2) */
    assert_int_equal(fs_shard_size(10, 3), 4);
    fs_range r = fs_shard_range(10, 3, 2);
    assert_int_equal(r.lo, 8);
    assert_int_equal(r.hi, 10);
    r = fs_shard_range(10, 3, 1);
    assert_int_equal(r.lo, 4);
    assert_int_equal(r.hi, 8);
    /* n = 2 over 4: S = 1: ranks 2 and 3 own nothing */
    r = fs_shard_range(2, 4, 3);
    assert_int_equal(r.lo, 2);
    assert_int_equal(r.hi, 2);
    /* the shards partition [0, n) in order for any n, parts */
    for (size_t n = 0; n < 40; n++)
        for (size_t parts = 1; parts <= 7; parts++) {
            size_t at = 0;
            for (size_t i = 0; i < parts; i++) {
                r = fs_shard_range(n, parts, i);
                assert_int_equal(r.lo, at);
                assert_true(r.hi >= r.lo);
                assert_true(r.hi - r.lo <= fs_shard_size(n, parts));
                at = r.hi;
            }
            assert_int_equal(at, n);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_coords_megatron_order),
        cmocka_unit_test(test_groups),
        cmocka_unit_test(test_embedding_group),
        cmocka_unit_test(test_resolve),
        cmocka_unit_test(test_bucketer),
        cmocka_unit_test(test_gaps),
        cmocka_unit_test(test_shards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
