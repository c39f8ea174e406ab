/* test_device.c — [run] device: the forms it takes, the CPU sessions it
 * opens, and the refusals of CUDA, each naming the key, the value and why:
 * a bad value, a [backend] that is missing or serves another device, no
 * cuda backend in a CPU-only build, no device visible, an index past the
 * last one. */
#include "session/device.h"
#include "test_util.h"

#define MODEL "[model]\nn_layer = 1\nn_head = 2\nn_embd = 8\nmax_seq = 8\n"

static void test_parse(void **state) {
    (void)state;
    static const struct {
        const char *text;
        int ok, automatic, type, index;
    } cases[] = {
        {"auto", 1, 1, 0, 0},       {"cpu", 1, 0, FS_DEVICE_CPU, 0},    {"cuda", 1, 0, FS_DEVICE_CUDA, 0},
        {"cuda:0", 1, 0, FS_DEVICE_CUDA, 0}, {"cuda:13", 1, 0, FS_DEVICE_CUDA, 13},
        {"", 0, 0, 0, 0},           {"gpu", 0, 0, 0, 0},                {"CUDA", 0, 0, 0, 0},
        {"cuda:", 0, 0, 0, 0},      {"cuda:-1", 0, 0, 0, 0},            {"cuda:1x", 0, 0, 0, 0},
        {"cuda0", 0, 0, 0, 0},      {"cpu:0", 0, 0, 0, 0},              {"cuda:99999999999", 0, 0, 0, 0},
        {"cudax", 0, 0, 0, 0},      {"auto:1", 0, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fs_device_request r;
        int rc = fs_device_parse(cases[i].text, &r);
        if ((rc == 0) != cases[i].ok) {
            fprintf(stderr, "'%s': parse returned %d\n", cases[i].text, rc);
            fail();
        }
        if (!cases[i].ok) continue;
        assert_int_equal(r.automatic, cases[i].automatic);
        if (r.automatic) continue;
        assert_int_equal(r.device.type, cases[i].type);
        assert_int_equal(r.device.index, cases[i].index);
    }
}

/* cpu and auto open on the CPU (auto stays there while the model cannot
 * run on a GPU), and the attention instances are told so. */
static void test_cpu_sessions(void **state) {
    (void)state;
    const char *inis[] = {MODEL, MODEL "[run]\ndevice = cpu\n", MODEL "[run]\ndevice = auto\n"};
    for (size_t i = 0; i < 3; i++) {
        fs_session *s = test_session(inis[i]);
        assert_int_equal(s->device.type, FS_DEVICE_CPU);
        assert_int_equal(s->device.index, 0);
        fs_session_close(s);
    }
}

static void test_bad_value(void **state) {
    (void)state;
    test_session_error(MODEL "[run]\ndevice = gpu\n", "test.ini:7: [run] device = gpu", "is not a device");
    test_session_error(MODEL "[run]\ndevice = cuda:x\n", "'cuda:x' is not a device", "cuda:N");
}

/* What the cuda backend would be is [backend] plugin: a name that is not
 * there, or a backend of another device, is said so in every build. */
static void test_backend_choice(void **state) {
    (void)state;
    test_session_error(MODEL "[run]\ndevice = cuda\n[backend]\nplugin = nosuch\n",
                       "test.ini:9: [backend] plugin = nosuch", "no backend plugin named 'nosuch'");
    test_session_error(MODEL "[run]\ndevice = cuda\n[backend]\nplugin = cpu\n", "[backend] plugin = cpu",
                       "not CUDA");
    /* its keys are checked on the CPU too */
    test_session_error(MODEL "[backend]\nplugn = cuda\n", "test.ini:7: [backend] plugn = cuda", "unknown key");
}

/* The build's own cuda backend: absent in a CPU-only build; here, with the
 * toolkit and no GPU, no device visible; on a GPU machine the device is
 * found and the model's steps are refused. */
static void test_cuda_refused(void **state) {
    (void)state;
#if FS_WITH_CUDA
    fs_graph *g;
    fs_error err = {0};
    assert_int_equal(fs_graph_load_string(&g, "test.ini", MODEL "[run]\ndevice = cuda:7\n", &err), 0);
    fs_session *s = NULL;
    assert_int_equal(fs_session_open(&s, g, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "test.ini:7: [run] device = cuda:7"));
    if (!strstr(err.message, "no CUDA device is visible") && !strstr(err.message, "cuda:7 asked, but") &&
        !strstr(err.message, "do not run on CUDA yet")) {
        fprintf(stderr, "unexpected: %s\n", err.message);
        fail();
    }
#else
    test_session_error(MODEL "[run]\ndevice = cuda:0\n", "test.ini:7: [run] device = cuda:0",
                       "built without the CUDA toolkit");
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_cpu_sessions),
        cmocka_unit_test(test_bad_value),
        cmocka_unit_test(test_backend_choice),
        cmocka_unit_test(test_cuda_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
