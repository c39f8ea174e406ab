#!/usr/bin/env bash
# test_wait_policy.sh — the OpenMP wait policy fsrun starts with (libgomp
# reads it once, at load: fsrun chooses it from the mode before anything
# runs and re-executes itself with it):
#  - by default GOMP_SPINCOUNT=20000 (--version says so);
#  - --mode serve, or [run] mode = serve in the graph, spins ten times
#    longer (200000: the engine thread starts a parallel region every few
#    hundred microseconds), which the server's log says; the re-executed
#    process's environment holds it;
#  - a policy in the environment (OMP_WAIT_POLICY or GOMP_SPINCOUNT) is
#    kept in every mode.
. "$(dirname "$0")/lib.sh"

standard_data
write_graph g.ini train.steps=1 generate.max_tokens=0
assert_exit 0 "$FSRUN" g.ini
[ -f out/model.safetensors ] || die "no checkpoint to serve"

assert_exit 0 env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$FSRUN" --version
assert_contains "$(last_out)" "OpenMP waits: GOMP_SPINCOUNT=20000 (spin briefly, then sleep; chosen by fsrun)" \
    "--version: fsrun's default wait policy"
assert_exit 0 env OMP_WAIT_POLICY=passive "$FSRUN" --version
assert_contains "$(last_out)" "OpenMP waits: OMP_WAIT_POLICY=passive (set by the environment, kept)" \
    "--version: the environment's policy is kept"

# serve_log NAME ENV... -- ARGS...: start a server with ENV, wait for it to
# listen, keep its environment (/proc) and stderr in NAME.env / NAME.err,
# stop it
serve_log() {
    local name=$1 pid i
    shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" "$FSRUN" "$@" --set serve.port=0 >"$name.out" 2>"$name.err" &
    pid=$!
    for i in $(seq 1 600); do
        grep -q "at http://" "$name.out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    tr '\0' '\n' <"/proc/$pid/environ" >"$name.env" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

serve_log cli -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -- g.ini --mode serve
assert_contains "$(cat cli.err)" "OpenMP waits: GOMP_SPINCOUNT=200000 (spin briefly, then sleep; chosen by fsrun)" \
    "--mode serve: the server's wait policy, in its log"
assert_contains "$(cat cli.env)" "GOMP_SPINCOUNT=200000" "--mode serve: the running server's environment holds it"

write_graph s.ini run.mode=serve train.steps=1 generate.max_tokens=0
serve_log graph -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -- s.ini
assert_contains "$(cat graph.err)" "GOMP_SPINCOUNT=200000" "[run] mode = serve in the graph: the same"

serve_log kept -u OMP_WAIT_POLICY GOMP_SPINCOUNT=777 -- g.ini --mode serve
assert_contains "$(cat kept.err)" "OpenMP waits: GOMP_SPINCOUNT=777 (set by the environment, kept)" \
    "--mode serve: the environment's GOMP_SPINCOUNT is kept"

e2e_finish
