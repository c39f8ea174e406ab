/* test_longformer.c — the longformer attention plugin against an explicit
 * dense-mask computation done here in double (band, dilation, global rows
 * and columns, causal), forward and every gradient, including the global
 * projections through x and the registered parameters; finite differences;
 * equality with the dense plugin when the window covers the sequence;
 * decode against the forward; generation far past max_seq with a flat
 * cache; and the configuration errors. Sizes are odd on purpose: T is never
 * a multiple of the window or the block. */
#include <string.h>
#include <sys/resource.h>

#include "fastserve/attention.h"
#include "modes/modes.h"
#include "test_util.h"

/* What the reference needs to know about a configuration. */
enum { G_NONE, G_POS, G_TOK };
typedef struct spec {
    size_t w;
    size_t dil[8]; /* per head */
    int causal;
    int gmode;
    int32_t list[16]; /* positions or token ids */
    size_t n_list;
} spec;

/* One attention instance under test, with its inputs and gradients. */
typedef struct lfx {
    fs_session *s;
    const fs_attention_vtable *vt;
    void *self;
    size_t B, H, T, D, C;
    float *q, *k, *v, *out, *dout, *x;
    float *dq, *dk, *dv, *dx;
    int32_t *tokens;
    void *saved;
    float *wg, *bg, *dwg, *dbg; /* the instance's registered parameters, if any */
    size_t n_wg;
} lfx;

/* A session with one layer (`n_layer` if the INI names more) whose layer
 * `layer` is the instance under test; `keys` go under [attention] and may
 * open further sections. */
static lfx make_layer(const char *plugin, int causal, const char *keys, size_t B, size_t H, size_t T, size_t D,
                      size_t max_seq, size_t n_layer, size_t layer) {
    lfx a = {0};
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[model]\nn_layer = %zu\nn_head = %zu\nn_embd = %zu\nmax_seq = %zu\n"
             "[attention]\nplugin = %s\ncausal = %s\n%s",
             n_layer, H, H * D, max_seq, plugin, causal ? "true" : "false", keys ? keys : "");
    a.s = test_session(ini);
    a.vt = a.s->layers[layer].plugin->desc->vtable;
    a.self = a.s->layers[layer].self;
    a.B = B, a.H = H, a.T = T, a.D = D, a.C = H * D;
    size_t n = B * H * T * D;
    a.q = test_fvec(n), a.k = test_fvec(n), a.v = test_fvec(n), a.out = test_fvec(n), a.dout = test_fvec(n);
    a.dq = test_fvec(n), a.dk = test_fvec(n), a.dv = test_fvec(n);
    a.x = test_fvec(B * T * a.C), a.dx = test_fvec(B * T * a.C);
    test_fill(a.q, n, 1.0f, 31);
    test_fill(a.k, n, 1.0f, 32);
    test_fill(a.v, n, 1.0f, 33);
    test_fill(a.dout, n, 1.0f, 34);
    test_fill(a.x, B * T * a.C, 1.0f, 35);
    a.tokens = calloc(B * T, sizeof(int32_t));
    fs_rng r;
    fs_rng_seed(&r, 36);
    for (size_t i = 0; i < B * T; i++) a.tokens[i] = (int32_t)(fs_rng_float(&r) * 7.0f); /* ids 0..6 */
    a.saved = malloc(a.vt->saved_bytes(a.self, B, T));
    assert_non_null(a.saved);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "plugin.layer%zu.attention.", layer);
    const fs_param_block *pb = fs_model_block(a.s->model);
    for (size_t i = 0; i < pb->n_views; i++) {
        const fs_param_view *p = &pb->views[i];
        if (strncmp(p->name, prefix, strlen(prefix)) != 0) continue;
        if (strstr(p->name, "c_attn_global.weight"))
            a.wg = pb->params + p->offset, a.dwg = pb->grads + p->offset, a.n_wg = p->numel;
        if (strstr(p->name, "c_attn_global.bias")) a.bg = pb->params + p->offset, a.dbg = pb->grads + p->offset;
    }
    if (a.wg) { /* not a copy of anything: the test must tell them apart */
        test_fill(a.wg, a.n_wg, 0.3f, 37);
        test_fill(a.bg, 3 * a.C, 0.3f, 38);
    }
    return a;
}

static lfx make(int causal, const char *keys, size_t B, size_t H, size_t T, size_t D, size_t max_seq) {
    return make_layer("longformer", causal, keys, B, H, T, D, max_seq, 1, 0);
}

