/* test_gpu_attention.c — each attention plugin (dense; longformer with
 * windows, dilations and global tokens; lsh) created for the device
 * against the same plugin created for the CPU, with the same inputs:
 * forward, backward (dq, dk, dv overwritten; dx and the plugin's own
 * parameter gradients accumulated), the plugin's own parameters after
 * create and init_params, and decode where the plugin declares it for the
 * device (FS_ATTENTION_CUDA_DECODE; elsewhere cache_reset must refuse).
 * Shapes span T = 1, 7, 33, 64, 100, 130, 200, 257, 1024, head widths 24,
 * 32, 64, 128, causal and bidirectional, f32 and (dense, the one plugin
 * that takes it) bf16, on SIMT kernels and (bf16, widths 64 and 128) on
 * tensor cores. The cpu plugin's dense forward is also checked against softmax(Q
 * K^T / sqrt(D)) V computed here in double. See gpu_compare.h for the
 * FS_GPU_TEST_BACKEND=cpu run that checks this harness without a GPU. */
#include "core/graph.h"
#include "gpu_compare.h"

#define F32 FS_DTYPE_F32
#define BF16 FS_DTYPE_BF16
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

typedef struct att_case {
    const char *plugin;
    const char *keys; /* its [attention] keys */
    size_t B, H, T, D;
    int causal;
    int32_t dtype;
} att_case;

static const att_case att_cases[] = {
    {"dense", "", 2, 3, 1, 32, 1, F32},
    {"dense", "", 2, 2, 7, 64, 1, F32},
    {"dense", "", 1, 2, 64, 128, 0, F32},
    {"dense", "", 1, 3, 33, 24, 1, F32},
    {"dense", "", 2, 2, 257, 64, 1, F32},
    {"dense", "", 1, 2, 1024, 32, 1, F32},
    {"dense", "", 1, 1, 1024, 128, 0, F32},
    {"dense", "", 2, 2, 7, 32, 1, BF16},
    {"dense", "", 1, 2, 64, 64, 0, BF16},
    {"dense", "", 1, 2, 257, 128, 1, BF16},
    /* bf16 at widths 64 and 128 runs on tensor cores (dense_mma.cu): one
     * key, ragged tiles, both masks, several tiles of 64 */
    {"dense", "", 2, 3, 1, 64, 1, BF16},
    {"dense", "", 2, 2, 100, 64, 0, BF16},
    {"dense", "", 1, 2, 1024, 64, 1, BF16},
    {"dense", "", 1, 1, 130, 128, 0, BF16},
    {"dense", "", 1, 2, 200, 128, 1, BF16},
    {"longformer", "window = 5\n", 1, 2, 1, 128, 1, F32},
    {"longformer", "window = 3\ndilation = 1,2\n", 2, 2, 7, 32, 1, F32},
    {"longformer", "window = 16\ndilation = 2\nglobal = 0,5\n", 1, 2, 64, 64, 1, F32},
    {"longformer", "window = 8\nglobal = first:2\n", 2, 2, 257, 32, 0, F32},
    {"longformer", "window = 32\nglobal = 3\n", 1, 2, 257, 128, 0, F32},
    {"longformer", "window = 64\ndilation = 1,2,3,4\nglobal = token:7\n", 1, 4, 1024, 32, 1, F32},
    {"lsh", "n_hashes = 1\nn_buckets = 2\nchunk = 4\n", 1, 1, 1, 32, 1, F32},
    {"lsh", "n_hashes = 1\nn_buckets = 4\nchunk = 8\n", 1, 2, 7, 64, 1, F32},
    {"lsh", "n_hashes = 2\nn_buckets = 8\nchunk = 16\nlookback = 1\n", 2, 2, 64, 32, 1, F32},
    {"lsh", "n_hashes = 4\nn_buckets = 16\nchunk = 32\nlookback = 1\nlookahead = 1\n", 1, 2, 257, 64, 0, F32},
    {"lsh", "n_hashes = 2\nn_buckets = 32\nchunk = 64\nlookback = 1\n", 1, 2, 1024, 128, 1, F32},
};

/* A parameter the plugin registered (its own projection, rotations). */
typedef struct att_param {
    char name[128];
    float *p, *g; /* on the side's backend */
    size_t n, shape[3];
} att_param;

