/* longformer_decode.c — generation with a bounded KV cache.
 *
 * A causal local token sees at most `window * d` tokens back, so the cache
 * keeps a ring of the last R = window * max(dilation) + 1 tokens' K and V,
 * written at slot pos % R, plus what the global tokens need:
 *
 *   global = first:N or positions: the positions are all < max_seq, so the
 *     cache keeps, for good, the local K/V of each global position (the
 *     columns every later token sees: the "attention sinks" of
 *     StreamingLLM) and the global K/V of every position up to the last
 *     global one (what a global row sees). Decode equals the forward at
 *     every position, however far generation goes.
 *   global = token:ID: occurrences can come at any time, so the cache keeps
 *     the most recent `global_cache` of them (local and global K/V), and the
 *     ring also keeps each token's global K/V. A global row then sees the
 *     ring plus the kept occurrences: exact while pos < R, the bounded
 *     approximation after (the forward over T <= max_seq is always exact).
 *
 * Nothing grows with the number of tokens generated: cache_bytes ignores
 * max_context (FS_ATTENTION_BOUNDED_CACHE), so generation can run past
 * [model] max_seq with flat memory. */
#include <math.h>
#include <string.h>

#include "longformer.h"

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)

typedef struct cache_header {
    size_t B, len, n_occ;
    size_t pad[5]; /* the arrays after it stay 64-byte aligned */
} cache_header;

/* Sizes (in slots) and byte offsets of the cache's arrays for B sequences. */
typedef struct cache_layout {
    size_t R;          /* ring slots */
    size_t S;          /* positions mode: global K/V kept for positions [0, S) */
    size_t NG;         /* global slots: every global position, or global_cache occurrences */
    int ring_kvg;      /* token mode: the ring keeps global K/V too */
    size_t ring_k, ring_v, ring_g; /* (B, H, R, D), (B, H, R, D), (B, R, 2C) */
    size_t sink_g;                 /* (B, S, 2C) */
    size_t glob_k, glob_v, glob_g; /* (B, H, NG, D), (B, H, NG, D), (B, NG, 2C) */
    size_t glob_pos;               /* (NG) size_t: position held by each occurrence slot */
    size_t qkvg;                   /* (B, 3C): the new token's global projection */
    size_t score, kp, vp;          /* (R + S + NG) floats / pointers */
    size_t total;
} cache_layout;

static void layout_for(const lf_plugin *lf, size_t B, cache_layout *l) {
    size_t H = lf->cfg.n_head, D = lf->cfg.head_dim, C = lf->cfg.n_embd;
    memset(l, 0, sizeof *l);
    l->R = lf->window * lf->dmax + 1;
    if (lf->gmode == LF_GLOBAL_POSITIONS) {
        l->S = (size_t)lf->gpos[lf->n_gpos - 1] + 1;
        l->NG = lf->n_gpos;
    } else if (lf->gmode == LF_GLOBAL_TOKENS) {
        l->NG = lf->global_cache;
        l->ring_kvg = 1;
    }
    size_t n = l->R + l->S + l->NG, off = ALIGN64(sizeof(cache_header));
    size_t *slots[] = {&l->ring_k, &l->ring_v, &l->ring_g, &l->sink_g, &l->glob_k, &l->glob_v,
                       &l->glob_g, &l->glob_pos, &l->qkvg, &l->score, &l->kp, &l->vp};
    size_t bytes[] = {B * H * l->R * D * 4,
                      B * H * l->R * D * 4,
                      l->ring_kvg ? B * l->R * 2 * C * 4 : 0,
                      B * l->S * 2 * C * 4,
                      B * H * l->NG * D * 4,
                      B * H * l->NG * D * 4,
                      l->ring_kvg ? B * l->NG * 2 * C * 4 : 0,
                      l->NG * sizeof(size_t),
                      lf->gmode != LF_GLOBAL_NONE ? B * 3 * C * 4 : 0,
                      n * sizeof(float),
                      n * sizeof(float *),
                      n * sizeof(float *)};
    for (size_t i = 0; i < sizeof bytes / sizeof bytes[0]; i++) {
        *slots[i] = off;
        off += ALIGN64(bytes[i]);
    }
    l->total = off;
}

