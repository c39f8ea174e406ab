/* device_gpt.c — see device_gpt.h. */
#include "model/device_gpt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the model's tensors ---- */

/* Per-layer parameters in Hugging Face order; the matrices are GEMM
 * operands (a bf16 copy when activations are bf16). */
enum { LN1W, LN1B, QKVW, QKVB, PROJW, PROJB, LN2W, LN2B, FCW, FCB, FCPW, FCPB, N_LAYER_TENSORS };
static const char *const layer_names[N_LAYER_TENSORS] = {
    "ln_1.weight", "ln_1.bias",  "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
    "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias"};

/* A parameter tensor: the model's own live in the flat block (offset into
 * it); an attention plugin's (registered through the host API) have
 * device buffers of their own, and their offset is where they sit in the
 * CPU model's block, after the model's tensors, in registration order. */
typedef struct dg_tensor {
    char name[96];
    size_t offset, numel;
    int decay;
    float *param, *grad, *m1, *m2; /* a plugin's tensor: its own buffers; NULL: in the block */
} dg_tensor;

/* One layer's saved activations for backward. */
typedef struct dg_layer {
    void *x;             /* (BT, C) the layer's input (residual stream) */
    void *ln1, *ln2;     /* (BT, C) */
    float *mean1, *rstd1, *mean2, *rstd2; /* (BT) */
    void *q, *k, *v;     /* (B, H, T, D) */
    void *atty;          /* (B, H, T, D) */
    void *attm;          /* (BT, C) heads merged */
    void *x2;            /* (BT, C) after the attention residual */
    void *fch, *fchg;    /* (BT, 4C) */
    void *saved;         /* the attention plugin's */
    const fs_attention_vtable *avt;
    void *attn;          /* the plugin instance */
    fs_plugin_ctx ctx;
} dg_layer;

struct fs_device_gpt {
    fs_backend_handle *b;
    fs_device_gpt_config cfg;
    size_t D, F, es;     /* head width, MLP width, activation element size */
    size_t B, BT;        /* the last forward's rows, and its rows * T (cfg.B * T when allocating) */
    dg_tensor *tensors;
    size_t n_tensors, cap_tensors, n_params; /* n_params: the block's floats plus the plugins' tensors' */
    size_t n_block;                          /* floats of the block: the model's own tensors */
    size_t lnf, head;    /* indices of ln_f.weight and of the head's matrix (wte when tied) */
    fs_host host;        /* what the attention plugins see: the caller's seed, tensors placed here */
    float *params, *grads, *m, *v; /* (n_block) f32 on the device */
    void *pcopy;                   /* (n_block) bf16 GEMM operands, or NULL */
    dg_layer *layers;
    void *xout, *lnfo;             /* (BT, C) */
    float *meanf, *rstdf;
    void *logits;                  /* (BT, V) logits, then their gradient; rows ldv apart */
    size_t ldv;                    /* V rounded up to 64: rows of 16-byte multiples, as tensor-core GEMMs
                                      need (GPT-2's 50257 in bf16 would leave every row misaligned) */
    void *dres, *dtmp, *dbig;      /* (BT, C), (BT, C), (BT, 4C) gradients */
    void *dq, *dk, *dv, *datty;    /* (B, H, T, D) */
    void *dqkv;                    /* (BT, 3C) */
    int32_t *inputs, *targets;     /* (BT) on the device */
    int32_t *tokens;               /* (BT) host: the last forward's inputs, for the plugins (attention.h) */
    double *scalar;                /* one double on the device */
    int have_dlogits;
    fs_device_gpt_grads_ready_fn ready; /* backward's progress, for collectives that overlap it */
    void *ready_arg;
};

size_t fs_device_gpt_n_tensors(const fs_device_gpt *m) { return m->n_tensors; }
const char *fs_device_gpt_tensor_name(const fs_device_gpt *m, size_t i) { return m->tensors[i].name; }
size_t fs_device_gpt_tensor_offset(const fs_device_gpt *m, size_t i) { return m->tensors[i].offset; }
size_t fs_device_gpt_tensor_numel(const fs_device_gpt *m, size_t i) { return m->tensors[i].numel; }
size_t fs_device_gpt_n_params(const fs_device_gpt *m) { return m->n_params; }
float *fs_device_gpt_device_grads(fs_device_gpt *m) { return m->grads; }

static dg_tensor *add_tensor(fs_device_gpt *m, const char *name, size_t numel, int decay) {
    if (m->n_tensors == m->cap_tensors) {
        size_t cap = 2 * m->cap_tensors;
        dg_tensor *t = realloc(m->tensors, cap * sizeof *t);
        if (!t) return NULL;
        memset(t + m->n_tensors, 0, (cap - m->n_tensors) * sizeof *t);
        m->tensors = t;
        m->cap_tensors = cap;
    }
    dg_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->offset = m->n_params;
    t->numel = numel;
    t->decay = decay;
    m->n_params += numel;
    return t;
}