static void release(lfx *a) {
    free(a->q), free(a->k), free(a->v), free(a->out), free(a->dout), free(a->x);
    free(a->dq), free(a->dk), free(a->dv), free(a->dx), free(a->tokens), free(a->saved);
    fs_session_close(a->s);
}

static fs_attention_args args(lfx *a) {
    fs_attention_args x = test_attention_args(a->B, a->H, a->T, a->D, a->q, a->k, a->v, a->out, a->saved);
    test_attention_grads(&x, a->H, a->D, a->dout, a->dq, a->dk, a->dv);
    x.tokens = a->tokens;
    if (a->vt->flags & FS_ATTENTION_USES_INPUT) {
        x.x = fs_tensor_cpu_f32(a->x, 3, a->B, a->T, a->C, 0);
        x.dx = fs_tensor_cpu_f32(a->dx, 3, a->B, a->T, a->C, 0);
    }
    return x;
}

static void forward(lfx *a) {
    fs_attention_args x = args(a);
    fs_error err = {0};
    int rc = a->vt->forward(a->self, &x, &err);
    if (rc) fprintf(stderr, "forward: %s\n", err.message);
    assert_int_equal(rc, 0);
}

/* Forward then backward from a->dout, with every accumulated gradient
 * (dx, the parameters') zeroed first. */
static void forward_backward(lfx *a) {
    forward(a);
    memset(a->dx, 0, a->B * a->T * a->C * sizeof(float));
    if (a->dwg) memset(a->dwg, 0, a->n_wg * sizeof(float)), memset(a->dbg, 0, 3 * a->C * sizeof(float));
    fs_attention_args x = args(a);
    fs_error err = {0};
    int rc = a->vt->backward(a->self, &x, &err);
    if (rc) fprintf(stderr, "backward: %s\n", err.message);
    assert_int_equal(rc, 0);
}

/* ---- the reference: an explicit T x T mask, in double ---- */

static int is_global(const spec *sp, const lfx *a, size_t b, size_t t) {
    for (size_t i = 0; i < sp->n_list; i++) {
        if (sp->gmode == G_POS && (size_t)sp->list[i] == t) return 1;
        if (sp->gmode == G_TOK && sp->list[i] == a->tokens[b * a->T + t]) return 1;
    }
    return 0;
}

/* May local row i of head h see key j? */
static int local_mask(const spec *sp, const lfx *a, size_t b, size_t h, size_t i, size_t j) {
    long d = (long)sp->dil[h], diff = (long)i - (long)j, reach = (long)sp->w * d;
    int band = diff % d == 0 && (sp->causal ? diff >= 0 && diff <= reach : labs(diff) <= reach);
    int glob = is_global(sp, a, b, j) && (!sp->causal || j <= i);
    return band || glob;
}

typedef struct ref {
    double *out, *dq, *dk, *dv, *dx, *dwg, *dbg;
} ref;

