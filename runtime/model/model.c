/* model.c — the model's parameter block: its layout and table of named
 * tensors, the address space it grows into for plugin tensors, creation
 * and destruction, weight initialisation, and the accessors the rest of
 * the runtime reads the model through. */
#include "model/model.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/host.h"
#include "core/plugin_loader.h"
#include "core/rng.h"
#include "model/model_internal.h"

/* ---- parameter layout ---- */

/* The tensors of one block: name suffix, rank, weight decay, shape in units
 * of C (c == 0: 1-D) and the tensor-parallel split. */
static const struct {
    const char *suffix;
    int ndim, decay;
    size_t r, c;
    int split;
} layer_tensors[FS_LAYER_TENSORS] = {
    {"ln_1.weight", 1, 0, 1, 0, FS_SPLIT_NONE},        {"ln_1.bias", 1, 0, 1, 0, FS_SPLIT_NONE},
    {"attn.c_attn.weight", 2, 1, 1, 3, FS_SPLIT_QKV},  {"attn.c_attn.bias", 1, 0, 3, 0, FS_SPLIT_QKV},
    {"attn.c_proj.weight", 2, 1, 1, 1, FS_SPLIT_ROWS}, {"attn.c_proj.bias", 1, 0, 1, 0, FS_SPLIT_NONE},
    {"ln_2.weight", 1, 0, 1, 0, FS_SPLIT_NONE},        {"ln_2.bias", 1, 0, 1, 0, FS_SPLIT_NONE},
    {"mlp.c_fc.weight", 2, 1, 1, 4, FS_SPLIT_COLS},    {"mlp.c_fc.bias", 1, 0, 4, 0, FS_SPLIT_COLS},
    {"mlp.c_proj.weight", 2, 1, 4, 1, FS_SPLIT_ROWS},  {"mlp.c_proj.bias", 1, 0, 1, 0, FS_SPLIT_NONE},
};

int fs_model_tensor_split(const char *name) {
    const char *dot = strncmp(name, "transformer.h.", 14) ? NULL : strchr(name + 14, '.');
    for (int i = 0; dot && i < FS_LAYER_TENSORS; i++)
        if (!strcmp(dot + 1, layer_tensors[i].suffix)) return layer_tensors[i].split;
    return FS_SPLIT_NONE;
}

void fs_param_view_part(const fs_param_view *whole, int split, size_t tp_size, fs_param_view *part) {
    *part = *whole;
    part->split = tp_size > 1 ? split : FS_SPLIT_NONE;
    if (part->split == FS_SPLIT_ROWS) part->shape[0] /= tp_size;
    if (part->split == FS_SPLIT_COLS || part->split == FS_SPLIT_QKV) {
        if (part->ndim > 1)
            part->shape[1] /= tp_size;
        else
            part->shape[0] /= tp_size;
    }
    part->numel = 1;
    for (int i = 0; i < part->ndim; i++) part->numel *= part->shape[i];
}

static void view_init(fs_param_view *v, const char *name, int ndim, const size_t *shape, int decay) {
    memset(v, 0, sizeof *v);
    snprintf(v->name, sizeof v->name, "%s", name);
    v->ndim = ndim;
    v->numel = 1;
    for (int i = 0; i < 4; i++) {
        v->shape[i] = v->full_shape[i] = i < ndim ? shape[i] : 1;
        v->numel *= v->shape[i];
    }
    v->weight_decay = decay;
}

/* Appends a model tensor (whole shape d0 x d1, or d0 when 1-D) to views,
 * cut for tensor rank tp_size's part, at *off. */
static void add_view(fs_param_view *views, size_t *n, size_t tp_size, size_t *off, const char *name, int ndim,
                     size_t d0, size_t d1, int decay, int split) {
    fs_param_view whole;
    size_t shape[4] = {d0, d1, 1, 1};
    view_init(&whole, name, ndim, shape, decay);
    fs_param_view *v = &views[(*n)++];
    fs_param_view_part(&whole, split, tp_size, v);
    v->offset = *off;
    *off += v->numel;
}