static void build_table(fs_device_gpt *m) {
    const fs_device_gpt_config *c = &m->cfg;
    size_t C = c->C, numel[N_LAYER_TENSORS] = {C, C, C * 3 * C, 3 * C, C * C, C, C, C, C * 4 * C, 4 * C, 4 * C * C, C};
    add_tensor(m, "transformer.wte.weight", c->V * C, 1);
    add_tensor(m, "transformer.wpe.weight", c->maxT * C, 1);
    char name[64];
    for (size_t l = 0; l < c->L; l++)
        for (int i = 0; i < N_LAYER_TENSORS; i++) {
            snprintf(name, sizeof name, "transformer.h.%zu.%s", l, layer_names[i]);
            add_tensor(m, name, numel[i], i == QKVW || i == PROJW || i == FCW || i == FCPW);
        }
    m->lnf = m->n_tensors;
    add_tensor(m, "transformer.ln_f.weight", C, 0);
    add_tensor(m, "transformer.ln_f.bias", C, 0);
    m->head = 0;
    if (c->untied_head) {
        m->head = m->n_tensors;
        add_tensor(m, "lm_head.weight", c->V * C, 1);
    }
    m->n_block = m->n_params;
}

/* Parameter tensor `i` of layer l (f32 master), and its GEMM operand. */
static float *lp(const fs_device_gpt *m, size_t l, int i) { return m->params + m->tensors[2 + l * N_LAYER_TENSORS + i].offset; }
static float *lg(const fs_device_gpt *m, size_t l, int i) { return m->grads + m->tensors[2 + l * N_LAYER_TENSORS + i].offset; }
static const void *operand(const fs_device_gpt *m, const float *master) {
    if (!m->pcopy) return master;
    return (const char *)m->pcopy + (size_t)(master - m->params) * 2;
}

/* ---- memory ---- */

static int dalloc(fs_device_gpt *m, void **p, size_t bytes, fs_error *err) {
    return m->b->vt->alloc(m->b->self, p, bytes, FS_MEM_DEVICE, err);
}

/* fs_host.place_param for the attention plugins: a tensor with zeroed
 * device buffers for its values, gradient and AdamW's two moments. */
static int place_on_device(void *arg, const char *name, int32_t ndim, const size_t *shape, int weight_decay,
                           float **param, float **grad, fs_error *err) {
    fs_device_gpt *m = arg;
    size_t numel = 1;
    for (int32_t i = 0; i < ndim; i++) numel *= shape[i];
    dg_tensor *t = add_tensor(m, name, numel, weight_decay);
    if (!t) return fs_error_set(err, FS_ERR_NOMEM, "device_gpt: out of memory for %s", name);
    float **bufs[] = {&t->param, &t->grad, &t->m1, &t->m2};
    int rc = FS_OK;
    for (size_t i = 0; i < 4 && !rc; i++) {
        rc = dalloc(m, (void **)bufs[i], numel * sizeof(float), err);
        if (!rc) rc = m->b->vt->memset(m->b->self, NULL, *bufs[i], 0, numel * sizeof(float), err);
    }
    *param = t->param;
    *grad = t->grad;
    return rc;
}

static int alloc_layer(fs_device_gpt *m, dg_layer *L, size_t l, fs_error *err) {
    size_t BT = m->BT, C = m->cfg.C, es = m->es;
    void **act[] = {&L->x, &L->ln1, &L->ln2, &L->q, &L->k, &L->v, &L->atty, &L->attm, &L->x2};
    int rc = FS_OK;
    for (size_t i = 0; i < sizeof act / sizeof act[0] && !rc; i++) rc = dalloc(m, act[i], BT * C * es, err);
    float **stats[] = {&L->mean1, &L->rstd1, &L->mean2, &L->rstd2};
    for (size_t i = 0; i < 4 && !rc; i++) rc = dalloc(m, (void **)stats[i], BT * sizeof(float), err);
    if (!rc) rc = dalloc(m, &L->fch, BT * m->F * es, err);
    if (!rc) rc = dalloc(m, &L->fchg, BT * m->F * es, err);
    if (rc) return rc;
    fs_attention_config ac = {sizeof ac, (int32_t)l, m->cfg.H, m->D, C, m->cfg.maxT, 1, m->b->device, FS_DTYPE_F32};
    char scope[64];
    snprintf(scope, sizeof scope, "plugin.layer%zu.attention", l);
    fs_host *host = &m->host;
    const fs_device_gpt_attention *own = m->cfg.layers ? &m->cfg.layers[l] : NULL;
    fs_plugin_ctx_init(&L->ctx, host, own ? own->config : m->cfg.attention_config, scope,
                       own ? own->name : m->cfg.attention);
    if ((rc = L->avt->create(&L->attn, &host->api, &L->ctx, &ac, err))) return rc;
    return dalloc(m, &L->saved, L->avt->saved_bytes(L->attn, m->cfg.B, m->cfg.T), err);
}

/* Each layer's attention vtable: the caller's, or `attention` by name from
 * the handle's plugins. */
static int find_attention(fs_device_gpt *m, fs_error *err) {
    const fs_attention_vtable *shared = NULL;
    if (!m->cfg.layers) {
        const fs_plugin *ap = NULL;
        int rc = fs_plugin_registry_get(&m->b->reg, FS_PLUGIN_ATTENTION, m->cfg.attention, &ap, err);
        if (rc) return rc;
        shared = ap->desc->vtable;
    }
    for (size_t l = 0; l < m->cfg.L; l++) m->layers[l].avt = shared ? shared : m->cfg.layers[l].vt;
    return FS_OK;
}

