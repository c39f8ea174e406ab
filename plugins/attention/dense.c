/* dense.c — exact softmax(Q K^T / sqrt(D)) V attention, the reference every
 * other attention plugin is tested against.
 *
 * Training runs the way FlashAttention does, on the CPU: queries in blocks
 * of QBLOCK rows, keys in blocks of KBLOCK, one block of scores at a time
 * (QBLOCK x KBLOCK floats, in cache) with an online softmax: each row keeps
 * its running maximum and sum, and its output is rescaled whenever the
 * maximum grows. Forward saves one log-sum-exp per row, nothing else;
 * backward recomputes each block's probabilities from it (one extra
 * Q K^T, as FlashAttention does). No T x T buffer exists in training:
 * saved state is (B, H, T) floats and work memory a few blocks per thread,
 * so memory grows as T, time as T^2 (half of it with the causal mask, whose
 * blocks above the diagonal are skipped).
 *
 * Generation keeps a K/V cache of (B, H, context, D) per layer; serving
 * keeps the same in blocks of the paged pool (attention.h): per head, K
 * (kv_block, D) then V (kv_block, D), in host memory or, for an instance
 * on CUDA, in device memory (cuda/dense_paged.cu: the same bytes).
 *
 * scores()/scores_backward() (attention maps for distillation) write or
 * read the whole (B, H, T, T) map the caller provides; they recompute it
 * block by block from Q, K and the saved log-sum-exp. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "fastserve/attention.h"
#include "fastserve/fastmath.h"
#include "paged.h"

#if FS_CUDA_KERNELS
#include "cuda/dense_cuda.h" /* the device half: the same algorithm in CUDA kernels */
#define DENSE_DEVICES (FS_ATTENTION_CUDA | FS_ATTENTION_CUDA_DECODE | FS_ATTENTION_CUDA_PAGED)
#else
#define DENSE_DEVICES 0u
#endif

typedef struct dense {
    const fs_host_api *host;
    fs_attention_config cfg;
    struct dense_cuda *cuda; /* the instance is on a CUDA device: everything goes there */
    float scale;
    size_t kv_es; /* bytes of a key or value element in paged blocks: 4 (f32) or 2 (bf16) */
} dense;

typedef struct cache_header {
    size_t B, context, len;
    size_t pad[5]; /* keep the K/V arrays 64-byte aligned */
} cache_header;

static int dense_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                        fs_error *err) {
    (void)ctx;
    if (cfg->device.type != FS_DEVICE_CPU && !(cfg->device.type == FS_DEVICE_CUDA && DENSE_DEVICES))
        return host->error_set(err, FS_ERR_UNSUPPORTED, "dense attention: device type %d is not implemented%s",
                               (int)cfg->device.type,
                               cfg->device.type == FS_DEVICE_CUDA ? " (this build has no CUDA toolkit)" : "");
    fs_device cpu = {FS_DEVICE_CPU, 0}; /* the instance itself is host memory */
    dense *d = host->alloc(cpu, sizeof *d);
    if (!d) return host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory");
    d->host = host;
    paged_config_copy(&d->cfg, cfg);
    d->kv_es = paged_kv_es(cfg);
    d->cuda = NULL;
#if FS_CUDA_KERNELS
    if (cfg->device.type == FS_DEVICE_CUDA) {
        int rc = dense_cuda_create(&d->cuda, host, cfg, err);
        if (rc) host->free(cpu, d);
        else *self = d;
        return rc;
    }
#endif
    d->scale = 1.0f / sqrtf((float)cfg->head_dim);
    *self = d;
    return FS_OK;
}

static void dense_destroy(void *self) {
    dense *d = self;
    if (!d) return;
    fs_device cpu = {FS_DEVICE_CPU, 0};
#if FS_CUDA_KERNELS
    dense_cuda_destroy(d->cuda);
#endif
    d->host->free(cpu, d);
}

/* Calls the device half when the instance is on CUDA (and returns). */
#if FS_CUDA_KERNELS
#define ON_DEVICE(d, call)            \
    do {                              \
        if ((d)->cuda) return (call); \
    } while (0)
#else
#define ON_DEVICE(d, call) ((void)0)
#endif

