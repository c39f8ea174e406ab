/* dense_mma.cu — dense attention on tensor cores: bf16 q, k, v with heads
 * of 64 or 128, FlashAttention-2's algorithm with its matrix products on
 * WMMA (16 x 16 x 16 bf16 tiles, f32 accumulation, sm_80 and later).
 *
 * flash.cuh's SIMT engine serves every policy and width; on GPT-2's shape
 * it spends its time issuing FMAs (ncu: ~70% of the SMs' issue slots, 2-5
 * TFLOP/s). Here the four products of a tile (S = Q K^T, O += P V,
 * dP = dO V^T, dQ/dK/dV += dS K, dS^T Q, P^T dO) run on tensor cores, and
 * the element-wise steps (mask, online softmax, dS = P (dP - delta)) go
 * through shared memory with flash_math.h's functions, as the SIMT kernels
 * do. Tiles: 64 query rows x 64 keys, four warps of 16 rows (forward, dQ)
 * or 16 keys (dK, dV). P and dS are rounded to bf16 before their products,
 * as FlashAttention's kernels do (|error| <= 2^-9 of each term).
 *
 * Accumulators: O in shared memory (each key tile rescales it row by row,
 * which WMMA's opaque fragment layout does not allow in registers); dQ, dK
 * and dV in fragments across the loop (nothing rescales them). */
#include <cuda_bf16.h>
#include <mma.h>

#include "attention_cuda.h"
#include "fastserve/tensor.h"
#include "flash_math.h"

using namespace nvcuda;

#define MMA_BM 64      /* query rows of a forward / dQ block; keys of a dK/dV block */
#define MMA_BN 64      /* keys (forward, dQ) or queries (dK/dV) of a tile */
#define MMA_THREADS 128 /* 4 warps, 16 rows each */

typedef __nv_bfloat16 bf16;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_b;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_bt; /* a row-major tile, transposed */
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c;

/* Shared-memory strides (elements): rows padded by 16 bytes against bank
 * conflicts, every 16-row block 32-byte aligned as WMMA requires. */
