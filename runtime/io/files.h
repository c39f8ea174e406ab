/* files.h — whole files in and out, for the small files a run writes
 * beside its checkpoint (config.json, tokenizer.json, token caches) and
 * the checkpoints themselves.
 *
 * fs_file_write_atomic never leaves a partial file at `path`: it writes
 * PATH.tmp.PID, fsyncs it, renames it over PATH and fsyncs the directory;
 * on any failure (disk full, unwritable directory) it removes the
 * temporary file and the old PATH is untouched. */
#ifndef FS_FILES_H
#define FS_FILES_H

#include <jansson.h>
#include <stddef.h>

#include "fastserve/plugin.h"

/* The concatenation of n parts (parts[i], lens[i] bytes) as the new PATH. */
int fs_file_write_atomic(const char *path, const void *const *parts, const size_t *lens, size_t n, fs_error *err);
/* The same for one NUL-terminated text. */
int fs_file_write_text(const char *path, const char *text, fs_error *err);

/* The whole file, NUL-terminated (*len excludes the NUL); the caller frees.
 * Only a regular file is read: a FIFO or a device is refused ("not a
 * regular file") before anything waits on it. */
int fs_file_read(const char *path, char **data, size_t *len, fs_error *err);
/* The JSON document in the file (jansson, read as fs_file_read reads);
 * bad JSON is "PATH:LINE: not valid JSON: ...". The caller json_decref's. */
int fs_json_read(const char *path, json_t **out, fs_error *err);

/* 1 when path is an existing directory / regular file. */
int fs_is_dir(const char *path);
int fs_is_file(const char *path);

#endif