static ref reference(const spec *sp, const lfx *a) {
    size_t B = a->B, H = a->H, T = a->T, D = a->D, C = a->C, n = B * H * T * D;
    ref r;
    r.out = calloc(n, sizeof(double)), r.dq = calloc(n, sizeof(double));
    r.dk = calloc(n, sizeof(double)), r.dv = calloc(n, sizeof(double));
    r.dx = calloc(B * T * C, sizeof(double)), r.dwg = calloc(3 * C * C, sizeof(double));
    r.dbg = calloc(3 * C, sizeof(double));
    double *g = calloc(B * T * 3 * C, sizeof(double)), *dg = calloc(B * T * 3 * C, sizeof(double));
    double *p = calloc(T, sizeof(double)), *dp = calloc(T, sizeof(double));
    /* the global projection of every token: [Qg | Kg | Vg] */
    for (size_t bt = 0; a->wg && bt < B * T; bt++)
        for (size_t o = 0; o < 3 * C; o++) {
            double s = a->bg[o];
            for (size_t c = 0; c < C; c++) s += (double)a->x[bt * C + c] * a->wg[c * 3 * C + o];
            g[bt * 3 * C + o] = s;
        }
    double scale = 1.0 / sqrt((double)D);
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t i = 0; i < T; i++) {
                size_t bh = b * H + h;
                int grow = is_global(sp, a, b, i);
                /* row i's query and the keys/values it reads, with their gradients */
#define QI(c) (grow ? g[((b * T + i) * 3 * C) + h * D + (c)] : (double)a->q[(bh * T + i) * D + (c)])
#define KJ(j, c) (grow ? g[((b * T + (j)) * 3 * C) + C + h * D + (c)] : (double)a->k[(bh * T + (j)) * D + (c)])
#define VJ(j, c) (grow ? g[((b * T + (j)) * 3 * C) + 2 * C + h * D + (c)] : (double)a->v[(bh * T + (j)) * D + (c)])
                double mx = -1e300, sum = 0;
                for (size_t j = 0; j < T; j++) {
                    int ok = grow ? (!sp->causal || j <= i) : local_mask(sp, a, b, h, i, j);
                    p[j] = -1e300;
                    if (!ok) continue;
                    double s = 0;
                    for (size_t c = 0; c < D; c++) s += QI(c) * KJ(j, c);
                    p[j] = s * scale;
                    mx = fmax(mx, p[j]);
                }
                for (size_t j = 0; j < T; j++) sum += p[j] = p[j] == -1e300 ? 0.0 : exp(p[j] - mx);
                const float *dor = a->dout + (bh * T + i) * D;
                double dot = 0;
                for (size_t j = 0; j < T; j++) {
                    p[j] /= sum;
                    dp[j] = 0;
                    for (size_t c = 0; c < D; c++) {
                        r.out[(bh * T + i) * D + c] += p[j] * VJ(j, c);
                        dp[j] += dor[c] * VJ(j, c);
                    }
                    dot += p[j] * dp[j];
                }
                for (size_t j = 0; j < T; j++) {
                    double ds = p[j] * (dp[j] - dot) * scale;
                    for (size_t c = 0; c < D; c++) {
                        if (grow) {
                            dg[(b * T + i) * 3 * C + h * D + c] += ds * KJ(j, c);
                            dg[(b * T + j) * 3 * C + C + h * D + c] += ds * QI(c);
                            dg[(b * T + j) * 3 * C + 2 * C + h * D + c] += p[j] * dor[c];
                        } else {
                            r.dq[(bh * T + i) * D + c] += ds * KJ(j, c);
                            r.dk[(bh * T + j) * D + c] += ds * QI(c);
                            r.dv[(bh * T + j) * D + c] += p[j] * dor[c];
                        }
                    }
                }
#undef QI
#undef KJ
#undef VJ
            }
    for (size_t bt = 0; a->wg && bt < B * T; bt++)
        for (size_t o = 0; o < 3 * C; o++) {
            double d = dg[bt * 3 * C + o];
            r.dbg[o] += d;
            for (size_t c = 0; c < C; c++) {
                r.dwg[c * 3 * C + o] += (double)a->x[bt * C + c] * d;
                r.dx[bt * C + c] += d * a->wg[c * 3 * C + o];
            }
        }
    free(g), free(dg), free(p), free(dp);
    return r;
}

static void free_ref(ref *r) {
    free(r->out), free(r->dq), free(r->dk), free(r->dv), free(r->dx), free(r->dwg), free(r->dbg);
}

static void close_d(const char *what, const float *got, const double *want, size_t n) {
    float *w = test_fvec(n);
    for (size_t i = 0; i < n; i++) w[i] = (float)want[i];
    test_close(what, got, w, n, 2e-5, 2e-4);
    free(w);
}

static void check_reference(int causal, const char *keys, const spec *sp, size_t B, size_t H, size_t T, size_t D) {
    lfx a = make(causal, keys, B, H, T, D, T + 4);
    forward_backward(&a);
    ref r = reference(sp, &a);
    size_t n = B * H * T * D;
    close_d("out", a.out, r.out, n);
    close_d("dq", a.dq, r.dq, n);
    close_d("dk", a.dk, r.dk, n);
    close_d("dv", a.dv, r.dv, n);
    if (a.wg) {
        close_d("dx", a.dx, r.dx, B * T * a.C);
        close_d("dWg", a.dwg, r.dwg, a.n_wg);
        close_d("dbg", a.dbg, r.dbg, 3 * a.C);
    }
    free_ref(&r);
    release(&a);
}

static void test_band_causal(void **state) {
    (void)state;
    spec sp = {.w = 3, .dil = {1, 1, 1}, .causal = 1};
    check_reference(1, "window = 3\nblock = 4\n", &sp, 2, 3, 37, 5);
}

static void test_band_bidirectional(void **state) {
    (void)state;
    spec sp = {.w = 3, .dil = {1, 1, 1}, .causal = 0};
    check_reference(0, "window = 3\nblock = 4\n", &sp, 2, 3, 37, 5);
}

static void test_dilated_positions_causal(void **state) {
    (void)state;
    spec sp = {.w = 2, .dil = {1, 2, 3}, .causal = 1, .gmode = G_POS, .list = {0, 5, 17}, .n_list = 3};
    check_reference(1, "window = 2\ndilation = 1, 2, 3\nglobal = 17, 0, 5\nblock = 5\n", &sp, 2, 3, 31, 5);
}