size_t lf_cache_bytes(void *self, size_t B, size_t max_context) {
    (void)max_context; /* bounded: the same for any length */
    cache_layout l;
    layout_for(self, B, &l);
    return l.total;
}

int lf_cache_reset(void *self, void *cache, size_t B, size_t max_context, fs_error *err) {
    lf_plugin *lf = self;
    (void)max_context;
    if (!lf->cfg.causal)
        return lf->host->error_set(err, FS_ERR_UNSUPPORTED,
                                   "longformer attention: generation needs causal = true (a bidirectional layer "
                                   "sees tokens that do not exist yet)");
    if (lf->gmode == LF_GLOBAL_TOKENS && B != 1)
        return lf->host->error_set(err, FS_ERR_UNSUPPORTED,
                                   "longformer attention: global = token:... generates one sequence at a time "
                                   "(B = %zu): the decode step only sees the token id when B = 1",
                                   B);
    cache_header *h = cache;
    memset(h, 0, sizeof *h);
    h->B = B;
    return FS_OK;
}

/* Index of position p in the sorted global positions, or -1. */
static long global_index(const lf_plugin *lf, size_t p) {
    size_t lo = 0, hi = lf->n_gpos;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((size_t)lf->gpos[mid] < p) lo = mid + 1;
        else hi = mid;
    }
    return lo < lf->n_gpos && (size_t)lf->gpos[lo] == p ? (long)lo : -1;
}

/* out = softmax(scale * q . k_i) v_i over the n gathered keys. */
static void attend(const float *q, const float *const *kp, const float *const *vp, size_t n, size_t D, float scale,
                   float *w, float *out) {
    float mx = -INFINITY, sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float s = 0.0f;
        for (size_t c = 0; c < D; c++) s += q[c] * kp[i][c];
        w[i] = s * scale;
        mx = w[i] > mx ? w[i] : mx;
    }
    for (size_t i = 0; i < n; i++) sum += w[i] = fs_fast_expf(w[i] - mx);
    memset(out, 0, D * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float p = w[i] / sum;
        for (size_t c = 0; c < D; c++) out[c] += p * vp[i][c];
    }
}

/* One decode step's view of the cache and of the new token. */
typedef struct decode_step {
    const lf_plugin *lf;
    cache_layout l;
    float *ring_k, *ring_v, *ring_g, *sink_g, *glob_k, *glob_v, *glob_g, *qkvg, *score;
    size_t *glob_pos;
    const float **kp, **vp;
    size_t p, B, slot; /* position, batch, its ring slot */
    size_t kept;       /* token mode: occurrences held */
    size_t oldest;     /* first position still in the ring */
    int tokens;        /* global = token:... */
    int is_global;     /* the new token is global */
    long gi;           /* positions mode: its index among the global positions, or -1 */
} decode_step;

static int check_decode_args(const lf_plugin *lf, const cache_header *hd, const fs_attention_decode_args *a,
                             fs_error *err) {
    const fs_host_api *host = lf->host;
    if (a->B != hd->B)
        return host->error_set(err, FS_ERR_INVALID, "longformer attention: decode batch %zu != cache batch %zu", a->B,
                               hd->B);
    if (a->pos != hd->len)
        return host->error_set(err, FS_ERR_INVALID, "longformer attention: decode position %zu, expected %zu", a->pos,
                               hd->len);
    if (lf->gmode != LF_GLOBAL_NONE && !a->x.data)
        return host->error_set(err, FS_ERR_INVALID, "longformer attention: global tokens need the layer input x");
    if (lf->gmode == LF_GLOBAL_TOKENS && a->token < 0)
        return host->error_set(err, FS_ERR_INVALID, "longformer attention: global = token:... needs the token id");
    return FS_OK;
}

