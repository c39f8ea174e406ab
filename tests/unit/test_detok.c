/* test_detok.c — tokens to the text a client sees (serve/detok.h), with the
 * byte tokenizer so every byte sequence can be made: stop strings against
 * hand-worked cases (the reply ends before the first one, never shows a
 * part of one that may still complete, lets a failed partial match go),
 * UTF-8 assembly (split characters wait, ill-formed bytes become U+FFFD,
 * as Python's bytes.decode('utf-8', 'replace')), and on random texts: the
 * chunks a stream hands out are exactly the whole reply, and at no point
 * is a byte released that a later token could have cut off. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "io/tokenizer.h"
#include "serve/detok.h"

#define R "\xEF\xBF\xBD" /* U+FFFD */

static fs_tokenizer *byte_tokenizer(void) {
    fs_tokenizer *t = NULL;
    fs_error err = {0};
    assert_int_equal(fs_tokenizer_open(&t, "byte", "test", &err), 0);
    return t;
}

typedef struct run {
    char streamed[4096];
    size_t n_streamed;
    int stopped_at; /* index of the byte whose push reported the stop, or -1 */
    char whole[4096];
    size_t n_whole;
} run;

/* Feeds `in` byte by byte (each byte a token), taking the final text after
 * every push as a stream would, then finishes. */
static void feed(const char *in, size_t n, const char *const *stops, size_t n_stops, run *r) {
    fs_tokenizer *tok = byte_tokenizer();
    char *stop[8];
    size_t len[8];
    for (size_t i = 0; i < n_stops; i++) stop[i] = (char *)stops[i], len[i] = strlen(stops[i]);
    fs_detok d;
    fs_detok_init(&d, tok, stop, len, n_stops);
    memset(r, 0, sizeof *r);
    r->stopped_at = -1;
    const char *t;
    for (size_t i = 0; i < n; i++) {
        if (fs_detok_push(&d, (unsigned char)in[i], NULL) && r->stopped_at < 0) r->stopped_at = (int)i;
        size_t k = fs_detok_take(&d, &t);
        memcpy(r->streamed + r->n_streamed, t, k);
        r->n_streamed += k;
    }
    fs_detok_finish(&d);
    size_t k = fs_detok_take(&d, &t);
    memcpy(r->streamed + r->n_streamed, t, k);
    r->n_streamed += k;
    r->n_whole = fs_detok_length(&d);
    memcpy(r->whole, d.text.p ? d.text.p : "", r->n_whole);
    fs_detok_release(&d);
    fs_tokenizer_destroy(tok);
}

static void expect(const char *in, const char *const *stops, size_t n_stops, const char *want, int stop_at) {
    run r;
    feed(in, strlen(in), stops, n_stops, &r);
    assert_int_equal(r.n_whole, strlen(want));
    assert_memory_equal(r.whole, want, r.n_whole);
    assert_int_equal(r.n_streamed, strlen(want));
    assert_memory_equal(r.streamed, want, r.n_streamed);
    assert_int_equal(r.stopped_at, stop_at);
}

static void test_stop_strings(void **state) {
    (void)state;
    const char *lo[] = {"lo w"};
    expect("Hello world", lo, 1, "Hel", 6);         /* ends before the stop, which is not shown */
    expect("Hello wide", lo, 1, "Hel", 6);
    expect("Hello", lo, 1, "Hello", -1);            /* a partial match at the end is text */
    expect("Hellow", lo, 1, "Hellow", -1);          /* a failed partial match is text */
    expect("lo wlo w", lo, 1, "", 3);               /* at the very start */
    const char *two[] = {"world", "o w"};
    expect("Hello world", two, 2, "Hell", 6);        /* the first to start wins, not the first listed */
    const char *nl[] = {"\nUser:"};
    expect("Yes.\nUse it.\nUser: hi", nl, 1, "Yes.\nUse it.", 17);
    const char *aa[] = {"aab"};
    expect("aaab", aa, 1, "a", 3);                   /* a match that starts inside a failed one */
    expect("aaaa", aa, 1, "aaaa", -1);
}

/* The stream never hands out a byte that the final reply does not have. */
static void test_holds_back_a_possible_match(void **state) {
    (void)state;
    fs_tokenizer *tok = byte_tokenizer();
    char *stop[] = {"STOP"};
    size_t len[] = {4};
    fs_detok d;
    fs_detok_init(&d, tok, stop, len, 1);
    const char *t;
    const char *in = "abST";
    size_t got = 0;
    for (size_t i = 0; i < 4; i++) {
        fs_detok_push(&d, (unsigned char)in[i], NULL);
        got += fs_detok_take(&d, &t);
    }
    assert_int_equal(got, 2); /* "ST" waits */
    fs_detok_push(&d, 'O', NULL);
    assert_int_equal(fs_detok_take(&d, &t), 0);
    fs_detok_push(&d, 'x', NULL); /* "STOx": not a stop after all */
    assert_int_equal(fs_detok_take(&d, &t), 4);
    assert_memory_equal(t, "STOx", 4);
    fs_detok_release(&d);
    fs_tokenizer_destroy(tok);
}

