/* test_distill_runtime.c — the distill mode's own pieces: the window-keyed
 * record files (reopen, a torn last record, another identity), top-k
 * selection and the teacher's top-k logits cache, and [distill] init
 * (parsing, the checks, which tensors are copied). */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "modes/distill/distill_internal.h"
#include "test_util.h"

static char dir[256];

static void scratch(const char *name, char *path, size_t cap) {
    snprintf(dir, sizeof dir, "%s/tests/distill_runtime.tmp", FS_BINARY_DIR);
    fs_error err = {0};
    assert_int_equal(fs_mkdirs(dir, &err), 0);
    snprintf(path, cap, "%s/%s", dir, name);
    unlink(path);
}

static off_t size_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static void test_dcache(void **state) {
    (void)state;
    char path[512];
    scratch("records.cache", path, sizeof path);
    fs_dcache *c;
    fs_error err = {0};
    assert_int_equal(fs_dcache_open(&c, path, 7, 1234, 12, &err), 0);
    assert_int_equal(fs_dcache_count(c), 0);
    unsigned char rec[12], got[12];
    for (uint64_t k = 0; k < 3000; k++) { /* past the first table growths */
        for (int i = 0; i < 12; i++) rec[i] = (unsigned char)(k * 13 + (uint64_t)i);
        assert_int_equal(fs_dcache_put(c, k * 0x9E3779B97F4A7C15ull, rec, &err), 0);
    }
    assert_int_equal(fs_dcache_get(c, 12345, got, &err), 0);
    fs_dcache_close(c);
    off_t full = size_of(path);
    assert_int_equal(full, 48 + 3000 * 20);
    /* a killed run leaves half a record: dropped on open */
    FILE *f = fopen(path, "ab");
    fwrite("torn", 1, 4, f);
    fclose(f);
    assert_int_equal(fs_dcache_open(&c, path, 7, 1234, 12, &err), 0);
    assert_int_equal(fs_dcache_count(c), 3000);
    assert_int_equal(size_of(path), full);
    for (uint64_t k = 0; k < 3000; k += 97) {
        assert_int_equal(fs_dcache_get(c, k * 0x9E3779B97F4A7C15ull, got, &err), 1);
        for (int i = 0; i < 12; i++) assert_int_equal(got[i], (unsigned char)(k * 13 + (uint64_t)i));
        assert_true(fs_dcache_has(c, k * 0x9E3779B97F4A7C15ull));
    }
    fs_dcache_close(c);
    /* another identity (another teacher): started afresh */
    assert_int_equal(fs_dcache_open(&c, path, 7, 999, 12, &err), 0);
    assert_int_equal(fs_dcache_count(c), 0);
    assert_int_equal(size_of(path), 48);
    fs_dcache_close(c);
    /* a directory that does not exist yet is made */
    snprintf(path + strlen(path), sizeof path - strlen(path), ".d/sub/x.cache");
    assert_int_equal(fs_dcache_open(&c, path, 1, 1, 4, &err), 0);
    fs_dcache_close(c);
}

static void test_topk(void **state) {
    (void)state;
    float x[8] = {0.5f, 3, -1, 3, 2, 7, 0, 2};
    int32_t idx[8];
    fs_topk(x, 8, 4, idx);
    int32_t want[4] = {5, 1, 3, 4}; /* ties: the lower index first */
    assert_memory_equal(idx, want, sizeof want);
    fs_topk(x, 8, 8, idx);
    int32_t all[8] = {5, 1, 3, 4, 7, 0, 6, 2};
    assert_memory_equal(idx, all, sizeof all);
}

static void test_topk_cache(void **state) {
    (void)state;
    fs_session *s = test_session("[model]\nvocab_size = 32\nn_layer = 1\nn_head = 2\nn_embd = 8\nmax_seq = 6\n");
    fs_model_init_weights(s->model, 5);
    char path[512];
    scratch("topk.cache", path, sizeof path);
    fs_topk_cache c;
    fs_error err = {0};
    enum { N = 3, T = 6, V = 32, K = 5 };
    int32_t in[N * T];
    for (size_t i = 0; i < N * T; i++) in[i] = (int32_t)((i * 5 + 1) % V);
    memcpy(in + 2 * T, in, T * sizeof(int32_t)); /* a repeated row in one batch */
    float *a = malloc(N * T * V * sizeof(float)), *b = malloc(N * T * V * sizeof(float));
    assert_int_equal(fs_topk_cache_open(&c, path, K, T, s->model, &err), 0);
    assert_int_equal(fs_topk_cache_logits(&c, s->model, in, N, a, &err), 0);
    assert_int_equal(c.misses, 3);
    assert_int_equal(fs_dcache_count(c.file), 2);
    fs_topk_cache_close(&c);
    /* the teacher's own logits: top K kept exactly, the rest -1e30; the
     * repeated row reads the first one's record (BLAS may differ in the last
     * bits by row position, and a rerun must see what this run saw) */
    assert_memory_equal(a + 2 * T * V, a, T * V * sizeof(float));
    assert_int_equal(fs_model_forward(s->model, in, N, T, &err), 0);
    for (size_t p = 0; p < 2 * T; p++) {
        int32_t idx[K];
        fs_topk(fs_model_logits(s->model) + p * V, V, K, idx);
        size_t kept = 0;
        for (size_t v = 0; v < V; v++) {
            int top = 0;
            for (size_t j = 0; j < K; j++) top |= idx[j] == (int32_t)v;
            if (top)
                assert_true(a[p * V + v] == fs_model_logits(s->model)[p * V + v]), kept++;
            else
                assert_true(a[p * V + v] == -1e30f);
        }
        assert_int_equal(kept, K);
    }
    /* reopened: every row from the file, the same numbers */
    assert_int_equal(fs_topk_cache_open(&c, path, K, T, s->model, &err), 0);
    assert_int_equal(fs_topk_cache_logits(&c, s->model, in, N, b, &err), 0);
    assert_int_equal(c.hits, 3);
    assert_int_equal(c.misses, 0);
    assert_memory_equal(a, b, N * T * V * sizeof(float));
    fs_topk_cache_close(&c);
    /* another teacher: the file starts afresh */
    fs_model_block(s->model)->params[0] += 1.0f;
    assert_int_equal(fs_topk_cache_open(&c, path, K, T, s->model, &err), 0);
    assert_int_equal(fs_dcache_count(c.file), 0);
    fs_topk_cache_close(&c);
    free(a);
    free(b);
    fs_session_close(s);
}