/* The table of the model's own tensors in block order, [wte][wpe][held
 * layers][ln_f][lm_head], each part present only where held (lm_head only
 * when untied: a tied head is wte); returns the floats. whole: as if
 * nothing were split (what a checkpoint holds). views has room for
 * 5 + L * FS_LAYER_TENSORS. */
static size_t layout(const fs_model *m, int whole, fs_param_view *views, size_t *n_views) {
    size_t V = m->cfg.vocab, C = m->cfg.n_embd, off = 0, n = 0;
    size_t L = whole ? m->cfg.n_layer : m->L, tp = whole ? 1 : m->tp_size;
    int embed = whole || m->has_embed, head = whole || m->has_head;
    char name[96];
    if (embed || (head && !m->cfg.untied_head))
        add_view(views, &n, tp, &off, "transformer.wte.weight", 2, V, C, 1, FS_SPLIT_NONE);
    if (embed) add_view(views, &n, tp, &off, "transformer.wpe.weight", 2, m->cfg.max_seq, C, 1, FS_SPLIT_NONE);
    for (size_t l = 0; l < L; l++)
        for (int i = 0; i < FS_LAYER_TENSORS; i++) {
            snprintf(name, sizeof name, "transformer.h.%zu.%s", whole ? l : m->layer_ids[l], layer_tensors[i].suffix);
            add_view(views, &n, tp, &off, name, layer_tensors[i].ndim, layer_tensors[i].r * C, layer_tensors[i].c * C,
                     layer_tensors[i].decay, layer_tensors[i].split);
        }
    if (head) {
        add_view(views, &n, tp, &off, "transformer.ln_f.weight", 1, C, 0, 0, FS_SPLIT_NONE);
        add_view(views, &n, tp, &off, "transformer.ln_f.bias", 1, C, 0, 0, FS_SPLIT_NONE);
        if (m->cfg.untied_head) add_view(views, &n, tp, &off, "lm_head.weight", 2, V, C, 1, FS_SPLIT_NONE);
    }
    *n_views = n;
    return off;
}

static void point_layers(fs_model *m, float *base, fs_layer_params *lp, float **wte, float **wpe, float **lnfw,
                         float **lnfb, float **head) {
    size_t i = 0;
    *wte = m->has_embed || (m->has_head && !m->cfg.untied_head) ? base + m->views[i++].offset : NULL;
    *wpe = m->has_embed ? base + m->views[i++].offset : NULL;
    for (size_t l = 0; l < m->L; l++) {
        float **dst = (float **)&lp[l];
        for (int k = 0; k < FS_LAYER_TENSORS; k++) dst[k] = base + m->views[i++].offset;
    }
    *lnfw = m->has_head ? base + m->views[i++].offset : NULL;
    *lnfb = m->has_head ? base + m->views[i++].offset : NULL;
    *head = !m->has_head ? NULL : m->cfg.untied_head ? base + m->views[i++].offset : *wte;
}

/* Where element (r, c) of the whole tensor (v->full_shape; a 1-D tensor
 * is one row) lands in tensor rank tp_rank's part, or -1 when elsewhere. */
static ptrdiff_t part_index(const fs_param_view *v, size_t tp_rank, size_t r, size_t c) {
    size_t fw = v->ndim > 1 ? v->full_shape[1] : v->full_shape[0];
    size_t w = v->ndim > 1 ? v->shape[1] : v->shape[0]; /* part width */
    switch (v->split) {
    case FS_SPLIT_ROWS:
        return r / v->shape[0] == tp_rank ? (ptrdiff_t)((r - tp_rank * v->shape[0]) * fw + c) : -1;
    case FS_SPLIT_COLS:
        return c / w == tp_rank ? (ptrdiff_t)(r * w + c % w) : -1;
    case FS_SPLIT_QKV: { /* Q, K and V blocks, each cut like FS_SPLIT_COLS */
        size_t blk = fw / 3, bw = w / 3, in = c % blk;
        return in / bw == tp_rank ? (ptrdiff_t)(r * w + (c / blk) * bw + in % bw) : -1;
    }
    default:
        return (ptrdiff_t)(r * fw + c);
    }
}

