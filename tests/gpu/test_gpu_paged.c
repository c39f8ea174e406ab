/* test_gpu_paged.c — dense attention's paged step (the serving engine's;
 * attention.h, "The paged KV cache") created for the device against the
 * same plugin created for the CPU, with the same inputs.
 *
 * Each side holds a pool of blocks: device memory through the backend on
 * the device's side, host memory on the CPU's. A script of ragged steps
 * runs on both: five sequences at different starts, prompt chunks of 1, 7,
 * 33, 130 and 400 rows, decode steps of one row per sequence, chunks and
 * decode rows mixed in one step; block tables of shuffled, non-consecutive
 * block ids; a sequence that joins sharing another's first two blocks (its
 * prompt prefix, which neither writes again); contexts up to 933. Head
 * widths 24, 32, 64 and 128, blocks of 16 and of 5 tokens, f32 and bf16
 * blocks ([generate] kv_dtype), laid 64 bytes apart as the host's pool
 * rounds them (one case pads). Every output must be within 1e-5 of the
 * CPU's (relative, with a floor of 1e-5 of the step's largest: bf16 blocks
 * hold the same rounded values on both sides, so the same tolerance), and
 * after the script the pools' bytes must be equal: what the device stored
 * is what the CPU stored, bit for bit. Batch invariance on the device: a
 * sequence's rows computed alone (a 130-row chunk, a decode row) equal,
 * bit for bit, the same rows computed inside the bigger step.
 *
 * With FS_GPU_TEST_BACKEND=cpu (gpu_compare.h) both sides are the CPU
 * plugin and must agree exactly; without a device the test exits 77. */
#include "gpu_compare.h"

#define F32 FS_DTYPE_F32
#define BF16 FS_DTYPE_BF16
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

typedef struct pg_config {
    size_t H, D, kb;
    int32_t kv_dtype;
} pg_config;

static const pg_config pg_configs[] = {
    {2, 32, 16, F32},  {2, 64, 5, F32},  {2, 128, 16, F32}, {3, 24, 5, F32},
    {2, 32, 5, BF16},  {1, 64, 16, BF16}, {2, 128, 5, BF16}, {3, 24, 16, BF16},
    {3, 24, 5, BF16}, /* 1440-byte blocks, 1472 apart in the pool */
};

#define PG_SEQS 5
#define PG_MAXLEN 1000 /* positions a sequence's table covers */
#define PG_SHARED 2    /* blocks sequence 4 shares with sequence 0 (its prefix) */

/* A step: (sequence, new tokens) in row order, ended by n_new 0. */
typedef struct pg_part {
    int seq;
    size_t n_new;
} pg_part;

static const pg_part pg_script[][PG_SEQS + 1] = {
    {{0, 130}, {1, 33}, {2, 7}, {3, 1}},
    {{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 33}}, /* 4 joins at PG_SHARED * kb, on 0's first blocks */
    {{1, 1}, {0, 400}, {4, 1}, {2, 130}},
    {{0, 400}, {3, 7}, {1, 1}},
    {{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}},
    {{4, 1}, {3, 1}, {2, 1}, {1, 1}, {0, 1}},
};
/* Steps where sequence 2 also runs alone first on the device. */
static const int pg_solo[N_OF(pg_script)] = {0, 0, 1, 0, 1, 0};

/* One side: the plugin on a backend and its pool. */
typedef struct pg_side {
    fs_backend_handle *b;
    const fs_attention_vtable *vt;
    void *self;
    fs_plugin_ctx ctx;
    void *pool;
    size_t block_bytes;
} pg_side;

/* The host's sequences: lengths so far, tables, token ids. */
typedef struct pg_seqs {
    size_t len[PG_SEQS], n_blocks;
    int32_t *blocks[PG_SEQS], *tokens[PG_SEQS];
} pg_seqs;

