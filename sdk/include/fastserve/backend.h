/* fastserve/backend.h — the compute backend plugin vtable (since ABI 1.3).
 *
 * A backend owns one device: its memory, its queues of work (streams) and
 * the model's kernels, forward and backward. The runtime picks one per
 * process ([run] device: `cpu` or `cuda[:N]`) and calls the model's ops
 * through this table, so the model code is the same on every device. The
 * `cpu` backend is the runtime's OpenBLAS and OpenMP kernels; the `cuda`
 * backend is cuBLAS/cuBLASLt and kernels of its own, plus NCCL for the
 * collectives below.
 *
 * After ggml's backend interface (a device, buffers, asynchronous copies,
 * events) and llm.c's kernels (one function per op and direction, outputs
 * first, sizes last):
 *
 *   - Every op takes the instance, the stream it is queued on (NULL: the
 *     instance's own compute stream), its outputs, its inputs, then sizes
 *     (size_t) and the element type of the activations. It returns 0 or a
 *     negative fs_status with the detail in err. A status reports what can
 *     be checked when the op is queued (arguments, a launch); a device
 *     fault surfaces at the next synchronisation.
 *   - Ops are asynchronous on devices that queue work: pointers must stay
 *     valid until the stream has run them. On the CPU they run at once.
 *   - Pointers are device pointers of this backend unless a comment says
 *     "host". On the CPU backend both are plain memory.
 *   - Element types (fs_dtype): activations and their gradients are
 *     FS_DTYPE_F32 or, on backends with FS_BACKEND_BF16, FS_DTYPE_BF16
 *     (the `dtype` argument). Parameters, their gradients, optimizer state,
 *     layer-norm statistics and losses are always F32: mixed precision keeps
 *     f32 master weights and reads bf16 copies of the matrices (made with
 *     convert) in GEMMs. GEMM operands carry their own types.
 *   - Parameter gradients (dweight, dbias, dwte ...) accumulate (+=), so
 *     micro-batches add up; activation gradients (dinp) are overwritten,
 *     exactly as in the runtime's CPU kernels. Shapes are in comments,
 *     row-major and contiguous unless a leading dimension says otherwise.
 *
 * Growth rule: members are only ever appended; the host reads a member only
 * when the plugin's vtable_size covers it (FS_HAS_MEMBER). */
#ifndef FASTSERVE_BACKEND_H
#define FASTSERVE_BACKEND_H

#include "fastserve/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Capabilities, in fs_backend_vtable.flags. */
#define FS_BACKEND_ASYNC 0x1u       /* ops are queued on streams (synchronise before reading results) */
#define FS_BACKEND_BF16 0x2u        /* FS_DTYPE_BF16 activations and GEMM operands */
#define FS_BACKEND_TF32 0x4u        /* FS_GEMM_COMPUTE_TF32 differs from F32 (tensor cores) */
#define FS_BACKEND_COLLECTIVES 0x8u /* the coll_* members: collectives on device buffers */
#define FS_BACKEND_PINNED 0x10u     /* FS_MEM_HOST_PINNED is page-locked memory async copies use */

/* Queues of work. A CUDA backend's stream IS its cudaStream_t (and an event
 * its cudaEvent_t), so attention plugins launch their own kernels on the
 * stream the model runs on; the CPU backend's are tokens. */
typedef struct fs_backend_stream fs_backend_stream;
typedef struct fs_backend_event fs_backend_event;
/* A communicator over several processes' devices (an ncclComm_t). */
typedef struct fs_backend_coll fs_backend_coll;

/* Where alloc places memory. */
typedef enum fs_mem_kind {
    FS_MEM_DEVICE = 0,      /* the device's own memory */
    FS_MEM_HOST_PINNED = 1, /* host memory the device copies from/to asynchronously (KV swap) */
} fs_mem_kind;

