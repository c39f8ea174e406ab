#!/usr/bin/env bash
# gpu-check.sh — the checks only a machine with an NVIDIA GPU can make, as
# one bounded script (the device machine is metered: run it once, read
# $OUT/gpu-check.log). Everything else is checked by scripts/test.sh on any
# machine: CUDA sources compile there with -Werror and their arithmetic is
# tested on the CPU (test_cuda_math, test_attention_tiles).
#
#   scripts/gpu-check.sh [OUT]        OUT: where the log goes (default build-gpu)
#
# 1. the device as the driver sees it (nvidia-smi);
# 2. a Release build with nvcc (sm_80 and sm_90, warnings as errors) in build-gpu;
# 3. the GPU tests (ctest -L gpu): each must pass, not skip;
# 4. compute-sanitizer, when the toolkit has it: memcheck and racecheck
#    over test_gpu_gpt, memcheck over test_gpu_ops and test_gpu_attention
#    (each capped by a timeout, 7.5 minutes together; their real times,
#    not measured yet, show in the log: every step prints the seconds
#    since the start).
# Exits non-zero when any step fails, or when a GPU test skips on a machine
# that has a device.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-build-gpu}}
mkdir -p "$out"
log="$out/gpu-check.log"
: > "$log"
status=0
step() { echo "== $* [${SECONDS} s]" | tee -a "$log"; }
run() { "$@" 2>&1 | tee -a "$log"; return "${PIPESTATUS[0]}"; }

step "device"
if ! run nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv; then
  echo "gpu-check: no NVIDIA device visible: nothing to check here" | tee -a "$log"
  exit 1
fi

step "build (Release, -Werror, CUDA)"
run cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DFS_WERROR=ON -DFS_WITH_CUDA=ON >/dev/null || exit 1
run cmake --build build-gpu -j"$(nproc)" || exit 1

step "GPU tests"
run ctest --test-dir build-gpu -L gpu --output-on-failure || status=1
if grep -q "Not Run\|Skipped" "$log"; then
  echo "gpu-check: a GPU test skipped on a machine with a device" | tee -a "$log"
  status=1
fi

sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
  # tool, test, seconds
  for check in "memcheck test_gpu_gpt 120" "racecheck test_gpu_gpt 120" "memcheck test_gpu_ops 90" \
               "memcheck test_gpu_attention 120"; do
    set -- $check
    step "compute-sanitizer --tool $1 $2 (at most $3 s)"
    (cd build-gpu/tests/gpu && FS_PLUGIN_PATH="$PWD/../../plugins" \
      run timeout "$3" "$sanitizer" --tool "$1" --error-exitcode 9 "./$2") || status=1
  done
else
  step "compute-sanitizer: not in this toolkit, skipped"
fi

step "done: status $status"
exit $status
