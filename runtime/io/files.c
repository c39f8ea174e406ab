/* files.c — see files.h. */
#include "io/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/host.h"

#define IO_CHUNK ((size_t)1 << 30) /* read/write may not move more at once */

static int write_all(int fd, const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n < IO_CHUNK ? n : IO_CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = ENOSPC;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Makes the rename itself durable: without it a crash can bring back the
 * old directory entry though the new file's data reached the disk. */
static int sync_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    free(dir);
    if (fd < 0) return -1;
    int rc = fsync(fd), e = errno;
    close(fd);
    errno = e;
    return rc != 0 && e != EINVAL ? -1 : 0; /* EINVAL: this filesystem cannot sync directories */
}

/* PID of a temporary file's name (NAME.tmp.PID), or 0. */
static pid_t temp_owner(const char *name) {
    const char *tmp = strstr(name, ".tmp.");
    while (tmp && strstr(tmp + 1, ".tmp.")) tmp = strstr(tmp + 1, ".tmp.");
    if (!tmp || !tmp[5]) return 0;
    long pid = 0;
    for (const char *p = tmp + 5; *p; p++) {
        if (*p < '0' || *p > '9' || pid > 100000000L) return 0;
        pid = pid * 10 + (*p - '0');
    }
    return (pid_t)pid;
}

void fs_files_each_stale_temp(const char *dir, const char *prefix, void (*fn)(void *arg, const char *tmp, long pid),
                              void *arg) {
    DIR *d = opendir(dir);
    if (!d) return;
    size_t lp = prefix ? strlen(prefix) : 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        pid_t pid = temp_owner(e->d_name);
        if (pid <= 0 || pid == getpid() || (prefix && strncmp(e->d_name, prefix, lp))) continue;
        if (kill(pid, 0) == 0 || errno != ESRCH) continue; /* alive (or not ours to ask about): its file */
        char path[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode)) fn(arg, path, (long)pid);
    }
    closedir(d);
}

static void remove_one(void *arg, const char *tmp, long pid) {
    struct stat st;
    if (stat(tmp, &st) != 0 || unlink(tmp) != 0) return;
    fs_log(FS_LOG_INFO, NULL, "removed %s (%lld bytes): the temporary file of process %ld, which is gone (killed while "
           "writing)", tmp, (long long)st.st_size, pid);
    ++*(size_t *)arg;
}

size_t fs_files_remove_stale_temps(const char *dir, const char *prefix) {
    size_t removed = 0;
    fs_files_each_stale_temp(dir, prefix, remove_one, &removed);
    return removed;
}

void fs_files_temp_prefix(const char *path, char *dir, size_t dir_cap, char *prefix, size_t prefix_cap) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, dir_cap, ".");
    else
        snprintf(dir, dir_cap, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    snprintf(prefix, prefix_cap, "%s.tmp.", slash ? slash + 1 : path);
}

int fs_file_write_temp(const char *path, const void *const *parts, const size_t *lens, size_t n, char **tmp_out,
                       fs_error *err) {
    *tmp_out = NULL;
    char dir[PATH_MAX], prefix[NAME_MAX + 8];
    fs_files_temp_prefix(path, dir, sizeof dir, prefix, sizeof prefix);
    fs_files_remove_stale_temps(dir, prefix); /* earlier writers of this path that were killed */
    size_t tmplen = strlen(path) + 32;
    char *tmp = malloc(tmplen);
    if (!tmp) return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", path);
    snprintf(tmp, tmplen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        fs_error_set(err, FS_ERR_IO, "%s: cannot create %s: %s (does the directory exist and is it writable?)", path,
                     tmp, strerror(errno));
        free(tmp);
        return FS_ERR_IO;
    }
    const char *step = "cannot write";
    int bad = 0;
    for (size_t i = 0; !bad && i < n; i++)
        if (lens[i]) bad = write_all(fd, parts[i], lens[i]);
    if (!bad && fsync(fd) != 0) step = "cannot sync", bad = 1;
    int e = errno;
    if (close(fd) != 0 && !bad) e = errno, bad = 1;
    if (bad) {
        unlink(tmp);
        free(tmp);
        return fs_error_set(err, FS_ERR_IO, "%s: %s: %s; the previous file at that path is unchanged", path, step,
                            strerror(e));
    }
    *tmp_out = tmp;
    return FS_OK;
}

int fs_file_commit(char *tmp, const char *path, fs_error *err) {
    int rc = FS_OK;
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        rc = fs_error_set(err, FS_ERR_IO,
                          "%s: cannot rename the temporary file over it: %s; the previous file at that path is "
                          "unchanged",
                          path, strerror(e));
    } else if (sync_dir(path) != 0) {
        rc = fs_error_set(err, FS_ERR_IO,
                          "%s: written, but syncing its directory failed: %s (the rename may not survive a crash)",
                          path, strerror(errno));
    }
    free(tmp);
    return rc;
}

void fs_file_discard(char *tmp) {
    if (tmp) unlink(tmp);
    free(tmp);
}

int fs_file_write_atomic(const char *path, const void *const *parts, const size_t *lens, size_t n, fs_error *err) {
    char *tmp;
    int rc = fs_file_write_temp(path, parts, lens, n, &tmp, err);
    return rc ? rc : fs_file_commit(tmp, path, err);
}

int fs_file_write_text(const char *path, const char *text, fs_error *err) {
    const void *parts[1] = {text};
    size_t lens[1] = {strlen(text)};
    return fs_file_write_atomic(path, parts, lens, 1, err);
}

int fs_file_read(const char *path, char **data, size_t *len, fs_error *err) {
    *data = NULL;
    *len = 0;
    /* non-blocking: a FIFO would block the open itself; it is refused below */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return fs_error_set(err, errno == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO, "%s: cannot open: %s", path,
                            strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fs_error_set(err, FS_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory for %zu bytes", path, size);
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got < IO_CHUNK ? size - got : IO_CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            free(buf);
            return fs_error_set(err, FS_ERR_IO, "%s: cannot read: %s", path,
                                e ? strerror(e) : "the file shrank while being read");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';
    *data = buf;
    *len = size;
    return FS_OK;
}

int fs_json_read(const char *path, json_t **out, fs_error *err) {
    *out = NULL;
    char *text;
    size_t len;
    int rc = fs_file_read(path, &text, &len, err);
    if (rc) return rc;
    json_error_t je;
    *out = json_loadb(text, len, 0, &je);
    free(text);
    if (!*out) return fs_error_set(err, FS_ERR_INVALID, "%s:%d: not valid JSON: %s", path, je.line, je.text);
    return FS_OK;
}

int fs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int fs_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
