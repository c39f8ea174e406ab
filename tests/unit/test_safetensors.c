/* test_safetensors.c — the safetensors reader and atomic writer.
 *
 * The byte-exact tests pin the on-disk format against hand-computed bytes
 * (so the writer is not only checked against our own reader), the
 * hand-built files stand in for what other writers (Python's safetensors)
 * produce, and the failure tests check that every bad file is refused with
 * a message naming it, and that a failed write leaves the old file alone. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/safetensors.h"

typedef struct fixture {
    char dir[64];
    char path[256]; /* scratch: last path built by at() */
} fixture;

static const char *at(fixture *f, const char *name) {
    snprintf(f->path, sizeof f->path, "%s/%s", f->dir, name);
    return f->path;
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    strcpy(f->dir, "/tmp/fs_st_test_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    *state = f;
    return 0;
}

static void rm_rf(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        chmod(path, 0700);
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int teardown(void **state) {
    fixture *f = *state;
    rm_rf(f->dir);
    free(f);
    return 0;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0, r;
    do {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        r = fread(buf + len, 1, cap - len, fp);
        len += r;
    } while (r > 0);
    fclose(fp);
    *n = len;
    return buf;
}

/* An 8-byte little-endian length, the header text as given, then data. */
static void write_st(const char *path, const char *header, const void *data, size_t ndata) {
    size_t hn = strlen(header);
    unsigned char *buf = malloc(8 + hn + ndata + 1);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hn >> (8 * i));
    memcpy(buf + 8, header, hn);
    if (ndata) memcpy(buf + 8 + hn, data, ndata);
    write_bytes(path, buf, 8 + hn + ndata);
    free(buf);
}

/* Opening must fail with `status`, a message naming the file and `what`. */
static void expect_open_fails(const char *path, int status, const char *what) {
    fs_safetensors *st = (fs_safetensors *)&st; /* must be reset to NULL */
    fs_error err;
    memset(&err, 0, sizeof err);
    assert_int_equal(fs_safetensors_open(&st, path, &err), status);
    assert_null(st);
    assert_int_equal(err.status, status);
    if (getenv("FS_TEST_VERBOSE")) print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, path));
    if (!strstr(err.message, what)) fail_msg("message '%s' lacks '%s'", err.message, what);
    assert_null(strchr(err.message, '\n'));
}