static void step_init(decode_step *st, const lf_plugin *lf, void *cache, const fs_attention_decode_args *a) {
    const cache_header *hd = cache;
    char *base = cache;
    memset(st, 0, sizeof *st);
    st->lf = lf;
    layout_for(lf, hd->B, &st->l);
    const cache_layout *l = &st->l;
    st->ring_k = (float *)(base + l->ring_k), st->ring_v = (float *)(base + l->ring_v);
    st->ring_g = (float *)(base + l->ring_g), st->sink_g = (float *)(base + l->sink_g);
    st->glob_k = (float *)(base + l->glob_k), st->glob_v = (float *)(base + l->glob_v);
    st->glob_g = (float *)(base + l->glob_g), st->qkvg = (float *)(base + l->qkvg);
    st->score = (float *)(base + l->score);
    st->glob_pos = (size_t *)(base + l->glob_pos);
    st->kp = (const float **)(base + l->kp), st->vp = (const float **)(base + l->vp);
    st->p = a->pos;
    st->B = a->B;
    st->slot = st->p % l->R;
    st->kept = hd->n_occ < l->NG ? hd->n_occ : l->NG;
    st->oldest = st->p + 1 > l->R ? st->p + 1 - l->R : 0;
    st->tokens = lf->gmode == LF_GLOBAL_TOKENS;
    st->is_global = st->tokens ? lf_is_global_token(lf, a->token) : 0;
    st->gi = lf->gmode == LF_GLOBAL_POSITIONS && st->p < l->S ? global_index(lf, st->p) : -1;
    if (st->gi >= 0) st->is_global = 1;
}

/* The global projection of the new token, (B, 3C), when anything will read
 * it: every token in token mode, the positions below S in positions mode. */
static void project_global(decode_step *st, const fs_attention_decode_args *a) {
    const lf_plugin *lf = st->lf;
    size_t C = lf->cfg.n_embd, B = st->B;
    if (!st->tokens && !(lf->gmode == LF_GLOBAL_POSITIONS && st->p < st->l.S)) return;
    lf->host->sgemm(lf->cfg.device, 0, 0, B, 3 * C, C, 1.0f, a->x.data, C, lf->wg, 3 * C, 0.0f, st->qkvg, 3 * C);
    for (size_t b = 0; b < B; b++)
        for (size_t c = 0; c < 3 * C; c++) st->qkvg[b * 3 * C + c] += lf->bg[c];
}

/* The new token's K/V into its ring slot (and its global slot when it is a
 * global position), its global K/V into the ring or the sinks. */
static void store_token(decode_step *st, const fs_attention_decode_args *a) {
    const lf_plugin *lf = st->lf;
    const cache_layout *l = &st->l;
    size_t H = lf->cfg.n_head, D = lf->cfg.head_dim, C = lf->cfg.n_embd, R = l->R, slot = st->slot, p = st->p;
    const float *k = a->k.data, *v = a->v.data;
    for (size_t b = 0; b < st->B; b++) {
        const float *g3 = st->qkvg + b * 3 * C;
        for (size_t h = 0; h < H; h++) {
            size_t bh = b * H + h;
            memcpy(st->ring_k + (bh * R + slot) * D, k + bh * D, D * sizeof(float));
            memcpy(st->ring_v + (bh * R + slot) * D, v + bh * D, D * sizeof(float));
            if (st->gi >= 0) {
                memcpy(st->glob_k + (bh * l->NG + (size_t)st->gi) * D, k + bh * D, D * sizeof(float));
                memcpy(st->glob_v + (bh * l->NG + (size_t)st->gi) * D, v + bh * D, D * sizeof(float));
            }
        }
        if (l->ring_kvg) memcpy(st->ring_g + (b * R + slot) * 2 * C, g3 + C, 2 * C * sizeof(float));
        if (lf->gmode == LF_GLOBAL_POSITIONS && p < l->S)
            memcpy(st->sink_g + (b * l->S + p) * 2 * C, g3 + C, 2 * C * sizeof(float));
    }
}

/* A global row of head h: every position up to p, through the global K/V
 * (the sinks; or the ring and the kept occurrences in token mode). */