static fs_session *model_of(size_t L, size_t C, size_t H, size_t T) {
    char ini[256];
    snprintf(ini, sizeof ini, "[model]\nvocab_size = 16\nn_layer = %zu\nn_head = %zu\nn_embd = %zu\nmax_seq = %zu\n", L, H,
             C, T);
    return test_session(ini);
}

static void expect_error(const char *value, fs_session *st, fs_session *tt, const char *fragment) {
    fs_student_init in;
    fs_error err = {0};
    int rc = fs_student_init_plan(&in, value, "here", st->model, tt->model, &err);
    if (rc == 0 || !strstr(err.message, fragment) || strncmp(err.message, "here: ", 6) != 0) {
        fprintf(stderr, "init = %s: status %d, message '%s', expected '%s'\n", value, rc, err.message, fragment);
        fail();
    }
}

static void test_student_init(void **state) {
    (void)state;
    fs_session *tt = model_of(6, 8, 2, 8), *st = model_of(3, 8, 2, 4);
    fs_model_init_weights(tt->model, 1);
    fs_model_init_weights(st->model, 2);
    fs_student_init in;
    fs_error err = {0};
    assert_int_equal(fs_student_init_plan(&in, "random", "here", st->model, tt->model, &err), 0);
    assert_int_equal(in.kind, FS_INIT_RANDOM);
    assert_int_equal(fs_student_init_plan(&in, "teacher-every-other-layer", "here", st->model, tt->model, &err), 0);
    assert_int_equal(in.kind, FS_INIT_EVERY_OTHER);
    assert_int_equal(in.layers[2], 4);
    const char *forms[] = {"teacher-layers = 5,0,3", "teacher-layers:5,0,3", "teacher-layers 5, 0 ,3"};
    for (int f = 0; f < 3; f++) {
        assert_int_equal(fs_student_init_plan(&in, forms[f], "here", st->model, tt->model, &err), 0);
        assert_int_equal(in.kind, FS_INIT_LAYERS);
        assert_int_equal(in.layers[0], 5);
        assert_int_equal(in.layers[1], 0);
        assert_int_equal(in.layers[2], 3);
    }
    fs_student_init_apply(&in, st->model, tt->model);
    const fs_param_block *s = fs_model_block(st->model), *t = fs_model_block(tt->model);
    /* student layer i holds teacher layer 5, 0, 3; embeddings and ln_f copied */
    int64_t from[3] = {5, 0, 3};
    for (size_t v = 0; v < s->n_views; v++) {
        const char *name = s->views[v].name;
        char tname[96];
        int layer;
        if (sscanf(name, "transformer.h.%d.", &layer) == 1) {
            const char *rest = strchr(name + strlen("transformer.h."), '.') + 1;
            snprintf(tname, sizeof tname, "transformer.h.%lld.%s", (long long)from[layer], rest);
        } else {
            snprintf(tname, sizeof tname, "%s", name);
        }
        size_t tv = 0;
        while (strcmp(t->views[tv].name, tname) != 0) tv++;
        assert_memory_equal(s->params + s->views[v].offset, t->params + t->views[tv].offset,
                            s->views[v].numel * sizeof(float)); /* wpe: the first max_seq rows */
    }
    expect_error("teacher-layers = 0,2", st, tt, "lists 2 teacher layers, but the student has 3");
    expect_error("teacher-layers = 0,2,6", st, tt, "teacher layer 6 does not exist");
    expect_error("teacher-layers = a", st, tt, "not a list");
    expect_error("teacher", st, tt, "must be random, teacher-every-other-layer");
    fs_session *deep = model_of(4, 8, 2, 4), *narrow = model_of(3, 16, 2, 4);
    expect_error("teacher-every-other-layer", deep, tt, "at least 7 layers");
    expect_error("teacher-every-other-layer", narrow, tt, "needs equal widths");
    expect_error("teacher-every-other-layer", narrow, tt, "n_embd is 16");
    fs_session_close(deep);
    fs_session_close(narrow);
    fs_session_close(st);
    fs_session_close(tt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dcache),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_topk_cache),
        cmocka_unit_test(test_student_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
