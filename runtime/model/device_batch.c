/* device_batch.c — see device_batch.h. */
#include "model/device_batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crash.h"
#include "core/host.h"
#include "model/model_internal.h"

#define F32 FS_DTYPE_F32

/* One layer's attention instance, created for the device. */
typedef struct db_layer {
    const fs_attention_vtable *vt;
    void *self;
    const char *name;
    fs_plugin_ctx ctx;
} db_layer;

struct fs_device_batch {
    const fs_model *m;
    fs_backend_handle *bk;
    fs_device_batch_config cfg;
    size_t L, C, H, D, V;
    fs_host host;           /* the session's, refusing plugin tensors */
    const float *hbase;     /* the model's block on the host: maps its tensors to ... */
    float *params;          /* ... the same block on the device (n floats) */
    float *x, *ln, *q, *k, *v, *y, *proj; // (R, C) on the device
    float *fch;             // (R, 4C)
    float *last;            // (S, C) the rows that ask for logits
    float *logits;          // (S, V)
    int32_t *tokens;        // (R) the step's new tokens, on the device
    int32_t *htokens;       // (R) the same, staged on the host
    fs_attention_paged_seq *pseq; /* (R) */
    db_layer *layers;       /* (L) */
};

/* ---- which models can step here ---- */

int fs_device_batch_supported(const fs_model *m, fs_device device, char *why, size_t cap) {
    uint32_t need = device.type == FS_DEVICE_CUDA ? FS_ATTENTION_CUDA_PAGED : FS_ATTENTION_PAGED;
    for (size_t l = 0; l < m->L; l++) {
        if (!fs_model_layer_paged(m, l) || !(m->attn[l].vt->flags & need)) {
            snprintf(why, cap, "layer %zu: attention plugin '%s' has no paged step on %s (%s)", m->layer_ids[l],
                     m->attn[l].name,
                     device.type == FS_DEVICE_CUDA ? "CUDA" : "the device",
                     device.type == FS_DEVICE_CUDA ? "FS_ATTENTION_CUDA_PAGED" : "FS_ATTENTION_PAGED");
            return FS_ERR_UNSUPPORTED;
        }
    }
    const fs_param_block *pb = fs_model_block(m);
    for (size_t i = 0; i < pb->n_views; i++)
        if (pb->views[i].plugin) {
            snprintf(why, cap, "%s: an attention plugin's own tensor; serving on a device holds the model's tensors "
                     "only", pb->views[i].name);
            return FS_ERR_UNSUPPORTED;
        }
    return FS_OK;
}

/* ---- creation ---- */

/* fs_host.place_param here: the step holds the model's own tensors only
 * (fs_device_batch_supported refuses models whose plugins register any;
 * this catches a plugin that registers one only on a device). */
static int refuse_param(void *arg, const char *name, int32_t ndim, const size_t *shape, int weight_decay,
                        float **param, float **grad, fs_error *err) {
    (void)arg, (void)ndim, (void)shape, (void)weight_decay, (void)param, (void)grad;
    return fs_error_set(err, FS_ERR_UNSUPPORTED,
                        "tensor %s: an attention plugin with tensors of its own serves on the CPU only ([run] "
                        "device = cpu)", name);
}

static int dalloc(fs_device_batch *db, void **p, size_t bytes, fs_error *err) {
    return db->bk->vt->alloc(db->bk->self, p, bytes, FS_MEM_DEVICE, err);
}

static int alloc_work(fs_device_batch *db, fs_error *err) {
    size_t R = db->cfg.max_rows, S = db->cfg.max_logits, C = db->C;
    float **rc_bufs[] = {&db->x, &db->ln, &db->q, &db->k, &db->v, &db->y, &db->proj};
    int rc = FS_OK;
    for (size_t i = 0; i < sizeof rc_bufs / sizeof rc_bufs[0] && !rc; i++)
        rc = dalloc(db, (void **)rc_bufs[i], R * C * sizeof(float), err);
    if (!rc) rc = dalloc(db, (void **)&db->fch, R * 4 * C * sizeof(float), err);
    if (!rc) rc = dalloc(db, (void **)&db->last, S * C * sizeof(float), err);
    if (!rc) rc = dalloc(db, (void **)&db->logits, S * db->V * sizeof(float), err);
    if (!rc) rc = dalloc(db, (void **)&db->tokens, R * sizeof(int32_t), err);
    if (rc) return rc;
    db->htokens = malloc(R * sizeof *db->htokens);
    db->pseq = calloc(R, sizeof *db->pseq);
    db->layers = calloc(db->L, sizeof *db->layers);
    if (!db->htokens || !db->pseq || !db->layers) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    return FS_OK;
}

