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
# 4. the benchmark: GPT-2-small training (124 M parameters, vocab 50257,
#    T = 1024, B = 8) in fp32, tf32 and bf16 (tokens/s, MFU over the
#    device's peak) and dense attention forward + backward from 1k to 16k
#    (build-gpu/bench/bench_backend; about a minute on an H100). Its tables go
#    to $OUT/bench-backend.md for the README;
# 5. compute-sanitizer, when the toolkit has it: memcheck and racecheck
#    over test_gpu_gpt, memcheck over test_gpu_ops and test_gpu_attention.
# Every timed step is capped, and by the time left before BUDGET_S (default
# 540 s, so one call of a metered machine's 10-minute limit holds it all): a
# step with no time left is skipped, saying so, and counts as a failure.
# Each step's line shows the seconds since the start.
# Exits non-zero when any step fails, or when a GPU test skips on a machine
# that has a device.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-build-gpu}}
mkdir -p "$out"
log="$out/gpu-check.log"
: > "$log"
status=0
budget=${BUDGET_S:-540}
# seconds a step may take: its cap, or what is left of the budget
cap() { local left=$((budget - SECONDS)); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
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
run timeout "$(cap 300)" ctest --test-dir build-gpu -L gpu --output-on-failure || status=1
if grep -q "Not Run\|Skipped" "$log"; then
  echo "gpu-check: a GPU test skipped on a machine with a device" | tee -a "$log"
  status=1
fi

t=$(cap 180)
if [ "$t" -le 10 ]; then
  step "bench: skipped, the budget of $budget s is spent"
  status=1
else
  step "bench: GPT-2-small training and dense attention on cuda (at most $t s)"
  (timeout "$t" build-gpu/bench/bench_backend backend=cuda shape=gpt2 steps=10 reps=5 \
    attention=1024,2048,4096,8192,16384 | tee "$out/bench-backend.md") 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
  # tool, test, seconds
  for check in "memcheck test_gpu_gpt 120" "racecheck test_gpu_gpt 120" "memcheck test_gpu_ops 90" \
               "memcheck test_gpu_attention 120"; do
    set -- $check
    t=$(cap "$3")
    if [ "$t" -le 10 ]; then
      step "compute-sanitizer --tool $1 $2: skipped, the budget of $budget s is spent"
      status=1
      continue
    fi
    step "compute-sanitizer --tool $1 $2 (at most $t s)"
    (cd build-gpu/tests/gpu && FS_PLUGIN_PATH="$PWD/../../plugins" \
      run timeout "$t" "$sanitizer" --tool "$1" --error-exitcode 9 "./$2") || status=1
  done
else
  step "compute-sanitizer: not in this toolkit, skipped"
fi

step "done: status $status"
exit $status
