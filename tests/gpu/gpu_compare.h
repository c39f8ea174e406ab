/* gpu_compare.h — what the op and attention tests of tests/gpu share: the
 * two backends they compare, buffers mirrored on both, bf16 on the host,
 * and the comparison with tolerances stated from the precision.
 *
 * The device under test ("dut") is the cuda backend; the reference is the
 * cpu backend (the runtime's own kernels, which tests/unit checks against
 * definitions). Every input is made on the host, copied to both with the
 * backend's copy(), every output read back after a synchronisation.
 *
 * FS_GPU_TEST_BACKEND=cpu puts the cpu backend in the device's place. Both
 * sides then run the same code, so f32 results must agree bit for bit, and
 * the bf16 and tf32 cases skip (the cpu backend has neither). That run
 * needs no GPU: it checks the harness itself (sizes, leading dimensions,
 * strides, copies) on any machine, before a metered GPU session does.
 *
 * bf16 inputs are rounded on the host first and the reference computes in
 * f32 on the rounded values, so input rounding is the same on both sides
 * and a tolerance only has to cover what the device rounds itself. */
#ifndef FS_GPU_COMPARE_H
#define FS_GPU_COMPARE_H

#include <stdint.h>
#include <string.h>

#include "fastserve/bf16.h"
#include "model/device_gpt.h"
#include "test_util.h"

/* Unit roundoffs (half an ulp, relative): f32 has a 24-bit significand,
 * tf32 (tensor cores) 11 bits, bf16 8 bits. */
#define GC_U_F32 0x1p-24
#define GC_U_TF32 0x1p-11
#define GC_U_BF16 0x1p-8

typedef struct gc_pair {
    fs_backend_handle dut, ref;
    const char *name; /* the dut's backend */
    int exact;        /* the dut is the cpu backend too: results must be equal */
    uint32_t flags;   /* the dut's FS_BACKEND_* */
    size_t skipped;   /* cases the dut cannot run (bf16, tf32 on the cpu backend) */
} gc_pair;

/* The two backends, static so their hosts stay where the plugins saw them. */
static gc_pair g_gc;

static inline const char *gc_dut_name(void) {
    const char *e = getenv("FS_GPU_TEST_BACKEND");
    return e && *e ? e : "cuda";
}

/* 1 when the dut backend is built and sees a device. Asks device_count
 * without creating an instance: the cpu backend's sgemm goes through the
 * host of the first instance it created (cpu.c), and a probe's host would
 * be gone by the time the tests run. */
static inline int gc_available(void) {
    fs_plugin_registry reg;
    memset(&reg, 0, sizeof reg);
    const fs_plugin *p = NULL;
    fs_error err = {0};
    int n = 0;
    if (fs_plugin_registry_get(&reg, FS_PLUGIN_BACKEND, gc_dut_name(), &p, &err) == FS_OK) {
        const fs_backend_vtable *vt = p->desc->vtable;
        if (vt->device_count(&n, &err)) n = 0;
    }
    fs_plugin_registry_release(&reg);
    return n > 0;
}

static inline void gc_check_rc(int rc, const fs_error *err, const char *what) {
    if (rc) {
        fprintf(stderr, "%s: status %d: %s\n", what, rc, err->message);
        fail();
    }
}

static inline int gc_setup(void **state) {
    (void)state;
    fs_error err = {0};
    g_gc.name = gc_dut_name();
    if (fs_backend_handle_open(&g_gc.dut, g_gc.name, 0, NULL, &err) || fs_backend_handle_open(&g_gc.ref, "cpu", 0, NULL, &err)) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    g_gc.exact = strcmp(g_gc.name, "cpu") == 0;
    g_gc.flags = g_gc.dut.vt->flags;
    fprintf(stderr, "comparing backend %s with cpu%s\n", g_gc.name, g_gc.exact ? " (must be equal)" : "");
    return 0;
}

static inline int gc_teardown(void **state) {
    (void)state;
    if (g_gc.skipped)
        fprintf(stderr, "%zu bf16/tf32 cases skipped: backend %s has neither\n", g_gc.skipped, g_gc.name);
    fs_backend_handle_close(&g_gc.ref);
    fs_backend_handle_close(&g_gc.dut);
    return 0;
}

/* Whether the dut runs a case of activation type `dtype` and GEMM compute
 * `compute` (FS_GEMM_COMPUTE_F32 when not a GEMM); counts the skips. */
