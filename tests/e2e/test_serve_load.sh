#!/usr/bin/env bash
# test_serve_load.sh — --mode serve under concurrent load (tests/e2e/serve_load.py):
# 24 concurrent greedy requests equal their solo outputs (also with bf16
# keys and values, whose pool holds twice the blocks), a disconnecting
# client's request is cancelled and its KV blocks return, 429 on a full
# queue, SIGTERM under load: 503 for new requests, the running ones finish
# (or end at shutdown_grace_s) and the exit status is 0.
. "$(dirname "$0")/lib.sh"
[ -x "${FS_PYTHON:-}" ] || die "FS_PYTHON='${FS_PYTHON:-}' is not an interpreter: run scripts/pyenv.sh"

standard_data
# longformer: a bounded cache, so a request may run long past max_seq (a stream to cancel)
write_graph l.ini model.max_seq=64 attention.plugin=longformer attention.window=16 train.steps=100 train.lr=1e-2 \
    train.val_every=0
must_fsrun l.ini

assert_exit 0 env PYTHONPATH="$FS_SOURCE_DIR/tests/e2e" "$FS_PYTHON" "$FS_SOURCE_DIR/tests/e2e/serve_load.py"
cat "$E2E_OUT"
tail -n 20 "$E2E_ERR"
e2e_finish
