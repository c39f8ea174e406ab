/* fastserve/plugin.h — the plugin ABI: entry point, versions, host API.
 *
 * A plugin is a shared object exporting one symbol, `fs_plugin_entry`, that
 * returns a pointer to a static fs_plugin_descriptor. The descriptor opens
 * with the ABI version the plugin was built against and its own size, then
 * names the plugin, its kind, its parameter schema and its vtable.
 *
 * Plugins never link against fsrun. Everything they need from the host
 * (their configuration, logging, memory, the thread pool, BLAS, parameter
 * registration, error reporting) reaches them through the fs_host_api table
 * passed to their create function: the SQLite extension pattern, so a plugin
 * builds against these headers alone.
 *
 * Growth rule: members are only ever appended to the end of a struct; the
 * `struct_size` field tells the other side which members exist. A host reads
 * a vtable member only when the plugin's vtable_size covers it, and a plugin
 * reads a host API member only when the host's struct_size covers it (see
 * FS_HAS_MEMBER). */
#ifndef FASTSERVE_PLUGIN_H
#define FASTSERVE_PLUGIN_H

#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>

#include "fastserve/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version: major.minor packed as (major << 16) | minor. A host accepts a
 * plugin whose version lies in [FS_ABI_VERSION_MIN, FS_ABI_VERSION]: same
 * major, and a minor no newer than the host's. */
#define FS_ABI_MAJOR 1
#define FS_ABI_MINOR 4
#define FS_ABI_MAKE(major, minor) ((uint32_t)(((uint32_t)(major) << 16) | (uint32_t)(minor)))
#define FS_ABI_VERSION FS_ABI_MAKE(FS_ABI_MAJOR, FS_ABI_MINOR)
#define FS_ABI_VERSION_MIN FS_ABI_MAKE(FS_ABI_MAJOR, 0)
#define FS_ABI_VERSION_MAJOR_OF(v) ((uint32_t)(v) >> 16)
#define FS_ABI_VERSION_MINOR_OF(v) ((uint32_t)(v)&0xffffu)

#define FS_PLUGIN_ENTRY_SYMBOL "fs_plugin_entry"

/* True when a struct whose first member is its own size (as the other side
 * compiled it) contains `member`. */
#define FS_HAS_MEMBER(ptr, size, type, member) \
    ((ptr) != NULL && (size) >= offsetof(type, member) + sizeof(((type *)0)->member))

typedef enum fs_status {
    FS_OK = 0,
    FS_ERR_INVALID = -1,     /* bad argument or configuration */
    FS_ERR_NOMEM = -2,       /* allocation failed */
    FS_ERR_IO = -3,          /* file or device I/O */
    FS_ERR_UNSUPPORTED = -4, /* valid request this implementation cannot do */
    FS_ERR_ABI = -5,         /* version or layout mismatch */
    FS_ERR_NOT_FOUND = -6,   /* file, symbol, plugin or key missing */
    FS_ERR_RUNTIME = -7,     /* numerical or internal failure */
    FS_ERR_COMM = -8,        /* collective or peer failure */
    FS_ERR_BUSY = -9,        /* since ABI 1.2: out of room for now (a full queue or pool); retry later */
} fs_status;

/* Detail for a failed call. The callee fills it; the caller owns it. */
typedef struct fs_error {
    int status; /* fs_status */
    char message[512];
} fs_error;

/* Fills err (when not NULL) and returns status: the one formatting of an
 * fs_error, for hosts and for code with no host table at hand (a plugin
 * normally calls its host's error_set). */
static inline int fs_error_vset(fs_error *err, int status, const char *fmt, va_list ap) {
    if (err) {
        err->status = status;
        vsnprintf(err->message, sizeof err->message, fmt, ap);
    }
    return status;
}

typedef enum fs_plugin_kind {
    FS_PLUGIN_ATTENTION = 1,
    FS_PLUGIN_PARALLEL = 2,
    FS_PLUGIN_DISTILL = 3,
    FS_PLUGIN_SCHEDULER = 4, /* since ABI 1.2: the serving engine's scheduler (scheduler.h) */
    FS_PLUGIN_BACKEND = 5,   /* since ABI 1.3: the compute backend (backend.h) */
} fs_plugin_kind;