static int alloc_model(fs_device_gpt *m, fs_error *err) {
    size_t BT = m->BT, C = m->cfg.C, es = m->es, P = m->n_block;
    const fs_backend_vtable *vt = m->b->vt;
    int rc = FS_OK;
    /* the head's GEMMs run over ldv rows of its matrix and its gradient
     * (dims of multiples of 8, which cuBLASLt's tensor-core kernels want;
     * at 50257 it falls back to "align1" kernels 4x slower): rows past the
     * block's end are zeros, and the gradients' pad adds 0 */
    m->ldv = (m->cfg.V + 63) / 64 * 64;
    size_t Ps = P + (m->ldv - m->cfg.V) * C;
    float **blocks[] = {&m->params, &m->grads, &m->m, &m->v};
    for (size_t i = 0; i < 4 && !rc; i++) rc = dalloc(m, (void **)blocks[i], (i < 2 ? Ps : P) * sizeof(float), err);
    if (!rc && m->cfg.dtype == FS_DTYPE_BF16) rc = dalloc(m, &m->pcopy, Ps * 2, err);
    void **act[] = {&m->xout, &m->lnfo, &m->dres, &m->dtmp, &m->dq, &m->dk, &m->dv, &m->datty};
    for (size_t i = 0; i < sizeof act / sizeof act[0] && !rc; i++) rc = dalloc(m, act[i], BT * C * es, err);
    if (!rc) rc = dalloc(m, (void **)&m->meanf, BT * sizeof(float), err);
    if (!rc) rc = dalloc(m, (void **)&m->rstdf, BT * sizeof(float), err);
    if (!rc) rc = dalloc(m, &m->logits, BT * m->ldv * es, err);
    if (!rc) rc = dalloc(m, &m->dbig, BT * m->F * es, err);
    if (!rc) rc = dalloc(m, &m->dqkv, BT * 3 * C * es, err);
    if (!rc) rc = dalloc(m, (void **)&m->inputs, BT * sizeof(int32_t), err);
    if (!rc) rc = dalloc(m, (void **)&m->targets, BT * sizeof(int32_t), err);
    if (!rc) rc = dalloc(m, (void **)&m->scalar, sizeof(double), err);
    for (size_t l = 0; l < m->cfg.L && !rc; l++) rc = alloc_layer(m, &m->layers[l], l, err);
    void *zeroed[] = {m->params, m->grads, m->m, m->v, m->pcopy};
    size_t zbytes[] = {Ps * sizeof(float), Ps * sizeof(float), P * sizeof(float), P * sizeof(float), Ps * 2};
    for (size_t i = 0; i < 5 && !rc; i++)
        if (zeroed[i]) rc = vt->memset(m->b->self, NULL, zeroed[i], 0, zbytes[i], err);
    return rc;
}

int fs_device_gpt_create(fs_device_gpt **out, fs_backend_handle *b, const fs_device_gpt_config *cfg, fs_error *err) {
    *out = NULL;
    if (cfg->C % cfg->H || cfg->T > cfg->maxT || (cfg->dtype != FS_DTYPE_F32 && cfg->dtype != FS_DTYPE_BF16))
        return fs_error_set(err, FS_ERR_INVALID, "device_gpt: C %% H, T > maxT or dtype %d", (int)cfg->dtype);
    fs_device_gpt *m = calloc(1, sizeof *m);
    if (!m) return fs_error_set(err, FS_ERR_NOMEM, "device_gpt: out of memory");
    m->b = b;
    m->cfg = *cfg;
    if (!m->cfg.attention) m->cfg.attention = "dense";
    m->D = cfg->C / cfg->H;
    m->F = 4 * cfg->C;
    m->B = cfg->B;
    m->BT = cfg->B * cfg->T;
    m->es = cfg->dtype == FS_DTYPE_BF16 ? 2 : 4;
    m->cap_tensors = 5 + cfg->L * N_LAYER_TENSORS;
    m->tensors = calloc(m->cap_tensors, sizeof *m->tensors);
    m->tokens = malloc(m->BT * sizeof *m->tokens);
    m->host = cfg->host ? *cfg->host : b->host;
    m->host.place_param = place_on_device;
    m->host.place_arg = m;
    m->layers = calloc(cfg->L, sizeof *m->layers);
    int rc = !m->tensors || !m->layers || !m->tokens ? fs_error_set(err, FS_ERR_NOMEM, "device_gpt: out of memory")
                                       : find_attention(m, err);
    if (!rc) {
        build_table(m);
        rc = alloc_model(m, err);
    }
    if (rc) {
        fs_device_gpt_destroy(m);
        return rc;
    }
    *out = m;
    return FS_OK;
}