static void test_dilated_first_bidirectional(void **state) {
    (void)state;
    spec sp = {.w = 3, .dil = {2, 2}, .causal = 0, .gmode = G_POS, .list = {0, 1}, .n_list = 2};
    check_reference(0, "window = 3\ndilation = 2\nglobal = first:2\nblock = 3\n", &sp, 2, 2, 29, 5);
}

static void test_token_globals_causal(void **state) {
    (void)state;
    spec sp = {.w = 2, .dil = {1, 3, 2}, .causal = 1, .gmode = G_TOK, .list = {3}, .n_list = 1};
    check_reference(1, "window = 2\ndilation = 1,3,2\nglobal = token:3\nblock = 7\n", &sp, 2, 3, 33, 4);
}

static void test_token_globals_bidirectional(void **state) {
    (void)state;
    spec sp = {.w = 4, .dil = {3, 1}, .causal = 0, .gmode = G_TOK, .list = {2, 5}, .n_list = 2};
    check_reference(0, "window = 4\ndilation = 3,1\nglobal = token:2,5\n", &sp, 3, 2, 27, 5);
}

/* A window wider than the sequence, blocks of 1 row and of more than T. */
static void test_extreme_blocks(void **state) {
    (void)state;
    spec sp = {.w = 50, .dil = {1, 2}, .causal = 1, .gmode = G_POS, .list = {6}, .n_list = 1};
    check_reference(1, "window = 50\ndilation = 1,2\nglobal = 6\nblock = 1\n", &sp, 1, 2, 19, 5);
    sp.causal = 0;
    check_reference(0, "window = 50\ndilation = 1,2\nglobal = 6\nblock = 100\n", &sp, 1, 2, 19, 5);
}

/* Heads run in parallel, each thread with its own work memory. */
static void test_threads(void **state) {
    (void)state;
    fs_threads_set(2);
    spec sp = {.w = 3, .dil = {1, 2, 1}, .causal = 1, .gmode = G_TOK, .list = {4}, .n_list = 1};
    check_reference(1, "window = 3\ndilation = 1,2,1\nglobal = token:4\nblock = 6\n", &sp, 3, 3, 41, 4);
    sp.causal = 0;
    check_reference(0, "window = 3\ndilation = 1,2,1\nglobal = token:4\nblock = 6\n", &sp, 3, 3, 41, 4);
    fs_threads_set(1);
}

/* ---- finite differences ---- */

static double loss(lfx *a) {
    forward(a);
    double s = 0;
    for (size_t i = 0; i < a->B * a->H * a->T * a->D; i++) s += (double)a->out[i] * a->dout[i];
    return s;
}

static void fd_check(const char *what, lfx *a, float *x, const float *g, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float keep = x[i];
        x[i] = keep + 1e-2f;
        double lp = loss(a);
        x[i] = keep - 1e-2f;
        double lm = loss(a);
        x[i] = keep;
        double fd = (lp - lm) / 2e-2;
        if (fabs(fd - g[i]) > 3e-3 * fmax(1.0, fabs(fd))) {
            fprintf(stderr, "%s[%zu]: analytic %.7g, finite difference %.7g\n", what, i, g[i], fd);
            fail();
        }
    }
}

static void check_fd(int causal, const char *keys) {
    lfx a = make(causal, keys, 2, 2, 13, 4, 16);
    forward_backward(&a);
    size_t n = a.B * a.H * a.T * a.D;
    float *dq = test_fvec(n), *dk = test_fvec(n), *dv = test_fvec(n), *dx = test_fvec(a.B * a.T * a.C);
    float *dw = test_fvec(a.n_wg), *db = test_fvec(3 * a.C);
    memcpy(dq, a.dq, n * 4), memcpy(dk, a.dk, n * 4), memcpy(dv, a.dv, n * 4);
    memcpy(dx, a.dx, a.B * a.T * a.C * 4);
    assert_non_null(a.wg);
    memcpy(dw, a.dwg, a.n_wg * 4), memcpy(db, a.dbg, 3 * a.C * 4);
    fd_check("dq", &a, a.q, dq, n);
    fd_check("dk", &a, a.k, dk, n);
    fd_check("dv", &a, a.v, dv, n);
    fd_check("dx", &a, a.x, dx, a.B * a.T * a.C);
    fd_check("dWg", &a, a.wg, dw, a.n_wg);
    fd_check("dbg", &a, a.bg, db, 3 * a.C);
    free(dq), free(dk), free(dv), free(dx), free(dw), free(db);
    release(&a);
}