template <int D> struct mma_dims {
    static constexpr int LDH = D + 8;                           /* bf16 tiles (64, D) */
    static constexpr int LDP = MMA_BN + 8;                      /* bf16 P / dS (16, 64) per warp */
    static constexpr int LDF = (D > MMA_BN ? D : MMA_BN) + 4;   /* f32 staging (16, 64 or D) per warp */
    static constexpr size_t TILE = (size_t)MMA_BM * LDH;        /* bf16 elements of a tile */
    static constexpr size_t STAGE = (size_t)4 * 16 * LDF;       /* f32 of one staging area, all warps */
    static constexpr size_t PW = (size_t)4 * 16 * LDP;          /* bf16 of one P area, all warps */
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define MMA_ARCH_OK 1
#else
#define MMA_ARCH_OK 0
#endif

/* rows [row0, row0 + 64) of a (T, D) bf16 matrix into a tile, 16-byte
 * vectors, zeros past T */
template <int D>
__device__ __forceinline__ void mma_load_tile(bf16 *dst, const bf16 *src, size_t row0, size_t T) {
    constexpr int VPR = D / 8, LDH = mma_dims<D>::LDH;
    for (int idx = (int)threadIdx.x; idx < MMA_BM * VPR; idx += MMA_THREADS) {
        int r = idx / VPR, c = idx % VPR;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (row0 + r < T) val = reinterpret_cast<const uint4 *>(src + (row0 + r) * D)[c];
        *reinterpret_cast<uint4 *>(dst + r * LDH + c * 8) = val;
    }
}

/* acc (16, 64) = A (16, D) B^T, A's rows and B's rows (64, D) in tiles */
template <int D>
__device__ __forceinline__ void mma_abt(float *acc, int ldacc, const bf16 *a, const bf16 *b) {
    constexpr int LDH = mma_dims<D>::LDH;
#pragma unroll
    for (int nb = 0; nb < MMA_BN / 16; nb++) {
        frag_c c;
        wmma::fill_fragment(c, 0.0f);
#pragma unroll
        for (int kb = 0; kb < D / 16; kb++) {
            frag_a fa;
            frag_bt fb;
            wmma::load_matrix_sync(fa, a + kb * 16, LDH);
            wmma::load_matrix_sync(fb, b + nb * 16 * LDH + kb * 16, LDH);
            wmma::mma_sync(c, fa, fb, c);
        }
        wmma::store_matrix_sync(acc + nb * 16, c, ldacc, wmma::mem_row_major);
    }
}

/* acc[db] (16, 16 each of D) += P (16, 64) B (64, D), B a tile */
template <int D>
__device__ __forceinline__ void mma_pb(frag_c *acc, const bf16 *p, const bf16 *b) {
    constexpr int LDH = mma_dims<D>::LDH, LDP = mma_dims<D>::LDP;
#pragma unroll
    for (int kb = 0; kb < MMA_BN / 16; kb++) {
        frag_a fa;
        wmma::load_matrix_sync(fa, p + kb * 16, LDP);
#pragma unroll
        for (int db = 0; db < D / 16; db++) {
            frag_b fb;
            wmma::load_matrix_sync(fb, b + kb * 16 * LDH + db * 16, LDH);
            wmma::mma_sync(acc[db], fa, fb, acc[db]);
        }
    }
}

/* A warp's 16 rows of D accumulated in fragments, times `scale`, to rows
 * [row0, row0 + 16) of a (T, D) bf16 matrix, through `stage` (16, LDF). */
template <int D>
__device__ __forceinline__ void mma_store_rows(bf16 *dst, size_t row0, size_t T, frag_c *acc, float *stage,
                                               float scale) {
    constexpr int LDF = mma_dims<D>::LDF;
    unsigned lane = threadIdx.x % 32;
#pragma unroll
    for (int db = 0; db < D / 16; db++) wmma::store_matrix_sync(stage + db * 16, acc[db], LDF, wmma::mem_row_major);
    __syncwarp();
    for (int e = (int)lane; e < 16 * D; e += 32) {
        int r = e / D, d = e % D;
        if (row0 + r < T) dst[(row0 + r) * D + d] = __float2bfloat16_rn(scale * stage[r * LDF + d]);
    }
    __syncwarp();
}

/* ---- forward ---- */

/* One row's online-softmax step over a tile's 64 scores (a warp; lane c
 * holds columns c and c + 32): P row in bf16, the O row rescaled. */
template <int D>
__device__ __forceinline__ void mma_softmax_row(float *m, float *l, const float *s_row, bf16 *p_row, float *o_row,
                                                size_t i, size_t jt, size_t T, int causal, float scale) {
    unsigned lane = threadIdx.x % 32;
    float s[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        size_t j = jt + lane + 32 * h;
        s[h] = i < T && j < T && fs_dense_visible(i, j, causal) ? s_row[lane + 32 * h] * scale : -INFINITY;
    }
    float mx = fmaxf(s[0], s[1]);
    for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float mnew = fmaxf(*m, mx), alpha = 1.0f, sum = 0.0f;
    if (mnew != -INFINITY) alpha = fs_fa_rescale(*m, mnew);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float p = mnew == -INFINITY ? 0.0f : fs_fa_prob(s[h], mnew);
        sum += p;
        p_row[lane + 32 * h] = __float2bfloat16_rn(p);
    }
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    *l = *l * alpha + sum;
    *m = mnew;
    for (int d = (int)lane; d < D; d += 32) o_row[d] *= alpha;
}

