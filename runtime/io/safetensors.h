/* safetensors.h — reading and atomically writing .safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 *  ..., "__metadata__": {"key": "string value", ...}}, then the raw
 * little-endian data; offsets are relative to the end of the header.
 *
 * The reader checks everything before handing out a pointer: header length
 * within the file, valid JSON (jansson; duplicate keys refused), known
 * dtypes, shape x dtype size == byte span, spans inside the data area and
 * not overlapping. Every failure names the file and what is wrong.
 *
 * The writer never leaves a partial file at `path`: it writes PATH.tmp.PID,
 * fsyncs it, renames it over PATH and fsyncs the directory; on any failure
 * (disk full, unwritable directory) it removes the temporary file and the
 * old PATH is untouched. */
#ifndef FS_SAFETENSORS_H
#define FS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "fastserve/plugin.h"

typedef struct fs_st_tensor {
    const char *name;
    int32_t dtype; /* fs_dtype; also FS_ST_DTYPE_* below for others */
    int32_t ndim;  /* 0..8 */
    size_t shape[8];
    size_t nbytes;
    const void *data; /* into the loaded file; valid until close */
} fs_st_tensor;

/* dtypes beyond fs_dtype that files may hold (read-only; reported by name) */
#define FS_ST_DTYPE_F64 100
#define FS_ST_DTYPE_I64 101
#define FS_ST_DTYPE_U8 102
#define FS_ST_DTYPE_I8 103
#define FS_ST_DTYPE_I16 104
#define FS_ST_DTYPE_BOOL 105

typedef struct fs_safetensors fs_safetensors;

/* Refuses anything but a regular file (a FIFO or a device) before reading it. */
int fs_safetensors_open(fs_safetensors **out, const char *path, fs_error *err);
/* The same checks on the bytes of a file held in memory (copied); `name`
 * stands for the path in messages. */
int fs_safetensors_open_memory(fs_safetensors **out, const char *name, const void *bytes, size_t size,
                               fs_error *err);
void fs_safetensors_close(fs_safetensors *st); /* accepts NULL */
size_t fs_safetensors_count(const fs_safetensors *st);
const fs_st_tensor *fs_safetensors_at(const fs_safetensors *st, size_t i); /* file order */
const fs_st_tensor *fs_safetensors_find(const fs_safetensors *st, const char *name);
/* NULL when absent. */
const char *fs_safetensors_metadata(const fs_safetensors *st, const char *key);
const char *fs_safetensors_path(const fs_safetensors *st);
/* "F32", "I32", ... */
const char *fs_safetensors_dtype_name(int32_t dtype);
size_t fs_safetensors_dtype_size(int32_t dtype);

typedef struct fs_safetensors_writer fs_safetensors_writer;

int fs_safetensors_writer_create(fs_safetensors_writer **out, fs_error *err);
void fs_safetensors_writer_destroy(fs_safetensors_writer *w); /* accepts NULL */
/* `data` is not copied: it must stay valid until write() returns. Names must
 * be unique; ndim <= 8. */
int fs_safetensors_writer_add(fs_safetensors_writer *w, const char *name, int32_t dtype, int32_t ndim,
                              const size_t *shape, const void *data, fs_error *err);
/* Values are arbitrary UTF-8 text (newlines, quotes: escaped in JSON). */
int fs_safetensors_writer_metadata(fs_safetensors_writer *w, const char *key, const char *value,
                                   fs_error *err);
/* Tensors are laid out in the order added, 8-byte aligned as the format
 * requires (header padded with spaces). Atomic, see above. */
int fs_safetensors_writer_write(fs_safetensors_writer *w, const char *path, fs_error *err);
/* The first half only: the file complete and synced in *tmp, for
 * fs_file_commit (files.h) to rename over path with other files. */
int fs_safetensors_writer_write_temp(fs_safetensors_writer *w, const char *path, char **tmp, fs_error *err);

#endif
