/* longformer_global.c — the rows of global tokens.
 *
 * A global token attends to the whole sequence (causal: up to itself)
 * through the plugin's own projection of the layer input x:
 *   Qg = x[globals] Wq_g + bq_g,   [Kg | Vg] = x[0, J) W{k,v}_g + b{k,v}_g
 * where J is the last position any global row can see, plus one. Kg and Vg
 * are saved for backward (O(T * C), like Q, K and V themselves); Qg is
 * cheap and recomputed. Rows go LF_GLOBAL_CHUNK at a time, so the score
 * buffer is LF_GLOBAL_CHUNK x J however many globals there are. Their
 * output overwrites the zero rows the band kernel left. */
#include <math.h>
#include <string.h>

#include "longformer.h"

typedef struct global_job {
    float *S, *dP;      /* (gc, Jc) */
    float *lse;         /* (gc) */
    const int32_t *pos; /* (gc) positions of the rows */
    size_t Jc;
    int causal;
    float scale;
} global_job;

static size_t row_len(const global_job *j, size_t i) { return j->causal ? (size_t)j->pos[i] + 1 : j->Jc; }

static void forward_rows(void *arg, size_t begin, size_t end) {
    const global_job *j = arg;
    for (size_t i = begin; i < end; i++) {
        float *row = j->S + i * j->Jc;
        size_t n = row_len(j, i);
        float mx = -INFINITY, sum = 0.0f;
        for (size_t c = 0; c < n; c++) mx = row[c] > mx ? row[c] : mx;
        for (size_t c = 0; c < n; c++) sum += row[c] = fs_fast_expf(row[c] - mx);
        float inv = 1.0f / sum;
        for (size_t c = 0; c < n; c++) row[c] *= inv;
        for (size_t c = n; c < j->Jc; c++) row[c] = 0.0f;
        j->lse[i] = mx + logf(sum);
    }
}

static void backward_rows(void *arg, size_t begin, size_t end) {
    const global_job *j = arg;
    for (size_t i = begin; i < end; i++) {
        float *row = j->S + i * j->Jc, *drow = j->dP + i * j->Jc;
        size_t n = row_len(j, i);
        float dot = 0.0f;
        for (size_t c = 0; c < n; c++) {
            row[c] = fs_fast_expf(row[c] - j->lse[i]);
            dot += row[c] * drow[c];
        }
        for (size_t c = n; c < j->Jc; c++) row[c] = drow[c] = 0.0f;
        for (size_t c = 0; c < n; c++) drow[c] = row[c] * (drow[c] - dot) * j->scale;
    }
}

/* A parallel region costs a fork and a barrier (milliseconds on busy
 * cores): only worth it for long rows or many of them. */
static void rows(const lf_plugin *lf, global_job *job, size_t gc, fs_parallel_fn fn) {
    if (gc * job->Jc >= 65536)
        lf->host->parallel_for(gc, 1, fn, job);
    else
        fn(job, 0, gc);
}

/* Xg = x[gl], Qg = Xg Wq_g + bq_g. */
static void project_queries(const lf_plugin *lf, const float *xb, const int32_t *gl, size_t g, float *Xg, float *Qg) {
    size_t C = lf->cfg.n_embd;
    for (size_t i = 0; i < g; i++) memcpy(Xg + i * C, xb + (size_t)gl[i] * C, C * sizeof(float));
    lf->host->sgemm(lf->cfg.device, 0, 0, g, C, C, 1.0f, Xg, C, lf->wg, 3 * C, 0.0f, Qg, C);
    for (size_t i = 0; i < g; i++)
        for (size_t c = 0; c < C; c++) Qg[i * C + c] += lf->bg[c];
}

int lf_global_forward(lf_plugin *lf, const fs_attention_args *a, lf_state *st, fs_error *err) {
    const fs_host_api *host = lf->host;
    fs_device dev = lf->cfg.device;
    size_t B = a->B, T = a->T, H = lf->cfg.n_head, D = lf->cfg.head_dim, C = lf->cfg.n_embd;
    size_t G = st->gmax, J = st->jmax, CH = LF_GLOBAL_CHUNK;
    float *Xg = lf_scratch(lf, 2 * G * C + CH * J + CH * D);
    if (!Xg) return host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory for work space");
    float *Qg = Xg + G * C, *S = Qg + G * C, *Og = S + CH * J;
    for (size_t b = 0; b < B; b++) {
        size_t g = (size_t)st->gcount[b], Jb = lf_global_span(lf, st, b);
        if (!g) continue;
        const int32_t *gl = st->glist + b * st->gmax;
        const float *xb = (const float *)a->x.data + b * T * C;
        float *kvg = st->kvg + b * st->jmax * 2 * C;
        project_queries(lf, xb, gl, g, Xg, Qg);
        host->sgemm(dev, 0, 0, Jb, 2 * C, C, 1.0f, xb, C, lf->wg + C, 3 * C, 0.0f, kvg, 2 * C);
        for (size_t j = 0; j < Jb; j++)
            for (size_t c = 0; c < 2 * C; c++) kvg[j * 2 * C + c] += lf->bg[C + c];
        for (size_t h = 0; h < H; h++) {
            size_t bh = b * H + h;
            float *out = (float *)a->out.data + bh * T * D;
            for (size_t c0 = 0; c0 < g; c0 += CH) {
                size_t gc = g - c0 < CH ? g - c0 : CH;
                size_t Jc = lf->cfg.causal ? (size_t)gl[c0 + gc - 1] + 1 : Jb;
                host->sgemm(dev, 0, 1, gc, Jc, D, lf->scale, Qg + c0 * C + h * D, C, kvg + h * D, 2 * C, 0.0f, S,
                            Jc);
                global_job job = {S, NULL, st->glse + bh * st->gmax + c0, gl + c0, Jc, lf->cfg.causal, lf->scale};
                rows(lf, &job, gc, forward_rows);
                host->sgemm(dev, 0, 0, gc, D, Jc, 1.0f, S, Jc, kvg + C + h * D, 2 * C, 0.0f, Og, D);
                for (size_t i = 0; i < gc; i++) memcpy(out + (size_t)gl[c0 + i] * D, Og + i * D, D * sizeof(float));
            }
        }
    }
    return FS_OK;
}

