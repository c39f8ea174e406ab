/* test_paged.c — the attention plugins' paged step (ABI 1.2) and the
 * ragged model step over it (model/batch.h).
 *
 * The reference for a paged plugin is its own decode step (a separate code
 * path over its contiguous cache), itself tested against the training
 * forward: dense, longformer (sinks, token-triggered globals, dilation,
 * far past max_seq with the blocks paged_retain lets go poisoned with NaN)
 * and lsh (buckets and the recent window). Batch invariance: the same
 * sequence cut into steps differently (whole, chunks, one token at a time)
 * and sharing its steps with another sequence gives bitwise the same
 * outputs. The model step is checked the same way, and against the
 * training forward. */
#include <string.h>

#include "compute/qweights.h"
#include "attention/paged.h"
#include "fastserve/bf16.h"
#include "model/batch.h"
#include "model/kv_pool.h"
#include "test_util.h"

#define TINY                                                                                                     \
    "[model]\nvocab_size = 32\nn_layer = 2\nn_head = 2\nn_embd = 16\nmax_seq = 24\n[attention]\nplugin = %s\n%s"

enum { H = 2, D = 8, C = 16, KB = 4 };

static fs_session *session_of(const char *plugin, const char *keys) {
    char ini[512];
    snprintf(ini, sizeof ini, TINY, plugin, keys);
    fs_session *s = test_session(ini);
    fs_model_init_weights(s->model, 11);
    fs_error err = {0};
    assert_int_equal(fs_model_init_plugin_params(s->model, &err), 0);
    return s;
}

/* One sequence's inputs to a layer: per position q, k, v (H, D), x (C), token. */
typedef struct inputs {
    size_t T;
    float *q, *k, *v, *x;
    int32_t *tok;
} inputs;

static inputs inputs_of(size_t T, uint64_t seed) {
    inputs in = {T, test_fvec(T * C), test_fvec(T * C), test_fvec(T * C), test_fvec(T * C), calloc(T, 4)};
    test_fill(in.q, T * C, 1.0f, seed);
    test_fill(in.k, T * C, 1.0f, seed + 1);
    test_fill(in.v, T * C, 1.0f, seed + 2);
    test_fill(in.x, T * C, 1.0f, seed + 3);
    for (size_t t = 0; t < T; t++) in.tok[t] = (int32_t)((t * 7 + seed * 5) % 5); /* ids 1 and 2 come often */
    return in;
}

static void inputs_free(inputs *in) {
    free(in->q);
    free(in->k);
    free(in->v);
    free(in->x);
    free(in->tok);
}

/* Layer 0's decode step over every position: the reference. */
static float *decode_outputs(fs_model *m, const inputs *in) {
    void *self;
    const fs_attention_vtable *vt = fs_model_attention(m, 0, &self);
    void *cache = malloc(vt->cache_bytes(self, 1, in->T));
    fs_error err = {0};
    assert_int_equal(vt->cache_reset(self, cache, 1, in->T, &err), 0);
    float *out = test_fvec(in->T * C);
    for (size_t p = 0; p < in->T; p++) {
        fs_attention_decode_args da = {.struct_size = sizeof da, .B = 1, .pos = p, .token = in->tok[p]};
        da.q = fs_tensor_cpu_f32(in->q + p * C, 4, 1, H, 1, D);
        da.k = fs_tensor_cpu_f32(in->k + p * C, 4, 1, H, 1, D);
        da.v = fs_tensor_cpu_f32(in->v + p * C, 4, 1, H, 1, D);
        da.out = fs_tensor_cpu_f32(out + p * C, 4, 1, H, 1, D);
        da.x = fs_tensor_cpu_f32(in->x + p * C, 3, 1, 1, C, 0);
        int rc = vt->decode(self, cache, &da, &err);
        if (rc) fprintf(stderr, "decode: %s\n", err.message);
        assert_int_equal(rc, 0);
    }
    free(cache);
    return out;
}

