/* test_device.c — [run] device and [backend] plugin: the forms device
 * takes, the CPU sessions it opens, which backend a mode that can use one
 * gets (none, the named one, auto's), and the refusals of CUDA, each
 * naming the key, the value and why: a bad value, a [backend] that is
 * missing or serves another device, no cuda backend in a CPU-only build,
 * no device visible, an index past the last one. */
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

/* Every session's own model is on the CPU (a backend's model is the train
 * mode's: modes/train_device.c), and its attention instances are told so. */
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
                       "backend 'cpu' serves cpu devices, and [run] device asks for cuda");
    /* its keys are checked on the CPU too */
    test_session_error(MODEL "[backend]\nplugn = cuda\n", "test.ini:7: [backend] plugn = cuda", "unknown key");
}

/* Which backend training gets: none on the CPU unless [backend] names
 * one; the named one, on its own device type, with device = auto too;
 * auto's own choice is cuda:0 only where a device is visible. */
static void test_backend_for_training(void **state) {
    (void)state;
    static const struct {
        const char *extra;
        int asked;
        const char *plugin; /* NULL: the runtime's own kernels; "auto": cuda where visible */
    } cases[] = {
        {"", 0, "auto"},
        {"[run]\ndevice = cpu\n", 0, NULL},
        {"[run]\ndevice = cpu\n[backend]\nplugin = cpu\n", 1, "cpu"},
        {"[backend]\nplugin = cpu\n", 1, "cpu"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char ini[512];
        snprintf(ini, sizeof ini, "%s%s", MODEL, cases[i].extra);
        fs_session *s = test_session(ini);
        assert_int_equal(fs_session_backend_asked(s), cases[i].asked);
        const fs_plugin *p = NULL;
        fs_device dev;
        fs_error err = {0};
        assert_int_equal(fs_session_backend(s, &p, &dev, &err), 0);
        if (!cases[i].plugin) {
            assert_null(p);
        } else if (strcmp(cases[i].plugin, "auto") != 0) {
            assert_non_null(p);
            assert_string_equal(p->desc->name, cases[i].plugin);
            assert_int_equal(dev.type, FS_DEVICE_CPU);
        } else if (p) { /* a GPU is visible */
            assert_string_equal(p->desc->name, "cuda");
            assert_int_equal(dev.type, FS_DEVICE_CUDA);
        }
        fs_session_close(s);
    }
}

/* The build's own cuda backend: absent in a CPU-only build; here, with the
 * toolkit and no GPU, no device visible; on a GPU machine an index past
 * the last one. */
static void test_cuda_refused(void **state) {
    (void)state;
#if FS_WITH_CUDA
    fs_graph *g;
    fs_error err = {0};
    assert_int_equal(fs_graph_load_string(&g, "test.ini", MODEL "[run]\ndevice = cuda:7\n", &err), 0);
    fs_session *s = NULL;
    assert_int_equal(fs_session_open(&s, g, &err), FS_ERR_INVALID);
    assert_non_null(strstr(err.message, "test.ini:7: [run] device = cuda:7"));
    if (!strstr(err.message, "no CUDA device is visible") && !strstr(err.message, "cuda:7 asked, but")) {
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
        cmocka_unit_test(test_backend_for_training),
        cmocka_unit_test(test_cuda_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
