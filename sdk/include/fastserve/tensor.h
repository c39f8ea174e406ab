/* fastserve/tensor.h — the tensor descriptor that crosses the plugin ABI.
 *
 * A tensor is a view: a pointer, an element type, the device the pointer
 * lives on and a row-major shape. Nothing here assumes host memory; a plugin
 * that only has CPU kernels checks `device.type` and refuses other devices
 * with FS_ERR_UNSUPPORTED. Ownership never travels with a tensor: whoever
 * allocated the buffer frees it. */
#ifndef FASTSERVE_TENSOR_H
#define FASTSERVE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fs_device_type {
    FS_DEVICE_CPU = 0,
    FS_DEVICE_CUDA = 1,
} fs_device_type;

typedef struct fs_device {
    int32_t type;  /* fs_device_type */
    int32_t index; /* ordinal among devices of that type */
} fs_device;

typedef enum fs_dtype {
    FS_DTYPE_F32 = 0,
    FS_DTYPE_F16 = 1,
    FS_DTYPE_BF16 = 2,
    FS_DTYPE_I32 = 3,
    FS_DTYPE_F64 = 4, /* since ABI 1.1: sums of scalars (losses, norms) over ranks */
} fs_dtype;

#define FS_TENSOR_MAX_DIMS 4

typedef struct fs_tensor {
    void *data;
    int32_t dtype; /* fs_dtype */
    fs_device device;
    int32_t ndim;
    size_t shape[FS_TENSOR_MAX_DIMS]; /* row-major, contiguous */
} fs_tensor;

static inline size_t fs_tensor_numel(const fs_tensor *t) {
    size_t n = 1;
    for (int32_t i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static inline int fs_device_is_cpu(fs_device d) { return d.type == FS_DEVICE_CPU; }

/* A contiguous f32 CPU tensor of up to four dimensions (unused trailing
 * dimensions are 0 and ignored). */
static inline fs_tensor fs_tensor_cpu_f32(float *data, int32_t ndim, size_t d0, size_t d1, size_t d2,
                                          size_t d3) {
    fs_tensor t;
    t.data = data;
    t.dtype = FS_DTYPE_F32;
    t.device.type = FS_DEVICE_CPU;
    t.device.index = 0;
    t.ndim = ndim;
    t.shape[0] = d0;
    t.shape[1] = d1;
    t.shape[2] = d2;
    t.shape[3] = d3;
    return t;
}

#ifdef __cplusplus
}
#endif
#endif
