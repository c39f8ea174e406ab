/* dense.c — exact softmax(Q K^T / sqrt(D)) V attention, the reference every
 * other attention plugin is tested against.
 *
 * Training keeps the (B, H, T, T) probabilities for backward: memory grows
 * as T^2, which is what "dense" means; sparse plugins exist to avoid it.
 * Generation keeps only a K/V cache of (B, H, context, D) per layer. */
#include <math.h>
#include <string.h>

#include "fastserve/attention.h"

typedef struct dense {
    const fs_host_api *host;
    fs_attention_config cfg;
    float scale;
    float *scratch; /* (T, T): dP, then dS, for one (b, h); made by the first backward */
    size_t scratch_T;
} dense;

typedef struct cache_header {
    size_t B, context, len;
    size_t pad[5]; /* keep the K/V arrays 64-byte aligned */
} cache_header;

static int dense_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                        fs_error *err) {
    (void)ctx;
    if (cfg->device.type != FS_DEVICE_CPU)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "dense attention: only the CPU device is implemented");
    dense *d = host->alloc(cfg->device, sizeof *d);
    if (!d) return host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory");
    d->host = host;
    d->cfg = *cfg;
    d->scale = 1.0f / sqrtf((float)cfg->head_dim);
    d->scratch = NULL; /* generation never needs it: no T x T buffer outside training */
    d->scratch_T = 0;
    *self = d;
    return FS_OK;
}

static void dense_destroy(void *self) {
    dense *d = self;
    if (!d) return;
    d->host->free(d->cfg.device, d->scratch);
    d->host->free(d->cfg.device, d);
}

static size_t dense_saved_bytes(void *self, size_t B, size_t T) {
    dense *d = self;
    return B * d->cfg.n_head * T * T * sizeof(float);
}

typedef struct rows_job {
    float *p;
    size_t T;
    int causal;
} rows_job;

/* In place: scores -> probabilities, row by row (row r of a T x T block,
 * blocks stacked). Masked entries become exactly 0. */
static void softmax_rows(void *arg, size_t begin, size_t end) {
    rows_job *j = arg;
    size_t T = j->T;
    for (size_t r = begin; r < end; r++) {
        float *row = j->p + r * T;
        size_t t = r % T, n = j->causal ? t + 1 : T;
        float mx = row[0];
        for (size_t i = 1; i < n; i++) mx = row[i] > mx ? row[i] : mx;
        float sum = 0.0f;
        for (size_t i = 0; i < n; i++) {
            row[i] = expf(row[i] - mx);
            sum += row[i];
        }
        float inv = 1.0f / sum;
        for (size_t i = 0; i < n; i++) row[i] *= inv;
        for (size_t i = n; i < T; i++) row[i] = 0.0f;
    }
}

static int check_cpu(const dense *d, const fs_tensor *t, fs_error *err) {
    if (t->device.type != FS_DEVICE_CPU || t->dtype != FS_DTYPE_F32)
        return d->host->error_set(err, FS_ERR_UNSUPPORTED, "dense attention: expects f32 CPU tensors");
    return FS_OK;
}

static int dense_forward(void *self, fs_attention_args *a, fs_error *err) {
    dense *d = self;
    size_t B = a->B, T = a->T, H = d->cfg.n_head, D = d->cfg.head_dim;
    if (T > d->cfg.max_seq)
        return d->host->error_set(err, FS_ERR_INVALID, "dense attention: T = %zu exceeds max_seq = %zu", T,
                                  d->cfg.max_seq);
    if (check_cpu(d, &a->q, err)) return err->status;
    const float *q = a->q.data, *k = a->k.data, *v = a->v.data;
    float *out = a->out.data, *P = a->saved;
    for (size_t bh = 0; bh < B * H; bh++) {
        size_t o = bh * T * D;
        d->host->sgemm(d->cfg.device, 0, 1, T, T, D, d->scale, q + o, D, k + o, D, 0.0f, P + bh * T * T, T);
    }
    rows_job job = {P, T, d->cfg.causal};
    d->host->parallel_for(B * H * T, 16, softmax_rows, &job);
    for (size_t bh = 0; bh < B * H; bh++) {
        size_t o = bh * T * D;
        d->host->sgemm(d->cfg.device, 0, 0, T, D, T, 1.0f, P + bh * T * T, T, v + o, D, 0.0f, out + o, D);
    }
    return FS_OK;
}

typedef struct dsoftmax_job {
    float *ds;      /* in: dP, out: dS (scaled) */
    const float *p; /* probabilities */
    size_t T;
    float scale;
} dsoftmax_job;

