#!/usr/bin/env bash
# gpu-check.sh — the checks only a machine with an NVIDIA GPU can make, as
# one bounded script (the device machine is metered: run it once, read
# $OUT/gpu-check.log). Everything else is checked by scripts/test.sh on any
# machine: CUDA sources compile there with -Werror and their arithmetic is
# tested on the CPU (test_cuda_math, test_attention_tiles).
#
#   scripts/gpu-check.sh [OUT]        OUT: where the log goes (default build-gpu)
#
# FS_GPU_BUILD=DIR uses a build made elsewhere (cmake -DFS_WITH_CUDA=ON
# -DFS_WERROR=ON, same source path) as it is, for a GPU machine that has
# the toolkit's runtime but not the host libraries FastServe builds with;
# step 2 is then skipped. scripts/gpu-pack.sh packs such a build with its
# libraries, and a .gpu/run.sh that unpacks it there and runs this.
#
# 1. the device as the driver sees it (nvidia-smi);
# 2. a Release build with nvcc (sm_80 and sm_90, warnings as errors) in build-gpu;
# 3. the GPU tests (ctest -L gpu): each must pass, not skip (test_gpu_train:
#    fsrun --mode train on cuda in fp32, tf32, bf16 against the CPU kernels);
# 4. the benchmark: GPT-2-small training (124 M parameters, vocab 50257,
#    T = 1024, B = 8) in fp32, tf32 and bf16 (tokens/s, MFU over the
#    device's peak) and dense attention forward + backward from 1k to 16k
#    ("$bd"/bench/bench_backend; about a minute on an H100). Its tables go
#    to $OUT/bench-backend.md for the README;
# 5. fsrun itself training the GPT-2-small shape with the byte vocabulary
#    (86 M parameters, T = 1024, B = 8) on synthetic text for 30 steps in
#    fp32, tf32 and bf16: the summary lines (tokens/s, model TFLOP/s, MFU)
#    go to $OUT/fsrun-train.md;
# 6. serving: fsrun --mode serve on that checkpoint on cuda beside the same
#    server on the machine's CPU cores (bench/bench_serve.py, closed loop,
#    greedy 64-token requests from 1, 16 and 32 clients, output tokens/s)
#    into $OUT/bench-serve.md;
# 7. Nsight Compute, when the toolkit has it: the dense attention kernels
#    (speed of light, occupancy) into $OUT/ncu-attention.txt, and every
#    kernel of GPT-2-small bf16 training steps with its duration into
#    $OUT/ncu-step.txt;
# 8. compute-sanitizer, when the toolkit has it: memcheck and racecheck
#    over test_gpu_gpt, memcheck over test_gpu_ops, test_gpu_attention,
#    test_gpu_paged and test_gpu_batch.
# FS_GPU_SANITIZE="memcheck test_gpu_paged 90;..." picks step 8's runs.
# FS_GPU_STEPS=tests,bench,train,serve,ncu,sanitizer (any of them, comma-
# separated) runs those steps only (the device and the build always run):
# a rerun after a fix spends the metered time on what changed.
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
# budgeted CAP WHAT: announces a step of at most CAP seconds and sets t to
# its limit; a step the budget has no time left for is skipped, said so and
# counted as a failure (returns 1); so is a step FS_GPU_STEPS leaves out,
# silently and without failing
budgeted() {
  want "$3" || return 1
  t=$(cap "$1")
  if [ "$t" -le 10 ]; then
    step "$2: skipped, the budget of $budget s is spent"
    status=1
    return 1
  fi
  step "$2 (at most $t s)"
}

# want STEP: FS_GPU_STEPS is unset or names it
want() { [ -z "${FS_GPU_STEPS:-}" ] || [[ ",$FS_GPU_STEPS," == *",$1,"* ]]; }
# train_graph: synthetic words in $work/train.txt and the GPT-2-small shape
# with the byte vocabulary training on them on cuda, $work/g.ini
train_graph() {
  mkdir -p "$work"
  [ -s "$work/train.txt" ] || python3 -c "
import random
r = random.Random(7)
words = [''.join(r.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(r.randint(2, 9))) for _ in range(3000)]
open('$work/train.txt', 'w').write(' '.join(r.choice(words) for _ in range(800000)))"
  printf '%s\n' "[model]" "vocab_size = 256" "n_layer = 12" "n_head = 12" "n_embd = 768" "max_seq = 1024" \
    "[data]" "train = $work/train.txt" "[train]" "steps = 30" "batch = 8" "warmup = 5" "val_every = 0" \
    "[generate]" "max_tokens = 0" "[run]" "out = $work/out" "overwrite = true" "progress = off" "device = cuda" \
    > "$work/g.ini"
}

step "device"
if ! run nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv; then
  echo "gpu-check: no NVIDIA device visible: nothing to check here" | tee -a "$log"
  exit 1
fi

bd=${FS_GPU_BUILD:-build-gpu}
if [ -n "${FS_GPU_BUILD:-}" ]; then
  step "build: using $bd as it is (FS_GPU_BUILD)"
  grep -q "FS_WITH_CUDA:BOOL=ON" "$bd/CMakeCache.txt" || { echo "gpu-check: $bd is not a CUDA build" | tee -a "$log"; exit 1; }
else
  step "build (Release, -Werror, CUDA)"
  run cmake -S . -B "$bd" -DCMAKE_BUILD_TYPE=Release -DFS_WERROR=ON -DFS_WITH_CUDA=ON >/dev/null || exit 1
  run cmake --build "$bd" -j"$(nproc)" || exit 1