/* A sequence in a pool: its block table and how far it is. */
typedef struct pseq {
    const inputs *in;
    int32_t table[512];
    size_t len;
    float *out; /* (T, C) */
} pseq;

/* Blocks a plugin let go are filled with NaN: reading one shows. */
static void poison(fs_kv_pool *pool, int32_t b) {
    float *blk = (float *)((char *)fs_kv_pool_layer(pool, 0) + (size_t)b * fs_kv_pool_layer_bytes(pool, 0));
    for (size_t i = 0; i < fs_kv_pool_layer_bytes(pool, 0) / sizeof(float); i++) blk[i] = NAN;
}

/* One paged step of layer 0: each sequence i adds n[i] tokens. */
static void paged_step(fs_model *m, fs_kv_pool *pool, pseq **sq, const size_t *n, size_t ns) {
    void *self;
    const fs_attention_vtable *vt = fs_model_attention(m, 0, &self);
    size_t rows = 0;
    for (size_t i = 0; i < ns; i++) rows += n[i];
    float *q = test_fvec(rows * C), *k = test_fvec(rows * C), *v = test_fvec(rows * C), *x = test_fvec(rows * C);
    float *out = test_fvec(rows * C);
    fs_attention_paged_seq ps[4];
    size_t row = 0;
    for (size_t i = 0; i < ns; i++) {
        pseq *s = sq[i];
        for (size_t p = s->len; p < s->len + n[i]; p++) {
            if (p % KB == 0) assert_true((s->table[p / KB] = fs_kv_pool_alloc(pool)) >= 0);
            memcpy(q + (row + p - s->len) * C, s->in->q + p * C, C * sizeof(float));
            memcpy(k + (row + p - s->len) * C, s->in->k + p * C, C * sizeof(float));
            memcpy(v + (row + p - s->len) * C, s->in->v + p * C, C * sizeof(float));
            memcpy(x + (row + p - s->len) * C, s->in->x + p * C, C * sizeof(float));
        }
        ps[i] = (fs_attention_paged_seq){.start = s->len, .n_new = n[i], .row = row, .blocks = s->table,
                                         .n_blocks = (s->len + n[i] + KB - 1) / KB, .tokens = s->in->tok};
        row += n[i];
    }
    fs_attention_paged_args pa = {.struct_size = sizeof pa, .n_seqs = ns, .seqs = ps, .n_rows = rows,
                                  .pool = fs_kv_pool_layer(pool, 0), .kv_block = KB,
                                  .block_bytes = fs_kv_pool_layer_bytes(pool, 0)};
    pa.q = fs_tensor_cpu_f32(q, 3, rows, H, D, 0);
    pa.k = fs_tensor_cpu_f32(k, 3, rows, H, D, 0);
    pa.v = fs_tensor_cpu_f32(v, 3, rows, H, D, 0);
    pa.out = fs_tensor_cpu_f32(out, 3, rows, H, D, 0);
    pa.x = fs_tensor_cpu_f32(x, 2, rows, C, 0, 0);
    fs_error err = {0};
    int rc = vt->paged_step(self, &pa, &err);
    if (rc) fprintf(stderr, "paged_step: %s\n", err.message);
    assert_int_equal(rc, 0);
    row = 0;
    for (size_t i = 0; i < ns; i++) {
        pseq *s = sq[i];
        memcpy(s->out + s->len * C, out + row * C, n[i] * C * sizeof(float));
        row += n[i];
        s->len += n[i];
        if (!(vt->flags & FS_ATTENTION_BOUNDED_CACHE)) continue;
        uint8_t keep[512];
        size_t nb = (s->len + KB - 1) / KB;
        assert_int_equal(fs_model_paged_retain(m, s->len, s->in->tok, KB, keep, nb, &err), 0);
        for (size_t b = 0; b < nb; b++)
            if (!keep[b] && s->table[b] >= 0) {
                poison(pool, s->table[b]);
                fs_kv_pool_unref(pool, s->table[b]);
                s->table[b] = FS_PAGED_NO_BLOCK;
            }
        size_t held = 0;
        for (size_t b = 0; b < nb; b++) held += s->table[b] >= 0;
        assert_true(held <= fs_model_paged_max_blocks(m, KB));
    }
    free(q);
    free(k);
    free(v);
    free(x);
    free(out);
}