/* Number of entries in `dir`; fails the test if a name contains `must_not_contain`. */
static int count_entries(const char *dir, const char *must_not_contain) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (must_not_contain && strstr(e->d_name, must_not_contain))
            fail_msg("leftover file %s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static void test_round_trip(void **state) {
    fixture *f = *state;
    const char *path = at(f, "model.safetensors");
    float a[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-30f, 65504.0f};
    int32_t b[4] = {-1, 0, 7, 2147483647};
    uint16_t c = 0x3f80; /* BF16 1.0, a 0-d tensor */
    double d[3] = {3.141592653589793, -0.0, 1e300};
    uint8_t u[3] = {0, 128, 255};
    size_t sa[2] = {2, 3}, sb[1] = {4}, sempty[2] = {0, 5}, sd[1] = {3}, su[1] = {3};
    const char *config = "[model]\nlayers = 12\nname = \"gpt2\" \\ path\ttab\x01 ctl\r";
    const char *uni = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
    const char *odd_name = "h.0.attn \"q\"/\xc3\xa9\\";
    fs_error err;
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_writer_create(&w, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "a", FS_DTYPE_F32, 2, sa, a, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, odd_name, FS_DTYPE_I32, 1, sb, b, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "c", FS_DTYPE_BF16, 0, NULL, &c, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "empty", FS_DTYPE_F32, 2, sempty, NULL, &err), 0);
    /* at offset 42: misaligned for F64, so the reader must copy it */
    assert_int_equal(fs_safetensors_writer_add(w, "d", FS_ST_DTYPE_F64, 1, sd, d, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "u", FS_ST_DTYPE_U8, 1, su, u, &err), 0);
    assert_int_equal(fs_safetensors_writer_metadata(w, "config", "replaced below", &err), 0);
    assert_int_equal(fs_safetensors_writer_metadata(w, "config", config, &err), 0);
    assert_int_equal(fs_safetensors_writer_metadata(w, "unicode", uni, &err), 0);
    assert_int_equal(fs_safetensors_writer_metadata(w, "empty", "", &err), 0);
    assert_int_equal(fs_safetensors_writer_write(w, path, &err), 0);
    fs_safetensors_writer_destroy(w);
    assert_int_equal(count_entries(f->dir, ".tmp."), 1);

    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_open(&st, path, &err), 0);
    assert_string_equal(fs_safetensors_path(st), path);
    assert_int_equal(fs_safetensors_count(st), 6);
    const char *names[6] = {"a", odd_name, "c", "empty", "d", "u"};
    const int32_t dtypes[6] = {FS_DTYPE_F32, FS_DTYPE_I32,    FS_DTYPE_BF16,
                               FS_DTYPE_F32, FS_ST_DTYPE_F64, FS_ST_DTYPE_U8};
    const void *datas[6] = {a, b, &c, NULL, d, u};
    const size_t nbytes[6] = {24, 16, 2, 0, 24, 3};
    const int32_t ndims[6] = {2, 1, 0, 2, 1, 1};
    for (size_t i = 0; i < 6; i++) {
        const fs_st_tensor *t = fs_safetensors_at(st, i);
        assert_non_null(t);
        assert_string_equal(t->name, names[i]);
        assert_ptr_equal(fs_safetensors_find(st, names[i]), t);
        assert_int_equal(t->dtype, dtypes[i]);
        assert_int_equal(t->ndim, ndims[i]);
        assert_int_equal(t->nbytes, nbytes[i]);
        if (nbytes[i]) assert_memory_equal(t->data, datas[i], nbytes[i]);
        assert_int_equal((uintptr_t)t->data % fs_safetensors_dtype_size(t->dtype), 0);
    }
    assert_null(fs_safetensors_at(st, 6));
    const fs_st_tensor *ta = fs_safetensors_find(st, "a");
    assert_int_equal(ta->shape[0], 2);
    assert_int_equal(ta->shape[1], 3);
    assert_true(((const float *)ta->data)[2] == 3.25f);
    assert_int_equal(fs_safetensors_find(st, "empty")->shape[1], 5);
    assert_int_equal(fs_safetensors_find(st, "d")->shape[0], 3);
    assert_null(fs_safetensors_find(st, "nope"));
    assert_null(fs_safetensors_find(st, "__metadata__"));
    assert_string_equal(fs_safetensors_metadata(st, "config"), config);
    assert_string_equal(fs_safetensors_metadata(st, "unicode"), uni);
    assert_string_equal(fs_safetensors_metadata(st, "empty"), "");
    assert_null(fs_safetensors_metadata(st, "nope"));
    fs_safetensors_close(st);
}

/* One F32 tensor "a" = {1, 2}: the header is 54 bytes of JSON, padded with
 * two spaces to 56 so the data starts at byte 64. */
static void test_exact_bytes(void **state) {
    fixture *f = *state;
    const char *path = at(f, "a.safetensors");
    static const unsigned char expected[] =
        "\x38\0\0\0\0\0\0\0"
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}  "
        "\x00\x00\x80\x3f\x00\x00\x00\x40";
    float a[2] = {1.0f, 2.0f};
    size_t shape[1] = {2};
    fs_error err;
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_writer_create(&w, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "a", FS_DTYPE_F32, 1, shape, a, &err), 0);
    assert_int_equal(fs_safetensors_writer_write(w, path, &err), 0);
    fs_safetensors_writer_destroy(w);
    size_t n;
    unsigned char *got = read_bytes(path, &n);
    assert_int_equal(n, 72);
    assert_int_equal(sizeof expected - 1, 72);
    assert_memory_equal(got, expected, 72);
    free(got);
}

/* Metadata only: quote, backslash, newline, a control character, '/' and
 * UTF-8 (kept raw) escaped as JSON requires; 41 bytes padded to 48. */
