#!/usr/bin/env bash
# test_nonfinite.sh — a run that diverges never destroys the last good
# checkpoint, and nothing prints a number JSON cannot hold:
#  - weights that are finite but huge (they pass the load-time check) make
#    the next step's loss NaN: the resumed run stops at that step with
#    exit 1 and one line (the step, what to try), before writing anything:
#    the checkpoint is byte-identical, metrics.jsonl has no row for it and
#    every row is JSON, stdout has no summary;
#  - [train] on_nonfinite = skip drops such steps (a "skipped" row, no
#    update: the weights and AdamW's step count stay, the step count moves
#    on, checkpoints are still written) and stops after [train] max_skipped
#    in a row;
#  - eval and generate of such weights fail (exit 1) instead of printing
#    {"loss": nan} or NUL bytes;
#  - under mpirun every rank takes the same decision: one message, exit 1,
#    no rank aborted by another.
. "$(dirname "$0")/lib.sh"

standard_data
write_graph g.ini train.steps=4 train.checkpoint_every=2 generate.max_tokens=0
must_fsrun g.ini

# q and k of one head get a 1e30 coordinate: their dot product overflows
python3 - out/model.safetensors <<'EOF' || die "cannot patch the checkpoint"
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
t = json.loads(b[8:8 + n])['transformer.h.0.attn.c_attn.weight']
for idx in (0, 32):  # row 0: q's and k's first column (C = 32)
    off = 8 + n + t['data_offsets'][0] + 4 * idx
    b[off:off + 4] = struct.pack('<f', 1e30)
open(p, 'wb').write(bytes(b))
EOF
mkdir -p huge && cp out/*.safetensors out/metrics.jsonl huge/

valid_metrics() { # FILE LABEL: every row parses as JSON
    if python3 -c "import json, sys; [json.loads(l) for l in open(sys.argv[1])]" "$1" 2>/dev/null; then
        ok "$2"
    else
        fail "$2: $(grep -n -i nan "$1" | head -n 2)"
    fi
}

# ---- stop (the default) ----
assert_exit 1 "$FSRUN" g.ini --resume --set train.steps=8
assert_last_error_line "step 5" "NaN" "diverged" "out/model.safetensors (step 4) is unchanged" "[train] lr" \
    "on_nonfinite = skip"
cmp -s out/model.safetensors huge/model.safetensors && ok "the checkpoint is unchanged" ||
    fail "the diverged run wrote the checkpoint"
cmp -s out/training_state.safetensors huge/training_state.safetensors && ok "the training state is unchanged" ||
    fail "the diverged run wrote the training state"
valid_metrics out/metrics.jsonl "metrics.jsonl is JSON, row by row"
assert_not_contains "$(grep '"step": 5' out/metrics.jsonl || true)" "loss" "no metrics row for the diverged step"
assert_not_contains "$(last_out)" "{" "no JSON summary from a failed run"
# the last good checkpoint still resumes (under a lower lr it is the user's call)
assert_exit 1 "$FSRUN" g.ini --mode eval
assert_one_error_line
assert_err "out/model.safetensors" "NaN" "earlier checkpoint"
assert_not_contains "$(last_out)" "nan" "eval prints no NaN"
assert_exit 1 "$FSRUN" g.ini --mode generate --prompt "The " --set generate.max_tokens=8
assert_one_error_line
assert_err "logits are NaN"
assert_not_contains "$(last_out)" "{" "generate prints no result"

# ---- skip: no update, the step moves on, and too many in a row stop ----
rm -rf out && mkdir out && cp huge/* out/
assert_exit 1 "$FSRUN" g.ini --resume --set train.steps=12 --set train.on_nonfinite=skip --set train.max_skipped=3 \
    --set train.checkpoint_every=2 --set train.val_every=0
assert_last_error_line "step 7" "3 steps in a row" "[train] max_skipped = 3" "diverged"
# steps 5 and 6 skipped (a row each), the third in a row stops before its row
assert_eq "$(grep -c '"skipped": true' out/metrics.jsonl)" 2 "two skipped rows, then the stop"
valid_metrics out/metrics.jsonl "metrics.jsonl is JSON with skipped rows"
# step 6 was checkpointed between the skips: no update reached the weights
assert_eq "$(python3 -c "import json,struct,sys; b=open(sys.argv[1],'rb').read(); print(json.loads(b[8:8+struct.unpack('<Q',b[:8])[0]])['__metadata__']['step'])" out/model.safetensors)" 6 \
    "the checkpoint moved on to step 6"
tensors_equal huge/model.safetensors out/model.safetensors && ok "skipped steps left the weights as they were" ||
    fail "a skipped step changed the weights"
assert_eq "$(python3 -c "import json,struct,sys; b=open(sys.argv[1],'rb').read(); print(json.loads(b[8:8+struct.unpack('<Q',b[:8])[0]])['__metadata__']['optimizer_t'])" out/training_state.safetensors)" 4 \
    "AdamW made no update (optimizer_t stays 4)"

# ---- several ranks decide together ----
. "$(dirname "$0")/mpi.sh"
if command -v mpirun >/dev/null 2>&1; then # scripts/setup.sh installs it; test_parallel_mpi.sh fails without
    rm -rf out && mkdir out && cp huge/* out/
    mpi_run 2 g.ini --resume --set train.steps=8 --set parallel.plugin=data
    assert_eq "$E2E_RC" 1 "mpirun: exit 1"
    assert_eq "$(grep -c 'diverged' "$E2E_ERR")" 1 "mpirun: one message for both ranks"
    if grep -qi "MPI_ABORT" "$E2E_ERR"; then fail "mpirun: a rank called MPI_Abort"
    else ok "mpirun: no rank aborted the job"; fi
    cmp -s out/model.safetensors huge/model.safetensors && ok "mpirun: the checkpoint is unchanged" ||
        fail "mpirun: the diverged run wrote the checkpoint"
    # Each rank's own status: mpirun kills the other ranks as soon as one
    # exits non-zero, which can land between a rank's fsrun exiting 1 and
    # its wrapper reporting it; without that teardown every rank ends by
    # itself (a rank that did not would hang, and MPI_TIMEOUT fails it).
    rm -rf out && mkdir out && cp huge/* out/
    OMPI_MCA_orte_abort_on_non_zero_status=0 MPI_TIMEOUT=60 mpi_run 2 g.ini --resume --set train.steps=8 \
        --set parallel.plugin=data
    assert_eq "$(mpi_rank_rcs)" "0:1 1:1" "mpirun: every rank stopped with exit 1"
else
    echo "SKIP - mpirun is not installed: the several-rank part"
fi

e2e_finish