static void copy_part(const fs_param_view *v, size_t tp_rank, float *full, float *part, int to_part) {
    if (v->split == FS_SPLIT_NONE || v->split == FS_SPLIT_ROWS) { /* one contiguous block */
        float *f = full + (v->split == FS_SPLIT_ROWS ? tp_rank * v->numel : 0);
        memcpy(to_part ? part : f, to_part ? f : part, v->numel * sizeof(float));
        return;
    }
    size_t rows = v->ndim > 1 ? v->full_shape[0] : 1, fw = v->ndim > 1 ? v->full_shape[1] : v->full_shape[0];
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < fw; c++) {
            ptrdiff_t i = part_index(v, tp_rank, r, c);
            if (i < 0) continue;
            if (to_part)
                part[i] = full[r * fw + c];
            else
                full[r * fw + c] = part[i];
        }
}

void fs_param_view_extract(const fs_param_view *v, size_t tp_rank, size_t tp_size, const float *full, float *part) {
    (void)tp_size;
    copy_part(v, tp_rank, (float *)full, part, 1);
}

void fs_param_view_insert(const fs_param_view *v, size_t tp_rank, size_t tp_size, const float *part, float *full) {
    (void)tp_size;
    copy_part(v, tp_rank, full, (float *)part, 0);
}

static int check_shard(const fs_model_config *cfg, fs_error *err) {
    const fs_model_shard *sh = &cfg->shard;
    size_t tp = sh->tp_size ? sh->tp_size : 1;
    if (cfg->n_head % tp)
        return fs_error_set(err, FS_ERR_INVALID, "tensor parallelism %zu does not divide [model] n_head = %zu", tp,
                            cfg->n_head);
    if (!sh->n_local) return FS_OK;
    if (!sh->layer_ids) return fs_error_set(err, FS_ERR_INVALID, "model shard: %zu layers but no ids", sh->n_local);
    for (size_t i = 0; i < sh->n_local; i++)
        if (sh->layer_ids[i] >= cfg->n_layer || (i && sh->layer_ids[i] <= sh->layer_ids[i - 1]))
            return fs_error_set(err, FS_ERR_INVALID, "model shard: layer ids must increase within 0..%zu",
                                cfg->n_layer - 1);
    size_t nc = sh->n_chunks ? sh->n_chunks : 1;
    if (cfg->reversible && (nc > 1 || sh->n_local < cfg->n_layer || !sh->has_embed || !sh->has_head))
        return fs_error_set(err, FS_ERR_INVALID,
                            "[model] reversible = true cannot be cut into pipeline stages (its stream is a pair): "
                            "set reversible = false or use data/tensor parallelism");
    if (nc > 1 && (!sh->chunk_first || sh->chunk_first[0] != 0 || sh->chunk_first[nc] != sh->n_local))
        return fs_error_set(err, FS_ERR_INVALID, "model shard: chunks must cover the %zu held layers", sh->n_local);
    return FS_OK;
}

/* ---- the block's address space ----
 *
 * Plugins register their tensors while they are created, after the model
 * exists, and keep the pointers they get. So the block reserves address
 * space for as much as the machine's memory up front (PROT_NONE: no memory
 * is committed) and makes pages usable as it grows: the tensors of earlier
 * calls never move, and plugin tensors sit in the same flat vector as the
 * model's, which the optimizer, the parallel strategies and checkpoints
 * walk without knowing who owns what. */

static size_t page_floats(void) {
    long page = sysconf(_SC_PAGESIZE);
    return (size_t)(page > 0 ? page : 4096) / sizeof(float);
}

static int arena_reserve(fs_float_arena *a, size_t floats, fs_error *err) {
    long pages = sysconf(_SC_PHYS_PAGES);
    size_t pf = page_floats(), room = pages > 0 ? (size_t)pages * pf : (size_t)1 << 32;
    a->reserved = (floats + room + pf - 1) / pf * pf;
    void *p = mmap(NULL, a->reserved * sizeof(float), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        a->base = NULL;
        return fs_error_set(err, FS_ERR_NOMEM, "cannot reserve address space for %zu parameters", floats);
    }
    a->base = p;
    a->used = a->committed = 0;
    return FS_OK;
}

/* Makes `floats` more usable after what is used (zero-filled: fresh
 * anonymous pages). */