static void test_exact_bytes_metadata_escapes(void **state) {
    fixture *f = *state;
    const char *path = at(f, "m.safetensors");
    static const char expected[] = "\x30\0\0\0\0\0\0\0"
                                   "{\"__metadata__\":{\"k\":\"q\\\"\\\\\\n\\u0001/\xc3\xa9\"}}       ";
    fs_error err;
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_writer_create(&w, &err), 0);
    assert_int_equal(fs_safetensors_writer_metadata(w, "k", "q\"\\\n\x01/\xc3\xa9", &err), 0);
    assert_int_equal(fs_safetensors_writer_write(w, path, &err), 0);
    fs_safetensors_writer_destroy(w);
    size_t n;
    unsigned char *got = read_bytes(path, &n);
    assert_int_equal(sizeof expected - 1, 56);
    assert_int_equal(n, 56);
    assert_memory_equal(got, expected, 56);
    free(got);

    /* An empty writer gives the smallest valid file: "{}" and 6 spaces. */
    w = NULL;
    assert_int_equal(fs_safetensors_writer_create(&w, &err), 0);
    assert_int_equal(fs_safetensors_writer_write(w, path, &err), 0);
    fs_safetensors_writer_destroy(w);
    got = read_bytes(path, &n);
    assert_int_equal(n, 16);
    assert_memory_equal(got, "\x08\0\0\0\0\0\0\0{}      ", 16);
    free(got);
    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_open(&st, path, &err), 0);
    assert_int_equal(fs_safetensors_count(st), 0);
    assert_null(fs_safetensors_at(st, 0));
    assert_null(fs_safetensors_find(st, "a"));
    assert_null(fs_safetensors_metadata(st, "k"));
    fs_safetensors_close(st);
}

/* As Python's safetensors writes it: "__metadata__" first, but here with a
 * header length that is not padded to 8, so the data area starts at an odd
 * offset in the file and must still come back aligned. */
static void test_read_foreign_file(void **state) {
    fixture *f = *state;
    const char *path = at(f, "foreign.safetensors");
    const char *header = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"w\\u00e9\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                         "\"b\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[16,24]}}";
    assert_int_not_equal((8 + strlen(header)) % 8, 0);
    unsigned char data[24];
    float w[4] = {0.5f, -1.0f, 2.0f, 4.0f};
    for (int i = 0; i < 4; i++) {
        uint32_t bits;
        memcpy(&bits, &w[i], 4);
        for (int k = 0; k < 4; k++) data[4 * i + k] = (unsigned char)(bits >> (8 * k));
    }
    int64_t bv = -5;
    for (int k = 0; k < 8; k++) data[16 + k] = (unsigned char)((uint64_t)bv >> (8 * k));
    write_st(path, header, data, sizeof data);

    fs_error err;
    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_open(&st, path, &err), 0);
    assert_int_equal(fs_safetensors_count(st), 2);
    const fs_st_tensor *t0 = fs_safetensors_at(st, 0), *t1 = fs_safetensors_at(st, 1);
    assert_string_equal(t0->name, "w\xc3\xa9");
    assert_string_equal(t1->name, "b");
    assert_ptr_equal(fs_safetensors_find(st, "w\xc3\xa9"), t0);
    assert_int_equal(t0->ndim, 2);
    assert_int_equal((uintptr_t)t0->data % 4, 0);
    assert_memory_equal(t0->data, w, 16);
    assert_int_equal(t1->dtype, FS_ST_DTYPE_I64);
    assert_int_equal(t1->ndim, 0);
    assert_int_equal(t1->nbytes, 8);
    assert_int_equal((uintptr_t)t1->data % 8, 0);
    assert_int_equal(*(const int64_t *)t1->data, -5);
    assert_string_equal(fs_safetensors_metadata(st, "format"), "pt");
    fs_safetensors_close(st);
}

/* Whitespace anywhere, escapes of every kind, unknown keys with any JSON
 * value, and zero-length spans inside other spans are all accepted. */
