/* files.h — whole files in and out, for the small files a run writes
 * beside its checkpoint (config.json, tokenizer.json, token caches) and
 * the checkpoints themselves.
 *
 * fs_file_write_atomic never leaves a partial file at `path`: it writes
 * PATH.tmp.PID, fsyncs it, renames it over PATH and fsyncs the directory;
 * on any failure (disk full, unwritable directory) it removes the
 * temporary file and the old PATH is untouched. A temporary file of the
 * same path whose writer was killed is removed first. */
#ifndef FS_FILES_H
#define FS_FILES_H

#include <jansson.h>
#include <stddef.h>

#include "fastserve/plugin.h"

/* The concatenation of n parts (parts[i], lens[i] bytes) as the new PATH. */
int fs_file_write_atomic(const char *path, const void *const *parts, const size_t *lens, size_t n, fs_error *err);
/* The same for one NUL-terminated text. */
int fs_file_write_text(const char *path, const char *text, fs_error *err);

/* The two halves of fs_file_write_atomic, for files that change together
 * (a checkpoint's weights and state): the parts in PATH.tmp.PID, synced
 * (*tmp, malloc'd, names it), then each renamed over its path with
 * fs_file_commit (which frees tmp), or removed with fs_file_discard. */
int fs_file_write_temp(const char *path, const void *const *parts, const size_t *lens, size_t n, char **tmp,
                       fs_error *err);
int fs_file_commit(char *tmp, const char *path, fs_error *err);
void fs_file_discard(char *tmp); /* accepts NULL */

/* Temporary files (NAME.tmp.PID) in dir, of names starting with prefix
 * (NULL: any), whose process is gone: what a write killed half-way
 * leaves. A live process's (even a reused PID's) is never listed. */
void fs_files_each_stale_temp(const char *dir, const char *prefix, void (*fn)(void *arg, const char *tmp, long pid),
                              void *arg);
/* Removes them, saying each; returns how many. fs_file_write_temp does it
 * for its own path's before writing. */
size_t fs_files_remove_stale_temps(const char *dir, const char *prefix);
/* The directory and the prefix of path's temporary files. */
void fs_files_temp_prefix(const char *path, char *dir, size_t dir_cap, char *prefix, size_t prefix_cap);

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
