#!/usr/bin/env bash
# test_metrics_full_disk.sh — a metrics.jsonl row that cannot be written (a
# full disk: metrics.jsonl is a link to /dev/full, where every write fails
# with ENOSPC) is said when it happens, naming the file, the step and the
# error, once; training goes on and its checkpoint and summary are written.
. "$(dirname "$0")/lib.sh"

[ -w /dev/full ] || die "/dev/full is not writable here: it stands for a full disk"
standard_data
write_graph g.ini train.steps=4 train.val_every=2 generate.max_tokens=0
mkdir -p out
ln -s /dev/full out/metrics.jsonl
assert_exit 0 "$FSRUN" g.ini
assert_err "out/metrics.jsonl" "cannot write the row of step 1" "No space left on device"
assert_eq "$(grep -c 'metrics.jsonl' "$E2E_ERR")" 1 "said once, not once per row"
[ -f out/model.safetensors ] && ok "the checkpoint is written" || fail "no checkpoint after a metrics failure"
assert_eq "$(json_last "$E2E_OUT" steps)" 4 "the summary says the run trained its 4 steps"

e2e_finish