/* The log-sum-exp of every row's scores: (B, H, T). */
static size_t dense_saved_bytes(void *self, size_t B, size_t T) {
    dense *d = self;
    ON_DEVICE(d, dense_cuda_saved_bytes(d->cuda, B, T));
    return B * d->cfg.n_head * T * sizeof(float);
}

/* Query rows and keys per block. A block of scores is QBLOCK x KBLOCK
 * floats (64 KiB): it stays in L2 between the matmul that makes it, its
 * softmax and the matmul that uses it, and each sgemm (64 x 256 x D) is
 * large enough to run near OpenBLAS's peak. */
#define QBLOCK 64
#define KBLOCK 256

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

/* In place: row[i] = e^(row[i] - shift) on [0, n), zeros in [n, end);
 * returns the sum of the exponentials. */
static float exp_row(float *row, size_t n, size_t end, float shift) {
    float s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t j = 0; j < LANES; j++) {
            float e = fs_fast_expf(row[i + j] - shift);
            row[i + j] = e;
            s[j] += e;
        }
    for (; i < n; i++) {
        row[i] = fs_fast_expf(row[i] - shift);
        s[0] += row[i];
    }
    for (; i < end; i++) row[i] = 0.0f;
    float sum = 0.0f;
    for (size_t j = 0; j < LANES; j++) sum += s[j];
    return sum;
}

/* In place: dP -> dS = P * (dP - delta) * scale on [0, n), zeros in
 * [n, end): masked entries get no gradient, whatever dP holds there. */
static void softmax_backward_row(float *ds, const float *p, size_t n, size_t end, float delta, float scale) {
    size_t i = 0;
    for (; i < n; i++) ds[i] = p[i] * (ds[i] - delta) * scale;
    for (; i < end; i++) ds[i] = 0.0f;
}

/* Keys [k0, k0 + kn) of a block that row r sees: all of them, or with the
 * causal mask those up to r (possibly none). */
static size_t keys_seen(const dense *d, size_t r, size_t k0, size_t kn) {
    if (!d->cfg.causal) return kn;
    if (r < k0) return 0;
    return r - k0 + 1 < kn ? r - k0 + 1 : kn;
}
/* Keys a block of rows ending at r1 needs as a whole. */
static size_t block_keys(const dense *d, size_t r1, size_t T) { return d->cfg.causal ? r1 : T; }

static int check_cpu(const dense *d, const fs_tensor *t, fs_error *err) {
    if (t->device.type != FS_DEVICE_CPU || t->dtype != FS_DTYPE_F32)
        return d->host->error_set(err, FS_ERR_UNSUPPORTED, "dense attention: expects f32 CPU tensors");
    return FS_OK;
}

/* Work items run side by side on the host's pool, each calling sgemm on its
 * own thread (the host's sgemm does that inside parallel_for), which beats
 * splitting every small matmul across threads. Forward: one block of rows
 * of one (b, h) per item (blocks are independent, so even a single head
 * keeps every thread busy). Backward: one (b, h) per item, as its blocks
 * accumulate into the same dK and dV. A worker's blocks of scores come
 * from `work`, allocated once per call of the worker. */
typedef struct heads_job {
    const dense *d;
    const fs_attention_args *a;
    float *lse;        /* saved: (B, H, T) */
    atomic_int failed; /* out of memory for a worker's scratch */
} heads_job;

/* Forward of rows [r0, r1) of one (b, h): out = softmax(scale q k^T) v and
 * each row's log-sum-exp, over blocks of keys. Per row: m, the largest
 * score so far, l the sum of e^(score - m); out accumulates e^(s - m) v
 * and is rescaled by e^(m_old - m_new) when m grows. */
