/* lsh.c — Reformer LSH attention (Kitaev, Kaiser, Levskaya 2020).
 *
 * Shared QK: the plugin ignores K (FS_ATTENTION_SHARED_QK) and writes dk = 0;
 * the key of token j is its normalised query k_j = q_j / |q_j| (precisely
 * q_j / sqrt(|q_j|^2 + 1e-12)). The runtime still projects K; it gets no
 * gradient, so its projection columns only see weight decay.
 *
 * Semantics, pinned by tests/unit/test_lsh.c against an explicit mask:
 *   - n_hashes rounds; round r has a random rotation R_r (D x n_buckets/2)
 *     and token t's bucket is argmax([q_t R_r; -q_t R_r]) (first max wins).
 *     The rotations are drawn once from host->seed (run seed + layer scope)
 *     and registered as the parameter "rotations" (n_hashes, D, n_buckets/2)
 *     with weight decay 0 whose gradient stays 0, so the optimizer never
 *     moves it and checkpoints carry it.
 *   - per round, tokens are sorted by (bucket, position) and the sorted order
 *     is cut into chunks of `chunk` tokens; a query sees the tokens of its
 *     own chunk, of `lookback` chunks before and `lookahead` chunks after
 *     (no wrap-around), and, when causal, only those at positions <= its own.
 *   - the candidates of all rounds are united, each key counted once, and a
 *     single softmax runs over the union: that is exactly the log-sum-exp
 *     combination of per-round softmaxes with duplicates removed.
 *   - score q_i . k_j / sqrt(D); a token's score with itself is -1e5, so it
 *     attends to itself only when nothing else is available (e.g. token 0).
 *   With n_hashes = 1 and chunk >= T every query sees every earlier token:
 *   exact shared-QK attention with the self mask.
 *
 * Cost per layer: the hashing is a (B*H*T, D) x (D, n_buckets/2) sgemm
 * per round, done in slices of at most 16 MiB of projections, the sort a
 * counting sort (O(T) per round), and each query
 * scores at most n_hashes * chunk * (lookback + lookahead + 1) keys. The
 * work runs in one parallel_for over (b, h), gathered rows, no T x T buffer.
 * Training saves per (b, h) the buckets, the sorted orders and one
 * log-sum-exp per query (O(n_hashes * T)); backward recomputes the
 * candidates and the probabilities from them, in two gathers (rows for dq,
 * then the columns of each key for dv and the key's gradient) so that no
 * thread scatters into rows far from the ones it reads. Work memory is
 * O(B * H * T * D) plus the projection slice.
 *
 * Generation (decode): the cache keeps every past key (normalised), value
 * and bucket ids per round (it grows with the context; not bounded). A new
 * token at position p attends, with the same scores and self mask, to every
 * earlier token that shares its bucket in at least one round, plus the
 * `decode_window` most recent tokens, plus itself. That is not the chunked
 * forward (whose chunks cut across bucket borders); it equals the forward
 * exactly when decode_window >= p for every step and n_hashes = 1, chunk >= T
 * (both are then full shared-QK attention), which the tests check.
 *
 * Serving (the paged step, attention.h) keeps the same per token in blocks
 * of the pool: per head, normalised keys (kv_block, D), values (kv_block, D)
 * and buckets (kv_block, n_hashes), and attends exactly as decode does. */
#include "lsh.h"
#include "paged.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cache_header {
    size_t B, context, len;
    size_t pad[5];
} cache_header;

static void lsh_destroy(void *self) {
    lsh_plugin *l = self;
    if (!l) return;
    fs_device cpu = {FS_DEVICE_CPU, 0};
#if FS_CUDA_KERNELS
    lsh_cuda_destroy(l);
#endif
    l->host->free(cpu, l->scratch);
    l->host->free(cpu, l);
}

static void *scratch(lsh_plugin *l, size_t bytes) {
    fs_device cpu = {FS_DEVICE_CPU, 0}; /* the CPU path's */
    if (bytes <= l->scratch_bytes) return l->scratch;
    l->host->free(cpu, l->scratch);
    l->scratch = l->host->alloc(cpu, bytes);
    l->scratch_bytes = l->scratch ? bytes : 0;
    return l->scratch;
}

static int bad(const lsh_plugin *l, fs_plugin_ctx *ctx, fs_error *err, const char *key, const char *why) {
    return l->host->error_set(err, FS_ERR_INVALID, "%s: %s", l->host->config_where(ctx, key), why);
}

