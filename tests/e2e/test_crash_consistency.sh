#!/usr/bin/env bash
# test_crash_consistency.sh — training killed (SIGKILL) at random moments,
# many of them inside checkpoint writes (a checkpoint every step of a model
# whose files take a while to write), 20 times over with a fixed seed:
#  - after every kill the directory holds a checkpoint eval loads;
#  - every resume works (a kill between the weights' and the state's rename
#    is finished by the next resume), and no temporary file outlives the run
#    after the one that left it (each run removes those of dead processes,
#    and says so);
#  - metrics.jsonl stays valid JSON with one row per step up to the
#    checkpoint (rows a killed run wrote past it are dropped on resume);
#  - the last resume finishes the run at its step count.
. "$(dirname "$0")/lib.sh"

KILLS=${FS_CRASH_KILLS:-20}
standard_data
# ~0.9 M parameters: 3.5 MB of weights and 7 MB of moments written every step
write_graph g.ini model.n_layer=4 model.n_embd=128 model.n_head=4 train.steps=400 train.checkpoint_every=1 \
    train.val_every=0 generate.max_tokens=0 run.threads=1
# a first checkpoint to come back to; how long a run takes to start, train
# a step and write it sets the kill delays (a sanitizer build is slower)
t0=$(date +%s.%N)
must_fsrun g.ini --set run.stop_after=1
first_s=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$(date +%s.%N)")
[ -f out/model.safetensors ] || die "no first checkpoint"

stale_temps() { # the temporary files in out/ whose process is not $1
    local f
    for f in out/*.tmp.*; do
        [ -e "$f" ] || continue
        [ "${f##*.}" = "$1" ] || echo "$f"
    done
}

# kill delays: fixed by the seed, from about the start of training to a few
# steps in, in units of that first run's time
delays=$(python3 -c "import random, sys; r = random.Random(20240613); f = float(sys.argv[1]); \
print(' '.join('%.3f' % (f * r.uniform(0.8, 3.0)) for _ in range($KILLS)))" "$first_s")
removed=0 finished=0 checked=0
for d in $delays; do
    "$FSRUN" g.ini --resume >run.out 2>run.err &
    pid=$!
    sleep "$d"
    kill -KILL $pid 2>/dev/null || true
    set +e
    wait $pid 2>/dev/null
    rc=$?
    set -e
    # killed (137), or (rarely) done: anything else is a resume that failed
    [ "$rc" = 137 ] || [ "$rc" = 0 ] || fail "the resume before a kill at ${d}s failed (exit $rc): $(tail -n 1 run.err)"
    grep -q "temporary file of process" run.err && removed=$((removed + 1))
    grep -q "finished the checkpoint of step" run.err && finished=$((finished + 1))
    # a run that got as far as resuming had put its directory in order first
    if grep -q "resuming out/model.safetensors at step" run.err; then
        checked=$((checked + 1))
        left=$(stale_temps $pid)
        [ -z "$left" ] || fail "after a kill at ${d}s: temporary files of earlier runs remain: $left"
    fi
    "$FSRUN" g.ini --mode eval >eval.out 2>eval.err ||
        fail "after a kill at ${d}s: eval cannot load the checkpoint: $(tail -n 1 eval.err)"
done
ok "$KILLS kills: every resume ran, every checkpoint loaded, no temporary file of an earlier run left"
assert_num "$checked" ">=" $((KILLS / 2)) "runs that got past their start left no earlier temporary file"
assert_num "$removed" ">=" 1 "runs removed temporary files left by killed writes (and said so)"
echo "     ($removed runs removed a stale temporary file; $finished finished a half-renamed checkpoint)"

# the last resume runs to the end
assert_exit 0 "$FSRUN" g.ini --resume --set train.steps=$(( $(python3 -c "import json,struct; b=open('out/training_state.safetensors','rb').read(); print(json.loads(b[8:8+struct.unpack('<Q',b[:8])[0]])['__metadata__']['step'])") + 3 ))
assert_eq "$(stale_temps none)" "" "no temporary file after the last run"
python3 - out/metrics.jsonl <<'EOF' && ok "metrics.jsonl: JSON, one loss row per step 1..N" || fail "metrics.jsonl has torn or repeated rows"
import json, sys
steps = [r['step'] for r in map(json.loads, open(sys.argv[1])) if 'loss' in r]
assert steps == list(range(1, len(steps) + 1)), steps[-10:]
EOF

e2e_finish
