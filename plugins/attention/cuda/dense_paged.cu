/* dense_paged.cu — dense attention's paged step (attention.h, "The paged
 * KV cache") on CUDA: the serving engine's ragged step over a pool of
 * blocks in device memory, in the block layout of the CPU (dense.c's
 * dense_entry), so blocks move between host and device as opaque bytes.
 *
 * Two kernels on the host's stream: pg_store writes every new token's key
 * and value into its block (f32, or bf16 rounded as fs_bf16_from_f32 does
 * on the CPU); pg_attend then computes each (row, head)'s output over its
 * sequence's keys 0..position. Stream order puts every store of the step
 * before any read of it: later rows of a prompt chunk read earlier rows'
 * keys.
 *
 * pg_attend: one block of FS_PG_WARPS warps per (row, head), split as
 * paged_math.h says (warps take tiles of 32 keys in turn, lane j scores
 * key j, subgroups of lanes read value rows in 128-bit chunks; the
 * subgroups, then the warps, combine in a fixed order). Decode rows (many
 * sequences, one row each, long contexts) fill the device with
 * rows x heads blocks and stream keys and values once each; a prefill
 * chunk has one block per (row, head) too, each reading its own prefix
 * (L2 serves the rows of a chunk that share it). Nothing in a row's
 * arithmetic depends on the step's other rows. */
#include "attention_cuda.h"
#include "flash.cuh"
#include "paged_math.h"

#define PG_THREADS (FS_PG_WARPS * 32)
#define PG_FULL 0xffffffffu

static unsigned pg_grid(size_t n) {
    size_t b = (n + 255) / 256;
    return b == 0 ? 1 : b > 65535u * 32u ? 65535u * 32u : (unsigned)b;
}

/* The row's absolute position and its sequence's block table. */
__device__ __forceinline__ size_t pg_pos(const fs_paged_cuda_args &a, size_t row) {
    return (size_t)a.rows[2 * row];
}
__device__ __forceinline__ const int32_t *pg_table(const fs_paged_cuda_args &a, size_t row) {
    return a.tables + a.rows[2 * row + 1];
}

/* The start of block b. */
__device__ __forceinline__ char *pg_block(const fs_paged_cuda_args &a, int32_t b) {
    return a.pool + (size_t)b * a.block_bytes;
}

/* ---- store ---- */

/* Element (row, h, v, c) of the step's new keys (v = 0) and values into
 * the row's block at its slot. */
template <int ES>
__global__ void pg_store(fs_paged_cuda_args a) {
    size_t D = a.D, H = a.H, n = a.N * H * 2 * D;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        size_t c = e % D, t = e / D, v = t % 2, rh = t / 2, h = rh % H, row = rh / H, pos = pg_pos(a, row);
        float x = (v ? a.v : a.k)[rh * D + c];
        char *dst = pg_block(a, pg_table(a, row)[pos / a.kv_block]) +
                    ES * (fs_pg_entry(a.kv_block, D, h, (int)v, pos % a.kv_block) + c);
        if (ES == 2) *(fs_bf16 *)dst = fs_bf16_from_f32(x);
        else *(float *)dst = x;
    }
}

/* ---- attend ---- */

/* One 128-bit load: 16 / ES stored elements as floats (bf16: the 16 bits
 * moved to the top, exact). */
