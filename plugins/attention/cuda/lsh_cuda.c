/* lsh_cuda.c — Reformer LSH attention on a CUDA device: work memory, the
 * rounds' projections (the host's sgemm on this device), the rotations'
 * upload, errors; the kernels are lsh_kernels.cu's. The saved state has the
 * CPU's layout (lsh.h) in device memory. f32 only; generation stays on the
 * CPU. */
#include <stdlib.h>
#include <string.h>

#include "../lsh.h"
#include "attention_cuda.h"
#include "fastserve/backend.h"

struct lsh_cuda {
    float *work; /* device, grow-only */
    size_t work_n;
};

static int fail(const lsh_plugin *l, fs_error *err, int e, const char *what) {
    if (!e) return FS_OK;
    return l->host->error_set(err, FS_ERR_RUNTIME, "lsh attention: %s on cuda:%d: %s", what, (int)l->cfg.device.index,
                              fs_att_cuda_error(e));
}

static void *stream_of(const lsh_plugin *l) { return l->host->device_stream(l->cfg.device); }

int lsh_cuda_create(lsh_plugin *l, size_t n_rot, uint64_t seed, fs_error *err) {
    const fs_host_api *host = l->host;
    if (!FS_HAS_MEMBER(host, host->struct_size, fs_host_api, device_stream))
        return host->error_set(err, FS_ERR_ABI, "lsh attention: CUDA needs a host of ABI 1.3 (device_stream)");
    if (l->cfg.head_dim > 128)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "lsh attention: head width %zu > 128 on CUDA", l->cfg.head_dim);
    if (l->cfg.device.index < 0 || l->cfg.device.index >= fs_att_cuda_device_count())
        return host->error_set(err, FS_ERR_NOT_FOUND, "lsh attention: no CUDA device cuda:%d", (int)l->cfg.device.index);
    if ((size_t)l->n_buckets * l->cfg.max_seq >= ((size_t)1 << 32))
        return host->error_set(err, FS_ERR_UNSUPPORTED, "lsh attention: n_buckets x max_seq must stay below 2^32 on CUDA");
    l->cuda = calloc(1, sizeof *l->cuda);
    float *rot = malloc(n_rot * sizeof(float));
    if (!l->cuda || !rot) {
        free(rot);
        return host->error_set(err, FS_ERR_NOMEM, "lsh attention: out of memory");
    }
    /* the same rotations as on the CPU, drawn there and copied over */
    lsh_fill_rotations(rot, n_rot, seed);
    void *s = stream_of(l);
    int rc = fail(l, err, fs_att_cuda_set_device(l->cfg.device.index), "cudaSetDevice");
    if (!rc) rc = fail(l, err, fs_att_cuda_memcpy(s, l->rot, rot, n_rot * sizeof(float), FS_COPY_HOST_TO_DEVICE), "rotations");
    if (!rc) rc = fail(l, err, fs_att_cuda_sync(s), "rotations"); /* `rot` is freed next */
    free(rot);
    return rc;
}

void lsh_cuda_destroy(lsh_plugin *l) {
    if (!l->cuda) return;
    l->host->free(l->cfg.device, l->cuda->work);
    free(l->cuda);
    l->cuda = NULL;
}

static int check(const lsh_plugin *l, const fs_attention_args *a, int backward, fs_error *err) {
    const fs_tensor *t[] = {&a->q, &a->v, &a->out, &a->dout, &a->dq, &a->dv};
    for (size_t i = 0; i < (backward ? 6u : 3u); i++)
        if (t[i]->device.type != FS_DEVICE_CUDA || t[i]->device.index != l->cfg.device.index ||
            t[i]->dtype != FS_DTYPE_F32)
            return l->host->error_set(err, FS_ERR_UNSUPPORTED,
                                      "lsh attention: on CUDA it takes f32 tensors on cuda:%d (bf16 activations: use "
                                      "dense attention)",
                                      (int)l->cfg.device.index);
    if (a->T > l->cfg.max_seq)
        return l->host->error_set(err, FS_ERR_INVALID, "lsh attention: T = %zu exceeds max_seq = %zu", a->T,
                                  l->cfg.max_seq);
    return fail(l, err, fs_att_cuda_set_device(l->cfg.device.index), "cudaSetDevice");
}

