/* attention_cuda.h — the device halves of the attention plugins: launchers
 * the plugins' C code calls (callable from C, defined in *_kernels.cu and
 * common.cu, compiled into each plugin when the CUDA toolkit is found).
 *
 * Every launcher queues its kernels on `stream` (a cudaStream_t: the host's
 * device_stream, the model's compute stream) and returns the cudaError_t of
 * the launch as an int (0: queued). Pointers are device memory; q, k, v and
 * their gradients are F32 or BF16 (`dtype`), statistics f32. Shapes:
 * (B, H, T, D) as in fastserve/attention.h, BH = B * H. */
#ifndef FS_ATTENTION_CUDA_H
#define FS_ATTENTION_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- common.cu ---- */
const char *fs_att_cuda_error(int e);        /* cudaGetErrorString */
int fs_att_cuda_set_device(int device);      /* cudaSetDevice */
int fs_att_cuda_device_count(void);          /* 0 without a driver or device */
int fs_att_cuda_memcpy(void *stream, void *dst, const void *src, size_t bytes, int kind); /* fs_copy_kind */
int fs_att_cuda_memset(void *stream, void *p, int value, size_t bytes);
int fs_att_cuda_sync(void *stream);
// delta (rows) = rowsum(dout * out), rows of D
int fs_att_delta(void *stream, float *delta, const void *dout, const void *out, size_t rows, size_t D, int dtype);
// dst (n, C) = src rows idx[i] (ld C); idx on the device
int fs_att_gather_rows(void *stream, float *dst, const float *src, const int32_t *idx, size_t n, size_t C);
// dst rows idx[i] += src (n, C)
int fs_att_scatter_add_rows(void *stream, float *dst, const float *src, const int32_t *idx, size_t n, size_t C);
// x (n rows, ld apart, C columns) += bias (C)
int fs_att_add_bias(void *stream, float *x, const float *bias, size_t n, size_t C, size_t ld);
// out (C) += column sums of x (n rows, ld apart), rows in order
int fs_att_column_sums(void *stream, float *out, const float *x, size_t n, size_t C, size_t ld);

/* ---- dense_kernels.cu ---- */
int fs_dense_cuda_forward(void *stream, void *out, float *lse, const void *q, const void *k, const void *v, size_t BH,
                          size_t T, size_t D, int causal, float scale, int dtype);
// dq, dk, dv overwritten; delta: BH * T floats of work memory
int fs_dense_cuda_backward(void *stream, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                           const void *v, const void *out, const float *lse, float *delta, size_t BH, size_t T,
                           size_t D, int causal, float scale, int dtype);
// scores (BH, T, T) f32: scale * q k^T (probs 0) or e^(that - lse) (probs 1), masked entries 0
int fs_dense_cuda_scores(void *stream, float *scores, const void *q, const void *k, const float *lse, size_t BH,
                         size_t T, size_t D, int causal, float scale, int probs, int dtype);
// in place, one (T, T) block: dP -> dS = P (dP - rowsum(dP * P)) for probabilities; masked entries 0
int fs_dense_cuda_scores_grad(void *stream, float *ds, const void *q, const void *k, const float *lse, size_t T,
                              size_t D, int causal, float scale, int probs, int dtype);
/* ---- dense_mma.cu: the same forward and backward on tensor cores ---- */
// 1 when they serve: bf16, D 64 or 128, the n pointers 16-byte aligned, a device of sm_80 or later
int fs_dense_mma_fits(size_t D, int dtype, const void *const *ptrs, size_t n);
int fs_dense_mma_forward(void *stream, void *out, float *lse, const void *q, const void *k, const void *v, size_t BH,
                         size_t T, size_t D, int causal, float scale);
// delta computed already (fs_att_delta)
int fs_dense_mma_backward(void *stream, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                          const void *v, const float *lse, const float *delta, size_t BH, size_t T, size_t D,
                          int causal, float scale);

/* Decode: K/V caches (BH, context, D) f32. append writes the new token's
 * k and v (BH, D) at position pos; decode attends over each row's first
 * lens[b] (or len, when lens is NULL) positions. The serving engine's
 * ragged paged step has kernels of its own (dense_paged.cu). */
int fs_dense_cuda_append(void *stream, float *kc, float *vc, const void *k, const void *v, size_t BH, size_t context,
                         size_t D, size_t pos, int dtype);
int fs_dense_cuda_decode(void *stream, void *out, const void *q, const float *kc, const float *vc, const int32_t *lens,
                         size_t len, size_t B, size_t H, size_t context, size_t D, float scale, int dtype);

/* ---- dense_paged.cu: the serving engine's paged step (FS_ATTENTION_CUDA_PAGED) ----
 * Blocks in dense.c's layout (paged_math.h's fs_pg_entry), f32 (es 4) or
 * bf16 (es 2); q, k, v, out f32. rows and tables are device copies of the
 * step's host tables: for row r, rows[2r] its absolute position and
 * rows[2r + 1] where its sequence's block table starts in tables. */