template <int ES>
__device__ __forceinline__ void pg_load(const char *p, float *x) {
    if (ES == 4) {
        float4 f = *(const float4 *)p;
        x[0] = f.x, x[1] = f.y, x[2] = f.z, x[3] = f.w;
    } else {
        uint4 u = *(const uint4 *)p;
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) { /* element 2i is the low half of word i */
            x[2 * i] = __uint_as_float(w[i] << 16);
            x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
}

/* q (shared memory, D floats) . a stored key: one partial sum per element
 * of a chunk, then their sum in order. */
template <int ES>
__device__ __forceinline__ float pg_dot(const float *qs, const char *k, size_t D) {
    constexpr int CH = 16 / ES;
    float part[CH], kx[CH];
#pragma unroll
    for (int i = 0; i < CH; i++) part[i] = 0.0f;
    for (size_t c = 0; c < D; c += CH) {
        pg_load<ES>(k + c * ES, kx);
#pragma unroll
        for (int i = 0; i < CH; i += 4) {
            float4 qv = *(const float4 *)(qs + c + i);
            part[i] = fmaf(qv.x, kx[i], part[i]);
            part[i + 1] = fmaf(qv.y, kx[i + 1], part[i + 1]);
            part[i + 2] = fmaf(qv.z, kx[i + 2], part[i + 2]);
            part[i + 3] = fmaf(qv.w, kx[i + 3], part[i + 3]);
        }
    }
    float s = part[0];
#pragma unroll
    for (int i = 1; i < CH; i++) s += part[i];
    return s;
}

/* One tile of keys [t0, t0 + 32) of warp's share: scores, the online
 * softmax, and the values into this lane's chunk of its subgroup's rows. */
template <int ES>
__device__ __forceinline__ void pg_tile(const fs_paged_cuda_args &a, const float *qs, const int32_t *blocks, size_t h,
                                        size_t n, size_t t0, float *m, float *l, float *acc) {
    constexpr int CH = 16 / ES;
    size_t D = a.D, kb = a.kv_block, j = t0 + threadIdx.x % 32;
    unsigned lane = threadIdx.x % 32, G = (unsigned)(D / CH), R = 32 / G, g = lane / G, gl = lane % G;
    int32_t bid = 0;
    float s = -INFINITY;
    if (j < n) {
        bid = blocks[j / kb];
        s = pg_dot<ES>(qs, pg_block(a, bid) + ES * fs_pg_entry(kb, D, h, 0, j % kb), D) * a.scale;
    }
    float alpha = fs_pg_enter(m, fa_warp_max(s)), p = fs_pg_prob(s, *m);
    *l = *l * alpha + fa_warp_sum(p);
#pragma unroll
    for (int i = 0; i < CH; i++) acc[i] *= alpha;
    unsigned tile = (unsigned)(n - t0 < FS_PG_TILE ? n - t0 : FS_PG_TILE);
    for (unsigned r0 = 0; r0 < tile; r0 += R) { /* R rows side by side, subgroup g reading row r0 + g */
        unsigned jj = r0 + g;
        float pj = __shfl_sync(PG_FULL, p, (int)(jj & 31));
        int32_t bj = __shfl_sync(PG_FULL, bid, (int)(jj & 31));
        if (g < R && jj < tile) {
            float vx[CH];
            pg_load<ES>(pg_block(a, bj) + ES * (fs_pg_entry(kb, D, h, 1, (t0 + jj) % kb) + gl * CH), vx);
#pragma unroll
            for (int i = 0; i < CH; i++) acc[i] = fmaf(pj, vx[i], acc[i]);
        }
    }
}

template <int ES>
__global__ void __launch_bounds__(PG_THREADS) pg_attend(fs_paged_cuda_args a) {
    constexpr int CH = 16 / ES;
    __shared__ __align__(16) float qs[FS_PG_DMAX];
    __shared__ __align__(16) float wacc[FS_PG_WARPS][FS_PG_DMAX];
    __shared__ float wm[FS_PG_WARPS], wl[FS_PG_WARPS];
    size_t rh = blockIdx.x, row = rh / a.H, h = rh % a.H, D = a.D, n = pg_pos(a, row) + 1;
    const int32_t *blocks = pg_table(a, row);
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, G = (unsigned)(D / CH), R = 32 / G;
    for (size_t d = threadIdx.x; d < D; d += blockDim.x) qs[d] = a.q[rh * D + d];
    __syncthreads();
    float m = -INFINITY, l = 0.0f, acc[CH];
#pragma unroll
    for (int i = 0; i < CH; i++) acc[i] = 0.0f;
    for (size_t t = 0; fs_pg_tile_begin(warp, t) < n; t++)
        pg_tile<ES>(a, qs, blocks, h, n, fs_pg_tile_begin(warp, t), &m, &l, acc);
    /* the subgroups share the warp's max: their sums add, in subgroup order */
    for (unsigned g = 1; g < R; g++)
#pragma unroll
        for (int i = 0; i < CH; i++) {
            float o = __shfl_sync(PG_FULL, acc[i], (int)((lane % G + g * G) & 31));
            if (lane < G) acc[i] += o;
        }
    if (lane < G)
#pragma unroll
        for (int i = 0; i < CH; i++) wacc[warp][lane * CH + i] = acc[i];
    if (lane == 0) wm[warp] = m, wl[warp] = l;
    __syncthreads();
    for (size_t d = threadIdx.x; d < D; d += blockDim.x) { /* the warps' partials, in warp order */
        float M = wm[0], L = wl[0], o = wacc[0][d];
        for (unsigned w = 1; w < FS_PG_WARPS; w++) {
            float x, y;
            fs_pg_merge(&M, &L, wm[w], wl[w], &x, &y);
            o = o * x + wacc[w][d] * y;
        }
        a.out[rh * D + d] = fs_pg_out(o, L);
    }
}

int fs_paged_cuda_store(void *stream, const fs_paged_cuda_args *a) {
    cudaStream_t s = (cudaStream_t)stream;
    size_t n = a->N * a->H * 2 * a->D;
    if (!n) return 0;
    if (a->es == 2) pg_store<2><<<pg_grid(n), 256, 0, s>>>(*a);
    else pg_store<4><<<pg_grid(n), 256, 0, s>>>(*a);
    return (int)cudaGetLastError();
}

int fs_paged_cuda_attend(void *stream, const fs_paged_cuda_args *a) {
    cudaStream_t s = (cudaStream_t)stream;
    size_t blocks = a->N * a->H;
    if (!blocks) return 0;
    if (blocks > 0x7fffffffu || !fs_pg_fits(a->D, a->es)) return (int)cudaErrorInvalidValue;
    if (a->es == 2) pg_attend<2><<<(unsigned)blocks, PG_THREADS, 0, s>>>(*a);
    else pg_attend<4><<<(unsigned)blocks, PG_THREADS, 0, s>>>(*a);
    return (int)cudaGetLastError();
}

/* ---- page-locked staging for the step's tables ---- */

int fs_att_cuda_host_alloc(void **p, size_t bytes) {
    *p = NULL;
    cudaError_t e = cudaMallocHost(p, bytes ? bytes : 1);
    if (e) cudaGetLastError(), *p = NULL;
    return (int)e;
}

void fs_att_cuda_host_free(void *p) {
    if (p) cudaFreeHost(p);
}

int fs_att_cuda_event_create(void **ev) {
    cudaEvent_t e = NULL;
    cudaError_t r = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
    *ev = r ? NULL : (void *)e;
    return (int)r;
}

void fs_att_cuda_event_destroy(void *ev) {
    if (ev) cudaEventDestroy((cudaEvent_t)ev);
}

int fs_att_cuda_event_record(void *stream, void *ev) {
    return (int)cudaEventRecord((cudaEvent_t)ev, (cudaStream_t)stream);
}

int fs_att_cuda_event_wait(void *ev) { return (int)cudaEventSynchronize((cudaEvent_t)ev); }