static void open_side(pg_side *s, fs_backend_handle *b, const pg_config *c, size_t n_blocks, size_t block_bytes,
                      const void *init) {
    memset(s, 0, sizeof *s);
    s->b = b;
    const fs_plugin *p = NULL;
    fs_error err = {0};
    gc_check_rc(fs_plugin_registry_get(&b->reg, FS_PLUGIN_ATTENTION, "dense", &p, &err), &err, "dense");
    s->vt = p->desc->vtable;
    assert_true(s->vt->flags & FS_ATTENTION_PAGED);
    if (b->device.type == FS_DEVICE_CUDA) assert_true(s->vt->flags & FS_ATTENTION_CUDA_PAGED);
    fs_attention_config ac = {sizeof ac, 0, c->H, c->D, c->H * c->D, 2048, 1, b->device, c->kv_dtype};
    fs_plugin_ctx_init(&s->ctx, &b->host, NULL, "layer0.attention", "dense");
    gc_check_rc(s->vt->create(&s->self, &b->host.api, &s->ctx, &ac, &err), &err, "attention create");
    /* the same layout on every device; blocks lie 64-byte aligned in the
     * pool, as the host's pool (kv_pool.c) rounds them */
    assert_int_equal(s->vt->paged_block_bytes(s->self, c->kb), 2 * c->H * c->kb * c->D * gc_es(c->kv_dtype));
    s->block_bytes = block_bytes;
    s->pool = gc_upload(b, init, n_blocks * block_bytes);
}

static void close_side(pg_side *s) {
    if (s->self) s->vt->destroy(s->self);
    gc_free(s->b, s->pool);
}

/* Tables of block ids drawn from a shuffled permutation of the pool's;
 * sequence 4's first PG_SHARED blocks are sequence 0's, and so are its
 * tokens there (a shared prompt prefix). */