/* a runs in steps of a_chunk tokens (0: all at once); b, when given, in
 * steps of one token alongside it while both last. */
static float *run_paged(fs_model *m, const inputs *a, size_t a_chunk, const inputs *b) {
    fs_kv_pool *pool;
    fs_error err = {0};
    assert_int_equal(fs_kv_pool_create(&pool, m, KB, 400, 0, &err), 0);
    pseq sa = {.in = a, .out = test_fvec(a->T * C)}, sb = {.in = b, .out = b ? test_fvec(b->T * C) : NULL};
    while (sa.len < a->T || (b && sb.len < b->T)) {
        pseq *sq[2];
        size_t n[2], ns = 0;
        if (sa.len < a->T) {
            size_t c = a_chunk ? a_chunk : a->T;
            n[ns] = a->T - sa.len < c ? a->T - sa.len : c;
            sq[ns++] = &sa;
        }
        if (b && sb.len < b->T) {
            n[ns] = 1;
            sq[ns++] = &sb;
        }
        paged_step(m, pool, sq, n, ns);
    }
    free(sb.out);
    fs_kv_pool_destroy(pool);
    return sa.out;
}

/* The same sequence cut into steps differently, and beside another
 * sequence: bitwise the outputs it had in one step (`whole`). */
static void check_invariant(const char *plugin, fs_model *m, const inputs *a, const inputs *b, const float *whole) {
    const size_t chunks[] = {1, 3, 5};
    for (size_t i = 0; i < 3; i++) {
        float *got = run_paged(m, a, chunks[i], i == 1 ? b : NULL);
        if (memcmp(got, whole, a->T * C * sizeof(float)) != 0) {
            fprintf(stderr, "%s: chunks of %zu%s differ from the whole in the last bits\n", plugin, chunks[i],
                    i == 1 ? " beside another sequence" : "");
            fail();
        }
        free(got);
    }
}

static void check_plugin(const char *plugin, const char *keys, size_t T) {
    fs_session *s = session_of(plugin, keys);
    fs_model *m = s->model;
    inputs a = inputs_of(T, 3), b = inputs_of(T / 2 + 3, 50);
    float *want = decode_outputs(m, &a);
    float *whole = run_paged(m, &a, T <= 24 ? 0 : 24, NULL);
    test_close(plugin, whole, want, T * C, 2e-5, 1e-4);
    check_invariant(plugin, m, &a, &b, whole);
    free(want);
    free(whole);
    inputs_free(&a);
    inputs_free(&b);
    fs_session_close(s);
}

/* ---- bf16 blocks ([generate] kv_dtype = bf16, FS_ATTENTION_PAGED_BF16) ---- */

static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = fs_bf16_to_f32(fs_bf16_from_f32(x[i]));
}

/* The paged step with bf16 blocks against the plugin's f32 decode step fed
 * keys and values rounded to bf16 first: the same stored values, so for
 * what the plugin stores as given (dense, longformer's local keys) the
 * results agree as closely as f32's; lsh normalises keys and longformer
 * projects global ones before rounding, so there the tolerance is bf16's
 * (8 bits of mantissa: scores off by about |q| |k| 2^-9). Then batch
 * invariance, bitwise, as with f32; and blocks of half the bytes where
 * everything stored is a key or a value. */
