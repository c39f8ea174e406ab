/* test_sampler.c — fs_sample_token against the definition of its draw,
 * written here from sampler.h: probabilities softmax(logits / T), sorted by
 * probability (descending, ties by lower id), cut to top_k, then to the
 * shortest prefix whose mass reaches top_p, and the token where a uniform
 * draw times the kept mass falls in the running sum. The sampler selects
 * and sorts only what it keeps; every setting must pick the same token
 * from the same random state, with GPT-2's vocabulary and with ties. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/sampler.h"
#include "test_util.h"

typedef struct ref_scored {
    float p;
    int32_t id;
} ref_scored;

static int ref_order(const void *a, const void *b) {
    const ref_scored *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int32_t ref_sample(const float *logits, size_t V, const fs_sampler *sp, uint64_t *state) {
    ref_scored *s = malloc(V * sizeof *s);
    float mx = logits[0];
    for (size_t i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (size_t i = 0; i < V; i++) {
        s[i].p = expf((float)((logits[i] - mx) / sp->temperature));
        s[i].id = (int32_t)i;
        sum += s[i].p;
    }
    for (size_t i = 0; i < V; i++) s[i].p = (float)(s[i].p / sum);
    qsort(s, V, sizeof *s, ref_order);
    size_t keep = sp->top_k > 0 && sp->top_k < V ? sp->top_k : V;
    if (sp->top_p < 1.0) {
        double cum = 0.0;
        size_t n = 0;
        while (n < keep) {
            cum += s[n++].p;
            if (cum >= sp->top_p) break;
        }
        keep = n;
    }
    double mass = 0.0, cum = 0.0;
    for (size_t i = 0; i < keep; i++) mass += s[i].p;
    fs_rng r;
    memcpy(r.s, state, sizeof r.s);
    double u = (double)fs_rng_float(&r) * mass;
    memcpy(state, r.s, sizeof r.s);
    int32_t id = s[keep - 1].id;
    for (size_t i = 0; i < keep; i++)
        if (u < (cum += s[i].p)) {
            id = s[i].id;
            break;
        }
    free(s);
    return id;
}

/* Logits like a language model's: a few large, a long tail; `ties`
 * rounds them to a coarse grid so that many are equal. */
static void make_logits(float *x, size_t V, fs_rng *r, int ties) {
    for (size_t i = 0; i < V; i++) {
        float v = 3.0f * fs_rng_normal(r);
        if (fs_rng_below(r, 200) == 0) v += 12.0f;
        x[i] = ties ? roundf(v) : v;
    }
}

static void check_settings(size_t V, int ties) {
    static const size_t ks[] = {0, 1, 5, 40, 1000};
    static const double ps[] = {1.0, 0.999, 0.9, 0.5, 0.05};
    static const double ts[] = {0.6, 1.0, 1.7};
    float *logits = malloc(V * sizeof *logits), *work = malloc((2 * V + 16) * sizeof *work);
    fs_rng r;
    fs_rng_seed(&r, 1234 + V + (size_t)ties);
    size_t checked = 0;
    for (int draw = 0; draw < 4; draw++) {
        make_logits(logits, V, &r, ties);
        for (size_t a = 0; a < 5; a++)
            for (size_t b = 0; b < 5; b++)
                for (size_t c = 0; c < 3; c++) {
                    fs_sampler sp = {.temperature = ts[c], .top_k = ks[a], .top_p = ps[b]};
                    uint64_t s1[4], s2[4];
                    for (int w = 0; w < 4; w++) s1[w] = s2[w] = fs_rng_u64(&r);
                    int32_t want = ref_sample(logits, V, &sp, s1);
                    int32_t got = fs_sample_token(logits, V, &sp, s2, work);
                    if (got != want)
                        fail_msg("V=%zu ties=%d T=%g top_k=%zu top_p=%g: token %d, the definition gives %d", V, ties,
                                 sp.temperature, sp.top_k, sp.top_p, (int)got, (int)want);
                    assert_memory_equal(s1, s2, sizeof s1);
                    checked++;
                }
    }
    assert_int_equal(checked, 4 * 75);
    free(logits);
    free(work);
}

static void test_gpt2_vocabulary(void **state) {
    (void)state;
    check_settings(50257, 0);
}

static void test_ties(void **state) {
    (void)state;
    check_settings(50257, 1);
    check_settings(300, 1);
}

static void test_small_vocabularies(void **state) {
    (void)state;
    for (size_t V = 1; V <= 70; V += 23) check_settings(V, 0);
    check_settings(256, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_vocabulary),
        cmocka_unit_test(test_ties),
        cmocka_unit_test(test_small_vocabularies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
