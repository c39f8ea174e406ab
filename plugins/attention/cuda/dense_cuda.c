/* dense_cuda.c — dense attention on a CUDA device: argument checks,
 * memory, errors; the kernels are dense_kernels.cu's.
 *
 * Training saves one log-sum-exp per row (B, H, T): O(T) memory where the
 * CPU path keeps the (T, T) probabilities. Kernels run on the host's
 * device_stream, in order with the model's ops.
 *
 * Decode caches live in device memory (K, then V, (B, H, context, D) f32),
 * so their bookkeeping (batch, context, length) cannot sit in the cache as
 * it does on the CPU, where decode reads it for free: each instance keeps
 * it on the host, per cache, in a small table (one entry per cache it was
 * reset with; a sequence's cache is reset once and reused). */
#include "dense_cuda.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cuda.h"
#include "fastserve/backend.h"

typedef struct cache_entry {
    const void *cache;
    size_t B, context, len;
} cache_entry;

struct dense_cuda {
    const fs_host_api *host;
    fs_attention_config cfg;
    float scale;
    float *delta;    /* (delta_n) backward's rowsum(dO * O) */
    size_t delta_n;
    float *ds;       /* (T, T) scores_backward's block */
    size_t ds_T;
    pthread_mutex_t lock; /* the cache table */
    cache_entry *caches;
    size_t n_caches;
};

static int fail(const dense_cuda *dc, fs_error *err, int e, const char *what) {
    if (!e) return FS_OK;
    return dc->host->error_set(err, FS_ERR_RUNTIME, "dense attention: %s on cuda:%d: %s", what,
                               (int)dc->cfg.device.index, fs_att_cuda_error(e));
}

static void *stream_of(const dense_cuda *dc) { return dc->host->device_stream(dc->cfg.device); }

/* The device current on this thread, the tensors on it and of one type. */
static int enter(const dense_cuda *dc, const fs_tensor *const *t, size_t n, fs_error *err) {
    for (size_t i = 0; i < n; i++) {
        if (!t[i]->data) continue;
        if (t[i]->device.type != FS_DEVICE_CUDA || t[i]->device.index != dc->cfg.device.index ||
            t[i]->dtype != t[0]->dtype || (t[i]->dtype != FS_DTYPE_F32 && t[i]->dtype != FS_DTYPE_BF16))
            return dc->host->error_set(err, FS_ERR_UNSUPPORTED,
                                       "dense attention: tensors must be f32 or bf16 (all one type) on cuda:%d",
                                       (int)dc->cfg.device.index);
    }
    return fail(dc, err, fs_att_cuda_set_device(dc->cfg.device.index), "cudaSetDevice");
}

int dense_cuda_create(dense_cuda **out, const fs_host_api *host, const fs_attention_config *cfg, fs_error *err) {
    *out = NULL;
    if (!FS_HAS_MEMBER(host, host->struct_size, fs_host_api, device_stream))
        return host->error_set(err, FS_ERR_ABI, "dense attention: CUDA needs a host of ABI 1.3 (device_stream)");
    if (cfg->head_dim > 128)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "dense attention: head width %zu > 128 on CUDA",
                               cfg->head_dim);
    if (cfg->device.index < 0 || cfg->device.index >= fs_att_cuda_device_count())
        return host->error_set(err, FS_ERR_NOT_FOUND, "dense attention: no CUDA device cuda:%d",
                               (int)cfg->device.index);
    dense_cuda *dc = calloc(1, sizeof *dc);
    if (!dc) return host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory");
    dc->host = host;
    dc->cfg = *cfg;
    dc->scale = 1.0f / sqrtf((float)cfg->head_dim);
    pthread_mutex_init(&dc->lock, NULL);
    *out = dc;
    return FS_OK;
}

void dense_cuda_destroy(dense_cuda *dc) {
    if (!dc) return;
    dc->host->free(dc->cfg.device, dc->delta);
    dc->host->free(dc->cfg.device, dc->ds);
    pthread_mutex_destroy(&dc->lock);
    free(dc->caches);
    free(dc);
}

size_t dense_cuda_saved_bytes(const dense_cuda *dc, size_t B, size_t T) {
    return B * dc->cfg.n_head * T * sizeof(float);
}