template <int D>
__global__ void __launch_bounds__(MMA_THREADS) dense_mma_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k,
                                                                 const bf16 *v, size_t T, int causal, float scale,
                                                                 unsigned y0) {
#if MMA_ARCH_OK
    typedef mma_dims<D> M;
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(mma_smem), *Ks = Qs + M::TILE, *Vs = Ks + M::TILE, *Ps = Vs + M::TILE;
    float *Ss = reinterpret_cast<float *>(Ps + M::PW), *Os = Ss + M::STAGE;
    size_t base = (size_t)(y0 + blockIdx.y) * T, i0 = (size_t)blockIdx.x * MMA_BM;
    if (i0 >= T) return;
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    size_t r0 = i0 + warp * 16; /* this warp's first query */
    float *S = Ss + warp * 16 * M::LDF, *O = Os + warp * 16 * M::LDF;
    bf16 *P = Ps + warp * 16 * M::LDP;
    mma_load_tile<D>(Qs, q + base * D, i0, T);
    for (int e = (int)lane; e < 16 * M::LDF; e += 32) O[e] = 0.0f;
    float m[16], l[16];
#pragma unroll
    for (int r = 0; r < 16; r++) m[r] = -INFINITY, l[r] = 0.0f;
    size_t jend = fs_dense_key_end(i0 + MMA_BM < T ? i0 + MMA_BM : T, T, causal);
    for (size_t jt = 0; jt < jend; jt += MMA_BN) {
        __syncthreads(); /* the previous tile is done with */
        mma_load_tile<D>(Ks, k + base * D, jt, T);
        mma_load_tile<D>(Vs, v + base * D, jt, T);
        __syncthreads();
        if (r0 >= T || (causal && jt > r0 + 15)) continue; /* nothing of this tile is visible to these rows */
        mma_abt<D>(S, M::LDF, Qs + warp * 16 * M::LDH, Ks);
        __syncwarp();
#pragma unroll
        for (int r = 0; r < 16; r++)
            mma_softmax_row<D>(&m[r], &l[r], S + r * M::LDF, P + r * M::LDP, O + r * M::LDF, r0 + r, jt, T, causal,
                               scale);
        __syncwarp();
        frag_c acc[D / 16];
#pragma unroll
        for (int db = 0; db < D / 16; db++) wmma::load_matrix_sync(acc[db], O + db * 16, M::LDF, wmma::mem_row_major);
        mma_pb<D>(acc, P, Vs);
#pragma unroll
        for (int db = 0; db < D / 16; db++) wmma::store_matrix_sync(O + db * 16, acc[db], M::LDF, wmma::mem_row_major);
        __syncwarp();
    }
    for (int e = (int)lane; e < 16 * D; e += 32) {
        int r = e / D, d = e % D;
        if (r0 + r < T) out[(base + r0 + r) * D + d] = __float2bfloat16_rn(l[r] > 0.0f ? O[r * M::LDF + d] / l[r] : 0.0f);
    }
    if (lane < 16 && r0 + lane < T) {
        float mr = 0.0f, lr = 0.0f; /* the lane's row, out of the (uniform) arrays */
#pragma unroll
        for (int r = 0; r < 16; r++)
            if (r == (int)lane) mr = m[r], lr = l[r];
        lse[base + r0 + lane] = lr > 0.0f ? fs_fa_lse(mr, lr) : -INFINITY;
    }
#endif
}

/* ---- backward ---- */

/* The log-sum-exp and delta of queries [row0, row0 + 64), zeros past T. */
__device__ __forceinline__ void mma_load_stats(float *lse_s, float *delta_s, const float *lse, const float *delta,
                                               size_t row0, size_t T) {
    for (int r = (int)threadIdx.x; r < MMA_BM; r += MMA_THREADS) {
        lse_s[r] = row0 + r < T ? lse[row0 + r] : 0.0f;
        delta_s[r] = row0 + r < T ? delta[row0 + r] : 0.0f;
    }
}

/* dS of a warp's (16, 64) block from S and dP (f32 staging, ld LDF) into
 * bf16 (ld LDP), and (for dK/dV) P too: element (r, c) is query qi(r, c)
 * against key kj(r, c). */
template <int D, bool KEY_ROWS>
__device__ __forceinline__ void mma_dscores(bf16 *ds, bf16 *p_out, const float *S, const float *DP,
                                            const float *lse_s, const float *delta_s, size_t row0, size_t col0,
                                            size_t T, int causal, float scale) {
    constexpr int LDF = mma_dims<D>::LDF, LDP = mma_dims<D>::LDP;
    unsigned lane = threadIdx.x % 32;
#pragma unroll 4
    for (int e = (int)lane; e < 16 * MMA_BN; e += 32) {
        int r = e / MMA_BN, c = e % MMA_BN;
        size_t i = KEY_ROWS ? col0 + c : row0 + r, j = KEY_ROWS ? row0 + r : col0 + c;
        int at = KEY_ROWS ? c : r; /* the query's index in lse_s, delta_s */
        float p = 0.0f, g = 0.0f;
        if (i < T && j < T && fs_dense_visible(i, j, causal)) {
            p = fs_fa_prob(S[r * LDF + c] * scale, lse_s[at]);
            g = fs_fa_dscore(p, DP[r * LDF + c], delta_s[at]);
        }
        ds[r * LDP + c] = __float2bfloat16_rn(g);
        if (p_out) p_out[r * LDP + c] = __float2bfloat16_rn(p);
    }
}

