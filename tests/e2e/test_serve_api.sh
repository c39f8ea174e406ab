#!/usr/bin/env bash
# test_serve_api.sh — --mode serve's OpenAI-compatible API with the official
# openai client and curl (tests/e2e/serve_api.py): completions, chat,
# streaming, echo, logprobs against transformers (echo + logprobs: the
# prompt's too, streamed and with max_tokens 0), stop strings, seeds,
# every refusal's status and error object, keep-alive, SIGHUP and
# /admin/reload, non-UTF-8 model output as valid UTF-8, exit 0 on SIGTERM.
. "$(dirname "$0")/lib.sh"
need_hf
"$FS_PYTHON" -c "import openai" || die "$FS_PYTHON lacks the openai package: run scripts/pyenv.sh"

standard_data
# g: trained a little (its greedy text is words); u: one step (its bytes are noise, often not UTF-8)
write_graph g.ini model.max_seq=128 train.steps=150 train.lr=1e-2 train.val_every=0
must_fsrun g.ini
write_graph u.ini model.max_seq=128 train.steps=1 train.val_every=0 train.lr=1e-4 run.out=out_u
must_fsrun u.ini

assert_exit 0 env PYTHONPATH="$FS_SOURCE_DIR/tests/e2e" "$FS_PYTHON" "$FS_SOURCE_DIR/tests/e2e/serve_api.py"
cat "$E2E_OUT"
tail -n 20 "$E2E_ERR"
e2e_finish
