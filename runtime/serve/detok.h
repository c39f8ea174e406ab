/* detok.h — generated tokens to the text a client sees, as they come.
 *
 * A token is bytes (a byte-level model emits one byte of a character at a
 * time; a BPE token may end inside one), so the bytes go through the
 * incremental UTF-8 decoder (io/utf8.h): a split character waits for the
 * rest, ill-formed bytes become U+FFFD. The text is then searched for the
 * request's stop strings after every token, as a server that stops at once
 * must: at the first token that completes one, the reply ends where the
 * earliest stop string in the text starts, and is never part of it.
 *
 * For a stream, fs_detok_take hands out only text that can no longer
 * change: never the bytes of an unfinished character, and never text that
 * could be the start of a stop string the next tokens complete (it waits
 * until the match fails or completes). So a streamed reply, chunk by
 * chunk, is exactly the whole reply. */
#ifndef FS_SERVE_DETOK_H
#define FS_SERVE_DETOK_H

#include <stddef.h>
#include <stdint.h>

#include "io/tokenizer.h"
#include "io/utf8.h"
#include "serve/buf.h"

typedef struct fs_detok {
    const fs_tokenizer *tok;
    fs_utf8_decoder dec;
    fs_buf text;            /* valid UTF-8 so far */
    size_t n_chars;         /* characters in it */
    size_t released;        /* bytes of it handed out by fs_detok_take */
    char *const *stop;      /* borrowed */
    const size_t *stop_len;
    size_t n_stop;
    size_t end;             /* with stopped: where the first stop string starts */
    int stopped, finished;
} fs_detok;

void fs_detok_init(fs_detok *d, const fs_tokenizer *tok, char *const *stop, const size_t *stop_len, size_t n_stop);
void fs_detok_release(fs_detok *d);

/* Appends a token's bytes (ignored once stopped or finished); *char_offset
 * (may be NULL) receives the characters of text before it. Returns 1 when
 * a stop string has now appeared (the request should end), else 0. */
int fs_detok_push(fs_detok *d, int32_t token, size_t *char_offset);
/* The end of the reply: a character still cut becomes U+FFFD (which may
 * complete a stop string). */
void fs_detok_finish(fs_detok *d);

/* The text that became final since the last call (*text, returned
 * length; 0 when none). */
size_t fs_detok_take(fs_detok *d, const char **text);
/* The reply so far: everything before a stop string. */
size_t fs_detok_length(const fs_detok *d);

#endif
