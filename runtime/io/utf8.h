/* utf8.h — bytes to valid UTF-8, incrementally.
 *
 * Generated text is a sequence of tokens, and a token is bytes: a
 * byte-level model emits one byte of a character at a time, a BPE token may
 * end in the middle of one. Whatever reaches JSON (or a client streaming
 * it) must be valid UTF-8. The decoder passes complete characters through,
 * holds back the bytes of a character that may still complete (a later
 * token brings the rest), and replaces every ill-formed sequence by U+FFFD,
 * one per maximal subpart (the Unicode standard's recommended practice,
 * section 3.9, "U+FFFD Substitution of Maximal Subparts"; Python's
 * bytes.decode('utf-8', 'replace') and the WHATWG decoder do the same).
 * So feeding the bytes in any split gives the same text as feeding them at
 * once, and flush() ends a stream (a character cut off at the end becomes
 * one U+FFFD). */
#ifndef FS_UTF8_H
#define FS_UTF8_H

#include <stddef.h>
#include <stdio.h>

typedef struct fs_utf8_decoder {
    unsigned char held[4]; /* the bytes of the character in progress */
    unsigned n_held, need; /* bytes held; continuation bytes still expected */
    unsigned char lo, hi;  /* range of the next continuation byte */
} fs_utf8_decoder;

/* Output room that decoding n bytes can need (U+FFFD is 3 bytes). */
#define FS_UTF8_DECODE_MAX(n) (3 * ((size_t)(n) + 4))

void fs_utf8_decoder_init(fs_utf8_decoder *d);
/* Appends to out (room: FS_UTF8_DECODE_MAX(n)) the valid UTF-8 that the
 * bytes so far make; returns the bytes written. */
size_t fs_utf8_decode(fs_utf8_decoder *d, const char *in, size_t n, char *out);
/* The end of the stream: a character still in progress becomes U+FFFD.
 * out needs 3 bytes. The decoder is ready for a new stream after it. */
size_t fs_utf8_flush(fs_utf8_decoder *d, char *out);

/* Offset of the first byte of s that breaks strict UTF-8, or n. */
size_t fs_utf8_valid_prefix(const char *s, size_t n);

/* Writes n bytes as a JSON string literal (with the quotes) of valid UTF-8:
 * decoded as above, then '"', '\\' and control characters (NUL included)
 * escaped. */
void fs_json_utf8(FILE *f, const char *s, size_t n);

#endif