static void test_read_lenient_json(void **state) {
    fixture *f = *state;
    const char *path = at(f, "ws.safetensors");
    const char *header = " \n{ \"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\" :\r\n"
                         "  { \"extra\" : [1, -2.5e+3, 0.0, true, false, null, {\"k\": [\"v\", {}]}, []],"
                         " \"data_offsets\" : [ 0 , 4 ] , \"shape\":[ 1 ],\"dtype\" : \"I32\" } ,\n"
                         "\t\"z\":{\"dtype\":\"BOOL\",\"shape\":[0],\"data_offsets\":[2,2]},"
                         "\"__metadata__\" : { } }\t \n ";
    int32_t v = 42;
    write_st(path, header, &v, 4);
    fs_error err;
    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_open(&st, path, &err), 0);
    assert_int_equal(fs_safetensors_count(st), 2);
    const fs_st_tensor *t = fs_safetensors_at(st, 0);
    assert_string_equal(t->name, "x\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
    assert_int_equal(*(const int32_t *)t->data, 42);
    assert_int_equal(fs_safetensors_at(st, 1)->dtype, FS_ST_DTYPE_BOOL);
    assert_int_equal(fs_safetensors_at(st, 1)->nbytes, 0);
    fs_safetensors_close(st);
}

static void test_truncated(void **state) {
    fixture *f = *state;
    const char *path = at(f, "t.safetensors");
    float a[16] = {0};
    size_t shape[1] = {16};
    fs_error err;
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_writer_create(&w, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "a", FS_DTYPE_F32, 1, shape, a, &err), 0);
    assert_int_equal(fs_safetensors_writer_write(w, path, &err), 0);
    fs_safetensors_writer_destroy(w);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    /* cut inside the data, then inside the header */
    assert_int_equal(truncate(path, sb.st_size - 10), 0);
    expect_open_fails(path, FS_ERR_INVALID, "truncated: header says 64 bytes of data but the file has 54");
    assert_int_equal(truncate(path, 20), 0);
    expect_open_fails(path, FS_ERR_INVALID, "truncated");
}

static void test_not_safetensors(void **state) {
    fixture *f = *state;
    const char *text = "this is definitely not a safetensors file\n";
    write_bytes(at(f, "garbage.bin"), text, strlen(text));
    expect_open_fails(f->path, FS_ERR_INVALID, "not a safetensors file: header length");
    write_bytes(at(f, "short.bin"), "abc", 3);
    expect_open_fails(f->path, FS_ERR_INVALID, "not a safetensors file");
    write_bytes(at(f, "empty.bin"), "", 0);
    expect_open_fails(f->path, FS_ERR_INVALID, "not a safetensors file");
    /* a plausible length whose header is not JSON */
    write_st(at(f, "text.bin"), "hello, world", NULL, 0);
    expect_open_fails(f->path, FS_ERR_INVALID, "not a safetensors file");
}

static void test_header_length_exceeds_file(void **state) {
    fixture *f = *state;
    unsigned char buf[10] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    write_bytes(at(f, "huge.bin"), buf, sizeof buf);
    expect_open_fails(f->path, FS_ERR_INVALID, "header length 18446744073709551615 exceeds file size 10");
    buf[0] = 100;
    memset(buf + 1, 0, 7);
    write_bytes(at(f, "long.bin"), buf, sizeof buf);
    expect_open_fails(f->path, FS_ERR_INVALID, "truncated: header length is 100");
    buf[0] = 0;
    write_bytes(at(f, "zero.bin"), buf, sizeof buf);
    expect_open_fails(f->path, FS_ERR_INVALID, "not a safetensors file");
}

