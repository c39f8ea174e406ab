/* longformer.c — Longformer attention (Beltagy et al., 2020): a sliding
 * window, optionally dilated, plus global tokens with their own Q/K/V
 * projections. This file reads the configuration and drives training; the
 * kernels live in longformer_band.c and longformer_global.c, generation in
 * longformer_decode.c, serving in longformer_paged.c.
 *
 * Semantics, pinned by tests/unit/test_longformer.c against an explicit
 * dense mask. Head h has dilation d. A local token at position i sees
 *   - the band: positions i + m*d with |m| <= window (bidirectional), or
 *     m in [0, window] backwards (causal: `window` earlier tokens and itself);
 *   - every global token (causal: every earlier global token).
 * A global token's row instead attends to every position (causal: every
 * position up to its own) with the global projections: Qg from its own
 * input, Kg and Vg from everyone's. Local rows see global tokens through
 * the local K and V, as in the paper.
 *
 * Cost: O(T * window) time and memory per layer plus O(T) per global
 * token; no T x T buffer ever exists. Training saves one log-sum-exp per row
 * and the global keys/values; backward recomputes the scores block by block
 * (one extra QK^T, as FlashAttention does) instead of keeping them. */
#include "longformer.h"
#include "paged.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)

float *lf_scratch(lf_plugin *lf, size_t floats) {
    if (floats <= lf->scratch_floats) return lf->scratch;
    lf->host->free(lf->cfg.device, lf->scratch);
    lf->scratch = lf->host->alloc(lf->cfg.device, floats * sizeof(float));
    lf->scratch_floats = lf->scratch ? floats : 0;
    return lf->scratch;
}

int lf_is_global_token(const lf_plugin *lf, int32_t t) {
    for (size_t i = 0; i < lf->n_gtok; i++)
        if (lf->gtok[i] == t) return 1;
    return 0;
}

void lf_saved_layout_for(const lf_plugin *lf, size_t B, size_t T, lf_saved_layout *l) {
    size_t H = lf->cfg.n_head, C = lf->cfg.n_embd;
    l->gmax = 0;
    l->jmax = 0;
    if (lf->gmode == LF_GLOBAL_POSITIONS) {
        size_t n = 0;
        while (n < lf->n_gpos && (size_t)lf->gpos[n] < T) n++;
        l->gmax = n;
        l->jmax = n == 0 ? 0 : lf->cfg.causal ? (size_t)lf->gpos[n - 1] + 1 : T;
    } else if (lf->gmode == LF_GLOBAL_TOKENS) {
        l->gmax = T;
        l->jmax = T;
    }
    size_t off = 0;
    l->lse = off;
    off += ALIGN64(B * H * T * sizeof(float));
    l->glse = off;
    off += ALIGN64(B * H * l->gmax * sizeof(float));
    l->gcount = off;
    off += ALIGN64(B * sizeof(int32_t));
    l->glist = off;
    off += ALIGN64(B * l->gmax * sizeof(int32_t));
    l->gflag = off;
    off += ALIGN64(B * T);
    l->kvg = off;
    off += ALIGN64(B * l->jmax * 2 * C * sizeof(float));
    l->total = off;
}

size_t lf_global_span(const lf_plugin *lf, const lf_state *st, size_t b) {
    size_t g = (size_t)st->gcount[b];
    if (g == 0) return 0;
    return lf->cfg.causal ? (size_t)st->glist[b * st->gmax + g - 1] + 1 : st->T;
}

static lf_state state_view(const lf_plugin *lf, void *saved, size_t B, size_t T) {
    lf_saved_layout l;
    lf_saved_layout_for(lf, B, T, &l);
    char *p = saved;
    lf_state st = {B, T, l.gmax, l.jmax, (float *)(p + l.lse), (float *)(p + l.glse), (float *)(p + l.kvg),
                   (int32_t *)(p + l.gcount), (int32_t *)(p + l.glist), (uint8_t *)(p + l.gflag)};
    return st;
}

/* ---- configuration ---- */