/* Direction of a copy. */
typedef enum fs_copy_kind {
    FS_COPY_HOST_TO_DEVICE = 1,
    FS_COPY_DEVICE_TO_HOST = 2,
    FS_COPY_DEVICE_TO_DEVICE = 3,
} fs_copy_kind;

/* What the instance is for; fixed at create. */
typedef struct fs_backend_config {
    uint32_t struct_size;
    fs_device device; /* type: the backend's own; index: which device of that type */
} fs_backend_config;

/* The device, for logs, --version and the benchmark's MFU. */
typedef struct fs_backend_device_info {
    uint32_t struct_size;
    char name[128];            /* "NVIDIA H100 80GB HBM3", "CPU (OpenBLAS Haswell, 16 threads)" */
    size_t total_bytes;        /* device memory (0: host memory, unknown) */
    size_t free_bytes;
    int32_t compute_major;     /* CUDA compute capability (0 on the CPU) */
    int32_t compute_minor;
    int32_t multiprocessors;   /* SMs, or cores */
    double peak_tflops_f32;    /* dense peak by the vendor's figures, 0 when unknown: */
    double peak_tflops_tf32;   /*   the denominators of MFU */
    double peak_tflops_bf16;
} fs_backend_device_info;

/* How a GEMM with F32 operands computes. BF16 operands always accumulate
 * in f32. */
typedef enum fs_gemm_compute {
    FS_GEMM_COMPUTE_F32 = 0,  /* full single precision ([train] precision = fp32) */
    FS_GEMM_COMPUTE_TF32 = 1, /* tensor cores with 10-bit mantissas ([train] precision = tf32) */
} fs_gemm_compute;

/* C = alpha * op(A) op(B) + beta * C (+ bias on every row), row-major:
 * op(A) is (m, k), op(B) (k, n), C (m, n); op(X) = X^T when trans_x. Rows
 * of A, B, C are lda, ldb, ldc elements apart. `batch` > 1 repeats the
 * product over matrices stride_a, stride_b, stride_c elements apart
 * (strided batched GEMM: one per attention head). */
typedef struct fs_gemm_args {
    uint32_t struct_size;
    void *c;                   /* (batch, m, n) */
    const void *a, *b;
    int32_t c_dtype, ab_dtype; /* F32 or BF16; A and B share one type */
    int32_t trans_a, trans_b;
    size_t m, n, k;
    size_t lda, ldb, ldc;
    size_t batch;              /* 0 or 1: one product */
    size_t stride_a, stride_b, stride_c;
    float alpha, beta;
    const float *bias;         /* (n) F32 added to each row of C, or NULL (see bias_dtype) */
    int32_t compute;           /* fs_gemm_compute */
    /* Appended (read only when struct_size covers it, else F32): the type
     * of bias's elements. BF16 (on backends with FS_BACKEND_BF16; `bias`
     * then points to bf16 values) is what a BF16 C's epilogue reads
     * natively: cuBLASLt has no fused bias of F32 into BF16, so an F32
     * bias there costs a pass of its own over C. */
    int32_t bias_dtype;
} fs_gemm_args;

/* One row's sampling parameters and its uniform draw (host memory). */
typedef struct fs_sample_params {
    float temperature; /* 0: greedy (argmax, smallest id among equals); `u` unused */
    float top_p;       /* 1: off */
    uint32_t top_k;    /* 0: off */
    float u;           /* uniform in [0, 1) from the row's own generator */
} fs_sample_params;

/* Size of a collective communicator's id (NCCL's unique id). */
#define FS_BACKEND_COLL_ID_BYTES 128