static void test_bad_json(void **state) {
    fixture *f = *state;
    static const char *const bad[] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":tru}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1.}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1e}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":[1 2]}}",
        "{\"a\":{\"dtype\":F32,\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\" {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{'a':{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a:{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\ud800\\u0041\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\udc00\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\u12g4\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\tb\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":[\"dtype\",\"F32\"]}",
        "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
        "[{\"a\":1}]",
        "\"a\"",
        "{}{}",
    };
    uint8_t data[4] = {0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%zu.safetensors", i);
        write_st(at(f, name), bad[i], data, sizeof data);
        expect_open_fails(f->path, FS_ERR_INVALID, ": ");
    }
    /* deep nesting under an unknown key is refused, not a stack overflow */
    char deep[4096];
    size_t n = (size_t)snprintf(deep, sizeof deep,
                                "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4],\"x\":");
    for (int i = 0; i < 1000; i++) deep[n++] = '[';
    deep[n] = '\0';
    write_st(at(f, "deep.safetensors"), deep, data, sizeof data);
    expect_open_fails(f->path, FS_ERR_INVALID, "nesting too deep");
    /* and the same JSON, well-formed, is fine (so the list above fails for
     * the one thing each entry breaks) */
    write_st(at(f, "good.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             data, sizeof data);
    fs_safetensors *st = NULL;
    fs_error err;
    assert_int_equal(fs_safetensors_open(&st, f->path, &err), 0);
    fs_safetensors_close(st);
}

static void test_unknown_dtype(void **state) {
    fixture *f = *state;
    uint8_t data[4] = {0};
    write_st(at(f, "dt.safetensors"), "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}",
             data, 4);
    expect_open_fails(f->path, FS_ERR_INVALID, "tensor 'w': unknown dtype \"F8_E4M3\"");
    write_st(at(f, "dt2.safetensors"), "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             data, 4);
    expect_open_fails(f->path, FS_ERR_INVALID, "unknown dtype \"f32\"");
}

static void test_size_mismatch(void **state) {
    fixture *f = *state;
    uint8_t data[16] = {0};
    write_st(at(f, "mm.safetensors"), "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",
             data, 16);
    expect_open_fails(f->path, FS_ERR_INVALID, "tensor 'w': shape and dtype F32 need 12 bytes");
    write_st(at(f, "mm2.safetensors"), "{\"w\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
             data, 16);
    expect_open_fails(f->path, FS_ERR_INVALID, "need 8 bytes but data_offsets [0, 16] span 16");
    write_st(at(f, "ovf.safetensors"),
             "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", data,
             16);
    expect_open_fails(f->path, FS_ERR_INVALID, "overflows");
}

static void test_bad_spans(void **state) {
    fixture *f = *state;
    uint8_t data[16] = {0};
    write_st(at(f, "ov.safetensors"),
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
             data, 16);
    expect_open_fails(f->path, FS_ERR_INVALID, "tensors 'a' [0, 8] and 'b' [4, 12] overlap");
    /* a span inside another, listed first */
    write_st(at(f, "ov2.safetensors"),
             "{\"in\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[6,8]},"
             "\"out\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]}}",
             data, 16);
    expect_open_fails(f->path, FS_ERR_INVALID, "overlap");
    write_st(at(f, "rev.safetensors"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}",
             data, 16);
    expect_open_fails(f->path, FS_ERR_INVALID, "tensor 'a': data_offsets [8, 4]");
    write_st(at(f, "past.safetensors"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[12,20]}}",
             data, 16);
    expect_open_fails(f->path, FS_ERR_INVALID, "header says 20 bytes of data but the file has 16");
}

static void test_duplicates_and_metadata(void **state) {
    fixture *f = *state;
    uint8_t data[8] = {0};
    write_st(at(f, "dup.safetensors"),
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
             data, 8);
    expect_open_fails(f->path, FS_ERR_INVALID, "duplicate tensor name 'a'");
    write_st(at(f, "dupk.safetensors"),
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"shape\":[4],\"data_offsets\":[0,4]}}", data, 8);
    expect_open_fails(f->path, FS_ERR_INVALID, "tensor 'a': duplicate key 'shape' in its entry");
    write_st(at(f, "dupl.safetensors"),
             "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"a \\\"q\\\" \\u00e9\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
             "\"a \\\"q\\\" \\u00e9\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
             data, 8);
    expect_open_fails(f->path, FS_ERR_INVALID, "duplicate tensor name 'a \"q\" \xc3\xa9'");
    write_st(at(f, "dupm.safetensors"), "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", NULL, 0);
    expect_open_fails(f->path, FS_ERR_INVALID, "duplicate __metadata__ key 'k'");
    write_st(at(f, "dupm2.safetensors"), "{\"__metadata__\":{},\"__metadata__\":{}}", NULL, 0);
    expect_open_fails(f->path, FS_ERR_INVALID, "duplicate \"__metadata__\"");
    write_st(at(f, "mnum.safetensors"), "{\"__metadata__\":{\"step\":100}}", NULL, 0);
    expect_open_fails(f->path, FS_ERR_INVALID, "__metadata__ value for 'step' is not a string");
    write_st(at(f, "marr.safetensors"), "{\"__metadata__\":[\"x\"]}", NULL, 0);
    expect_open_fails(f->path, FS_ERR_INVALID, "\"__metadata__\" must be an object");
}

static void test_missing_file(void **state) {
    fixture *f = *state;
    expect_open_fails(at(f, "nope.safetensors"), FS_ERR_NOT_FOUND, "no such file");
    expect_open_fails(f->dir, FS_ERR_IO, "not a regular file");
    /* a FIFO is refused before it is read: opening it to read would wait
     * for a writer forever (the alarm ends the test if it does) */
    assert_int_equal(mkfifo(at(f, "fifo.safetensors"), 0600), 0);
    alarm(20);
    expect_open_fails(f->path, FS_ERR_IO, "not a regular file");
    expect_open_fails("/dev/zero", FS_ERR_IO, "not a regular file");
    alarm(0);
}

/* A file in memory gets the checks a file on disk gets, and the same
 * tensors and metadata. */
static void test_open_memory(void **state) {
    fixture *f = *state;
    const char *path = at(f, "m.safetensors");
    float a[3] = {1, 2, 3};
    size_t shape[1] = {3};
    fs_error err;
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_writer_create(&w, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "a", FS_DTYPE_F32, 1, shape, a, &err), 0);
    assert_int_equal(fs_safetensors_writer_metadata(w, "step", "7", &err), 0);
    assert_int_equal(fs_safetensors_writer_write(w, path, &err), 0);
    fs_safetensors_writer_destroy(w);
    size_t n;
    unsigned char *bytes = read_bytes(path, &n);
    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_open_memory(&st, "mem", bytes, n, &err), 0);
    assert_string_equal(fs_safetensors_metadata(st, "step"), "7");
    assert_memory_equal(fs_safetensors_find(st, "a")->data, a, sizeof a);
    fs_safetensors_close(st);
    for (size_t cut = 0; cut < n; cut += 7) { /* every truncation fails, naming the buffer */
        assert_int_equal(fs_safetensors_open_memory(&st, "mem", bytes, cut, &err), FS_ERR_INVALID);
        assert_null(st);
        assert_non_null(strstr(err.message, "mem: "));
    }
    free(bytes);
}

