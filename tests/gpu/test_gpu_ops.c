/* test_gpu_ops.c — every op of the backend vtable (fastserve/backend.h) on
 * the device against the cpu backend, at several shapes, odd ones (not
 * multiples of 32 or 128) among them, in f32 and, where the op takes it,
 * bf16 (and tf32 GEMMs):
 *   - GEMM: transposes, leading dimensions, strided batches, bias (f32 and bf16),
 *     alpha/beta, tf32 and bf16 operands, bf16 or f32 results, padding
 *     untouched; bias_backward over padded rows;
 *   - the model's ops: encoder, layer norm, GELU, residual forward and
 *     backward, split/merge heads and their backwards, cross-entropy
 *     (padded rows, in place, without the gradient), softmax with a
 *     temperature;
 *   - the optimizer's: AdamW with a gradient scale and f32 / bf16 copies,
 *     sumsq, scale, convert f32 <-> bf16 (special values, ties);
 *   - sampling: greedy, top_k, top_p, hand-chosen draws u;
 *   - memory, copies, streams and events.
 * Where it is cheap the cpu backend itself is checked against a definition
 * computed here in double (GEMM, bias_backward, layer norm, cross-entropy,
 * softmax, AdamW, sumsq, sampling), so a harness that fed both sides the
 * same wrong thing would still fail. See gpu_compare.h for the
 * FS_GPU_TEST_BACKEND=cpu run that checks this harness without a GPU. */
#include "gpu_compare.h"

#define DV g_gc.dut.vt
#define DS g_gc.dut.self
#define RV g_gc.ref.vt
#define RS g_gc.ref.self
#define F32 FS_DTYPE_F32
#define BF16 FS_DTYPE_BF16
#define TF32 FS_GEMM_COMPUTE_TF32
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Runs `call` (which reads `err`) and fails the test with its message. */
#define CHECK(call, what)                   \
    do {                                    \
        fs_error err = {0};                 \
        gc_check_rc((call), &err, (what));  \
    } while (0)

/* ---- GEMM ---- */

typedef struct gemm_case {
    size_t m, n, k;
    int ta, tb;
    size_t pad;   /* elements past each row of A, B, C and between the batch's matrices */
    size_t batch; /* matrices */
    int bias;
    float alpha, beta;
    int32_t ab, c, compute; /* operand type, result type, fs_gemm_compute */
    int32_t bias_dt;        /* the bias's type (fs_gemm_args.bias_dtype) */
} gemm_case;

static const gemm_case gemm_cases[] = {
    {1, 1, 1, 0, 0, 0, 1, 0, 1.0f, 0.0f, F32, F32, 0, F32},
    {7, 13, 5, 0, 0, 3, 1, 1, 1.0f, 0.0f, F32, F32, 0, F32},
    {7, 13, 5, 1, 0, 0, 1, 0, 0.5f, 0.75f, F32, F32, 0, F32},
    {7, 13, 5, 0, 1, 1, 3, 1, 1.0f, 1.0f, F32, F32, 0, F32},
    {7, 13, 5, 1, 1, 2, 2, 1, -1.5f, 0.25f, F32, F32, 0, F32},
    {33, 65, 129, 0, 1, 0, 1, 1, 1.0f, 0.0f, F32, F32, 0, F32},
    {128, 256, 64, 0, 0, 0, 1, 1, 1.0f, 0.0f, F32, F32, 0, F32},
    {257, 31, 1000, 1, 0, 5, 1, 0, 1.0f, 1.0f, F32, F32, 0, F32}, /* a weight gradient: += inp^T dout */
    {64, 64, 64, 0, 1, 0, 12, 0, 0.125f, 0.0f, F32, F32, 0, F32},  /* per-head Q K^T */
    {100, 48, 97, 0, 0, 4, 6, 0, 1.0f, 0.0f, F32, F32, 0, F32},
    {33, 65, 129, 0, 0, 0, 1, 1, 1.0f, 0.0f, F32, F32, TF32, F32},
    {257, 31, 1000, 1, 0, 0, 1, 0, 1.0f, 1.0f, F32, F32, TF32, F32},
    {64, 64, 64, 0, 1, 0, 12, 0, 0.125f, 0.0f, F32, F32, TF32, F32},
    {33, 65, 129, 0, 0, 0, 1, 1, 1.0f, 0.0f, BF16, BF16, 0, F32},
    {7, 13, 5, 0, 1, 2, 3, 1, 1.0f, 0.5f, BF16, BF16, 0, F32},
    {257, 31, 1000, 1, 0, 0, 1, 0, 1.0f, 1.0f, BF16, F32, 0, F32}, /* mixed precision's weight gradient */
    {128, 256, 64, 0, 1, 0, 1, 1, 1.0f, 0.0f, BF16, F32, 0, F32},
    {100, 48, 97, 1, 1, 3, 4, 0, 1.0f, 0.0f, BF16, BF16, 0, F32},
    /* a bf16 bias: cuBLASLt's epilogue into bf16 (aligned), else the kernel */
    {128, 256, 64, 0, 0, 0, 1, 1, 1.0f, 0.0f, BF16, BF16, 0, BF16},
    {33, 65, 129, 0, 0, 0, 1, 1, 1.0f, 0.0f, BF16, F32, 0, BF16},
    {7, 13, 5, 0, 1, 2, 3, 1, 1.0f, 0.5f, BF16, BF16, 0, BF16},
    /* k = 0: beta C + bias, no product (BLAS's rule) */
    {7, 13, 0, 0, 0, 1, 2, 1, 1.0f, 0.5f, F32, F32, 0, F32},
    {5, 9, 0, 1, 1, 1, 1, 0, 1.0f, 0.0f, F32, F32, 0, F32},
};

typedef struct gemm_layout {
    size_t lda, ldb, ldc, sa, sb, sc; /* elements */
    size_t na, nb, nc;                /* elements of the whole operands */
} gemm_layout;

static gemm_layout gemm_layout_of(const gemm_case *c) {
    gemm_layout l;
    size_t rows_a = c->ta ? c->k : c->m, rows_b = c->tb ? c->n : c->k;
    l.lda = (c->ta ? c->m : c->k) + c->pad;
    l.ldb = (c->tb ? c->k : c->n) + c->pad;
    l.ldc = c->n + c->pad;
    l.sa = rows_a * l.lda + c->pad;
    l.sb = rows_b * l.ldb + c->pad;
    l.sc = c->m * l.ldc + c->pad;
    l.na = c->batch * l.sa, l.nb = c->batch * l.sb, l.nc = c->batch * l.sc;
    return l;
}

/* The case's arguments; the reference's in f32 throughout. */
static fs_gemm_args gemm_args(const gemm_case *c, const gemm_layout *l, const gc_buf *C, const gc_buf *A,
                              const gc_buf *B, const gc_buf *bias, int dut) {
    fs_gemm_args g = {.struct_size = sizeof g, .c = dut ? C->d : C->r, .a = dut ? A->d : A->r, .b = dut ? B->d : B->r,
                      .c_dtype = dut ? c->c : F32, .ab_dtype = dut ? c->ab : F32, .trans_a = c->ta,
                      .trans_b = c->tb, .m = c->m, .n = c->n, .k = c->k, .lda = l->lda, .ldb = l->ldb,
                      .ldc = l->ldc, .batch = c->batch, .stride_a = l->sa, .stride_b = l->sb, .stride_c = l->sc,
                      .alpha = c->alpha, .beta = c->beta, .bias = NULL,
                      .compute = dut ? c->compute : FS_GEMM_COMPUTE_F32,
                      .bias_dtype = dut ? c->bias_dt : F32};
    if (c->bias) g.bias = dut ? bias->d : bias->r;
    return g;
}

/* Every matrix of the batch in double, want (batch, m, n), and the
 * magnitude rounding errors scale with: sum |alpha a b| + |beta c0| + |bias|. */