static void check_plugin_bf16(const char *plugin, const char *keys, size_t T, double tol, int half_bytes) {
    char k2[512];
    snprintf(k2, sizeof k2, "%s\n[generate]\nkv_dtype = bf16\n", keys);
    fs_session *s = session_of(plugin, k2), *f = session_of(plugin, keys);
    fs_model *m = s->model;
    inputs a = inputs_of(T, 3), b = inputs_of(T / 2 + 3, 50), r = inputs_of(T, 3);
    round_bf16(r.k, T * C);
    round_bf16(r.v, T * C);
    float *want = decode_outputs(m, &r);
    float *whole = run_paged(m, &a, T <= 24 ? 0 : 24, NULL);
    test_close(plugin, whole, want, T * C, tol, tol);
    check_invariant(plugin, m, &a, &b, whole);
    void *self16, *self32;
    const fs_attention_vtable *vt = fs_model_attention(m, 0, &self16);
    fs_model_attention(f->model, 0, &self32);
    size_t b16 = vt->paged_block_bytes(self16, KB), b32 = vt->paged_block_bytes(self32, KB);
    if (half_bytes) assert_int_equal(2 * b16, b32);
    else assert_true(b16 < b32);
    free(want);
    free(whole);
    inputs_free(&a);
    inputs_free(&b);
    inputs_free(&r);
    fs_session_close(s);
    fs_session_close(f);
}

static void test_bf16_blocks(void **state) {
    (void)state;
    check_plugin_bf16("dense", "", 24, 2e-5, 1);
    check_plugin_bf16("longformer", "window = 3\ndilation = 1,2\n", 96, 2e-5, 1);
    check_plugin_bf16("longformer", "window = 4\nglobal = token:1,2\nglobal_cache = 3\n", 96, 2e-2, 1);
    check_plugin_bf16("longformer", "window = 5\nglobal = 0,6,9\n", 96, 2e-2, 1);
    check_plugin_bf16("lsh", "n_hashes = 2\nn_buckets = 4\ndecode_window = 3\n", 24, 2e-2, 0);
}

/* paged_dots scores keys four at a time with the lane trees in registers;
 * a key's score must have the bits paged_dot gives it alone (which keys
 * share a group of four depends on how full the step left the block), for
 * f32 and bf16 keys, every count of keys and widths with and without a
 * vector path, against the definition (test_dot_lanes). */
static void test_paged_dots_match_definition(void **state) {
    (void)state;
    const size_t widths[] = {8, 24, 64, 20};
    for (size_t wi = 0; wi < 4; wi++)
        for (size_t es = 2; es <= 4; es += 2)
            for (size_t n = 1; n <= 9; n++) {
                size_t D = widths[wi], ld = D + 3;
                float *q = test_fvec(D), *kf = test_fvec(n * ld), w[9];
                test_fill(q, D, 1.0f, 7 + n);
                test_fill(kf, n * ld, 1.0f, 70 + n);
                fs_bf16 kb[9 * 67];
                for (size_t i = 0; i < n * ld; i++) {
                    kb[i] = fs_bf16_from_f32(kf[i]);
                    if (es == 2) kf[i] = fs_bf16_to_f32(kb[i]); /* the values bf16 keys hold */
                }
                const void *k = es == 2 ? (const void *)kb : (const void *)kf;
                paged_dots(w, q, k, ld, n, D, 0.125f, es);
                for (size_t t = 0; t < n; t++) {
                    float one = test_dot_lanes(q, kf + t * ld, D) * 0.125f;
                    assert_memory_equal(&w[t], &one, sizeof one);
                    float alone = paged_dot(q, paged_kv_at(k, t * ld, es), D, es) * 0.125f;
                    assert_memory_equal(&alone, &one, sizeof one);
                }
                free(q);
                free(kf);
            }
}

/* A plugin without FS_ATTENTION_PAGED_BF16 is refused by name, with the fix. */
static void test_bf16_refused_without_the_flag(void **state) {
    (void)state;
    char ini[512];
    snprintf(ini, sizeof ini, TINY, "dense_v11", "[generate]\nkv_dtype = bf16\n");
    test_session_error(ini, "'dense_v11'", "kv_dtype = f32");
}