void fs_device_gpt_destroy(fs_device_gpt *m) {
    if (!m) return;
    const fs_backend_vtable *vt = m->b->vt;
    void *self = m->b->self;
    fs_error err = {0};
    vt->synchronize(self, &err);
    for (size_t l = 0; m->layers && l < m->cfg.L; l++) {
        dg_layer *L = &m->layers[l];
        if (L->attn) L->avt->destroy(L->attn);
        void *p[] = {L->x, L->ln1, L->ln2, L->q, L->k, L->v, L->atty, L->attm, L->x2, L->mean1, L->rstd1,
                     L->mean2, L->rstd2, L->fch, L->fchg, L->saved};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) vt->free(self, p[i], FS_MEM_DEVICE);
    }
    void *p[] = {m->params, m->grads, m->m, m->v, m->pcopy, m->xout, m->lnfo, m->meanf, m->rstdf, m->logits,
                 m->dres, m->dtmp, m->dbig, m->dq, m->dk, m->dv, m->datty, m->dqkv, m->inputs, m->targets,
                 m->scalar};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) vt->free(self, p[i], FS_MEM_DEVICE);
    for (size_t i = 0; i < m->n_tensors; i++) { /* the plugins' tensors' own buffers */
        float *q[] = {m->tensors[i].param, m->tensors[i].grad, m->tensors[i].m1, m->tensors[i].m2};
        for (size_t j = 0; j < 4; j++) vt->free(self, q[j], FS_MEM_DEVICE);
    }
    free(m->layers);
    free(m->tensors);
    free(m->tokens);
    free(m);
}

/* ---- host <-> device ---- */

static int h2d(fs_device_gpt *m, void *dst, const void *src, size_t bytes, fs_error *err) {
    return m->b->vt->copy(m->b->self, NULL, dst, src, bytes, FS_COPY_HOST_TO_DEVICE, err);
}

static int d2h(fs_device_gpt *m, void *dst, const void *src, size_t bytes, fs_error *err) {
    int rc = m->b->vt->copy(m->b->self, NULL, dst, src, bytes, FS_COPY_DEVICE_TO_HOST, err);
    return rc ? rc : m->b->vt->stream_synchronize(m->b->self, NULL, err);
}

int fs_device_gpt_sync(fs_device_gpt *m, fs_error *err) { return m->b->vt->stream_synchronize(m->b->self, NULL, err); }

/* What a tensor has on the device: values, gradient, AdamW's moments. */
enum { DG_PARAM, DG_GRAD, DG_M1, DG_M2 };

/* Tensor i's buffer of kind `which` on the device. */
static float *tensor_buf(const fs_device_gpt *m, size_t i, int which) {
    const dg_tensor *t = &m->tensors[i];
    float *own[] = {t->param, t->grad, t->m1, t->m2}, *block[] = {m->params, m->grads, m->m, m->v};
    return own[which] ? own[which] : block[which] + t->offset;
}

/* host (fs_device_gpt_n_params floats: the CPU model's layout) <-> the
 * device's buffers of kind `which`: the block in one copy, each plugin
 * tensor in one more. */
static int move_all(fs_device_gpt *m, int which, float *host, int to_device, fs_error *err) {
    int kind = to_device ? FS_COPY_HOST_TO_DEVICE : FS_COPY_DEVICE_TO_HOST;
    const fs_backend_vtable *vt = m->b->vt;
    float *block = tensor_buf(m, 0, which);
    int rc = to_device ? vt->copy(m->b->self, NULL, block, host, m->n_block * sizeof(float), kind, err)
                       : vt->copy(m->b->self, NULL, host, block, m->n_block * sizeof(float), kind, err);
    for (size_t i = 0; i < m->n_tensors && !rc; i++) {
        const dg_tensor *t = &m->tensors[i];
        if (!t->param) continue;
        float *dev = tensor_buf(m, i, which);
        rc = to_device ? vt->copy(m->b->self, NULL, dev, host + t->offset, t->numel * sizeof(float), kind, err)
                       : vt->copy(m->b->self, NULL, host + t->offset, dev, t->numel * sizeof(float), kind, err);
    }
    return rc ? rc : fs_device_gpt_sync(m, err);
}

int fs_device_gpt_set_params(fs_device_gpt *m, const float *params, fs_error *err) {
    int rc = move_all(m, DG_PARAM, (float *)params, 1, err);
    if (!rc && m->pcopy)
        rc = m->b->vt->convert(m->b->self, NULL, m->pcopy, FS_DTYPE_BF16, m->params, FS_DTYPE_F32, m->n_block, err);
    return rc ? rc : fs_device_gpt_sync(m, err);
}

int fs_device_gpt_get_params(fs_device_gpt *m, float *params, fs_error *err) {
    return move_all(m, DG_PARAM, params, 0, err);
}

int fs_device_gpt_get_grads(fs_device_gpt *m, float *grads, fs_error *err) {
    return move_all(m, DG_GRAD, grads, 0, err);
}

int fs_device_gpt_set_grads(fs_device_gpt *m, const float *grads, fs_error *err) {
    return move_all(m, DG_GRAD, (float *)grads, 1, err);
}

size_t fs_device_gpt_n_grad_buffers(const fs_device_gpt *m) {
    size_t n = 1;
    for (size_t i = 0; i < m->n_tensors; i++) n += m->tensors[i].grad != NULL;
    return n;
}

float *fs_device_gpt_grad_buffer(fs_device_gpt *m, size_t i, size_t *n) {
    *n = m->n_block;
    if (i == 0) return m->grads;
    for (size_t t = 0; t < m->n_tensors; t++)
        if (m->tensors[t].grad && --i == 0) {
            *n = m->tensors[t].numel;
            return m->tensors[t].grad;
        }
    *n = 0;
    return NULL;
}