int dense_cuda_forward(dense_cuda *dc, const fs_attention_args *a, fs_error *err) {
    const fs_tensor *t[] = {&a->q, &a->k, &a->v, &a->out};
    size_t T = a->T, H = dc->cfg.n_head, D = dc->cfg.head_dim;
    if (T > dc->cfg.max_seq)
        return dc->host->error_set(err, FS_ERR_INVALID, "dense attention: T = %zu exceeds max_seq = %zu", T,
                                   dc->cfg.max_seq);
    int rc = enter(dc, t, 4, err);
    if (rc) return rc;
    return fail(dc, err,
                fs_dense_cuda_forward(stream_of(dc), a->out.data, a->saved, a->q.data, a->k.data, a->v.data, a->B * H, T,
                                      D, dc->cfg.causal, dc->scale, a->q.dtype),
                "forward");
}

/* Grow-only device work memory of n floats. */
static float *work(dense_cuda *dc, float **p, size_t *have, size_t n) {
    if (n <= *have) return *p;
    dc->host->free(dc->cfg.device, *p);
    *p = dc->host->alloc(dc->cfg.device, n * sizeof(float));
    *have = *p ? n : 0;
    return *p;
}

int dense_cuda_backward(dense_cuda *dc, const fs_attention_args *a, fs_error *err) {
    const fs_tensor *t[] = {&a->q, &a->k, &a->v, &a->out, &a->dout, &a->dq, &a->dk, &a->dv};
    size_t BH = a->B * dc->cfg.n_head, T = a->T, D = dc->cfg.head_dim;
    int rc = enter(dc, t, 8, err);
    if (rc) return rc;
    float *delta = work(dc, &dc->delta, &dc->delta_n, BH * T);
    if (!delta) return dc->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of device memory (%zu floats)", BH * T);
    return fail(dc, err,
                fs_dense_cuda_backward(stream_of(dc), a->dq.data, a->dk.data, a->dv.data, a->dout.data, a->q.data,
                                       a->k.data, a->v.data, a->out.data, a->saved, delta, BH, T, D, dc->cfg.causal,
                                       dc->scale, a->q.dtype),
                "backward");
}

/* ---- decode ---- */

size_t dense_cuda_cache_bytes(const dense_cuda *dc, size_t B, size_t context) {
    if (context == 0) context = dc->cfg.max_seq;
    return 2 * B * dc->cfg.n_head * context * dc->cfg.head_dim * sizeof(float);
}

int dense_cuda_cache_reset(dense_cuda *dc, void *cache, size_t B, size_t context, fs_error *err) {
    pthread_mutex_lock(&dc->lock);
    size_t i = 0;
    while (i < dc->n_caches && dc->caches[i].cache != cache) i++;
    if (i == dc->n_caches) {
        cache_entry *c = realloc(dc->caches, (dc->n_caches + 1) * sizeof *c);
        if (!c) {
            pthread_mutex_unlock(&dc->lock);
            return dc->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory");
        }
        dc->caches = c;
        dc->n_caches++;
    }
    dc->caches[i] = (cache_entry){cache, B, context ? context : dc->cfg.max_seq, 0};
    pthread_mutex_unlock(&dc->lock);
    return FS_OK;
}

/* The table's entry of `cache` (NULL: never reset), under the lock. */
static cache_entry *entry_of(dense_cuda *dc, const void *cache) {
    for (size_t i = 0; i < dc->n_caches; i++)
        if (dc->caches[i].cache == cache) return &dc->caches[i];
    return NULL;
}