static void gemm_reference(const gemm_case *c, const gemm_layout *l, const float *a, const float *b, const float *c0,
                           const float *bias, double *want, double *mag) {
    for (size_t i = 0; i < c->batch; i++)
        for (size_t r = 0; r < c->m; r++)
            for (size_t j = 0; j < c->n; j++) {
                const float *A = a + i * l->sa, *B = b + i * l->sb;
                double s = 0, sa = 0;
                for (size_t p = 0; p < c->k; p++) {
                    double x = (double)(c->ta ? A[p * l->lda + r] : A[r * l->lda + p]) *
                               (c->tb ? B[j * l->ldb + p] : B[p * l->ldb + j]);
                    s += x, sa += fabs(x);
                }
                double c0v = c0[i * l->sc + r * l->ldc + j], bv = c->bias ? bias[j] : 0.0;
                size_t o = (i * c->m + r) * c->n + j;
                want[o] = c->alpha * s + c->beta * c0v + bv;
                mag[o] = fabs(c->alpha) * sa + fabs(c->beta * c0v) + fabs(bv);
            }
}

/* Both results against the definition, element by element; what lies
 * outside the matrices (leading-dimension and batch padding) untouched.
 * f32 sums in any order: 8 sqrt(k) u of the magnitude (gpu_compare.h);
 * tf32 rounds both operands of every product to 11 bits (truncation on
 * some parts: a whole ulp, 2^-10, each); a bf16 result rounds once more,
 * twice with a bias where cuBLASLt has no epilogue for the layout and the
 * bias is added to the rounded product (the product's own rounding, of
 * want - bias, then the sum's). bf16 operands were rounded on the host:
 * both sides multiply the same values. */
static void gemm_compare(const char *what, const gemm_case *c, const gemm_layout *l, const float *got,
                         const float *ref, const float *c0, const float *bias, const double *want, const double *mag) {
    double acc = 8.0 * sqrt((double)c->k + 1) * GC_U_F32;
    double dut_acc = acc + (c->ab == F32 && c->compute == TF32 ? 4.0 * GC_U_TF32 : 0.0);
    double out = c->c == BF16 ? GC_U_BF16 : 0.0;
    for (size_t at = 0; at < l->nc; at++) {
        size_t i = at / l->sc, r = at % l->sc / l->ldc, j = at % l->sc % l->ldc;
        if (r >= c->m || j >= c->n) {
            gc_near(what, at, got[at], c0[at], 0.0);
            gc_near(what, at, ref[at], c0[at], 0.0);
            continue;
        }
        size_t o = (i * c->m + r) * c->n + j;
        gc_near(what, at, ref[at], want[o], acc * mag[o]);
        if (g_gc.exact)
            gc_near(what, at, got[at], ref[at], 0.0);
        else
            gc_near(what, at, got[at], want[o],
                    dut_acc * mag[o] + out * (fabs(want[o]) + (c->bias ? fabs(want[o] - bias[j]) : 0.0)));
    }
}

static void check_gemm(const gemm_case *c, size_t idx) {
    if (!gc_runs(c->ab == BF16 || c->c == BF16 ? BF16 : F32, c->compute)) return;
    gemm_layout l = gemm_layout_of(c);
    float *a = test_fvec(l.na), *b = test_fvec(l.nb), *c0 = test_fvec(l.nc), *bias = test_fvec(c->n);
    test_fill(a, l.na, 1.0f, 100 + idx);
    test_fill(b, l.nb, 1.0f, 200 + idx);
    test_fill(c0, l.nc, 1.0f, 300 + idx);
    test_fill(bias, c->n, 1.0f, 400 + idx);
    gc_buf A = gc_put(a, l.na, c->ab), B = gc_put(b, l.nb, c->ab), C = gc_put(c0, l.nc, c->c);
    gc_buf BI = gc_put(bias, c->n, c->bias_dt); /* bf16: rounded for both sides */
    fs_gemm_args gd = gemm_args(c, &l, &C, &A, &B, &BI, 1), gr = gemm_args(c, &l, &C, &A, &B, &BI, 0);
    CHECK(DV->gemm(DS, NULL, &gd, &err), "gemm (dut)");
    CHECK(RV->gemm(RS, NULL, &gr, &err), "gemm (cpu)");
    float *got = test_fvec(l.nc), *ref = test_fvec(l.nc);
    gc_get(&C, got, ref);
    size_t nw = c->batch * c->m * c->n;
    double *want = malloc(nw * sizeof(double)), *mag = malloc(nw * sizeof(double));
    assert_true(want && mag);
    gemm_reference(c, &l, a, b, c0, bias, want, mag);
    char what[160];
    snprintf(what, sizeof what, "gemm case %zu (%zu x %zu x %zu, ta %d tb %d, batch %zu, %s -> %s%s%s)", idx, c->m,
             c->n, c->k, c->ta, c->tb, c->batch, gc_dtname(c->ab), gc_dtname(c->c),
             c->compute == TF32 ? ", tf32" : "", c->bias_dt == BF16 ? ", bf16 bias" : "");
    gemm_compare(what, c, &l, got, ref, c0, bias, want, mag);
    free(a), free(b), free(c0), free(bias), free(got), free(ref), free(want), free(mag);
    gc_drop(&A), gc_drop(&B), gc_drop(&C), gc_drop(&BI);
}

static void test_gemm(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(gemm_cases); i++) check_gemm(&gemm_cases[i], i);
}

/* ---- bias_backward ---- */

typedef struct rows_case {
    size_t N, C, ld; /* rows, columns, elements between rows */
    int32_t dtype;
} rows_case;

static const rows_case bias_cases[] = {
    {1, 1, 1, F32}, {7, 13, 16, F32}, {64, 768, 768, F32}, {1000, 70, 75, F32},
    {4097, 33, 33, F32}, {257, 129, 130, BF16}, {33, 3072, 3072, BF16},
};

static void check_bias_backward(const rows_case *c, size_t idx) {
    if (!gc_runs(c->dtype, 0)) return;
    size_t n = c->N * c->ld;
    float *dout = test_fvec(n), *db = test_fvec(c->C), *got = test_fvec(c->C), *ref = test_fvec(c->C);
    test_fill(dout, n, 1.0f, 500 + idx);
    test_fill(db, c->C, 1.0f, 550 + idx);
    gc_buf D = gc_put(dout, n, c->dtype), B = gc_put(db, c->C, F32);
    CHECK(DV->bias_backward(DS, NULL, B.d, D.d, c->N, c->C, c->ld, c->dtype, &err), "bias_backward (dut)");
    CHECK(RV->bias_backward(RS, NULL, B.r, D.r, c->N, c->C, c->ld, F32, &err), "bias_backward (cpu)");
    gc_get(&B, got, ref);
    char what[128];
    snprintf(what, sizeof what, "bias_backward case %zu (N %zu, OC %zu, ld %zu, %s)", idx, c->N, c->C, c->ld,
             gc_dtname(c->dtype));
    for (size_t o = 0; o < c->C; o++) { /* the definition: db += column sums, accumulated */
        double s = db[o], mag = fabs(db[o]);
        for (size_t r = 0; r < c->N; r++) s += dout[r * c->ld + o], mag += fabs(dout[r * c->ld + o]);
        gc_near(what, o, ref[o], s, 8.0 * sqrt((double)c->N + 1) * GC_U_F32 * mag);
    }
    gc_expect(what, got, ref, c->C, F32, GC_F32_SUMS);
    free(dout), free(db), free(got), free(ref);
    gc_drop(&D), gc_drop(&B);
}

static void test_bias_backward(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(bias_cases); i++) check_bias_backward(&bias_cases[i], i);
}

/* ---- encoder ---- */

typedef struct enc_case {
    size_t B, T, C, V, maxT, pos0;
    int32_t dtype;
} enc_case;

/* Small vocabularies repeat tokens: the embedding gradient sums runs. */
static const enc_case enc_cases[] = {
    {1, 1, 1, 1, 1, 0, F32},      {2, 7, 33, 50, 16, 3, F32},   {4, 64, 768, 1000, 128, 0, F32},
    {3, 257, 129, 37, 300, 40, F32}, {2, 64, 96, 11, 64, 0, BF16}, {1, 1024, 64, 5, 1024, 0, BF16},
};