static int bad(const lf_plugin *lf, fs_plugin_ctx *ctx, fs_error *err, const char *key, const char *why) {
    return lf->host->error_set(err, FS_ERR_INVALID, "%s: %s", lf->host->config_where(ctx, key), why);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Parses "N,N,..." into a fresh array; -1 on a malformed or negative item. */
static int parse_list(const char *s, int32_t **out, size_t *n) {
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return -2;
    size_t k = 0;
    for (const char *p = s;;) {
        while (isspace((unsigned char)*p)) p++;
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            free(v);
            return -1;
        }
        v[k++] = (int32_t)x;
        p = end;
        while (isspace((unsigned char)*p)) p++;
        if (*p == '\0') break;
        if (*p != ',') {
            free(v);
            return -1;
        }
        p++;
    }
    *out = v;
    *n = k;
    return 0;
}

/* global = none | first:N | token:ID[,ID...] | P[,P...] */
static int parse_global(lf_plugin *lf, fs_plugin_ctx *ctx, fs_error *err) {
    const char *s = lf->host->config_string(ctx, "global");
    char why[256];
    size_t max_seq = lf->cfg.max_seq;
    while (s && isspace((unsigned char)*s)) s++;
    if (!s || !*s || strcmp(s, "none") == 0) return FS_OK;
    if (strncmp(s, "first:", 6) == 0) {
        int32_t *v;
        size_t n;
        int rc = parse_list(s + 6, &v, &n);
        if (rc == -2) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer: out of memory");
        if (rc || n != 1) return bad(lf, ctx, err, "global", "first:N needs one count N >= 0");
        size_t N = (size_t)v[0];
        free(v);
        if (N > max_seq) {
            snprintf(why, sizeof why, "first:%zu reaches past the context: [model] max_seq = %zu", N, max_seq);
            return bad(lf, ctx, err, "global", why);
        }
        if (N == 0) return FS_OK;
        lf->gpos = malloc(N * sizeof *lf->gpos);
        if (!lf->gpos) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer: out of memory");
        for (size_t i = 0; i < N; i++) lf->gpos[i] = (int32_t)i;
        lf->n_gpos = N;
        lf->gmode = LF_GLOBAL_POSITIONS;
        return FS_OK;
    }
    if (strncmp(s, "token:", 6) == 0) {
        int rc = parse_list(s + 6, &lf->gtok, &lf->n_gtok);
        if (rc == -2) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer: out of memory");
        if (rc) return bad(lf, ctx, err, "global", "token:ID[,ID...] needs token ids >= 0");
        lf->gmode = LF_GLOBAL_TOKENS;
        return FS_OK;
    }
    int rc = parse_list(s, &lf->gpos, &lf->n_gpos);
    if (rc == -2) return lf->host->error_set(err, FS_ERR_NOMEM, "longformer: out of memory");
    if (rc)
        return bad(lf, ctx, err, "global",
                   "must be none, first:N, token:ID[,ID...] or a list of positions P[,P...] (integers >= 0)");
    qsort(lf->gpos, lf->n_gpos, sizeof *lf->gpos, cmp_i32);
    size_t k = 0;
    for (size_t i = 0; i < lf->n_gpos; i++) {
        if ((size_t)lf->gpos[i] >= max_seq) {
            snprintf(why, sizeof why, "position %d is past the context: [model] max_seq = %zu (positions 0-%zu)",
                     (int)lf->gpos[i], max_seq, max_seq - 1);
            return bad(lf, ctx, err, "global", why);
        }
        if (k == 0 || lf->gpos[k - 1] != lf->gpos[i]) lf->gpos[k++] = lf->gpos[i];
    }
    lf->n_gpos = k;
    lf->gmode = LF_GLOBAL_POSITIONS;
    return FS_OK;
}

static void lf_destroy(void *self) {
    lf_plugin *lf = self;
    if (!lf) return;
    fs_device cpu = {FS_DEVICE_CPU, 0};
#if FS_CUDA_KERNELS
    lf_cuda_destroy(lf);
#endif
    free(lf->dil);
    free(lf->gpos);
    free(lf->gtok);
    lf->host->free(cpu, lf->scratch);
    lf->host->free(cpu, lf);
}