static void write_one(const char *path, const float *data, size_t n, fs_error *err, int expect_rc) {
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_writer_create(&w, err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "w", FS_DTYPE_F32, 1, &n, data, err), 0);
    assert_int_equal(fs_safetensors_writer_metadata(w, "note", "new", err), 0);
    memset(err, 0, sizeof *err);
    assert_int_equal(fs_safetensors_writer_write(w, path, err), expect_rc);
    fs_safetensors_writer_destroy(w);
    if (expect_rc) {
        assert_int_equal(err->status, expect_rc);
        assert_non_null(strstr(err->message, path));
        if (getenv("FS_TEST_VERBOSE")) print_message("%s\n", err->message);
    }
}

static void test_write_unwritable(void **state) {
    fixture *f = *state;
    float v[4] = {1, 2, 3, 4};
    fs_error err;
    write_one(at(f, "missing/dir/model.safetensors"), v, 4, &err, FS_ERR_IO);
    assert_non_null(strstr(err.message, strerror(ENOENT)));
    assert_int_equal(count_entries(f->dir, NULL), 0);

    write_bytes(at(f, "file"), "x", 1);
    write_one(at(f, "file/model.safetensors"), v, 4, &err, FS_ERR_IO);
    assert_non_null(strstr(err.message, strerror(ENOTDIR)));

    /* The target is a non-empty directory: the temporary file is written
     * but cannot be renamed over it, and must not be left behind. */
    char sub[300];
    snprintf(sub, sizeof sub, "%s/ckpt", f->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    write_bytes(at(f, "ckpt/keep"), "old", 3);
    write_one(sub, v, 4, &err, FS_ERR_IO);
    assert_non_null(strstr(err.message, "unchanged"));
    assert_int_equal(count_entries(f->dir, ".tmp."), 2);
    assert_int_equal(count_entries(sub, NULL), 1);

    /* A read-only directory holding an old checkpoint (root ignores
     * permissions, so this part only runs unprivileged). */
    if (geteuid() == 0) return;
    char ro[300];
    snprintf(ro, sizeof ro, "%s/ro", f->dir);
    assert_int_equal(mkdir(ro, 0700), 0);
    const char *old = at(f, "ro/model.safetensors");
    write_bytes(old, "old checkpoint bytes", 20);
    char oldpath[300];
    snprintf(oldpath, sizeof oldpath, "%s", old);
    assert_int_equal(chmod(ro, 0500), 0);
    write_one(oldpath, v, 4, &err, FS_ERR_IO);
    assert_non_null(strstr(err.message, strerror(EACCES)));
    size_t n;
    unsigned char *got = read_bytes(oldpath, &n);
    assert_int_equal(n, 20);
    assert_memory_equal(got, "old checkpoint bytes", 20);
    free(got);
    assert_int_equal(count_entries(ro, ".tmp."), 1);
}

/* A full disk, simulated with a file size limit in a child process: the
 * write fails with EFBIG part-way through the data, the old checkpoint is
 * byte-identical afterwards and no temporary file remains. */
static void test_write_disk_full(void **state) {
    fixture *f = *state;
    char path[300];
    snprintf(path, sizeof path, "%s/model.safetensors", f->dir);
    float small[4] = {1, 2, 3, 4};
    fs_error err;
    write_one(path, small, 4, &err, 0);
    size_t old_n;
    unsigned char *old = read_bytes(path, &old_n);

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        struct rlimit rl = {16384, 16384};
        signal(SIGXFSZ, SIG_IGN);
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(10);
        size_t n = 65536;
        float *big = calloc(n, sizeof *big);
        fs_safetensors_writer *w = NULL;
        if (!big || fs_safetensors_writer_create(&w, &err) ||
            fs_safetensors_writer_add(w, "w", FS_DTYPE_F32, 1, &n, big, &err))
            _exit(11);
        int rc = fs_safetensors_writer_write(w, path, &err);
        fs_safetensors_writer_destroy(w);
        free(big);
        if (write(fds[1], err.message, strlen(err.message) + 1) < 0) _exit(12);
        _exit(rc == FS_ERR_IO && err.status == FS_ERR_IO ? 0 : 13);
    }
    close(fds[1]);
    char msg[600] = {0};
    size_t len = 0;
    ssize_t r;
    while (len < sizeof msg - 1 && (r = read(fds[0], msg + len, sizeof msg - 1 - len)) > 0) len += (size_t)r;
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    if (getenv("FS_TEST_VERBOSE")) print_message("%s\n", msg);
    assert_non_null(strstr(msg, path));
    assert_non_null(strstr(msg, strerror(EFBIG)));
    assert_non_null(strstr(msg, "unchanged"));

    size_t n;
    unsigned char *now = read_bytes(path, &n);
    assert_int_equal(n, old_n);
    assert_memory_equal(now, old, n);
    free(now);
    free(old);
    assert_int_equal(count_entries(f->dir, ".tmp."), 1);
}