static void forward_rows(const dense *d, const fs_attention_args *a, size_t bh, size_t r0, size_t r1, float *lse,
                         float *S) {
    size_t T = a->T, D = d->cfg.head_dim, o = bh * T * D, rows = r1 - r0, nk = block_keys(d, r1, T);
    const float *q = (const float *)a->q.data + o + r0 * D, *k = (const float *)a->k.data + o;
    const float *v = (const float *)a->v.data + o;
    float *out = (float *)a->out.data + o + r0 * D, m[QBLOCK], l[QBLOCK];
    for (size_t k0 = 0; k0 < nk; k0 += KBLOCK) {
        size_t kn = nk - k0 < KBLOCK ? nk - k0 : KBLOCK;
        d->host->sgemm(d->cfg.device, 0, 1, rows, kn, D, d->scale, q, D, k + k0 * D, D, 0.0f, S, KBLOCK);
        for (size_t i = 0; i < rows; i++) {
            float *s = S + i * KBLOCK;
            size_t n = keys_seen(d, r0 + i, k0, kn);
            if (n == 0) { /* nothing visible in this block: the row is unchanged */
                memset(s, 0, kn * sizeof(float));
                continue;
            }
            float mx = row_max(s, n);
            if (k0 == 0) {
                m[i] = mx;
                l[i] = exp_row(s, n, kn, mx);
                continue;
            }
            mx = mx > m[i] ? mx : m[i];
            float rescale = fs_fast_expf(m[i] - mx);
            l[i] = l[i] * rescale + exp_row(s, n, kn, mx);
            m[i] = mx;
            if (rescale != 1.0f)
                for (size_t c = 0; c < D; c++) out[i * D + c] *= rescale;
        }
        /* the first block of keys is seen by every row (key 0): beta 0 starts out */
        d->host->sgemm(d->cfg.device, 0, 0, rows, D, kn, 1.0f, S, KBLOCK, v + k0 * D, D, k0 ? 1.0f : 0.0f, out, D);
    }
    for (size_t i = 0; i < rows; i++) {
        float inv = 1.0f / l[i];
        for (size_t c = 0; c < D; c++) out[i * D + c] *= inv;
        lse[bh * T + r0 + i] = m[i] + logf(l[i]);
    }
}

static void forward_blocks(void *arg, size_t begin, size_t end) {
    heads_job *j = arg;
    const dense *d = j->d;
    size_t T = j->a->T, nb = (T + QBLOCK - 1) / QBLOCK;
    float *S = d->host->alloc(d->cfg.device, QBLOCK * KBLOCK * sizeof(float));
    if (!S) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (size_t item = begin; item < end; item++) {
        size_t bh = item / nb, r0 = item % nb * QBLOCK, r1 = r0 + QBLOCK < T ? r0 + QBLOCK : T;
        forward_rows(d, j->a, bh, r0, r1, j->lse, S);
    }
    d->host->free(d->cfg.device, S);
}

static int dense_forward(void *self, fs_attention_args *a, fs_error *err) {
    dense *d = self;
    ON_DEVICE(d, dense_cuda_forward(d->cuda, a, err));
    size_t B = a->B, T = a->T, H = d->cfg.n_head;
    if (T > d->cfg.max_seq)
        return d->host->error_set(err, FS_ERR_INVALID, "dense attention: T = %zu exceeds max_seq = %zu", T,
                                  d->cfg.max_seq);
    if (check_cpu(d, &a->q, err)) return err->status;
    heads_job job = {d, a, a->saved, 0};
    d->host->parallel_for(B * H * ((T + QBLOCK - 1) / QBLOCK), 1, forward_blocks, &job);
    if (atomic_load(&job.failed))
        return d->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory for a %d x %d block of scores",
                                  QBLOCK, KBLOCK);
    return FS_OK;
}

/* P (rows x kn, row stride KBLOCK) of rows [r0, r1) against keys
 * [k0, k0 + kn), from the scores and the saved log-sum-exp; masked
 * entries are exact zeros. */
static void probs_block(const dense *d, const float *q, const float *k, const float *lse, size_t r0, size_t r1,
                        size_t k0, size_t kn, float *P) {
    size_t D = d->cfg.head_dim;
    d->host->sgemm(d->cfg.device, 0, 1, r1 - r0, kn, D, d->scale, q + r0 * D, D, k + k0 * D, D, 0.0f, P, KBLOCK);
    for (size_t r = r0; r < r1; r++) exp_row(P + (r - r0) * KBLOCK, keys_seen(d, r, k0, kn), kn, lse[r]);
}