int dense_cuda_decode(dense_cuda *dc, void *cache, const fs_attention_decode_args *a, fs_error *err) {
    const fs_tensor *t[] = {&a->q, &a->k, &a->v, &a->out};
    size_t H = dc->cfg.n_head, D = dc->cfg.head_dim;
    int rc = enter(dc, t, 4, err);
    if (rc) return rc;
    pthread_mutex_lock(&dc->lock);
    cache_entry *e = entry_of(dc, cache), c = e ? *e : (cache_entry){0};
    pthread_mutex_unlock(&dc->lock);
    if (!e) return dc->host->error_set(err, FS_ERR_INVALID, "dense attention: decode on a cache never reset");
    if (a->B != c.B)
        return dc->host->error_set(err, FS_ERR_INVALID, "dense attention: decode batch %zu != cache batch %zu", a->B, c.B);
    if (a->pos != c.len)
        return dc->host->error_set(err, FS_ERR_INVALID, "dense attention: decode position %zu, expected %zu", a->pos,
                                   c.len);
    if (a->pos >= c.context)
        return dc->host->error_set(err, FS_ERR_INVALID,
                                   "dense attention: context full (%zu tokens); dense attention cannot look past its "
                                   "cache",
                                   c.context);
    float *kc = cache, *vc = kc + c.B * H * c.context * D;
    void *s = stream_of(dc);
    rc = fail(dc, err, fs_dense_cuda_append(s, kc, vc, a->k.data, a->v.data, c.B * H, c.context, D, a->pos, a->q.dtype),
              "decode");
    if (!rc)
        rc = fail(dc, err,
                  fs_dense_cuda_decode(s, a->out.data, a->q.data, kc, vc, NULL, a->pos + 1, c.B, H, c.context, D,
                                       dc->scale, a->q.dtype),
                  "decode");
    if (rc) return rc;
    pthread_mutex_lock(&dc->lock);
    if ((e = entry_of(dc, cache))) e->len++;
    pthread_mutex_unlock(&dc->lock);
    return FS_OK;
}

/* ---- scores for attention-map distillation ---- */

int dense_cuda_scores(dense_cuda *dc, const fs_attention_scores_args *a, fs_error *err) {
    const fs_attention_args *f = a->fwd;
    const fs_tensor *t[] = {&f->q, &f->k};
    int rc = enter(dc, t, 2, err);
    if (rc) return rc;
    return fail(dc, err,
                fs_dense_cuda_scores(stream_of(dc), a->scores.data, f->q.data, f->k.data, f->saved,
                                     f->B * dc->cfg.n_head, f->T, dc->cfg.head_dim, dc->cfg.causal, dc->scale, a->probs,
                                     f->q.dtype),
                "scores");
}

/* Per (b, h): dS from d loss / d scores (a copy of the block, in place),
 * then dq += scale dS K and dk += scale dS^T Q through the host's sgemm on
 * this device (f32). */
int dense_cuda_scores_backward(dense_cuda *dc, const fs_attention_scores_args *a, fs_error *err) {
    const fs_attention_args *f = a->fwd;
    const fs_tensor *t[] = {&f->q, &f->k, &f->dq, &f->dk};
    size_t T = f->T, D = dc->cfg.head_dim;
    int rc = enter(dc, t, 4, err);
    if (rc) return rc;
    if (f->q.dtype != FS_DTYPE_F32)
        return dc->host->error_set(err, FS_ERR_UNSUPPORTED,
                                   "dense attention: attention-map losses on CUDA need f32 activations ([train] "
                                   "precision = fp32 or tf32)");
    float *ds = work(dc, &dc->ds, &dc->ds_T, T * T);
    if (!ds) return dc->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of device memory for a %zu x %zu block", T, T);
    void *s = stream_of(dc);
    for (size_t bh = 0; bh < f->B * dc->cfg.n_head && !rc; bh++) {
        const float *q = (const float *)f->q.data + bh * T * D, *k = (const float *)f->k.data + bh * T * D;
        float *dq = (float *)f->dq.data + bh * T * D, *dk = (float *)f->dk.data + bh * T * D;
        rc = fail(dc, err, fs_att_cuda_memcpy(s, ds, (const float *)a->scores.data + bh * T * T, T * T * sizeof(float),
                                              FS_COPY_DEVICE_TO_DEVICE),
                  "scores_backward");
        if (!rc)
            rc = fail(dc, err,
                      fs_dense_cuda_scores_grad(s, ds, q, k, (const float *)f->saved + bh * T, T, D, dc->cfg.causal,
                                                dc->scale, a->probs, FS_DTYPE_F32),
                      "scores_backward");
        if (!rc && (dc->host->sgemm(dc->cfg.device, 0, 0, T, D, T, dc->scale, ds, T, k, D, 1.0f, dq, D) ||
                    dc->host->sgemm(dc->cfg.device, 1, 0, T, D, T, dc->scale, ds, T, q, D, 1.0f, dk, D)))
            rc = dc->host->error_set(err, FS_ERR_RUNTIME, "dense attention: the host's sgemm failed on cuda:%d",
                                     (int)dc->cfg.device.index);
    }
    return rc;
}