static void test_dense_paged(void **state) {
    (void)state;
    check_plugin("dense", "", 24);
}

static void test_lsh_paged(void **state) {
    (void)state;
    check_plugin("lsh", "n_hashes = 2\nn_buckets = 4\ndecode_window = 3\n", 24);
    check_plugin("lsh", "n_hashes = 1\nn_buckets = 2\ndecode_window = 30\n", 24);
}

/* Far past max_seq (24): released blocks are poisoned, so reading one
 * would put NaN in the outputs. */
static void test_longformer_paged(void **state) {
    (void)state;
    check_plugin("longformer", "window = 3\ndilation = 1,2\nglobal = first:2\n", 96);
    check_plugin("longformer", "window = 4\nglobal = token:1,2\nglobal_cache = 3\n", 96);
    check_plugin("longformer", "window = 2\n", 96);
    check_plugin("longformer", "window = 5\nglobal = 0,6,9\n", 96);
}

/* ---- the model step ---- */

/* Logits of every position of `tok`, the sequence alone in steps of
 * `chunk` tokens; other, when given, beside it one token at a time; the
 * weights read as sw holds them (NULL: the model's own). */
static float *model_logits(fs_model *m, const fs_step_weights *sw, const int32_t *tok, size_t T, size_t chunk,
                           const int32_t *other) {
    fs_error err = {0};
    fs_kv_pool *pool;
    fs_batch *b;
    assert_int_equal(fs_kv_pool_create(&pool, m, KB, 64, 0, &err), 0);
    assert_int_equal(fs_batch_create(&b, m, 32, 2, &err), 0);
    int32_t ta[64], tb[64];
    size_t la = 0, lb = 0;
    float *want = test_fvec(T * 32), logits[2 * 32];
    while (la < T) {
        fs_batch_seq sq[2];
        size_t ns = 0;
        /* one step per token of a's logits: chunks end where a position's logits are wanted */
        size_t n = chunk < T - la ? chunk : T - la;
        for (size_t p = la; p < la + n; p++)
            if (p % KB == 0) assert_true((ta[p / KB] = fs_kv_pool_alloc(pool)) >= 0);
        sq[ns++] = (fs_batch_seq){.start = la, .n_new = n, .tokens = tok, .blocks = ta, .n_blocks = (la + n + KB - 1) / KB,
                                  .logits = 1};
        if (other && lb < T) {
            if (lb % KB == 0) assert_true((tb[lb / KB] = fs_kv_pool_alloc(pool)) >= 0);
            sq[ns++] = (fs_batch_seq){.start = lb, .n_new = 1, .tokens = other, .blocks = tb,
                                      .n_blocks = lb / KB + 1, .logits = 1};
            lb++;
        }
        int rc = fs_batch_run(b, m, sw, pool, sq, ns, logits, &err);
        if (rc) fprintf(stderr, "step: %s\n", err.message);
        assert_int_equal(rc, 0);
        memcpy(want + (la + n - 1) * 32, logits, 32 * sizeof(float));
        la += n;
    }
    fs_batch_destroy(b);
    fs_kv_pool_destroy(pool);
    return want;
}

/* Logits of the last token of each prefix: the step against the training
 * forward, and bitwise the same however the prefix was stepped. */
