/* detok.c — tokens to final text: UTF-8 assembly and stop strings
 * (detok.h). */
#include "serve/detok.h"

#include <string.h>

void fs_detok_init(fs_detok *d, const fs_tokenizer *tok, char *const *stop, const size_t *stop_len, size_t n_stop) {
    memset(d, 0, sizeof *d);
    d->tok = tok;
    fs_utf8_decoder_init(&d->dec);
    d->stop = stop;
    d->stop_len = stop_len;
    d->n_stop = n_stop;
}

void fs_detok_release(fs_detok *d) { fs_buf_release(&d->text); }

static size_t count_chars(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

/* The first stop string in the text not yet handed out. A match cannot
 * start before `released`: fs_detok_take never releases a byte where one
 * could still start. */
static int find_stop(fs_detok *d) {
    const char *t = d->text.p;
    if (!t) return 0;
    size_t from = d->released, best = SIZE_MAX;
    for (size_t i = 0; i < d->n_stop; i++) {
        const char *hit = memmem(t + from, d->text.n - from, d->stop[i], d->stop_len[i]);
        if (hit && (size_t)(hit - t) < best) best = (size_t)(hit - t);
    }
    if (best == SIZE_MAX) return 0;
    d->stopped = 1;
    d->end = best;
    return 1;
}

static void add_text(fs_detok *d, const char *s, size_t n) {
    fs_buf_add(&d->text, s, n);
    d->n_chars += count_chars(s, n);
}

static void append(fs_detok *d, const char *bytes, size_t n, int flush) {
    char out[FS_UTF8_DECODE_MAX(64)];
    for (size_t i = 0; i < n; i += 64) {
        size_t k = n - i < 64 ? n - i : 64;
        add_text(d, out, fs_utf8_decode(&d->dec, bytes + i, k, out));
    }
    if (flush) add_text(d, out, fs_utf8_flush(&d->dec, out));
}

int fs_detok_push(fs_detok *d, int32_t token, size_t *char_offset) {
    if (char_offset) *char_offset = d->n_chars;
    if (d->stopped || d->finished) return 0;
    size_t n = 0;
    const char *s = fs_tokenizer_token(d->tok, token, &n);
    if (!s) s = "?", n = 1; /* outside the tokenizer (a model with a larger vocab_size): as fs_tokenizer_decode */
    append(d, s, n, 0);
    return find_stop(d);
}

void fs_detok_finish(fs_detok *d) {
    if (d->finished) return;
    if (!d->stopped) {
        append(d, NULL, 0, 1);
        find_stop(d);
    }
    d->finished = 1;
}

/* Where text that may still become a stop string starts: the earliest q
 * from which the rest of the text is a proper prefix of a stop string. */
static size_t hold_from(const fs_detok *d) {
    size_t n = d->text.n, q_min = n;
    for (size_t i = 0; i < d->n_stop; i++) {
        size_t L = d->stop_len[i];
        size_t q = n >= L ? n - L + 1 : 0;
        if (q < d->released) q = d->released;
        for (; q < q_min; q++)
            if (memcmp(d->text.p + q, d->stop[i], n - q) == 0) {
                q_min = q;
                break;
            }
    }
    return q_min;
}

size_t fs_detok_take(fs_detok *d, const char **text) {
    size_t upto = d->stopped ? d->end : d->finished ? d->text.n : hold_from(d);
    *text = d->text.p ? d->text.p + d->released : "";
    if (upto <= d->released) return 0;
    size_t n = upto - d->released;
    d->released = upto;
    return n;
}

size_t fs_detok_length(const fs_detok *d) { return d->stopped ? d->end : d->text.n; }