static int arena_grow(fs_float_arena *a, size_t floats, fs_error *err) {
    size_t need = a->used + floats, pf = page_floats();
    if (need > a->reserved)
        return fs_error_set(err, FS_ERR_NOMEM, "parameters: %zu floats exceed the %zu reserved (the machine's memory)",
                            need, a->reserved);
    if (need > a->committed) {
        size_t to = (need + pf - 1) / pf * pf;
        if (mprotect(a->base + a->committed, (to - a->committed) * sizeof(float), PROT_READ | PROT_WRITE) != 0)
            return fs_error_set(err, FS_ERR_NOMEM, "out of memory for %zu parameters", need);
        a->committed = to;
    }
    a->used = need;
    return FS_OK;
}

static void arena_release(fs_float_arena *a) {
    if (a->base) munmap(a->base, a->reserved * sizeof(float));
    memset(a, 0, sizeof *a);
}

/* The table fs_model_block hands out, after any change to views. */
static void refresh_block(fs_model *m) {
    fs_param_block *b = &m->block;
    b->params = m->param_arena.base;
    b->grads = m->grad_arena.base;
    b->n = m->param_arena.used;
    b->views = m->views;
    b->n_views = m->n_views;
    int sharded = m->L != m->cfg.n_layer || m->tp_size > 1 || !m->has_embed || !m->has_head;
    b->full_views = sharded ? m->full_views : m->views;
    b->n_full_views = sharded ? m->n_full_views : m->n_views;
    b->n_full = sharded ? m->n_full_params : b->n;
    b->n_plugin = 0;
    for (size_t i = m->n_model_views; i < m->n_views; i++) b->n_plugin += m->views[i].numel;
}

static int alloc_tables(fs_model *m) {
    size_t L = m->L, nv = 5 + L * FS_LAYER_TENSORS;
    m->layer_ids = calloc(L ? L : 1, sizeof *m->layer_ids);
    m->chunk_first = calloc(m->n_chunks + 1, sizeof *m->chunk_first);
    m->views = calloc(nv, sizeof *m->views);
    m->cap_views = nv;
    m->full_views = calloc(5 + m->cfg.n_layer * FS_LAYER_TENSORS, sizeof *m->full_views);
    m->lp = calloc(L ? L : 1, sizeof *m->lp);
    m->lg = calloc(L ? L : 1, sizeof *m->lg);
    m->attn = calloc(L ? L : 1, sizeof *m->attn);
    m->act_blocks = calloc(1, sizeof *m->act_blocks);
    if (!m->layer_ids || !m->chunk_first || !m->views || !m->full_views || !m->lp || !m->lg || !m->attn ||
        !m->act_blocks)
        return FS_ERR_NOMEM;
    for (size_t l = 0; l < L; l++) {
        m->attn[l].saved = calloc(1, sizeof(void *));
        m->attn[l].saved_cap = calloc(1, sizeof(size_t));
        if (!m->attn[l].saved || !m->attn[l].saved_cap) return FS_ERR_NOMEM;
    }
    return FS_OK;
}

/* Where this model stands in a split, from cfg->shard. */
static void place_part(fs_model *m, const fs_model_config *cfg) {
    const fs_model_shard *sh = &cfg->shard;
    m->cfg = *cfg;
    m->tp_rank = sh->tp_size > 1 ? sh->tp_rank : 0;
    m->tp_size = sh->tp_size > 1 ? sh->tp_size : 1;
    m->Ha = cfg->n_head / m->tp_size;
    m->Ca = cfg->n_embd / m->tp_size;
    m->F = 4 * cfg->n_embd / m->tp_size;
    m->L = sh->n_local ? sh->n_local : cfg->n_layer;
    m->has_embed = sh->n_local ? sh->has_embed : 1;
    m->has_head = sh->n_local ? sh->has_head : 1;
    m->n_chunks = sh->n_local && sh->n_chunks ? sh->n_chunks : 1;
    m->n_slots = 1;
    m->cfg.shard.layer_ids = NULL; /* the caller's arrays: copied by fs_model_create */
    m->cfg.shard.chunk_first = NULL;
}