static void check_encoder(const enc_case *c, size_t idx) {
    if (!gc_runs(c->dtype, 0)) return;
    size_t BT = c->B * c->T, n = BT * c->C, nte = c->V * c->C, npe = c->maxT * c->C;
    int32_t *ids = malloc(BT * sizeof *ids);
    float *wte = test_fvec(nte), *wpe = test_fvec(npe), *out = test_fvec(n), *dout = test_fvec(n);
    assert_non_null(ids);
    gc_fill_ids(ids, BT, c->V, 600 + idx);
    test_fill(wte, nte, 1.0f, 610 + idx);
    test_fill(wpe, npe, 1.0f, 620 + idx);
    test_fill(out, n, 1.0f, 630 + idx); /* overwritten */
    test_fill(dout, n, 1.0f, 640 + idx);
    gc_buf I = gc_put_bytes(ids, BT * sizeof *ids), TE = gc_put(wte, nte, F32), PE = gc_put(wpe, npe, F32);
    gc_buf O = gc_put(out, n, c->dtype), DO = gc_put(dout, n, c->dtype);
    CHECK(DV->encoder_forward(DS, NULL, O.d, I.d, TE.d, PE.d, c->B, c->T, c->C, c->pos0, c->dtype, &err),
          "encoder_forward (dut)");
    CHECK(RV->encoder_forward(RS, NULL, O.r, I.r, TE.r, PE.r, c->B, c->T, c->C, c->pos0, F32, &err),
          "encoder_forward (cpu)");
    /* the gradients accumulate into the (random) tables */
    CHECK(DV->encoder_backward(DS, NULL, TE.d, PE.d, DO.d, I.d, c->B, c->T, c->C, c->pos0, c->dtype, &err),
          "encoder_backward (dut)");
    CHECK(RV->encoder_backward(RS, NULL, TE.r, PE.r, DO.r, I.r, c->B, c->T, c->C, c->pos0, F32, &err),
          "encoder_backward (cpu)");
    char what[128];
    snprintf(what, sizeof what, "encoder case %zu (B %zu T %zu C %zu V %zu pos0 %zu %s)", idx, c->B, c->T, c->C, c->V,
             c->pos0, gc_dtname(c->dtype));
    gc_expect_buf(what, &O, GC_SAME); /* one addition, then (bf16) one rounding */
    gc_expect_buf(what, &TE, GC_F32_SUMS);
    gc_expect_buf(what, &PE, GC_F32_SUMS);
    free(ids), free(wte), free(wpe), free(out), free(dout);
    gc_drop(&I), gc_drop(&TE), gc_drop(&PE), gc_drop(&O), gc_drop(&DO);
}

static void test_encoder(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(enc_cases); i++) check_encoder(&enc_cases[i], i);
}

/* ---- layer norm ---- */

typedef struct ln_case {
    size_t N, C;
    int32_t dtype;
    int stats; /* 0: the dut's forward gets NULL mean and rstd */
} ln_case;

static const ln_case ln_cases[] = {
    {1, 1, F32, 1}, {7, 33, F32, 1}, {64, 768, F32, 1}, {3, 1027, F32, 0}, {130, 64, BF16, 1}, {5, 2049, BF16, 0},
};

/* The cpu backend's forward against the definition in double (biased
 * variance, eps 1e-5): f32 sums of C terms and a square root. */
static void ln_definition(const char *what, const ln_case *c, const float *x, const float *w, const float *b,
                          const float *out) {
    for (size_t r = 0; r < c->N; r++) {
        const float *xr = x + r * c->C;
        double m = 0, v = 0;
        for (size_t i = 0; i < c->C; i++) m += xr[i];
        m /= (double)c->C;
        for (size_t i = 0; i < c->C; i++) v += (xr[i] - m) * (xr[i] - m);
        double s = 1.0 / sqrt(v / (double)c->C + 1e-5);
        for (size_t i = 0; i < c->C; i++) {
            double want = (xr[i] - m) * s * w[i] + b[i];
            gc_near(what, r * c->C + i, out[r * c->C + i], want, 1e-4 * (fabs(w[i]) + fabs(want)));
        }
    }
}

/* Forward on both sides; the reference's statistics are returned in
 * mean, rstd (host) for the backward. */
static void ln_forward(const char *what, const ln_case *c, float *x, float *w, float *b, float *mean, float *rstd) {
    size_t n = c->N * c->C;
    float *out = test_fvec(n), *got = test_fvec(n), *ref = test_fvec(n), *gm = test_fvec(c->N), *gr = test_fvec(c->N);
    gc_buf X = gc_put(x, n, c->dtype), W = gc_put(w, c->C, F32), B = gc_put(b, c->C, F32);
    gc_buf O = gc_put(out, n, c->dtype), M = gc_put(gm, c->N, F32), R = gc_put(gr, c->N, F32);
    CHECK(DV->layernorm_forward(DS, NULL, O.d, c->stats ? M.d : NULL, c->stats ? R.d : NULL, X.d, W.d, B.d, c->N,
                                c->C, c->dtype, &err),
          "layernorm_forward (dut)");
    CHECK(RV->layernorm_forward(RS, NULL, O.r, M.r, R.r, X.r, W.r, B.r, c->N, c->C, F32, &err),
          "layernorm_forward (cpu)");
    gc_get(&O, got, ref);
    ln_definition(what, c, x, w, b, ref);
    gc_expect(what, got, ref, n, c->dtype, c->dtype == BF16 ? GC_BF16_SUMS : GC_F32_SUMS);
    gc_get(&M, gm, mean);
    gc_get(&R, gr, rstd);
    if (c->stats) {
        gc_expect(what, gm, mean, c->N, F32, GC_F32_SUMS);
        gc_expect(what, gr, rstd, c->N, F32, GC_F32_SUMS);
    }
    free(out), free(got), free(ref), free(gm), free(gr);
    gc_drop(&X), gc_drop(&W), gc_drop(&B), gc_drop(&O), gc_drop(&M), gc_drop(&R);
}

/* Backward with the same statistics on both sides; dinp starts as
 * garbage (overwritten), dweight and dbias as random (accumulated). */
static void ln_backward(const char *what, const ln_case *c, float *x, float *w, float *mean, float *rstd, size_t idx) {
    size_t n = c->N * c->C;
    float *dout = test_fvec(n), *dinp = test_fvec(n), *dw = test_fvec(c->C), *db = test_fvec(c->C);
    test_fill(dout, n, 1.0f, 720 + idx);
    test_fill(dinp, n, 1e3f, 730 + idx);
    test_fill(dw, c->C, 1.0f, 740 + idx);
    test_fill(db, c->C, 1.0f, 750 + idx);
    gc_buf X = gc_put(x, n, c->dtype), W = gc_put(w, c->C, F32), M = gc_put(mean, c->N, F32);
    gc_buf R = gc_put(rstd, c->N, F32), DO = gc_put(dout, n, c->dtype), DI = gc_put(dinp, n, c->dtype);
    gc_buf DW = gc_put(dw, c->C, F32), DB = gc_put(db, c->C, F32);
    CHECK(DV->layernorm_backward(DS, NULL, DI.d, DW.d, DB.d, DO.d, X.d, W.d, M.d, R.d, c->N, c->C, c->dtype, &err),
          "layernorm_backward (dut)");
    CHECK(RV->layernorm_backward(RS, NULL, DI.r, DW.r, DB.r, DO.r, X.r, W.r, M.r, R.r, c->N, c->C, F32, &err),
          "layernorm_backward (cpu)");
    gc_expect_buf(what, &DI, c->dtype == BF16 ? GC_BF16_SUMS : GC_F32_SUMS);
    gc_expect_buf(what, &DW, GC_F32_SUMS);
    gc_expect_buf(what, &DB, GC_F32_SUMS);
    free(dout), free(dinp), free(dw), free(db);
    gc_drop(&X), gc_drop(&W), gc_drop(&M), gc_drop(&R), gc_drop(&DO), gc_drop(&DI), gc_drop(&DW), gc_drop(&DB);
}

static void test_layernorm(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(ln_cases); i++) {
        const ln_case *c = &ln_cases[i];
        if (!gc_runs(c->dtype, 0)) continue;
        size_t n = c->N * c->C;
        float *x = test_fvec(n), *w = test_fvec(c->C), *b = test_fvec(c->C), *mean = test_fvec(c->N);
        float *rstd = test_fvec(c->N);
        test_fill(x, n, 2.0f, 700 + i);
        for (size_t j = 0; j < n; j++) x[j] += 3.0f; /* a mean far from 0 */
        test_fill(w, c->C, 0.2f, 710 + i);
        for (size_t j = 0; j < c->C; j++) w[j] += 1.0f;
        test_fill(b, c->C, 0.1f, 715 + i);
        char what[96];
        snprintf(what, sizeof what, "layernorm case %zu (N %zu C %zu %s)", i, c->N, c->C, gc_dtname(c->dtype));
        ln_forward(what, c, x, w, b, mean, rstd);
        ln_backward(what, c, x, w, mean, rstd, i);
        free(x), free(w), free(b), free(mean), free(rstd);
    }
}