static void softmax_backward_rows(void *arg, size_t begin, size_t end) {
    dsoftmax_job *j = arg;
    size_t T = j->T;
    for (size_t r = begin; r < end; r++) {
        float *ds = j->ds + r * T;
        const float *p = j->p + r * T;
        float dot = 0.0f;
        for (size_t i = 0; i < T; i++) dot += ds[i] * p[i];
        for (size_t i = 0; i < T; i++) ds[i] = p[i] * (ds[i] - dot) * j->scale;
    }
}

static int dense_backward(void *self, fs_attention_args *a, fs_error *err) {
    dense *d = self;
    size_t B = a->B, T = a->T, H = d->cfg.n_head, D = d->cfg.head_dim;
    if (check_cpu(d, &a->dout, err)) return err->status;
    const float *q = a->q.data, *k = a->k.data, *v = a->v.data, *dout = a->dout.data, *P = a->saved;
    fs_device dev = d->cfg.device;
    if (d->scratch_T < T) {
        d->host->free(dev, d->scratch);
        d->scratch = d->host->alloc(dev, T * T * sizeof(float));
        d->scratch_T = d->scratch ? T : 0;
        if (!d->scratch)
            return d->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory for a %zu x %zu scratch", T, T);
    }
    float *dq = a->dq.data, *dk = a->dk.data, *dv = a->dv.data, *dS = d->scratch;
    for (size_t bh = 0; bh < B * H; bh++) {
        size_t o = bh * T * D;
        const float *p = P + bh * T * T;
        /* dV = P^T dO; dP = dO V^T */
        d->host->sgemm(dev, 1, 0, T, D, T, 1.0f, p, T, dout + o, D, 0.0f, dv + o, D);
        d->host->sgemm(dev, 0, 1, T, T, D, 1.0f, dout + o, D, v + o, D, 0.0f, dS, T);
        /* masked entries have p = 0, so their dS is 0 without a special case */
        dsoftmax_job job = {dS, p, T, d->scale};
        d->host->parallel_for(T, 16, softmax_backward_rows, &job);
        /* dQ = dS K; dK = dS^T Q */
        d->host->sgemm(dev, 0, 0, T, D, T, 1.0f, dS, T, k + o, D, 0.0f, dq + o, D);
        d->host->sgemm(dev, 1, 0, T, D, T, 1.0f, dS, T, q + o, D, 0.0f, dk + o, D);
    }
    return FS_OK;
}

static size_t dense_cache_bytes(void *self, size_t B, size_t context) {
    dense *d = self;
    if (context == 0) context = d->cfg.max_seq;
    /* K and V, then one row of scores for the decode step */
    return sizeof(cache_header) + (2 * B * d->cfg.n_head * context * d->cfg.head_dim + context) * sizeof(float);
}

static int dense_cache_reset(void *self, void *cache, size_t B, size_t context, fs_error *err) {
    dense *d = self;
    (void)err;
    cache_header *h = cache;
    h->B = B;
    h->context = context ? context : d->cfg.max_seq;
    h->len = 0;
    return FS_OK;
}

static int dense_decode(void *self, void *cache, fs_attention_decode_args *a, fs_error *err) {
    dense *d = self;
    cache_header *h = cache;
    size_t H = d->cfg.n_head, D = d->cfg.head_dim, ctx = h->context;
    if (a->B != h->B)
        return d->host->error_set(err, FS_ERR_INVALID, "dense attention: decode batch %zu != cache batch %zu",
                                  a->B, h->B);
    if (a->pos != h->len)
        return d->host->error_set(err, FS_ERR_INVALID, "dense attention: decode position %zu, expected %zu",
                                  a->pos, h->len);
    if (a->pos >= ctx)
        return d->host->error_set(err, FS_ERR_INVALID,
                                  "dense attention: context full (%zu tokens); dense attention cannot look "
                                  "past its cache",
                                  ctx);
    float *K = (float *)(h + 1), *V = K + h->B * H * ctx * D;
    const float *q = a->q.data, *k = a->k.data, *v = a->v.data;
    float *out = a->out.data, *w = V + h->B * H * ctx * D;
    size_t n = a->pos + 1;
    for (size_t bh = 0; bh < a->B * H; bh++) {
        float *Kc = K + bh * ctx * D, *Vc = V + bh * ctx * D;
        memcpy(Kc + a->pos * D, k + bh * D, D * sizeof(float));
        memcpy(Vc + a->pos * D, v + bh * D, D * sizeof(float));
        const float *qi = q + bh * D;
        float mx = -INFINITY;
        for (size_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (size_t c = 0; c < D; c++) s += qi[c] * Kc[j * D + c];
            w[j] = s * d->scale;
            mx = w[j] > mx ? w[j] : mx;
        }
        float sum = 0.0f;
        for (size_t j = 0; j < n; j++) {
            w[j] = expf(w[j] - mx);
            sum += w[j];
        }
        float *o = out + bh * D;
        memset(o, 0, D * sizeof(float));
        for (size_t j = 0; j < n; j++) {
            float p = w[j] / sum;
            for (size_t c = 0; c < D; c++) o[c] += p * Vc[j * D + c];
        }
    }
    h->len++;
    return FS_OK;
}