static void test_fd_causal(void **state) {
    (void)state;
    check_fd(1, "window = 2\ndilation = 1,2\nglobal = 0, 7\nblock = 3\n");
}

static void test_fd_bidirectional(void **state) {
    (void)state;
    check_fd(0, "window = 2\ndilation = 2,1\nglobal = first:2\nblock = 4\n");
}

static void test_fd_token_globals(void **state) {
    (void)state;
    check_fd(1, "window = 3\nglobal = token:1,4\nblock = 5\n");
}

/* ---- the dense plugin, when the window covers the sequence ---- */

static void check_equals_dense(int causal) {
    size_t B = 2, H = 3, T = 23, D = 5, n = B * H * T * D;
    lfx d = make_layer("dense", causal, "", B, H, T, D, 32, 1, 0);
    lfx l = make(causal, "window = 40\nblock = 6\n", B, H, T, D, 32);
    forward_backward(&d);
    forward_backward(&l);
    test_close("out vs dense", l.out, d.out, n, 1e-5, 1e-4);
    test_close("dq vs dense", l.dq, d.dq, n, 1e-5, 1e-4);
    test_close("dk vs dense", l.dk, d.dk, n, 1e-5, 1e-4);
    test_close("dv vs dense", l.dv, d.dv, n, 1e-5, 1e-4);
    release(&d);
    release(&l);
}

static void test_equals_dense_causal(void **state) { (void)state; check_equals_dense(1); }
static void test_equals_dense_bidirectional(void **state) { (void)state; check_equals_dense(0); }

/* A whole model: with the window covering max_seq and the global
 * projections initialised from c_attn, global tokens change nothing, so
 * the logits equal dense's, and every gradient too once the global
 * projection's gradient is added back to c_attn's. */
static const char *model_ini =
    "[model]\nvocab_size = 32\nn_layer = 2\nn_head = 2\nn_embd = 8\nmax_seq = 16\n[attention]\nplugin = %s\n%s";

static fs_session *model_session(const char *plugin, const char *keys) {
    char ini[512];
    snprintf(ini, sizeof ini, model_ini, plugin, keys);
    fs_session *s = test_session(ini);
    fs_model_init_weights(s->model, 7);
    fs_error err = {0};
    assert_int_equal(fs_model_init_plugin_params(s->model, &err), 0);
    return s;
}

static void test_model_equals_dense(void **state) {
    (void)state;
    fs_session *ds = model_session("dense", ""), *ls = model_session("longformer", "window = 16\nglobal = 0, 9\n");
    fs_model *dm = ds->model, *lm = ls->model;
    int32_t in[2 * 13], tg[2 * 13];
    for (size_t i = 0; i < 26; i++) in[i] = (int32_t)((i * 7 + 3) % 32), tg[i] = (int32_t)((i * 5 + 1) % 32);
    fs_error err = {0};
    fs_model_zero_grad(dm);
    fs_model_zero_grad(lm); /* the plugins' gradients too: they are in the model's block */
    assert_int_equal(fs_model_forward(dm, in, 2, 13, &err), 0);
    assert_int_equal(fs_model_forward(lm, in, 2, 13, &err), 0);
    test_close("logits vs dense", fs_model_logits(lm), fs_model_logits(dm), 2 * 13 * 32, 1e-5, 1e-4);
    double l1 = fs_model_loss(dm, tg, 1.0f), l2 = fs_model_loss(lm, tg, 1.0f);
    assert_true(fabs(l1 - l2) < 1e-5);
    assert_int_equal(fs_model_backward(dm, NULL, &err), 0);
    assert_int_equal(fs_model_backward(lm, NULL, &err), 0);
    /* the global projections' gradients add to c_attn's: with every token
     * global, longformer is dense attention through c_attn_global */
    const fs_param_block *lb = fs_model_block(lm), *db = fs_model_block(dm);
    assert_int_equal(lb->n_views, db->n_views + 4); /* weight and bias of both layers, after the model's */
    for (size_t l = 0; l < 2; l++) {
        char name[96];
        const fs_param_view *pw = &lb->views[db->n_views + 2 * l], *pbias = &lb->views[db->n_views + 2 * l + 1];
        snprintf(name, sizeof name, "transformer.h.%zu.attn.c_attn.weight", l);
        const fs_param_view *w = fs_model_find(lm, name);
        snprintf(name, sizeof name, "transformer.h.%zu.attn.c_attn.bias", l);
        const fs_param_view *b = fs_model_find(lm, name);
        assert_int_equal(pw->numel, w->numel);
        for (size_t i = 0; i < w->numel; i++) lb->grads[w->offset + i] += lb->grads[pw->offset + i];
        for (size_t i = 0; i < b->numel; i++) lb->grads[b->offset + i] += lb->grads[pbias->offset + i];
    }
    test_close("gradients vs dense", lb->grads, db->grads, db->n, 1e-5, 1e-3);
    fs_session_close(ds);
    fs_session_close(ls);
}