/* ---- element-wise: GELU, residual ---- */

typedef struct ew_case {
    size_t n;
    int32_t dtype;
} ew_case;

static const ew_case ew_cases[] = {{1, F32}, {7, F32}, {1000, F32}, {65537, F32}, {4099, BF16}, {1 << 20, BF16}};

/* The CPU's GELU uses fs_fast_tanhf (absolute error < 2e-7), the device
 * tanhf: forward differs by ~1e-7 |x|; backward's derivative carries the
 * tanh error through sech^2 times x (1 + 0.134 x^2) (~1e-6 at |x| = 3),
 * times dout: a few 1e-6 of the largest value, not relative to a result
 * near 0 (large negative x). */
static const gc_tol GELU_F32 = {1e-6, 4e-6, 0, 0};
static const gc_tol GELU_BF16 = {GC_U_BF16 + 1e-6, 4e-6, 0, 0};

static void check_gelu(const ew_case *c, size_t idx) {
    float *x = test_fvec(c->n), *dout = test_fvec(c->n), *junk = test_fvec(c->n);
    test_fill(x, c->n, 2.0f, 800 + idx);
    test_fill(dout, c->n, 1.0f, 810 + idx);
    test_fill(junk, c->n, 1e3f, 820 + idx);
    gc_buf X = gc_put(x, c->n, c->dtype), DO = gc_put(dout, c->n, c->dtype);
    gc_buf O = gc_put(junk, c->n, c->dtype), DI = gc_put(junk, c->n, c->dtype);
    CHECK(DV->gelu_forward(DS, NULL, O.d, X.d, c->n, c->dtype, &err), "gelu_forward (dut)");
    CHECK(RV->gelu_forward(RS, NULL, O.r, X.r, c->n, F32, &err), "gelu_forward (cpu)");
    CHECK(DV->gelu_backward(DS, NULL, DI.d, X.d, DO.d, c->n, c->dtype, &err), "gelu_backward (dut)");
    CHECK(RV->gelu_backward(RS, NULL, DI.r, X.r, DO.r, c->n, F32, &err), "gelu_backward (cpu)");
    char what[96];
    snprintf(what, sizeof what, "gelu case %zu (n %zu %s)", idx, c->n, gc_dtname(c->dtype));
    gc_expect_buf(what, &O, c->dtype == BF16 ? GELU_BF16 : GELU_F32);
    gc_expect_buf(what, &DI, c->dtype == BF16 ? GELU_BF16 : GELU_F32);
    free(x), free(dout), free(junk);
    gc_drop(&X), gc_drop(&DO), gc_drop(&O), gc_drop(&DI);
}

/* out = a + b into a fresh buffer and in place (out = a), dacc += dout:
 * one IEEE addition each, the same bits everywhere. In bf16 the dut stores
 * out rounded, so the reference's out is rounded too before it is the
 * backward's dout (else b + round(a + b) meets b + (a + b): two roundings
 * against one). */
static void check_residual(const ew_case *c, size_t idx) {
    float *a = test_fvec(c->n), *b = test_fvec(c->n), *junk = test_fvec(c->n);
    test_fill(a, c->n, 1.0f, 830 + idx);
    test_fill(b, c->n, 3.0f, 840 + idx);
    test_fill(junk, c->n, 1e3f, 850 + idx);
    gc_buf A = gc_put(a, c->n, c->dtype), B = gc_put(b, c->n, c->dtype), O = gc_put(junk, c->n, c->dtype);
    CHECK(DV->residual_forward(DS, NULL, O.d, A.d, B.d, c->n, c->dtype, &err), "residual_forward (dut)");
    CHECK(RV->residual_forward(RS, NULL, O.r, A.r, B.r, c->n, F32, &err), "residual_forward (cpu)");
    CHECK(DV->residual_forward(DS, NULL, A.d, A.d, B.d, c->n, c->dtype, &err), "residual_forward in place (dut)");
    CHECK(RV->residual_forward(RS, NULL, A.r, A.r, B.r, c->n, F32, &err), "residual_forward in place (cpu)");
    gc_round_ref(&O);
    CHECK(DV->residual_backward(DS, NULL, B.d, O.d, c->n, c->dtype, &err), "residual_backward (dut)");
    CHECK(RV->residual_backward(RS, NULL, B.r, O.r, c->n, F32, &err), "residual_backward (cpu)");
    char what[96];
    const gc_buf *outs[] = {&O, &A, &B};
    static const char *const names[] = {"out", "in place", "dacc"};
    for (size_t i = 0; i < N_OF(outs); i++) {
        snprintf(what, sizeof what, "residual case %zu (n %zu %s): %s", idx, c->n, gc_dtname(c->dtype), names[i]);
        gc_expect_buf(what, outs[i], GC_SAME);
    }
    free(a), free(b), free(junk);
    gc_drop(&A), gc_drop(&B), gc_drop(&O);
}

static void test_elementwise(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(ew_cases); i++) {
        if (!gc_runs(ew_cases[i].dtype, 0)) continue;
        check_gelu(&ew_cases[i], i);
        check_residual(&ew_cases[i], i);
    }
}

/* ---- heads: permutations, exact on every device ---- */

typedef struct heads_case {
    size_t B, T, H, D;
    int32_t dtype;
} heads_case;

static const heads_case heads_cases[] = {
    {1, 1, 1, 1, F32}, {2, 7, 3, 5, F32}, {2, 64, 12, 64, F32}, {1, 257, 4, 33, F32}, {3, 33, 2, 128, BF16},
    /* 16-byte moves (a head's row a whole number of them) and, at D 12 in bf16, element moves */
    {2, 64, 12, 64, BF16}, {2, 9, 3, 24, BF16}, {1, 5, 2, 12, BF16}, {2, 9, 3, 24, F32},
};

/* The cpu backend's q, k, v against the definition:
 * q[b, h, t, d] = qkv[b, t, h D + d], k at + C, v at + 2C. */
static void heads_definition(const char *what, const heads_case *c, const float *qkv, float *const qkvh[3]) {
    size_t C = c->H * c->D;
    for (size_t b = 0; b < c->B; b++)
        for (size_t h = 0; h < c->H; h++)
            for (size_t t = 0; t < c->T; t++)
                for (size_t d = 0; d < c->D; d++)
                    for (size_t s = 0; s < 3; s++) {
                        size_t at = ((b * c->H + h) * c->T + t) * c->D + d;
                        gc_near(what, at, qkvh[s][at], qkv[(b * c->T + t) * 3 * C + s * C + h * c->D + d], 0.0);
                    }
}