static void test_utf8(void **state) {
    (void)state;
    expect("caf\xC3\xA9", NULL, 0, "caf\xC3\xA9", -1);            /* a split character completes */
    expect("a\xFF" "b", NULL, 0, "a" R "b", -1);                   /* an invalid byte */
    expect("\xC3" "a", NULL, 0, R "a", -1);                        /* a character cut by ASCII */
    expect("ab\xE2\x82", NULL, 0, "ab" R, -1);                     /* cut at the end: one U+FFFD */
    expect("\xED\xA0\x80", NULL, 0, R R R, -1);                    /* a surrogate: three maximal subparts */
    expect("\xF0\x9F\x98\x80!", NULL, 0, "\xF0\x9F\x98\x80!", -1); /* four bytes */
    const char *e[] = {"\xC3\xA9!"};
    expect("caf\xC3\xA9!", e, 1, "caf", 5);                       /* a stop string with a character in it */
    const char *r[] = {R};
    expect("ok\xC3", r, 1, "ok", -1);                              /* the flush's U+FFFD completes a stop */
    /* split bytes are never streamed: nothing after C3 alone */
    fs_tokenizer *tok = byte_tokenizer();
    fs_detok d;
    fs_detok_init(&d, tok, NULL, NULL, 0);
    const char *t;
    fs_detok_push(&d, 0xC3, NULL);
    assert_int_equal(fs_detok_take(&d, &t), 0);
    size_t off;
    fs_detok_push(&d, 0xA9, &off);
    assert_int_equal(off, 0);
    assert_int_equal(fs_detok_take(&d, &t), 2);
    fs_detok_push(&d, 'x', &off);
    assert_int_equal(off, 1); /* characters, not bytes */
    fs_detok_release(&d);
    fs_tokenizer_destroy(tok);
}

/* Where Python's str.find would cut: the earliest start of any stop. */
static size_t reference_cut(const char *s, size_t n, char *const *stops, size_t n_stops) {
    size_t best = n;
    for (size_t i = 0; i < n_stops; i++) {
        size_t L = strlen(stops[i]);
        for (size_t p = 0; p + L <= n && p < best; p++)
            if (memcmp(s + p, stops[i], L) == 0) {
                best = p;
                break;
            }
    }
    return best;
}

/* Where a server that checks after every token cuts: at the first token
 * that completes a stop string, before the earliest stop then in the text. */
static size_t reference_stream_cut(const char *s, size_t n, char *const *stops, size_t n_stops) {
    for (size_t i = 1; i <= n; i++) {
        size_t c = reference_cut(s, i, stops, n_stops);
        if (c != i) return c;
    }
    return n;
}

static void test_random_streams(void **state) {
    (void)state;
    fs_tokenizer *tok = byte_tokenizer();
    uint64_t x = 88172645463325252ull;
    for (int trial = 0; trial < 3000; trial++) {
        char text[64], stop_text[3][6], *stop[3];
        size_t len[3], n = 0, n_stops = 1 + trial % 3;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        n = 1 + x % 40;
        for (size_t i = 0; i < n; i++) x ^= x << 13, x ^= x >> 7, x ^= x << 17, text[i] = "aab "[x % 4];
        for (size_t k = 0; k < n_stops; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            len[k] = 1 + x % 4;
            for (size_t i = 0; i < len[k]; i++) x ^= x << 13, x ^= x >> 7, x ^= x << 17, stop_text[k][i] = "aab "[x % 4];
            stop_text[k][len[k]] = '\0';
            stop[k] = stop_text[k];
        }
        size_t cut = reference_stream_cut(text, n, stop, n_stops);
        fs_detok d;
        fs_detok_init(&d, tok, stop, len, n_stops);
        char streamed[64];
        size_t got = 0;
        const char *t;
        for (size_t i = 0; i < n; i++) {
            fs_detok_push(&d, (unsigned char)text[i], NULL);
            size_t k = fs_detok_take(&d, &t);
            memcpy(streamed + got, t, k);
            got += k;
            /* released text is final: no continuation could cut before it */
            size_t now = reference_stream_cut(text, i + 1, stop, n_stops);
            if (got > now) fail_msg("trial %d: released past a stop", trial);
            for (size_t k2 = 0; now == i + 1 && k2 < n_stops; k2++) {
                char longer[80];
                memcpy(longer, text, i + 1);
                memcpy(longer + i + 1, stop[k2], len[k2]);
                if (got > reference_stream_cut(longer, i + 1 + len[k2], stop, n_stops))
                    fail_msg("trial %d: released %zu of \"%.*s\"; stop \"%s\" could still cut it", trial, got,
                             (int)(i + 1), text, stop[k2]);
            }
        }
        fs_detok_finish(&d);
        size_t k = fs_detok_take(&d, &t);
        memcpy(streamed + got, t, k);
        got += k;
        assert_int_equal(fs_detok_length(&d), cut);
        assert_int_equal(got, cut);
        assert_memory_equal(streamed, text, cut);
        fs_detok_release(&d);
    }
    fs_tokenizer_destroy(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_holds_back_a_possible_match),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_random_streams),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
