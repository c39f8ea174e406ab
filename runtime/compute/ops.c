/* ops.c — GPT-2 kernels on the CPU (see ops.h for conventions). */
#include "compute/ops.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "compute/blas.h"
#include "fastserve/fastmath.h"

#define LN_EPS 1e-5f

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

void encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, size_t B, size_t T,
                     size_t C, size_t pos0) {
#pragma omp parallel for schedule(static) if (B * T * C >= FS_PARALLEL_MIN)
    for (size_t bt = 0; bt < B * T; bt++) {
        size_t t = bt % T;
        const float *e = wte + (size_t)inp[bt] * C, *p = wpe + (pos0 + t) * C;
        float *o = out + bt * C;
        for (size_t i = 0; i < C; i++) o[i] = e[i] + p[i];
    }
}

void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, size_t B, size_t T,
                      size_t C, size_t pos0) {
    /* Tokens repeat, so rows of dwte collide: parallel over channels. */
#pragma omp parallel for schedule(static) if (B * T * C >= FS_PARALLEL_MIN)
    for (size_t c0 = 0; c0 < C; c0 += 16) {
        size_t c1 = c0 + 16 < C ? c0 + 16 : C;
        for (size_t bt = 0; bt < B * T; bt++) {
            size_t t = bt % T;
            const float *d = dout + bt * C;
            float *dw = dwte + (size_t)inp[bt] * C, *dp = dwpe + (pos0 + t) * C;
            for (size_t i = c0; i < c1; i++) {
                dw[i] += d[i];
                dp[i] += d[i];
            }
        }
    }
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, size_t N, size_t C) {
#pragma omp parallel for schedule(static) if (N * C >= FS_PARALLEL_MIN)
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float m = 0.0f;
        /* simd: lets the float sums be reordered into vector lanes */
#pragma omp simd reduction(+ : m)
        for (size_t i = 0; i < C; i++) m += x[i];
        m /= (float)C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (size_t i = 0; i < C; i++) {
            float d = x[i] - m;
            v += d * d;
        }
        v /= (float)C;
        float s = 1.0f / sqrtf(v + LN_EPS);
        float *o = out + n * C;
        for (size_t i = 0; i < C; i++) o[i] = (x[i] - m) * s * weight[i] + bias[i];
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = s;
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, size_t N, size_t C) {
    int nt = omp_get_max_threads();
    float *part = calloc((size_t)nt * 2 * C, sizeof(float));
#pragma omp parallel if (N * C >= FS_PARALLEL_MIN)
    {
        int tid = omp_get_thread_num();
        float *pw = part ? part + (size_t)tid * 2 * C : NULL, *pb = pw ? pw + C : NULL;
#pragma omp for schedule(static)
        for (size_t n = 0; n < N; n++) {
            const float *x = inp + n * C, *dy = dout + n * C;
            float m = mean[n], s = rstd[n];
            float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
            for (size_t i = 0; i < C; i++) {
                float norm = (x[i] - m) * s;
                float dnorm = weight[i] * dy[i];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * norm;
            }
            dnorm_mean /= (float)C;
            dnorm_norm_mean /= (float)C;
            float *dx = dinp + n * C;
#pragma omp simd
            for (size_t i = 0; i < C; i++) {
                float norm = (x[i] - m) * s;
                float dnorm = weight[i] * dy[i];
                dx[i] = (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
            }
            if (pw) {
#pragma omp simd
                for (size_t i = 0; i < C; i++) {
                    pw[i] += (x[i] - m) * s * dy[i];
                    pb[i] += dy[i];
                }
            }
        }
    }
    if (part) {
        for (int t = 0; t < nt; t++)
            for (size_t i = 0; i < C; i++) {
                dweight[i] += part[(size_t)t * 2 * C + i];
                dbias[i] += part[(size_t)t * 2 * C + C + i];
            }
        free(part);
    } else { /* out of memory for partials: do the reduction serially */
        for (size_t n = 0; n < N; n++)
            for (size_t i = 0; i < C; i++) {
                float norm = (inp[n * C + i] - mean[n]) * rstd[n];
                dweight[i] += norm * dout[n * C + i];
                dbias[i] += dout[n * C + i];
            }
    }
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, size_t N, size_t C,
                    size_t OC) {
    if (bias) {
#pragma omp parallel for schedule(static) if (N * OC >= FS_PARALLEL_MIN)
        for (size_t n = 0; n < N; n++) memcpy(out + n * OC, bias, OC * sizeof(float));
    }
    fs_sgemm(0, 0, N, OC, C, 1.0f, inp, C, weight, OC, bias ? 1.0f : 0.0f, out, OC);
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, size_t N, size_t C, size_t OC) {
    if (dinp) fs_sgemm(0, 1, N, C, OC, 1.0f, dout, OC, weight, OC, 0.0f, dinp, C);
    fs_sgemm(1, 0, C, OC, N, 1.0f, inp, C, dout, OC, 1.0f, dweight, OC);
    if (dbias) {
#pragma omp parallel for schedule(static) if (N * OC >= FS_PARALLEL_MIN)
        for (size_t o0 = 0; o0 < OC; o0 += 64) {
            size_t o1 = o0 + 64 < OC ? o0 + 64 : OC;
            for (size_t n = 0; n < N; n++) {
                const float *d = dout + n * OC;
                for (size_t o = o0; o < o1; o++) dbias[o] += d[o];
            }
        }
    }
}

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) if (n >= FS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + fs_fast_tanhf(u));
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp parallel for schedule(static) if (n >= FS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float th = fs_fast_tanhf(u);
        float sech2 = 1.0f - th * th;
        float local = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = local * dout[i];
    }
}

