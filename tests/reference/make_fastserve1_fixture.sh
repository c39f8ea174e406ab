#!/usr/bin/env bash
# make_fastserve1_fixture.sh — the checkpoint fixture in the first format
# (format = fastserve/1: weights, AdamW moments and training state in one
# model.safetensors), written by fsrun as it was before run directories
# took Hugging Face's layout (commit 6eff0c6). Kept so that
# tests/e2e/test_checkpoint_formats.sh proves such checkpoints still load
# and resume. It cannot be regenerated with today's fsrun (which writes the
# new layout); it is here to document how the committed files were made:
#
#   git checkout 6eff0c6 && cmake -S . -B build && cmake --build build
#   FSRUN=build/fsrun tests/reference/make_fastserve1_fixture.sh
#
# The run: lib.sh's standard_data and write_graph (a 2-layer, 2-head model,
# C = 16, T = 16, byte vocabulary), 20 steps, stopped after step 10; and
# metrics_straight.jsonl, the metrics of the same 20 steps without a stop.
set -euo pipefail
cd "$(dirname "$0")/../.."
export FSRUN="$(realpath "${FSRUN:-build/fsrun}")"
dest="$(realpath tests/reference/fastserve1)"
FS_TEST_TMP="$(mktemp -d)"
export FS_TEST_TMP
. tests/e2e/lib.sh
standard_data
write_graph graph.ini model.n_embd=16 model.max_seq=16 train.steps=20 run.stop_after=10 generate.max_tokens=0
"$FSRUN" graph.ini >/dev/null
cp graph.ini out/model.safetensors "$dest/"
# the same run without a stop: the losses of steps 11..20 that resuming
# the fixture must reproduce
"$FSRUN" graph.ini --set run.stop_after=0 --set run.out=straight >/dev/null
cp straight/metrics.jsonl "$dest/metrics_straight.jsonl"
rm -rf "$FS_TEST_TMP"
echo "wrote graph.ini, model.safetensors and metrics_straight.jsonl in $dest"
