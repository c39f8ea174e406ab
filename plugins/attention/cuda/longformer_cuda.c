/* longformer_cuda.c — longformer attention on a CUDA device: the saved
 * state's bookkeeping, the global projection's matmuls (the host's sgemm on
 * this device) and the kernels of longformer_kernels.cu.
 *
 * The saved state has the CPU's layout (lf_saved_layout) in device memory.
 * Which positions are global is decided on the host from the configuration
 * and the token ids (lf_find_globals), as on the CPU, and copied in: the
 * kernels read it there, the host keeps its own copy for the loops over
 * sequences. f32 only on the device (the global projection's parameters
 * are the model's f32 tensors); generation stays on the CPU. */
#include <stdlib.h>
#include <string.h>

#include "../longformer.h"
#include "attention_cuda.h"
#include "fastserve/backend.h"

struct lf_cuda {
    int32_t *dil;            /* (H) on the device */
    int32_t *jspan;          /* (jspan_n) on the device */
    size_t jspan_n;
    float *work;             /* device work memory, grow-only */
    size_t work_n;
    void *host;              /* host staging for the globals */
    size_t host_n;
};

static int fail(const lf_plugin *lf, fs_error *err, int e, const char *what) {
    if (!e) return FS_OK;
    return lf->host->error_set(err, FS_ERR_RUNTIME, "longformer attention: %s on cuda:%d: %s", what,
                               (int)lf->cfg.device.index, fs_att_cuda_error(e));
}

static void *stream_of(const lf_plugin *lf) { return lf->host->device_stream(lf->cfg.device); }

int lf_cuda_create(lf_plugin *lf, fs_error *err) {
    const fs_host_api *host = lf->host;
    if (!FS_HAS_MEMBER(host, host->struct_size, fs_host_api, device_stream))
        return host->error_set(err, FS_ERR_ABI, "longformer attention: CUDA needs a host of ABI 1.3 (device_stream)");
    if (lf->cfg.head_dim > 128)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "longformer attention: head width %zu > 128 on CUDA",
                               lf->cfg.head_dim);
    if (lf->cfg.device.index < 0 || lf->cfg.device.index >= fs_att_cuda_device_count())
        return host->error_set(err, FS_ERR_NOT_FOUND, "longformer attention: no CUDA device cuda:%d",
                               (int)lf->cfg.device.index);
    struct lf_cuda *c = calloc(1, sizeof *c);
    if (!c) return host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory");
    lf->cuda = c;
    size_t H = lf->cfg.n_head;
    int32_t *dil = malloc(H * sizeof *dil);
    c->dil = host->alloc(lf->cfg.device, H * sizeof(int32_t));
    if (!dil || !c->dil) {
        free(dil);
        return host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory");
    }
    for (size_t h = 0; h < H; h++) dil[h] = (int32_t)lf->dil[h];
    int rc = fail(lf, err, fs_att_cuda_set_device(lf->cfg.device.index), "cudaSetDevice");
    if (!rc) rc = fail(lf, err, fs_att_cuda_memcpy(stream_of(lf), c->dil, dil, H * sizeof *dil, FS_COPY_HOST_TO_DEVICE),
                       "dilations");
    free(dil);
    return rc;
}

void lf_cuda_destroy(lf_plugin *lf) {
    struct lf_cuda *c = lf->cuda;
    if (!c) return;
    lf->host->free(lf->cfg.device, c->dil);
    lf->host->free(lf->cfg.device, c->jspan);
    lf->host->free(lf->cfg.device, c->work);
    free(c->host);
    free(c);
    lf->cuda = NULL;
}

/* Global tokens start as copies of the local projection, on the device. */
int lf_cuda_init_params(lf_plugin *lf, const fs_tensor *w, const fs_tensor *b, fs_error *err) {
    size_t C = lf->cfg.n_embd;
    void *s = stream_of(lf);
    int rc = fail(lf, err, fs_att_cuda_set_device(lf->cfg.device.index), "cudaSetDevice");
    if (!rc) rc = fail(lf, err, fs_att_cuda_memcpy(s, lf->wg, w->data, C * 3 * C * sizeof(float), FS_COPY_DEVICE_TO_DEVICE),
                       "init_params");
    if (!rc) rc = fail(lf, err, fs_att_cuda_memcpy(s, lf->bg, b->data, 3 * C * sizeof(float), FS_COPY_DEVICE_TO_DEVICE),
                       "init_params");
    return rc;
}