/* A PID that was a process's and is no one's now (a child, reaped). */
static pid_t dead_pid(void) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(0);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return pid;
}

/* A write killed half-way leaves NAME.tmp.PID: the next write of NAME
 * removes it when PID's process is gone, and leaves a live process's and
 * other files' temporary files alone. */
static void test_write_removes_stale_temps(void **state) {
    fixture *f = *state;
    char dead[320], live[320], other[320], odd[320];
    snprintf(dead, sizeof dead, "%s/model.safetensors.tmp.%ld", f->dir, (long)dead_pid());
    snprintf(live, sizeof live, "%s/model.safetensors.tmp.%ld", f->dir, (long)getppid());
    snprintf(other, sizeof other, "%s/training_state.safetensors.tmp.%ld", f->dir, (long)dead_pid());
    snprintf(odd, sizeof odd, "%s/model.safetensors.tmp.12ab", f->dir);
    const char *const made[] = {dead, live, other, odd};
    for (size_t i = 0; i < 4; i++) write_bytes(made[i], "half a checkpoint", 17);
    float v[4] = {1, 2, 3, 4};
    fs_error err;
    write_one(at(f, "model.safetensors"), v, 4, &err, 0);
    struct stat st;
    assert_int_equal(stat(dead, &st), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(stat(live, &st), 0);
    assert_int_equal(stat(other, &st), 0); /* another path's: its own writer removes it */
    assert_int_equal(stat(odd, &st), 0);   /* not a PID: not ours to judge */
    /* the model file, and the three kept */
    assert_int_equal(count_entries(f->dir, NULL), 4);
}

static void test_writer_rejects(void **state) {
    fixture *f = *state;
    float v[2] = {1, 2};
    size_t s1[1] = {2}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 2};
    size_t huge[2] = {SIZE_MAX / 2, 4};
    fs_error err;
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_writer_create(&w, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "v", FS_DTYPE_F32, 1, s1, v, &err), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "v", FS_DTYPE_F32, 1, s1, v, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "'v' added twice"));
    assert_int_equal(fs_safetensors_writer_add(w, "x", FS_DTYPE_F32, 9, s9, v, &err), FS_ERR_INVALID);
    assert_int_equal(fs_safetensors_writer_add(w, "x", FS_DTYPE_F32, -1, s1, v, &err), FS_ERR_INVALID);
    assert_int_equal(fs_safetensors_writer_add(w, "x", 77, 1, s1, v, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "unknown dtype 77"));
    assert_int_equal(fs_safetensors_writer_add(w, "x", FS_DTYPE_F32, 1, s1, NULL, &err), FS_ERR_INVALID);
    assert_int_equal(fs_safetensors_writer_add(w, "x", FS_DTYPE_F32, 2, huge, v, &err), FS_ERR_INVALID);
    assert_int_equal(fs_safetensors_writer_add(w, "", FS_DTYPE_F32, 1, s1, v, &err), FS_ERR_INVALID);
    assert_int_equal(fs_safetensors_writer_add(w, "__metadata__", FS_DTYPE_F32, 1, s1, v, &err),
                     FS_ERR_INVALID);
    assert_int_equal(fs_safetensors_writer_add(w, "x\xff", FS_DTYPE_F32, 1, s1, v, &err), FS_ERR_INVALID);
    assert_int_equal(fs_safetensors_writer_add(w, NULL, FS_DTYPE_F32, 1, s1, v, &err), FS_ERR_INVALID);
    assert_int_equal(fs_safetensors_writer_metadata(w, "k", "\xc3", &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "not valid UTF-8"));
    assert_int_equal(fs_safetensors_writer_metadata(w, NULL, "v", &err), FS_ERR_INVALID);
    /* the failures left the writer usable and unchanged */
    const char *path = at(f, "ok.safetensors");
    assert_int_equal(fs_safetensors_writer_write(w, path, &err), 0);
    fs_safetensors_writer_destroy(w);
    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_open(&st, path, &err), 0);
    assert_int_equal(fs_safetensors_count(st), 1);
    assert_null(fs_safetensors_metadata(st, "k"));
    fs_safetensors_close(st);
    fs_safetensors_close(NULL);
    fs_safetensors_writer_destroy(NULL);
}