/* Backward of one (b, h), FlashAttention-2's order: for each block of keys
 * j, every block of queries i that sees it:
 *   P = exp(scale Q_i K_j^T - lse_i);    dV_j += P^T dO_i
 *   dP = dO_i V_j^T;  dS = P * (dP - delta_i) * scale
 *   dQ_i += dS K_j;   dK_j += dS^T Q_i
 * with delta_i = rowsum(dO_i * O_i) = rowsum(dP_i * P_i) over the whole
 * row, computed once from the forward's output. */
static void backward_head(const dense *d, const fs_attention_args *a, size_t bh, const float *lse, float *P,
                          float *dS, float *delta) {
    size_t T = a->T, D = d->cfg.head_dim, o = bh * T * D;
    fs_device dev = d->cfg.device;
    const float *q = (const float *)a->q.data + o, *k = (const float *)a->k.data + o;
    const float *v = (const float *)a->v.data + o, *dout = (const float *)a->dout.data + o;
    const float *out = (const float *)a->out.data + o;
    float *dq = (float *)a->dq.data + o, *dk = (float *)a->dk.data + o, *dv = (float *)a->dv.data + o;
    for (size_t r = 0; r < T; r++) delta[r] = row_dot(dout + r * D, out + r * D, D);
    memset(dq, 0, T * D * sizeof(float));
    for (size_t k0 = 0; k0 < T; k0 += KBLOCK) {
        size_t kn = T - k0 < KBLOCK ? T - k0 : KBLOCK;
        /* the first block of rows that sees any of these keys */
        size_t first = d->cfg.causal ? k0 / QBLOCK * QBLOCK : 0;
        for (size_t r0 = first; r0 < T; r0 += QBLOCK) {
            size_t r1 = r0 + QBLOCK < T ? r0 + QBLOCK : T, rows = r1 - r0;
            size_t n = d->cfg.causal && r1 - k0 < kn ? r1 - k0 : kn; /* keys any of the rows sees */
            float beta = r0 == first ? 0.0f : 1.0f;                   /* the first initialises dK_j, dV_j */
            probs_block(d, q, k, lse, r0, r1, k0, n, P);
            d->host->sgemm(dev, 1, 0, n, D, rows, 1.0f, P, KBLOCK, dout + r0 * D, D, beta, dv + k0 * D, D);
            d->host->sgemm(dev, 0, 1, rows, n, D, 1.0f, dout + r0 * D, D, v + k0 * D, D, 0.0f, dS, KBLOCK);
            for (size_t r = r0; r < r1; r++) {
                size_t i = r - r0;
                softmax_backward_row(dS + i * KBLOCK, P + i * KBLOCK, keys_seen(d, r, k0, n), n, delta[r], d->scale);
            }
            d->host->sgemm(dev, 0, 0, rows, D, n, 1.0f, dS, KBLOCK, k + k0 * D, D, 1.0f, dq + r0 * D, D);
            d->host->sgemm(dev, 1, 0, n, D, rows, 1.0f, dS, KBLOCK, q + r0 * D, D, beta, dk + k0 * D, D);
            /* with the causal mask, a first block of rows ending before the
             * last of these keys leaves the later ones to the next blocks:
             * beta 0 above initialised only its n rows of dK_j and dV_j */
            if (beta == 0.0f && n < kn) {
                memset(dk + (k0 + n) * D, 0, (kn - n) * D * sizeof(float));
                memset(dv + (k0 + n) * D, 0, (kn - n) * D * sizeof(float));
            }
        }
    }
}

static void backward_heads(void *arg, size_t begin, size_t end) {
    heads_job *j = arg;
    const dense *d = j->d;
    fs_device dev = d->cfg.device;
    float *P = d->host->alloc(dev, (2 * QBLOCK * KBLOCK + j->a->T) * sizeof(float));
    if (!P) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (size_t bh = begin; bh < end; bh++)
        backward_head(d, j->a, bh, j->lse + bh * j->a->T, P, P + QBLOCK * KBLOCK, P + 2 * QBLOCK * KBLOCK);
    d->host->free(dev, P);
}

