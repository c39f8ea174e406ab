/* files.c — see files.h. */
#include "io/files.h"

#include <errno.h>
#include <fcntl.h>
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

int fs_file_write_atomic(const char *path, const void *const *parts, const size_t *lens, size_t n, fs_error *err) {
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
    if (!bad && rename(tmp, path) != 0) e = errno, step = "cannot rename the temporary file over it", bad = 1;
    if (bad) unlink(tmp);
    free(tmp);
    if (bad)
        return fs_error_set(err, FS_ERR_IO, "%s: %s: %s; the previous file at that path is unchanged", path, step,
                            strerror(e));
    if (sync_dir(path) != 0)
        return fs_error_set(err, FS_ERR_IO,
                            "%s: written, but syncing its directory failed: %s (the rename may not survive a crash)",
                            path, strerror(errno));
    return FS_OK;
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