typedef enum fs_param_type {
    FS_PARAM_INT = 1,      /* 64-bit integer, range [min, max] */
    FS_PARAM_FLOAT = 2,    /* double, range [min, max] */
    FS_PARAM_BOOL = 3,     /* true/false, yes/no, on/off, 1/0 */
    FS_PARAM_STRING = 4,   /* free text */
    FS_PARAM_ENUM = 5,     /* one of `choices`, separated by '|' */
    FS_PARAM_INT_LIST = 6, /* comma-separated integers, each in [min, max] */
} fs_param_type;

/* A range bound at or beyond this magnitude is no bound on that side:
 * {.min = 1, .max = FS_PARAM_UNBOUNDED} reads ">= 1" and accepts any larger
 * value, {.min = -FS_PARAM_UNBOUNDED, .max = 8} reads "<= 8". The host reads
 * any bound beyond it the same way, so a plugin that wrote 1e15 before this
 * name existed means the same thing. */
#define FS_PARAM_UNBOUNDED 1e15

/* One configuration key of a plugin. The host validates values against it
 * before the plugin is created and prints it for `fsrun --describe`. */
typedef struct fs_param_spec {
    const char *name;
    int32_t type;              /* fs_param_type */
    const char *default_value; /* text as it would appear in the INI; NULL = required */
    double min, max;           /* inclusive range for INT, FLOAT, INT_LIST; min > max = unbounded;
                                  a bound at or beyond +-FS_PARAM_UNBOUNDED is open on that side */
    const char *choices;       /* ENUM only: "a|b|c" */
    const char *help;          /* one line */
} fs_param_spec;

typedef struct fs_plugin_descriptor {
    uint32_t abi_version; /* FS_ABI_VERSION the plugin was compiled with */
    uint32_t struct_size; /* sizeof(fs_plugin_descriptor) as the plugin saw it */
    int32_t kind;         /* fs_plugin_kind */
    const char *name;     /* the name graphs use: [attention] plugin = NAME */
    const char *version;  /* the plugin's own version, free text */
    const char *summary;  /* one line for --list-plugins */
    const fs_param_spec *params;
    size_t n_params;
    const void *vtable; /* fs_attention_vtable, fs_parallel_vtable, fs_distill_vtable, fs_scheduler_vtable or
                         * fs_backend_vtable */
    size_t vtable_size; /* sizeof that vtable as the plugin saw it */
} fs_plugin_descriptor;

typedef const fs_plugin_descriptor *(*fs_plugin_entry_fn)(void);

typedef enum fs_log_level {
    FS_LOG_DEBUG = 0,
    FS_LOG_INFO = 1,
    FS_LOG_WARN = 2,
    FS_LOG_ERROR = 3,
} fs_log_level;

/* One plugin instance's view of the host: its validated configuration (with
 * [layer.N] overrides applied), its name for logs and its parameters. */
typedef struct fs_plugin_ctx fs_plugin_ctx;

/* Body of a parallel loop: process items [begin, end). */
typedef void (*fs_parallel_fn)(void *arg, size_t begin, size_t end);