static int check(const lf_plugin *lf, const fs_attention_args *a, int backward, fs_error *err) {
    const fs_tensor *t[] = {&a->q, &a->k, &a->v, &a->out, &a->x, &a->dout, &a->dq, &a->dk, &a->dv, &a->dx};
    for (size_t i = 0; i < (backward ? 10u : 5u); i++)
        if (t[i]->data && (t[i]->device.type != FS_DEVICE_CUDA || t[i]->device.index != lf->cfg.device.index ||
                           t[i]->dtype != FS_DTYPE_F32))
            return lf->host->error_set(err, FS_ERR_UNSUPPORTED,
                                       "longformer attention: on CUDA it takes f32 tensors on cuda:%d (bf16 "
                                       "activations: use dense attention)",
                                       (int)lf->cfg.device.index);
    if (a->T == 0 || a->T > lf->cfg.max_seq)
        return lf->host->error_set(err, FS_ERR_INVALID, "longformer attention: T = %zu outside 1..max_seq = %zu", a->T,
                                   lf->cfg.max_seq);
    if (lf->gmode != LF_GLOBAL_NONE && (!a->x.data || (backward && !a->dx.data)))
        return lf->host->error_set(err, FS_ERR_INVALID, "longformer attention: global tokens need the layer input x");
    if (lf->gmode == LF_GLOBAL_TOKENS && !a->tokens)
        return lf->host->error_set(err, FS_ERR_INVALID, "longformer attention: global = token:... needs the token ids");
    return fail(lf, err, fs_att_cuda_set_device(lf->cfg.device.index), "cudaSetDevice");
}

/* Grow-only device floats and host bytes. */
static float *work(lf_plugin *lf, size_t n) {
    struct lf_cuda *c = lf->cuda;
    if (n <= c->work_n) return c->work;
    lf->host->free(lf->cfg.device, c->work);
    c->work = lf->host->alloc(lf->cfg.device, n * sizeof(float));
    c->work_n = c->work ? n : 0;
    return c->work;
}

/* The globals of this batch: decided on the host (st points at host
 * staging), copied into the saved state and the spans; the kernels' view
 * of it in `ka`. Returns the most globals of any sequence via *any. */
static int globals(lf_plugin *lf, const fs_attention_args *a, const lf_saved_layout *l, lf_state *st,
                   fs_lf_cuda_args *ka, fs_error *err) {
    struct lf_cuda *c = lf->cuda;
    size_t B = a->B, T = a->T, n = l->gflag + B * T - l->gcount; /* gcount, glist, gflag: one span of bytes */
    if (c->host_n < n + B * sizeof(int32_t)) {
        void *h = realloc(c->host, n + B * sizeof(int32_t));
        if (!h) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory");
        c->host = h, c->host_n = n + B * sizeof(int32_t);
    }
    if (c->jspan_n < B) {
        lf->host->free(lf->cfg.device, c->jspan);
        c->jspan = lf->host->alloc(lf->cfg.device, B * sizeof(int32_t));
        c->jspan_n = c->jspan ? B : 0;
        if (!c->jspan) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of device memory");
    }
    char *h = c->host, *saved = a->saved;
    memset(st, 0, sizeof *st);
    st->B = B, st->T = T, st->gmax = l->gmax, st->jmax = l->jmax;
    st->gcount = (int32_t *)h, st->glist = (int32_t *)(h + (l->glist - l->gcount)), st->gflag = (uint8_t *)(h + (l->gflag - l->gcount));
    lf_find_globals(lf, a, st);
    int32_t *span = (int32_t *)(h + n);
    for (size_t b = 0; b < B; b++) span[b] = (int32_t)lf_global_span(lf, st, b);
    void *s = stream_of(lf);
    int rc = fail(lf, err, fs_att_cuda_memcpy(s, saved + l->gcount, h, n, FS_COPY_HOST_TO_DEVICE), "globals");
    if (!rc) rc = fail(lf, err, fs_att_cuda_memcpy(s, c->jspan, span, B * sizeof(int32_t), FS_COPY_HOST_TO_DEVICE), "globals");
    /* the host reads its own copy from here on: the kernels read the device's */
    ka->gcount = (const int32_t *)(saved + l->gcount), ka->glist = (const int32_t *)(saved + l->glist);
    ka->gflag = (const uint8_t *)(saved + l->gflag), ka->jspan = c->jspan;
    return rc;
}