static int lsh_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                      fs_error *err) {
    *self = NULL;
    if (cfg->device.type != FS_DEVICE_CPU && !(cfg->device.type == FS_DEVICE_CUDA && LSH_DEVICES))
        return host->error_set(err, FS_ERR_UNSUPPORTED, "lsh attention: device type %d is not implemented%s",
                               (int)cfg->device.type,
                               cfg->device.type == FS_DEVICE_CUDA ? " (this build has no CUDA toolkit)" : "");
    fs_device cpu = {FS_DEVICE_CPU, 0}; /* the instance is host memory */
    lsh_plugin *l = host->alloc(cpu, sizeof *l);
    if (!l) return host->error_set(err, FS_ERR_NOMEM, "lsh attention: out of memory");
    memset(l, 0, sizeof *l);
    l->host = host;
    paged_config_copy(&l->cfg, cfg);
    l->kv_es = paged_kv_es(cfg);
    l->scale = 1.0f / sqrtf((float)cfg->head_dim);
    int rc = FS_OK;
    int64_t nh = host->config_int(ctx, "n_hashes"), nb = host->config_int(ctx, "n_buckets");
    int64_t bs = host->config_int(ctx, "bucket_size"), ch = host->config_int(ctx, "chunk");
    int64_t lb = host->config_int(ctx, "lookback"), la = host->config_int(ctx, "lookahead");
    int64_t dw = host->config_int(ctx, "decode_window");
    if (nh <= 0) {
        rc = bad(l, ctx, err, "n_hashes", "must be a positive number of hash rounds");
        goto fail;
    }
    if (nb != 0 && (nb < 2 || nb % 2 != 0)) {
        rc = bad(l, ctx, err, "n_buckets",
                 "must be an even number >= 2 (the rotation gives n_buckets / 2 directions and their opposites), or 0 "
                 "to derive it from bucket_size");
        goto fail;
    }
    if (nb == 0 && bs <= 0) {
        rc = bad(l, ctx, err, "bucket_size", "must be a positive number of tokens per bucket");
        goto fail;
    }
    if (ch <= 0) {
        rc = bad(l, ctx, err, "chunk", "must be a positive number of tokens");
        goto fail;
    }
    if (lb < 0) {
        rc = bad(l, ctx, err, "lookback", "must be 0 or more chunks");
        goto fail;
    }
    if (la < 0) {
        rc = bad(l, ctx, err, "lookahead", "must be 0 or more chunks");
        goto fail;
    }
    if (dw < 0) {
        rc = bad(l, ctx, err, "decode_window", "must be 0 or more tokens");
        goto fail;
    }
    if (nb == 0) { /* about max_seq / bucket_size buckets, even, at least 2 */
        size_t per = (size_t)bs * 2;
        nb = (int64_t)(2 * ((cfg->max_seq + per - 1) / per));
        if (nb < 2) nb = 2;
    }
    l->n_hashes = (size_t)nh;
    l->n_buckets = (size_t)nb;
    l->chunk = (size_t)ch;
    l->lookback = (size_t)lb;
    l->lookahead = (size_t)la;
    l->decode_window = (size_t)dw;
    size_t shape[3] = {l->n_hashes, cfg->head_dim, l->n_buckets / 2};
    fs_tensor p, g;
    if ((rc = host->register_param(ctx, "rotations", 3, shape, 0, &p, &g, err))) goto fail;
    l->rot = p.data;
#if FS_CUDA_KERNELS
    if (cfg->device.type == FS_DEVICE_CUDA) { /* device memory: filled on the host, copied over */
        if ((rc = lsh_cuda_create(l, shape[0] * shape[1] * shape[2], host->seed(ctx), err))) goto fail;
        *self = l;
        return FS_OK;
    }
#endif
    lsh_fill_rotations(l->rot, shape[0] * shape[1] * shape[2], host->seed(ctx));
    *self = l;
    return FS_OK;
fail:
    lsh_destroy(l);
    return rc;
}

static size_t lsh_saved_bytes(void *self, size_t B, size_t T) {
    lsh_plugin *l = self;
    lsh_saved_layout s;
    lsh_saved_layout_for(l->n_hashes, T, &s);
    return B * l->cfg.n_head * s.per_bh;
}

/* ---- training ---- */

typedef struct job {
    lsh_plugin *l;
    size_t T, D, half, round, mmax;
    size_t row0, slice; /* hashing: the first row and the rows of one projection slice */
    int causal;
    const float *q, *v, *dout;
    float *out, *dq, *dv;
    const float *proj; /* (B*H*T, half) projections of the current round */
    char *saved;
    lsh_saved_layout lay;
    float *kn;       /* (B*H, T, D) normalised keys */
    float *dts;      /* (B*H, T) backward: rowsum(dP * P) of each query */
    int32_t *stamp;  /* (B*H, T) */
    int32_t *cand;   /* (B*H, mmax) */
    float *sc, *dp;  /* (B*H, mmax) */
} job;

/* Buckets of rows [row0, row0 + slice rows) of the (B*H*T) token rows for
 * one round, from their projections. */
static void bucket_rows(void *arg, size_t begin, size_t end) {
    job *j = arg;
    size_t T = j->T, half = j->half, r = j->round;
    for (size_t g = begin; g < end; g++) {
        size_t row = j->row0 + g, bh = row / T, t = row % T;
        int32_t *bk = (int32_t *)(j->saved + bh * j->lay.per_bh + j->lay.bucket) + r * T;
        bk[t] = lsh_argmax_bucket(j->proj + g * half, half);
    }
}