static inline int gc_runs(int32_t dtype, int32_t compute) {
    int ok = (dtype != FS_DTYPE_BF16 || (g_gc.flags & FS_BACKEND_BF16)) &&
             (compute != FS_GEMM_COMPUTE_TF32 || (g_gc.flags & FS_BACKEND_TF32));
    if (!ok) g_gc.skipped++;
    return ok;
}

/* Deterministic token ids in [0, V). */
static inline void gc_fill_ids(int32_t *x, size_t n, size_t V, uint64_t seed) {
    fs_rng r;
    fs_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = (int32_t)fs_rng_below(&r, V);
}

static inline size_t gc_es(int32_t dtype) { return dtype == FS_DTYPE_BF16 ? 2 : 4; }

static inline void gc_round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = fs_bf16_to_f32(fs_bf16_from_f32(x[i]));
}

/* ---- memory on one backend ---- */

static inline void *gc_alloc(fs_backend_handle *b, size_t bytes) {
    void *p = NULL;
    fs_error err = {0};
    gc_check_rc(b->vt->alloc(b->self, &p, bytes, FS_MEM_DEVICE, &err), &err, "alloc");
    return p;
}

static inline void gc_free(fs_backend_handle *b, void *p) {
    if (p) b->vt->free(b->self, p, FS_MEM_DEVICE);
}

static inline void *gc_upload(fs_backend_handle *b, const void *host, size_t bytes) {
    void *p = gc_alloc(b, bytes);
    fs_error err = {0};
    gc_check_rc(b->vt->copy(b->self, NULL, p, host, bytes, FS_COPY_HOST_TO_DEVICE, &err), &err, "copy to device");
    return p;
}

static inline void gc_download(fs_backend_handle *b, void *host, const void *dev, size_t bytes) {
    fs_error err = {0};
    gc_check_rc(b->vt->copy(b->self, NULL, host, dev, bytes, FS_COPY_DEVICE_TO_HOST, &err), &err, "copy to host");
    gc_check_rc(b->vt->stream_synchronize(b->self, NULL, &err), &err, "stream_synchronize");
}

/* n floats into dev on b as `dtype` (bf16: rounded to nearest even on the
 * host); gc_upload_dt allocates dev first; gc_download_dt reads back as f32. */
static inline void gc_write_dt(fs_backend_handle *b, void *dev, const float *x, size_t n, int32_t dtype) {
    fs_error err = {0};
    const void *src = x;
    fs_bf16 *h = NULL;
    if (dtype == FS_DTYPE_BF16) {
        h = malloc((n ? n : 1) * sizeof *h);
        assert_non_null(h);
        for (size_t i = 0; i < n; i++) h[i] = fs_bf16_from_f32(x[i]);
        src = h;
    }
    gc_check_rc(b->vt->copy(b->self, NULL, dev, src, n * gc_es(dtype), FS_COPY_HOST_TO_DEVICE, &err), &err,
                "copy to device");
    free(h); /* a copy from pageable memory returns once it has read it */
}

static inline void *gc_upload_dt(fs_backend_handle *b, const float *x, size_t n, int32_t dtype) {
    void *p = gc_alloc(b, n * gc_es(dtype));
    gc_write_dt(b, p, x, n, dtype);
    return p;
}

static inline void gc_download_dt(fs_backend_handle *b, float *x, const void *dev, size_t n, int32_t dtype) {
    if (dtype != FS_DTYPE_BF16) {
        gc_download(b, x, dev, n * sizeof(float));
        return;
    }
    fs_bf16 *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    gc_download(b, h, dev, n * sizeof *h);
    for (size_t i = 0; i < n; i++) x[i] = fs_bf16_to_f32(h[i]);
    free(h);
}

/* ---- one tensor on both sides: the dut's in the case's dtype, the
 * reference's in f32 holding the same (rounded) values ---- */

typedef struct gc_buf {
    void *d, *r;
    size_t n;
    int32_t dtype;
} gc_buf;

/* x (n) to both sides; bf16 rounds x itself first, so the caller's host
 * copy is what both sides hold. */
static inline gc_buf gc_put(float *x, size_t n, int32_t dtype) {
    if (dtype == FS_DTYPE_BF16) gc_round_bf16(x, n);
    gc_buf b = {gc_upload_dt(&g_gc.dut, x, n, dtype), gc_upload(&g_gc.ref, x, n * sizeof(float)), n, dtype};
    return b;
}

