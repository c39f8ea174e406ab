/* flash.cuh — the attention plugins' tiled attention engine on CUDA
 * (FlashAttention-2's algorithm, SIMT f32 arithmetic on F32 or BF16 data).
 *
 * Three kernels over a "policy" P that says which rows a problem has, which
 * keys a query tile visits, where each row lives and how a score is made:
 *
 *   fa_forward:  block = (query tile of FS_FA_BR rows, problem). Each warp
 *                owns FS_FA_RPW rows; per key tile of FS_FA_BC keys, lane j
 *                makes the score of key j, the warp updates the row's
 *                running max and sum (flash_math.h), and lane d updates the
 *                output's coordinates d, d + 32, ... Writes O and the
 *                row's log-sum-exp.
 *   fa_backward_dq: the same tiles; P = e^(s - lse), dP = dO . V,
 *                dS = P (dP - delta), dQ += scale dS K.
 *   fa_backward_dkdv: block = (key tile of FS_FA_BC keys, problem); each
 *                warp owns FS_FA_KPW keys, lane i is a query of the current
 *                tile of FS_FA_BQ; dV += P^T dO, dK += scale dS^T Q.
 *
 * No T x T buffer: shared memory holds one tile of each operand, the saved
 * state is one log-sum-exp per row. Policies (device structs, copied to
 * the kernel by value):
 *
 *   void begin(unsigned problem)         per-problem bases (y0 + blockIdx.y)
 *   size_t n_queries(), n_keys()
 *   int n_segments()                     key index spaces forward/dQ visit (1 or 2)
 *   void key_range(seg, i0, i1, &j0, &j1)   keys of segment seg a query tile needs
 *   void query_range(j0, j1, &i0, &i1)  queries that may see keys [j0, j1) (segment 0)
 *   bool active(i)                       false: the row is not this pass's (zero out)
 *   const void *q(i), *k(seg, j), *v(seg, j); const void *dout(i)
 *   void *out(i), *dq(i), *dk(j), *dv(j); float *lse(i); float delta(i)
 *   float score(seg, i, j, raw, bool *constant)   raw = q . k; -INFINITY when masked;
 *                                        *constant: no gradient flows through it
 *   float scale; size_t D; bool accumulate_dq, accumulate_dkdv
 *
 * Launch helpers at the end pick the head-width bound DMAX (64 or 128) and
 * the dynamic shared memory. */
#ifndef FS_FLASH_CUH
#define FS_FLASH_CUH

#include <cuda_runtime.h>

#include "fastserve/bf16.h"
#include "flash_math.h"

#define FS_FA_THREADS 128 /* 4 warps */

__device__ __forceinline__ float fa_warp_sum(float v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    return __shfl_sync(0xffffffffu, v, 0);
}

__device__ __forceinline__ float fa_warp_max(float v) {
    for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return __shfl_sync(0xffffffffu, v, 0);
}

/* rows x D of a policy's rows into shared memory (stride ld), zeros past n */
template <int DT, class RowFn>
__device__ __forceinline__ void fa_load_rows(float *dst, size_t ld, size_t rows, size_t n, size_t D, RowFn row) {
    for (size_t idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
        size_t r = idx / D, c = idx % D;
        const void *src = r < n ? row(r) : NULL;
        dst[r * ld + c] = src ? fs_load(src, c, DT) : 0.0f;
    }
}

/* ---- forward ---- */