/* The kernels' view, with work memory: kn, then forward's projections and
 * per-round outputs or backward's delta and per-round gradients. */
static int setup(lsh_plugin *l, const fs_attention_args *a, int backward, fs_lsh_cuda_args *k, float **proj,
                 fs_error *err) {
    size_t BH = a->B * l->cfg.n_head, T = a->T, D = l->cfg.head_dim, nh = l->n_hashes, half = l->n_buckets / 2;
    size_t n = BH * T * D + (backward ? BH * T + 3 * BH * nh * T * D : BH * T * half + BH * nh * T * D + BH * nh * T);
    struct lsh_cuda *c = l->cuda;
    if (c->work_n < n) {
        l->host->free(l->cfg.device, c->work);
        c->work = l->host->alloc(l->cfg.device, n * sizeof(float));
        c->work_n = c->work ? n : 0;
        if (!c->work)
            return l->host->error_set(err, FS_ERR_NOMEM, "lsh attention: out of device memory for %zu floats", n);
    }
    lsh_saved_layout lay;
    lsh_saved_layout_for(nh, T, &lay);
    memset(k, 0, sizeof *k);
    k->q = a->q.data, k->v = a->v.data, k->dout = a->dout.data, k->out = a->out.data;
    k->out_w = a->out.data, k->dq = a->dq.data, k->dk = a->dk.data, k->dv = a->dv.data;
    k->saved = a->saved, k->per_bh = lay.per_bh, k->off_bucket = lay.bucket, k->off_order = lay.order;
    k->off_where = lay.where, k->off_lse = lay.lse;
    k->B = a->B, k->H = l->cfg.n_head, k->T = T, k->D = D, k->nh = nh, k->n_buckets = l->n_buckets;
    k->chunk = l->chunk, k->back = l->lookback, k->ahead = l->lookahead, k->scale = l->scale, k->causal = l->cfg.causal;
    float *w = c->work;
    k->kn = w, w += BH * T * D;
    if (backward) {
        k->delta = w, w += BH * T;
        k->dq_r = w, w += BH * nh * T * D;
        k->dkn_r = w, w += BH * nh * T * D;
        k->dv_r = w;
    } else {
        *proj = w, w += BH * T * half;
        k->out_r = w, w += BH * nh * T * D;
        k->lse_r = w;
    }
    return FS_OK;
}

int lsh_cuda_forward(lsh_plugin *l, const fs_attention_args *a, fs_error *err) {
    fs_lsh_cuda_args k;
    float *proj = NULL;
    int rc = check(l, a, 0, err);
    if (rc || (rc = setup(l, a, 0, &k, &proj, err))) return rc;
    size_t rows = a->B * l->cfg.n_head * a->T, D = l->cfg.head_dim, half = l->n_buckets / 2;
    void *s = stream_of(l);
    rc = fail(l, err, fs_lsh_cuda_normalize(s, &k), "normalise");
    for (size_t r = 0; r < l->n_hashes && !rc; r++) {
        if (l->host->sgemm(l->cfg.device, 0, 0, rows, half, D, 1.0f, k.q, D, l->rot + r * D * half, half, 0.0f, proj,
                           half))
            return l->host->error_set(err, FS_ERR_RUNTIME, "lsh attention: the host's sgemm failed on cuda");
        rc = fail(l, err, fs_lsh_cuda_buckets(s, &k, proj, r), "buckets");
    }
    if (!rc) rc = fail(l, err, fs_lsh_cuda_sort(s, &k), "sort");
    if (!rc) rc = fail(l, err, fs_lsh_cuda_forward(s, &k), "forward");
    return rc;
}

int lsh_cuda_backward(lsh_plugin *l, const fs_attention_args *a, fs_error *err) {
    fs_lsh_cuda_args k;
    int rc = check(l, a, 1, err);
    if (rc || (rc = setup(l, a, 1, &k, NULL, err))) return rc;
    void *s = stream_of(l);
    rc = fail(l, err, fs_lsh_cuda_normalize(s, &k), "normalise");
    if (!rc) rc = fail(l, err, fs_lsh_cuda_backward(s, &k), "backward");
    return rc;
}