int lf_global_backward(lf_plugin *lf, const fs_attention_args *a, lf_state *st, fs_error *err) {
    const fs_host_api *host = lf->host;
    fs_device dev = lf->cfg.device;
    size_t B = a->B, T = a->T, H = lf->cfg.n_head, D = lf->cfg.head_dim, C = lf->cfg.n_embd;
    size_t G = st->gmax, J = st->jmax, CH = LF_GLOBAL_CHUNK;
    float *Xg = lf_scratch(lf, 3 * G * C + 2 * J * C + 2 * CH * J + CH * D);
    if (!Xg) return host->error_set(err, FS_ERR_NOMEM, "longformer attention: out of memory for work space");
    float *Qg = Xg + G * C, *dQg = Qg + G * C, *dkvg = dQg + G * C, *S = dkvg + 2 * J * C, *dP = S + CH * J;
    float *dOg = dP + CH * J;
    for (size_t b = 0; b < B; b++) {
        size_t g = (size_t)st->gcount[b], Jb = lf_global_span(lf, st, b);
        if (!g) continue;
        const int32_t *gl = st->glist + b * st->gmax;
        const float *xb = (const float *)a->x.data + b * T * C;
        float *dxb = (float *)a->dx.data + b * T * C;
        const float *kvg = st->kvg + b * st->jmax * 2 * C;
        project_queries(lf, xb, gl, g, Xg, Qg);
        memset(dkvg, 0, Jb * 2 * C * sizeof(float));
        for (size_t h = 0; h < H; h++) {
            size_t bh = b * H + h;
            const float *dout = (const float *)a->dout.data + bh * T * D;
            for (size_t c0 = 0; c0 < g; c0 += CH) {
                size_t gc = g - c0 < CH ? g - c0 : CH;
                size_t Jc = lf->cfg.causal ? (size_t)gl[c0 + gc - 1] + 1 : Jb;
                const float *qg = Qg + c0 * C + h * D;
                for (size_t i = 0; i < gc; i++)
                    memcpy(dOg + i * D, dout + (size_t)gl[c0 + i] * D, D * sizeof(float));
                host->sgemm(dev, 0, 1, gc, Jc, D, lf->scale, qg, C, kvg + h * D, 2 * C, 0.0f, S, Jc);
                host->sgemm(dev, 0, 1, gc, Jc, D, 1.0f, dOg, D, kvg + C + h * D, 2 * C, 0.0f, dP, Jc);
                global_job job = {S, dP, st->glse + bh * st->gmax + c0, gl + c0, Jc, lf->cfg.causal, lf->scale};
                rows(lf, &job, gc, backward_rows);
                /* dVg += P^T dOg; dQg = dS Kg; dKg += dS^T Qg */
                host->sgemm(dev, 1, 0, Jc, D, gc, 1.0f, S, Jc, dOg, D, 1.0f, dkvg + C + h * D, 2 * C);
                host->sgemm(dev, 0, 0, gc, D, Jc, 1.0f, dP, Jc, kvg + h * D, 2 * C, 0.0f, dQg + c0 * C + h * D, C);
                host->sgemm(dev, 1, 0, Jc, D, gc, 1.0f, dP, Jc, qg, C, 1.0f, dkvg + h * D, 2 * C);
            }
        }
        /* through the projection: weights, biases, then the input */
        host->sgemm(dev, 1, 0, C, C, g, 1.0f, Xg, C, dQg, C, 1.0f, lf->dwg, 3 * C);
        host->sgemm(dev, 1, 0, C, 2 * C, Jb, 1.0f, xb, C, dkvg, 2 * C, 1.0f, lf->dwg + C, 3 * C);
        for (size_t i = 0; i < g; i++)
            for (size_t c = 0; c < C; c++) lf->dbg[c] += dQg[i * C + c];
        for (size_t j = 0; j < Jb; j++)
            for (size_t c = 0; c < 2 * C; c++) lf->dbg[C + c] += dkvg[j * 2 * C + c];
        host->sgemm(dev, 0, 1, Jb, C, 2 * C, 1.0f, dkvg, 2 * C, lf->wg + C, 3 * C, 1.0f, dxb, C);
        host->sgemm(dev, 0, 1, g, C, C, 1.0f, dQg, C, lf->wg, 3 * C, 0.0f, Xg, C);
        for (size_t i = 0; i < g; i++) {
            float *d = dxb + (size_t)gl[i] * C;
            for (size_t c = 0; c < C; c++) d[c] += Xg[i * C + c];
        }
    }
    return FS_OK;
}