void residual_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= FS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void add_inplace(float *acc, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= FS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) acc[i] += x[i];
}

void attention_split_heads(float *q, float *k, float *v, const float *qkv, size_t B, size_t T, size_t H,
                           size_t D) {
    size_t C = H * D;
#pragma omp parallel for collapse(2) schedule(static) if (B * T * H * D >= FS_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t t = 0; t < T; t++) {
                const float *row = qkv + (b * T + t) * 3 * C + h * D;
                size_t o = ((b * H + h) * T + t) * D;
                memcpy(q + o, row, D * sizeof(float));
                memcpy(k + o, row + C, D * sizeof(float));
                memcpy(v + o, row + 2 * C, D * sizeof(float));
            }
}

void attention_split_heads_backward(float *dqkv, const float *dq, const float *dk, const float *dv, size_t B,
                                    size_t T, size_t H, size_t D) {
    size_t C = H * D;
#pragma omp parallel for collapse(2) schedule(static) if (B * T * H * D >= FS_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t t = 0; t < T; t++) {
                float *row = dqkv + (b * T + t) * 3 * C + h * D;
                size_t o = ((b * H + h) * T + t) * D;
                memcpy(row, dq + o, D * sizeof(float));
                memcpy(row + C, dk + o, D * sizeof(float));
                memcpy(row + 2 * C, dv + o, D * sizeof(float));
            }
}

void attention_merge_heads(float *out, const float *y, size_t B, size_t T, size_t H, size_t D) {
    size_t C = H * D;
#pragma omp parallel for collapse(2) schedule(static) if (B * T * H * D >= FS_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++)
            for (size_t h = 0; h < H; h++)
                memcpy(out + (b * T + t) * C + h * D, y + ((b * H + h) * T + t) * D, D * sizeof(float));
}

void attention_merge_heads_backward(float *dy, const float *dout, size_t B, size_t T, size_t H, size_t D) {
    size_t C = H * D;
#pragma omp parallel for collapse(2) schedule(static) if (B * T * H * D >= FS_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++)
            for (size_t h = 0; h < H; h++)
                memcpy(dy + ((b * H + h) * T + t) * D, dout + (b * T + t) * C + h * D, D * sizeof(float));
}

double crossentropy_softmax_forward_backward(float *dlogits, const float *logits, const int32_t *targets,
                                              size_t N, size_t V, float scale) {
    double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (N * V >= FS_PARALLEL_MIN)
    for (size_t n = 0; n < N; n++) {
        const float *z = logits + n * V;
        float mx = z[0];
#pragma omp simd reduction(max : mx)
        for (size_t i = 1; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        float sum = 0.0f;
        float *d = dlogits ? dlogits + n * V : NULL;
        if (d) { /* keep the exponentials: one exp per logit */
#pragma omp simd reduction(+ : sum)
            for (size_t i = 0; i < V; i++) {
                d[i] = fs_fast_expf(z[i] - mx);
                sum += d[i];
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (size_t i = 0; i < V; i++) sum += fs_fast_expf(z[i] - mx);
        }
        float lse = mx + logf(sum);
        int32_t y = targets[n];
        total += (double)(lse - z[y]);
        if (d) {
            float k = scale / sum;
            for (size_t i = 0; i < V; i++) d[i] *= k;
            d[y] -= scale;
        }
    }
    return total;
}

void softmax_forward(float *probs, const float *logits, size_t N, size_t V, float temperature) {
    float inv_t = 1.0f / temperature;
    for (size_t n = 0; n < N; n++) {
        const float *z = logits + n * V;
        float *p = probs + n * V;
        float mx = z[0];
        for (size_t i = 1; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        float sum = 0.0f;
        for (size_t i = 0; i < V; i++) {
            p[i] = expf((z[i] - mx) * inv_t);
            sum += p[i];
        }
        for (size_t i = 0; i < V; i++) p[i] /= sum;
    }
}
