#!/usr/bin/env bash
# Multi-rank runs that must fail cleanly: a bad [parallel] split is
# reported once, by rank 0, naming the key, and every rank exits 2; a rank
# that dies (SIGKILL) or hangs (SIGSTOP) mid-run ends the job with an error
# within a bounded time instead of leaving the others blocked. Every mpirun
# is guarded by `timeout`, so a hang fails the test instead of stalling it.
HERE="$(cd "$(dirname "$0")" && pwd)" # lib.sh moves to the scratch directory
. "$HERE/lib.sh"
. "$HERE/mpi.sh"
mpi_require

standard_data
write_graph g.ini train.val_every=0 generate.max_tokens=0

# bad NP FRAGMENT ARGS...: mpirun -np NP with ARGS fails on every rank with
# exit 2 and rank 0's stderr says FRAGMENT (and the fix), once in all.
bad() {
    local np=$1 want=$2
    shift 2
    local t0=$SECONDS
    # mpirun would kill the other ranks as soon as one exits non-zero; let
    # each rank end by itself, so its own exit status shows
    OMPI_MCA_orte_abort_on_non_zero_status=0 MPI_TIMEOUT=60 mpi_run "$np" g.ini "$@"
    local label="-np $np $*"
    [ $((SECONDS - t0)) -lt 60 ] && ok "$label: ended in $((SECONDS - t0)) s" || fail "$label: hung"
    local want_rcs="" r
    for ((r = 0; r < np; r++)); do want_rcs="$want_rcs $r:2"; done
    assert_eq "$(mpi_rank_rcs)" "${want_rcs# }" "$label: every rank exits 2"
    assert_contains "$(mpi_rank_err 0)" "fsrun: rank 0: " "$label: rank 0 reports"
    assert_contains "$(mpi_rank_err 0)" "$want" "$label: rank 0 names the problem"
    assert_eq "$(grep -c '^fsrun: rank' "$E2E_ERR")" 1 "$label: reported once, not by every rank"
}
bad 2 "[parallel] data = 3: data 3 x tensor 1 x pipeline 1 = 3 ranks, but this run has 2" \
    --set parallel.plugin=data --set parallel.data=3
# mpirun itself (ending the job when a rank exits non-zero, its default)
MPI_TIMEOUT=60 mpi_run 2 g.ini --set parallel.plugin=data --set parallel.data=3
[ "$E2E_RC" -ne 0 ] && [ "$E2E_RC" -ne 124 ] && ok "mpirun exits $E2E_RC" || fail "mpirun exited $E2E_RC"
assert_contains "$(mpi_rank_err 0)" "[parallel] data = 3" "rank 0 reports with mpirun's defaults too"
bad 2 "[parallel] data (default 0): data = 2 does not divide [train] batch = 5" \
    --set parallel.plugin=data --set train.batch=5
bad 3 "[parallel] tensor (default 0): tensor = 3 does not divide [model] n_head = 2" \
    --set parallel.plugin=tensor
bad 2 "[parallel] microbatches = 3: does not divide the per-rank batch 4" \
    --set parallel.plugin=pipeline --set parallel.microbatches=3
bad 3 "pipeline 3 x interleave 1 = 3 stages, but [model] n_layer = 2" \
    --set parallel.plugin=pipeline
bad 2 "[parallel] plugin = single runs on one rank, but the world has 2" \
    --set parallel.plugin=single
bad 2 "[train] batch = 0" --set parallel.plugin=data --set train.batch=0

# A rank that dies or hangs mid-run. Each rank writes its pid, so the test
# signals exactly the process it means.
write_graph long.ini train.steps=1000000 train.val_every=0 generate.max_tokens=0 run.log_every=1
# alive PID: running or stopped; a zombie (dead, not yet reaped: in a
# container nobody may reap mpirun's orphans) does not count
alive() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
start_long() { # start_long TIMEOUT_S: a long 2-rank run in the background
    rm -rf out pid.* long.out long.err
    env ASAN_OPTIONS="$MPI_ASAN_OPTIONS" timeout 90 mpirun -np 2 --oversubscribe --bind-to none \
        sh -c 'echo $$ > pid.$OMPI_COMM_WORLD_RANK; exec "$0" "$@"' "$FSRUN" long.ini \
        --set parallel.plugin=data --set parallel.timeout="$1" >long.out 2>long.err &
    LONG_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do # up to 30 s for both ranks to be training
        [ -s pid.0 ] && [ -s pid.1 ] && [ -s out/metrics.jsonl ] && return 0
        sleep 0.1
    done
    kill "$LONG_PID" 2>/dev/null || true
    die "the long run did not start: $(tail -n 3 long.err)"
}
# finish_long LABEL: mpirun must end non-zero within 60 s of the signal
finish_long() {
    local t0=$SECONDS rc=0
    wait "$LONG_PID" || rc=$?
    local took=$((SECONDS - t0))
    [ "$rc" -ne 0 ] && ok "$1: mpirun exits $rc" || fail "$1: mpirun exited 0"
    [ "$rc" -ne 124 ] && [ "$took" -lt 60 ] && ok "$1: job ended $took s after the signal" ||
        fail "$1: job still running after $took s (rc $rc)"
    local p
    for p in pid.0 pid.1; do # nothing left behind
        if alive "$(cat "$p")"; then
            fail "$1: rank ${p#pid.} still alive"
            kill -9 "$(cat "$p")" 2>/dev/null || true
        fi
    done
}

start_long 300
kill -9 "$(cat pid.1)"
finish_long "rank 1 killed (SIGKILL)"

# A rank that stops answering (here stopped, as a hung process would be):
# mpirun sees no exit, so the other rank's collective must give up after
# [parallel] timeout, say so, and end the job.
start_long 3
kill -STOP "$(cat pid.1)"
finish_long "rank 1 hangs (SIGSTOP), timeout = 3"
kill -CONT "$(cat pid.1)" 2>/dev/null || true
assert_contains "$(cat long.err)" "fsrun: rank 0: " "the waiting rank reports"
assert_contains "$(cat long.err)" "no answer from the other ranks in 3 s" "the error names the timeout"

e2e_finish
