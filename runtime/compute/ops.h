/* ops.h — the GPT-2 kernels on the CPU: forward and backward of every op.
 *
 * Conventions (after llm.c): outputs first, then inputs, then sizes;
 * gradients prefixed d; parameter gradients (dw, dbias, dwte ...) are
 * accumulated (+=) so micro-batches add up, activation gradients (dinp) are
 * overwritten. Shapes in comments; all tensors contiguous row-major f32.
 * Matmuls go to BLAS; the rest are OpenMP loops. */
#ifndef FS_OPS_H
#define FS_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Elements below which a loop runs on one thread: waking the team and the
 * barrier cost more than they save, and far more on a loaded machine
 * (decoding one token is ~20 such loops per layer). */
#define FS_PARALLEL_MIN 32768

// out (B,T,C) = wte[inp] + wpe[pos0 + t]
void encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, size_t B, size_t T,
                     size_t C, size_t pos0);
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, size_t B, size_t T,
                      size_t C, size_t pos0);

// out, inp (N,C); mean, rstd (N); eps 1e-5
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, size_t N, size_t C);
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, size_t N, size_t C);

// out (N,OC) = inp (N,C) @ weight (C,OC) + bias (OC, may be NULL)
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, size_t N, size_t C,
                    size_t OC);
// dinp (N,C) = dout @ weight^T (skipped if NULL); dweight += inp^T @ dout; dbias += colsum(dout)
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, size_t N, size_t C, size_t OC);

// GPT-2's tanh approximation of GELU; n elements
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

// out = a + b; n elements
void residual_forward(float *out, const float *a, const float *b, size_t n);
// acc += x
void add_inplace(float *acc, const float *x, size_t n);

// qkv (B,T,3C) -> q, k, v (B,H,T,D) with C = H*D
void attention_split_heads(float *q, float *k, float *v, const float *qkv, size_t B, size_t T, size_t H,
                           size_t D);
// dqkv (B,T,3C) <- dq, dk, dv (B,H,T,D)
void attention_split_heads_backward(float *dqkv, const float *dq, const float *dk, const float *dv, size_t B,
                                    size_t T, size_t H, size_t D);
// out (B,T,C) <- y (B,H,T,D); the backward is the inverse permutation
void attention_merge_heads(float *out, const float *y, size_t B, size_t T, size_t H, size_t D);
void attention_merge_heads_backward(float *dy, const float *dout, size_t B, size_t T, size_t H, size_t D);

// Mean cross-entropy of softmax(logits (N,V)) against targets (N); writes
// dlogits = (softmax - onehot) * scale when dlogits != NULL (scale is
// usually 1/N). Returns the summed (not mean) loss in double.
double crossentropy_softmax_forward_backward(float *dlogits, const float *logits, const int32_t *targets,
                                              size_t N, size_t V, float scale);

// probs (N,V) = softmax(logits / temperature), rows independent
void softmax_forward(float *probs, const float *logits, size_t N, size_t V, float temperature);

#endif