template <int D>
__global__ void __launch_bounds__(MMA_THREADS) dense_mma_dq(bf16 *dq, const bf16 *dout, const bf16 *q, const bf16 *k,
                                                            const bf16 *v, const float *lse, const float *delta,
                                                            size_t T, int causal, float scale, unsigned y0) {
#if MMA_ARCH_OK
    typedef mma_dims<D> M;
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(mma_smem), *dOs = Qs + M::TILE, *Ks = dOs + M::TILE, *Vs = Ks + M::TILE;
    bf16 *dSs = Vs + M::TILE;
    float *Ss = reinterpret_cast<float *>(dSs + M::PW), *DPs = Ss + M::STAGE, *lse_s = DPs + M::STAGE;
    float *delta_s = lse_s + MMA_BM;
    size_t base = (size_t)(y0 + blockIdx.y) * T, i0 = (size_t)blockIdx.x * MMA_BM;
    if (i0 >= T) return;
    unsigned warp = threadIdx.x / 32;
    size_t r0 = i0 + warp * 16;
    float *S = Ss + warp * 16 * M::LDF, *DP = DPs + warp * 16 * M::LDF;
    bf16 *dS = dSs + warp * 16 * M::LDP;
    mma_load_tile<D>(Qs, q + base * D, i0, T);
    mma_load_tile<D>(dOs, dout + base * D, i0, T);
    mma_load_stats(lse_s, delta_s, lse + base, delta + base, i0, T);
    frag_c acc[D / 16];
#pragma unroll
    for (int db = 0; db < D / 16; db++) wmma::fill_fragment(acc[db], 0.0f);
    size_t jend = fs_dense_key_end(i0 + MMA_BM < T ? i0 + MMA_BM : T, T, causal);
    for (size_t jt = 0; jt < jend; jt += MMA_BN) {
        __syncthreads();
        mma_load_tile<D>(Ks, k + base * D, jt, T);
        mma_load_tile<D>(Vs, v + base * D, jt, T);
        __syncthreads();
        if (r0 >= T || (causal && jt > r0 + 15)) continue;
        mma_abt<D>(S, M::LDF, Qs + warp * 16 * M::LDH, Ks);
        mma_abt<D>(DP, M::LDF, dOs + warp * 16 * M::LDH, Vs);
        __syncwarp();
        mma_dscores<D, false>(dS, NULL, S, DP, lse_s + warp * 16, delta_s + warp * 16, r0, jt, T, causal, scale);
        __syncwarp();
        mma_pb<D>(acc, dS, Ks);
        __syncwarp();
    }
    if (r0 < T) mma_store_rows<D>(dq + base * D, r0, T, acc, S, scale);
#endif
}

template <int D>
__global__ void __launch_bounds__(MMA_THREADS) dense_mma_dkdv(bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q,
                                                              const bf16 *k, const bf16 *v, const float *lse,
                                                              const float *delta, size_t T, int causal, float scale,
                                                              unsigned y0) {
#if MMA_ARCH_OK
    typedef mma_dims<D> M;
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(mma_smem), *Vs = Ks + M::TILE, *Qs = Vs + M::TILE, *dOs = Qs + M::TILE;
    bf16 *Pts = dOs + M::TILE, *dSts = Pts + M::PW;
    float *Sts = reinterpret_cast<float *>(dSts + M::PW), *DPts = Sts + M::STAGE, *lse_s = DPts + M::STAGE;
    float *delta_s = lse_s + MMA_BN;
    size_t base = (size_t)(y0 + blockIdx.y) * T, j0 = (size_t)blockIdx.x * MMA_BM;
    if (j0 >= T) return;
    unsigned warp = threadIdx.x / 32;
    size_t k0 = j0 + warp * 16; /* this warp's first key */
    float *St = Sts + warp * 16 * M::LDF, *DPt = DPts + warp * 16 * M::LDF;
    bf16 *Pt = Pts + warp * 16 * M::LDP, *dSt = dSts + warp * 16 * M::LDP;
    mma_load_tile<D>(Ks, k + base * D, j0, T);
    mma_load_tile<D>(Vs, v + base * D, j0, T);
    frag_c dk_acc[D / 16], dv_acc[D / 16];
#pragma unroll
    for (int db = 0; db < D / 16; db++) wmma::fill_fragment(dk_acc[db], 0.0f), wmma::fill_fragment(dv_acc[db], 0.0f);
    for (size_t it = fs_dense_query_begin(j0, causal); it < T; it += MMA_BN) {
        __syncthreads();
        mma_load_tile<D>(Qs, q + base * D, it, T);
        mma_load_tile<D>(dOs, dout + base * D, it, T);
        mma_load_stats(lse_s, delta_s, lse + base, delta + base, it, T);
        __syncthreads();
        if (k0 >= T || (causal && it + MMA_BN - 1 < k0)) continue; /* no query of this tile sees these keys */
        mma_abt<D>(St, M::LDF, Ks + warp * 16 * M::LDH, Qs);
        mma_abt<D>(DPt, M::LDF, Vs + warp * 16 * M::LDH, dOs);
        __syncwarp();
        mma_dscores<D, true>(dSt, Pt, St, DPt, lse_s, delta_s, k0, it, T, causal, scale);
        __syncwarp();
        mma_pb<D>(dv_acc, Pt, dOs);
        mma_pb<D>(dk_acc, dSt, Qs);
        __syncwarp();
    }
    if (k0 < T) {
        mma_store_rows<D>(dv + base * D, k0, T, dv_acc, St, 1.0f);
        mma_store_rows<D>(dk + base * D, k0, T, dk_acc, St, scale);
    }
#endif
}