static fs_lf_cuda_args kernel_args(const lf_plugin *lf, const fs_attention_args *a, const lf_saved_layout *l) {
    fs_lf_cuda_args k;
    memset(&k, 0, sizeof k);
    char *saved = a->saved;
    k.q = a->q.data, k.k = a->k.data, k.v = a->v.data, k.dout = a->dout.data;
    k.out = a->out.data, k.dq = a->dq.data, k.dk = a->dk.data, k.dv = a->dv.data;
    k.lse = (float *)(saved + l->lse), k.glse = (float *)(saved + l->glse);
    k.kvg = (float *)(saved + l->kvg);
    k.dil = lf->cuda->dil;
    k.B = a->B, k.H = lf->cfg.n_head, k.T = a->T, k.D = lf->cfg.head_dim;
    k.gmax = l->gmax, k.jmax = l->jmax, k.window = lf->window, k.dmax = lf->dmax;
    k.scale = lf->scale, k.causal = lf->cfg.causal, k.dtype = FS_DTYPE_F32;
    return k;
}

/* Xg = x[globals] and Qg = Xg Wq_g + bq_g of every sequence with globals;
 * with `kv` also its keys and values [Kg | Vg] = x[0, J) W{k,v}_g + b into
 * the saved state. */
static int project(lf_plugin *lf, const fs_attention_args *a, const lf_state *st, const fs_lf_cuda_args *k, float *xg,
                   float *qg, int kv, fs_error *err) {
    size_t C = lf->cfg.n_embd, T = a->T;
    fs_device dev = lf->cfg.device;
    void *s = stream_of(lf);
    int rc = FS_OK;
    for (size_t b = 0; b < a->B && !rc; b++) {
        size_t g = (size_t)st->gcount[b], J = lf_global_span(lf, st, b);
        if (!g) continue;
        const float *xb = (const float *)a->x.data + b * T * C;
        float *xgb = xg + b * st->gmax * C, *qgb = qg + b * st->gmax * C, *kvg = k->kvg + b * st->jmax * 2 * C;
        rc = fail(lf, err, fs_att_gather_rows(s, xgb, xb, k->glist + b * st->gmax, g, C), "global rows");
        if (!rc && lf->host->sgemm(dev, 0, 0, g, C, C, 1.0f, xgb, C, lf->wg, 3 * C, 0.0f, qgb, C))
            rc = lf->host->error_set(err, FS_ERR_RUNTIME, "longformer attention: the host's sgemm failed on cuda");
        if (!rc) rc = fail(lf, err, fs_att_add_bias(s, qgb, lf->bg, g, C, C), "global rows");
        if (!rc && kv && lf->host->sgemm(dev, 0, 0, J, 2 * C, C, 1.0f, xb, C, lf->wg + C, 3 * C, 0.0f, kvg, 2 * C))
            rc = lf->host->error_set(err, FS_ERR_RUNTIME, "longformer attention: the host's sgemm failed on cuda");
        if (!rc && kv) rc = fail(lf, err, fs_att_add_bias(s, kvg, lf->bg + C, J, 2 * C, 2 * C), "global keys");
    }
    return rc;
}

static int any_global(const lf_state *st) {
    for (size_t b = 0; b < st->B; b++)
        if (st->gcount[b]) return 1;
    return 0;
}

int lf_cuda_forward(lf_plugin *lf, const fs_attention_args *a, fs_error *err) {
    int rc = check(lf, a, 0, err);
    if (rc) return rc;
    lf_saved_layout l;
    lf_saved_layout_for(lf, a->B, a->T, &l);
    lf_state st;
    fs_lf_cuda_args k = kernel_args(lf, a, &l);
    if ((rc = globals(lf, a, &l, &st, &k, err))) return rc;
    void *s = stream_of(lf);
    if ((rc = fail(lf, err, fs_lf_cuda_band_forward(s, &k), "band forward"))) return rc;
    if (!any_global(&st)) return FS_OK;
    size_t GC = a->B * st.gmax * lf->cfg.n_embd;
    float *xg = work(lf, 2 * GC);
    if (!xg) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of device memory");
    k.qg = xg + GC;
    if ((rc = project(lf, a, &st, &k, xg, xg + GC, 1, err))) return rc;
    return fail(lf, err, fs_lf_cuda_global_forward(s, &k), "global forward");
}

