/* test_gpu_batch.c — the serving engine's ragged step on a device
 * (model/device_batch.h) against the CPU's (model/batch.h, itself checked
 * against the training forward and, through it, PyTorch).
 *
 * One script of steps runs on both, with the same block tables: a pool on
 * the host for fs_batch_run, a pool in the device's memory
 * (fs_kv_pool_create_on) for fs_device_batch_run. It covers prompts cut
 * into chunks, decodes of several sequences in one step, the logits of
 * every prompt row (FS_BATCH_LOGITS_ALL), a sequence starting on blocks
 * another one computed (prefix sharing), a copy-on-write of a shared block
 * before it is written, and a sequence swapped out to the pinned swap area
 * and back into other blocks. Every step's logits agree within 2e-5 of
 * the largest (the products' sums run in other orders: cuBLAS or OpenBLAS
 * against the CPU step's fixed-order kernels), with f32 and bf16 blocks.
 * Bad steps (too many rows, a token outside the vocabulary, past max_seq)
 * are refused with a message and change nothing.
 *
 * FS_GPU_TEST_BACKEND=cpu runs the step through the cpu backend instead of
 * CUDA: the same code path on any machine (ctest's test_gpu_batch_cpu). */
#include <math.h>

#include "gpu_compare.h"
#include "model/batch.h"
#include "model/device_batch.h"
#include "model/kv_pool.h"

#define GRAPH                                                                                                   \
    "[model]\nvocab_size = 300\nn_layer = 2\nn_head = 2\nn_embd = 64\nmax_seq = 96\n[attention]\nplugin = "    \
    "dense\n[generate]\nkv_dtype = %s\n"

enum { KB = 8, N_BLOCKS = 48, N_SWAP = 8, MAX_ROWS = 64, MAX_LOGITS = 48, V = 300 };

typedef struct side_pair {
    fs_session *s;
    fs_backend_handle dut;
    fs_device_batch *db;
    fs_kv_pool *dpool;
    fs_batch *b;
    fs_kv_pool *hpool;
    float *dlogits, *hlogits;
} side_pair;

static void open_pair(side_pair *p, const char *kv_dtype) {
    char ini[512];
    snprintf(ini, sizeof ini, GRAPH, kv_dtype);
    memset(p, 0, sizeof *p);
    p->s = test_session(ini);
    fs_model_init_weights(p->s->model, 7);
    fs_error err = {0};
    gc_check_rc(fs_backend_handle_open(&p->dut, gc_dut_name(), 0, NULL, &err), &err, "open the backend");
    fs_device_batch_config c = {.struct_size = sizeof c, .backend = &p->dut, .host = &p->s->host,
                                .kv_dtype = strcmp(kv_dtype, "bf16") ? FS_DTYPE_F32 : FS_DTYPE_BF16,
                                .max_rows = MAX_ROWS, .max_logits = MAX_LOGITS};
    gc_check_rc(fs_device_batch_create(&p->db, p->s->model, &c, &err), &err, "device batch");
    gc_check_rc(fs_kv_pool_create_on(&p->dpool, p->s->model, KB, N_BLOCKS, N_SWAP, &p->dut, &err), &err,
                "device pool");
    gc_check_rc(fs_batch_create(&p->b, p->s->model, MAX_ROWS, MAX_LOGITS, &err), &err, "batch");
    gc_check_rc(fs_kv_pool_create(&p->hpool, p->s->model, KB, N_BLOCKS, N_SWAP, &err), &err, "host pool");
    p->dlogits = test_fvec(MAX_LOGITS * V);
    p->hlogits = test_fvec(MAX_LOGITS * V);
}

static void close_pair(side_pair *p) {
    fs_device_batch_destroy(p->db);
    fs_kv_pool_destroy(p->dpool);
    fs_batch_destroy(p->b);
    fs_kv_pool_destroy(p->hpool);
    fs_backend_handle_close(&p->dut);
    fs_session_close(p->s);
    free(p->dlogits);
    free(p->hlogits);
}

/* A sequence of the script: its tokens and its block table (the same ids
 * in both pools: every pool call below is made on both, in the same
 * order, and the pools hand out blocks alike). */
typedef struct script_seq {
    int32_t tok[96];
    int32_t table[12];
    size_t len; /* tokens in its cache */
} script_seq;

