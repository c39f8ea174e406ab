#!/usr/bin/env bash
# The communicator and the parallel plugins on real MPI worlds of 2, 3 and
# 4 ranks: tests/unit/test_parallel_mpi.c (which ctest also runs alone, on
# the self communicator) under mpirun. Each rank checks collectives,
# point-to-point calls, gradient buckets, ZeRO shards, the tensor and
# embedding groups and the pipeline schedules against values it computes
# by hand; every rank must pass.
HERE="$(cd "$(dirname "$0")" && pwd)" # lib.sh moves to the scratch directory
. "$HERE/lib.sh"
. "$HERE/mpi.sh"
mpi_require

# test_parallel_mpi.c's main() runs 6 tests
mpi_cmocka "$FS_BUILD_DIR/tests/test_parallel_mpi" 6 2 3 4

e2e_finish