/* The counting sort of one round by (bucket, position). */
static void sort_items(void *arg, size_t begin, size_t end) {
    job *j = arg;
    size_t T = j->T, nb = 2 * j->half, r = j->round;
    for (size_t bh = begin; bh < end; bh++) {
        char *base = j->saved + bh * j->lay.per_bh;
        int32_t *bk = (int32_t *)(base + j->lay.bucket) + r * T;
        int32_t *ord = (int32_t *)(base + j->lay.order) + r * T;
        int32_t *wh = (int32_t *)(base + j->lay.where) + r * T;
        /* c[b] is the next free slot of bucket b */
        int32_t stackc[1024];
        int32_t *c = nb + 1 <= 1024 ? stackc : malloc((nb + 1) * sizeof *c);
        if (!c) abort();
        memset(c, 0, (nb + 1) * sizeof *c);
        for (size_t t = 0; t < T; t++) c[bk[t] + 1]++;
        for (size_t b = 0; b < nb; b++) c[b + 1] += c[b];
        for (size_t t = 0; t < T; t++) {
            int32_t s = c[bk[t]]++;
            ord[s] = (int32_t)t;
            wh[t] = s;
        }
        if (c != stackc) free(c);
    }
}

/* The union of the candidates of query t (each key once), into cand. */
static size_t candidates(const job *j, const char *base, int32_t *stamp, int32_t *cand, size_t t) {
    const lsh_plugin *l = j->l;
    size_t T = j->T, ch = l->chunk, m = 0;
    const int32_t *ord = (const int32_t *)(base + j->lay.order), *wh = (const int32_t *)(base + j->lay.where);
    int32_t mark = (int32_t)t + 1;
    for (size_t r = 0; r < l->n_hashes; r++) {
        size_t c = (size_t)wh[r * T + t] / ch;
        size_t lo = (c >= l->lookback ? c - l->lookback : 0) * ch;
        size_t hi = (c + l->lookahead + 1) * ch;
        if (hi > T || hi / ch != c + l->lookahead + 1) hi = T;
        const int32_t *o = ord + r * T;
        for (size_t u = lo; u < hi; u++) {
            int32_t k = o[u];
            if (j->causal && (size_t)k > t) continue;
            if (stamp[k] == mark) continue;
            stamp[k] = mark;
            cand[m++] = k;
        }
    }
    return m;
}

/* A dot product the compiler vectorises: eight independent sums. */
static inline float dotf(const float *a, const float *b, size_t D) {
    float acc[8] = {0};
    size_t c = 0;
    for (; c + 8 <= D; c += 8)
        for (size_t k = 0; k < 8; k++) acc[k] += a[c + k] * b[c + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; c < D; c++) s += a[c] * b[c];
    return s;
}

static void normalise(const float *q, float *kn, size_t T, size_t D) {
    for (size_t t = 0; t < T; t++) {
        float s = LSH_EPS;
        for (size_t c = 0; c < D; c++) s += q[t * D + c] * q[t * D + c];
        float inv = 1.0f / sqrtf(s);
        for (size_t c = 0; c < D; c++) kn[t * D + c] = q[t * D + c] * inv;
    }
}

static void forward_items(void *arg, size_t begin, size_t end) {
    job *j = arg;
    size_t T = j->T, D = j->D;
    float scale = j->l->scale;
    for (size_t bh = begin; bh < end; bh++) {
        const char *base = j->saved + bh * j->lay.per_bh;
        float *lse = (float *)(j->saved + bh * j->lay.per_bh + j->lay.lse);
        const float *q = j->q + bh * T * D, *v = j->v + bh * T * D;
        float *out = j->out + bh * T * D, *kn = j->kn + bh * T * D, *sc = j->sc + bh * j->mmax;
        int32_t *stamp = j->stamp + bh * T, *cand = j->cand + bh * j->mmax;
        normalise(q, kn, T, D);
        memset(stamp, 0, T * sizeof *stamp);
        /* queries in the first round's sorted order: neighbours share most candidates, so the
         * gathered keys and values stay in cache */
        const int32_t *order0 = (const int32_t *)(base + j->lay.order);
        for (size_t u = 0; u < T; u++) {
            size_t t = (size_t)order0[u];
            size_t m = candidates(j, base, stamp, cand, t);
            const float *qt = q + t * D;
            float mx = -INFINITY;
            for (size_t i = 0; i < m; i++) {
                size_t k = (size_t)cand[i];
                float s;
                if (k == t) {
                    s = LSH_SELF_SCORE;
                } else {
                    s = dotf(qt, kn + k * D, D) * scale;
                }
                sc[i] = s;
                mx = s > mx ? s : mx;
            }
            float sum = 0.0f, *o = out + t * D;
            for (size_t i = 0; i < m; i++) {
                sc[i] = fs_fast_expf(sc[i] - mx);
                sum += sc[i];
            }
            memset(o, 0, D * sizeof(float));
            for (size_t i = 0; i < m; i++) {
                float e = sc[i];
                const float *vv = v + (size_t)cand[i] * D;
                for (size_t c = 0; c < D; c++) o[c] += e * vv[c];
            }
            float inv = 1.0f / sum;
            for (size_t c = 0; c < D; c++) o[c] *= inv;
            lse[t] = mx + logf(sum);
        }
    }
}