/* ---- configuration through [layer.N] ---- */

static void test_per_layer_window(void **state) {
    (void)state;
    const char *keys = "window = 2\n[layer.1]\nwindow = 5\n[layer.2]\ndilation = 1,3\nglobal = first:1\n";
    spec sp0 = {.w = 2, .dil = {1, 1}, .causal = 1};
    spec sp1 = {.w = 5, .dil = {1, 1}, .causal = 1};
    spec sp2 = {.w = 2, .dil = {1, 3}, .causal = 1, .gmode = G_POS, .list = {0}, .n_list = 1};
    const spec *sps[] = {&sp0, &sp1, &sp2};
    for (size_t l = 0; l < 3; l++) {
        lfx a = make_layer("longformer", 1, keys, 1, 2, 17, 5, 20, 3, l);
        forward_backward(&a);
        ref r = reference(sps[l], &a);
        close_d("per-layer out", a.out, r.out, a.B * a.H * a.T * a.D);
        free_ref(&r);
        release(&a);
    }
}

/* ---- decode ---- */

static void decode_args_at(lfx *a, size_t t, float *q, float *k, float *v, float *x, float *o,
                           fs_attention_decode_args *d) {
    size_t H = a->H, D = a->D, T = a->T, C = a->C;
    for (size_t b = 0; b < a->B; b++) {
        for (size_t h = 0; h < H; h++) {
            size_t src = ((b * H + h) * T + t) * D, dst = (b * H + h) * D;
            memcpy(q + dst, a->q + src, D * 4);
            memcpy(k + dst, a->k + src, D * 4);
            memcpy(v + dst, a->v + src, D * 4);
        }
        memcpy(x + b * C, a->x + (b * T + t) * C, C * 4);
    }
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->B = a->B;
    d->pos = t;
    d->q = fs_tensor_cpu_f32(q, 4, a->B, H, 1, D);
    d->k = fs_tensor_cpu_f32(k, 4, a->B, H, 1, D);
    d->v = fs_tensor_cpu_f32(v, 4, a->B, H, 1, D);
    d->out = fs_tensor_cpu_f32(o, 4, a->B, H, 1, D);
    d->x = fs_tensor_cpu_f32(x, 3, a->B, 1, C, 0);
    d->token = a->B == 1 ? a->tokens[t] : -1;
}

/* Decodes the whole sequence; rows t with want_row(t) must equal the
 * forward's. */
static void check_decode(lfx *a, int (*want_row)(const lfx *, size_t)) {
    forward(a);
    size_t H = a->H, D = a->D, T = a->T, B = a->B;
    fs_error err = {0};
    size_t bytes = a->vt->cache_bytes(a->self, B, 0);
    void *cache = malloc(bytes);
    assert_int_equal(a->vt->cache_reset(a->self, cache, B, 0, &err), 0);
    float *q = test_fvec(B * H * D), *k = test_fvec(B * H * D), *v = test_fvec(B * H * D), *o = test_fvec(B * H * D);
    float *x = test_fvec(B * a->C);
    for (size_t t = 0; t < T; t++) {
        fs_attention_decode_args d;
        decode_args_at(a, t, q, k, v, x, o, &d);
        int rc = a->vt->decode(a->self, cache, &d, &err);
        if (rc) fprintf(stderr, "decode: %s\n", err.message);
        assert_int_equal(rc, 0);
        if (want_row && !want_row(a, t)) continue;
        for (size_t bh = 0; bh < B * H; bh++) {
            char what[64];
            snprintf(what, sizeof what, "decode row %zu (b*H+h = %zu)", t, bh);
            test_close(what, o + bh * D, a->out + (bh * T + t) * D, D, 1e-5, 1e-4);
        }
    }
    free(q), free(k), free(v), free(o), free(x), free(cache);
}

static void test_decode_positions(void **state) {
    (void)state;
    /* ring of window * max(dilation) + 1 = 7 slots, wrapped several times */
    lfx a = make(1, "window = 2\ndilation = 1,3\nglobal = 0, 4, 11\n", 2, 2, 29, 4, 32);
    check_decode(&a, NULL);
    release(&a);
    lfx b = make(1, "window = 3\ndilation = 2,1,3\n", 3, 3, 23, 4, 32);
    check_decode(&b, NULL);
    release(&b);
}