static void check_heads(const heads_case *c, size_t idx) {
    size_t n = c->B * c->T * c->H * c->D;
    float *x = test_fvec(3 * n), *junk = test_fvec(3 * n), *q[3] = {test_fvec(n), test_fvec(n), test_fvec(n)};
    float *got = test_fvec(n);
    test_fill(x, 3 * n, 1.0f, 900 + idx);
    test_fill(junk, 3 * n, 1e3f, 910 + idx);
    gc_buf QKV = gc_put(x, 3 * n, c->dtype), Q = gc_put(junk, n, c->dtype), K = gc_put(junk + n, n, c->dtype);
    gc_buf V = gc_put(junk + 2 * n, n, c->dtype), OUT = gc_put(junk, 3 * n, c->dtype);
    size_t B = c->B, T = c->T, H = c->H, D = c->D;
    CHECK(DV->attention_split_heads(DS, NULL, Q.d, K.d, V.d, QKV.d, B, T, H, D, c->dtype, &err), "split_heads (dut)");
    CHECK(RV->attention_split_heads(RS, NULL, Q.r, K.r, V.r, QKV.r, B, T, H, D, F32, &err), "split_heads (cpu)");
    char what[112];
    snprintf(what, sizeof what, "heads case %zu (B %zu T %zu H %zu D %zu %s)", idx, B, T, H, D, gc_dtname(c->dtype));
    gc_buf *parts[3] = {&Q, &K, &V};
    for (size_t s = 0; s < 3; s++) {
        gc_get(parts[s], got, q[s]);
        gc_expect(what, got, q[s], n, c->dtype, GC_SAME);
    }
    heads_definition(what, c, x, q);
    /* the backward of split writes dqkv from dq, dk, dv: back to x */
    CHECK(DV->attention_split_heads_backward(DS, NULL, OUT.d, Q.d, K.d, V.d, B, T, H, D, c->dtype, &err),
          "split_heads_backward (dut)");
    CHECK(RV->attention_split_heads_backward(RS, NULL, OUT.r, Q.r, K.r, V.r, B, T, H, D, F32, &err),
          "split_heads_backward (cpu)");
    gc_expect_buf(what, &OUT, GC_SAME);
    /* merge q's heads into (B, T, C), then its backward back into k */
    CHECK(DV->attention_merge_heads(DS, NULL, OUT.d, Q.d, B, T, H, D, c->dtype, &err), "merge_heads (dut)");
    CHECK(RV->attention_merge_heads(RS, NULL, OUT.r, Q.r, B, T, H, D, F32, &err), "merge_heads (cpu)");
    CHECK(DV->attention_merge_heads_backward(DS, NULL, K.d, OUT.d, B, T, H, D, c->dtype, &err), "merge_backward (dut)");
    CHECK(RV->attention_merge_heads_backward(RS, NULL, K.r, OUT.r, B, T, H, D, F32, &err), "merge_backward (cpu)");
    gc_expect_buf(what, &OUT, GC_SAME);
    gc_expect_buf(what, &K, GC_SAME);
    free(x), free(junk), free(q[0]), free(q[1]), free(q[2]), free(got);
    gc_drop(&QKV), gc_drop(&Q), gc_drop(&K), gc_drop(&V), gc_drop(&OUT);
}

static void test_heads(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(heads_cases); i++)
        if (gc_runs(heads_cases[i].dtype, 0)) check_heads(&heads_cases[i], i);
}

/* ---- cross-entropy and softmax: a block per row of the vocabulary ---- */

typedef struct ce_case {
    size_t N, V, ld;
    float scale;
    int in_place, grad; /* dlogits = logits; grad 0: dlogits NULL (the loss only) */
    int32_t dtype;
} ce_case;

static const ce_case ce_cases[] = {
    {1, 1, 1, 1.0f, 0, 1, F32},           {4, 11, 16, 0.25f, 1, 1, F32},   {33, 1000, 1000, 1.0f / 33, 0, 1, F32},
    {8, 50257, 50304, 0.125f, 1, 1, F32}, {5, 129, 130, 1.0f, 0, 0, F32},  {16, 4099, 4100, 0.0625f, 1, 1, BF16},
    {3, 777, 777, 1.0f, 0, 1, BF16},
};

/* A row's sum of V exponentials in another order: 8 sqrt(V) u relative
 * (gpu_compare.h), plus a few ulp of expf. */
static gc_tol row_tol(size_t V, int32_t dtype) {
    gc_tol t = {1e-5 + 8.0 * sqrt((double)V) * GC_U_F32 + (dtype == BF16 ? GC_U_BF16 : 0.0), 1e-7, 0, 0};
    return t;
}

/* The cpu backend against the definition in double: the summed loss and
 * (softmax - onehot) * scale, padding past V zeroed (backend.h). */
static void ce_definition(const char *what, const ce_case *c, const float *z, const int32_t *y, double loss,
                          const float *d) {
    double total = 0;
    for (size_t r = 0; r < c->N; r++) {
        const float *zr = z + r * c->ld;
        double mx = zr[0], sum = 0;
        for (size_t i = 1; i < c->V; i++) mx = zr[i] > mx ? zr[i] : mx;
        for (size_t i = 0; i < c->V; i++) sum += exp(zr[i] - mx);
        total += mx + log(sum) - zr[y[r]];
        for (size_t i = 0; d && i < c->ld; i++) {
            double want = i >= c->V ? 0.0 : exp(zr[i] - mx) / sum * c->scale - (i == (size_t)y[r] ? c->scale : 0.0);
            gc_near(what, r * c->ld + i, d[r * c->ld + i], want, 1e-6 * c->scale + row_tol(c->V, F32).rel * fabs(want));
        }
    }
    gc_near(what, 0, loss, total, 1e-5 * fabs(total) + 1e-6);
}

static void check_crossentropy(const ce_case *c, size_t idx) {
    size_t n = c->N * c->ld;
    float *z = test_fvec(n), *z0 = test_fvec(n), *d = test_fvec(n), *got = test_fvec(n), *ref = test_fvec(n);
    int32_t *y = malloc(c->N * sizeof *y);
    assert_non_null(y);
    test_fill(z, n, 3.0f, 1000 + idx);
    gc_fill_ids(y, c->N, c->V, 1010 + idx);
    for (size_t i = 0; i < n; i++) d[i] = -7.0f; /* dlogits' padding must be zeroed */
    gc_buf Z = gc_put(z, n, c->dtype), D = gc_put(d, n, c->dtype), Y = gc_put_bytes(y, c->N * sizeof *y);
    memcpy(z0, z, n * sizeof *z); /* rounded as the sides hold it */
    gc_buf L = gc_put_bytes((double[]){42.0}, sizeof(double));
    gc_buf *G = c->in_place ? &Z : &D;
    CHECK(DV->crossentropy_forward_backward(DS, NULL, L.d, c->grad ? G->d : NULL, Z.d, Y.d, c->N, c->V, c->ld,
                                            c->scale, c->dtype, &err),
          "crossentropy (dut)");
    CHECK(RV->crossentropy_forward_backward(RS, NULL, L.r, c->grad ? G->r : NULL, Z.r, Y.r, c->N, c->V, c->ld,
                                            c->scale, F32, &err),
          "crossentropy (cpu)");
    double lg, lr;
    gc_download(&g_gc.dut, &lg, L.d, sizeof lg);
    gc_download(&g_gc.ref, &lr, L.r, sizeof lr);
    gc_get(G, got, ref);
    char what[128];
    snprintf(what, sizeof what, "crossentropy case %zu (N %zu V %zu ld %zu%s%s %s)", idx, c->N, c->V, c->ld,
             c->in_place ? ", in place" : "", c->grad ? "" : ", loss only", gc_dtname(c->dtype));
    ce_definition(what, c, z0, y, lr, c->grad ? ref : NULL);
    gc_near(what, 0, lg, lr, g_gc.exact ? 0.0 : 1e-5 * fabs(lr) + 1e-6 * (double)c->N);
    gc_expect(what, got, ref, n, c->dtype, row_tol(c->V, c->dtype));
    free(z), free(z0), free(d), free(got), free(ref), free(y);
    gc_drop(&Z), gc_drop(&D), gc_drop(&Y), gc_drop(&L);
}

static void test_crossentropy(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(ce_cases); i++)
        if (gc_runs(ce_cases[i].dtype, 0)) check_crossentropy(&ce_cases[i], i);
}

typedef struct sm_case {
    size_t N, V;
    float temperature;
    int32_t dtype;
} sm_case;

static const sm_case sm_cases[] = {
    {1, 1, 1.0f, F32}, {3, 7, 0.5f, F32}, {64, 1000, 1.0f, F32}, {5, 50257, 0.7f, F32}, {17, 4097, 2.0f, BF16},
};

