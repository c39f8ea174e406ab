/* test_threads.c — core/threads.c: the adaptive rule against worked
 * values, an explicit count that never adapts, and the wait policy fsrun
 * sets for OpenMP only when the environment sets none. (That the adaptive
 * count helps under load is measured by bench/bench_load.py, not here.) */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/threads.h"
#include "test_util.h"

static void test_rule(void **state) {
    (void)state;
    /* 2 cores: nothing else, a little, a third of a core keep both; half a
     * core, a hog that gets 2/3 of one beside our 2 threads, a whole one
     * take one away; more than all cores still leaves one */
    assert_int_equal(fs_threads_for_load(2, 0.0), 2);
    assert_int_equal(fs_threads_for_load(2, 0.1), 2);
    assert_int_equal(fs_threads_for_load(2, 0.29), 2);
    assert_int_equal(fs_threads_for_load(2, 0.5), 1);
    assert_int_equal(fs_threads_for_load(2, 0.67), 1);
    assert_int_equal(fs_threads_for_load(2, 1.0), 1);
    assert_int_equal(fs_threads_for_load(2, 5.0), 1);
    assert_int_equal(fs_threads_for_load(2, -0.2), 2); /* a negative measurement (jiffies) counts as 0 */
    assert_int_equal(fs_threads_for_load(16, 3.0), 13);
    assert_int_equal(fs_threads_for_load(16, 3.8), 12);
    assert_int_equal(fs_threads_for_load(1, 0.0), 1);
}

/* an explicit count is the user's: adapt leaves it */
static void test_explicit_stays(void **state) {
    (void)state;
    fs_threads_set(1);
    for (int i = 0; i < 3; i++) assert_int_equal(fs_threads_adapt(), 1);
    assert_int_equal(fs_threads_get(), 1);
    fs_threads_set(0); /* adaptive: somewhere in 1..cores */
    int n = fs_threads_adapt();
    assert_true(n >= 1 && n <= omp_get_num_procs());
}

static void test_wait_policy(void **state) {
    (void)state;
    /* ctest sets OMP_WAIT_POLICY=PASSIVE for unit tests: kept */
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    unsetenv("GOMP_SPINCOUNT");
    assert_int_equal(fs_threads_wait_env(NULL), 0);
    assert_null(getenv("GOMP_SPINCOUNT"));
    assert_non_null(strstr(fs_threads_wait_note(), "OMP_WAIT_POLICY=PASSIVE"));
    assert_non_null(strstr(fs_threads_wait_note(), "kept"));
    /* none set: fsrun's bounded spin, and the caller must re-exec */
    unsetenv("OMP_WAIT_POLICY");
    assert_int_equal(fs_threads_wait_env(NULL), 1);
    assert_string_equal(getenv("GOMP_SPINCOUNT"), FS_THREADS_SPINCOUNT);
    assert_non_null(strstr(fs_threads_wait_note(), "chosen by fsrun"));
    /* a mode's own count (the server's) */
    unsetenv("GOMP_SPINCOUNT");
    assert_int_equal(fs_threads_wait_env(FS_THREADS_SPINCOUNT_SERVE), 1);
    assert_string_equal(getenv("GOMP_SPINCOUNT"), FS_THREADS_SPINCOUNT_SERVE);
    assert_non_null(strstr(fs_threads_wait_note(), "GOMP_SPINCOUNT=" FS_THREADS_SPINCOUNT_SERVE " "));
    /* GOMP_SPINCOUNT alone is a policy too */
    setenv("GOMP_SPINCOUNT", "5", 1);
    assert_int_equal(fs_threads_wait_env(NULL), 0);
    assert_non_null(strstr(fs_threads_wait_note(), "GOMP_SPINCOUNT=5"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule),
        cmocka_unit_test(test_explicit_stays),
        cmocka_unit_test(test_wait_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