/* token mode: exact everywhere while the ring holds the whole history, and
 * beyond it for local rows, as long as every occurrence is kept */
static int local_rows_only(const lfx *a, size_t t) { return a->tokens[t] != 1; }

static void test_decode_tokens(void **state) {
    (void)state;
    lfx a = make(1, "window = 4\ndilation = 1,2\nglobal = token:1\n", 1, 2, 9, 4, 32); /* T = ring = 9 */
    check_decode(&a, NULL);
    release(&a);
    lfx b = make(1, "window = 2\ndilation = 2,1\nglobal = token:1\nglobal_cache = 30\n", 1, 2, 30, 4, 32);
    check_decode(&b, local_rows_only);
    release(&b);
}

/* ---- generation past max_seq ---- */

static long max_rss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* The model decodes what it computes in a forward, row for row. */
static void test_model_decode_equals_forward(void **state) {
    (void)state;
    fs_session *s = model_session("longformer", "window = 3\ndilation = 1,2\nglobal = first:2\n[layer.1]\nwindow = 5\n");
    const fs_param_block *pb = fs_model_block(s->model);
    for (size_t i = 0, k = 0; i < pb->n_views; i++)
        if (pb->views[i].plugin) test_fill(pb->params + pb->views[i].offset, pb->views[i].numel, 0.05f, 40 + k++);
    fs_model *m = s->model;
    int32_t in[16];
    for (size_t i = 0; i < 16; i++) in[i] = (int32_t)((i * 11 + 5) % 32);
    fs_error err = {0};
    assert_int_equal(fs_model_forward(m, in, 1, 16, &err), 0);
    float *want = test_fvec(16 * 32), logits[32];
    memcpy(want, fs_model_logits(m), 16 * 32 * sizeof(float));
    fs_seq *seq = test_seq(m, 1, 0);
    for (size_t t = 0; t < 16; t++) {
        assert_int_equal(fs_seq_decode(seq, &in[t], logits, &err), 0);
        test_close("decoded logits", logits, want + t * 32, 32, 1e-5, 1e-4);
    }
    fs_seq_destroy(seq);
    free(want);
    fs_session_close(s);
}