static void check_softmax(const sm_case *c, size_t idx) {
    size_t n = c->N * c->V;
    float *z = test_fvec(n), *p = test_fvec(n), *got = test_fvec(n), *ref = test_fvec(n);
    test_fill(z, n, 3.0f, 1100 + idx);
    gc_buf Z = gc_put(z, n, c->dtype), P = gc_put(p, n, F32);
    CHECK(DV->softmax_forward(DS, NULL, P.d, Z.d, c->N, c->V, c->temperature, c->dtype, &err), "softmax (dut)");
    CHECK(RV->softmax_forward(RS, NULL, P.r, Z.r, c->N, c->V, c->temperature, F32, &err), "softmax (cpu)");
    gc_get(&P, got, ref);
    char what[112];
    snprintf(what, sizeof what, "softmax case %zu (N %zu V %zu T %g %s)", idx, c->N, c->V, c->temperature,
             gc_dtname(c->dtype));
    for (size_t r = 0; r < c->N; r++) { /* the definition in double */
        const float *zr = z + r * c->V;
        double mx = zr[0], sum = 0;
        for (size_t i = 1; i < c->V; i++) mx = zr[i] > mx ? zr[i] : mx;
        for (size_t i = 0; i < c->V; i++) sum += exp((zr[i] - mx) / c->temperature);
        for (size_t i = 0; i < c->V; i++) {
            double want = exp((zr[i] - mx) / c->temperature) / sum;
            gc_near(what, r * c->V + i, ref[r * c->V + i], want, row_tol(c->V, F32).rel * want + 1e-12);
        }
    }
    gc_expect(what, got, ref, n, F32, row_tol(c->V, F32)); /* probabilities are f32 from the same inputs */
    free(z), free(p), free(got), free(ref);
    gc_drop(&Z), gc_drop(&P);
}

static void test_softmax(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(sm_cases); i++)
        if (gc_runs(sm_cases[i].dtype, 0)) check_softmax(&sm_cases[i], i);
}

/* ---- the optimizer's ops ---- */

typedef struct adamw_case {
    size_t n;
    float grad_scale, weight_decay;
    uint64_t t;
    int copy; /* 0: no param_copy, else its dtype + 1 */
} adamw_case;

static const adamw_case adamw_cases[] = {
    {1, 1.0f, 0.0f, 1, 0}, {7, 0.25f, 0.1f, 1, F32 + 1}, {1000, 0.5f, 0.1f, 7, 0},
    {100003, 0.8f, 0.01f, 3, F32 + 1}, {4099, 1.0f, 0.1f, 2, BF16 + 1},
};

/* A few f32 roundings per element, FMA contraction on the device: 1e-6
 * relative, and of the largest value where a moment cancels near 0. */
static const gc_tol ADAMW_TOL = {1e-6, 1e-6, 0, 0};

/* One step in double from the step's inputs (p, g, m, v), against the
 * cpu backend's (rp, rm, rv): f32 arithmetic, a few roundings each. */
static void adamw_definition(const char *what, const adamw_case *c, const float *p, const float *g, const float *m,
                             const float *v, const float *rp, const float *rm, const float *rv) {
    const double lr = 1e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8;
    double bc1 = 1 - pow(b1, (double)c->t), bc2 = 1 - pow(b2, (double)c->t);
    for (size_t i = 0; i < c->n; i++) {
        double gs = (double)g[i] * c->grad_scale, mi = b1 * m[i] + (1 - b1) * gs, vi = b2 * v[i] + (1 - b2) * gs * gs;
        double step = lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
        gc_near(what, i, rm[i], mi, 1e-6 * (b1 * fabs(m[i]) + (1 - b1) * fabs(gs)));
        gc_near(what, i, rv[i], vi, 1e-6 * vi + 1e-12);
        gc_near(what, i, rp[i], p[i] * (1 - lr * c->weight_decay) - step, 1e-6 * fabs(p[i]) + 1e-5 * fabs(step));
    }
}

/* The dut's bf16 copy must be its own f32 parameters rounded to nearest even. */
static void adamw_copy(const char *what, const adamw_case *c, const gc_buf *copy, const float *dut_param) {
    float *got = test_fvec(c->n), *want = test_fvec(c->n);
    gc_download_dt(&g_gc.dut, got, copy->d, c->n, c->copy - 1);
    memcpy(want, dut_param, c->n * sizeof *want);
    if (c->copy - 1 == BF16) gc_round_bf16(want, c->n);
    test_close(what, got, want, c->n, 0.0, 0.0);
    free(got), free(want);
}

static void check_adamw(const adamw_case *c, size_t idx) {
    int32_t copy_dt = c->copy ? c->copy - 1 : F32;
    if (!gc_runs(copy_dt, 0)) return;
    float *p = test_fvec(c->n), *g = test_fvec(c->n), *m = test_fvec(c->n), *v = test_fvec(c->n);
    float *got = test_fvec(c->n), *rp = test_fvec(c->n), *rm = test_fvec(c->n), *rv = test_fvec(c->n);
    test_fill(p, c->n, 1.0f, 1200 + idx);
    test_fill(g, c->n, 1.0f, 1210 + idx);
    test_fill(m, c->n, 0.1f, 1220 + idx);
    test_fill(v, c->n, 0.1f, 1230 + idx);
    for (size_t i = 0; i < c->n; i++) v[i] = v[i] * v[i]; /* second moments are >= 0 */
    gc_buf P = gc_put(p, c->n, F32), G = gc_put(g, c->n, F32), M = gc_put(m, c->n, F32), V = gc_put(v, c->n, F32);
    gc_buf CP = gc_put(p, c->n, F32); /* room for an f32 or bf16 copy */
    CHECK(DV->adamw_update(DS, NULL, P.d, c->copy ? CP.d : NULL, M.d, V.d, G.d, c->n, 1e-3f, 0.9f, 0.95f, 1e-8f,
                           c->weight_decay, c->grad_scale, c->t, copy_dt, &err),
          "adamw_update (dut)");
    /* the reference refreshes no bf16 copy: it has none */
    CHECK(RV->adamw_update(RS, NULL, P.r, c->copy == F32 + 1 ? CP.r : NULL, M.r, V.r, G.r, c->n, 1e-3f, 0.9f, 0.95f,
                           1e-8f, c->weight_decay, c->grad_scale, c->t, F32, &err),
          "adamw_update (cpu)");
    char what[112];
    snprintf(what, sizeof what, "adamw case %zu (n %zu t %llu%s)", idx, c->n, (unsigned long long)c->t,
             c->copy ? (c->copy - 1 == BF16 ? ", bf16 copy" : ", f32 copy") : "");
    gc_get(&M, got, rm);
    gc_expect(what, got, rm, c->n, F32, ADAMW_TOL);
    gc_get(&V, got, rv);
    gc_expect(what, got, rv, c->n, F32, ADAMW_TOL);
    gc_get(&P, got, rp);
    gc_expect(what, got, rp, c->n, F32, ADAMW_TOL);
    adamw_definition(what, c, p, g, m, v, rp, rm, rv);
    if (c->copy) adamw_copy(what, c, &CP, got);
    free(p), free(g), free(m), free(v), free(got), free(rp), free(rm), free(rv);
    gc_drop(&P), gc_drop(&G), gc_drop(&M), gc_drop(&V), gc_drop(&CP);
}

static void test_adamw(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(adamw_cases); i++) check_adamw(&adamw_cases[i], i);
}

/* sumsq accumulates into a double already holding 3; scale is one IEEE
 * multiplication. */
static void test_sumsq_scale(void **state) {
    (void)state;
    static const size_t sizes[] = {1, 7, 1000, (1 << 20) + 3};
    for (size_t c = 0; c < N_OF(sizes); c++) {
        size_t n = sizes[c];
        float *x = test_fvec(n), *got = test_fvec(n), *ref = test_fvec(n);
        test_fill(x, n, 1.0f, 1300 + c);
        gc_buf X = gc_put(x, n, F32), S = gc_put_bytes((double[]){3.0}, sizeof(double));
        CHECK(DV->sumsq(DS, NULL, S.d, X.d, n, &err), "sumsq (dut)");
        CHECK(RV->sumsq(RS, NULL, S.r, X.r, n, &err), "sumsq (cpu)");
        CHECK(DV->scale(DS, NULL, X.d, -0.375f, n, &err), "scale (dut)");
        CHECK(RV->scale(RS, NULL, X.r, -0.375f, n, &err), "scale (cpu)");
        double sg, sr, want = 3.0;
        gc_download(&g_gc.dut, &sg, S.d, sizeof sg);
        gc_download(&g_gc.ref, &sr, S.r, sizeof sr);
        for (size_t i = 0; i < n; i++) want += (double)x[i] * x[i];
        char what[64];
        snprintf(what, sizeof what, "sumsq/scale n %zu", n);
        gc_near(what, 0, sr, want, 1e-12 * want); /* squares exact in double, sums in double */
        gc_near(what, 0, sg, sr, g_gc.exact ? 0.0 : 1e-12 * want);
        gc_get(&X, got, ref);
        /* the f32 product is the exact one (26 bits fit a double) rounded once */
        for (size_t i = 0; i < n; i++) gc_near(what, i, ref[i], (float)(-0.375 * x[i]), 0.0);
        gc_expect(what, got, ref, n, F32, GC_SAME);
        free(x), free(got), free(ref);
        gc_drop(&X), gc_drop(&S);
    }
}

