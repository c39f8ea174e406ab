/* fuzz_safetensors.c — the safetensors reader (fs_safetensors_open_memory:
 * the checks a file on disk gets) on arbitrary bytes. A file is refused
 * with a one-line message, or every tensor it lists is findable by name,
 * its bytes lie inside the data and are readable, and its shape times its
 * dtype's size is its byte count. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_safetensors: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fs_safetensors *st = NULL;
    fs_error err = {0};
    if (fs_safetensors_open_memory(&st, "fuzz.safetensors", data, size, &err)) {
        check(st == NULL, "a refused file handed out");
        check(!strncmp(err.message, "fuzz.safetensors: ", 18), "a message that does not name the file");
        check(strchr(err.message, '\n') == NULL, "a message with a line break");
        return 0;
    }
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        const fs_st_tensor *t = fs_safetensors_at(st, i);
        check(fs_safetensors_find(st, t->name) == t, "a tensor not found by its name");
        size_t n = fs_safetensors_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
        check(n == t->nbytes, "shape x dtype size is not the byte count");
        if (t->nbytes) sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    check(fs_safetensors_at(st, fs_safetensors_count(st)) == NULL, "a tensor past the end");
    (void)fs_safetensors_metadata(st, "format");
    (void)sink;
    fs_safetensors_close(st);
    return 0;
}
