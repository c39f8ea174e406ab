/* dense.c — exact softmax(Q K^T / sqrt(D)) V attention, the reference every
 * other attention plugin is tested against.
 *
 * Training keeps the (B, H, T, T) probabilities for backward: memory grows
 * as T^2, which is what "dense" means; sparse plugins exist to avoid it.
 * Generation keeps only a K/V cache of (B, H, context, D) per layer. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "fastserve/attention.h"
#include "fastserve/fastmath.h"

typedef struct dense {
    const fs_host_api *host;
    fs_attention_config cfg;
    float scale;
    float *scratch; /* (T, T): dS for one (b, h); made by the first scores_backward */
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

/* Rows are processed in blocks of BLOCK queries. With a causal mask, block
 * i only needs keys [0, end of block i), so the score and gradient matmuls
 * skip the upper triangle beyond the diagonal blocks: 5/8 of the FLOPs of
 * the full T x T products at T = 4 * BLOCK, tending to 1/2 as T grows. One
 * block of scores (BLOCK x T floats) stays in cache between the matmul that
 * makes it, its softmax and the matmul that uses it. */
#define BLOCK 64

/* Vector-width partial sums: a plain `for` reduction in float is a serial
 * chain the compiler may not reorder; 16 lanes let it vectorise. */
#define LANES 16

static float row_max(const float *x, size_t n) {
    float m[LANES];
    for (size_t j = 0; j < LANES; j++) m[j] = x[0];
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t j = 0; j < LANES; j++) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    float r = m[0];
    for (size_t j = 1; j < LANES; j++) r = m[j] > r ? m[j] : r;
    return r;
}

static float row_dot(const float *a, const float *b, size_t n) {
    float s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t j = 0; j < LANES; j++) s[j] += a[i + j] * b[i + j];
    for (; i < n; i++) s[0] += a[i] * b[i];
    float r = 0.0f;
    for (size_t j = 0; j < LANES; j++) r += s[j];
    return r;
}

/* In place: row = softmax(row[0, n)), zeros in [n, end). */
static void softmax_row(float *row, size_t n, size_t end) {
    float mx = row_max(row, n), s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t j = 0; j < LANES; j++) {
            float e = fs_fast_expf(row[i + j] - mx);
            row[i + j] = e;
            s[j] += e;
        }
    for (; i < n; i++) {
        row[i] = fs_fast_expf(row[i] - mx);
        s[0] += row[i];
    }
    float sum = 0.0f;
    for (size_t j = 0; j < LANES; j++) sum += s[j];
    float inv = 1.0f / sum;
    for (i = 0; i < n; i++) row[i] *= inv;
    for (; i < end; i++) row[i] = 0.0f;
}

/* In place: dP -> dS = P * (dP - rowsum(dP * P)) * scale on [0, n), zeros
 * in [n, end): masked entries get no gradient, whatever dP holds there. */
static void softmax_backward_row(float *ds, const float *p, size_t n, size_t end, float scale) {
    float dot = row_dot(ds, p, n);
    size_t i = 0;
    for (; i < n; i++) ds[i] = p[i] * (ds[i] - dot) * scale;
    for (; i < end; i++) ds[i] = 0.0f;
}

/* Keys row r of a T x T block sees: r + 1 with the causal mask, else T. */
static size_t row_len(const dense *d, size_t r, size_t T) { return d->cfg.causal ? r + 1 : T; }
/* Keys a block of rows [r0, r1) needs as a whole. */
static size_t block_len(const dense *d, size_t r1, size_t T) { return d->cfg.causal ? r1 : T; }

static int check_cpu(const dense *d, const fs_tensor *t, fs_error *err) {
    if (t->device.type != FS_DEVICE_CPU || t->dtype != FS_DTYPE_F32)
        return d->host->error_set(err, FS_ERR_UNSUPPORTED, "dense attention: expects f32 CPU tensors");
    return FS_OK;
}

/* Forward: one block of rows of one (b, h) per work item (blocks are
 * independent, so even a single head keeps every thread busy); backward:
 * one (b, h) per item, as its blocks accumulate into the same dK and dV.
 * Each item's matmuls run on the calling thread (the host's sgemm does that
 * inside parallel_for), which beats splitting every small matmul across
 * threads. */
typedef struct heads_job {
    const dense *d;
    const fs_attention_args *a;
    float *P;     /* saved: (B, H, T, T), lower blocks only when causal */
    atomic_int failed; /* out of memory for a worker's scratch */
} heads_job;

/* saved holds P for the rows' needed keys: [0, block_len) of each block of
 * rows; entries beyond that (the causal upper blocks) are never written or
 * read. Masked entries inside a diagonal block are exact zeros. */