/* ---- convert ---- */

/* Hand-worked f32 -> bf16 roundings (to nearest, ties to even). */
static const struct {
    uint32_t f32;
    uint16_t bf16;
} convert_worked[] = {
    {0x3F800000u, 0x3F80}, /* 1 */
    {0x3F808000u, 0x3F80}, /* 1 + 2^-8, halfway: to the even 1 */
    {0x3F818000u, 0x3F82}, /* 1 + 3 2^-8, halfway: to the even 1 + 2^-6 */
    {0x3F808001u, 0x3F81}, /* just past halfway: up */
    {0xBF80FFFFu, 0xBF81}, /* negative, just below the next bf16: its magnitude rounds up */
    {0x7F800000u, 0x7F80}, /* inf */
    {0xFF800000u, 0xFF80}, /* -inf */
    {0x80000000u, 0x8000}, /* -0 */
    {0x00000001u, 0x0000}, /* the smallest subnormal: to 0 */
    {0x7F7FFFFFu, 0x7F80}, /* FLT_MAX: up to inf */
    {0x7FC00000u, 0x7FC0}, /* NaN: stays a NaN (checked as one, not by bits) */
};

static int bf16_is_nan(fs_bf16 h) { return (h & 0x7F80u) == 0x7F80u && (h & 0x7Fu) != 0; }

/* The dut's f32 -> bf16 of x (n), bit by bit, then bf16 -> f32 back (exact). */
static void convert_bf16(const char *what, const float *x, size_t n, const gc_buf *X, const gc_buf *Y) {
    size_t nw = N_OF(convert_worked);
    void *h = gc_alloc(&g_gc.dut, n * sizeof(fs_bf16));
    fs_bf16 *bits = malloc(n * sizeof *bits);
    float *back = test_fvec(n);
    assert_non_null(bits);
    CHECK(DV->convert(DS, NULL, h, BF16, X->d, F32, n, &err), "convert f32 -> bf16");
    gc_download(&g_gc.dut, bits, h, n * sizeof *bits);
    for (size_t i = 0; i < n; i++) {
        if (isnan(x[i])) {
            gc_near(what, i, bf16_is_nan(bits[i]), 1, 0.0);
            continue;
        }
        fs_bf16 want = i < nw ? convert_worked[i].bf16 : fs_bf16_from_f32(x[i]);
        gc_near(what, i, bits[i], want, 0.0);
    }
    CHECK(DV->convert(DS, NULL, Y->d, F32, h, BF16, n, &err), "convert bf16 -> f32");
    gc_download(&g_gc.dut, back, Y->d, n * sizeof(float));
    for (size_t i = 0; i < n; i++) gc_near(what, i, fs_f32_bits(back[i]), (double)((uint32_t)bits[i] << 16), 0.0);
    gc_free(&g_gc.dut, h);
    free(bits), free(back);
}

static void test_convert(void **state) {
    (void)state;
    static const size_t sizes[] = {1, 7, 1000, 65539};
    size_t nw = N_OF(convert_worked);
    for (size_t c = 0; c < N_OF(sizes); c++) {
        size_t n = nw + sizes[c];
        float *x = test_fvec(n), *junk = test_fvec(n);
        test_fill(x + nw, sizes[c], 100.0f, 1400 + c);
        for (size_t i = 0; i < nw; i++) x[i] = fs_bits_f32(convert_worked[i].f32);
        gc_buf X = gc_put(x, n, F32), Y = gc_put(junk, n, F32);
        char what[64];
        snprintf(what, sizeof what, "convert n %zu", n);
        /* f32 -> f32: a copy on both sides, bit for bit (NaN included) */
        CHECK(DV->convert(DS, NULL, Y.d, F32, X.d, F32, n, &err), "convert f32 -> f32 (dut)");
        CHECK(RV->convert(RS, NULL, Y.r, F32, X.r, F32, n, &err), "convert f32 -> f32 (cpu)");
        float *got = test_fvec(n), *ref = test_fvec(n);
        gc_get(&Y, got, ref);
        for (size_t i = 0; i < n; i++) {
            gc_near(what, i, fs_f32_bits(ref[i]), fs_f32_bits(x[i]), 0.0);
            gc_near(what, i, fs_f32_bits(got[i]), fs_f32_bits(x[i]), 0.0);
        }
        if (gc_runs(BF16, 0)) convert_bf16(what, x, n, &X, &Y);
        free(x), free(junk), free(got), free(ref);
        gc_drop(&X), gc_drop(&Y);
    }
}

/* ---- sampling ---- */

typedef struct sample_case {
    size_t V, ld;
    float temperature, top_p; /* temperature 0: greedy */
    uint32_t top_k;
    float u[2];  /* the two rows' draws, chosen away from where a rounding moves the pick */
    int integer; /* logits rounded to integers: many exact ties (broken by id) */
    int32_t dtype;
} sample_case;

static const sample_case sample_cases[] = {
    {1, 1, 1.0f, 1.0f, 0, {0.5f, 0.9f}, 0, F32},
    {9, 9, 0.0f, 1.0f, 0, {0.0f, 0.0f}, 1, F32}, /* greedy among ties: the smallest id */
    {9, 9, 1.0f, 1.0f, 0, {0.42f, 0.87f}, 1, F32},
    {7, 8, 1.0f, 1.0f, 0, {0.3f, 0.9f}, 0, F32},
    {1000, 1000, 0.8f, 1.0f, 40, {0.2f, 0.77f}, 0, F32},
    {1000, 1024, 1.0f, 0.9f, 0, {0.05f, 0.6f}, 0, F32},
    {50257, 50304, 0.7f, 0.95f, 50, {0.33f, 0.97f}, 0, F32},
    {50257, 50257, 1.3f, 1.0f, 0, {0.1f, 0.5f}, 0, F32},
    {50257, 50304, 0.0f, 1.0f, 0, {0.0f, 0.0f}, 0, F32},
    {4099, 4100, 0.9f, 0.8f, 0, {0.25f, 0.75f}, 0, BF16},
};

typedef struct ranked {
    double p;
    int32_t id;
} ranked;

static int by_p_then_id(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    return x->p != y->p ? (x->p > y->p ? -1 : 1) : (x->id > y->id) - (x->id < y->id);
}

/* How far apart, relatively, two probabilities the implementations might
 * order differently are: exact ties order by id everywhere. */
static double apart(const ranked *s, size_t i, size_t j, size_t V) {
    if (j >= V || s[i].p == s[j].p) return 1.0;
    return fabs(s[i].p - s[j].p) / s[i].p;
}

/* The sampler's definition (backend.h) in double: softmax of logits /
 * temperature, sorted descending (ties by id), the first top_k, the
 * shortest prefix reaching top_p, the token where u times the kept mass
 * falls. *margin: the relative distance of the draw, the top_p cut and the
 * chosen token's neighbours from where f32 rounding could change the pick. */
static int32_t sample_definition(const float *z, size_t V, const fs_sample_params *q, ranked *s, double *margin) {
    double mx = z[0], sum = 0;
    size_t best = 0;
    for (size_t i = 1; i < V; i++) best = z[i] > z[best] ? i : best;
    *margin = 1.0;
    if (q->temperature <= 0.0f) return (int32_t)best;
    mx = z[best];
    for (size_t i = 0; i < V; i++) sum += (s[i].p = exp(((double)z[i] - mx) / q->temperature));
    for (size_t i = 0; i < V; i++) s[i].p /= sum, s[i].id = (int32_t)i;
    qsort(s, V, sizeof *s, by_p_then_id);
    size_t keep = q->top_k > 0 && q->top_k < V ? q->top_k : V;
    if (keep < V) *margin = fmin(*margin, apart(s, keep - 1, keep, V));
    if (q->top_p < 1.0f) {
        double cum = 0;
        size_t n = 0;
        while (n < keep && (cum += s[n++].p) < q->top_p) {}
        *margin = fmin(*margin, fabs(cum - q->top_p));
        if (n > 1) *margin = fmin(*margin, fabs(cum - s[n - 1].p - q->top_p));
        keep = n;
    }
    double mass = 0, cum = 0;
    for (size_t i = 0; i < keep; i++) mass += s[i].p;
    double x = q->u * mass;
    size_t at = 0;
    while (at + 1 < keep && x >= cum + s[at].p) cum += s[at++].p;
    *margin = fmin(*margin, fmin(x - cum, cum + s[at].p - x) / mass);
    *margin = fmin(*margin, fmin(at ? apart(s, at, at - 1, V) : 1.0, apart(s, at, at + 1, V)));
    return s[at].id;
}