/* [attention] dilation: one value for every head or one per head. */
static int parse_dilation(lf_plugin *lf, fs_plugin_ctx *ctx, fs_error *err) {
    size_t H = lf->cfg.n_head;
    char why[256];
    lf->dil = malloc(H * sizeof *lf->dil);
    int64_t *dl = malloc((H + 1) * sizeof *dl);
    if (!lf->dil || !dl) {
        free(dl);
        return lf->host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory");
    }
    size_t nd = lf->host->config_int_list(ctx, "dilation", dl, H + 1);
    int rc = FS_OK;
    if (nd != 1 && nd != H) {
        snprintf(why, sizeof why, "%zu values, but [model] n_head = %zu: give one dilation for every head or one per head",
                 nd, H);
        rc = bad(lf, ctx, err, "dilation", why);
    }
    lf->dmax = 1;
    for (size_t h = 0; h < H && !rc; h++) {
        int64_t d = dl[nd == 1 ? 0 : h];
        if (d <= 0)
            rc = bad(lf, ctx, err, "dilation", "must be positive: 1 is a plain window, d attends to every d-th token");
        lf->dil[h] = d > 0 ? (size_t)d : 1;
        if (lf->dil[h] > lf->dmax) lf->dmax = lf->dil[h];
    }
    free(dl);
    return rc;
}

static int lf_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                     fs_error *err) {
    *self = NULL;
    if (cfg->device.type != FS_DEVICE_CPU && !(cfg->device.type == FS_DEVICE_CUDA && LF_DEVICES))
        return host->error_set(err, FS_ERR_UNSUPPORTED, "longformer attention: device type %d is not implemented%s",
                               (int)cfg->device.type,
                               cfg->device.type == FS_DEVICE_CUDA ? " (this build has no CUDA toolkit)" : "");
    fs_device cpu = {FS_DEVICE_CPU, 0}; /* the instance and its work memory are host memory */
    lf_plugin *lf = host->alloc(cpu, sizeof *lf);
    if (!lf) return host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory");
    lf->host = host;
    paged_config_copy(&lf->cfg, cfg);
    lf->kv_es = paged_kv_es(cfg);
    lf->scale = 1.0f / sqrtf((float)cfg->head_dim);
    size_t C = cfg->n_embd;
    int rc = FS_OK;

    int64_t w = host->config_int(ctx, "window");
    if (w <= 0) {
        rc = bad(lf, ctx, err, "window", "must be a positive number of tokens");
        goto fail;
    }
    lf->window = (size_t)w;

    if ((rc = parse_dilation(lf, ctx, err))) goto fail;

    int64_t bw = host->config_int(ctx, "block");
    if (bw < 0) {
        rc = bad(lf, ctx, err, "block", "must be 0 (automatic) or a positive number of rows");
        goto fail;
    }
    /* A block computes block x (block + window) scores of which about
     * block x window are in some row's band: blocks of half the window
     * waste little, and 16..64 rows keep the matmul tiles busy. */
    lf->block = bw ? (size_t)bw : lf->window / 2 < 16 ? 16 : lf->window / 2 > 64 ? 64 : lf->window / 2;

    if ((rc = parse_global(lf, ctx, err))) goto fail;
    int64_t gc = host->config_int(ctx, "global_cache");
    lf->global_cache = gc > 0 ? (size_t)gc : 1;

    if (lf->gmode != LF_GLOBAL_NONE) {
        size_t wshape[2] = {C, 3 * C}, bshape[1] = {3 * C};
        fs_tensor p, g;
        if ((rc = host->register_param(ctx, "c_attn_global.weight", 2, wshape, 1, &p, &g, err))) goto fail;
        lf->wg = p.data;
        lf->dwg = g.data;
        if ((rc = host->register_param(ctx, "c_attn_global.bias", 1, bshape, 0, &p, &g, err))) goto fail;
        lf->bg = p.data;
        lf->dbg = g.data;
    }
#if FS_CUDA_KERNELS
    if (cfg->device.type == FS_DEVICE_CUDA && (rc = lf_cuda_create(lf, err))) goto fail;
#endif
    *self = lf;
    return FS_OK;
fail:
    lf_destroy(lf);
    return rc;
}