/* The queries that see key k: query i sees k in round r when chunk_r(k)
 * lies in [chunk_r(i) - lookback, chunk_r(i) + lookahead], that is when
 * chunk_r(i) lies in [chunk_r(k) - lookahead, chunk_r(k) + lookback]. */
static size_t rev_candidates(const job *j, const char *base, int32_t *stamp, int32_t *cand, size_t k) {
    const lsh_plugin *l = j->l;
    size_t T = j->T, ch = l->chunk, m = 0;
    const int32_t *ord = (const int32_t *)(base + j->lay.order), *wh = (const int32_t *)(base + j->lay.where);
    int32_t mark = -(int32_t)k - 1; /* distinct from the forward marks t + 1 */
    for (size_t r = 0; r < l->n_hashes; r++) {
        size_t c = (size_t)wh[r * T + k] / ch;
        size_t lo = (c >= l->lookahead ? c - l->lookahead : 0) * ch;
        size_t hi = (c + l->lookback + 1) * ch;
        if (hi > T || hi / ch != c + l->lookback + 1) hi = T;
        const int32_t *o = ord + r * T;
        for (size_t u = lo; u < hi; u++) {
            int32_t i = o[u];
            if (j->causal && (size_t)i < k) continue;
            if (stamp[i] == mark) continue;
            stamp[i] = mark;
            cand[m++] = i;
        }
    }
    return m;
}

/* Two gathers, no scatter: first each query's row (dq through the scores
 * and rowsum(dP * P) kept per query), then each key's column (dv, and the
 * key's gradient, taken back to dq through the normalisation). */
static void backward_items(void *arg, size_t begin, size_t end) {
    job *j = arg;
    size_t T = j->T, D = j->D;
    float scale = j->l->scale;
    for (size_t bh = begin; bh < end; bh++) {
        const char *base = j->saved + bh * j->lay.per_bh;
        const float *lse = (const float *)(base + j->lay.lse);
        const float *q = j->q + bh * T * D, *v = j->v + bh * T * D, *dout = j->dout + bh * T * D;
        float *dq = j->dq + bh * T * D, *dv = j->dv + bh * T * D;
        float *kn = j->kn + bh * T * D, *Dts = j->dts + bh * T; /* (T) rowsum(dP * P) */
        float *p = j->sc + bh * j->mmax, *dp = j->dp + bh * j->mmax;
        int32_t *stamp = j->stamp + bh * T, *cand = j->cand + bh * j->mmax;
        normalise(q, kn, T, D);
        memset(stamp, 0, T * sizeof *stamp);
        const int32_t *order0 = (const int32_t *)(base + j->lay.order);
        for (size_t u = 0; u < T; u++) { /* the forward's order, for the same reason */
            size_t t = (size_t)order0[u];
            size_t m = candidates(j, base, stamp, cand, t);
            const float *qt = q + t * D, *dot = dout + t * D;
            float Dt = 0.0f, lt = lse[t];
            for (size_t i = 0; i < m; i++) {
                size_t k = (size_t)cand[i];
                p[i] = k == t ? LSH_SELF_SCORE : dotf(qt, kn + k * D, D) * scale;
            }
            for (size_t i = 0; i < m; i++) p[i] = fs_fast_expf(p[i] - lt);
            for (size_t i = 0; i < m; i++) {
                dp[i] = dotf(dot, v + (size_t)cand[i] * D, D);
                Dt += p[i] * dp[i];
            }
            Dts[t] = Dt;
            float *dqt = dq + t * D;
            memset(dqt, 0, D * sizeof(float));
            for (size_t i = 0; i < m; i++) {
                size_t k = (size_t)cand[i];
                if (k == t) continue; /* the self score is a constant */
                float ds = p[i] * (dp[i] - Dt) * scale;
                const float *kk = kn + k * D;
                for (size_t c = 0; c < D; c++) dqt[c] += ds * kk[c];
            }
        }
        float dk[512], *dkp = D <= 512 ? dk : NULL;
        if (!dkp) dkp = malloc(D * sizeof(float));
        if (!dkp) abort();
        for (size_t u = 0; u < T; u++) {
            size_t k = (size_t)order0[u];
            size_t m = rev_candidates(j, base, stamp, cand, k);
            const float *kk = kn + k * D, *vk = v + k * D, *qk = q + k * D;
            for (size_t i = 0; i < m; i++) {
                size_t t = (size_t)cand[i];
                p[i] = t == k ? LSH_SELF_SCORE : dotf(q + t * D, kk, D) * scale;
            }
            for (size_t i = 0; i < m; i++) p[i] = fs_fast_expf(p[i] - lse[cand[i]]);
            float *dvk = dv + k * D;
            memset(dvk, 0, D * sizeof(float));
            memset(dkp, 0, D * sizeof(float));
            for (size_t i = 0; i < m; i++) {
                size_t t = (size_t)cand[i];
                const float *dot = dout + t * D;
                for (size_t c = 0; c < D; c++) dvk[c] += p[i] * dot[c];
                if (t == k) continue;
                float ds = p[i] * (dotf(dot, vk, D) - Dts[t]) * scale;
                const float *qt = q + t * D;
                for (size_t c = 0; c < D; c++) dkp[c] += ds * qt[c];
            }
            /* through k = q * (|q|^2 + eps)^(-1/2): dq += inv dk - inv^3 q (q . dk) */
            float ss = LSH_EPS, qd = 0.0f;
            for (size_t c = 0; c < D; c++) ss += qk[c] * qk[c], qd += qk[c] * dkp[c];
            float inv = 1.0f / sqrtf(ss), f = inv * inv * inv * qd;
            for (size_t c = 0; c < D; c++) dq[k * D + c] += inv * dkp[c] - f * qk[c];
        }
        if (dkp != dk) free(dkp);
    }
}

