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
 * reset with; a sequence's cache is reset once and reused).
 *
 * The paged step (serving) reads the pool in device memory through block
 * tables that arrive in host memory: each step packs them, with each
 * row's position, into page-locked staging memory, queues one upload into
 * a device buffer of the instance, then the kernels (dense_paged.cu). */
#include "dense_cuda.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../paged.h"
#include "attention_cuda.h"
#include "fastserve/backend.h"
#include "paged_math.h"

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
    size_t kv_es;         /* bytes of a key or value element in paged blocks: 4 (f32) or 2 (bf16) */
    int32_t *pg_host;     /* (pg_host_n) page-locked: the step's tables as packed for the device */
    size_t pg_host_n;
    void *pg_uploaded;    /* event: the last upload from pg_host is done */
    int32_t *pg_dev;      /* (pg_dev_n) device: the tables the kernels read */
    size_t pg_dev_n;
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
    paged_config_copy(&dc->cfg, cfg);
    dc->kv_es = paged_kv_es(cfg);
    dc->scale = 1.0f / sqrtf((float)cfg->head_dim);
    pthread_mutex_init(&dc->lock, NULL);
    *out = dc;
    return FS_OK;
}

void dense_cuda_destroy(dense_cuda *dc) {
    if (!dc) return;
    dc->host->free(dc->cfg.device, dc->delta);
    dc->host->free(dc->cfg.device, dc->ds);
    dc->host->free(dc->cfg.device, dc->pg_dev);
    if (dc->pg_uploaded) fs_att_cuda_event_wait(dc->pg_uploaded); /* the last upload has read pg_host */
    fs_att_cuda_event_destroy(dc->pg_uploaded);
    fs_att_cuda_host_free(dc->pg_host);
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

/* ---- the paged step (serving) ---- */

static const char *dtype_name(int32_t dtype) {
    switch (dtype) {
    case FS_DTYPE_F32: return "f32";
    case FS_DTYPE_F16: return "f16";
    case FS_DTYPE_BF16: return "bf16";
    case FS_DTYPE_I32: return "i32";
    case FS_DTYPE_F64: return "f64";
    default: return "an unknown type";
    }
}

/* q, k, v and out: f32 on this device, (N, H, D) elements each. Their data
 * is device memory: only the descriptors are read here. */
static int paged_tensors(const dense_cuda *dc, const fs_attention_paged_args *a, fs_error *err) {
    const fs_tensor *t[] = {&a->q, &a->k, &a->v, &a->out};
    const char *name[] = {"q", "k", "v", "out"};
    size_t H = dc->cfg.n_head, D = dc->cfg.head_dim;
    for (size_t i = 0; i < 4; i++) {
        if (t[i]->device.type != FS_DEVICE_CUDA || t[i]->device.index != dc->cfg.device.index)
            return dc->host->error_set(err, FS_ERR_UNSUPPORTED,
                                       "dense attention: the paged step's %s must be on cuda:%d, like the instance",
                                       name[i], (int)dc->cfg.device.index);
        if (t[i]->dtype != FS_DTYPE_F32)
            return dc->host->error_set(err, FS_ERR_UNSUPPORTED,
                                       "dense attention: the paged step on CUDA takes f32 q, k, v and out; %s is %s",
                                       name[i], dtype_name(t[i]->dtype));
        if ((a->n_rows && !t[i]->data) || fs_tensor_numel(t[i]) != a->n_rows * H * D)
            return dc->host->error_set(err, FS_ERR_INVALID,
                                       "dense attention: the paged step's %s holds %zu elements, not (N, H, D) = "
                                       "(%zu, %zu, %zu)",
                                       name[i], t[i]->data ? fs_tensor_numel(t[i]) : 0, a->n_rows, H, D);
    }
    return FS_OK;
}

/* The pool, its blocks and the tables as the kernels need them: the
 * layout of the CPU (dense.c's paged_block_bytes), head widths the kernels
 * serve, blocks 16-byte aligned (128-bit loads), the host's contract
 * (paged_check) and every position a row reads in a block. */
static int paged_layout(const dense_cuda *dc, const fs_attention_paged_args *a, fs_error *err) {
    size_t H = dc->cfg.n_head, D = dc->cfg.head_dim, kb = a->kv_block, es = dc->kv_es;
    if (!fs_pg_fits(D, es))
        return dc->host->error_set(err, FS_ERR_UNSUPPORTED,
                                   "dense attention: the paged step on CUDA serves head widths up to %d in multiples "
                                   "of %zu (%s blocks), not %zu",
                                   FS_PG_DMAX, fs_pg_chunk(es), es == 2 ? "bf16" : "f32", D);
    /* the host may round blocks up (attention.h: to 64 bytes), never down */
    if (kb == 0 || a->block_bytes < 2 * H * kb * D * es || a->block_bytes % 16)
        return dc->host->error_set(err, FS_ERR_INVALID,
                                   "dense attention: paged blocks of %zu tokens take %zu bytes (blocks 16-byte "
                                   "aligned), the step says %zu",
                                   kb, 2 * H * kb * D * es, a->block_bytes);
    if (!a->pool || (uintptr_t)a->pool % 16)
        return dc->host->error_set(err, FS_ERR_INVALID,
                                   "dense attention: the paged step needs a pool in device memory, 16-byte aligned");
    /* paged_check's tensor test is the CPU's (ours passed above); the rest
     * reads the host's tables only */
    fs_attention_paged_args c = *a;
    c.q.device.type = FS_DEVICE_CPU;
    int rc = paged_check(dc->host, "dense", &c, err);
    if (rc) return rc;
    for (size_t i = 0; i < a->n_seqs; i++) {
        const fs_attention_paged_seq *s = &a->seqs[i];
        if (s->start + s->n_new > INT32_MAX)
            return dc->host->error_set(err, FS_ERR_INVALID, "dense attention: paged step sequence %zu: position %zu "
                                       "past what the device's tables hold", i, s->start + s->n_new - 1);
        for (size_t b = 0; b < (s->start + s->n_new + kb - 1) / kb; b++)
            if (s->blocks[b] < 0)
                return dc->host->error_set(err, FS_ERR_INVALID,
                                           "dense attention: paged step sequence %zu has no block for positions from "
                                           "%zu (dense attention reads every one)", i, b * kb);
    }
    return FS_OK;
}

/* Int32s of the step's packed tables: (position, offset of its sequence's
 * table) per row, then each sequence's table up to its last new position. */
static size_t paged_table_ints(const fs_attention_paged_args *a) {
    size_t n = 2 * a->n_rows;
    for (size_t i = 0; i < a->n_seqs; i++) n += (a->seqs[i].start + a->seqs[i].n_new + a->kv_block - 1) / a->kv_block;
    return n;
}

/* Grow-only staging (page-locked) and device buffers of n int32s. */
static int paged_buffers(dense_cuda *dc, size_t n, fs_error *err) {
    if (n > dc->pg_host_n) {
        fs_att_cuda_host_free(dc->pg_host);
        dc->pg_host = NULL, dc->pg_host_n = 0;
        int rc = fail(dc, err, fs_att_cuda_host_alloc((void **)&dc->pg_host, n * sizeof(int32_t)),
                      "cudaMallocHost for the paged step's tables");
        if (rc) return rc;
        dc->pg_host_n = n;
    }
    if (n > dc->pg_dev_n) {
        dc->host->free(dc->cfg.device, dc->pg_dev);
        dc->pg_dev = dc->host->alloc(dc->cfg.device, n * sizeof(int32_t));
        dc->pg_dev_n = dc->pg_dev ? n : 0;
        if (!dc->pg_dev)
            return dc->host->error_set(err, FS_ERR_NOMEM, "dense attention: out of device memory for %zu table entries",
                                       n);
    }
    return FS_OK;
}

/* The step's tables packed in dc->pg_host, then one upload into dc->pg_dev
 * queued on the stream.
 *
 * Why page-locked staging: fs_att_cuda_memcpy is a bare cudaMemcpyAsync.
 * From pageable memory (a malloc'd array) CUDA stages the bytes itself and
 * "may" synchronise with the stream first: the source is read by the time
 * the call returns in practice, but CUDA does not promise it (the cuda
 * backend's copy synchronises the stream after such a copy for that
 * reason, which here would stall the host every step until the model's
 * earlier ops ran). From page-locked memory the copy is asynchronous and
 * reads the source when the stream reaches it, so the source must stay as
 * it is until then: it is the instance's own buffer, and before a step
 * rewrites it the host waits on the event recorded after the last upload
 * (long done in a serving loop, which reads every step's logits).
 *
 * The device buffer is rewritten by the next step's upload, queued on the
 * same stream after this step's kernels: stream order keeps it until they
 * have read it. Growing it frees the old one through the host (cudaFree,
 * which waits for the device's queued work). One step at a time per
 * instance, as the engine runs them. */
static int paged_upload(dense_cuda *dc, const fs_attention_paged_args *a, void *stream, fs_error *err) {
    size_t n = paged_table_ints(a), kb = a->kv_block, off = 0;
    if (n > INT32_MAX)
        return dc->host->error_set(err, FS_ERR_INVALID, "dense attention: %zu table entries in one paged step", n);
    int rc = fail(dc, err, fs_att_cuda_event_wait(dc->pg_uploaded), "waiting for the last paged tables' upload");
    if (!rc) rc = paged_buffers(dc, n, err);
    if (rc) return rc;
    int32_t *rows = dc->pg_host, *tables = rows + 2 * a->n_rows;
    for (size_t i = 0; i < a->n_seqs; i++) {
        const fs_attention_paged_seq *s = &a->seqs[i];
        size_t need = (s->start + s->n_new + kb - 1) / kb;
        memcpy(tables + off, s->blocks, need * sizeof(int32_t));
        for (size_t t = 0; t < s->n_new; t++) {
            rows[2 * (s->row + t)] = (int32_t)(s->start + t);
            rows[2 * (s->row + t) + 1] = (int32_t)off;
        }
        off += need;
    }
    rc = fail(dc, err, fs_att_cuda_memcpy(stream, dc->pg_dev, dc->pg_host, n * sizeof(int32_t), FS_COPY_HOST_TO_DEVICE),
              "the paged tables' upload");
    if (!rc) rc = fail(dc, err, fs_att_cuda_event_record(stream, dc->pg_uploaded), "cudaEventRecord");
    return rc;
}

int dense_cuda_paged_step(dense_cuda *dc, const fs_attention_paged_args *a, fs_error *err) {
    size_t H = dc->cfg.n_head, D = dc->cfg.head_dim;
    int rc = paged_tensors(dc, a, err);
    if (!rc) rc = paged_layout(dc, a, err);
    if (!rc) rc = fail(dc, err, fs_att_cuda_set_device(dc->cfg.device.index), "cudaSetDevice");
    if (rc || a->n_rows == 0) return rc;
    if (!dc->pg_uploaded && (rc = fail(dc, err, fs_att_cuda_event_create(&dc->pg_uploaded), "cudaEventCreate")))
        return rc;
    void *s = stream_of(dc);
    if ((rc = paged_upload(dc, a, s, err))) return rc;
    fs_paged_cuda_args k = {a->q.data, a->k.data,     a->v.data,   a->out.data, a->pool,     dc->pg_dev,
                            dc->pg_dev + 2 * a->n_rows, a->n_rows, H,           D,           a->kv_block,
                            a->block_bytes,             dc->kv_es, dc->scale};
    /* two kernels in stream order: every store lands before any row reads */
    rc = fail(dc, err, fs_paged_cuda_store(s, &k), "the paged step's stores");
    if (!rc) rc = fail(dc, err, fs_paged_cuda_attend(s, &k), "the paged step's attention");
    return rc;
}