/* Global tokens start as copies of the local projection, as in the paper. */
static int lf_init_params(void *self, const fs_tensor *w, const fs_tensor *b, fs_error *err) {
    lf_plugin *lf = self;
    size_t C = lf->cfg.n_embd;
    if (lf->gmode == LF_GLOBAL_NONE) return FS_OK;
    if (w->ndim != 2 || w->shape[0] != C || w->shape[1] != 3 * C || b->ndim != 1 || b->shape[0] != 3 * C)
        return lf->host->error_set(err, FS_ERR_INVALID,
                                   "longformer attention: init_params expects c_attn (%zu, %zu) and (%zu)", C, 3 * C,
                                   3 * C);
#if FS_CUDA_KERNELS
    if (lf->cuda) return lf_cuda_init_params(lf, w, b, err);
#endif
    memcpy(lf->wg, w->data, C * 3 * C * sizeof(float));
    memcpy(lf->bg, b->data, 3 * C * sizeof(float));
    return FS_OK;
}

/* ---- training ---- */

static size_t lf_saved_bytes(void *self, size_t B, size_t T) {
    lf_saved_layout l;
    lf_saved_layout_for(self, B, T, &l);
    return l.total;
}

static int check_args(const lf_plugin *lf, const fs_attention_args *a, fs_error *err) {
    if (a->q.device.type != FS_DEVICE_CPU || a->q.dtype != FS_DTYPE_F32)
        return lf->host->error_set(err, FS_ERR_UNSUPPORTED, "longformer attention: expects f32 CPU tensors");
    if (a->T == 0 || a->T > lf->cfg.max_seq)
        return lf->host->error_set(err, FS_ERR_INVALID, "longformer attention: T = %zu outside 1..max_seq = %zu",
                                   a->T, lf->cfg.max_seq);
    if (lf->gmode != LF_GLOBAL_NONE && !a->x.data)
        return lf->host->error_set(err, FS_ERR_INVALID,
                                   "longformer attention: global tokens need the layer input x");
    if (lf->gmode == LF_GLOBAL_TOKENS && !a->tokens)
        return lf->host->error_set(err, FS_ERR_INVALID,
                                   "longformer attention: global = token:... needs the token ids");
    return FS_OK;
}

void lf_find_globals(const lf_plugin *lf, const fs_attention_args *a, lf_state *st) {
    size_t B = st->B, T = st->T;
    memset(st->gflag, 0, B * T);
    for (size_t b = 0; b < B; b++) {
        int32_t *gl = st->glist + b * st->gmax;
        size_t n = 0;
        if (lf->gmode == LF_GLOBAL_POSITIONS) {
            for (size_t i = 0; i < lf->n_gpos && (size_t)lf->gpos[i] < T; i++) gl[n++] = lf->gpos[i];
        } else if (lf->gmode == LF_GLOBAL_TOKENS) {
            for (size_t t = 0; t < T; t++)
                if (lf_is_global_token(lf, a->tokens[b * T + t])) gl[n++] = (int32_t)t;
        }
        st->gcount[b] = (int32_t)n;
        for (size_t i = 0; i < n; i++) st->gflag[b * T + (size_t)gl[i]] = 1;
    }
}

static int any_global(const lf_state *st) {
    for (size_t b = 0; b < st->B; b++)
        if (st->gcount[b]) return 1;
    return 0;
}

static int lf_forward(void *self, fs_attention_args *a, fs_error *err) {
    lf_plugin *lf = self;
#if FS_CUDA_KERNELS
    if (lf->cuda) return lf_cuda_forward(lf, a, err);
#endif
    int rc = check_args(lf, a, err);
    if (rc) return rc;
    lf_state st = state_view(lf, a->saved, a->B, a->T);
    lf_find_globals(lf, a, &st);
    if ((rc = lf_band_forward(lf, a, &st, err))) return rc;
    if (any_global(&st)) rc = lf_global_forward(lf, a, &st, err);
    return rc;
}