static int dense_backward(void *self, fs_attention_args *a, fs_error *err) {
    dense *d = self;
    ON_DEVICE(d, dense_cuda_backward(d->cuda, a, err));
    size_t B = a->B, T = a->T, H = d->cfg.n_head;
    if (check_cpu(d, &a->dout, err)) return err->status;
    heads_job job = {d, a, a->saved, 0};
    d->host->parallel_for(B * H, 1, backward_heads, &job);
    if (atomic_load(&job.failed))
        return d->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory for blocks of scores (%zu floats)",
                                  (size_t)2 * QBLOCK * KBLOCK + T);
    return FS_OK;
}

static size_t dense_cache_bytes(void *self, size_t B, size_t context) {
    dense *d = self;
    ON_DEVICE(d, dense_cuda_cache_bytes(d->cuda, B, context));
    if (context == 0) context = d->cfg.max_seq;
    /* K and V, then one row of scores for the decode step */
    return sizeof(cache_header) + (2 * B * d->cfg.n_head * context * d->cfg.head_dim + context) * sizeof(float);
}

static int dense_cache_reset(void *self, void *cache, size_t B, size_t context, fs_error *err) {
    dense *d = self;
    ON_DEVICE(d, dense_cuda_cache_reset(d->cuda, cache, B, context, err));
    (void)err;
    cache_header *h = cache;
    h->B = B;
    h->context = context ? context : d->cfg.max_seq;
    h->len = 0;
    return FS_OK;
}