static void check_generate_far(const char *keys) {
    fs_session *s = model_session("longformer", keys);
    fs_model *m = s->model;
    size_t max_seq = 16, n = 4 * max_seq;
    int32_t prompt[3] = {1, 2, 3}, *out = calloc(n, sizeof(int32_t));
    fs_seq_config sc = {.B = 1, .sampler = {1.0, 0, 1.0, 5}};
    fs_seq *seq = NULL;
    size_t n_out = 0;
    double secs = 0;
    int stopped = 1;
    fs_error err = {0};
    assert_int_equal(fs_seq_create(&seq, m, &sc, &err), 0);
    int rc = fs_generate(seq, prompt, 3, n, -1, out, &n_out, &secs, &stopped, &err);
    if (rc) fprintf(stderr, "generate: %s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(n_out, n);
    assert_int_equal(stopped, 0);
    for (size_t i = 0; i < n; i++) assert_true(out[i] >= 0 && out[i] < 32);
    /* the cache's size does not depend on the length asked for: the decode
     * cache's, and the sequence's blocks (what paged_retain keeps) */
    size_t bytes = fs_seq_cache_bytes(seq);
    for (size_t l = 0; l < 2; l++) {
        void *self;
        const fs_attention_vtable *vt = fs_model_attention(m, l, &self);
        assert_true(vt->flags & FS_ATTENTION_BOUNDED_CACHE);
        size_t c0 = vt->cache_bytes(self, 1, 0);
        assert_int_equal(vt->cache_bytes(self, 1, max_seq), c0);
        assert_int_equal(vt->cache_bytes(self, 1, 1u << 20), c0);
    }
    assert_true(bytes > 0);
    /* and memory stays flat over many more tokens (positions 4000+) */
    float logits[32];
    /* measured from after the first steps: the thread pool (and, under
     * ASan, its shadow stacks) may be set up by the first parallel region */
    long before = 0;
    for (size_t pos = 3 + n - 1; pos < 4096; pos++) {
        if (pos == 3 + n + 63) before = max_rss_kb();
        int32_t tok = (int32_t)(pos % 32);
        assert_int_equal(fs_seq_pos(seq), pos);
        rc = fs_seq_decode(seq, &tok, logits, &err);
        if (rc) fprintf(stderr, "decode at %zu: %s\n", pos, err.message);
        assert_int_equal(rc, 0);
        for (size_t i = 0; i < 32; i++) assert_true(isfinite(logits[i]));
    }
    assert_int_equal(fs_seq_cache_bytes(seq), bytes);
    fs_seq_destroy(seq);
#ifndef __SANITIZE_ADDRESS__ /* ASan's quarantine keeps freed blocks resident: RSS says nothing there */
    assert_true(max_rss_kb() - before < 1024);
#else
    (void)before;
#endif
    free(out);
    fs_session_close(s);
}

static void test_generate_far_past_max_seq(void **state) {
    (void)state;
    check_generate_far("window = 3\ndilation = 1,2\nglobal = first:2\n");
    check_generate_far("window = 4\nglobal = token:1,2\nglobal_cache = 3\n");
    check_generate_far("window = 2\n");
}

/* Dense keeps its limit: its cache is not bounded. */
static void test_dense_still_stops_at_max_seq(void **state) {
    (void)state;
    fs_session *s = model_session("dense", "");
    fs_error err = {0};
    float logits[32];
    int32_t tok = 1;
    fs_seq *seq = test_seq(s->model, 1, 16);
    for (size_t t = 0; t < 16; t++) assert_int_equal(fs_seq_decode(seq, &tok, logits, &err), 0);
    assert_int_equal(fs_seq_decode(seq, &tok, logits, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "max_seq"));
    fs_seq_destroy(seq);
    fs_session_close(s);
}

/* ---- configuration errors ---- */

static void expect_error(const char *keys, const char *a, const char *b) {
    char ini[512];
    snprintf(ini, sizeof ini,
             "[model]\nn_layer = 2\nn_head = 2\nn_embd = 8\nmax_seq = 256\n[attention]\nplugin = longformer\n%s", keys);
    test_session_error(ini, a, b);
}

static void test_bad_config(void **state) {
    (void)state;
    expect_error("window = 0\n", "[attention] window = 0", NULL);
    expect_error("window = -3\n", "[attention] window = -3", NULL);
    expect_error("dilation = 0\n", "[attention] dilation = 0", NULL);
    expect_error("dilation = 1, -2\n", "[attention] dilation = 1, -2", NULL);
    expect_error("dilation = 1,2,3\n", "[attention] dilation = 1,2,3", "n_head = 2");
    expect_error("[layer.1]\ndilation = 1,2,3\n", "[layer.1] dilation = 1,2,3", "n_head = 2");
    expect_error("global = 0, 256\n", "[attention] global = 0, 256", "max_seq = 256");
    expect_error("global = first:300\n", "[attention] global = first:300", "max_seq = 256");
    expect_error("global = somewhere\n", "[attention] global = somewhere", "first:N");
    expect_error("global = token:x\n", "[attention] global = token:x", "token ids");
    expect_error("[layer.0]\nwindow = 0\n", "[layer.0] window = 0", NULL);
}

/* Bidirectional layers cannot generate; the error says why. */
static void test_bidirectional_decode_refused(void **state) {
    (void)state;
    lfx a = make(0, "window = 2\n", 1, 2, 5, 4, 8);
    fs_error err = {0};
    void *cache = malloc(a.vt->cache_bytes(a.self, 1, 0));
    assert_int_equal(a.vt->cache_reset(a.self, cache, 1, 0, &err), FS_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "causal"));
    free(cache);
    release(&a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_band_causal),
        cmocka_unit_test(test_band_bidirectional),
        cmocka_unit_test(test_dilated_positions_causal),
        cmocka_unit_test(test_dilated_first_bidirectional),
        cmocka_unit_test(test_token_globals_causal),
        cmocka_unit_test(test_token_globals_bidirectional),
        cmocka_unit_test(test_extreme_blocks),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_fd_causal),
        cmocka_unit_test(test_fd_bidirectional),
        cmocka_unit_test(test_fd_token_globals),
        cmocka_unit_test(test_equals_dense_causal),
        cmocka_unit_test(test_equals_dense_bidirectional),
        cmocka_unit_test(test_model_equals_dense),
        cmocka_unit_test(test_per_layer_window),
        cmocka_unit_test(test_decode_positions),
        cmocka_unit_test(test_decode_tokens),
        cmocka_unit_test(test_model_decode_equals_forward),
        cmocka_unit_test(test_generate_far_past_max_seq),
        cmocka_unit_test(test_dense_still_stops_at_max_seq),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_bidirectional_decode_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
