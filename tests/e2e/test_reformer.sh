#!/usr/bin/env bash
# test_reformer.sh — the Reformer's pieces by config, as a user runs them:
# [attention] plugin = lsh with [model] reversible = true and ff_chunk,
# training (loss falls), eval and generate from the checkpoint; the
# reversible model trained with ff_chunk gives the same losses as without
# (ff_chunk changes the memory, not the function); bad values name the key.
# Exact numerics are tested in tests/unit/test_model.c (against PyTorch)
# and tests/unit/test_reversible.c (finite differences, every plugin).
. "$(dirname "$0")/lib.sh"

standard_data
lsh="attention.plugin=lsh attention.n_hashes=2 attention.n_buckets=4 attention.chunk=8"
write_graph rev.ini $lsh model.reversible=true model.n_layer=3 train.steps=12 run.out=rev
write_graph chunk.ini $lsh model.reversible=true model.n_layer=3 model.ff_chunk=24 train.steps=12 run.out=chunk

assert_exit 0 "$FSRUN" rev.ini
[ "$E2E_OK" = 1 ] || die "reversible training failed"
metrics_col rev/metrics.jsonl loss >losses.txt # (not piped into head: a closed pipe fails under pipefail)
first=$(sed -n '1s/^[0-9]* //p' losses.txt)
assert_num "$(json_last "$E2E_OUT" loss)" "<" "$first" "reversible lsh model: the loss falls"

assert_exit 0 "$FSRUN" chunk.ini
python3 - rev/metrics.jsonl chunk/metrics.jsonl <<'PY' && ok "ff_chunk = 24: the same 12 losses within 1e-5" || fail "ff_chunk changed the losses"
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p) if '"loss"' in l and '"step"' in l] for p in sys.argv[1:])
assert len(a) == len(b) == 12, (len(a), len(b))
assert all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b)), list(zip(a, b))
PY

assert_exit 0 "$FSRUN" rev.ini --mode eval
assert_contains "$(last_out)" '"loss"' "eval of the reversible checkpoint"
assert_exit 0 "$FSRUN" rev.ini --mode generate --set generate.max_tokens=20
assert_contains "$(last_out)" '"tokens_per_s"' "generate from the reversible checkpoint"

assert_exit 2 "$FSRUN" rev.ini --set model.ff_chunk=-3
assert_err "ff_chunk" "-3"
assert_exit 2 "$FSRUN" rev.ini --set model.reversible=maybe
assert_err "reversible" "maybe"

e2e_finish