int fs_model_create(fs_model **out, const fs_model_config *cfg, fs_error *err) {
    *out = NULL;
    if (!cfg->n_head || cfg->n_embd % cfg->n_head)
        return fs_error_set(err, FS_ERR_INVALID, "[model] n_embd = %zu must be a multiple of n_head = %zu",
                            cfg->n_embd, cfg->n_head);
    int rc = check_shard(cfg, err);
    if (rc) return rc;
    fs_model *m = calloc(1, sizeof *m);
    if (!m) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    place_part(m, cfg);
    const fs_model_shard *sh = &cfg->shard;
    if (alloc_tables(m)) {
        fs_model_destroy(m);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    for (size_t l = 0; l < m->L; l++) m->layer_ids[l] = sh->n_local ? sh->layer_ids[l] : l;
    for (size_t c = 0; c <= m->n_chunks; c++) m->chunk_first[c] = m->n_chunks > 1 ? sh->chunk_first[c] : c * m->L;
    size_t n = layout(m, 0, m->views, &m->n_views);
    m->n_model_views = m->n_views;
    m->n_full_params = layout(m, 1, m->full_views, &m->n_full_views);
    if ((rc = arena_reserve(&m->param_arena, n, err)) || (rc = arena_reserve(&m->grad_arena, n, err)) ||
        (rc = arena_grow(&m->param_arena, n, err)) || (rc = arena_grow(&m->grad_arena, n, err))) {
        fs_model_destroy(m);
        return rc;
    }
    point_layers(m, m->param_arena.base, m->lp, &m->wte, &m->wpe, &m->lnfw, &m->lnfb, &m->head);
    point_layers(m, m->grad_arena.base, m->lg, &m->dwte, &m->dwpe, &m->dlnfw, &m->dlnfb, &m->dhead);
    m->part = (fs_model_part){.n_layers = m->L, .layer_ids = m->layer_ids, .n_chunks = m->n_chunks,
                              .has_embed = m->has_embed, .has_head = m->has_head, .tp_rank = m->tp_rank,
                              .tp_size = m->tp_size, .n_head = m->Ha, .attn_width = m->Ca, .ff_width = m->F};
    refresh_block(m);
    *out = m;
    return FS_OK;
}

void fs_model_destroy(fs_model *m) {
    if (!m) return;
    fs_model_release_activations(m);
    for (size_t l = 0; m->attn && l < m->L; l++) {
        fs_attention_slot *s = &m->attn[l];
        if (s->vt && s->self) ATTN_CALL(m, l, "destroy", s->vt->destroy(s->self));
        free(s->saved);
        free(s->saved_cap);
    }
    free(m->act_blocks);
    arena_release(&m->param_arena);
    arena_release(&m->grad_arena);
    free(m->views);
    free(m->full_views);
    free(m->lp);
    free(m->lg);
    free(m->attn);
    free(m->layer_ids);
    free(m->chunk_first);
    free(m);
}

/* ---- accessors ---- */

const fs_model_config *fs_model_cfg(const fs_model *m) { return &m->cfg; }
const fs_model_part *fs_model_held(const fs_model *m) { return &m->part; }
const fs_param_block *fs_model_block(const fs_model *m) { return &m->block; }

const fs_param_view *fs_model_find(const fs_model *m, const char *name) {
    for (size_t i = 0; i < m->n_views; i++)
        if (!strcmp(m->views[i].name, name)) return &m->views[i];
    return NULL;
}

void fs_model_attach_attention(fs_model *m, size_t layer, const fs_attention_vtable *vt, void *self,
                               const fs_attention_origin *origin) {
    m->attn[layer].vt = vt;
    m->attn[layer].self = self;
    m->attn[layer].origin = *origin;
    m->attn[layer].name = origin->plugin->desc->name;
}

const fs_attention_vtable *fs_model_attention(const fs_model *m, size_t layer, void **self) {
    if (self) *self = m->attn[layer].self;
    return m->attn[layer].vt;
}

void fs_model_on_grads_ready(fs_model *m, fs_grads_ready_fn fn, void *arg) {
    m->grads_ready = fn;
    m->grads_ready_arg = arg;
}

void fs_model_set_tensor_reduce(fs_model *m, fs_tensor_reduce_fn fn, void *arg) {
    m->tensor_reduce = fn;
    m->tensor_reduce_arg = arg;
}

int fs_model_add_plugin_param(fs_model *m, const char *name, int32_t ndim, const size_t *shape, int weight_decay,
                              float **param, float **grad, fs_error *err) {
    if (ndim < 1 || ndim > 4)
        return fs_error_set(err, FS_ERR_INVALID, "parameter '%s': ndim %d outside 1..4", name, (int)ndim);
    if (strlen(name) >= sizeof m->views[0].name)
        return fs_error_set(err, FS_ERR_INVALID, "parameter '%s': the name is longer than %zu characters", name,
                            sizeof m->views[0].name - 1);
    if (fs_model_find(m, name)) return fs_error_set(err, FS_ERR_INVALID, "parameter '%s' registered twice", name);
    fs_param_view v;
    view_init(&v, name, ndim, shape, weight_decay);
    v.plugin = 1;
    v.offset = m->param_arena.used;
    if (m->n_views == m->cap_views) {
        size_t cap = m->cap_views * 2;
        fs_param_view *nv = realloc(m->views, cap * sizeof *nv);
        if (!nv) return fs_error_set(err, FS_ERR_NOMEM, "out of memory registering %s", name);
        m->views = nv;
        m->cap_views = cap;
    }
    int rc = arena_grow(&m->param_arena, v.numel, err);
    if (!rc && (rc = arena_grow(&m->grad_arena, v.numel, err))) m->param_arena.used -= v.numel;
    if (rc) return rc;
    m->views[m->n_views++] = v;
    *param = m->param_arena.base + v.offset;
    *grad = m->grad_arena.base + v.offset;
    refresh_block(m);
    return FS_OK;
}

int fs_model_init_plugin_params(fs_model *m, fs_error *err) {
    size_t C = m->cfg.n_embd;
    for (size_t l = 0; l < m->L; l++) {
        fs_attention_slot *s = &m->attn[l];
        if (!FS_HAS_MEMBER(s->vt, s->vt->struct_size, fs_attention_vtable, init_params) || !s->vt->init_params)
            continue;
        fs_tensor w = fs_tensor_cpu_f32(m->lp[l].qkvw, 2, C, 3 * m->Ca, 0, 0);
        fs_tensor b = fs_tensor_cpu_f32(m->lp[l].qkvb, 1, 3 * m->Ca, 0, 0, 0);
        int rc;
        ATTN_CALL(m, l, "init_params", rc = s->vt->init_params(s->self, &w, &b, err));
        if (rc) return rc;
    }
    return FS_OK;
}

void fs_model_init_weights(fs_model *m, uint64_t seed) {
    fs_rng rng;
    fs_rng_seed(&rng, seed);
    float proj_std = 0.02f / sqrtf(2.0f * (float)m->cfg.n_layer);
    float *params = m->param_arena.base;
    /* Walk the whole model's tensors in checkpoint order, drawing every
     * matrix element, and keep those this model holds: every split of the
     * model starts from the same numbers as one process. Plugin tensors
     * (after the model's own) are their plugins' to initialise. */
    size_t vi = 0;
    for (size_t t = 0; t < m->n_full_views; t++) {
        const fs_param_view *fv = &m->full_views[t], *v = NULL;
        if (vi < m->n_model_views && !strcmp(m->views[vi].name, fv->name)) v = &m->views[vi++]; /* a subset, in order */
        float *p = v ? params + v->offset : NULL;
        if (fv->ndim == 1) { /* LayerNorm weights 1, biases 0: nothing drawn */
            float one = strstr(fv->name, "ln_") && strstr(fv->name, ".weight") ? 1.0f : 0.0f;
            for (size_t j = 0; p && j < v->numel; j++) p[j] = one;
            continue;
        }
        float std = strstr(fv->name, "c_proj.weight") ? proj_std : 0.02f;
        for (size_t r = 0; r < fv->shape[0]; r++)
            for (size_t c = 0; c < fv->shape[1]; c++) {
                float x = std * fs_rng_normal(&rng);
                ptrdiff_t i = p ? part_index(v, m->tp_rank, r, c) : -1;
                if (i >= 0) p[i] = x;
            }
    }
}