int fs_device_gpt_get_logits(fs_device_gpt *m, float *logits, fs_error *err) {
    size_t n = m->BT * m->ldv, V = m->cfg.V;
    float *tmp = NULL, *host = malloc(n * sizeof *host);
    if (!host) return fs_error_set(err, FS_ERR_NOMEM, "device_gpt: out of memory for the logits");
    int rc = FS_OK;
    if (m->es == 4) rc = d2h(m, host, m->logits, n * sizeof(float), err);
    else {
        rc = dalloc(m, (void **)&tmp, n * sizeof(float), err);
        if (!rc) rc = m->b->vt->convert(m->b->self, NULL, tmp, FS_DTYPE_F32, m->logits, FS_DTYPE_BF16, n, err);
        if (!rc) rc = d2h(m, host, tmp, n * sizeof(float), err);
        m->b->vt->free(m->b->self, tmp, FS_MEM_DEVICE);
    }
    for (size_t r = 0; !rc && r < m->BT; r++) memcpy(logits + r * V, host + r * m->ldv, V * sizeof(float));
    free(host);
    return rc;
}

/* ---- forward ---- */

/* out (N, n) = inp (N, k) @ w (k, n) + bias: a Conv1D layer. */
static int linear(fs_device_gpt *m, void *out, const void *inp, const float *w, const float *bias, size_t N, size_t k,
                  size_t n, fs_error *err) {
    /* a bf16 output takes the bias's bf16 copy: what cuBLASLt's epilogue
     * fuses (backend.h, bias_dtype) */
    fs_gemm_args g = {.struct_size = sizeof g, .c = out, .a = inp, .b = operand(m, w), .c_dtype = m->cfg.dtype,
                      .ab_dtype = m->cfg.dtype, .m = N, .n = n, .k = k, .lda = k, .ldb = n, .ldc = n, .batch = 1,
                      .alpha = 1.0f, .beta = 0.0f, .bias = bias ? (const float *)operand(m, bias) : NULL, .compute = m->cfg.compute,
                      .bias_dtype = m->pcopy ? FS_DTYPE_BF16 : FS_DTYPE_F32};
    return m->b->vt->gemm(m->b->self, NULL, &g, err);
}

static fs_tensor bhtd(const fs_device_gpt *m, void *p) {
    fs_tensor t = fs_tensor_cpu_f32(p, 4, m->B, m->cfg.H, m->cfg.T, m->D);
    t.dtype = m->cfg.dtype;
    t.device = m->b->device;
    return t;
}

static fs_attention_args attention_args(fs_device_gpt *m, dg_layer *L) {
    fs_attention_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.B = m->B;
    a.T = m->cfg.T;
    a.q = bhtd(m, L->q);
    a.k = bhtd(m, L->k);
    a.v = bhtd(m, L->v);
    a.out = bhtd(m, L->atty);
    a.saved = L->saved;
    a.dout = bhtd(m, m->datty);
    a.dq = bhtd(m, m->dq);
    a.dk = bhtd(m, m->dk);
    a.dv = bhtd(m, m->dv);
    a.tokens = m->tokens; /* host memory on every device (attention.h) */
    if (L->avt->flags & FS_ATTENTION_USES_INPUT) { /* longformer's globals project ln1(x) themselves */
        a.x = bhtd(m, L->ln1);
        a.x.ndim = 3;
        a.x.shape[0] = m->B;
        a.x.shape[1] = m->cfg.T;
        a.x.shape[2] = m->cfg.C;
        a.x.shape[3] = 0;
        a.dx = a.x;
        a.dx.data = m->dbig; /* free while attention runs backward: the plugin adds into it */
    }
    return a;
}

/* x_out (BT, C) = one transformer block of L->x. */
static int layer_forward(fs_device_gpt *m, size_t l, void *xout, fs_error *err) {
    const fs_backend_vtable *vt = m->b->vt;
    void *be = m->b->self;
    dg_layer *L = &m->layers[l];
    size_t B = m->B, T = m->cfg.T, H = m->cfg.H, C = m->cfg.C, BT = m->BT, F = m->F, D = m->D;
    int32_t dt = m->cfg.dtype;
    int rc = vt->layernorm_forward(be, NULL, L->ln1, L->mean1, L->rstd1, L->x, lp(m, l, LN1W), lp(m, l, LN1B), BT, C,
                                   dt, err);
    if (!rc) rc = linear(m, m->dqkv, L->ln1, lp(m, l, QKVW), lp(m, l, QKVB), BT, C, 3 * C, err);
    if (!rc) rc = vt->attention_split_heads(be, NULL, L->q, L->k, L->v, m->dqkv, B, T, H, D, dt, err);
    fs_attention_args a = attention_args(m, L);
    if (!rc) rc = L->avt->forward(L->attn, &a, err);
    if (!rc) rc = vt->attention_merge_heads(be, NULL, L->attm, L->atty, B, T, H, D, dt, err);
    if (!rc) rc = linear(m, m->dtmp, L->attm, lp(m, l, PROJW), lp(m, l, PROJB), BT, C, C, err);
    if (!rc) rc = vt->residual_forward(be, NULL, L->x2, L->x, m->dtmp, BT * C, dt, err);
    if (!rc) rc = vt->layernorm_forward(be, NULL, L->ln2, L->mean2, L->rstd2, L->x2, lp(m, l, LN2W), lp(m, l, LN2B),
                                        BT, C, dt, err);
    if (!rc) rc = linear(m, L->fch, L->ln2, lp(m, l, FCW), lp(m, l, FCB), BT, C, F, err);
    if (!rc) rc = vt->gelu_forward(be, NULL, L->fchg, L->fch, BT * F, dt, err);
    if (!rc) rc = linear(m, m->dtmp, L->fchg, lp(m, l, FCPW), lp(m, l, FCPB), BT, F, C, err);
    if (!rc) rc = vt->residual_forward(be, NULL, xout, L->x2, m->dtmp, BT * C, dt, err);
    return rc;
}

