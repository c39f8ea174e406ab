#!/usr/bin/env bash
# test_serve_soak.sh — 10,000 small requests (1,500 under ASan) through
# concurrent keep-alive clients (tests/e2e/serve_soak.py): all answered,
# every KV block back, RSS flat, exit 0.
. "$(dirname "$0")/lib.sh"
[ -x "${FS_PYTHON:-}" ] || die "FS_PYTHON='${FS_PYTHON:-}' is not an interpreter: run scripts/pyenv.sh"

standard_data
write_graph s.ini train.steps=5 train.val_every=0
must_fsrun s.ini

assert_exit 0 env PYTHONPATH="$FS_SOURCE_DIR/tests/e2e" "$FS_PYTHON" "$FS_SOURCE_DIR/tests/e2e/serve_soak.py"
cat "$E2E_OUT"
tail -n 20 "$E2E_ERR"
e2e_finish