static int lf_backward(void *self, fs_attention_args *a, fs_error *err) {
    lf_plugin *lf = self;
#if FS_CUDA_KERNELS
    if (lf->cuda) return lf_cuda_backward(lf, a, err);
#endif
    int rc = check_args(lf, a, err);
    if (rc) return rc;
    if (lf->gmode != LF_GLOBAL_NONE && !a->dx.data)
        return lf->host->error_set(err, FS_ERR_INVALID, "longformer attention: global tokens need dx in backward");
    lf_state st = state_view(lf, a->saved, a->B, a->T);
    if ((rc = lf_band_backward(lf, a, &st, err))) return rc;
    if (any_global(&st)) rc = lf_global_backward(lf, a, &st, err);
    return rc;
}

/* Generation keeps its bounded cache on the CPU: an instance on CUDA
 * (FS_ATTENTION_CUDA without FS_ATTENTION_CUDA_DECODE) says so. */
static int lf_cache_reset_on(void *self, void *cache, size_t B, size_t max_context, fs_error *err) {
    lf_plugin *lf = self;
    if (lf->cfg.device.type != FS_DEVICE_CPU)
        return lf->host->error_set(err, FS_ERR_UNSUPPORTED,
                                   "longformer attention: generation runs on the CPU ([run] device = cpu); its CUDA "
                                   "kernels are for training");
    return lf_cache_reset(self, cache, B, max_context, err);
}

static const fs_attention_vtable lf_vtable = {
    .struct_size = sizeof(fs_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL | FS_ATTENTION_BIDIRECTIONAL | FS_ATTENTION_DECODE | FS_ATTENTION_USES_INPUT |
             FS_ATTENTION_BOUNDED_CACHE | FS_ATTENTION_PAGED | LF_DEVICES | FS_ATTENTION_PAGED_BF16,
    .create = lf_create,
    .destroy = lf_destroy,
    .saved_bytes = lf_saved_bytes,
    .forward = lf_forward,
    .backward = lf_backward,
    .cache_bytes = lf_cache_bytes,
    .cache_reset = lf_cache_reset_on,
    .decode = lf_decode,
    .scores = NULL,
    .init_params = lf_init_params,
    .paged_block_bytes = lf_paged_block_bytes,
    .paged_step = lf_paged_step,
    .paged_retain = lf_paged_retain,
    .paged_max_blocks = lf_paged_max_blocks,
};

static const fs_param_spec lf_params[] = {
    {"window", FS_PARAM_INT, "256", 1, 1048576, NULL,
     "tokens each side a local token sees (causal: this many earlier tokens and itself); [layer.N] may grow it"},
    {"dilation", FS_PARAM_INT_LIST, "1", 1, 65536, NULL,
     "attend to every d-th token, reaching d * window: one value, or one per head (n_head values)"},
    {"global", FS_PARAM_STRING, "none", 0, 0, NULL,
     "global tokens: none | first:N | token:ID[,ID...] (every occurrence) | P[,P...] (positions < max_seq)"},
    {"global_cache", FS_PARAM_INT, "64", 1, FS_PARAM_UNBOUNDED, NULL,
     "generation with global = token:...: the most recent global tokens the KV cache keeps"},
    {"block", FS_PARAM_INT, "0", 0, 65536, NULL, "query rows per block of the banded kernel (0 = automatic)"},
};

static const fs_plugin_descriptor lf_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "longformer",
    .version = "1.1.0",
    .summary = "sliding-window (dilated) attention with global tokens; O(T*window), bounded KV cache in generation",
    .params = lf_params,
    .n_params = sizeof lf_params / sizeof lf_params[0],
    .vtable = &lf_vtable,
    .vtable_size = sizeof(lf_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(lf_descriptor)