/* New values x (b->n) into both sides of b, rounded as gc_put does. */
static inline void gc_set(const gc_buf *b, float *x) {
    if (b->dtype == FS_DTYPE_BF16) gc_round_bf16(x, b->n);
    gc_write_dt(&g_gc.dut, b->d, x, b->n, b->dtype);
    gc_write_dt(&g_gc.ref, b->r, x, b->n, FS_DTYPE_F32);
}

/* Raw bytes (token ids, f32 parameters) on both sides. */
static inline gc_buf gc_put_bytes(const void *x, size_t bytes) {
    gc_buf b = {gc_upload(&g_gc.dut, x, bytes), gc_upload(&g_gc.ref, x, bytes), bytes, -1};
    return b;
}

/* Both sides' values as f32: dut into got, reference into want. */
static inline void gc_get(const gc_buf *b, float *got, float *want) {
    gc_download_dt(&g_gc.dut, got, b->d, b->n, b->dtype);
    gc_download(&g_gc.ref, want, b->r, b->n * sizeof(float));
}

/* The reference's values rounded to bf16 in place, as the dut stored them:
 * for an output that is the next op's input. */
static inline void gc_round_ref(const gc_buf *b) {
    if (b->dtype != FS_DTYPE_BF16) return;
    float *x = test_fvec(b->n);
    gc_download(&g_gc.ref, x, b->r, b->n * sizeof(float));
    gc_round_bf16(x, b->n);
    gc_write_dt(&g_gc.ref, b->r, x, b->n, FS_DTYPE_F32);
    free(x);
}

static inline void gc_drop(gc_buf *b) {
    gc_free(&g_gc.dut, b->d);
    gc_free(&g_gc.ref, b->r);
    memset(b, 0, sizeof *b);
}

/* ---- comparison ---- */

/* |got - want| <= abs + of_max * max|want| + rel * |want|: `rel` bounds what
 * rounds element by element, `of_max` what a sum over many terms leaves
 * (its error scales with the terms, not with a result that cancelled).
 * `rounded`: the dut rounds to bf16, once, what the reference computes in
 * f32 with the same IEEE operations (an addition, a copy), so the
 * reference rounded the same way must equal it. `abs`: a floor for
 * results that can cancel all the way, stated from their terms' size. */
typedef struct gc_tol {
    double rel, of_max;
    int rounded;
    double abs;
} gc_tol;

/* One value against a definition: |got - want| <= tol; `at` says where. */
static inline void gc_near(const char *what, size_t at, double got, double want, double tol) {
    if (!(fabs(got - want) <= tol)) {
        fprintf(stderr, "%s: element %zu: got %.9g, want %.9g (tolerance %.3g)\n", what, at, got, want, tol);
        fail();
    }
}

/* Sums of up to a few thousand terms in another order (threads, warps,
 * tiles): each addition rounds once, by at most u of a partial sum, and
 * errors of random sign grow as sqrt(n); 1e-5 of the largest result covers
 * 8 sqrt(n) u for n up to ~400 terms whose partial sums stay near the
 * result's scale. Transcendentals (expf, tanhf) differ by a few ulp. */
static const gc_tol GC_F32_SUMS = {1e-5, 1e-5, 0, 0};
/* The same with one bf16 rounding of the result on the dut. */
static const gc_tol GC_BF16_SUMS = {GC_U_BF16 + 1e-5, 1e-5, 0, 0};
/* One IEEE operation per element, or none: the same bits on every device. */
static const gc_tol GC_SAME = {0, 0, 1, 0};

static inline const char *gc_dtname(int32_t dtype) { return dtype == FS_DTYPE_BF16 ? "bf16" : "f32"; }

static inline double gc_max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
    return m;
}

/* The dut's result (as f32, of type `dtype` on the dut) against the
 * reference's: equal when both are the cpu backend, else within tol. */
static inline void gc_expect(const char *what, const float *got, float *want, size_t n, int32_t dtype, gc_tol tol) {
    if (g_gc.exact) {
        test_close(what, got, want, n, 0.0, 0.0);
        return;
    }
    if (tol.rounded && dtype == FS_DTYPE_BF16) gc_round_bf16(want, n);
    test_close(what, got, want, n, tol.abs + tol.of_max * gc_max_abs(want, n), tol.rel);
}

/* Both sides of b compared. */
static inline void gc_expect_buf(const char *what, const gc_buf *b, gc_tol tol) {
    float *got = test_fvec(b->n), *want = test_fvec(b->n);
    gc_get(b, got, want);
    gc_expect(what, got, want, b->n, b->dtype, tol);
    free(got), free(want);
}

#endif