static void seqs_open(pg_seqs *q, size_t kb, uint64_t seed) {
    size_t per = (PG_MAXLEN + kb - 1) / kb, total = PG_SEQS * per;
    int32_t *perm = malloc(total * sizeof *perm);
    assert_non_null(perm);
    for (size_t i = 0; i < total; i++) perm[i] = (int32_t)i;
    fs_rng r;
    fs_rng_seed(&r, seed);
    for (size_t i = total - 1; i > 0; i--) {
        size_t j = fs_rng_below(&r, i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    memset(q, 0, sizeof *q);
    q->n_blocks = per;
    for (int s = 0; s < PG_SEQS; s++) {
        q->blocks[s] = malloc(per * sizeof(int32_t));
        q->tokens[s] = malloc(PG_MAXLEN * sizeof(int32_t));
        assert_true(q->blocks[s] && q->tokens[s]);
        memcpy(q->blocks[s], perm + s * per, per * sizeof(int32_t));
        gc_fill_ids(q->tokens[s], PG_MAXLEN, 50000, seed + 1 + (uint64_t)s);
    }
    memcpy(q->blocks[4], q->blocks[0], PG_SHARED * sizeof(int32_t));
    memcpy(q->tokens[4], q->tokens[0], PG_SHARED * kb * sizeof(int32_t));
    q->len[4] = PG_SHARED * kb;
    free(perm);
}

static void seqs_close(pg_seqs *q) {
    for (int s = 0; s < PG_SEQS; s++) free(q->blocks[s]), free(q->tokens[s]);
}

/* The step's sequences (n_parts of them from `part`) at their lengths. */
static size_t step_seqs(fs_attention_paged_seq *out, const pg_seqs *q, const pg_part *part, size_t n_parts) {
    size_t row = 0;
    for (size_t i = 0; i < n_parts; i++) {
        int s = part[i].seq;
        out[i] = (fs_attention_paged_seq){q->len[s], part[i].n_new, row, q->blocks[s], q->n_blocks, q->tokens[s]};
        assert_true(q->len[s] + part[i].n_new <= PG_MAXLEN);
        row += part[i].n_new;
    }
    return row;
}

static fs_tensor on_side(const pg_side *s, void *p, size_t N, size_t H, size_t D) {
    fs_tensor t = fs_tensor_cpu_f32(p, 3, N, H, D, 0);
    t.device = s->b->device;
    return t;
}

static fs_attention_paged_args step_args(const pg_side *s, const pg_config *c, const fs_attention_paged_seq *seqs,
                                         size_t n_seqs, size_t N, void *q, void *k, void *v, void *out) {
    fs_attention_paged_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.n_seqs = n_seqs, a.seqs = seqs, a.n_rows = N;
    a.q = on_side(s, q, N, c->H, c->D), a.k = on_side(s, k, N, c->H, c->D), a.v = on_side(s, v, N, c->H, c->D);
    a.out = on_side(s, out, N, c->H, c->D);
    a.pool = s->pool, a.kv_block = c->kb, a.block_bytes = s->block_bytes;
    return a;
}

/* One step on side s; q, k, v, out are that side's buffers. */
static void run_step(pg_side *s, const pg_config *c, const fs_attention_paged_seq *seqs, size_t n_seqs, size_t N,
                     void *q, void *k, void *v, void *out, const char *what) {
    fs_attention_paged_args a = step_args(s, c, seqs, n_seqs, N, q, k, v, out);
    fs_error err = {0};
    gc_check_rc(s->vt->paged_step(s->self, &a, &err), &err, what);
}

/* bf16 activations are refused with a message, before anything is written. */
static void check_refused(pg_side *s, const pg_config *c, const fs_attention_paged_seq *seqs, size_t n_seqs, size_t N,
                          const gc_buf *q, const gc_buf *out) {
    fs_attention_paged_args a = step_args(s, c, seqs, n_seqs, N, q->d, q->d, q->d, out->d);
    a.q.dtype = a.k.dtype = a.v.dtype = BF16;
    fs_error err = {0};
    assert_int_equal(s->vt->paged_step(s->self, &a, &err), FS_ERR_UNSUPPORTED);
    if (!g_gc.exact) assert_non_null(strstr(err.message, "bf16"));
}

/* Sequence 2's rows of a step alone on the device, before the step (its
 * keys and values are then stored twice, the same bytes both times): the
 * outputs, as f32 on the host, and where they sit in the step. */
static float *solo_rows(pg_side *dut, const pg_config *c, const pg_part *part, const fs_attention_paged_seq *seqs,
                        size_t n_seqs, const gc_buf *q, const gc_buf *k, const gc_buf *v, size_t *at) {
    size_t i = 0, HD = c->H * c->D;
    while (i < n_seqs && part[i].seq != 2) i++;
    assert_true(i < n_seqs);
    fs_attention_paged_seq one = seqs[i];
    size_t n = one.n_new * HD, off = one.row * HD;
    one.row = 0;
    float *out = gc_alloc(dut->b, n * sizeof(float)), *host = test_fvec(n);
    run_step(dut, c, &one, 1, one.n_new, (float *)q->d + off, (float *)k->d + off, (float *)v->d + off, out,
             "paged step alone (dut)");
    gc_download(dut->b, host, out, n * sizeof(float));
    gc_free(dut->b, out);
    *at = off;
    return host;
}

/* Step st of the script on both sides, outputs compared. */
static void check_step(const pg_config *c, pg_side *dut, pg_side *ref, pg_seqs *q, size_t st, size_t idx,
                       const char *what) {
    const pg_part *part = pg_script[st];
    size_t n_parts = 0;
    while (n_parts < PG_SEQS && part[n_parts].n_new) n_parts++;
    fs_attention_paged_seq seqs[PG_SEQS];
    size_t N = step_seqs(seqs, q, part, n_parts), n = N * c->H * c->D;
    float *h = test_fvec(n), *got = test_fvec(n), *want = test_fvec(n), *solo = NULL;
    uint64_t seed = 5000 + 100 * idx + 10 * st;
    test_fill(h, n, 1.0f, seed);
    gc_buf bq = gc_put(h, n, F32);
    test_fill(h, n, 1.0f, seed + 1);
    gc_buf bk = gc_put(h, n, F32);
    test_fill(h, n, 1.0f, seed + 2);
    gc_buf bv = gc_put(h, n, F32);
    test_fill(h, n, 1e3f, seed + 3); /* junk the step must overwrite */
    gc_buf bo = gc_put(h, n, F32);
    if (st == 0) check_refused(dut, c, seqs, n_parts, N, &bq, &bo);
    size_t at = 0;
    if (pg_solo[st]) solo = solo_rows(dut, c, part, seqs, n_parts, &bq, &bk, &bv, &at);
    run_step(dut, c, seqs, n_parts, N, bq.d, bk.d, bv.d, bo.d, "paged step (dut)");
    run_step(ref, c, seqs, n_parts, N, bq.r, bk.r, bv.r, bo.r, "paged step (cpu)");
    gc_get(&bo, got, want);
    char msg[256];
    snprintf(msg, sizeof msg, "%s, step %zu (%zu rows)", what, st, N);
    if (g_gc.exact) test_close(msg, got, want, n, 0.0, 0.0);
    else test_close(msg, got, want, n, 1e-5 * gc_max_abs(want, n), 1e-5);
    if (solo) {
        size_t i = 0;
        while (part[i].seq != 2) i++;
        if (memcmp(solo, got + at, part[i].n_new * c->H * c->D * sizeof(float))) {
            fprintf(stderr, "%s: sequence 2's rows alone differ from the same rows in the step\n", msg);
            fail();
        }
        free(solo);
    }
    for (size_t i = 0; i < n_parts; i++) q->len[part[i].seq] += part[i].n_new;
    gc_drop(&bq), gc_drop(&bk), gc_drop(&bv), gc_drop(&bo);
    free(h), free(got), free(want);
}

/* The pools' bytes after the script: equal. */
static void check_pools(const pg_side *dut, const pg_side *ref, size_t bytes, const char *what) {
    unsigned char *a = malloc(bytes), *b = malloc(bytes);
    assert_true(a && b);
    gc_download(dut->b, a, dut->pool, bytes);
    gc_download(ref->b, b, ref->pool, bytes);
    for (size_t i = 0; i < bytes; i++)
        if (a[i] != b[i]) {
            fprintf(stderr, "%s: pool byte %zu (block %zu): device 0x%02x, cpu 0x%02x\n", what, i,
                    i / dut->block_bytes, a[i], b[i]);
            fail();
        }
    free(a), free(b);
}

static void check_config(const pg_config *c, size_t idx) {
    char what[160];
    snprintf(what, sizeof what, "dense paged, H %zu D %zu kv_block %zu, %s blocks", c->H, c->D, c->kb,
             gc_dtname(c->kv_dtype));
    pg_seqs q;
    seqs_open(&q, c->kb, 4000 + 10 * idx);
    size_t n_blocks = PG_SEQS * q.n_blocks;
    size_t block_bytes = (2 * c->H * c->kb * c->D * gc_es(c->kv_dtype) + 63) & ~(size_t)63;
    unsigned char *init = malloc(n_blocks * block_bytes); /* both pools start as the same bytes */
    assert_non_null(init);
    fs_rng r;
    fs_rng_seed(&r, 4100 + idx);
    for (size_t i = 0; i < n_blocks * block_bytes; i++) init[i] = (unsigned char)fs_rng_below(&r, 256);
    pg_side dut, ref;
    open_side(&ref, &g_gc.ref, c, n_blocks, block_bytes, init);
    open_side(&dut, &g_gc.dut, c, n_blocks, block_bytes, init);
    for (size_t st = 0; st < N_OF(pg_script); st++) check_step(c, &dut, &ref, &q, st, idx, what);
    check_pools(&dut, &ref, n_blocks * block_bytes, what);
    fprintf(stderr, "%s: %zu steps agree, pools equal\n", what, N_OF(pg_script));
    close_side(&dut);
    close_side(&ref);
    seqs_close(&q);
    free(init);
}

static void test_paged(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(pg_configs); i++) check_config(&pg_configs[i], i);
}

int main(void) {
    if (!gc_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paged),
    };
    return cmocka_run_group_tests(tests, gc_setup, gc_teardown);
}
