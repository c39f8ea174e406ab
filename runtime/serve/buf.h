/* buf.h — a growable byte buffer for the text the server writes (JSON,
 * server-sent events, the metrics page). A failed allocation is sticky:
 * later appends do nothing and `failed` says the text is incomplete. */
#ifndef FS_SERVE_BUF_H
#define FS_SERVE_BUF_H

#include <stddef.h>

typedef struct fs_buf {
    char *p;   /* NUL-terminated after any successful append */
    size_t n, cap;
    int failed;
} fs_buf;

void fs_buf_add(fs_buf *b, const void *s, size_t n);
void fs_buf_puts(fs_buf *b, const char *s);
void fs_buf_printf(fs_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (what a reader has taken). */
void fs_buf_consume(fs_buf *b, size_t n);
void fs_buf_release(fs_buf *b); /* empty again; frees */

#endif
