/* checkpoint.c — see checkpoint.h. */
#include "session/checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fastserve/parallel.h"
#include "io/safetensors.h"
#include "dist/shard.h"
#include "dist/world.h"

int fs_mkdirs(const char *dir, fs_error *err) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1;; p++) {
        char c = *p;
        if (c == '/' || c == '\0') {
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return fs_error_set(err, FS_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return fs_error_set(err, FS_ERR_IO, "%s: not a directory", dir);
    return FS_OK;
}

/* ZeRO-1: every rank holds the moments of its own range; the strategy's
 * params_updated gathers them (it makes whole any vector whose owned
 * ranges are valid). Plugin-owned parameters' moments follow the flat
 * vector and are the same on every rank. */
static int gather_moments(const fs_session *s, const fs_optimizer *opt, float **out, fs_error *err) {
    *out = NULL;
    if (!opt || !opt->m || !fs_optimizer_sharded(opt)) return FS_OK;
    const fs_parallel_vtable *vt = s->parallel.plugin->desc->vtable;
    if (!FS_HAS_MEMBER(vt, s->parallel.plugin->desc->vtable_size, fs_parallel_vtable, params_updated) ||
        !vt->params_updated)
        return fs_error_set(err, FS_ERR_INVALID, "the optimizer is sharded but parallel plugin '%s' cannot gather",
                            s->parallel.plugin->desc->name);
    float *mv = fs_calloc(2 * opt->numel * sizeof(float));
    if (!mv) return fs_error_set(err, FS_ERR_NOMEM, "out of memory gathering the optimizer state");
    fs_optimizer_export(opt, mv, mv + opt->numel);
    fs_error perr = {0};
    int rc = vt->params_updated(s->parallel.self, mv, opt->split, &perr);
    if (!rc) rc = vt->params_updated(s->parallel.self, mv + opt->numel, opt->split, &perr);
    if (rc) {
        fs_free(mv);
        return fs_error_set(err, rc, "gathering the optimizer state: %s", perr.message);
    }
    *out = mv;
    return FS_OK;
}

static int is_sharded(const fs_model *m) { return fs_model_block(m)->full_views != fs_model_block(m)->views; }

/* The whole model's tensors on rank 0, from every tensor and pipeline
 * shard (data rank 0's). Tensor and pipeline splits refuse plugin-owned
 * parameters (session.c), so the whole table is the model's own. */
typedef struct whole_model {
    float *vec[3]; /* parameters, exp_avg, exp_avg_sq in the whole table's layout (rank 0) */
} whole_model;

static void whole_release(whole_model *w) {
    for (int k = 0; k < 3; k++) free(w->vec[k]);
    memset(w, 0, sizeof *w);
}

static int whole_gather(whole_model *w, const fs_session *s, const float *exp_avg, const float *exp_avg_sq,
                        fs_error *err) {
    memset(w, 0, sizeof *w);
    const fs_param_block *pb = fs_model_block(s->model);
    const float *local[3] = {pb->params, exp_avg, exp_avg_sq};
    return fs_shard_gather(&s->shard, &s->topo, s->comm, s->model, local, exp_avg ? 3 : 1, pb->full_views,
                           pb->n_full_views, pb->n_full, w->vec, err);
}

int fs_checkpoint_save(const char *path, const fs_session *s, const fs_optimizer *opt, const fs_train_state *ts,
                       fs_error *err) {
    const fs_model *m = s->model;
    const fs_param_block *pb = fs_model_block(m);
    float *gathered;
    int rc = gather_moments(s, opt, &gathered, err);
    if (rc) return rc;
    const float *exp_avg = gathered ? gathered : opt ? opt->m : NULL;
    const float *exp_avg_sq = gathered ? gathered + opt->numel : opt ? opt->v : NULL;
    /* what goes in the file: this model's tensors, or the whole model's */
    const fs_param_view *views = pb->views;
    size_t n_views = pb->n_views, n_moments = opt ? opt->numel : 0;
    const float *params = pb->params;
    whole_model whole = {0};
    if (is_sharded(m)) {
        if ((rc = whole_gather(&whole, s, opt && opt->m ? exp_avg : NULL, exp_avg_sq, err))) {
            fs_free(gathered);
            return rc;
        }
        views = pb->full_views;
        n_views = pb->n_full_views;
        params = whole.vec[0];
        exp_avg = whole.vec[1];
        exp_avg_sq = whole.vec[2];
        n_moments = pb->n_full;
    }
    if (fs_world_rank() != 0) { /* rank 0 writes */
        fs_free(gathered);
        whole_release(&whole);
        return FS_OK;
    }
    fs_safetensors_writer *w;
    if ((rc = fs_safetensors_writer_create(&w, err))) {
        fs_free(gathered);
        whole_release(&whole);
        return rc;
    }
    char *ini = fs_graph_to_ini(s->graph);
    char num[64], rng[96];
    for (size_t i = 0; i < n_views && !rc; i++) {
        const fs_param_view *v = &views[i];
        rc = fs_safetensors_writer_add(w, v->name, FS_DTYPE_F32, v->ndim, v->shape, params + v->offset, err);
    }
    if (!rc && opt && opt->m) {
        size_t shape[1] = {n_moments};
        rc = fs_safetensors_writer_add(w, "optimizer.exp_avg", FS_DTYPE_F32, 1, shape, exp_avg, err);
        if (!rc) rc = fs_safetensors_writer_add(w, "optimizer.exp_avg_sq", FS_DTYPE_F32, 1, shape, exp_avg_sq, err);
        snprintf(num, sizeof num, "%" PRIu64, opt->t);
        if (!rc) rc = fs_safetensors_writer_metadata(w, "optimizer_t", num, err);
    }
    if (!rc) rc = fs_safetensors_writer_metadata(w, "format", "fastserve/1", err);
    if (!rc) rc = fs_safetensors_writer_metadata(w, "fastserve_version", FS_VERSION, err);
    if (!rc && ini) rc = fs_safetensors_writer_metadata(w, "graph", ini, err);
    if (!rc && ts) {
        snprintf(num, sizeof num, "%" PRIu64, ts->step);
        rc = fs_safetensors_writer_metadata(w, "step", num, err);
        snprintf(rng, sizeof rng, "%016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64, ts->rng.s[0],
                 ts->rng.s[1], ts->rng.s[2], ts->rng.s[3]);
        if (!rc) rc = fs_safetensors_writer_metadata(w, "rng", rng, err);
        snprintf(num, sizeof num, "%.17g", ts->loss);
        if (!rc) rc = fs_safetensors_writer_metadata(w, "loss", num, err);
        snprintf(num, sizeof num, "%.17g", ts->val_loss);
        if (!rc) rc = fs_safetensors_writer_metadata(w, "val_loss", num, err);
    }
    if (!rc) rc = fs_safetensors_writer_write(w, path, err);
    free(ini);
    fs_safetensors_writer_destroy(w);
    fs_free(gathered);
    whole_release(&whole);
    return rc;
}

static void shape_text(char *buf, size_t cap, int ndim, const size_t *shape) {
    size_t used = 0;
    used += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%zu", i ? ", " : "", shape[i]);
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

/* The tensor `name` as ndim/shape f32 data, finite. */
static int expect(const fs_safetensors *st, const char *path, const char *name, int ndim, const size_t *shape,
                  const float **data, fs_error *err) {
    const fs_st_tensor *t = fs_safetensors_find(st, name);
    if (!t)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: tensor '%s' is missing: the checkpoint was not written for this graph", path, name);
    char want[96], got[96];
    shape_text(want, sizeof want, ndim, shape);
    shape_text(got, sizeof got, t->ndim, t->shape);
    if (t->dtype != FS_DTYPE_F32)
        return fs_error_set(err, FS_ERR_INVALID, "%s: tensor '%s' is %s, expected F32", path, name,
                            fs_safetensors_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: tensor '%s' has shape %s but the graph needs %s: the checkpoint belongs to another "
                            "model shape ([model] section)",
                            path, name, got, want);
    const float *x = t->data;
    size_t n = t->nbytes / sizeof(float);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return fs_error_set(err, FS_ERR_INVALID, "%s: tensor '%s' holds %s at element %zu: the checkpoint is "
                                "corrupt or training diverged",
                                path, name, isnan(x[i]) ? "NaN" : "Inf", i);
    *data = x;
    return FS_OK;
}

int fs_checkpoint_load(const char *path, fs_session *s, fs_optimizer *opt, fs_train_state *ts, fs_error *err) {
    fs_model *m = s->model;
    const fs_param_block *pb = fs_model_block(m);
    const fs_model_part *part = fs_model_held(m);
    fs_safetensors *st;
    int rc = fs_safetensors_open(&st, path, err);
    if (rc) return rc;
    size_t n_sources = pb->n_views;
    const float **src = calloc(n_sources + 2, sizeof *src);
    if (!src) {
        fs_safetensors_close(st);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    /* check everything first, copy after: a bad file leaves the model as it
     * was. The file holds whole tensors; a shard takes its part. */
    for (size_t i = 0; i < pb->n_views && !rc; i++)
        rc = expect(st, path, pb->views[i].name, pb->views[i].ndim, pb->views[i].full_shape, &src[i], err);
    whole_model whole = {0};
    size_t n_moments = opt ? opt->numel : 0;
    if (!rc && is_sharded(m) && opt) {
        n_moments = pb->n_full;
        for (int k = 1; k < 3 && !rc; k++)
            if (!(whole.vec[k] = malloc(pb->n * sizeof(float))))
                rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    uint64_t step = 0, opt_t = 0;
    fs_rng rng = {{0}};
    if (!rc && (opt || ts)) {
        const char *sv = fs_safetensors_metadata(st, "step"), *rv = fs_safetensors_metadata(st, "rng");
        const char *tv = fs_safetensors_metadata(st, "optimizer_t");
        if (!sv || !rv || !tv ||
            sscanf(rv, "%" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64, &rng.s[0], &rng.s[1], &rng.s[2], &rng.s[3]) != 4)
            rc = fs_error_set(err, FS_ERR_INVALID,
                              "%s: no training state (step, rng, optimizer_t metadata): it cannot be resumed; start "
                              "a new run or set [train] resume = false",
                              path);
        else {
            step = strtoull(sv, NULL, 10);
            opt_t = strtoull(tv, NULL, 10);
        }
        if (!rc && opt) {
            size_t shape[1] = {n_moments};
            rc = expect(st, path, "optimizer.exp_avg", 1, shape, &src[n_sources], err);
            if (!rc) rc = expect(st, path, "optimizer.exp_avg_sq", 1, shape, &src[n_sources + 1], err);
        }
    }
    if (!rc) {
        for (size_t i = 0; i < pb->n_views; i++)
            fs_param_view_extract(&pb->views[i], part->tp_rank, part->tp_size, src[i], pb->params + pb->views[i].offset);
        if (opt && whole.vec[1]) { /* a tensor or pipeline shard: its parts of the whole moments */
            fs_shard_scatter(m, pb->full_views, pb->n_full_views, src[n_sources], whole.vec[1]);
            fs_shard_scatter(m, pb->full_views, pb->n_full_views, src[n_sources + 1], whole.vec[2]);
            fs_optimizer_import(opt, whole.vec[1], whole.vec[2]);
            opt->t = opt_t;
        } else if (opt) { /* this rank's part of the full state (all of it without ZeRO) */
            fs_optimizer_import(opt, src[n_sources], src[n_sources + 1]);
            opt->t = opt_t;
        }
        if (ts) {
            const char *lv = fs_safetensors_metadata(st, "loss"), *vv = fs_safetensors_metadata(st, "val_loss");
            ts->step = step;
            ts->rng = rng;
            ts->loss = lv ? strtod(lv, NULL) : 0.0;
            ts->val_loss = vv ? strtod(vv, NULL) : -1.0;
        }
    }
    free(src);
    whole_release(&whole);
    fs_safetensors_close(st);
    return rc;
}
