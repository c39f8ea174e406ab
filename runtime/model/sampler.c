/* sampler.c — see sampler.h. */
#include "model/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

typedef struct scored {
    float p;
    int32_t id;
} scored;

static int by_prob_desc(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id; /* ties by id: deterministic across qsort implementations */
}

int32_t fs_sample_token(const float *logits, size_t V, const fs_sampler *sp, uint64_t *rng_state, float *work) {
    if (sp->temperature <= 0.0) {
        size_t best = 0;
        for (size_t i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return (int32_t)best;
    }
    scored *s = (scored *)work;
    float mx = logits[0];
    for (size_t i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (size_t i = 0; i < V; i++) {
        s[i].p = expf((float)((logits[i] - mx) / sp->temperature));
        s[i].id = (int32_t)i;
        sum += s[i].p;
    }
    for (size_t i = 0; i < V; i++) s[i].p = (float)(s[i].p / sum);
    qsort(s, V, sizeof *s, by_prob_desc);
    size_t keep = V;
    if (sp->top_k > 0 && sp->top_k < keep) keep = sp->top_k;
    if (sp->top_p < 1.0) {
        double cum = 0.0;
        size_t n = 0;
        while (n < keep) {
            cum += s[n++].p;
            if (cum >= sp->top_p) break;
        }
        keep = n ? n : 1;
    }
    double mass = 0.0;
    for (size_t i = 0; i < keep; i++) mass += s[i].p;
    fs_rng r;
    memcpy(r.s, rng_state, sizeof r.s);
    double u = (double)fs_rng_float(&r) * mass;
    memcpy(rng_state, r.s, sizeof r.s);
    double cum = 0.0;
    for (size_t i = 0; i < keep; i++) {
        cum += s[i].p;
        if (u < cum) return s[i].id;
    }
    return s[keep - 1].id;
}