static void test_dtype_table(void **state) {
    (void)state;
    static const struct {
        int32_t dtype;
        const char *name;
        size_t size;
    } want[] = {
        {FS_DTYPE_F32, "F32", 4},      {FS_DTYPE_F16, "F16", 2},    {FS_DTYPE_BF16, "BF16", 2},
        {FS_DTYPE_I32, "I32", 4},      {FS_ST_DTYPE_F64, "F64", 8}, {FS_ST_DTYPE_I64, "I64", 8},
        {FS_ST_DTYPE_U8, "U8", 1},     {FS_ST_DTYPE_I8, "I8", 1},   {FS_ST_DTYPE_I16, "I16", 2},
        {FS_ST_DTYPE_BOOL, "BOOL", 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_string_equal(fs_safetensors_dtype_name(want[i].dtype), want[i].name);
        assert_int_equal(fs_safetensors_dtype_size(want[i].dtype), want[i].size);
    }
    assert_null(fs_safetensors_dtype_name(-1));
    assert_int_equal(fs_safetensors_dtype_size(99), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exact_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exact_bytes_metadata_escapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_foreign_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_lenient_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_safetensors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_length_exceeds_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_dtype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_spans, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_and_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_unwritable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_disk_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_removes_stale_temps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_rejects, setup, teardown),
        cmocka_unit_test(test_dtype_table),
    };
    return cmocka_run_group_tests_name("safetensors", tests, NULL, NULL);
}