static void forward_blocks(void *arg, size_t begin, size_t end) {
    heads_job *j = arg;
    const dense *d = j->d;
    const fs_attention_args *a = j->a;
    size_t T = a->T, D = d->cfg.head_dim, nb = (T + BLOCK - 1) / BLOCK;
    for (size_t item = begin; item < end; item++) {
        size_t bh = item / nb, r0 = item % nb * BLOCK, o = bh * T * D;
        size_t r1 = r0 + BLOCK < T ? r0 + BLOCK : T, n = block_len(d, r1, T);
        const float *q = (const float *)a->q.data + o, *k = (const float *)a->k.data + o;
        const float *v = (const float *)a->v.data + o;
        float *out = (float *)a->out.data + o, *Pb = j->P + bh * T * T + r0 * T;
        d->host->sgemm(d->cfg.device, 0, 1, r1 - r0, n, D, d->scale, q + r0 * D, D, k, D, 0.0f, Pb, T);
        for (size_t r = r0; r < r1; r++) softmax_row(Pb + (r - r0) * T, row_len(d, r, T), n);
        d->host->sgemm(d->cfg.device, 0, 0, r1 - r0, D, n, 1.0f, Pb, T, v, D, 0.0f, out + r0 * D, D);
    }
}

static int dense_forward(void *self, fs_attention_args *a, fs_error *err) {
    dense *d = self;
    size_t B = a->B, T = a->T, H = d->cfg.n_head;
    if (T > d->cfg.max_seq)
        return d->host->error_set(err, FS_ERR_INVALID, "dense attention: T = %zu exceeds max_seq = %zu", T,
                                  d->cfg.max_seq);
    if (check_cpu(d, &a->q, err)) return err->status;
    heads_job job = {d, a, a->saved, 0};
    d->host->parallel_for(B * H * ((T + BLOCK - 1) / BLOCK), 1, forward_blocks, &job);
    return FS_OK;
}

/* Backward of one head, blocks of rows from the last: the last block needs
 * every key, so its dV and dK products (beta 0) initialise all rows of dV
 * and dK, and earlier blocks accumulate into their prefix (beta 1).
 * dS (BLOCK x T scratch) = softmax backward of dP = dO V^T;
 * dQ = dS K; dK += dS^T Q; dV += P^T dO. */
static void backward_heads(void *arg, size_t begin, size_t end) {
    heads_job *j = arg;
    const dense *d = j->d;
    const fs_attention_args *a = j->a;
    size_t T = a->T, D = d->cfg.head_dim;
    fs_device dev = d->cfg.device;
    float *dS = d->host->alloc(dev, (T < BLOCK ? T : BLOCK) * T * sizeof(float));
    if (!dS) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (size_t bh = begin; bh < end; bh++) {
        size_t o = bh * T * D;
        const float *q = (const float *)a->q.data + o, *k = (const float *)a->k.data + o;
        const float *v = (const float *)a->v.data + o, *dout = (const float *)a->dout.data + o;
        const float *P = j->P + bh * T * T;
        float *dq = (float *)a->dq.data + o, *dk = (float *)a->dk.data + o, *dv = (float *)a->dv.data + o;
        size_t last = (T - 1) / BLOCK * BLOCK;
        for (size_t r0 = last;; r0 -= BLOCK) {
            size_t r1 = r0 + BLOCK < T ? r0 + BLOCK : T, rows = r1 - r0, n = block_len(d, r1, T);
            float beta = r0 == last ? 0.0f : 1.0f;
            const float *Pb = P + r0 * T;
            d->host->sgemm(dev, 1, 0, n, D, rows, 1.0f, Pb, T, dout + r0 * D, D, beta, dv, D);
            d->host->sgemm(dev, 0, 1, rows, n, D, 1.0f, dout + r0 * D, D, v, D, 0.0f, dS, n);
            for (size_t r = r0; r < r1; r++)
                softmax_backward_row(dS + (r - r0) * n, Pb + (r - r0) * T, row_len(d, r, T), n, d->scale);
            d->host->sgemm(dev, 0, 0, rows, D, n, 1.0f, dS, n, k, D, 0.0f, dq + r0 * D, D);
            d->host->sgemm(dev, 1, 0, n, D, rows, 1.0f, dS, n, q + r0 * D, D, beta, dk, D);
            if (r0 == 0) break;
        }
    }
    d->host->free(dev, dS);
}

static int dense_backward(void *self, fs_attention_args *a, fs_error *err) {
    dense *d = self;
    size_t B = a->B, T = a->T, H = d->cfg.n_head;
    if (check_cpu(d, &a->dout, err)) return err->status;
    heads_job job = {d, a, a->saved, 0};
    d->host->parallel_for(B * H, 1, backward_heads, &job);
    if (atomic_load(&job.failed))
        return d->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory for a %d x %zu scratch",
                                  BLOCK, T);
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
    if (a->probs) { /* saved holds each row's unmasked keys only (forward_blocks) */
        const float *P = f->saved;
        for (size_t r = 0; r < B * H * T; r++) {
            size_t n = row_len(d, r % T, T);
            memcpy(s + r * T, P + r * T, n * sizeof(float));
            memset(s + r * T + n, 0, (T - n) * sizeof(float));
        }
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
            for (size_t t = 0; t < T; t++)
                softmax_backward_row(dS + t * T, P + (bh * T + t) * T, row_len(d, t, T), T, d->scale);
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
