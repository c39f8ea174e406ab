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

# test_comm_coll.c's main() runs 13 tests
mpi_cmocka "$FS_BUILD_DIR/tests/test_comm_coll" 13 2 3

e2e_finish