static void check_model(const char *plugin, const char *keys) {
    fs_session *s = session_of(plugin, keys);
    fs_model *m = s->model;
    enum { T = 20 };
    int32_t tok[T], other[T];
    for (size_t i = 0; i < T; i++) tok[i] = (int32_t)((i * 7 + 3) % 32), other[i] = (int32_t)((i * 5 + 1) % 32);
    fs_error err = {0};
    assert_int_equal(fs_model_forward(m, tok, 1, T, &err), 0);
    const float *fwd = fs_model_logits(m);
    /* the packed f32 projections (what generate and the server read) are
     * the same products: the same bits as the model's own weights */
    fs_step_weights *packed;
    assert_int_equal(fs_step_weights_create(&packed, m, FS_WEIGHTS_F32, 32, 2, &err), 0);
    float *one = model_logits(m, NULL, tok, T, 1, NULL), *mixed = model_logits(m, packed, tok, T, 1, other);
    test_close(plugin, one, fwd, T * 32, 1e-4, 1e-4);
    assert_memory_equal(one, mixed, T * 32 * sizeof(float));
    /* a prefix computed in one chunk: its last position's logits */
    for (size_t n = 1; n <= T; n += 6) {
        float *chunked = model_logits(m, n % 2 ? packed : NULL, tok, n, n, other);
        assert_memory_equal(chunked + (n - 1) * 32, one + (n - 1) * 32, 32 * sizeof(float));
        free(chunked);
    }
    free(one);
    free(mixed);
    fs_step_weights_destroy(packed);
    fs_session_close(s);
}

static void test_model_step(void **state) {
    (void)state;
    check_model("dense", "");
    check_model("longformer", "window = 4\nglobal = first:2\n");
    check_model("lsh", "n_hashes = 1\nn_buckets = 2\ndecode_window = 30\nchunk = 32\n");
}

/* A reversible model decodes what its forward computes (the step keeps the
 * pair of streams). */
static void test_model_step_reversible(void **state) {
    (void)state;
    check_model("dense", "[model]\nreversible = true\n");
}

/* A plugin built against SDK 1.1 (no paged step, tests/plugins/dense_v11.c)
 * still loads, trains the same and decodes through its decode step inside
 * the same ragged step: the logits of dense's paged step. */
static void test_abi_1_1_plugin_still_decodes(void **state) {
    (void)state;
    fs_session *old = session_of("dense_v11", ""), *now = session_of("dense", "");
    assert_int_equal(old->layers[0].plugin->desc->abi_version, FS_ABI_MAKE(1, 1));
    assert_false(fs_model_layer_paged(old->model, 0));
    assert_false(fs_model_paged(old->model));
    assert_true(fs_model_paged(now->model));
    enum { T = 12 };
    int32_t tok[T];
    for (size_t i = 0; i < T; i++) tok[i] = (int32_t)((i * 7 + 3) % 32);
    fs_error err = {0};
    float *fwd = test_fvec(T * 32);
    assert_int_equal(fs_model_forward(now->model, tok, 1, T, &err), 0);
    memcpy(fwd, fs_model_logits(now->model), T * 32 * sizeof(float));
    assert_int_equal(fs_model_forward(old->model, tok, 1, T, &err), 0);
    assert_memory_equal(fs_model_logits(old->model), fwd, T * 32 * sizeof(float));
    fs_seq *a = test_seq(old->model, 1, 0), *b = test_seq(now->model, 1, 0);
    float la[32], lb[32];
    for (size_t t = 0; t < T; t++) {
        assert_int_equal(fs_seq_decode(a, &tok[t], la, &err), 0);
        assert_int_equal(fs_seq_decode(b, &tok[t], lb, &err), 0);
        test_close("1.1 decode", la, lb, 32, 1e-5, 1e-4);
        test_close("1.1 decode against the forward", la, fwd + t * 32, 32, 1e-4, 1e-4);
    }
    fs_seq_destroy(a);
    fs_seq_destroy(b);
    free(fwd);
    fs_session_close(old);
    fs_session_close(now);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_paged),          cmocka_unit_test(test_lsh_paged),
        cmocka_unit_test(test_longformer_paged),     cmocka_unit_test(test_model_step),
        cmocka_unit_test(test_model_step_reversible), cmocka_unit_test(test_abi_1_1_plugin_still_decodes),
        cmocka_unit_test(test_bf16_blocks),           cmocka_unit_test(test_bf16_refused_without_the_flag),
        cmocka_unit_test(test_paged_dots_match_definition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