/* logits (BT, V; rows ldv apart) = ln_f(x) @ W^T, W (V, C) the head: wte when tied.
 * The GEMM runs over ldv columns (alloc_model): the pad's are never read,
 * and the loss's gradient zeroes them (backend.h) for backward's GEMMs. */
static int head_forward(fs_device_gpt *m, fs_error *err) {
    const fs_backend_vtable *vt = m->b->vt;
    size_t C = m->cfg.C, BT = m->BT;
    float *lnfw = m->params + m->tensors[m->lnf].offset, *lnfb = lnfw + C;
    int rc = vt->layernorm_forward(m->b->self, NULL, m->lnfo, m->meanf, m->rstdf, m->xout, lnfw, lnfb, BT, C,
                                   m->cfg.dtype, err);
    const float *w = m->params + m->tensors[m->head].offset;
    fs_gemm_args g = {.struct_size = sizeof g, .c = m->logits, .a = m->lnfo, .b = operand(m, w),
                      .c_dtype = m->cfg.dtype, .ab_dtype = m->cfg.dtype, .trans_b = 1, .m = BT, .n = m->ldv,
                      .k = C, .lda = C, .ldb = C, .ldc = m->ldv, .batch = 1, .alpha = 1.0f, .compute = m->cfg.compute};
    return rc ? rc : vt->gemm(m->b->self, NULL, &g, err);
}

int fs_device_gpt_forward(fs_device_gpt *m, const int32_t *inputs, const int32_t *targets, double *loss, fs_error *err) {
    return fs_device_gpt_forward_rows(m, inputs, targets, m->cfg.B, 1.0f, loss, err);
}

int fs_device_gpt_forward_rows(fs_device_gpt *m, const int32_t *inputs, const int32_t *targets, size_t B, float dscale,
                               double *loss, fs_error *err) {
    const fs_backend_vtable *vt = m->b->vt;
    if (B == 0 || B > m->cfg.B)
        return fs_error_set(err, FS_ERR_INVALID, "device_gpt: %zu rows asked, 1 .. %zu allocated", B, m->cfg.B);
    m->B = B;
    m->BT = B * m->cfg.T;
    size_t BT = m->BT, C = m->cfg.C;
    m->have_dlogits = 0;
    memcpy(m->tokens, inputs, BT * sizeof(int32_t));
    int rc = h2d(m, m->inputs, inputs, BT * sizeof(int32_t), err);
    const float *wte = m->params, *wpe = m->params + m->tensors[1].offset;
    if (!rc) rc = vt->encoder_forward(m->b->self, NULL, m->layers[0].x, m->inputs, wte, wpe, B, m->cfg.T, C,
                                      0, m->cfg.dtype, err);
    for (size_t l = 0; l < m->cfg.L && !rc; l++)
        rc = layer_forward(m, l, l + 1 < m->cfg.L ? m->layers[l + 1].x : m->xout, err);
    if (!rc) rc = head_forward(m, err);
    if (rc || !targets) return rc;
    if ((rc = h2d(m, m->targets, targets, BT * sizeof(int32_t), err))) return rc;
    /* the gradient overwrites the logits: backward needs only it */
    rc = vt->crossentropy_forward_backward(m->b->self, NULL, m->scalar, m->logits, m->logits, m->targets, BT,
                                           m->cfg.V, m->ldv, dscale / (float)BT, m->cfg.dtype, err);
    if (!rc) rc = d2h(m, loss, m->scalar, sizeof(double), err);
    if (!rc) {
        *loss /= (double)BT;
        m->have_dlogits = 1;
    }
    return rc;
}

/* ---- backward ---- */

/* The gradients of a Conv1D layer out = inp @ w + b from dout (N, n):
 * dinp (N, k) = dout @ w^T, dw (k, n) += inp^T @ dout (f32), db += colsum. */
static int linear_backward(fs_device_gpt *m, void *dinp, float *dw, float *db, const void *dout, const void *inp,
                           const float *w, size_t N, size_t k, size_t n, fs_error *err) {
    const fs_backend_vtable *vt = m->b->vt;
    int32_t dt = m->cfg.dtype;
    fs_gemm_args g = {.struct_size = sizeof g, .c = dinp, .a = dout, .b = operand(m, w), .c_dtype = dt,
                      .ab_dtype = dt, .trans_b = 1, .m = N, .n = k, .k = n, .lda = n, .ldb = n, .ldc = k,
                      .batch = 1, .alpha = 1.0f, .compute = m->cfg.compute};
    int rc = vt->gemm(m->b->self, NULL, &g, err);
    fs_gemm_args gw = {.struct_size = sizeof gw, .c = dw, .a = inp, .b = dout, .c_dtype = FS_DTYPE_F32,
                       .ab_dtype = dt, .trans_a = 1, .m = k, .n = n, .k = N, .lda = k, .ldb = n, .ldc = n,
                       .batch = 1, .alpha = 1.0f, .beta = 1.0f, .compute = m->cfg.compute};
    if (!rc) rc = vt->gemm(m->b->self, NULL, &gw, err);
    if (!rc && db) rc = vt->bias_backward(m->b->self, NULL, db, dout, N, n, n, dt, err);
    return rc;
}