static int check_args(lsh_plugin *l, const fs_attention_args *a, fs_error *err) {
    if (a->T > l->cfg.max_seq)
        return l->host->error_set(err, FS_ERR_INVALID, "lsh attention: T = %zu exceeds max_seq = %zu", a->T,
                                  l->cfg.max_seq);
    if (a->q.device.type != FS_DEVICE_CPU || a->q.dtype != FS_DTYPE_F32)
        return l->host->error_set(err, FS_ERR_UNSUPPORTED, "lsh attention: expects f32 CPU tensors");
    return FS_OK;
}

/* Work memory: a slice of projections (forward) or the per-query
 * rowsum(dP * P) (backward), the normalised keys, stamps and the per-(b, h)
 * candidate buffers. */
static int setup(lsh_plugin *l, const fs_attention_args *a, job *j, int backward, fs_error *err) {
    size_t B = a->B, T = a->T, H = l->cfg.n_head, D = l->cfg.head_dim, BH = B * H;
    memset(j, 0, sizeof *j);
    j->l = l;
    j->T = T;
    j->D = D;
    j->half = l->n_buckets / 2;
    j->causal = l->cfg.causal;
    size_t span = l->chunk * (l->lookback + l->lookahead + 1);
    if (span / l->chunk != l->lookback + l->lookahead + 1 || span > T) span = T;
    if (span == 0) span = 1; /* T = 0 */
    j->mmax = l->n_hashes > T / span ? T : l->n_hashes * span < T ? l->n_hashes * span : T; /* no overflow */
    lsh_saved_layout_for(l->n_hashes, T, &j->lay);
    /* projections in slices of at most 2^22 floats (16 MiB), never (B*H*T, n_buckets / 2) at once */
    j->slice = ((size_t)1 << 22) / j->half;
    if (j->slice < 64) j->slice = 64;
    if (j->slice > BH * T) j->slice = BH * T;
    size_t first = backward ? BH * T : j->slice * j->half;
    size_t bytes = lsh_align64(first * sizeof(float)) + lsh_align64(BH * T * D * sizeof(float)) +
                   lsh_align64(BH * T * sizeof(int32_t)) + lsh_align64(BH * j->mmax * sizeof(int32_t)) +
                   2 * lsh_align64(BH * j->mmax * sizeof(float));
    char *s = scratch(l, bytes);
    if (!s) return l->host->error_set(err, FS_ERR_NOMEM, "lsh attention: out of memory for %zu bytes of work memory", bytes);
    if (backward) j->dts = (float *)s;
    else j->proj = (const float *)s;
    s += lsh_align64(first * sizeof(float));
    j->kn = (float *)s;
    s += lsh_align64(BH * T * D * sizeof(float));
    j->stamp = (int32_t *)s;
    s += lsh_align64(BH * T * sizeof(int32_t));
    j->cand = (int32_t *)s;
    s += lsh_align64(BH * j->mmax * sizeof(int32_t));
    j->sc = (float *)s;
    s += lsh_align64(BH * j->mmax * sizeof(float));
    j->dp = (float *)s;
    j->q = a->q.data;
    j->v = a->v.data;
    j->saved = a->saved;
    return FS_OK;
}

static int lsh_forward(void *self, fs_attention_args *a, fs_error *err) {
    lsh_plugin *l = self;
#if FS_CUDA_KERNELS
    if (l->cuda) return lsh_cuda_forward(l, a, err);
#endif
    int rc = check_args(l, a, err);
    if (rc) return rc;
    job j;
    if ((rc = setup(l, a, &j, 0, err))) return rc;
    size_t BH = a->B * l->cfg.n_head, T = a->T, D = l->cfg.head_dim;
    j.out = a->out.data;
    for (size_t r = 0; r < l->n_hashes; r++) {
        j.round = r;
        /* projections of up to `slice` token rows at once: one sgemm each, outside the pool */
        for (j.row0 = 0; j.row0 < BH * T; j.row0 += j.slice) {
            size_t rows = BH * T - j.row0 < j.slice ? BH * T - j.row0 : j.slice;
            l->host->sgemm(l->cfg.device, 0, 0, rows, j.half, D, 1.0f, j.q + j.row0 * D, D, l->rot + r * D * j.half,
                           j.half, 0.0f, (float *)j.proj, j.half);
            l->host->parallel_for(rows, 256, bucket_rows, &j);
        }
        l->host->parallel_for(BH, 1, sort_items, &j);
    }
    l->host->parallel_for(BH, 1, forward_items, &j);
    return FS_OK;
}