static int dense_decode(void *self, void *cache, fs_attention_decode_args *a, fs_error *err) {
    dense *d = self;
    ON_DEVICE(d, dense_cuda_decode(d->cuda, cache, a, err));
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

/* ---- attention maps for distillation ---- */

typedef struct scores_job {
    const dense *d;
    const fs_attention_scores_args *a;
    atomic_int failed;
} scores_job;

/* scores() of one (b, h): rows of the (T, T) map in blocks, the scores by
 * sgemm straight into the caller's map, then masked (and for
 * probabilities exponentiated against the saved log-sum-exp). */
static void scores_head(const dense *d, const fs_attention_scores_args *sa, size_t bh) {
    const fs_attention_args *f = sa->fwd;
    size_t T = f->T, D = d->cfg.head_dim, o = bh * T * D;
    const float *q = (const float *)f->q.data + o, *k = (const float *)f->k.data + o;
    const float *lse = (const float *)f->saved + bh * T;
    float *s = (float *)sa->scores.data + bh * T * T;
    for (size_t r0 = 0; r0 < T; r0 += QBLOCK) {
        size_t r1 = r0 + QBLOCK < T ? r0 + QBLOCK : T, n = block_keys(d, r1, T);
        d->host->sgemm(d->cfg.device, 0, 1, r1 - r0, n, D, d->scale, q + r0 * D, D, k, D, 0.0f, s + r0 * T, T);
        for (size_t r = r0; r < r1; r++) {
            float *row = s + r * T;
            size_t seen = keys_seen(d, r, 0, T);
            if (sa->probs)
                exp_row(row, seen, T, lse[r]);
            else
                memset(row + seen, 0, (T - seen) * sizeof(float));
        }
    }
}

static void scores_heads(void *arg, size_t begin, size_t end) {
    scores_job *j = arg;
    for (size_t bh = begin; bh < end; bh++) scores_head(j->d, j->a, bh);
}

static int dense_scores(void *self, fs_attention_scores_args *a, fs_error *err) {
    dense *d = self;
    ON_DEVICE(d, dense_cuda_scores(d->cuda, a, err));
    const fs_attention_args *f = a->fwd;
    if (check_cpu(d, &a->scores, err)) return err->status;
    scores_job job = {d, a, 0};
    d->host->parallel_for(f->B * d->cfg.n_head, 1, scores_heads, &job);
    return FS_OK;
}

/* Backward of scores() for one (b, h), in blocks of rows: S = scale Q K^T
 * (masked entries constant), P its masked softmax, G the incoming gradient
 * (B, H, T, T). For probabilities dS = P * (G - rowsum(G * P)) * scale,
 * for scores dS = G * scale; then dQ_i += dS K and dK += dS^T Q_i. */
static void scores_backward_head(const dense *d, const fs_attention_scores_args *sa, size_t bh, float *dS, float *P) {
    const fs_attention_args *f = sa->fwd;
    size_t T = f->T, D = d->cfg.head_dim, o = bh * T * D;
    fs_device dev = d->cfg.device;
    const float *q = (const float *)f->q.data + o, *k = (const float *)f->k.data + o;
    const float *lse = (const float *)f->saved + bh * T, *G = (const float *)sa->scores.data + bh * T * T;
    float *dq = (float *)f->dq.data + o, *dk = (float *)f->dk.data + o;
    for (size_t r0 = 0; r0 < T; r0 += QBLOCK) {
        size_t r1 = r0 + QBLOCK < T ? r0 + QBLOCK : T, rows = r1 - r0, n = block_keys(d, r1, T);
        if (sa->probs)
            d->host->sgemm(dev, 0, 1, rows, n, D, d->scale, q + r0 * D, D, k, D, 0.0f, P, n);
        for (size_t r = r0; r < r1; r++) {
            float *ds = dS + (r - r0) * n, *p = P + (r - r0) * n;
            size_t seen = keys_seen(d, r, 0, n);
            memcpy(ds, G + r * T, seen * sizeof(float));
            if (sa->probs) {
                exp_row(p, seen, n, lse[r]);
                softmax_backward_row(ds, p, seen, n, row_dot(ds, p, seen), d->scale);
            } else {
                for (size_t c = 0; c < seen; c++) ds[c] *= d->scale;
                memset(ds + seen, 0, (n - seen) * sizeof(float));
            }
        }
        d->host->sgemm(dev, 0, 0, rows, D, n, 1.0f, dS, n, k, D, 1.0f, dq + r0 * D, D);
        d->host->sgemm(dev, 1, 0, n, D, rows, 1.0f, dS, n, q + r0 * D, D, 1.0f, dk, D);
    }
}

static void scores_backward_heads(void *arg, size_t begin, size_t end) {
    scores_job *j = arg;
    const dense *d = j->d;
    size_t T = j->a->fwd->T, rows = T < QBLOCK ? T : QBLOCK;
    float *dS = d->host->alloc(d->cfg.device, 2 * rows * T * sizeof(float));
    if (!dS) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (size_t bh = begin; bh < end; bh++) scores_backward_head(d, j->a, bh, dS, dS + rows * T);
    d->host->free(d->cfg.device, dS);
}

static int dense_scores_backward(void *self, const fs_attention_scores_args *a, fs_error *err) {
    dense *d = self;
    ON_DEVICE(d, dense_cuda_scores_backward(d->cuda, a, err));
    const fs_attention_args *f = a->fwd;
    if (check_cpu(d, &a->scores, err)) return err->status;
    scores_job job = {d, a, 0};
    d->host->parallel_for(f->B * d->cfg.n_head, 1, scores_backward_heads, &job);
    if (atomic_load(&job.failed))
        return d->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory for a %d x %zu block of scores",
                                  QBLOCK, f->T);
    return FS_OK;
}

/* ---- the paged step (serving) ---- */

static size_t dense_paged_block_bytes(void *self, size_t kv_block) {
    dense *d = self;
    return 2 * d->cfg.n_head * kv_block * d->cfg.head_dim * d->kv_es;
}

/* Head h's key (v = 0) or value (v = 1) of the token in `slot` of a block
 * (D stored elements; a head's keys of consecutive slots are adjacent). */
static void *dense_entry(const dense *d, char *block, size_t kv_block, size_t h, int v, size_t slot) {
    size_t D = d->cfg.head_dim;
    return paged_kv_at(block, ((2 * h + (size_t)v) * kv_block + slot) * D, d->kv_es);
}

typedef struct dense_paged_job {
    const dense *d;
    const fs_attention_paged_args *a;
    size_t max_len;
    atomic_int failed;
} dense_paged_job;

/* Items are (row, head): the row's query against its sequence's keys at
 * positions 0..p, one score and one value each, in position order. */