/* The model's parameter block, once, host -> device. */
static int upload_weights(fs_device_batch *db, fs_error *err) {
    const fs_param_block *pb = fs_model_block(db->m);
    db->hbase = pb->params;
    int rc = dalloc(db, (void **)&db->params, pb->n * sizeof(float), err);
    if (!rc) rc = db->bk->vt->copy(db->bk->self, NULL, db->params, pb->params, pb->n * sizeof(float),
                                   FS_COPY_HOST_TO_DEVICE, err);
    return rc;
}

static int create_layer(fs_device_batch *db, size_t l, fs_error *err) {
    const fs_attention_slot *a = &db->m->attn[l];
    db_layer *L = &db->layers[l];
    L->vt = a->vt;
    L->name = a->name;
    fs_attention_config ac = {.struct_size = sizeof ac, .layer = (int32_t)db->m->layer_ids[l], .n_head = db->H,
                              .head_dim = db->D, .n_embd = db->C, .max_seq = db->m->cfg.max_seq, .causal = 1,
                              .device = db->bk->device, .kv_dtype = db->cfg.kv_dtype};
    char scope[64];
    snprintf(scope, sizeof scope, "plugin.layer%zu.attention", db->m->layer_ids[l]);
    fs_plugin_ctx_init(&L->ctx, &db->host, a->origin.config, scope, L->name);
    fs_error perr = {0};
    int rc;
    FS_PLUGIN_CALL("attention", L->name, "create", (int)ac.layer,
                   rc = L->vt->create(&L->self, &db->host.api, &L->ctx, &ac, &perr));
    if (rc)
        return fs_error_set(err, rc, "layer %d: attention plugin '%s' on the device: %s", (int)ac.layer, L->name,
                            perr.message);
    return FS_OK;
}

int fs_device_batch_create(fs_device_batch **out, const fs_model *m, const fs_device_batch_config *cfg, fs_error *err) {
    *out = NULL;
    char why[256];
    if (m->L != m->cfg.n_layer || m->tp_size != 1 || !m->has_embed || !m->has_head)
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "serving needs the whole model in one process (no tensor or "
                            "pipeline split): load the checkpoint without [parallel]");
    if (fs_device_batch_supported(m, cfg->backend->device, why, sizeof why))
        return fs_error_set(err, FS_ERR_UNSUPPORTED, "%s", why);
    fs_device_batch *db = calloc(1, sizeof *db);
    if (!db) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    db->m = m;
    db->bk = cfg->backend;
    db->cfg = *cfg;
    db->cfg.max_rows = cfg->max_rows ? cfg->max_rows : 1;
    db->cfg.max_logits = cfg->max_logits ? cfg->max_logits : 1;
    db->L = m->L;
    db->C = m->cfg.n_embd;
    db->H = m->cfg.n_head;
    db->D = db->C / db->H;
    db->V = m->cfg.vocab;
    db->host = *cfg->host;
    db->host.place_param = refuse_param;
    db->host.place_arg = db;
    int rc = alloc_work(db, err);
    if (!rc) rc = upload_weights(db, err);
    for (size_t l = 0; l < db->L && !rc; l++) rc = create_layer(db, l, err);
    if (rc) {
        fs_device_batch_destroy(db);
        return rc;
    }
    *out = db;
    return FS_OK;
}

void fs_device_batch_destroy(fs_device_batch *db) {
    if (!db) return;
    const fs_backend_vtable *vt = db->bk->vt;
    fs_error err = {0};
    vt->synchronize(db->bk->self, &err);
    for (size_t l = 0; db->layers && l < db->L; l++)
        if (db->layers[l].self)
            FS_PLUGIN_CALL("attention", db->layers[l].name, "destroy", (int)l, db->layers[l].vt->destroy(db->layers[l].self));
    void *bufs[] = {db->params, db->x, db->ln, db->q, db->k, db->v, db->y, db->proj, db->fch, db->last, db->logits,
                    db->tokens};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) vt->free(db->bk->self, bufs[i], FS_MEM_DEVICE);
    free(db->htokens);
    free(db->pseq);
    free(db->layers);
    free(db);
}

/* ---- the step ---- */

/* A tensor of the model on the device: the host block's twin. */
static const float *on_device(const fs_device_batch *db, const float *host) { return db->params + (host - db->hbase); }

/* y (n, out) = x (n, in) W[:, col:col + out] + bias[col:col + out], W the
 * device copy of host matrix w (in, ldw) in Conv1D's layout. */
static int project(fs_device_batch *db, float *y, const float *x, const float *w, size_t ldw, const float *bias,
                   size_t col, size_t n, size_t in, size_t out, fs_error *err) {
    fs_gemm_args g = {.struct_size = sizeof g, .c = y, .a = x, .b = on_device(db, w) + col, .c_dtype = F32,
                      .ab_dtype = F32, .m = n, .n = out, .k = in, .lda = in, .ldb = ldw, .ldc = out, .batch = 1,
                      .alpha = 1.0f, .beta = 0.0f, .bias = on_device(db, bias) + col,
                      .compute = FS_GEMM_COMPUTE_F32};
    return db->bk->vt->gemm(db->bk->self, NULL, &g, err);
}