static int lsh_backward(void *self, fs_attention_args *a, fs_error *err) {
    lsh_plugin *l = self;
#if FS_CUDA_KERNELS
    if (l->cuda) return lsh_cuda_backward(l, a, err);
#endif
    int rc = check_args(l, a, err);
    if (rc) return rc;
    job j;
    if ((rc = setup(l, a, &j, 1, err))) return rc;
    size_t BH = a->B * l->cfg.n_head;
    j.dout = a->dout.data;
    j.dq = a->dq.data;
    j.dv = a->dv.data;
    l->host->parallel_for(BH, 1, backward_items, &j);
    if (a->dk.data) memset(a->dk.data, 0, BH * a->T * l->cfg.head_dim * sizeof(float));
    return FS_OK;
}

/* ---- generation ---- */

/* Per (b, h): keys (context, D), values (context, D), buckets (context,
 * n_hashes); then one (context) row of scores and the projection work. */
static size_t per_bh_floats(const lsh_plugin *l, size_t context) {
    return context * (2 * l->cfg.head_dim + l->n_hashes);
}

static size_t lsh_cache_bytes(void *self, size_t B, size_t context) {
    lsh_plugin *l = self;
    if (context == 0) context = l->cfg.max_seq;
    return sizeof(cache_header) +
           (B * l->cfg.n_head * per_bh_floats(l, context) + context + l->n_buckets / 2) * sizeof(float);
}

static int lsh_cache_reset(void *self, void *cache, size_t B, size_t context, fs_error *err) {
    lsh_plugin *l = self;
    if (l->cfg.device.type != FS_DEVICE_CPU)
        return l->host->error_set(err, FS_ERR_UNSUPPORTED,
                                  "lsh attention: generation runs on the CPU ([run] device = cpu); its CUDA kernels "
                                  "are for training");
    if (!l->cfg.causal)
        return l->host->error_set(err, FS_ERR_UNSUPPORTED,
                                  "lsh attention: generation needs causal = true (a bidirectional layer sees the "
                                  "future)");
    cache_header *h = cache;
    h->B = B;
    h->context = context ? context : l->cfg.max_seq;
    h->len = 0;
    return FS_OK;
}

static int lsh_decode(void *self, void *cache, fs_attention_decode_args *a, fs_error *err) {
    lsh_plugin *l = self;
    cache_header *h = cache;
    size_t H = l->cfg.n_head, D = l->cfg.head_dim, ctx = h->context, NH = l->n_hashes, half = l->n_buckets / 2;
    if (a->B != h->B)
        return l->host->error_set(err, FS_ERR_INVALID, "lsh attention: decode batch %zu != cache batch %zu", a->B,
                                  h->B);
    if (a->pos != h->len)
        return l->host->error_set(err, FS_ERR_INVALID, "lsh attention: decode position %zu, expected %zu", a->pos,
                                  h->len);
    if (a->pos >= ctx)
        return l->host->error_set(err, FS_ERR_INVALID,
                                  "lsh attention: context full (%zu tokens); the lsh cache keeps every past key",
                                  ctx);
    float *base = (float *)(h + 1), *w = base + h->B * H * per_bh_floats(l, ctx), *proj = w + ctx;
    size_t pos = a->pos, n = pos + 1;
    const float *q = a->q.data, *v = a->v.data;
    float *out = a->out.data;
    for (size_t bh = 0; bh < a->B * H; bh++) {
        float *K = base + bh * per_bh_floats(l, ctx), *V = K + ctx * D;
        int32_t *bk = (int32_t *)(V + ctx * D);
        const float *qi = q + bh * D;
        normalise(qi, K + pos * D, 1, D);
        memcpy(V + pos * D, v + bh * D, D * sizeof(float));
        for (size_t r = 0; r < NH; r++) {
            const float *R = l->rot + r * D * half;
            for (size_t c = 0; c < half; c++) proj[c] = 0.0f;
            for (size_t d = 0; d < D; d++)
                for (size_t c = 0; c < half; c++) proj[c] += qi[d] * R[d * half + c];
            bk[pos * NH + r] = lsh_argmax_bucket(proj, half);
        }
        size_t recent = pos > l->decode_window ? pos - l->decode_window : 0;
        float mx = -INFINITY;
        for (size_t j = 0; j < n; j++) {
            int see = j == pos || j >= recent;
            for (size_t r = 0; !see && r < NH; r++) see = bk[j * NH + r] == bk[pos * NH + r];
            if (!see) {
                w[j] = -INFINITY;
                continue;
            }
            float s = LSH_SELF_SCORE;
            if (j != pos) {
                s = 0.0f;
                for (size_t c = 0; c < D; c++) s += qi[c] * K[j * D + c];
                s *= l->scale;
            }
            w[j] = s;
            mx = s > mx ? s : mx;
        }
        float sum = 0.0f, *o = out + bh * D;
        memset(o, 0, D * sizeof(float));
        for (size_t j = 0; j < n; j++) {
            if (w[j] == -INFINITY) continue;
            float e = expf(w[j] - mx);
            sum += e;
            for (size_t c = 0; c < D; c++) o[c] += e * V[j * D + c];
        }
        for (size_t c = 0; c < D; c++) o[c] /= sum;
    }
    h->len++;
    return FS_OK;
}