static void attend_global_row(decode_step *st, size_t b, size_t h, float *out) {
    const lf_plugin *lf = st->lf;
    const cache_layout *l = &st->l;
    size_t D = lf->cfg.head_dim, C = lf->cfg.n_embd, R = l->R, n = 0;
    const float *qg = st->qkvg + b * 3 * C + h * D;
    if (!st->tokens) {
        for (size_t j = 0; j <= st->p; j++) {
            st->kp[n] = st->sink_g + (b * l->S + j) * 2 * C + h * D;
            st->vp[n] = st->kp[n] + C;
            n++;
        }
    } else {
        for (size_t j = st->oldest; j <= st->p; j++) {
            st->kp[n] = st->ring_g + (b * R + j % R) * 2 * C + h * D;
            st->vp[n] = st->kp[n] + C;
            n++;
        }
        for (size_t c = 0; c < st->kept; c++)
            if (st->glob_pos[c] < st->oldest) {
                st->kp[n] = st->glob_g + (b * l->NG + c) * 2 * C + h * D;
                st->vp[n] = st->kp[n] + C;
                n++;
            }
    }
    attend(qg, st->kp, st->vp, n, D, lf->scale, st->score, out);
}

/* A local row of head h: its dilated band from the ring, then the global
 * tokens outside the band. */
static void attend_local_row(decode_step *st, const float *q, size_t b, size_t h, float *out) {
    const lf_plugin *lf = st->lf;
    const cache_layout *l = &st->l;
    size_t H = lf->cfg.n_head, D = lf->cfg.head_dim, R = l->R, w = lf->window, p = st->p;
    size_t bh = b * H + h, d = lf->dil[h], n = 0;
    for (size_t m = 0; m <= w && m * d <= p; m++) {
        size_t s = (p - m * d) % R;
        st->kp[n] = st->ring_k + (bh * R + s) * D;
        st->vp[n++] = st->ring_v + (bh * R + s) * D;
    }
    size_t ng = st->tokens ? st->kept : l->NG;
    for (size_t c = 0; c < ng; c++) {
        size_t g = st->tokens ? st->glob_pos[c] : (size_t)lf->gpos[c];
        if (g >= p || ((p - g) % d == 0 && (p - g) / d <= w)) continue;
        st->kp[n] = st->glob_k + (bh * l->NG + c) * D;
        st->vp[n++] = st->glob_v + (bh * l->NG + c) * D;
    }
    attend(q, st->kp, st->vp, n, D, lf->scale, st->score, out);
}

/* Token mode: a global token joins the kept occurrences (B == 1, see
 * cache_reset), the oldest making room. */
static void remember_occurrence(decode_step *st, cache_header *hd, const fs_attention_decode_args *a) {
    const lf_plugin *lf = st->lf;
    size_t H = lf->cfg.n_head, D = lf->cfg.head_dim, C = lf->cfg.n_embd, NG = st->l.NG;
    size_t c = hd->n_occ % NG;
    for (size_t h = 0; h < H; h++) {
        memcpy(st->glob_k + (h * NG + c) * D, (const float *)a->k.data + h * D, D * sizeof(float));
        memcpy(st->glob_v + (h * NG + c) * D, (const float *)a->v.data + h * D, D * sizeof(float));
    }
    memcpy(st->glob_g + c * 2 * C, st->qkvg + C, 2 * C * sizeof(float));
    st->glob_pos[c] = st->p;
    hd->n_occ++;
}

int lf_decode(void *self, void *cache, fs_attention_decode_args *a, fs_error *err) {
    lf_plugin *lf = self;
    cache_header *hd = cache;
    int rc = check_decode_args(lf, hd, a, err);
    if (rc) return rc;
    decode_step st;
    step_init(&st, lf, cache, a);
    project_global(&st, a);
    store_token(&st, a);
    size_t H = lf->cfg.n_head, D = lf->cfg.head_dim;
    const float *q = a->q.data;
    float *out = a->out.data;
    for (size_t b = 0; b < st.B; b++)
        for (size_t h = 0; h < H; h++) {
            size_t bh = b * H + h;
            if (st.is_global)
                attend_global_row(&st, b, h, out + bh * D);
            else
                attend_local_row(&st, q + bh * D, b, h, out + bh * D);
        }
    if (st.tokens && st.is_global) remember_occurrence(&st, hd, a);
    hd->len++;
    return FS_OK;
}
