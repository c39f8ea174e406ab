/* window.c — causal sliding-window attention, an out-of-tree FastServe
 * attention plugin built against the installed SDK alone.
 *
 * Token t attends to the `window` most recent tokens, itself included:
 * keys j with t - window < j <= t. With window >= T this is exactly dense
 * causal attention. Training saves the (B, H, T, W) probabilities of the
 * window (W = min(window, T)), so memory grows as T * window, not T^2;
 * generation keeps a ring of the last W keys and values per head, so the
 * cache is bounded however long the text.
 *
 * Everything the plugin needs from fsrun comes through the fs_host_api
 * table handed to create: its configuration, memory, the thread pool,
 * logging and error reporting. It links against nothing but libm. */
#include <math.h>
#include <string.h>

#include <fastserve/attention.h>

typedef struct window_attn {
    const fs_host_api *host;
    fs_attention_config cfg;
    size_t window;
    float scale;
    int threaded; /* the host offers parallel_for (see create) */
} window_attn;

/* The generation cache: this header, then K and V rings of (B, H, R, D)
 * and one row of R scores, R = ring slots. */
typedef struct ring_header {
    size_t B, ring, context, len;
    size_t pad[4]; /* keeps the rings 64-byte aligned */
} ring_header;

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* First key token t sees. */
static size_t first_key(const window_attn *w, size_t t) { return t + 1 > w->window ? t + 1 - w->window : 0; }

static int window_create(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_attention_config *cfg,
                         fs_error *err) {
    *self = NULL;
    if (cfg->device.type != FS_DEVICE_CPU)
        return host->error_set(err, FS_ERR_UNSUPPORTED, "example_window: only the CPU device is implemented");
    if (!cfg->causal) /* fsrun checks the flags first; a plugin still guards itself */
        return host->error_set(err, FS_ERR_UNSUPPORTED, "example_window: sliding-window attention is causal only");
    window_attn *w = host->alloc(cfg->device, sizeof *w);
    if (!w) return host->error_set(err, FS_ERR_NOMEM, "example_window: out of memory");
    w->host = host;
    w->cfg = *cfg;
    w->window = (size_t)host->config_int(ctx, "window"); /* validated against the schema: >= 1 */
    w->scale = 1.0f / sqrtf((float)cfg->head_dim);
    /* The growth rule from the plugin's side: use a host member only when
     * the host's table is long enough to have it. */
    w->threaded = FS_HAS_MEMBER(host, host->struct_size, fs_host_api, parallel_for);
    host->log(ctx, FS_LOG_DEBUG, "layer %d: window %zu of max_seq %zu", (int)cfg->layer, w->window, cfg->max_seq);
    *self = w;
    return FS_OK;
}

static void window_destroy(void *self) {
    window_attn *w = self;
    if (w) w->host->free(w->cfg.device, w);
}

/* Slots per (b, h, t) row of the saved probabilities. */
static size_t saved_width(const window_attn *w, size_t T) { return min_sz(w->window, T); }

static size_t window_saved_bytes(void *self, size_t B, size_t T) {
    window_attn *w = self;
    return B * w->cfg.n_head * T * saved_width(w, T) * sizeof(float);
}

/* Runs fn over [0, n) on the host's pool, or inline. */
static void run(const window_attn *w, size_t n, fs_parallel_fn fn, void *arg) {
    if (w->threaded)
        w->host->parallel_for(n, 1, fn, arg);
    else
        fn(arg, 0, n);
}

static int check_f32_cpu(const window_attn *w, const fs_tensor *t, fs_error *err) {
    if (t->device.type != FS_DEVICE_CPU || t->dtype != FS_DTYPE_F32)
        return w->host->error_set(err, FS_ERR_UNSUPPORTED, "example_window: expects f32 CPU tensors");
    return FS_OK;
}

static float dot(const float *a, const float *b, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* One query against n keys and values: key i is row (first + i) % R of K
 * and V (row-major, D wide; R larger than any index means no wrap). p[i]
 * gets the probabilities, out the weighted sum. Forward and decode both use
 * it, so generation reproduces the training forward exactly. */
static void attend(float *p, float *out, const float *q, const float *K, const float *V, size_t first, size_t n,
                   size_t R, size_t D, float scale) {
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        p[i] = dot(q, K + ((first + i) % R) * D, D) * scale;
        mx = p[i] > mx ? p[i] : mx;
    }
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        p[i] = expf(p[i] - mx);
        sum += p[i];
    }
    float inv = 1.0f / sum;
    memset(out, 0, D * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        const float *v = V + ((first + i) % R) * D;
        p[i] *= inv;
        for (size_t c = 0; c < D; c++) out[c] += p[i] * v[c];
    }
}

typedef struct job {
    const window_attn *w;
    const fs_attention_args *a;
    size_t W; /* saved_width */
} job;