/* ---- the paged step (serving) ---- */

/* Per head: keys (kv_block, D), values (kv_block, D), stored f32 or bf16,
 * then buckets (kv_block, n_hashes) int32 from the next 8-byte boundary. */
static size_t lsh_paged_kv_bytes(const lsh_plugin *l, size_t kv_block) {
    return (2 * kv_block * l->cfg.head_dim * l->kv_es + 7) / 8 * 8;
}

static size_t lsh_paged_head_bytes(const lsh_plugin *l, size_t kv_block) {
    return lsh_paged_kv_bytes(l, kv_block) + kv_block * l->n_hashes * sizeof(int32_t);
}

static size_t lsh_paged_block_bytes(void *self, size_t kv_block) {
    lsh_plugin *l = self;
    return l->cfg.n_head * lsh_paged_head_bytes(l, kv_block);
}

typedef struct lsh_entry {
    void *k, *v; /* D stored elements each */
    int32_t *bk;
} lsh_entry;

static lsh_entry lsh_paged_entry(const lsh_plugin *l, char *block, size_t kv_block, size_t h, size_t slot) {
    size_t D = l->cfg.head_dim;
    char *head = block + h * lsh_paged_head_bytes(l, kv_block);
    lsh_entry e = {paged_kv_at(head, slot * D, l->kv_es), paged_kv_at(head, (kv_block + slot) * D, l->kv_es),
                   (int32_t *)(head + lsh_paged_kv_bytes(l, kv_block)) + slot * l->n_hashes};
    return e;
}

/* The new token's entry: normalised key, value, bucket of each round (as
 * decode). `proj` has n_buckets / 2 floats, `key` D. */
static void lsh_paged_store(const lsh_plugin *l, const fs_attention_paged_args *a, const fs_attention_paged_seq *s,
                            size_t t, float *proj, float *key) {
    size_t H = l->cfg.n_head, D = l->cfg.head_dim, NH = l->n_hashes, half = l->n_buckets / 2;
    size_t p = s->start + t, row = s->row + t;
    char *blk = paged_block(a, s, p);
    for (size_t h = 0; h < H; h++) {
        const float *qi = (const float *)a->q.data + (row * H + h) * D;
        lsh_entry e = lsh_paged_entry(l, blk, a->kv_block, h, p % a->kv_block);
        normalise(qi, key, 1, D);
        paged_kv_put(e.k, key, D, l->kv_es);
        paged_kv_put(e.v, (const float *)a->v.data + (row * H + h) * D, D, l->kv_es);
        for (size_t r = 0; r < NH; r++) {
            const float *R = l->rot + r * D * half;
            for (size_t c = 0; c < half; c++) proj[c] = 0.0f;
            for (size_t d = 0; d < D; d++)
                for (size_t c = 0; c < half; c++) proj[c] = fmaf(qi[d], R[d * half + c], proj[c]);
            e.bk[r] = lsh_argmax_bucket(proj, half);
        }
    }
}

typedef struct lsh_paged_job {
    const lsh_plugin *l;
    const fs_attention_paged_args *a;
    size_t max_len;
    atomic_int failed;
} lsh_paged_job;

/* Items are (row, head): decode's rule for the row's position p, every
 * earlier key that shares a bucket in some round or is among the last
 * decode_window, and itself (scored -1e5). */
static void lsh_paged_rows(void *arg, size_t begin, size_t end) {
    lsh_paged_job *j = arg;
    const lsh_plugin *l = j->l;
    const fs_attention_paged_args *a = j->a;
    size_t H = l->cfg.n_head, D = l->cfg.head_dim, NH = l->n_hashes, kb = a->kv_block;
    float *w = l->host->alloc(l->cfg.device, j->max_len * sizeof(float));
    const void **vp = l->host->alloc(l->cfg.device, j->max_len * sizeof *vp);
    if (!w || !vp) {
        atomic_store(&j->failed, 1);
        begin = end;
    }
    for (size_t item = begin; item < end; item++) {
        size_t row = item / H, h = item % H;
        const fs_attention_paged_seq *s = &a->seqs[paged_seq_of_row(a, row)];
        size_t pos = s->start + (row - s->row), n = pos + 1;
        size_t recent = pos > l->decode_window ? pos - l->decode_window : 0;
        const float *q = (const float *)a->q.data + (row * H + h) * D;
        const int32_t *mine = lsh_paged_entry(l, paged_block(a, s, pos), kb, h, pos % kb).bk;
        for (size_t p0 = 0; p0 < n; p0 += kb) {
            char *blk = paged_block(a, s, p0);
            size_t cnt = n - p0 < kb ? n - p0 : kb;
            for (size_t t = 0; t < cnt; t++) {
                size_t jj = p0 + t;
                lsh_entry e = lsh_paged_entry(l, blk, kb, h, t);
                int see = jj == pos || jj >= recent;
                for (size_t r = 0; !see && r < NH; r++) see = e.bk[r] == mine[r];
                w[jj] = !see ? -INFINITY : jj == pos ? LSH_SELF_SCORE : paged_dot(q, e.k, D, l->kv_es) * l->scale;
                vp[jj] = e.v;
            }
        }
        paged_softmax_values((float *)a->out.data + (row * H + h) * D, w, vp, n, D, l->kv_es);
    }
    l->host->free(l->cfg.device, w);
    l->host->free(l->cfg.device, (void *)vp);
}