static fs_tensor device_tensor(const fs_device_batch *db, float *data, size_t rows) {
    fs_tensor t = {.data = data, .dtype = F32, .device = db->bk->device, .ndim = 3, .shape = {rows, db->H, db->D}};
    return t;
}

/* Layer l's paged step over the step's sequences (db->pseq, made once a
 * step). */
static int attend(fs_device_batch *db, size_t l, fs_kv_pool *pool, size_t n, size_t rows, fs_error *err) {
    db_layer *L = &db->layers[l];
    fs_attention_paged_args pa;
    memset(&pa, 0, sizeof pa);
    pa.struct_size = sizeof pa;
    pa.n_seqs = n;
    pa.seqs = db->pseq;
    pa.n_rows = rows;
    pa.q = device_tensor(db, db->q, rows);
    pa.k = device_tensor(db, db->k, rows);
    pa.v = device_tensor(db, db->v, rows);
    pa.out = device_tensor(db, db->y, rows);
    pa.pool = fs_kv_pool_layer(pool, l);
    pa.kv_block = fs_kv_pool_kv_block(pool);
    pa.block_bytes = fs_kv_pool_layer_bytes(pool, l);
    fs_error perr = {0};
    int rc;
    FS_PLUGIN_CALL("attention", L->name, "paged_step", (int)db->m->layer_ids[l],
                   rc = L->vt->paged_step(L->self, &pa, &perr));
    if (rc) return fs_error_set(err, rc, "layer %zu: %s", db->m->layer_ids[l], perr.message);
    return FS_OK;
}

/* x += Attention(LN1(x)); x += MLP(LN2(x)) for layer l, every row. */
static int layer_step(fs_device_batch *db, size_t l, fs_kv_pool *pool, size_t n, size_t rows, fs_error *err) {
    const fs_backend_vtable *vt = db->bk->vt;
    void *self = db->bk->self;
    const fs_layer_params *p = &db->m->lp[l];
    size_t C = db->C;
    int rc = vt->layernorm_forward(self, NULL, db->ln, NULL, NULL, db->x, on_device(db, p->ln1w),
                                   on_device(db, p->ln1b), rows, C, F32, err);
    /* q, k, v: the thirds of c_attn, each (rows, H, D) as the plugins take them */
    float *qkv[3] = {db->q, db->k, db->v};
    for (size_t i = 0; i < 3 && !rc; i++) rc = project(db, qkv[i], db->ln, p->qkvw, 3 * C, p->qkvb, i * C, rows, C, C, err);
    if (!rc) rc = attend(db, l, pool, n, rows, err);
    if (!rc) rc = project(db, db->proj, db->y, p->attprojw, C, p->attprojb, 0, rows, C, C, err);
    if (!rc) rc = vt->residual_forward(self, NULL, db->x, db->x, db->proj, rows * C, F32, err);
    if (!rc)
        rc = vt->layernorm_forward(self, NULL, db->ln, NULL, NULL, db->x, on_device(db, p->ln2w),
                                   on_device(db, p->ln2b), rows, C, F32, err);
    if (!rc) rc = project(db, db->fch, db->ln, p->fcw, 4 * C, p->fcb, 0, rows, C, 4 * C, err);
    if (!rc) rc = vt->gelu_forward(self, NULL, db->fch, db->fch, rows * 4 * C, F32, err);
    if (!rc) rc = project(db, db->proj, db->fch, p->fcprojw, C, p->fcprojb, 0, rows, 4 * C, C, err);
    if (!rc) rc = vt->residual_forward(self, NULL, db->x, db->x, db->proj, rows * C, F32, err);
    return rc;
}

/* The step's sizes, as fs_batch_run checks them, and positions inside
 * the position table (the device embeds positions as they come: no plugin
 * here has a bounded cache). */
static int check_step(const fs_device_batch *db, const fs_batch_seq *seqs, size_t n, size_t *rows, size_t *n_logits,
                      fs_error *err) {
    for (size_t i = 0; i < n; i++)
        if (seqs[i].start + seqs[i].n_new > db->m->cfg.max_seq)
            return fs_error_set(err, FS_ERR_INVALID, "step sequence %zu: positions up to %zu past max_seq %zu", i,
                                seqs[i].start + seqs[i].n_new, db->m->cfg.max_seq);
    return fs_batch_check(seqs, n, db->V, db->cfg.max_rows, db->cfg.max_logits, rows, n_logits, err);
}

/* x (rows, C) = wte[token] + wpe[position]: each sequence's run of
 * positions is one encoder call. */