/* Both pools: the same call, the same answer. */
static int32_t both_alloc(side_pair *p) {
    int32_t a = fs_kv_pool_alloc(p->dpool), b = fs_kv_pool_alloc(p->hpool);
    assert_int_equal(a, b);
    assert_true(a >= 0);
    return a;
}

/* Blocks for positions up to `end` not yet in the table. */
static void grow(side_pair *p, script_seq *q, size_t end) {
    for (size_t i = (q->len + KB - 1) / KB; i < (end + KB - 1) / KB; i++) q->table[i] = both_alloc(p);
}

/* One step on both sides; the logits must agree. */
static void step(side_pair *p, script_seq **seqs, const size_t *n_new, const int *logits, size_t n, const char *what) {
    fs_batch_seq bs[8];
    size_t n_logits = 0;
    for (size_t i = 0; i < n; i++) {
        grow(p, seqs[i], seqs[i]->len + n_new[i]);
        bs[i] = (fs_batch_seq){.start = seqs[i]->len, .n_new = n_new[i], .tokens = seqs[i]->tok,
                               .blocks = seqs[i]->table, .n_blocks = (seqs[i]->len + n_new[i] + KB - 1) / KB,
                               .logits = logits[i]};
        n_logits += fs_batch_logit_rows(&bs[i]);
    }
    fs_error err = {0};
    gc_check_rc(fs_device_batch_run(p->db, p->dpool, bs, n, p->dlogits, &err), &err, what);
    gc_check_rc(fs_batch_run(p->b, p->s->model, NULL, p->hpool, bs, n, p->hlogits, &err), &err, what);
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n_logits * V; i++) {
        double a = fabs((double)p->hlogits[i]);
        scale = a > scale ? a : scale;
        double d = fabs((double)p->dlogits[i] - p->hlogits[i]);
        worst = d > worst || d != d ? d : worst;
    }
    if (!(worst <= 2e-5 * scale) || n_logits == 0) {
        fprintf(stderr, "%s: %zu rows of logits, worst difference %g, largest logit %g\n", what, n_logits, worst, scale);
        fail();
    }
    for (size_t i = 0; i < n; i++) seqs[i]->len += n_new[i];
}

static void fill_tokens(script_seq *q, uint64_t seed) { gc_fill_ids(q->tok, 96, V, seed); }

/* Prompts in chunks, several decodes per step, every prompt row's
 * logits. */
static void run_prompts(side_pair *p, script_seq *a, script_seq *b) {
    script_seq *s2[] = {a, b};
    step(p, s2, (size_t[]){16, 7}, (int[]){0, 1}, 2, "a prompt chunk beside a whole prompt");
    step(p, s2, (size_t[]){24, 1}, (int[]){FS_BATCH_LOGITS_ALL, 1}, 2, "every row of a chunk, and a decode");
    for (int i = 0; i < 5; i++) step(p, s2, (size_t[]){1, 1}, (int[]){1, 1}, 2, "two decodes");
}

/* c starts on a's first two blocks (its first 16 tokens); d shares a's
 * first three and writes into the third: copy-on-write first. */
static void run_shared(side_pair *p, script_seq *a, script_seq *c, script_seq *d) {
    memcpy(c->tok, a->tok, 16 * sizeof(int32_t));
    for (int i = 0; i < 2; i++) {
        c->table[i] = a->table[i];
        fs_kv_pool_ref(p->dpool, a->table[i]);
        fs_kv_pool_ref(p->hpool, a->table[i]);
    }
    c->len = 16;
    memcpy(d->tok, a->tok, 20 * sizeof(int32_t));
    d->tok[20] = (a->tok[20] + 1) % V;
    for (int i = 0; i < 3; i++) {
        d->table[i] = a->table[i];
        fs_kv_pool_ref(p->dpool, a->table[i]);
        fs_kv_pool_ref(p->hpool, a->table[i]);
    }
    d->len = 20;
    fs_error err = {0};
    int32_t dd = d->table[2], hd = d->table[2];
    gc_check_rc(fs_kv_pool_cow(p->dpool, &dd, &err), &err, "cow");
    gc_check_rc(fs_kv_pool_cow(p->hpool, &hd, &err), &err, "cow");
    assert_int_equal(dd, hd);
    assert_int_not_equal(dd, a->table[2]);
    d->table[2] = dd;
    script_seq *s3[] = {c, d, a};
    step(p, s3, (size_t[]){5, 1, 1}, (int[]){1, 1, 1}, 3, "on shared blocks, after a copy-on-write");
}

