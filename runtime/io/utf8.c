/* utf8.c — see utf8.h. */
#include "io/utf8.h"

#include <stdlib.h>
#include <string.h>

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

void fs_utf8_decoder_init(fs_utf8_decoder *d) { memset(d, 0, sizeof *d); }

static size_t put_replacement(char *out) {
    memcpy(out, REPLACEMENT, 3);
    return 3;
}

/* Starts a character at lead byte b; returns 0 when b cannot start one. */
static int start(fs_utf8_decoder *d, unsigned char b) {
    /* Table 3-7 of the Unicode standard: the lead byte fixes the length and
     * the range of the second byte (no overlongs, surrogates or code points
     * past U+10FFFF) */
    unsigned need = b >= 0xC2 && b <= 0xDF ? 1 : b >= 0xE0 && b <= 0xEF ? 2 : b >= 0xF0 && b <= 0xF4 ? 3 : 0;
    if (!need) return 0;
    d->lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
    d->hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
    d->held[0] = b;
    d->n_held = 1;
    d->need = need;
    return 1;
}

size_t fs_utf8_decode(fs_utf8_decoder *d, const char *in, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)in[i];
        if (d->need) {
            if (b >= d->lo && b <= d->hi) {
                d->held[d->n_held++] = b;
                d->lo = 0x80;
                d->hi = 0xBF;
                if (--d->need == 0) {
                    memcpy(out + o, d->held, d->n_held);
                    o += d->n_held;
                    d->n_held = 0;
                }
                continue;
            }
            /* the held bytes are a maximal subpart: one U+FFFD; b starts afresh */
            o += put_replacement(out + o);
            d->need = d->n_held = 0;
        }
        if (b < 0x80)
            out[o++] = (char)b;
        else if (!start(d, b))
            o += put_replacement(out + o);
    }
    return o;
}

size_t fs_utf8_flush(fs_utf8_decoder *d, char *out) {
    size_t o = d->need ? put_replacement(out) : 0;
    fs_utf8_decoder_init(d);
    return o;
}

size_t fs_utf8_valid_prefix(const char *s, size_t n) {
    fs_utf8_decoder d;
    fs_utf8_decoder_init(&d);
    size_t char_start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        if (d.need) {
            if (b < d.lo || b > d.hi) return char_start;
            d.lo = 0x80;
            d.hi = 0xBF;
            d.need--;
        } else {
            char_start = i;
            if (b >= 0x80 && !start(&d, b)) return i;
        }
    }
    return d.need ? char_start : n;
}

static void json_escaped(FILE *f, const char *s, size_t k) {
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (c < 0x20)
                fprintf(f, "\\u%04x", c);
            else
                fputc(c, f);
        }
    }
}

void fs_json_utf8(FILE *f, const char *s, size_t n) {
    enum { CHUNK = 256 };
    fs_utf8_decoder d;
    fs_utf8_decoder_init(&d);
    char buf[FS_UTF8_DECODE_MAX(CHUNK)];
    fputc('"', f);
    for (size_t at = 0; at < n; at += CHUNK)
        json_escaped(f, buf, fs_utf8_decode(&d, s + at, n - at < CHUNK ? n - at : CHUNK, buf));
    json_escaped(f, buf, fs_utf8_flush(&d, buf));
    fputc('"', f);
}
