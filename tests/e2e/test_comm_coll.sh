#!/usr/bin/env bash
# The device-buffer communicator (runtime/dist/comm_coll.c) on real MPI
# worlds of 2 and 3 ranks: tests/unit/test_comm_coll.c (which ctest also
# runs alone, on the self communicator) under mpirun. Its fake backend's
# collectives are MPI's, so each rank checks the bootstrap, every
# collective, the grouped sends and receives of a pipeline exchange, even
# and odd groups, ordering against the compute stream and the failure
# paths against values it computes by hand; every rank must pass.
HERE="$(cd "$(dirname "$0")" && pwd)" # lib.sh moves to the scratch directory
. "$HERE/lib.sh"
. "$HERE/mpi.sh"
mpi_require

PROBE="$FS_BUILD_DIR/tests/test_comm_coll"
N_TESTS=13 # test_comm_coll.c's main()
[ -x "$PROBE" ] || die "$PROBE was not built"
for np in 2 3; do
    MPI_TIMEOUT=120 mpi_exec "$np" "$PROBE"
    want=""
    for ((r = 0; r < np; r++)); do want="$want $r:0"; done
    passed=$(grep -c "^\[  PASSED  \] $N_TESTS test(s)" "$E2E_ERR" || true) # cmocka reports on stderr
    if [ "$E2E_RC" -eq 0 ] && [ "$(mpi_rank_rcs)" = "${want# }" ] && [ "$passed" -eq "$np" ]; then
        ok "$np ranks: every rank passes its $N_TESTS tests"
    else
        fail "$np ranks: mpirun exited $E2E_RC, ranks $(mpi_rank_rcs)"
        grep -E '^\[  (FAILED|ERROR) |rank [0-9]|fail|error' "$E2E_OUT" "$E2E_ERR" | head -n 20 | sed 's/^/     | /'
        break # the other ranks wait out their timeouts: one failing world is enough
    fi
done

e2e_finish