/* ---- launches ---- */

template <int D> static size_t mma_smem_forward() {
    typedef mma_dims<D> M;
    return (3 * M::TILE + M::PW) * sizeof(bf16) + 2 * M::STAGE * sizeof(float);
}
template <int D> static size_t mma_smem_backward() {
    typedef mma_dims<D> M;
    return (4 * M::TILE + 2 * M::PW) * sizeof(bf16) + (2 * M::STAGE + 2 * MMA_BM) * sizeof(float);
}

/* grid.y (the problems) in launches of at most 65535, as flash.cuh's */
template <typename Kernel, typename... Args>
static cudaError_t mma_launch(Kernel kern, size_t smem, size_t T, size_t BH, cudaStream_t s, Args... args) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    unsigned gx = (unsigned)((T + MMA_BM - 1) / MMA_BM);
    for (size_t y0 = 0; !e && y0 < BH; y0 += 65535u) {
        unsigned ny = BH - y0 < 65535u ? (unsigned)(BH - y0) : 65535u;
        kern<<<dim3(gx, ny), MMA_THREADS, smem, s>>>(args..., (unsigned)y0);
        e = cudaGetLastError();
    }
    return e;
}

template <int D>
static cudaError_t mma_forward(cudaStream_t s, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                               size_t BH, size_t T, int causal, float scale) {
    return mma_launch(dense_mma_forward<D>, mma_smem_forward<D>(), T, BH, s, out, lse, q, k, v, T, causal, scale);
}

template <int D>
static cudaError_t mma_backward(cudaStream_t s, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q,
                                const bf16 *k, const bf16 *v, const float *lse, const float *delta, size_t BH,
                                size_t T, int causal, float scale) {
    cudaError_t e = mma_launch(dense_mma_dq<D>, mma_smem_backward<D>(), T, BH, s, dq, dout, q, k, v, lse, delta, T,
                               causal, scale);
    if (!e)
        e = mma_launch(dense_mma_dkdv<D>, mma_smem_backward<D>(), T, BH, s, dk, dv, dout, q, k, v, lse, delta, T,
                       causal, scale);
    return e;
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

extern "C" int fs_dense_mma_fits(size_t D, int dtype, const void *const *ptrs, size_t n) {
    if (dtype != FS_DTYPE_BF16 || (D != 64 && D != 128)) return 0;
    for (size_t i = 0; i < n; i++)
        if (!aligned16(ptrs[i])) return 0;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) {
        cudaGetLastError();
        return 0;
    }
    return major >= 8;
}

extern "C" int fs_dense_mma_forward(void *stream, void *out, float *lse, const void *q, const void *k, const void *v,
                                    size_t BH, size_t T, size_t D, int causal, float scale) {
    cudaStream_t s = (cudaStream_t)stream;
    bf16 *o = (bf16 *)out;
    const bf16 *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v;
    return (int)(D == 64 ? mma_forward<64>(s, o, lse, qq, kk, vv, BH, T, causal, scale)
                         : mma_forward<128>(s, o, lse, qq, kk, vv, BH, T, causal, scale));
}

extern "C" int fs_dense_mma_backward(void *stream, void *dq, void *dk, void *dv, const void *dout, const void *q,
                                     const void *k, const void *v, const float *lse, const float *delta, size_t BH,
                                     size_t T, size_t D, int causal, float scale) {
    cudaStream_t s = (cudaStream_t)stream;
    bf16 *a = (bf16 *)dq, *b = (bf16 *)dk, *c = (bf16 *)dv;
    const bf16 *o = (const bf16 *)dout, *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v;
    return (int)(D == 64 ? mma_backward<64>(s, a, b, c, o, qq, kk, vv, lse, delta, BH, T, causal, scale)
                         : mma_backward<128>(s, a, b, c, o, qq, kk, vv, lse, delta, BH, T, causal, scale));
}
