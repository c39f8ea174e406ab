# mpi.sh — running fsrun under mpirun in the end-to-end tests (sourced after
# lib.sh, not run).
#
#   mpi_require             skip the test (exit 0, saying so) when mpirun is
#                           missing; fail when fsrun was built without MPI
#                           although mpirun is there (setup.sh installs both)
#   mpi_run NP ARGS...      mpirun -np NP fsrun ARGS, stdout/stderr/status as
#                           lib.sh's run keeps them, killed after
#                           $MPI_TIMEOUT s (default 120; status 124) so a
#                           hang fails the test instead of stalling it;
#                           every rank's own exit
#                           status is appended to stderr as
#                           "fsrun-exit rank=R rc=N", and each rank's stderr is
#                           kept in $MPI_LOGS/1/rank.R/stderr
#   mpi_exec NP PROGRAM ARGS...  the same for another program
#   mpi_rank_rcs            "R:N R:N ..." from the last mpi_run
#   same_as REF GOT LABEL [FIRST_STEP]
#                           the runs in directories REF and GOT agree:
#                           losses and gradient norms of every step (from
#                           FIRST_STEP) within 1e-5 relative, final weights
#                           and AdamW moments within 1e-5 (compare.py)
#
# The mpirun flags make it work on a fresh CI machine: as root
# (OMPI_ALLOW_RUN_AS_ROOT), with more ranks than cores (--oversubscribe, no
# binding), and in containers, where cross-memory attach (ptrace) and PMIx's
# shared-memory store are often forbidden (single-copy off, gds = hash).
# Shared memory (vader) and self are the only transports, through the
# ob1 messaging layer (no UCX/InfiniBand probing): one machine.

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
export PMIX_MCA_gds=hash
# no help-page aggregation delays, no "N more processes have sent help
# message" lines held back until exit
export OMPI_MCA_orte_base_help_aggregate=0

MPI_LOGS="$TMP/.mpi_logs"

# In the sanitizer build the ranks keep ASan and UBSan but not LeakSanitizer:
# its tracer crashes (SIGSEGV in StopTheWorld) in processes that run Open
# MPI's helper threads, and Open MPI unloads its components at
# MPI_Finalize, so their one-time allocations show up as "<unknown module>"
# frames that no suppression can name. The single-process runs of the same
# tests (and of the data plugin alone) keep the leak check.
MPI_ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"

mpi_require() {
    if ! command -v mpirun >/dev/null 2>&1; then
        echo "SKIP - mpirun is not installed (scripts/setup.sh installs openmpi-bin)"
        echo "$E2E_NAME: skipped"
        exit 0
    fi
    if ! "$FSRUN" --version | grep -q '^MPI: .*mpirun'; then
        die "mpirun is installed but fsrun was built without MPI (libopenmpi-dev missing at configure time?)"
    fi
}

mpi_run() {
    local np=$1
    shift
    mpi_exec "$np" "$FSRUN" "$@"
}

# mpi_exec NP PROGRAM ARGS...: the same for any program.
mpi_exec() {
    local np=$1
    shift
    rm -rf "$MPI_LOGS"
    run env ASAN_OPTIONS="$MPI_ASAN_OPTIONS" timeout "${MPI_TIMEOUT:-120}" mpirun -np "$np" --oversubscribe --bind-to none --output-filename "$MPI_LOGS" \
        sh -c '"$0" "$@"; rc=$?; echo "fsrun-exit rank=$OMPI_COMM_WORLD_RANK rc=$rc" >&2; exit $rc' "$@"
}

mpi_rank_rcs() {
    grep -o 'fsrun-exit rank=[0-9]* rc=[0-9]*' "$E2E_ERR" | sed 's/fsrun-exit rank=\([0-9]*\) rc=\([0-9]*\)/\1:\2/' |
        sort -n | tr '\n' ' ' | sed 's/ $//'
}

# mpi_rank_err R: rank R's own stderr from the last mpi_run.
mpi_rank_err() { cat "$MPI_LOGS/1/rank.$1/stderr" 2>/dev/null || true; }

# mpi_data NP NAME ARGS...: fsrun on NP ranks under the data strategy into
# NAME (the graph g.ini of the scratch directory); it must succeed and its
# summary (printed once, by rank 0) name NP ranks
mpi_data() {
    local np=$1 name=$2
    shift 2
    mpi_run "$np" g.ini --set parallel.plugin=data --set run.out="$name" "$@"
    if [ "$E2E_RC" -ne 0 ]; then
        fail "mpirun -np $np ($name) exited $E2E_RC"
        show_last
        return 0
    fi
    assert_eq "$(json_last "$E2E_OUT" ranks)" "$np" "$name: the summary says $np ranks"
}

# mpi_cmocka PROBE N_TESTS NP...: a cmocka program (one that also runs
# alone on the self communicator) on worlds of each NP ranks; every rank
# must exit 0 having passed all N_TESTS of its tests. Stops at the first
# failing world: its other ranks wait out their timeouts.
mpi_cmocka() {
    local probe=$1 n=$2 np r want passed
    shift 2
    [ -x "$probe" ] || die "$probe was not built"
    for np in "$@"; do
        MPI_TIMEOUT=120 mpi_exec "$np" "$probe"
        want=""
        for ((r = 0; r < np; r++)); do want="$want $r:0"; done
        passed=$(grep -c "^\[  PASSED  \] $n test(s)" "$E2E_ERR" || true) # cmocka reports on stderr
        if [ "$E2E_RC" -eq 0 ] && [ "$(mpi_rank_rcs)" = "${want# }" ] &&
            [ "$passed" -eq "$np" ]; then
            ok "$np ranks: every rank passes its $n tests"
        else
            fail "$np ranks: mpirun exited $E2E_RC, ranks $(mpi_rank_rcs)"
            grep -E '^\[  (FAILED|ERROR) |rank [0-9]|fail|error' "$E2E_OUT" "$E2E_ERR" | head -n 20 |
                sed 's/^/     | /'
            break
        fi
    done
}

COMPARE="python3 $FS_SOURCE_DIR/tests/e2e/compare.py"

same_as() {
    if $COMPARE losses "$1/metrics.jsonl" "$2/metrics.jsonl" 1e-5 "${4:-1}" >cmp.txt; then ok "$3: losses within 1e-5 ($(cat cmp.txt))"
    else fail "$3: losses differ: $(cat cmp.txt)"; fi
    if $COMPARE weights "$1/model.safetensors" "$2/model.safetensors" 1e-5 >cmp.txt; then ok "$3: weights within 1e-5 ($(cat cmp.txt))"
    else fail "$3: weights differ: $(cat cmp.txt)"; fi
}