static int embed(fs_device_batch *db, const fs_batch_seq *seqs, size_t n, size_t rows, fs_error *err) {
    const fs_backend_vtable *vt = db->bk->vt;
    for (size_t i = 0, row = 0; i < n; row += seqs[i].n_new, i++)
        memcpy(db->htokens + row, seqs[i].tokens + seqs[i].start, seqs[i].n_new * sizeof(int32_t));
    int rc = vt->copy(db->bk->self, NULL, db->tokens, db->htokens, rows * sizeof(int32_t), FS_COPY_HOST_TO_DEVICE,
                      err);
    for (size_t i = 0, row = 0; i < n && !rc; row += seqs[i].n_new, i++)
        rc = vt->encoder_forward(db->bk->self, NULL, db->x + row * db->C, db->tokens + row, on_device(db, db->m->wte),
                                 on_device(db, db->m->wpe), 1, seqs[i].n_new, db->C, seqs[i].start, F32, err);
    return rc;
}

/* last rows [k, k + n) = x rows [from, from + n) */
static int copy_rows(fs_device_batch *db, size_t k, size_t from, size_t n, fs_error *err) {
    if (n == 0) return FS_OK;
    return db->bk->vt->copy(db->bk->self, NULL, db->last + k * db->C, db->x + from * db->C, n * db->C * sizeof(float),
                            FS_COPY_DEVICE_TO_DEVICE, err);
}

/* logits (S, V) on the host = head(LN_f(the rows that ask)). */
static int head(fs_device_batch *db, const fs_batch_seq *seqs, size_t n, size_t n_logits, float *logits,
                fs_error *err) {
    const fs_backend_vtable *vt = db->bk->vt;
    void *self = db->bk->self;
    size_t C = db->C, k = 0, run_from = 0, run_n = 0;
    int rc = FS_OK;
    /* the rows that ask (each sequence's last cnt), gathered in runs of
     * adjacent rows: a decode step of n sequences is one copy, not n */
    for (size_t i = 0, row = 0; i < n && !rc; i++) {
        size_t cnt = fs_batch_logit_rows(&seqs[i]);
        row += seqs[i].n_new;
        if (cnt == 0) continue;
        if (run_n && run_from + run_n == row - cnt) {
            run_n += cnt;
            continue;
        }
        rc = copy_rows(db, k, run_from, run_n, err);
        k += run_n;
        run_from = row - cnt, run_n = cnt;
    }
    if (!rc) rc = copy_rows(db, k, run_from, run_n, err);
    if (!rc)
        rc = vt->layernorm_forward(self, NULL, db->ln, NULL, NULL, db->last, on_device(db, db->m->lnfw),
                                   on_device(db, db->m->lnfb), n_logits, C, F32, err);
    fs_gemm_args g = {.struct_size = sizeof g, .c = db->logits, .a = db->ln, .b = on_device(db, db->m->head),
                      .c_dtype = F32, .ab_dtype = F32, .trans_b = 1, .m = n_logits, .n = db->V, .k = C, .lda = C,
                      .ldb = C, .ldc = db->V, .batch = 1, .alpha = 1.0f, .beta = 0.0f,
                      .compute = FS_GEMM_COMPUTE_F32};
    if (!rc) rc = vt->gemm(self, NULL, &g, err);
    /* into pageable host memory: returns once the logits are there */
    if (!rc) rc = vt->copy(self, NULL, logits, db->logits, n_logits * db->V * sizeof(float), FS_COPY_DEVICE_TO_HOST, err);
    return rc;
}

int fs_device_batch_run(fs_device_batch *db, fs_kv_pool *pool, const fs_batch_seq *seqs, size_t n, float *logits,
                        fs_error *err) {
    size_t rows, n_logits;
    int rc = check_step(db, seqs, n, &rows, &n_logits, err);
    if (rc || rows == 0) return rc;
    if (!pool) return fs_error_set(err, FS_ERR_INVALID, "a step on a device needs a KV pool");
    if ((rc = fs_kv_pool_status(pool, err))) return rc;
    for (size_t i = 0, row = 0; i < n; row += seqs[i].n_new, i++)
        db->pseq[i] = (fs_attention_paged_seq){.start = seqs[i].start, .n_new = seqs[i].n_new, .row = row,
                                               .blocks = seqs[i].blocks, .n_blocks = seqs[i].n_blocks,
                                               .tokens = seqs[i].tokens};
    rc = embed(db, seqs, n, rows, err);
    for (size_t l = 0; l < db->L && !rc; l++) rc = layer_step(db, l, pool, n, rows, err);
    if (!rc && n_logits) rc = head(db, seqs, n, n_logits, logits, err);
    else if (!rc) rc = db->bk->vt->synchronize(db->bk->self, err); /* a step that asks no logits: done, too */
    return rc;
}