/* b's blocks go to the swap area and come back in other blocks. */
static void run_swapped(side_pair *p, script_seq *a, script_seq *b) {
    size_t nb = (b->len + KB - 1) / KB;
    int32_t slot[12];
    for (size_t i = 0; i < nb; i++) {
        slot[i] = fs_kv_pool_swap_out(p->dpool, b->table[i]);
        assert_int_equal(fs_kv_pool_swap_out(p->hpool, b->table[i]), slot[i]);
        assert_true(slot[i] >= 0);
    }
    script_seq *s1[] = {a};
    step(p, s1, (size_t[]){1}, (int[]){1}, 1, "while another is swapped out"); /* may reuse b's blocks */
    for (size_t i = 0; i < nb; i++) {
        b->table[i] = fs_kv_pool_swap_in(p->dpool, slot[i]);
        assert_int_equal(fs_kv_pool_swap_in(p->hpool, slot[i]), b->table[i]);
    }
    script_seq *s2[] = {b, a};
    step(p, s2, (size_t[]){1, 1}, (int[]){1, 1}, 2, "swapped back in");
}

static void run_refusals(side_pair *p, script_seq *a) {
    fs_error err = {0};
    fs_batch_seq big = {.start = 0, .n_new = MAX_ROWS + 1, .tokens = a->tok, .blocks = a->table,
                        .n_blocks = 12, .logits = 1};
    assert_int_equal(fs_device_batch_run(p->db, p->dpool, &big, 1, p->dlogits, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "room for 64"));
    a->tok[a->len] = V;
    fs_batch_seq bad = {.start = a->len, .n_new = 1, .tokens = a->tok, .blocks = a->table, .n_blocks = 12,
                        .logits = 1};
    assert_int_equal(fs_device_batch_run(p->db, p->dpool, &bad, 1, p->dlogits, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "token id 300 outside the vocabulary"));
    a->tok[a->len] = 1;
    fs_batch_seq past = {.start = 95, .n_new = 2, .tokens = a->tok, .blocks = a->table, .n_blocks = 12, .logits = 1};
    assert_int_equal(fs_device_batch_run(p->db, p->dpool, &past, 1, p->dlogits, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "past max_seq 96"));
}

static void run_script(const char *kv_dtype) {
    side_pair p;
    open_pair(&p, kv_dtype);
    static script_seq a, b, c, d;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b), memset(&c, 0, sizeof c), memset(&d, 0, sizeof d);
    fill_tokens(&a, 1), fill_tokens(&b, 2), fill_tokens(&c, 3), fill_tokens(&d, 4);
    run_prompts(&p, &a, &b);
    run_shared(&p, &a, &c, &d);
    run_swapped(&p, &a, &b);
    run_refusals(&p, &a);
    script_seq *s1[] = {&a};
    step(&p, s1, (size_t[]){1}, (int[]){1}, 1, "after the refusals");
    close_pair(&p);
}

static void test_step_f32_blocks(void **state) {
    (void)state;
    run_script("f32");
}

static void test_step_bf16_blocks(void **state) {
    (void)state;
    run_script("bf16");
}

/* A layer whose plugin has no paged step on CUDA is named. */
static void test_unsupported_named(void **state) {
    (void)state;
    fs_session *s = test_session("[model]\nvocab_size = 300\nn_layer = 2\nn_head = 2\nn_embd = 64\nmax_seq = 96\n"
                                 "[attention]\nplugin = lsh\n");
    char why[256] = "";
    fs_device cuda = {FS_DEVICE_CUDA, 0};
    assert_int_equal(fs_device_batch_supported(s->model, cuda, why, sizeof why), FS_ERR_UNSUPPORTED);
    assert_non_null(strstr(why, "layer 0: attention plugin 'lsh' has no paged step on CUDA"));
    fs_session_close(s);
}

int main(void) {
    if (!gc_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_f32_blocks),
        cmocka_unit_test(test_step_bf16_blocks),
        cmocka_unit_test(test_unsupported_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
