#!/usr/bin/env bash
# Run every test: set up (packages, no corpus needed; the Python venv of the
# Hugging Face tests, scripts/pyenv.sh), build with warnings
# as errors and run the suite (the libFuzzer harnesses among it: built with
# clang in build/fuzz, each run a fixed number of times from its seed
# corpus, tests/fuzz), then build again with AddressSanitizer and
# UndefinedBehaviorSanitizer and run it there too. Exits non-zero if any
# test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# the Python of the Hugging Face tests: a venv over Debian's PyTorch
FS_PYTHON=$(scripts/pyenv.sh)
FS_CMAKE_ARGS="-DFS_WERROR=ON -DFS_PYTHON=$FS_PYTHON" scripts/setup.sh --no-data
echo "== tests (Release, -Werror)"
ctest --test-dir build --output-on-failure -j2

if [ "${FS_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== tests (ASan + UBSan)"
  # CUDA off: the Release build above compiled every CUDA source already
  # (nvcc -Werror, sm_80 and sm_90), the sanitizers do not instrument device
  # code, and compiling it twice costs CI minutes for nothing; the device
  # kernels' arithmetic (plain C) is still built and tested here
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFS_WERROR=ON -DFS_SANITIZE=ON -DFS_WITH_CUDA=OFF \
    -DFS_PYTHON="$FS_PYTHON" >/dev/null
  cmake --build build-asan -j"$(nproc)"
  # OpenMP's runtime is not instrumented; its one-time allocations are not leaks of ours
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp \
    ctest --test-dir build-asan --output-on-failure -j2
fi