static void dense_paged_rows(void *arg, size_t begin, size_t end) {
    dense_paged_job *j = arg;
    const dense *d = j->d;
    const fs_attention_paged_args *a = j->a;
    size_t H = d->cfg.n_head, D = d->cfg.head_dim, kb = a->kv_block;
    float *w = d->host->alloc(d->cfg.device, j->max_len * sizeof(float));
    const void **vp = d->host->alloc(d->cfg.device, j->max_len * sizeof *vp);
    if (!w || !vp) {
        atomic_store(&j->failed, 1);
        begin = end;
    }
    for (size_t item = begin; item < end; item++) {
        size_t row = item / H, h = item % H;
        const fs_attention_paged_seq *s = &a->seqs[paged_seq_of_row(a, row)];
        size_t n = s->start + (row - s->row) + 1;
        const float *q = (const float *)a->q.data + (row * H + h) * D;
        for (size_t p0 = 0; p0 < n; p0 += kb) {
            char *blk = paged_block(a, s, p0);
            size_t cnt = n - p0 < kb ? n - p0 : kb;
            paged_dots(w + p0, q, dense_entry(d, blk, kb, h, 0, 0), D, cnt, D, d->scale, d->kv_es);
            for (size_t t = 0; t < cnt; t++) vp[p0 + t] = dense_entry(d, blk, kb, h, 1, t);
        }
        paged_softmax_values((float *)a->out.data + (row * H + h) * D, w, vp, n, D, d->kv_es);
    }
    d->host->free(d->cfg.device, w);
    d->host->free(d->cfg.device, (void *)vp);
}

static int dense_paged_step(void *self, fs_attention_paged_args *a, fs_error *err) {
    dense *d = self;
    /* on CUDA the same layout in device memory (dense_paged.cu) */
    ON_DEVICE(d, dense_cuda_paged_step(d->cuda, a, err));
    if (d->cfg.device.type != FS_DEVICE_CPU) /* its blocks are host memory the rows below read */
        return d->host->error_set(err, FS_ERR_UNSUPPORTED,
                                  "dense attention: the paged step (serving) on device type %d is not implemented",
                                  (int)d->cfg.device.type);
    size_t H = d->cfg.n_head, D = d->cfg.head_dim, kb = a->kv_block;
    /* causal whatever the layer says, as decode: later tokens do not exist yet */
    int rc = paged_check(d->host, "dense", a, err);
    if (rc) return rc;
    /* every new token's key and value first: later rows of a chunk read them */
    for (size_t i = 0; i < a->n_seqs; i++) {
        const fs_attention_paged_seq *s = &a->seqs[i];
        for (size_t t = 0; t < s->n_new; t++) {
            size_t p = s->start + t, row = s->row + t;
            char *blk = paged_block(a, s, p);
            for (size_t h = 0; h < H; h++) {
                paged_kv_put(dense_entry(d, blk, kb, h, 0, p % kb), (const float *)a->k.data + (row * H + h) * D, D,
                             d->kv_es);
                paged_kv_put(dense_entry(d, blk, kb, h, 1, p % kb), (const float *)a->v.data + (row * H + h) * D, D,
                             d->kv_es);
            }
        }
    }
    dense_paged_job job = {d, a, paged_max_len(a), 0};
    d->host->parallel_for(a->n_rows * H, 1, dense_paged_rows, &job);
    if (atomic_load(&job.failed))
        return d->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of memory for %zu scores", job.max_len);
    return FS_OK;
}

static const fs_attention_vtable dense_vtable = {
    .struct_size = sizeof(fs_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL | FS_ATTENTION_BIDIRECTIONAL | FS_ATTENTION_DECODE | FS_ATTENTION_SCORES |
             FS_ATTENTION_PAGED | DENSE_DEVICES | FS_ATTENTION_PAGED_BF16,
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
    .paged_block_bytes = dense_paged_block_bytes,
    .paged_step = dense_paged_step,
};

static const fs_plugin_descriptor dense_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "dense",
    .version = "1.1.0",
    .summary = "exact softmax(QK^T/sqrt(d))V attention in blocks (online softmax): O(T) memory in training, K/V "
               "cache in generation, paged blocks in serving",
    .params = NULL,
    .n_params = 0,
    .vtable = &dense_vtable,
    .vtable_size = sizeof(dense_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(dense_descriptor)