static int dense_scores(void *self, fs_attention_scores_args *a, fs_error *err) {
    dense *d = self;
    const fs_attention_args *f = a->fwd;
    size_t B = f->B, T = f->T, H = d->cfg.n_head, D = d->cfg.head_dim;
    float *s = a->scores.data;
    if (a->probs) {
        memcpy(s, f->saved, B * H * T * T * sizeof(float));
        return FS_OK;
    }
    (void)err;
    const float *q = f->q.data, *k = f->k.data;
    for (size_t bh = 0; bh < B * H; bh++) {
        size_t o = bh * T * D;
        float *sb = s + bh * T * T;
        d->host->sgemm(d->cfg.device, 0, 1, T, T, D, d->scale, q + o, D, k + o, D, 0.0f, sb, T);
        if (d->cfg.causal)
            for (size_t t = 0; t < T; t++)
                for (size_t j = t + 1; j < T; j++) sb[t * T + j] = 0.0f;
    }
    return FS_OK;
}

/* Backward of scores(): S = scale * Q K^T (masked entries constant), P its
 * masked softmax. For probabilities dS = P * (dP - rowsum(dP * P)) first. */
static int dense_scores_backward(void *self, const fs_attention_scores_args *a, fs_error *err) {
    dense *d = self;
    const fs_attention_args *f = a->fwd;
    size_t B = f->B, T = f->T, H = d->cfg.n_head, D = d->cfg.head_dim;
    if (check_cpu(d, &a->scores, err)) return err->status;
    fs_device dev = d->cfg.device;
    if (d->scratch_T < T) {
        d->host->free(dev, d->scratch);
        d->scratch = d->host->alloc(dev, T * T * sizeof(float));
        d->scratch_T = d->scratch ? T : 0;
        if (!d->scratch)
            return d->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory for a %zu x %zu scratch", T, T);
    }
    const float *q = f->q.data, *k = f->k.data, *ds_all = a->scores.data, *P = f->saved;
    float *dq = f->dq.data, *dk = f->dk.data, *dS = d->scratch;
    for (size_t bh = 0; bh < B * H; bh++) {
        size_t o = bh * T * D;
        memcpy(dS, ds_all + bh * T * T, T * T * sizeof(float));
        if (d->cfg.causal)
            for (size_t t = 0; t < T; t++)
                for (size_t j = t + 1; j < T; j++) dS[t * T + j] = 0.0f;
        float alpha = d->scale;
        if (a->probs) {
            dsoftmax_job job = {dS, P + bh * T * T, T, d->scale};
            d->host->parallel_for(T, 16, softmax_backward_rows, &job);
            alpha = 1.0f;
        }
        d->host->sgemm(dev, 0, 0, T, D, T, alpha, dS, T, k + o, D, 1.0f, dq + o, D);
        d->host->sgemm(dev, 1, 0, T, D, T, alpha, dS, T, q + o, D, 1.0f, dk + o, D);
    }
    return FS_OK;
}

static const fs_attention_vtable dense_vtable = {
    .struct_size = sizeof(fs_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL | FS_ATTENTION_BIDIRECTIONAL | FS_ATTENTION_DECODE | FS_ATTENTION_SCORES,
    .create = dense_create,
    .destroy = dense_destroy,
    .saved_bytes = dense_saved_bytes,
    .forward = dense_forward,
    .backward = dense_backward,
    .cache_bytes = dense_cache_bytes,
    .cache_reset = dense_cache_reset,
    .decode = dense_decode,
    .scores = dense_scores,
    .scores_backward = dense_scores_backward,
};

static const fs_plugin_descriptor dense_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "dense",
    .version = "1.0.0",
    .summary = "exact softmax(QK^T/sqrt(d))V attention; O(T^2) memory in training, K/V cache in generation",
    .params = NULL,
    .n_params = 0,
    .vtable = &dense_vtable,
    .vtable_size = sizeof(dense_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(dense_descriptor)