static void forward_heads(void *arg, size_t begin, size_t end) {
    const job *j = arg;
    const window_attn *w = j->w;
    const fs_attention_args *a = j->a;
    size_t T = a->T, D = w->cfg.head_dim, W = j->W;
    for (size_t bh = begin; bh < end; bh++) {
        size_t o = bh * T * D;
        const float *q = (const float *)a->q.data + o, *k = (const float *)a->k.data + o;
        const float *v = (const float *)a->v.data + o;
        float *out = (float *)a->out.data + o, *P = (float *)a->saved + bh * T * W;
        for (size_t t = 0; t < T; t++) {
            size_t lo = first_key(w, t), n = t + 1 - lo;
            float *p = P + t * W;
            attend(p, out + t * D, q + t * D, k, v, lo, n, T, D, w->scale);
            for (size_t i = n; i < W; i++) p[i] = 0.0f;
        }
    }
}

static int window_forward(void *self, fs_attention_args *a, fs_error *err) {
    window_attn *w = self;
    if (a->T > w->cfg.max_seq)
        return w->host->error_set(err, FS_ERR_INVALID, "example_window: T = %zu exceeds max_seq = %zu", a->T,
                                  w->cfg.max_seq);
    if (check_f32_cpu(w, &a->q, err)) return err->status;
    job j = {w, a, saved_width(w, a->T)};
    run(w, a->B * w->cfg.n_head, forward_heads, &j);
    return FS_OK;
}

/* With S = scale * q.k and P = softmax(S) over the window of row t:
 *   dV_j += P_tj dO_t
 *   dP_tj = dO_t . V_j
 *   dS_tj = P_tj (dP_tj - sum_i P_ti dP_ti)
 *   dQ_t  = scale * sum_j dS_tj K_j,   dK_j += scale * dS_tj Q_t
 * Each (b, h) is independent, so heads run in parallel without races. */
static void backward_heads(void *arg, size_t begin, size_t end) {
    const job *j = arg;
    const window_attn *w = j->w;
    const fs_attention_args *a = j->a;
    size_t T = a->T, D = w->cfg.head_dim, W = j->W;
    for (size_t bh = begin; bh < end; bh++) {
        size_t o = bh * T * D;
        const float *q = (const float *)a->q.data + o, *k = (const float *)a->k.data + o;
        const float *v = (const float *)a->v.data + o, *dout = (const float *)a->dout.data + o;
        const float *P = (const float *)a->saved + bh * T * W;
        float *dq = (float *)a->dq.data + o, *dk = (float *)a->dk.data + o, *dv = (float *)a->dv.data + o;
        memset(dk, 0, T * D * sizeof(float)); /* dq, dk, dv are overwritten, not accumulated */
        memset(dv, 0, T * D * sizeof(float));
        for (size_t t = 0; t < T; t++) {
            size_t lo = first_key(w, t), n = t + 1 - lo;
            const float *p = P + t * W, *go = dout + t * D, *qt = q + t * D;
            float rowdot = 0.0f; /* sum_i P_ti dP_ti */
            for (size_t i = 0; i < n; i++) rowdot += p[i] * dot(go, v + (lo + i) * D, D);
            float *dqt = dq + t * D;
            memset(dqt, 0, D * sizeof(float));
            for (size_t i = 0; i < n; i++) {
                size_t key = lo + i;
                float ds = p[i] * (dot(go, v + key * D, D) - rowdot) * w->scale;
                const float *kj = k + key * D;
                float *dkj = dk + key * D, *dvj = dv + key * D;
                for (size_t c = 0; c < D; c++) {
                    dqt[c] += ds * kj[c];
                    dkj[c] += ds * qt[c];
                    dvj[c] += p[i] * go[c];
                }
            }
        }
    }
}

static int window_backward(void *self, fs_attention_args *a, fs_error *err) {
    window_attn *w = self;
    if (check_f32_cpu(w, &a->dout, err)) return err->status;
    job j = {w, a, saved_width(w, a->T)};
    run(w, a->B * w->cfg.n_head, backward_heads, &j);
    return FS_OK;
}

/* ---- generation: a ring of the last R keys and values ---- */

/* The context a cache serves: `context`, or for 0 (the plugin's bounded
 * size) none at all when the window fits in max_seq, since a ring of
 * `window` slots serves any length; otherwise max_seq. */
static size_t cache_context(const window_attn *w, size_t context) {
    if (context) return context;
    return w->window > w->cfg.max_seq ? w->cfg.max_seq : 0;
}

/* Ring slots for a context (0: unbounded). */
static size_t ring_slots(const window_attn *w, size_t context) {
    return context ? min_sz(w->window, context) : w->window;
}

static size_t window_cache_bytes(void *self, size_t B, size_t context) {
    window_attn *w = self;
    size_t R = ring_slots(w, cache_context(w, context));
    return sizeof(ring_header) + (2 * B * w->cfg.n_head * R * w->cfg.head_dim + R) * sizeof(float);
}