typedef struct fs_paged_cuda_args {
    const float *q, *k, *v; /* (N, H, D) the new tokens' */
    float *out;             /* (N, H, D) */
    char *pool;             /* block b at pool + b * block_bytes, 16-byte aligned */
    const int32_t *rows;    /* (N, 2) */
    const int32_t *tables;  /* the sequences' block tables, one after another */
    size_t N, H, D, kv_block, block_bytes, es;
    float scale;
} fs_paged_cuda_args;

// every new token's key and value into its block; queue before fs_paged_cuda_attend
int fs_paged_cuda_store(void *stream, const fs_paged_cuda_args *a);
// out: each (row, head) over its sequence's keys 0..position; D as fs_pg_fits allows
int fs_paged_cuda_attend(void *stream, const fs_paged_cuda_args *a);
// page-locked host memory (cudaMallocHost / cudaFreeHost) and events, for
// staging tables the device reads after the call returns
int fs_att_cuda_host_alloc(void **p, size_t bytes);
void fs_att_cuda_host_free(void *p);
int fs_att_cuda_event_create(void **ev);
void fs_att_cuda_event_destroy(void *ev);
int fs_att_cuda_event_record(void *stream, void *ev);
int fs_att_cuda_event_wait(void *ev); /* the host waits for the work queued before the record */

/* ---- longformer_kernels.cu ---- */
/* Everything a longformer pass reads and writes, device pointers. */
typedef struct fs_lf_cuda_args {
    const void *q, *k, *v, *dout;   /* (B, H, T, D) */
    void *out, *dq, *dk, *dv;
    float *lse;                     /* (B, H, T) local rows' (the saved state's) */
    float *glse;                    /* (B, H, gmax) global rows' */
    const float *delta;             /* (B, H, T) rowsum(dout * out) */
    const uint8_t *gflag;           /* (B, T) 1: a global position */
    const int32_t *glist, *gcount;  /* (B, gmax) ascending positions, (B) how many */
    const int32_t *jspan;           /* (B) keys of the global projection per sequence */
    const int32_t *dil;             /* (H) dilations */
    float *qg, *kvg;                /* (B, gmax, C), (B, jmax, 2C): the global projection */
    float *dqg, *dkvg;              /* their gradients */
    size_t B, H, T, D, gmax, jmax, window, dmax;
    float scale;
    int causal, dtype;
} fs_lf_cuda_args;

// the band (local rows, global columns); backward also the global columns' dk, dv (accumulated)
int fs_lf_cuda_band_forward(void *stream, const fs_lf_cuda_args *a);
int fs_lf_cuda_band_backward(void *stream, const fs_lf_cuda_args *a);
// the global rows (f32): out rows and glse; backward dqg, dkvg (overwritten)
int fs_lf_cuda_global_forward(void *stream, const fs_lf_cuda_args *a);
int fs_lf_cuda_global_backward(void *stream, const fs_lf_cuda_args *a);

/* ---- lsh_kernels.cu (f32) ---- */
typedef struct fs_lsh_cuda_args {
    const float *q, *v, *dout, *out; /* (B, H, T, D) */
    float *out_w, *dq, *dk, *dv;     /* forward's output; backward's gradients */
    char *saved;                     /* the saved state, lsh.h's layout per (b, h) */
    size_t per_bh, off_bucket, off_order, off_where, off_lse;
    float *kn;                       /* (B, H, T, D) normalised keys */
    float *out_r, *lse_r;            /* (B, H, nh, T, D), (B, H, nh, T): each round's */
    float *dq_r, *dkn_r, *dv_r;      /* (B, H, nh, T, D) */
    float *delta;                    /* (B, H, T) */
    size_t B, H, T, D, nh, n_buckets, chunk, back, ahead;
    float scale;
    int causal;
} fs_lsh_cuda_args;

int fs_lsh_cuda_normalize(void *stream, const fs_lsh_cuda_args *a);
// round r's buckets from its projections proj (B*H*T, n_buckets / 2), then (after the last round) the sort
int fs_lsh_cuda_buckets(void *stream, const fs_lsh_cuda_args *a, const float *proj, size_t r);
int fs_lsh_cuda_sort(void *stream, const fs_lsh_cuda_args *a);
// every round's chunked attention, then the rounds merged into out_w and the saved log-sum-exp
int fs_lsh_cuda_forward(void *stream, const fs_lsh_cuda_args *a);
// dq, dv (dk zeroed): the rounds' gradients added, the keys' through the normalisation
int fs_lsh_cuda_backward(void *stream, const fs_lsh_cuda_args *a);

#ifdef __cplusplus
}
#endif
#endif