/* The global projection's backward for sequence b: its parameters'
 * gradients and the input's (dx += through Wkv and, at the globals, Wq). */
static int project_backward(lf_plugin *lf, const fs_attention_args *a, const lf_state *st, size_t b, const float *xg,
                            const float *dqg, const float *dkvg, float *tmp, const int32_t *glist_dev, fs_error *err) {
    size_t C = lf->cfg.n_embd, T = a->T, g = (size_t)st->gcount[b], J = lf_global_span(lf, st, b);
    fs_device dev = lf->cfg.device;
    const fs_host_api *h = lf->host;
    void *s = stream_of(lf);
    const float *xb = (const float *)a->x.data + b * T * C;
    float *dxb = (float *)a->dx.data + b * T * C;
    if (h->sgemm(dev, 1, 0, C, C, g, 1.0f, xg, C, dqg, C, 1.0f, lf->dwg, 3 * C) ||
        h->sgemm(dev, 1, 0, C, 2 * C, J, 1.0f, xb, C, dkvg, 2 * C, 1.0f, lf->dwg + C, 3 * C) ||
        h->sgemm(dev, 0, 1, J, C, 2 * C, 1.0f, dkvg, 2 * C, lf->wg + C, 3 * C, 1.0f, dxb, C) ||
        h->sgemm(dev, 0, 1, g, C, C, 1.0f, dqg, C, lf->wg, 3 * C, 0.0f, tmp, C))
        return h->error_set(err, FS_ERR_RUNTIME, "longformer attention: the host's sgemm failed on cuda");
    int rc = fail(lf, err, fs_att_column_sums(s, lf->dbg, dqg, g, C, C), "global bias");
    if (!rc) rc = fail(lf, err, fs_att_column_sums(s, lf->dbg + C, dkvg, J, 2 * C, 2 * C), "global bias");
    if (!rc) rc = fail(lf, err, fs_att_scatter_add_rows(s, dxb, tmp, glist_dev, g, C), "global rows");
    return rc;
}

int lf_cuda_backward(lf_plugin *lf, const fs_attention_args *a, fs_error *err) {
    int rc = check(lf, a, 1, err);
    if (rc) return rc;
    lf_saved_layout l;
    lf_saved_layout_for(lf, a->B, a->T, &l);
    lf_state st;
    fs_lf_cuda_args k = kernel_args(lf, a, &l);
    if ((rc = globals(lf, a, &l, &st, &k, err))) return rc;
    size_t B = a->B, H = lf->cfg.n_head, T = a->T, D = lf->cfg.head_dim, C = lf->cfg.n_embd;
    size_t GC = B * st.gmax * C, KV = B * st.jmax * 2 * C;
    float *w = work(lf, B * H * T + 4 * GC + KV);
    if (!w) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of device memory");
    float *delta = w, *xg = delta + B * H * T, *qg = xg + GC, *dqg = qg + GC, *tmp = dqg + GC, *dkvg = tmp + GC;
    void *s = stream_of(lf);
    k.delta = delta;
    rc = fail(lf, err, fs_att_delta(s, delta, a->dout.data, a->out.data, B * H * T, D, FS_DTYPE_F32), "backward");
    if (!rc) rc = fail(lf, err, fs_lf_cuda_band_backward(s, &k), "band backward");
    if (rc || !any_global(&st)) return rc;
    k.qg = qg, k.dqg = dqg, k.dkvg = dkvg;
    if ((rc = project(lf, a, &st, &k, xg, qg, 0, err))) return rc;
    if ((rc = fail(lf, err, fs_lf_cuda_global_backward(s, &k), "global backward"))) return rc;
    for (size_t b = 0; b < B && !rc; b++)
        if (st.gcount[b])
            rc = project_backward(lf, a, &st, b, xg + b * st.gmax * C, dqg + b * st.gmax * C,
                                  dkvg + b * st.jmax * 2 * C, tmp + b * st.gmax * C, k.glist + b * st.gmax, err);
    return rc;
}