typedef struct fs_host_api {
    uint32_t abi_version;
    uint32_t struct_size;

    /* Configuration of this instance; keys are the plugin's own schema
     * names. Values were validated before create, so these cannot fail for
     * a declared key; an undeclared key returns the zero value. */
    int64_t (*config_int)(const fs_plugin_ctx *ctx, const char *key);
    double (*config_float)(const fs_plugin_ctx *ctx, const char *key);
    int (*config_bool)(const fs_plugin_ctx *ctx, const char *key);
    const char *(*config_string)(const fs_plugin_ctx *ctx, const char *key);
    /* Writes up to `cap` values, returns how many the list holds. */
    size_t (*config_int_list)(const fs_plugin_ctx *ctx, const char *key, int64_t *out, size_t cap);
    /* "graph.ini:12: [attention] window = 3" for error messages, or the
     * default's description when the key was not written. */
    const char *(*config_where)(const fs_plugin_ctx *ctx, const char *key);

    /* Logging goes to stderr with the plugin's name; never print to stdout. */
    void (*log)(const fs_plugin_ctx *ctx, int level, const char *fmt, ...);

    /* Memory on a device; aligned to 64 bytes; free(NULL) is a no-op. */
    void *(*alloc)(fs_device device, size_t bytes);
    void (*free)(fs_device device, void *ptr);

    /* The host's thread pool: runs fn over [0, n) in chunks of at least
     * `grain` items, returns when all are done. fn may call the host's
     * sgemm: inside the pool it runs on the calling thread (BLAS threads x
     * pool threads stay within the cores), so many small independent
     * matmuls (one per head) run side by side without a fork per call. */
    void (*parallel_for)(size_t n, size_t grain, fs_parallel_fn fn, void *arg);
    int (*n_threads)(void);

    /* Row-major single-precision GEMM on `device`:
     * C = alpha * op(A) * op(B) + beta * C, op(A) is (m, k), op(B) is (k, n). */
    int (*sgemm)(fs_device device, int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                 const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                 size_t ldc);

    /* A trainable parameter owned by the plugin. The host places it and
     * its gradient in the model's parameter block (the flat vector, on the
     * model's device, after the model's own tensors), so the optimizer,
     * every parallel strategy and checkpoints treat it like the model's
     * tensors; checkpoints name it "<scope>.<name>". Call from create only;
     * the pointers stay valid for the instance's life. The host zero-fills
     * both; the plugin initialises `param` afterwards. */
    int (*register_param)(fs_plugin_ctx *ctx, const char *name, int32_t ndim, const size_t *shape,
                          int weight_decay, fs_tensor *param, fs_tensor *grad, fs_error *err);

    /* The run's seed mixed with this instance's scope: reproducible
     * randomness for plugins (hash rotations, dropout). */
    uint64_t (*seed)(const fs_plugin_ctx *ctx);

    /* Fills err (status and formatted message); returns status. */
    int (*error_set)(fs_error *err, int status, const char *fmt, ...);

    /* Since ABI 1.2. Row-major C (m, n) = A (m, k) op(B) + bias, op(B) = B
     * (k, n), or with trans_b B^T of a (n, k) B; bias (n) may be NULL.
     * Unlike sgemm, each element is summed in one fixed order (fused
     * multiply-adds over k, in k order for B (k, n), in eight interleaved
     * lanes reduced in a fixed tree for B^T, then + bias), so a row's result
     * depends only on that row of A, B and k: not on m, the other rows, the
     * thread count or the CPU's kernel path. What a paged_step needs for
     * batch invariance (attention.h). Runs on the calling thread inside
     * parallel_for, like sgemm. */
    int (*sgemm_rows)(fs_device device, int trans_b, size_t m, size_t n, size_t k, const float *a, size_t lda,
                      const float *b, size_t ldb, const float *bias, float *c, size_t ldc);

        /* Since ABI 1.3. The queue the host runs the model's work for `device` on: for a CUDA
     * device the cudaStream_t of the compute backend's stream
     * (fastserve/backend.h), where a plugin given device tensors queues its
     * own kernels so they run in order with the model's ops. NULL for the
     * CPU, or a device the host does not drive. */
    void *(*device_stream)(fs_device device);
} fs_host_api;

#if defined(_WIN32)
#define FS_PLUGIN_EXPORT __declspec(dllexport)
#else
#define FS_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* Every plugin defines exactly this function. */
#define FS_PLUGIN_DEFINE_ENTRY(descriptor)                                      \
    FS_PLUGIN_EXPORT const fs_plugin_descriptor *fs_plugin_entry(void);         \
    FS_PLUGIN_EXPORT const fs_plugin_descriptor *fs_plugin_entry(void) {        \
        return &(descriptor);                                                   \
    }

#ifdef __cplusplus
}
#endif
#endif