static void check_sample(const sample_case *c, size_t idx) {
    if (!gc_runs(c->dtype, 0)) return;
    size_t n = 2 * c->ld;
    float *z = test_fvec(n);
    ranked *s = malloc(c->V * sizeof *s);
    assert_non_null(s);
    test_fill(z, n, 3.0f, 1500 + idx);
    if (c->integer)
        for (size_t i = 0; i < n; i++) z[i] = roundf(z[i]);
    gc_buf Z = gc_put(z, n, c->dtype);
    fs_sample_params q[2];
    for (int r = 0; r < 2; r++) q[r] = (fs_sample_params){c->temperature, c->top_p, c->top_k, c->u[r]};
    int32_t got[2] = {-1, -1}, ref[2] = {-1, -1};
    CHECK(DV->sample(DS, NULL, got, Z.d, 2, c->V, c->ld, q, c->dtype, &err), "sample (dut)");
    CHECK(RV->sample(RS, NULL, ref, Z.r, 2, c->V, c->ld, q, F32, &err), "sample (cpu)");
    char what[128];
    snprintf(what, sizeof what, "sample case %zu (V %zu ld %zu T %g top_k %u top_p %g %s)", idx, c->V, c->ld,
             c->temperature, c->top_k, c->top_p, gc_dtname(c->dtype));
    for (int r = 0; r < 2; r++) {
        double margin;
        int32_t want = sample_definition(z + r * c->ld, c->V, &q[r], s, &margin);
        if (margin < 1e-5) { /* a case this test chose badly, not a backend's fault */
            fprintf(stderr, "%s: row %d: u = %g lies %.2g from a boundary: choose another\n", what, r, c->u[r], margin);
            fail();
        }
        gc_near(what, (size_t)r, ref[r], want, 0.0);
        gc_near(what, (size_t)r, got[r], want, 0.0);
    }
    free(z), free(s);
    gc_drop(&Z);
}

static void test_sample(void **state) {
    (void)state;
    for (size_t i = 0; i < N_OF(sample_cases); i++) check_sample(&sample_cases[i], i);
}

/* ---- memory, copies, streams, events (the dut alone, against bytes) ---- */

/* A buffer from the host, memset over part of a second one, a copy between
 * them at an odd offset, and the bytes back. */
static void check_copies(fs_backend_handle *b, size_t n, size_t idx) {
    uint8_t *h = malloc(n), *back = malloc(n + 1);
    assert_true(h && back);
    for (size_t i = 0; i < n; i++) h[i] = (uint8_t)(i * 131 + idx);
    void *d1 = gc_upload(b, h, n), *d2 = gc_alloc(b, n + 1);
    assert_int_equal((uintptr_t)d2 % 256, 0);
    CHECK(b->vt->memset(b->self, NULL, d2, 0xA5, n + 1, &err), "memset");
    CHECK(b->vt->copy(b->self, NULL, (char *)d2 + 1, d1, n, FS_COPY_DEVICE_TO_DEVICE, &err), "copy device to device");
    CHECK(b->vt->memset(b->self, NULL, d1, 0x3C, n / 2, &err), "memset");
    gc_download(b, back, d2, n + 1);
    assert_int_equal(back[0], 0xA5);
    assert_memory_equal(back + 1, h, n);
    gc_download(b, back, d1, n);
    for (size_t i = 0; i < n; i++) assert_int_equal(back[i], i < n / 2 ? 0x3C : h[i]);
    gc_free(b, d1), gc_free(b, d2);
    free(h), free(back);
}

/* Pinned host memory to the device on the compute stream, an event, a
 * second (high-priority) stream that waits for it and copies on and back
 * to pinned memory; that stream's event then says all of it is done. */
static void check_streams(fs_backend_handle *b) {
    const fs_backend_vtable *vt = b->vt;
    size_t n = ((size_t)1 << 22) + 3;
    uint8_t *pin = NULL, *pin_back = NULL;
    fs_backend_stream *s2 = NULL;
    fs_backend_event *e = NULL;
    CHECK(vt->alloc(b->self, (void **)&pin, n, FS_MEM_HOST_PINNED, &err), "alloc pinned");
    CHECK(vt->alloc(b->self, (void **)&pin_back, n, FS_MEM_HOST_PINNED, &err), "alloc pinned");
    for (size_t i = 0; i < n; i++) pin[i] = (uint8_t)(i * 7 + 3), pin_back[i] = 0;
    void *d1 = gc_alloc(b, n), *d2 = gc_alloc(b, n);
    assert_non_null(vt->default_stream(b->self));
    CHECK(vt->stream_create(b->self, &s2, 1, &err), "stream_create");
    CHECK(vt->event_create(b->self, &e, &err), "event_create");
    CHECK(vt->copy(b->self, vt->default_stream(b->self), d1, pin, n, FS_COPY_HOST_TO_DEVICE, &err), "copy pinned");
    CHECK(vt->event_record(b->self, e, NULL, &err), "event_record");
    CHECK(vt->stream_wait_event(b->self, s2, e, &err), "stream_wait_event");
    CHECK(vt->copy(b->self, s2, d2, d1, n, FS_COPY_DEVICE_TO_DEVICE, &err), "copy on a stream");
    CHECK(vt->copy(b->self, s2, pin_back, d2, n, FS_COPY_DEVICE_TO_HOST, &err), "copy to pinned");
    CHECK(vt->event_record(b->self, e, s2, &err), "event_record");
    CHECK(vt->event_synchronize(b->self, e, &err), "event_synchronize");
    int done = 0;
    CHECK(vt->event_query(b->self, e, &done, &err), "event_query");
    assert_int_equal(done, 1);
    assert_memory_equal(pin_back, pin, n);
    CHECK(vt->memset(b->self, s2, d2, 0x11, n, &err), "memset on a stream");
    CHECK(vt->stream_synchronize(b->self, s2, &err), "stream_synchronize");
    CHECK(vt->synchronize(b->self, &err), "synchronize");
    vt->event_destroy(b->self, e);
    vt->stream_destroy(b->self, s2);
    gc_download(b, pin_back, d2, n);
    for (size_t i = 0; i < n; i++) assert_int_equal(pin_back[i], 0x11);
    gc_free(b, d1), gc_free(b, d2);
    vt->free(b->self, pin, FS_MEM_HOST_PINNED);
    vt->free(b->self, pin_back, FS_MEM_HOST_PINNED);
}

static void test_memory_streams(void **state) {
    (void)state;
    fs_backend_handle *b = &g_gc.dut;
    fs_backend_device_info info = {.struct_size = sizeof info};
    CHECK(b->vt->device_info(b->self, &info, &err), "device_info");
    assert_true(info.name[0] != '\0');
    fprintf(stderr, "device: %s\n", info.name);
    void *z0 = gc_alloc(b, 0), *z1 = gc_alloc(b, 0); /* valid, unique */
    assert_true(z0 && z1 && z0 != z1);
    gc_free(b, z0), gc_free(b, z1);
    b->vt->free(b->self, NULL, FS_MEM_DEVICE);
    static const size_t sizes[] = {1, 7, 4099, (3 << 20) + 5};
    for (size_t i = 0; i < N_OF(sizes); i++) check_copies(b, sizes[i], i);
    check_streams(b);
}

int main(void) {
    if (!gc_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_streams), cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_bias_backward),  cmocka_unit_test(test_encoder),
        cmocka_unit_test(test_layernorm),      cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_heads),          cmocka_unit_test(test_crossentropy),
        cmocka_unit_test(test_softmax),        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_sumsq_scale),    cmocka_unit_test(test_convert),
        cmocka_unit_test(test_sample),
    };
    return cmocka_run_group_tests(tests, gc_setup, gc_teardown);
}
