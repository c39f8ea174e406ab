/* test_world.h — the cmocka group setup and teardown of tests that run
 * alone (the self communicator) and under mpirun (tests/e2e/mpi.sh's
 * mpi_cmocka): the world started, its communicator with a 10 s timeout,
 * this rank and the world's size. */
#ifndef FS_TEST_WORLD_H
#define FS_TEST_WORLD_H

#include <stdio.h>

#include "dist/world.h"

static fs_comm *g_world;
static int g_rank, g_size;

static int test_world_setup(void **state) {
    (void)state;
    fs_error err = {0};
    if (fs_world_start(&err)) {
        fprintf(stderr, "world: %s\n", err.message);
        return -1;
    }
    g_world = fs_world_comm();
    g_world->timeout_s = 10;
    g_rank = fs_world_rank();
    g_size = fs_world_size();
    return 0;
}

static int test_world_teardown(void **state) {
    (void)state;
    fs_world_stop();
    return 0;
}

#endif