static int window_cache_reset(void *self, void *cache, size_t B, size_t context, fs_error *err) {
    window_attn *w = self;
    (void)err;
    ring_header *h = cache;
    h->B = B;
    h->context = cache_context(w, context);
    h->ring = ring_slots(w, h->context);
    h->len = 0;
    return FS_OK;
}

static int window_decode(void *self, void *cache, fs_attention_decode_args *a, fs_error *err) {
    window_attn *w = self;
    ring_header *h = cache;
    size_t H = w->cfg.n_head, D = w->cfg.head_dim, R = h->ring;
    if (a->B != h->B)
        return w->host->error_set(err, FS_ERR_INVALID, "example_window: decode batch %zu != cache batch %zu", a->B,
                                  h->B);
    if (a->pos != h->len)
        return w->host->error_set(err, FS_ERR_INVALID, "example_window: decode position %zu, expected %zu", a->pos,
                                  h->len);
    /* a ring of `window` slots serves any length; a smaller one (the whole
     * context fit in less) serves that context, no more */
    if (h->ring < w->window && a->pos >= h->context)
        return w->host->error_set(err, FS_ERR_INVALID,
                                  "example_window: position %zu is past the context of %zu the cache was made for",
                                  a->pos, h->context);
    if (check_f32_cpu(w, &a->q, err)) return err->status;
    float *K = (float *)(h + 1), *V = K + h->B * H * R * D, *p = V + h->B * H * R * D;
    size_t lo = first_key(w, a->pos), n = a->pos + 1 - lo; /* n <= R */
    for (size_t bh = 0; bh < a->B * H; bh++) {
        float *Kr = K + bh * R * D, *Vr = V + bh * R * D;
        memcpy(Kr + (a->pos % R) * D, (const float *)a->k.data + bh * D, D * sizeof(float));
        memcpy(Vr + (a->pos % R) * D, (const float *)a->v.data + bh * D, D * sizeof(float));
        /* keys oldest first, as in forward */
        attend(p, (float *)a->out.data + bh * D, (const float *)a->q.data + bh * D, Kr, Vr, lo, n, R, D, w->scale);
    }
    h->len++;
    return FS_OK;
}

/* ---- optional: attention maps for distillation (FS_ATTENTION_SCORES) ---- */

static int window_scores(void *self, fs_attention_scores_args *s, fs_error *err) {
    window_attn *w = self;
    const fs_attention_args *f = s->fwd;
    size_t T = f->T, D = w->cfg.head_dim, W = saved_width(w, T);
    (void)err;
    for (size_t bh = 0; bh < f->B * w->cfg.n_head; bh++) {
        const float *q = (const float *)f->q.data + bh * T * D, *k = (const float *)f->k.data + bh * T * D;
        const float *P = (const float *)f->saved + bh * T * W;
        float *out = (float *)s->scores.data + bh * T * T;
        memset(out, 0, T * T * sizeof(float)); /* outside the window: 0 */
        for (size_t t = 0; t < T; t++) {
            size_t lo = first_key(w, t);
            for (size_t key = lo; key <= t; key++)
                out[t * T + key] = s->probs ? P[t * W + key - lo] : dot(q + t * D, k + key * D, D) * w->scale;
        }
    }
    return FS_OK;
}

/* ---- what fsrun sees ---- */

static const fs_param_spec window_params[] = {
    {"window", FS_PARAM_INT, "16", 1, FS_PARAM_UNBOUNDED, NULL,
     "tokens each position attends to, itself included (>= max_seq: dense causal)"},
};

static const fs_attention_vtable window_vtable = {
    .struct_size = sizeof(fs_attention_vtable),
    .flags = FS_ATTENTION_CAUSAL | FS_ATTENTION_DECODE | FS_ATTENTION_SCORES,
    .create = window_create,
    .destroy = window_destroy,
    .saved_bytes = window_saved_bytes,
    .forward = window_forward,
    .backward = window_backward,
    .cache_bytes = window_cache_bytes,
    .cache_reset = window_cache_reset,
    .decode = window_decode,
    .scores = window_scores,
};

static const fs_plugin_descriptor window_descriptor = {
    .abi_version = FS_ABI_VERSION,
    .struct_size = sizeof(fs_plugin_descriptor),
    .kind = FS_PLUGIN_ATTENTION,
    .name = "example_window",
    .version = "1.0.0",
    .summary = "causal sliding-window attention (SDK example); O(T*window) memory, bounded generation cache",
    .params = window_params,
    .n_params = sizeof window_params / sizeof window_params[0],
    .vtable = &window_vtable,
    .vtable_size = sizeof(window_vtable),
};

FS_PLUGIN_DEFINE_ENTRY(window_descriptor)