/* m->dres holds d loss / d (layer l's output); leaves d loss / d (its input). */
static int layer_backward(fs_device_gpt *m, size_t l, fs_error *err) {
    const fs_backend_vtable *vt = m->b->vt;
    void *be = m->b->self;
    dg_layer *L = &m->layers[l];
    size_t B = m->B, T = m->cfg.T, H = m->cfg.H, C = m->cfg.C, BT = m->BT, F = m->F, D = m->D;
    int32_t dt = m->cfg.dtype;
    /* MLP: x3 = x2 + fcproj(gelu(fc(ln2(x2)))) */
    int rc = linear_backward(m, m->dbig, lg(m, l, FCPW), lg(m, l, FCPB), m->dres, L->fchg, lp(m, l, FCPW), BT, F, C,
                             err);
    if (!rc) rc = vt->gelu_backward(be, NULL, m->dbig, L->fch, m->dbig, BT * F, dt, err);
    if (!rc) rc = linear_backward(m, m->dtmp, lg(m, l, FCW), lg(m, l, FCB), m->dbig, L->ln2, lp(m, l, FCW), BT, C, F,
                                  err);
    if (!rc) rc = vt->layernorm_backward(be, NULL, m->dbig, lg(m, l, LN2W), lg(m, l, LN2B), m->dtmp, L->x2,
                                         lp(m, l, LN2W), L->mean2, L->rstd2, BT, C, dt, err);
    if (!rc) rc = vt->residual_backward(be, NULL, m->dres, m->dbig, BT * C, dt, err);
    /* attention: x2 = x + proj(attention(ln1(x))) */
    if (!rc) rc = linear_backward(m, m->dtmp, lg(m, l, PROJW), lg(m, l, PROJB), m->dres, L->attm, lp(m, l, PROJW),
                                  BT, C, C, err);
    if (!rc) rc = vt->attention_merge_heads_backward(be, NULL, m->datty, m->dtmp, B, T, H, D, dt, err);
    fs_attention_args a = attention_args(m, L);
    if (!rc && a.dx.data) rc = vt->memset(be, NULL, a.dx.data, 0, BT * C * m->es, err);
    if (!rc) rc = L->avt->backward(L->attn, &a, err);
    if (!rc) rc = vt->attention_split_heads_backward(be, NULL, m->dqkv, m->dq, m->dk, m->dv, B, T, H, D, dt, err);
    if (!rc) rc = linear_backward(m, m->dtmp, lg(m, l, QKVW), lg(m, l, QKVB), m->dqkv, L->ln1, lp(m, l, QKVW), BT,
                                  C, 3 * C, err);
    /* d ln1(x) also has the plugin's own path (FS_ATTENTION_USES_INPUT) */
    if (!rc && a.dx.data) rc = vt->residual_backward(be, NULL, m->dtmp, a.dx.data, BT * C, dt, err);
    if (!rc) rc = vt->layernorm_backward(be, NULL, m->dbig, lg(m, l, LN1W), lg(m, l, LN1B), m->dtmp, L->x,
                                         lp(m, l, LN1W), L->mean1, L->rstd1, BT, C, dt, err);
    if (!rc) rc = vt->residual_backward(be, NULL, m->dres, m->dbig, BT * C, dt, err);
    return rc;
}

void fs_device_gpt_on_grads_ready(fs_device_gpt *m, fs_device_gpt_grads_ready_fn fn, void *arg) {
    m->ready = fn;
    m->ready_arg = arg;
}

/* Block offset where layer l's tensors start (l = L: ln_f's). */
static size_t layer_start(const fs_device_gpt *m, size_t l) {
    return m->tensors[l < m->cfg.L ? 2 + l * N_LAYER_TENSORS : m->lnf].offset;
}

static int grads_ready(fs_device_gpt *m, size_t lo, size_t hi, fs_error *err) {
    return m->ready && hi > lo ? m->ready(m->ready_arg, lo, hi, err) : FS_OK;
}

