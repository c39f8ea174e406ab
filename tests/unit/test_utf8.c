/* test_utf8.c — the incremental UTF-8 decoder against hand-worked
 * sequences: the Unicode standard's own example of maximal subparts
 * (section 3.9, table 3-8), the boundaries of table 3-7, characters split
 * across calls at every point, and the JSON writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "io/utf8.h"

#define R "\xEF\xBF\xBD" /* U+FFFD */

/* Decodes `in` (n bytes) fed in pieces of `step` bytes, then flushes. */
static size_t decode_steps(const char *in, size_t n, size_t step, char *out) {
    fs_utf8_decoder d;
    fs_utf8_decoder_init(&d);
    size_t o = 0;
    for (size_t i = 0; i < n; i += step) o += fs_utf8_decode(&d, in + i, n - i < step ? n - i : step, out + o);
    o += fs_utf8_flush(&d, out + o);
    return o;
}

static void expect_decoded(const char *in, size_t n, const char *want, size_t want_n) {
    char *out = malloc(FS_UTF8_DECODE_MAX(n));
    for (size_t step = 1; step <= n + 1; step++) {
        size_t o = decode_steps(in, n, step, out);
        out[o] = '\0';
        if (o != want_n || memcmp(out, want, o) != 0) {
            print_error("decoding %zu bytes in steps of %zu: got '%s', want '%s'\n", n, step, out, want);
            free(out);
            fail();
        }
    }
    free(out);
}

#define EXPECT(in, want) expect_decoded(in, sizeof(in) - 1, want, sizeof(want) - 1)

static void test_valid_passes_through(void **state) {
    (void)state;
    EXPECT("caf\xC3\xA9", "caf\xC3\xA9");                                  /* é */
    EXPECT("\xE4\xB8\xAD\xE6\x96\x87", "\xE4\xB8\xAD\xE6\x96\x87");        /* 中文 */
    EXPECT("\xF0\x9F\x98\x80!", "\xF0\x9F\x98\x80!");                      /* 😀 */
    EXPECT("\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF");                        /* U+10FFFF */
    EXPECT("\xED\x9F\xBF", "\xED\x9F\xBF");                                /* U+D7FF, before the surrogates */
    EXPECT("\xEF\xBF\xBD", R);                                             /* U+FFFD itself */
    EXPECT("a\0b", "a\0b");                                                /* NUL is a character */
}

/* The Unicode standard, section 3.9, table 3-8: 61 F1 80 80 E1 80 C2 62 80
 * 63 80 BF 64 -> a FFFD FFFD FFFD b FFFD c FFFD FFFD d. */
static void test_standard_example(void **state) {
    (void)state;
    EXPECT("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", "a" R R R "b" R "c" R R "d");
}

static void test_ill_formed(void **state) {
    (void)state;
    EXPECT("\xC0\xAF", R R);          /* overlong lead bytes are never valid */
    EXPECT("\xE0\x80\xAF", R R R);    /* E0 needs A0..BF next */
    EXPECT("\xED\xA0\x80", R R R);    /* a surrogate */
    EXPECT("\xF4\x90\x80\x80", R R R R); /* past U+10FFFF */
    EXPECT("\xF5\x80", R R);
    EXPECT("\xFF", R);
    EXPECT("caf\xE9", "caf" R);       /* Latin-1 é */
    EXPECT("\xE6\x96", R);            /* cut off at the end: one U+FFFD at flush */
    EXPECT("\xF0\x9F\x98", R);
    EXPECT("\xF0\x9F\x98" "a", R "a"); /* an interrupted character: one U+FFFD, then a */
    EXPECT("\xC3" "\xC3\xA9", R "\xC3\xA9");
}

static void test_holds_back_until_complete(void **state) {
    (void)state;
    fs_utf8_decoder d;
    fs_utf8_decoder_init(&d);
    char out[64];
    assert_int_equal(fs_utf8_decode(&d, "\xF0", 1, out), 0);
    assert_int_equal(fs_utf8_decode(&d, "\x9F\x98", 2, out), 0);
    assert_int_equal(fs_utf8_decode(&d, "\x80", 1, out), 4);
    assert_memory_equal(out, "\xF0\x9F\x98\x80", 4);
    assert_int_equal(fs_utf8_flush(&d, out), 0);
}

static void test_valid_prefix(void **state) {
    (void)state;
    assert_int_equal(fs_utf8_valid_prefix("abc", 3), 3);
    assert_int_equal(fs_utf8_valid_prefix("ab\xC3\xA9", 4), 4);
    assert_int_equal(fs_utf8_valid_prefix("ab\xC3", 3), 2);
    assert_int_equal(fs_utf8_valid_prefix("ab\xE0\x80", 4), 2);
    assert_int_equal(fs_utf8_valid_prefix("\x80", 1), 0);
}

static void test_json(void **state) {
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fs_json_utf8(f, "q\"\\\n\x01\0caf\xC3\xA9\xE9", 12);
    fclose(f);
    const char *want = "\"q\\\"\\\\\\n\\u0001\\u0000caf\xC3\xA9" R "\"";
    assert_string_equal(buf, want);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_passes_through), cmocka_unit_test(test_standard_example),
        cmocka_unit_test(test_ill_formed),           cmocka_unit_test(test_holds_back_until_complete),
        cmocka_unit_test(test_valid_prefix),         cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