/* One side: the plugin instance on one backend, with what it registered
 * and the host memory it needs. */
typedef struct att_side {
    fs_backend_handle *b;
    const fs_attention_vtable *vt;
    void *self;
    fs_plugin_ctx ctx;
    att_param params[4];
    size_t n_params;
    void *saved;
} att_side;

/* The session's role: a registered parameter placed on the side's
 * backend (zeroed), its gradient next to it. */
static int place(void *arg, const char *name, int32_t ndim, const size_t *shape, int weight_decay, float **param,
                 float **grad, fs_error *err) {
    att_side *s = arg;
    (void)weight_decay;
    if (s->n_params == N_OF(s->params) || ndim > 3)
        return fs_error_set(err, FS_ERR_INVALID, "test: parameter %s: more than this test holds", name);
    att_param *p = &s->params[s->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->n = 1;
    for (int32_t i = 0; i < ndim; i++) p->n *= (p->shape[i] = shape[i]);
    float *zeros = test_fvec(p->n);
    p->p = gc_upload(s->b, zeros, p->n * sizeof(float));
    p->g = gc_upload(s->b, zeros, p->n * sizeof(float));
    free(zeros);
    *param = p->p;
    *grad = p->g;
    return FS_OK;
}

/* The plugin's keys resolved against its parameters (NULL: it has none). */
static fs_config *plugin_config(const fs_plugin *p, const char *keys) {
    if (!p->desc->n_params) return NULL;
    char ini[512];
    snprintf(ini, sizeof ini, "[attention]\n%s", keys);
    fs_graph *g = NULL;
    fs_config *cfg = NULL;
    const char *sec[] = {"attention"};
    fs_error err = {0};
    int rc = fs_graph_load_string(&g, "gpu_attention.ini", ini, &err);
    if (!rc) rc = fs_config_resolve(&cfg, g, sec, 1, p->desc->params, p->desc->n_params, NULL, &err);
    fs_graph_destroy(g);
    gc_check_rc(rc, &err, keys);
    return cfg;
}

/* The case's plugin on side s (same scope on both: the same seeds). */
static void open_side(att_side *s, fs_backend_handle *b, const att_case *c, const fs_config *cfg) {
    memset(s, 0, sizeof *s);
    s->b = b;
    const fs_plugin *p = NULL;
    fs_error err = {0};
    gc_check_rc(fs_plugin_registry_get(&b->reg, FS_PLUGIN_ATTENTION, c->plugin, &p, &err), &err, c->plugin);
    s->vt = p->desc->vtable;
    b->host.place_param = place;
    b->host.place_arg = s;
    fs_attention_config ac = {sizeof ac, 0, c->H, c->D, c->H * c->D, c->T, c->causal, b->device, FS_DTYPE_F32};
    fs_plugin_ctx_init(&s->ctx, &b->host, cfg, "layer0.attention", c->plugin);
    gc_check_rc(s->vt->create(&s->self, &b->host.api, &s->ctx, &ac, &err), &err, "attention create");
    s->saved = gc_alloc(b, s->vt->saved_bytes(s->self, c->B, c->T));
}

static void close_side(att_side *s) {
    if (s->self) s->vt->destroy(s->self);
    gc_free(s->b, s->saved);
    for (size_t i = 0; i < s->n_params; i++) gc_free(s->b, s->params[i].p), gc_free(s->b, s->params[i].g);
    s->b->host.place_param = NULL;
    s->b->host.place_arg = NULL;
}

/* ---- the tensors, mirrored on both sides ---- */

typedef struct att_io {
    gc_buf q, k, v, out, dout, dq, dk, dv; /* (B, H, T, D) */
    gc_buf x, dx;                          /* (B, T, C) f32, for plugins that read the layer input */
    float *hq, *hk, *hv, *hx;              /* the host's copies (as the sides hold them) */
    double terms;                          /* max|dout| max|v| max(|q|, |k|): backward's terms */
    int32_t *tokens;                       /* (B, T) host: ids 0..9, so token:7 occurs */
} att_io;

static fs_tensor on_side(const att_side *s, void *p, int32_t dtype, int32_t ndim, size_t d0, size_t d1, size_t d2,
                         size_t d3) {
    fs_tensor t = fs_tensor_cpu_f32(p, ndim, d0, d1, d2, d3);
    t.dtype = dtype;
    t.device = s->b->device;
    return t;
}

static fs_attention_args att_args(const att_case *c, const att_side *s, const att_io *io, int dut) {
    int32_t dt = dut ? c->dtype : F32;
    size_t B = c->B, H = c->H, T = c->T, D = c->D;
#define SIDE(buf) (dut ? (buf).d : (buf).r)
    fs_attention_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.B = B, a.T = T;
    a.q = on_side(s, SIDE(io->q), dt, 4, B, H, T, D);
    a.k = on_side(s, SIDE(io->k), dt, 4, B, H, T, D);
    a.v = on_side(s, SIDE(io->v), dt, 4, B, H, T, D);
    a.out = on_side(s, SIDE(io->out), dt, 4, B, H, T, D);
    a.dout = on_side(s, SIDE(io->dout), dt, 4, B, H, T, D);
    a.dq = on_side(s, SIDE(io->dq), dt, 4, B, H, T, D);
    a.dk = on_side(s, SIDE(io->dk), dt, 4, B, H, T, D);
    a.dv = on_side(s, SIDE(io->dv), dt, 4, B, H, T, D);
    a.saved = s->saved;
    a.tokens = io->tokens;
    if (s->vt->flags & FS_ATTENTION_USES_INPUT) {
        a.x = on_side(s, SIDE(io->x), F32, 3, B, T, H * D, 0);
        a.dx = on_side(s, SIDE(io->dx), F32, 3, B, T, H * D, 0);
    }
#undef SIDE
    return a;
}

static void io_open(att_io *io, const att_case *c, size_t idx) {
    size_t n = c->B * c->H * c->T * c->D, nx = c->B * c->T * c->H * c->D;
    float *junk = test_fvec(n), *dout = test_fvec(n), *dx = test_fvec(nx);
    memset(io, 0, sizeof *io);
    io->hq = test_fvec(n), io->hk = test_fvec(n), io->hv = test_fvec(n), io->hx = test_fvec(nx);
    io->tokens = malloc(c->B * c->T * sizeof *io->tokens);
    assert_non_null(io->tokens);
    test_fill(io->hq, n, 1.0f, 2000 + idx);
    test_fill(io->hk, n, 1.0f, 2010 + idx);
    test_fill(io->hv, n, 1.0f, 2020 + idx);
    test_fill(io->hx, nx, 1.0f, 2030 + idx);
    test_fill(dout, n, 1.0f, 2040 + idx);
    test_fill(dx, nx, 1.0f, 2050 + idx); /* dx accumulates: start from something */
    test_fill(junk, n, 1e3f, 2060 + idx); /* outputs that must be overwritten */
    io->terms = gc_max_abs(dout, n) * gc_max_abs(io->hv, n) * fmax(gc_max_abs(io->hq, n), gc_max_abs(io->hk, n));
    gc_fill_ids(io->tokens, c->B * c->T, 10, 2070 + idx);
    io->k = gc_put(io->hk, n, c->dtype);
    io->v = gc_put(io->hv, n, c->dtype);
    io->out = gc_put(junk, n, c->dtype);
    io->dout = gc_put(dout, n, c->dtype);
    io->dq = gc_put(junk, n, c->dtype);
    io->dk = gc_put(junk, n, c->dtype);
    io->dv = gc_put(junk, n, c->dtype);
    io->x = gc_put(io->hx, nx, F32);
    io->dx = gc_put(dx, nx, F32);
    free(junk), free(dout), free(dx);
}

static void io_close(att_io *io) {
    gc_buf *b[] = {&io->q, &io->k, &io->v, &io->out, &io->dout, &io->dq, &io->dk, &io->dv, &io->x, &io->dx};
    for (size_t i = 0; i < N_OF(b); i++)
        if (b[i]->d || b[i]->r) gc_drop(b[i]);
    free(io->hq), free(io->hk), free(io->hv), free(io->hx), free(io->tokens);
}

/* ---- tolerances ---- */

/* f32 on both sides: a softmax over up to T keys and sums over T values in
 * other orders (the device's tiles, the CPU's blocks), fs_fast_expf
 * against expf (a few ulp): 8 sqrt(T) u per pass (gpu_compare.h), two
 * passes. Backward's dS = P (dP - delta) cancels: of the largest value, 4
 * times that. bf16: inputs are the same rounded values, the result rounds
 * once more (2^-8), and backward's delta reads the output as the device
 * rounded it: 2 2^-8 more of the largest value. */
static gc_tol att_tol(const att_case *c, int backward) {
    double f = 1e-6 + 16.0 * sqrt((double)c->T + 1) * GC_U_F32;
    gc_tol t = {f, backward ? 4 * f : f, 0, 0};
    if (c->dtype == BF16) {
        t.rel += GC_U_BF16;
        t.of_max += backward ? 2 * GC_U_BF16 : 0.0;
    }
    return t;
}

/* ---- the plugin's own parameters ---- */

/* Longformer's global projection starts as a copy of the layer's c_attn
 * (init_params, here the same random one on both sides); lsh's rotations
 * are drawn from the seed at create. Either way both sides must hold the
 * same values, bit for bit. */
static void check_params(const char *what, const att_case *c, att_side *dut, att_side *ref, size_t idx) {
    size_t C = c->H * c->D;
    assert_int_equal(dut->n_params, ref->n_params);
    if (ref->vt->init_params && ref->n_params) {
        float *w = test_fvec(C * 3 * C), *b = test_fvec(3 * C);
        test_fill(w, C * 3 * C, 0.1f, 2100 + idx);
        test_fill(b, 3 * C, 0.1f, 2110 + idx);
        gc_buf W = gc_put(w, C * 3 * C, F32), Bi = gc_put(b, 3 * C, F32);
        fs_tensor wd = on_side(dut, W.d, F32, 2, C, 3 * C, 0, 0), bd = on_side(dut, Bi.d, F32, 1, 3 * C, 0, 0, 0);
        fs_tensor wr = on_side(ref, W.r, F32, 2, C, 3 * C, 0, 0), br = on_side(ref, Bi.r, F32, 1, 3 * C, 0, 0, 0);
        fs_error err = {0};
        gc_check_rc(dut->vt->init_params(dut->self, &wd, &bd, &err), &err, "init_params (dut)");
        gc_check_rc(ref->vt->init_params(ref->self, &wr, &br, &err), &err, "init_params (cpu)");
        gc_check_rc(dut->b->vt->synchronize(dut->b->self, &err), &err, "synchronize"); /* before W goes */
        gc_drop(&W), gc_drop(&Bi);
        free(w), free(b);
    }
    for (size_t i = 0; i < ref->n_params; i++) {
        size_t n = ref->params[i].n;
        float *got = test_fvec(n), *want = test_fvec(n);
        gc_download(dut->b, got, dut->params[i].p, n * sizeof(float));
        gc_download(ref->b, want, ref->params[i].p, n * sizeof(float));
        fprintf(stderr, "%s: parameter %s (%zu values)\n", what, ref->params[i].name, n);
        test_close(what, got, want, n, 0.0, 0.0);
        free(got), free(want);
    }
}

/* The smallest margin, over x's rounds, by which its best bucket's
 * projection beats the next: projections of [q R; -q R] in double. */
static double lsh_min_gap(const float *x, size_t D, const float *rot, size_t n_hashes, size_t half) {
    double gap = INFINITY;
    for (size_t h = 0; h < n_hashes; h++) {
        double best = -INFINITY, second = -INFINITY;
        for (size_t c = 0; c < 2 * half; c++) {
            double p = 0;
            for (size_t d = 0; d < D; d++) p += (double)x[d] * rot[(h * D + d) * half + c % half];
            if (c >= half) p = -p;
            if (p > best) second = best, best = p;
            else if (p > second) second = p;
        }
        gap = fmin(gap, best - second);
    }
    return gap;
}

/* lsh hashes each row of q to the argmax of its projections: a row whose
 * two best lie within rounding (~1e-6 of projections of size ~sqrt(D)) may
 * hash differently on the device, whose sums run in another order, and
 * then see other keys: a legitimate difference, not a bug. Such rows move
 * by small random steps until every best wins by 1e-3. rot (n_hashes, D,
 * half) on the reference (host memory). */
static void lsh_separate(float *q, size_t rows, size_t D, const att_param *rot) {
    assert_true(strstr(rot->name, "rotations") && rot->shape[1] == D);
    float *r = test_fvec(rot->n);
    gc_download(&g_gc.ref, r, rot->p, rot->n * sizeof(float));
    size_t moved = 0;
    for (size_t i = 0; i < rows; i++) {
        float *x = q + i * D;
        size_t tries = 0;
        fs_rng g;
        fs_rng_seed(&g, 2200 + i);
        for (; tries < 100 && lsh_min_gap(x, D, r, rot->shape[0], rot->shape[2]) < 1e-3; tries++)
            for (size_t d = 0; d < D; d++) x[d] += 0.01f * fs_rng_normal(&g);
        assert_true(tries < 100);
        moved += tries > 0;
    }
    if (moved) fprintf(stderr, "lsh: %zu of %zu rows of q moved off a bucket tie\n", moved, rows);
    free(r);
}

/* ---- forward, backward ---- */

/* The cpu plugin's dense forward against softmax(q k^T / sqrt(D)) v in
 * double (causal: keys up to the query's position). */
static void dense_definition(const char *what, const att_case *c, const att_io *io, const float *out) {
    size_t T = c->T, D = c->D;
    double *w = malloc(T * sizeof *w);
    assert_non_null(w);
    for (size_t bh = 0; bh < c->B * c->H; bh++)
        for (size_t i = 0; i < T; i++) {
            const float *q = io->hq + (bh * T + i) * D, *k = io->hk + bh * T * D, *v = io->hv + bh * T * D;
            size_t nk = c->causal ? i + 1 : T;
            double mx = -INFINITY, sum = 0;
            for (size_t j = 0; j < nk; j++) {
                double s = 0;
                for (size_t d = 0; d < D; d++) s += (double)q[d] * k[j * D + d];
                w[j] = s / sqrt((double)D);
                mx = fmax(mx, w[j]);
            }
            for (size_t j = 0; j < nk; j++) sum += (w[j] = exp(w[j] - mx));
            for (size_t d = 0; d < D; d++) {
                double o = 0;
                for (size_t j = 0; j < nk; j++) o += w[j] * v[j * D + d];
                size_t at = (bh * T + i) * D + d;
                gc_near(what, at, out[at], o / sum, 1e-5 + 1e-4 * fabs(o / sum));
            }
        }
    free(w);
}

static void run_pass(const att_case *c, att_side *dut, att_side *ref, const att_io *io, int backward) {
    fs_attention_args a = att_args(c, dut, io, 1), b = att_args(c, ref, io, 0);
    fs_error err = {0};
    int (*fd)(void *, fs_attention_args *, fs_error *) = backward ? dut->vt->backward : dut->vt->forward;
    int (*fr)(void *, fs_attention_args *, fs_error *) = backward ? ref->vt->backward : ref->vt->forward;
    gc_check_rc(fd(dut->self, &a, &err), &err, backward ? "backward (dut)" : "forward (dut)");
    gc_check_rc(fr(ref->self, &b, &err), &err, backward ? "backward (cpu)" : "forward (cpu)");
}

static void check_forward(const char *what, const att_case *c, att_side *dut, att_side *ref, const att_io *io) {
    size_t n = io->out.n;
    float *got = test_fvec(n), *want = test_fvec(n);
    run_pass(c, dut, ref, io, 0);
    gc_get(&io->out, got, want);
    if (!strcmp(c->plugin, "dense")) dense_definition(what, c, io, want);
    gc_tol tol = att_tol(c, 0);
    /* bf16 on tensor cores rounds P to bf16 before P V, as FlashAttention
     * does: at most 2^-9 of each term p_j v_j, so of max|v| once normalised */
    if (c->dtype == BF16) tol.abs = 0.5 * GC_U_BF16 * gc_max_abs(io->hv, n);
    gc_expect(what, got, want, n, c->dtype, tol);
    free(got), free(want);
}

/* dq, dk, dv (overwritten), dx and the parameters' gradients (accumulated). */
static void check_backward(const char *what, const att_case *c, att_side *dut, att_side *ref, const att_io *io) {
    run_pass(c, dut, ref, io, 1);
    gc_tol tol = att_tol(c, 1);
    /* dS = P (dP - delta) can cancel all the way (one key: delta = dP), and
     * dq, dk are then rounding noise on terms of size |dout| |v| |k|, not
     * on the result: the same tolerance, of those terms */
    tol.abs = tol.of_max * io->terms;
    char name[400];
    const gc_buf *g[] = {&io->dq, &io->dk, &io->dv, &io->dx};
    static const char *const names[] = {"dq", "dk", "dv", "dx"};
    for (size_t i = 0; i < N_OF(g); i++) {
        snprintf(name, sizeof name, "%s: %s", what, names[i]);
        gc_expect_buf(name, g[i], tol);
    }
    for (size_t i = 0; i < ref->n_params; i++) {
        size_t n = ref->params[i].n;
        float *got = test_fvec(n), *want = test_fvec(n);
        gc_download(dut->b, got, dut->params[i].g, n * sizeof(float));
        gc_download(ref->b, want, ref->params[i].g, n * sizeof(float));
        snprintf(name, sizeof name, "%s: gradient of %s", what, ref->params[i].name);
        gc_expect(name, got, want, n, F32, tol);
        free(got), free(want);
    }
}

/* ---- decode ---- */

/* Whether side s generates: the plugin decodes, and on a device only
 * with FS_ATTENTION_CUDA_DECODE. */
static int decodes(const att_side *s) {
    if (!(s->vt->flags & FS_ATTENTION_DECODE)) return 0;
    return s->b->device.type == FS_DEVICE_CPU || (s->vt->flags & FS_ATTENTION_CUDA_DECODE);
}

/* (B, H, 1, D) position t of a (B, H, T, D) tensor; x: (B, 1, C) of (B, T, C). */
static void position(float *dst, const float *src, size_t rows, size_t T, size_t width, size_t t) {
    for (size_t r = 0; r < rows; r++) memcpy(dst + r * width, src + (r * T + t) * width, width * sizeof(float));
}

static fs_attention_decode_args decode_args(const att_case *c, const att_side *s, gc_buf *const step[5], size_t pos,
                                            int32_t token, int dut) {
    int32_t dt = dut ? c->dtype : F32;
    void *p[5];
    for (int i = 0; i < 5; i++) p[i] = dut ? step[i]->d : step[i]->r;
    fs_attention_decode_args a = {sizeof a, c->B, pos, on_side(s, p[0], dt, 4, c->B, c->H, 1, c->D),
                                  on_side(s, p[1], dt, 4, c->B, c->H, 1, c->D),
                                  on_side(s, p[2], dt, 4, c->B, c->H, 1, c->D),
                                  on_side(s, p[3], dt, 4, c->B, c->H, 1, c->D), token,
                                  on_side(s, NULL, F32, 3, c->B, 1, c->H * c->D, 0)};
    if (s->vt->flags & FS_ATTENTION_USES_INPUT) a.x.data = p[4];
    return a;
}

/* T steps from an empty cache, step t given position t of the forward's
 * q, k, v and x; the outputs of all steps compared at the end. */
static void check_decode(const char *what, const att_case *c, att_side *dut, att_side *ref, const att_io *io) {
    size_t BH = c->B * c->H, D = c->D, C = c->H * c->D, n = BH * c->T * D;
    void *cache[2];
    att_side *side[2] = {dut, ref};
    fs_error err = {0};
    for (int i = 0; i < 2; i++) {
        size_t bytes = side[i]->vt->cache_bytes(side[i]->self, c->B, c->T);
        cache[i] = gc_alloc(side[i]->b, bytes);
        gc_check_rc(side[i]->vt->cache_reset(side[i]->self, cache[i], c->B, c->T, &err), &err, "cache_reset");
    }
    float *h = test_fvec(BH * D), *got = test_fvec(n), *want = test_fvec(n), *o1 = test_fvec(BH * D);
    float *o2 = test_fvec(BH * D), *hx = test_fvec(c->B * C);
    gc_buf sq = gc_put(h, BH * D, c->dtype), sk = gc_put(h, BH * D, c->dtype), sv = gc_put(h, BH * D, c->dtype);
    gc_buf so = gc_put(h, BH * D, c->dtype), sx = gc_put(hx, c->B * C, F32);
    gc_buf *step[5] = {&sq, &sk, &sv, &so, &sx};
    for (size_t t = 0; t < c->T; t++) {
        const float *src[3] = {io->hq, io->hk, io->hv};
        for (int i = 0; i < 3; i++) {
            position(h, src[i], BH, c->T, D, t);
            gc_set(step[i], h);
        }
        position(hx, io->hx, c->B, c->T, C, t);
        gc_set(&sx, hx);
        int32_t token = c->B == 1 ? io->tokens[t] : -1;
        fs_attention_decode_args a = decode_args(c, dut, step, t, token, 1), b = decode_args(c, ref, step, t, token, 0);
        gc_check_rc(dut->vt->decode(dut->self, cache[0], &a, &err), &err, "decode (dut)");
        gc_check_rc(ref->vt->decode(ref->self, cache[1], &b, &err), &err, "decode (cpu)");
        gc_get(&so, o1, o2);
        for (size_t r = 0; r < BH; r++) { /* back to (B, H, T, D) */
            memcpy(got + (r * c->T + t) * D, o1 + r * D, D * sizeof(float));
            memcpy(want + (r * c->T + t) * D, o2 + r * D, D * sizeof(float));
        }
    }
    gc_expect(what, got, want, n, c->dtype, att_tol(c, 0));
    for (int i = 0; i < 5; i++) gc_drop(step[i]);
    gc_free(dut->b, cache[0]), gc_free(ref->b, cache[1]);
    free(h), free(got), free(want), free(o1), free(o2), free(hx);
}

/* A plugin that decodes on the CPU only must say so on the device, with
 * a message, rather than decode from a cache it cannot read. */
static void check_decode_refused(const char *what, const att_case *c, att_side *dut) {
    void *cache = gc_alloc(dut->b, dut->vt->cache_bytes(dut->self, c->B, c->T));
    fs_error err = {0};
    int rc = dut->vt->cache_reset(dut->self, cache, c->B, c->T, &err);
    fprintf(stderr, "%s: decode refused on the device: %s\n", what, err.message);
    assert_int_equal(rc, FS_ERR_UNSUPPORTED);
    assert_true(err.message[0] != '\0');
    gc_free(dut->b, cache);
}

/* ---- one case ---- */

static void check_case(const att_case *c, size_t idx) {
    if (!gc_runs(c->dtype, 0)) return;
    const fs_plugin *p = NULL;
    fs_error err = {0};
    gc_check_rc(fs_plugin_registry_get(&g_gc.ref.reg, FS_PLUGIN_ATTENTION, c->plugin, &p, &err), &err, c->plugin);
    fs_config *cfg = plugin_config(p, c->keys);
    char what[200];
    snprintf(what, sizeof what, "%s case %zu (B %zu H %zu T %zu D %zu %s %s; %s)", c->plugin, idx, c->B, c->H, c->T,
             c->D, c->causal ? "causal" : "bidirectional", gc_dtname(c->dtype), c->keys);
    for (char *s = what; *s; s++) *s = *s == '\n' ? ' ' : *s;
    att_side dut, ref;
    open_side(&ref, &g_gc.ref, c, cfg);
    open_side(&dut, &g_gc.dut, c, cfg);
    att_io io;
    io_open(&io, c, idx);
    check_params(what, c, &dut, &ref, idx);
    if (!strcmp(c->plugin, "lsh")) lsh_separate(io.hq, c->B * c->H * c->T, c->D, &ref.params[0]);
    io.q = gc_put(io.hq, c->B * c->H * c->T * c->D, c->dtype);
    check_forward(what, c, &dut, &ref, &io);
    check_backward(what, c, &dut, &ref, &io);
    if (c->causal && decodes(&dut))
        check_decode(what, c, &dut, &ref, &io);
    else if (c->causal && decodes(&ref))
        check_decode_refused(what, c, &dut);
    io_close(&io);
    close_side(&dut);
    close_side(&ref);
    fs_config_destroy(cfg);
}

#define PLUGIN_TEST(name)                                               \
    static void test_##name(void **state) {                             \
        (void)state;                                                    \
        for (size_t i = 0; i < N_OF(att_cases); i++)                    \
            if (!strcmp(att_cases[i].plugin, #name)) check_case(&att_cases[i], i); \
    }

PLUGIN_TEST(dense)
PLUGIN_TEST(longformer)
PLUGIN_TEST(lsh)

int main(void) {
    if (!gc_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense),
        cmocka_unit_test(test_longformer),
        cmocka_unit_test(test_lsh),
    };
    return cmocka_run_group_tests(tests, gc_setup, gc_teardown);
}