template <class P, int DT, int DMAX>
__global__ void __launch_bounds__(FS_FA_THREADS) fa_forward(P p, unsigned y0) {
    extern __shared__ float smem[];
    const size_t BR = FS_FA_BR, BC = FS_FA_BC, KL = DMAX + 1;
    float *Qs = smem, *Ks = Qs + BR * DMAX, *Vs = Ks + BC * KL, *Ps = Vs + BC * DMAX;
    p.begin(y0 + blockIdx.y);
    size_t nq = p.n_queries(), i0 = (size_t)blockIdx.x * BR, D = p.D;
    if (i0 >= nq) return;
    size_t i1 = i0 + BR < nq ? i0 + BR : nq;
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    fa_load_rows<DT>(Qs, DMAX, BR, i1 - i0, D, [&](size_t r) { return p.active(i0 + r) ? p.q(i0 + r) : NULL; });
    float m[FS_FA_RPW], l[FS_FA_RPW], acc[FS_FA_RPW][DMAX / 32];
#pragma unroll
    for (int rr = 0; rr < FS_FA_RPW; rr++) {
        m[rr] = -INFINITY, l[rr] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < DMAX / 32; cc++) acc[rr][cc] = 0.0f;
    }
    for (int seg = 0; seg < p.n_segments(); seg++) {
        size_t j0, j1;
        p.key_range(seg, i0, i1, &j0, &j1);
        for (size_t jt = j0; jt < j1; jt += BC) {
            size_t n = j1 - jt < BC ? j1 - jt : BC;
            __syncthreads(); /* the previous tile is done with */
            fa_load_rows<DT>(Ks, KL, BC, n, D, [&](size_t r) { return p.k(seg, jt + r); });
            fa_load_rows<DT>(Vs, DMAX, BC, n, D, [&](size_t r) { return p.v(seg, jt + r); });
            __syncthreads();
#pragma unroll
            for (int rr = 0; rr < FS_FA_RPW; rr++) {
                size_t r = warp * FS_FA_RPW + rr, i = i0 + r;
                if (i >= i1 || !p.active(i)) continue; /* the same for the whole warp */
                float s = -INFINITY;
                if (lane < n) {
                    float raw = 0.0f;
                    for (size_t c = 0; c < D; c++) raw += Qs[r * DMAX + c] * Ks[lane * KL + c];
                    bool cst;
                    s = p.score(seg, i, jt + lane, raw, &cst);
                }
                float mnew = fmaxf(m[rr], fa_warp_max(s));
                if (mnew == -INFINITY) continue; /* nothing visible yet */
                float alpha = fs_fa_rescale(m[rr], mnew), pj = fs_fa_prob(s, mnew);
                l[rr] = l[rr] * alpha + fa_warp_sum(pj);
                Ps[r * BC + lane] = pj;
                __syncwarp();
#pragma unroll
                for (int cc = 0; cc < DMAX / 32; cc++) {
                    size_t d = lane + 32 * cc;
                    float a = acc[rr][cc] * alpha;
                    if (d < D)
                        for (size_t jj = 0; jj < n; jj++) a += Ps[r * BC + jj] * Vs[jj * DMAX + d];
                    acc[rr][cc] = a;
                }
                m[rr] = mnew;
                __syncwarp();
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < FS_FA_RPW; rr++) {
        size_t i = i0 + warp * FS_FA_RPW + rr;
        if (i >= i1) continue;
        int live = p.active(i) && l[rr] > 0.0f;
        void *o = p.out(i);
#pragma unroll
        for (int cc = 0; cc < DMAX / 32; cc++) {
            size_t d = lane + 32 * cc;
            if (d < D) fs_store(o, d, DT, live ? acc[rr][cc] / l[rr] : 0.0f);
        }
        /* an inactive row (another pass's) 0; an active one that saw nothing -inf: weight 0 when merged */
        if (lane == 0) *p.lse(i) = !p.active(i) ? 0.0f : l[rr] > 0.0f ? fs_fa_lse(m[rr], l[rr]) : -INFINITY;
    }
}

/* ---- backward ---- */

template <class P, int DT, int DMAX>
__global__ void __launch_bounds__(FS_FA_THREADS) fa_backward_dq(P p, unsigned y0) {
    extern __shared__ float smem[];
    const size_t BR = FS_FA_BR, BC = FS_FA_BC, KL = DMAX + 1;
    float *Qs = smem, *dOs = Qs + BR * DMAX, *Ks = dOs + BR * DMAX, *Vs = Ks + BC * KL, *DSs = Vs + BC * KL;
    p.begin(y0 + blockIdx.y);
    size_t nq = p.n_queries(), i0 = (size_t)blockIdx.x * BR, D = p.D;
    if (i0 >= nq) return;
    size_t i1 = i0 + BR < nq ? i0 + BR : nq;
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    fa_load_rows<DT>(Qs, DMAX, BR, i1 - i0, D, [&](size_t r) { return p.active(i0 + r) ? p.q(i0 + r) : NULL; });
    fa_load_rows<DT>(dOs, DMAX, BR, i1 - i0, D, [&](size_t r) { return p.active(i0 + r) ? p.dout(i0 + r) : NULL; });
    float lse[FS_FA_RPW], delta[FS_FA_RPW], acc[FS_FA_RPW][DMAX / 32];
#pragma unroll
    for (int rr = 0; rr < FS_FA_RPW; rr++) {
        size_t i = i0 + warp * FS_FA_RPW + rr;
        int live = i < i1 && p.active(i);
        lse[rr] = live ? *p.lse(i) : 0.0f;
        delta[rr] = live ? p.delta(i) : 0.0f;
#pragma unroll
        for (int cc = 0; cc < DMAX / 32; cc++) acc[rr][cc] = 0.0f;
    }
    for (int seg = 0; seg < p.n_segments(); seg++) {
        size_t j0, j1;
        p.key_range(seg, i0, i1, &j0, &j1);
        for (size_t jt = j0; jt < j1; jt += BC) {
            size_t n = j1 - jt < BC ? j1 - jt : BC;
            __syncthreads();
            fa_load_rows<DT>(Ks, KL, BC, n, D, [&](size_t r) { return p.k(seg, jt + r); });
            fa_load_rows<DT>(Vs, KL, BC, n, D, [&](size_t r) { return p.v(seg, jt + r); });
            __syncthreads();
#pragma unroll
            for (int rr = 0; rr < FS_FA_RPW; rr++) {
                size_t r = warp * FS_FA_RPW + rr, i = i0 + r;
                if (i >= i1 || !p.active(i)) continue;
                float ds = 0.0f;
                if (lane < n) {
                    float raw = 0.0f, dp = 0.0f;
                    for (size_t c = 0; c < D; c++) {
                        raw += Qs[r * DMAX + c] * Ks[lane * KL + c];
                        dp += dOs[r * DMAX + c] * Vs[lane * KL + c];
                    }
                    bool cst = false;
                    float s = p.score(seg, i, jt + lane, raw, &cst);
                    ds = cst ? 0.0f : fs_fa_dscore(fs_fa_prob(s, lse[rr]), dp, delta[rr]);
                }
                DSs[r * BC + lane] = ds;
                __syncwarp();
#pragma unroll
                for (int cc = 0; cc < DMAX / 32; cc++) {
                    size_t d = lane + 32 * cc;
                    if (d < D)
                        for (size_t jj = 0; jj < n; jj++) acc[rr][cc] += DSs[r * BC + jj] * Ks[jj * KL + d];
                }
                __syncwarp();
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < FS_FA_RPW; rr++) {
        size_t i = i0 + warp * FS_FA_RPW + rr;
        if (i >= i1) continue;
        void *dq = p.dq(i);
        if (!dq) continue;
#pragma unroll
        for (int cc = 0; cc < DMAX / 32; cc++) {
            size_t d = lane + 32 * cc;
            if (d >= D) continue;
            float g = p.scale * acc[rr][cc];
            fs_store(dq, d, DT, p.accumulate_dq ? fs_load(dq, d, DT) + g : g);
        }
    }
}

template <class P, int DT, int DMAX>
__global__ void __launch_bounds__(FS_FA_THREADS) fa_backward_dkdv(P p, unsigned y0) {
    extern __shared__ float smem[];
    const size_t BC = FS_FA_BC, BQ = FS_FA_BQ, L = DMAX + 1;
    float *Ks = smem, *Vs = Ks + BC * L, *Qs = Vs + BC * L, *dOs = Qs + BQ * L, *Ps = dOs + BQ * L;
    float *DSs = Ps + BC * BQ, *lse_s = DSs + BC * BQ, *delta_s = lse_s + BQ, *live_s = delta_s + BQ;
    p.begin(y0 + blockIdx.y);
    size_t nk = p.n_keys(), j0 = (size_t)blockIdx.x * BC, D = p.D;
    if (j0 >= nk) return;
    size_t j1 = j0 + BC < nk ? j0 + BC : nk;
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    fa_load_rows<DT>(Ks, L, BC, j1 - j0, D, [&](size_t r) { return p.k(0, j0 + r); });
    fa_load_rows<DT>(Vs, L, BC, j1 - j0, D, [&](size_t r) { return p.v(0, j0 + r); });
    float dk[FS_FA_KPW][DMAX / 32], dv[FS_FA_KPW][DMAX / 32];
#pragma unroll
    for (int kk = 0; kk < FS_FA_KPW; kk++)
#pragma unroll
        for (int cc = 0; cc < DMAX / 32; cc++) dk[kk][cc] = dv[kk][cc] = 0.0f;
    size_t qa, qb;
    p.query_range(j0, j1, &qa, &qb);
    for (size_t it = qa; it < qb; it += BQ) {
        size_t n = qb - it < BQ ? qb - it : BQ;
        __syncthreads();
        fa_load_rows<DT>(Qs, L, BQ, n, D, [&](size_t r) { return p.active(it + r) ? p.q(it + r) : NULL; });
        fa_load_rows<DT>(dOs, L, BQ, n, D, [&](size_t r) { return p.active(it + r) ? p.dout(it + r) : NULL; });
        for (size_t r = threadIdx.x; r < BQ; r += blockDim.x) {
            int live = r < n && p.active(it + r);
            live_s[r] = live ? 1.0f : 0.0f;
            lse_s[r] = live ? *p.lse(it + r) : 0.0f;
            delta_s[r] = live ? p.delta(it + r) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FS_FA_KPW; kk++) {
            size_t key = warp * FS_FA_KPW + kk, j = j0 + key;
            if (j >= j1) continue;
            float pv = 0.0f, ds = 0.0f;
            if (lane < n && live_s[lane] != 0.0f) {
                float raw = 0.0f, dp = 0.0f;
                for (size_t c = 0; c < D; c++) {
                    raw += Qs[lane * L + c] * Ks[key * L + c];
                    dp += dOs[lane * L + c] * Vs[key * L + c];
                }
                bool cst = false;
                float s = p.score(0, it + lane, j, raw, &cst);
                pv = fs_fa_prob(s, lse_s[lane]);
                ds = cst ? 0.0f : fs_fa_dscore(pv, dp, delta_s[lane]);
            }
            Ps[key * BQ + lane] = pv;
            DSs[key * BQ + lane] = ds;
            __syncwarp();
#pragma unroll
            for (int cc = 0; cc < DMAX / 32; cc++) {
                size_t d = lane + 32 * cc;
                if (d >= D) continue;
                for (size_t ii = 0; ii < n; ii++) {
                    dv[kk][cc] += Ps[key * BQ + ii] * dOs[ii * L + d];
                    dk[kk][cc] += DSs[key * BQ + ii] * Qs[ii * L + d];
                }
            }
            __syncwarp();
        }
    }
#pragma unroll
    for (int kk = 0; kk < FS_FA_KPW; kk++) {
        size_t j = j0 + warp * FS_FA_KPW + kk;
        if (j >= j1) continue;
        void *dkr = p.dk(j), *dvr = p.dv(j);
#pragma unroll
        for (int cc = 0; cc < DMAX / 32; cc++) {
            size_t d = lane + 32 * cc;
            if (d >= D) continue;
            float gk = p.scale * dk[kk][cc], gv = dv[kk][cc];
            if (dkr) fs_store(dkr, d, DT, p.accumulate_dkdv ? fs_load(dkr, d, DT) + gk : gk);
            if (dvr) fs_store(dvr, d, DT, p.accumulate_dkdv ? fs_load(dvr, d, DT) + gv : gv);
        }
    }
}

/* ---- launches ---- */

template <int DMAX>
static size_t fa_smem_forward() {
    return (FS_FA_BR * DMAX + FS_FA_BC * (DMAX + 1) + FS_FA_BC * DMAX + FS_FA_BR * FS_FA_BC) * sizeof(float);
}
template <int DMAX>
static size_t fa_smem_dq() {
    return (2 * FS_FA_BR * DMAX + 2 * FS_FA_BC * (DMAX + 1) + FS_FA_BR * FS_FA_BC) * sizeof(float);
}
template <int DMAX>
static size_t fa_smem_dkdv() {
    return (2 * FS_FA_BC * (DMAX + 1) + 2 * FS_FA_BQ * (DMAX + 1) + 2 * FS_FA_BC * FS_FA_BQ + 3 * FS_FA_BQ) *
           sizeof(float);
}

/* Launches kernel K<P, DT, DMAX> with `smem` bytes of dynamic shared memory
 * (above 48 KiB the kernel must opt in first). grid.y counts the problems
 * (batch x heads, x hash rounds or dilations): past gridDim.y's limit of
 * 65535 (lsh at B 512, H 16, 8 rounds) they go in several launches, each
 * told its first problem. */
template <typename Kernel, class P>
static cudaError_t fa_launch(Kernel k, size_t smem, dim3 grid, cudaStream_t s, const P &p) {
    if (grid.x == 0 || grid.y == 0) return cudaSuccess;
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e) return e;
    }
    for (unsigned y0 = 0; y0 < grid.y; y0 += 65535u) {
        unsigned ny = grid.y - y0 < 65535u ? grid.y - y0 : 65535u;
        k<<<dim3(grid.x, ny), FS_FA_THREADS, smem, s>>>(p, y0);
        cudaError_t e = cudaGetLastError();
        if (e) return e;
    }
    return cudaSuccess;
}

/* The three passes for a policy, by dtype and head width (D <= 128). */
enum { FA_FORWARD, FA_DQ, FA_DKDV };

template <class P, int DT, int DMAX>
static cudaError_t fa_run_dmax(int pass, const P &p, dim3 grid, cudaStream_t s) {
    switch (pass) {
    case FA_FORWARD: return fa_launch(fa_forward<P, DT, DMAX>, fa_smem_forward<DMAX>(), grid, s, p);
    case FA_DQ: return fa_launch(fa_backward_dq<P, DT, DMAX>, fa_smem_dq<DMAX>(), grid, s, p);
    default: return fa_launch(fa_backward_dkdv<P, DT, DMAX>, fa_smem_dkdv<DMAX>(), grid, s, p);
    }
}

template <class P, int DT>
static cudaError_t fa_run_dtype(int pass, const P &p, dim3 grid, cudaStream_t s) {
    if (p.D > 128) return cudaErrorInvalidValue;
    return p.D <= 64 ? fa_run_dmax<P, DT, 64>(pass, p, grid, s) : fa_run_dmax<P, DT, 128>(pass, p, grid, s);
}

template <class P>
static cudaError_t fa_run(int pass, const P &p, int dtype, dim3 grid, cudaStream_t s) {
    return dtype == FS_DTYPE_BF16 ? fa_run_dtype<P, FS_DTYPE_BF16>(pass, p, grid, s)
                                  : fa_run_dtype<P, FS_DTYPE_F32>(pass, p, grid, s);
}

/* f32 data only: half the instantiations (and compile time) of fa_run for
 * the plugins whose device path takes f32 alone (longformer, lsh). */
template <class P>
static cudaError_t fa_run_f32(int pass, const P &p, dim3 grid, cudaStream_t s) {
    return fa_run_dtype<P, FS_DTYPE_F32>(pass, p, grid, s);
}

#endif
