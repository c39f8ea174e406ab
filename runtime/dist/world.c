/* world.c — see world.h. */
#include "dist/world.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/comm_mpi.h"
#include "dist/comm_self.h"
#include "core/host.h"

/* Until a strategy sets [parallel] timeout: long enough for any set-up. */
#define FS_WORLD_DEFAULT_TIMEOUT_S 300.0

static fs_comm g_comm;
static int g_ready, g_mpi, g_rank, g_size = 1, g_local = 1, g_local_rank;
static int g_silent; /* the last failed agreement left the report to another rank */
static int g_failed_code, g_in_work;

static int env_int(const char *name, int *out) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < 0 || x > 1 << 30) return 0;
    *out = (int)x;
    return 1;
}

int fs_world_launched_size(void) {
    int n;
    if (env_int("OMPI_COMM_WORLD_SIZE", &n) || env_int("PMI_SIZE", &n)) return n;
    if (getenv("PMIX_RANK") || getenv("PMI_RANK")) return -1;
    return 0;
}

static void ensure_self(void) {
    if (g_ready) return;
    fs_comm_self_init(&g_comm);
    g_ready = 1;
}

int fs_world_start(fs_error *err) {
    ensure_self();
    int launched = fs_world_launched_size();
    if (launched == 0 || g_mpi) return FS_OK;
    if (!fs_comm_mpi_available()) {
        int r = 0;
        int other_rank = (env_int("PMIX_RANK", &r) && r > 0) || (env_int("PMI_RANK", &r) && r > 0);
        if (launched == 1 || (launched < 0 && !other_rank))
            return FS_OK; /* one rank (as far as we can tell): the self communicator is the same thing */
        char n[32] = "several";
        if (launched > 0) snprintf(n, sizeof n, "%d", launched);
        return fs_error_set(err, FS_ERR_UNSUPPORTED,
                            "launched by mpirun as one of %s ranks, but this fsrun was built without MPI: install "
                            "openmpi-bin and libopenmpi-dev (scripts/setup.sh does) and rebuild, or run fsrun "
                            "without mpirun",
                            n);
    }
    fs_comm c;
    int rc = fs_comm_mpi_start(&c, FS_WORLD_DEFAULT_TIMEOUT_S, err);
    if (rc) return rc;
    g_comm = c;
    g_mpi = 1;
    g_rank = c.rank(&c, NULL);
    g_size = c.size(&c, NULL);
    int local;
    g_local = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", &local) && local > 0 ? local : fs_comm_mpi_local_size(&c);
    if (g_local < 1) g_local = 1;
    g_local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", &local) && local >= 0 ? local : fs_comm_mpi_local_rank(&c);
    if (g_local_rank >= g_local) g_local_rank = 0;
    return FS_OK;
}

void fs_world_stop(void) {
    if (g_mpi) fs_comm_mpi_finish(&g_comm);
    g_mpi = 0;
    g_ready = 0;
    g_rank = 0;
    g_size = g_local = 1;
    g_local_rank = 0;
    g_silent = g_failed_code = g_in_work = 0;
}

fs_comm *fs_world_comm(void) {
    ensure_self();
    return &g_comm;
}

int fs_world_rank(void) { return g_rank; }
int fs_world_size(void) { return g_size; }
int fs_world_local_size(void) { return g_local; }
int fs_world_local_rank(void) { return g_local_rank; }

int fs_world_agree(int rc, int code, int *exit_code, fs_error *err) {
    *exit_code = rc ? code : 0;
    g_silent = 0;
    if (g_size == 1) return rc;
    /* MAX of (failed, exit code, succeeded): any failure, the worst code,
     * and whether anyone succeeded (if not, all found the same error) */
    int32_t v[3] = {rc != 0, rc ? code : 0, rc == 0};
    fs_tensor t = fs_tensor_cpu_f32(NULL, 1, 3, 0, 0, 0);
    t.data = v;
    t.dtype = FS_DTYPE_I32;
    fs_error cerr = {0};
    if (g_comm.all_reduce(&g_comm, NULL, &t, FS_REDUCE_MAX, &cerr)) {
        g_in_work = 1; /* no agreement possible: this rank ends the job */
        if (!rc) {
            *err = cerr;
            *exit_code = 1;
            return cerr.status;
        }
        return rc; /* our own error is the better message */
    }
    if (!v[0]) return FS_OK;
    *exit_code = g_failed_code = v[1];
    if (rc) {
        g_silent = !v[2] && g_rank != 0;
        return rc;
    }
    g_silent = 1;
    return fs_error_set(err, FS_ERR_COMM, "set-up failed on another rank (it printed why)");
}

int fs_world_failed_code(void) { return g_failed_code; }
void fs_world_begin_work(void) { g_in_work = 1; }
int fs_world_in_work(void) { return g_in_work; }

void fs_world_report(const fs_error *err) {
    if (g_silent) return;
    if (g_size > 1)
        fprintf(stderr, "fsrun: rank %d: %s\n", g_rank, err->message);
    else
        fprintf(stderr, "fsrun: %s\n", err->message);
    fflush(stderr);
}

void fs_world_abort(int code) {
    if (g_mpi && g_size > 1) fs_comm_mpi_abort(&g_comm, code);
}