fi

if want tests; then
  step "GPU tests"
  run timeout "$(cap 300)" ctest --test-dir "$bd/tests/gpu" -L gpu -j4 --output-on-failure || status=1
  if grep -q "Not Run\|Skipped" "$log"; then
    echo "gpu-check: a GPU test skipped on a machine with a device" | tee -a "$log"
    status=1
  fi
fi

if budgeted 180 "bench: GPT-2-small training and dense attention on cuda" bench; then
  (timeout "$t" "$bd"/bench/bench_backend backend=cuda shape=gpt2 steps=10 reps=5 \
    attention=1024,2048,4096,8192,16384 | tee "$out/bench-backend.md") 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  # attention as bf16 training hands it over (B 8, T 1024: GPT-2-small's
  # step) and at long T: its share of the step, and the kernels' TFLOP/s
  for a in "attention=1024 attention_batch=8" "attention=1024,4096,16384"; do
    left=$(cap 60)
    [ "$left" -gt 5 ] || break
    (timeout "$left" "$bd"/bench/bench_backend backend=cuda precisions=none reps=5 attention_dtype=bf16 $a |
      tail -n +2 | tee -a "$out/bench-backend.md") 2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
fi

work="$bd/fsrun-train"
if budgeted 150 "fsrun train: GPT-2-small shape, byte vocabulary, on cuda" train; then
  train_graph
  : > "$out/fsrun-train.md"
  deadline=$((SECONDS + t))
  for p in fp32 tf32 bf16; do
    left=$((deadline - SECONDS))
    [ "$left" -gt 5 ] || { echo "fsrun train $p: no time left" | tee -a "$log"; status=1; break; }
    echo "precision $p: $(timeout "$left" "$bd"/fsrun "$work/g.ini" --set train.precision=$p 2>>"$log" | tail -n1)" |
      tee -a "$out/fsrun-train.md" "$log"
    grep -q "precision $p: {" "$out/fsrun-train.md" || status=1
  done
fi

# serving that checkpoint: the same server on cuda and on the CPU's cores
if budgeted 150 "serving: fsrun --mode serve on cuda and on the CPU, GPT-2-small shape" serve; then
  train_graph
  [ -s "$work/out/model.safetensors" ] ||
    timeout "$t" "$bd"/fsrun "$work/g.ini" --set train.steps=1 >/dev/null 2>>"$log" || status=1
  # prompts: lines of 3 to 8 of the training text's words
  python3 -c "
import random
r = random.Random(3); w = open('$work/train.txt').read(200000).split()
open('$work/prompts.txt', 'w').write(''.join(' '.join(w[i:i + r.randint(3, 8)]) + '\\n' for i in range(0, 20000, 9)))"
  (timeout "$t" python3 bench/bench_serve.py --graph "$work/g.ini" --fsrun "$bd"/fsrun --prompts "$work/prompts.txt" \
    --schedulers fcfs --devices cuda,cpu --threads "$(nproc)" --tables closed --rates 1 --no-peer |
    tee "$out/bench-serve.md") 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

# where the attention kernels' time goes (Nsight Compute, when present):
# speed of light and occupancy of each of the three kernels once
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
if [ -x "$ncu" ] && budgeted 60 "ncu: the dense attention kernels, B 8, T 1024, bf16" ncu; then
  (timeout "$t" "$ncu" --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
    -k regex:"fa_|dense_mma" -c 4 "$bd"/bench/bench_backend backend=cuda precisions=none reps=1 attention=1024 \
    attention_batch=8 attention_dtype=bf16 > "$out/ncu-attention.txt" 2>&1) || status=1
  grep -E "fa_|dense_mma|Duration|Throughput|Achieved Occupancy|Registers Per|Block Limit" "$out/ncu-attention.txt" | tee -a "$log"
fi

# where a bf16 training step's time goes: every kernel of three steps
# (two warm-up, one timed) with its duration, summed by kernel
if [ -x "$ncu" ] && budgeted 90 "ncu: the kernels of GPT-2-small bf16 training steps" ncu; then
  (timeout "$t" "$ncu" --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel -c 3000 \
    "$bd"/bench/bench_backend backend=cuda shape=gpt2 steps=1 reps=1 precisions=bf16 attention=0 \
    > "$out/ncu-step.txt" 2>&1) || status=1
  tail -n 3 "$out/ncu-step.txt" | tee -a "$log"
fi

sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
  # tool, test, seconds (FS_GPU_SANITIZE="tool test seconds;...": those instead)
  checks="memcheck test_gpu_gpt 120;racecheck test_gpu_gpt 120;memcheck test_gpu_ops 90;memcheck test_gpu_attention 120"
  checks="$checks;memcheck test_gpu_paged 90;memcheck test_gpu_batch 60"
  IFS=';' read -ra checks <<< "${FS_GPU_SANITIZE:-$checks}"
  for check in "${checks[@]}"; do
    set -- $check
    budgeted "$3" "compute-sanitizer --tool $1 $2" sanitizer || continue
    (cd "$bd"/tests/gpu && FS_PLUGIN_PATH="$PWD/../../plugins" \
      run timeout "$t" "$sanitizer" --tool "$1" --error-exitcode 9 "./$2") || status=1
  done
else
  step "compute-sanitizer: not in this toolkit, skipped"
fi

step "done: status $status"
exit $status
