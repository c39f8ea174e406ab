/* sample.c — see sample.h. */
#include "compute/sample.h"

#include <math.h>
#include <stdlib.h>

typedef struct scored {
    float p;
    int32_t id;
} scored;

static inline int precedes(const scored *x, const scored *y) {
    return x->p != y->p ? x->p > y->p : x->id < y->id; /* ties by id: one total order */
}

static int by_prob_desc(const void *a, const void *b) {
    const scored *x = a, *y = b;
    return precedes(x, y) ? -1 : precedes(y, x) ? 1 : 0;
}

static void swap_scored(scored *a, scored *b) {
    scored t = *a;
    *a = *b;
    *b = t;
}

/* Reorders s (V) so that its first n entries are the n first of the total
 * order (in any order): quickselect with a median-of-three pivot. */
static void select_first(scored *s, size_t V, size_t n) {
    size_t lo = 0, hi = V; /* the n-th boundary lies in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (precedes(&s[hi - 1], &s[lo])) swap_scored(&s[hi - 1], &s[lo]);
        if (precedes(&s[mid], &s[lo])) swap_scored(&s[mid], &s[lo]);
        if (precedes(&s[hi - 1], &s[mid])) swap_scored(&s[hi - 1], &s[mid]);
        scored pivot = s[mid];
        swap_scored(&s[mid], &s[hi - 1]);
        size_t store = lo;
        for (size_t i = lo; i + 1 < hi; i++)
            if (precedes(&s[i], &pivot)) swap_scored(&s[i], &s[store++]);
        swap_scored(&s[store], &s[hi - 1]); /* the pivot in its place */
        if (store == n || store + 1 == n) return;
        if (store > n) hi = store;
        else lo = store + 1;
    }
}

/* The first `keep` of the total order, sorted, and how many it takes:
 * top_k alone needs k of them; top_p as many as reach its mass, found by
 * sorting 64, 256, ... first; neither, all V. A selection and a short sort
 * instead of sorting V (50,257 for GPT-2: most of a token's time), with
 * the same prefix, so the same token for the same draw. */
static size_t sort_kept(scored *s, size_t V, size_t top_k, double top_p) {
    size_t keep = top_k > 0 && top_k < V ? top_k : V;
    if (keep == V && top_p < 1.0)
        for (size_t n = 64; n < V; n *= 4) {
            select_first(s, V, n);
            qsort(s, n, sizeof *s, by_prob_desc);
            double cum = 0.0;
            for (size_t i = 0; i < n && cum < top_p; i++) cum += s[i].p;
            if (cum >= top_p) return n;
        }
    if (keep < V) select_first(s, V, keep);
    qsort(s, keep, sizeof *s, by_prob_desc);
    return keep;
}

int32_t sample_forward(const float *logits, size_t V, double temperature, size_t top_k, double top_p, float u,
                       float *work) {
    if (temperature <= 0.0) {
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
        s[i].p = expf((float)((logits[i] - mx) / temperature));
        s[i].id = (int32_t)i;
        sum += s[i].p;
    }
    for (size_t i = 0; i < V; i++) s[i].p = (float)(s[i].p / sum);
    size_t keep = sort_kept(s, V, top_k, top_p);
    if (top_p < 1.0) {
        double cum = 0.0;
        size_t n = 0;
        while (n < keep) {
            cum += s[n++].p;
            if (cum >= top_p) break;
        }
        keep = n ? n : 1;
    }
    double mass = 0.0;
    for (size_t i = 0; i < keep; i++) mass += s[i].p;
    double x = (double)u * mass, cum = 0.0;
    for (size_t i = 0; i < keep; i++) {
        cum += s[i].p;
        if (x < cum) return s[i].id;
    }
    return s[keep - 1].id;
}
