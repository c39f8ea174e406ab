/* sampler.c — see sampler.h. */
#include "model/sampler.h"

#include <string.h>

#include "compute/sample.h"
#include "core/rng.h"

int32_t fs_sample_token(const float *logits, size_t V, const fs_sampler *sp, uint64_t *rng_state, float *work) {
    float u = 0.0f;
    if (sp->temperature > 0.0) { /* greedy draws nothing */
        fs_rng r;
        memcpy(r.s, rng_state, sizeof r.s);
        u = fs_rng_float(&r);
        memcpy(rng_state, r.s, sizeof r.s);
    }
    return sample_forward(logits, V, sp->temperature, sp->top_k, sp->top_p, u, work);
}