static int lsh_paged_step(void *self, fs_attention_paged_args *a, fs_error *err) {
    lsh_plugin *l = self;
    if (l->cfg.device.type != FS_DEVICE_CPU)
        return l->host->error_set(err, FS_ERR_UNSUPPORTED,
                                  "lsh attention: serving runs on the CPU ([run] device = cpu); its CUDA kernels are "
                                  "for training");
    if (!l->cfg.causal)
        return l->host->error_set(err, FS_ERR_UNSUPPORTED,
                                  "lsh attention: the paged step is causal; this layer has causal = false");
    int rc = paged_check(l->host, "lsh", a, err);
    if (rc) return rc;
    float *proj = l->host->alloc(l->cfg.device, (l->n_buckets / 2 + l->cfg.head_dim) * sizeof(float));
    if (!proj) return l->host->error_set(err, FS_ERR_NOMEM, "lsh attention: out of memory");
    for (size_t i = 0; i < a->n_seqs; i++)
        for (size_t t = 0; t < a->seqs[i].n_new; t++)
            lsh_paged_store(l, a, &a->seqs[i], t, proj, proj + l->n_buckets / 2);
    l->host->free(l->cfg.device, proj);
    lsh_paged_job job = {l, a, paged_max_len(a), 0};
    l->host->parallel_for(a->n_rows * l->cfg.n_head, 1, lsh_paged_rows, &job);
    if (atomic_load(&job.failed))
        return l->host->error_set(err, FS_ERR_NOMEM, "lsh attention: out of memory for %zu scores", job.max_len);
    return FS_OK;
}

static const fs_attention_vtable lsh_vtable = {
    .struct_size = sizeof(fs_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL | FS_ATTENTION_BIDIRECTIONAL | FS_ATTENTION_DECODE | FS_ATTENTION_SHARED_QK |
             FS_ATTENTION_PAGED | LSH_DEVICES | FS_ATTENTION_PAGED_BF16,
    .create = lsh_create,
    .destroy = lsh_destroy,
    .saved_bytes = lsh_saved_bytes,
    .forward = lsh_forward,
    .backward = lsh_backward,
    .cache_bytes = lsh_cache_bytes,
    .cache_reset = lsh_cache_reset,
    .decode = lsh_decode,
    .paged_block_bytes = lsh_paged_block_bytes,
    .paged_step = lsh_paged_step,
};

/* Ranges are checked in create, so each error names the key and the rule. */
#define NOLIMIT 1, 0
static const fs_param_spec lsh_params[] = {
    {"n_hashes", FS_PARAM_INT, "2", NOLIMIT, NULL, "hash rounds; a query sees the union of its chunks in every round"},
    {"n_buckets", FS_PARAM_INT, "0", NOLIMIT, NULL,
     "buckets per round, even and >= 2; 0 = about max_seq / bucket_size (rounded up to even)"},
    {"bucket_size", FS_PARAM_INT, "64", NOLIMIT, NULL, "tokens per bucket on average, used when n_buckets = 0"},
    {"chunk", FS_PARAM_INT, "64", NOLIMIT, NULL, "tokens per chunk of the (bucket, position) order"},
    {"lookback", FS_PARAM_INT, "1", NOLIMIT, NULL, "earlier chunks a chunk also attends to"},
    {"lookahead", FS_PARAM_INT, "0", NOLIMIT, NULL, "later chunks a chunk also attends to (bidirectional layers)"},
    {"decode_window", FS_PARAM_INT, "64", NOLIMIT, NULL,
     "generation: the most recent tokens a new token always sees, besides those sharing one of its buckets"},
};

static const fs_plugin_descriptor lsh_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "lsh",
    .version = "1.1.0",
    .summary = "Reformer LSH attention: shared QK, angular hashing, chunked sorted buckets; O(T * chunk) per layer",
    .params = lsh_params,
    .n_params = sizeof lsh_params / sizeof lsh_params[0],
    .vtable = &lsh_vtable,
    .vtable_size = sizeof(lsh_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(lsh_descriptor)