typedef struct fs_backend_vtable {
    uint32_t struct_size;
    uint32_t flags;      /* FS_BACKEND_* */
    int32_t device_type; /* fs_device_type this backend serves */

    /* ---- the devices ----
     * Devices of this type present now; 0 (and FS_OK) when there is no
     * driver or no device. No instance needed: `[run] device = auto` asks. */
    int (*device_count)(int *count, fs_error *err);
    int (*create)(void **self, const fs_host_api *host, fs_plugin_ctx *ctx, const fs_backend_config *cfg,
                  fs_error *err);
    void (*destroy)(void *self); /* accepts NULL; waits for queued work */
    int (*device_info)(void *self, fs_backend_device_info *info, fs_error *err);

    /* ---- memory ----
     * 256-byte aligned; zero bytes gives a valid unique pointer; free(NULL)
     * is a no-op. Copies and memset are queued on the stream: a copy from
     * or to pageable host memory returns once the host side is done with
     * it; from or to FS_MEM_HOST_PINNED memory it only queues. */
    int (*alloc)(void *self, void **ptr, size_t bytes, int32_t mem, fs_error *err); /* mem: fs_mem_kind */
    void (*free)(void *self, void *ptr, int32_t mem);
    int (*copy)(void *self, fs_backend_stream *s, void *dst, const void *src, size_t bytes, int32_t kind,
                fs_error *err); /* kind: fs_copy_kind */
    int (*memset)(void *self, fs_backend_stream *s, void *ptr, int value, size_t bytes, fs_error *err);

    /* ---- streams, events, synchronisation ----
     * Work on one stream runs in order; across streams, an event recorded
     * on one and waited for by another orders them. priority: 0 normal,
     * > 0 higher (collectives that backward should not wait behind). */
    int (*stream_create)(void *self, fs_backend_stream **s, int32_t priority, fs_error *err);
    void (*stream_destroy)(void *self, fs_backend_stream *s);
    int (*stream_synchronize)(void *self, fs_backend_stream *s, fs_error *err);
    int (*event_create)(void *self, fs_backend_event **e, fs_error *err);
    void (*event_destroy)(void *self, fs_backend_event *e);
    int (*event_record)(void *self, fs_backend_event *e, fs_backend_stream *s, fs_error *err);
    int (*stream_wait_event)(void *self, fs_backend_stream *s, fs_backend_event *e, fs_error *err);
    /* *done = 1 when everything before the event's record has run. */
    int (*event_query)(void *self, fs_backend_event *e, int *done, fs_error *err);
    int (*event_synchronize)(void *self, fs_backend_event *e, fs_error *err);
    /* Waits for all work of the instance's device. */
    int (*synchronize)(void *self, fs_error *err);
    /* The instance's compute stream (what NULL means in every call): the
     * stream attention plugins get in fs_attention_config.stream. */
    fs_backend_stream *(*default_stream)(void *self);

    /* ---- GEMM ---- */
    int (*gemm)(void *self, fs_backend_stream *s, const fs_gemm_args *g, fs_error *err);
    // dbias (OC) += column sums of dout (N, OC), rows ldd elements apart
    int (*bias_backward)(void *self, fs_backend_stream *s, float *dbias, const void *dout, size_t N, size_t OC,
                         size_t ldd, int32_t dtype, fs_error *err);

    /* ---- the model's ops ---- */
    // out (B, T, C) = wte[inp] + wpe[pos0 + t]; inp (B, T) int32; wte (V, C), wpe (maxT, C) F32
    int (*encoder_forward)(void *self, fs_backend_stream *s, void *out, const int32_t *inp, const float *wte,
                           const float *wpe, size_t B, size_t T, size_t C, size_t pos0, int32_t dtype,
                           fs_error *err);
    // dwte += dout at rows inp, dwpe += dout at rows pos0 + t (summed over the batch)
    int (*encoder_backward)(void *self, fs_backend_stream *s, float *dwte, float *dwpe, const void *dout,
                            const int32_t *inp, size_t B, size_t T, size_t C, size_t pos0, int32_t dtype,
                            fs_error *err);
    // out, inp (N, C); mean, rstd (N) F32 (either may be NULL); weight, bias (C) F32; eps 1e-5
    int (*layernorm_forward)(void *self, fs_backend_stream *s, void *out, float *mean, float *rstd, const void *inp,
                             const float *weight, const float *bias, size_t N, size_t C, int32_t dtype,
                             fs_error *err);
    // dinp (N, C) overwritten; dweight, dbias (C) accumulated
    int (*layernorm_backward)(void *self, fs_backend_stream *s, void *dinp, float *dweight, float *dbias,
                              const void *dout, const void *inp, const float *weight, const float *mean,
                              const float *rstd, size_t N, size_t C, int32_t dtype, fs_error *err);
    // GPT-2's tanh approximation, n elements
    int (*gelu_forward)(void *self, fs_backend_stream *s, void *out, const void *inp, size_t n, int32_t dtype,
                        fs_error *err);
    int (*gelu_backward)(void *self, fs_backend_stream *s, void *dinp, const void *inp, const void *dout, size_t n,
                         int32_t dtype, fs_error *err);
    // out = a + b, n elements (out may be a or b)
    int (*residual_forward)(void *self, fs_backend_stream *s, void *out, const void *a, const void *b, size_t n,
                            int32_t dtype, fs_error *err);
    // dacc += dout: the residual's gradient reaching a branch that already has one
    int (*residual_backward)(void *self, fs_backend_stream *s, void *dacc, const void *dout, size_t n, int32_t dtype,
                             fs_error *err);
    // qkv (B, T, 3C) -> q, k, v (B, H, T, D), C = H * D
    int (*attention_split_heads)(void *self, fs_backend_stream *s, void *q, void *k, void *v, const void *qkv,
                                 size_t B, size_t T, size_t H, size_t D, int32_t dtype, fs_error *err);
    // dqkv (B, T, 3C) <- dq, dk, dv (B, H, T, D)
    int (*attention_split_heads_backward)(void *self, fs_backend_stream *s, void *dqkv, const void *dq,
                                          const void *dk, const void *dv, size_t B, size_t T, size_t H, size_t D,
                                          int32_t dtype, fs_error *err);
    // out (B, T, C) <- y (B, H, T, D); its backward is the inverse permutation
    int (*attention_merge_heads)(void *self, fs_backend_stream *s, void *out, const void *y, size_t B, size_t T,
                                 size_t H, size_t D, int32_t dtype, fs_error *err);
    int (*attention_merge_heads_backward)(void *self, fs_backend_stream *s, void *dy, const void *dout, size_t B,
                                          size_t T, size_t H, size_t D, int32_t dtype, fs_error *err);
    // Softmax cross-entropy of logits (N, V) against targets (N): *loss (one
    // double on the device) = the summed loss over the rows; dlogits (N, V),
    // when not NULL, = (softmax - onehot) * scale (usually 1 / N); it may be
    // logits itself. Rows of logits and dlogits are ld elements apart;
    // dlogits' columns V .. ld - 1 are set to 0, so a GEMM may run over the
    // padded width (model/device_gpt.c pads V to a multiple of 64).
    int (*crossentropy_forward_backward)(void *self, fs_backend_stream *s, double *loss, void *dlogits,
                                         const void *logits, const int32_t *targets, size_t N, size_t V, size_t ld,
                                         float scale, int32_t dtype, fs_error *err);
    // probs (N, V) F32 = softmax(logits / temperature), rows independent
    int (*softmax_forward)(void *self, fs_backend_stream *s, float *probs, const void *logits, size_t N, size_t V,
                           float temperature, int32_t dtype, fs_error *err);

    /* ---- optimizer ---- */
    // One AdamW step (t is 1-based) of n F32 parameters, grad scaled by
    // grad_scale first (global-norm clipping); param_copy (n, copy_dtype,
    // e.g. the BF16 weights GEMMs read) is refreshed when not NULL.
    int (*adamw_update)(void *self, fs_backend_stream *s, float *param, void *param_copy, float *m, float *v,
                        const float *grad, size_t n, float lr, float beta1, float beta2, float eps,
                        float weight_decay, float grad_scale, uint64_t t, int32_t copy_dtype, fs_error *err);
    // *out (one double on the device) += sum of x[i]^2 over n F32 elements:
    // one call per range, then the ranks' sums, then sqrt = the global norm
    int (*sumsq)(void *self, fs_backend_stream *s, double *out, const float *x, size_t n, fs_error *err);
    // x *= scale, n F32 elements
    int (*scale)(void *self, fs_backend_stream *s, float *x, float scale, size_t n, fs_error *err);
    // dst (n, dst_dtype) = src (n, src_dtype), F32 <-> BF16 (round to nearest even)
    int (*convert)(void *self, fs_backend_stream *s, void *dst, int32_t dst_dtype, const void *src,
                   int32_t src_dtype, size_t n, fs_error *err);

    /* ---- sampling ----
     * tokens (N, host) = one token per row of logits (N, V), rows ld
     * elements apart, each with its own parameters (N, host): temperature
     * softmax, keep the top_k most likely, then the smallest prefix (by
     * probability, ties by id) whose mass reaches top_p, and pick where u
     * times the kept mass falls in the cumulative sum. Returns when the
     * tokens are on the host. */
    int (*sample)(void *self, fs_backend_stream *s, int32_t *tokens, const void *logits, size_t N, size_t V,
                  size_t ld, const fs_sample_params *params, int32_t dtype, fs_error *err);

    /* ---- collectives on device buffers (FS_BACKEND_COLLECTIVES) ----
     * One rank makes an id, every rank receives it (over MPI) and creates
     * the communicator with it: NCCL's bootstrap. Calls are queued on the
     * stream; coll_check reports a peer's failure asynchronously, and
     * coll_abort tears a communicator down so no stream waits forever.
     * Between coll_group(1) and coll_group(0) calls are fused (sends and
     * receives of a pipeline exchange). op: fs_reduce_op (comm.h). */
    int (*coll_id)(void *self, uint8_t id[FS_BACKEND_COLL_ID_BYTES], fs_error *err);
    int (*coll_create)(void *self, fs_backend_coll **c, const uint8_t id[FS_BACKEND_COLL_ID_BYTES], int n_ranks,
                       int rank, fs_error *err);
    /* Ranks with equal color form one new communicator, ordered by key;
     * collective over c. */
    int (*coll_split)(void *self, fs_backend_coll *c, int color, int key, fs_backend_coll **out, fs_error *err);
    void (*coll_destroy)(void *self, fs_backend_coll *c);
    int (*coll_all_reduce)(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count,
                           int32_t dtype, int32_t op, fs_error *err);
    int (*coll_broadcast)(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count,
                          int32_t dtype, int root, fs_error *err);
    // out (n_ranks * count) rank-major <- in (count) of every rank
    int (*coll_all_gather)(void *self, fs_backend_coll *c, fs_backend_stream *s, void *out, const void *in,
                           size_t count, int32_t dtype, fs_error *err);
    // out (count) = this rank's block of the sum of every rank's in (n_ranks * count)
    int (*coll_reduce_scatter)(void *self, fs_backend_coll *c, fs_backend_stream *s, void *out, const void *in,
                               size_t count, int32_t dtype, int32_t op, fs_error *err);
    int (*coll_send)(void *self, fs_backend_coll *c, fs_backend_stream *s, const void *buf, size_t count,
                     int32_t dtype, int peer, fs_error *err);
    int (*coll_recv)(void *self, fs_backend_coll *c, fs_backend_stream *s, void *buf, size_t count, int32_t dtype,
                     int peer, fs_error *err);
    int (*coll_group)(void *self, int begin, fs_error *err);
    int (*coll_check)(void *self, fs_backend_coll *c, fs_error *err);
    void (*coll_abort)(void *self, fs_backend_coll *c);
} fs_backend_vtable;

#ifdef __cplusplus
}
#endif
#endif