int fs_device_gpt_backward(fs_device_gpt *m, fs_error *err) {
    if (!m->have_dlogits)
        return fs_error_set(err, FS_ERR_INVALID, "device_gpt: backward needs a forward with targets first");
    const fs_backend_vtable *vt = m->b->vt;
    size_t C = m->cfg.C, BT = m->BT;
    int32_t dt = m->cfg.dtype;
    float *lnfw = m->params + m->tensors[m->lnf].offset;
    float *dlnfw = m->grads + m->tensors[m->lnf].offset;
    const float *w = m->params + m->tensors[m->head].offset;
    /* the head: dlnf = dlogits @ W; dW += dlogits^T @ lnf */
    fs_gemm_args g = {.struct_size = sizeof g, .c = m->dtmp, .a = m->logits, .b = operand(m, w),
                      .c_dtype = dt, .ab_dtype = dt, .m = BT, .n = C, .k = m->ldv, .lda = m->ldv, .ldb = C,
                      .ldc = C,
                      .batch = 1, .alpha = 1.0f, .compute = m->cfg.compute};
    int rc = vt->gemm(m->b->self, NULL, &g, err);
    fs_gemm_args gw = {.struct_size = sizeof gw, .c = m->grads + m->tensors[m->head].offset, .a = m->logits, .b = m->lnfo,
                       .c_dtype = FS_DTYPE_F32, .ab_dtype = dt, .trans_a = 1, .m = m->ldv, .n = C, .k = BT,
                       .lda = m->ldv,
                       .ldb = C, .ldc = C, .batch = 1, .alpha = 1.0f, .beta = 1.0f, .compute = m->cfg.compute};
    if (!rc) rc = vt->gemm(m->b->self, NULL, &gw, err);
    if (!rc) rc = vt->layernorm_backward(m->b->self, NULL, m->dres, dlnfw, dlnfw + C, m->dtmp, m->xout, lnfw,
                                         m->meanf, m->rstdf, BT, C, dt, err);
    /* ln_f and an untied head are final now; each layer after its
     * backward; the embeddings (the tied wte has the head's share) last */
    if (!rc) rc = grads_ready(m, layer_start(m, m->cfg.L), m->n_block, err);
    for (size_t l = m->cfg.L; l-- > 0 && !rc;) {
        rc = layer_backward(m, l, err);
        if (!rc) rc = grads_ready(m, layer_start(m, l), layer_start(m, l + 1), err);
    }
    if (!rc) rc = vt->encoder_backward(m->b->self, NULL, m->grads, m->grads + m->tensors[1].offset, m->dres,
                                       m->inputs, m->B, m->cfg.T, C, 0, dt, err);
    if (!rc) rc = grads_ready(m, 0, layer_start(m, 0), err);
    return rc;
}

int fs_device_gpt_zero_grad(fs_device_gpt *m, fs_error *err) {
    int rc = m->b->vt->memset(m->b->self, NULL, m->grads, 0, m->n_block * sizeof(float), err);
    for (size_t i = 0; i < m->n_tensors && !rc; i++)
        if (m->tensors[i].grad)
            rc = m->b->vt->memset(m->b->self, NULL, m->tensors[i].grad, 0, m->tensors[i].numel * sizeof(float), err);
    return rc;
}

/* ---- the optimizer ---- */

int fs_device_gpt_adamw(fs_device_gpt *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                        float grad_scale, uint64_t t, fs_error *err) {
    int rc = FS_OK;
    for (size_t i = 0; i < m->n_tensors && !rc; i++) {
        const dg_tensor *x = &m->tensors[i];
        void *copy = m->pcopy && !x->param ? (char *)m->pcopy + x->offset * 2 : NULL; /* GEMM operands only */
        rc = m->b->vt->adamw_update(m->b->self, NULL, tensor_buf(m, i, DG_PARAM), copy, tensor_buf(m, i, DG_M1),
                                    tensor_buf(m, i, DG_M2), tensor_buf(m, i, DG_GRAD), x->numel, lr, beta1, beta2, eps,
                                    x->decay ? weight_decay : 0.0f, grad_scale, t, FS_DTYPE_BF16, err);
    }
    return rc;
}

int fs_device_gpt_grad_norm(fs_device_gpt *m, double *norm, fs_error *err) {
    int rc = m->b->vt->memset(m->b->self, NULL, m->scalar, 0, sizeof(double), err);
    if (!rc) rc = m->b->vt->sumsq(m->b->self, NULL, m->scalar, m->grads, m->n_block, err);
    for (size_t i = 0; i < m->n_tensors && !rc; i++)
        if (m->tensors[i].grad)
            rc = m->b->vt->sumsq(m->b->self, NULL, m->scalar, m->tensors[i].grad, m->tensors[i].numel, err);
    if (!rc) rc = d2h(m, norm, m->scalar, sizeof(double), err);
    if (!rc) *norm = sqrt(*norm);
    return rc;
}

int fs_device_gpt_get_moments(fs_device_gpt *m, float *m1, float *m2, fs_error *err) {
    int rc = move_all(m, DG_M1, m1, 0, err);
    return rc ? rc : move_all(m, DG_M2, m2, 0, err);
}

int fs_device_gpt_set_moments(fs_device_gpt *m, const float *m1, const float *m2, fs_error *err) {
    int rc = move_all(m, DG_M1, (float *)m1, 1, err);
    return rc ? rc : move_all(m, DG_M2, (float *)m2, 1, err);
}

int fs_device_gpt_device_info(fs_device_gpt *m, fs_backend_device_info *info, fs_error *err) {
    memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info;
    return m->b->vt->device_info(m->b->self, info, err);
}

double fs_device_gpt_train_flops(const fs_device_gpt *m) {
    /* wpe (and wte when the head is its own) are looked up, not multiplied */
    double tokens = (double)m->BT, N = (double)m->n_block - (double)m->tensors[1].numel;
    if (m->head) N -= (double)m->tensors[0].numel;
    double attn = 12.0 * (double)m->cfg.L * (double)m->cfg.C * (double)m->cfg.T * 0.5;
    return tokens * (6.0 * N + attn);
}
