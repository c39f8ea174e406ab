#!/usr/bin/env bash
# fuzz.sh — the libFuzzer harnesses of tests/fuzz (README there), built
# with Debian's clang under AddressSanitizer and UndefinedBehaviorSanitizer
# in $FS_FUZZ_BUILD (build-fuzz/ unless set; the test build uses
# build/fuzz).
#
#   scripts/fuzz.sh NAME SECONDS   fuzz one harness (graph, safetensors,
#                                  checkpoint_meta, request) for SECONDS; what it finds
#                                  accumulates in $FS_FUZZ_BUILD/corpus/NAME
#                                  (seeded from tests/fuzz/corpus/NAME); a
#                                  crash leaves $FS_FUZZ_BUILD/crash-* (the
#                                  input) and exits non-zero. Installs clang
#                                  when missing.
#   scripts/fuzz.sh --build        configure and build the harnesses (the
#                                  test fuzz_build)
#   scripts/fuzz.sh --runs NAME N  N executions of one harness from its seed
#                                  corpus alone, seed 1 (the test fuzz_NAME)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FS_FUZZ_BUILD:-build-fuzz}
names=$(ls tests/fuzz/fuzz_*.c | sed 's|.*/fuzz_||; s|\.c$||' | tr '\n' ' ')
usage() { echo "usage: scripts/fuzz.sh NAME SECONDS | --build | --runs NAME N   (NAME: $names)" >&2; exit 2; }
[ $# -ge 1 ] || usage

packages=(clang libclang-rt-14-dev)
missing_packages() {
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
install_missing() {
  local missing
  missing=$(missing_packages | tr '\n' ' ')
  [ -n "${missing// /}" ] || return 0
  echo "fuzz: installing $missing" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q >&2
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing >&2
}

build_harnesses() {
  # -O1 with debug info: fast enough to fuzz, stack traces that name lines;
  # no CUDA (the parsers are host code, and nvcc takes no libFuzzer flags).
  # Not -Werror: the gcc build is the warnings gate; clang's differ (at -O1
  # it reports each `omp simd` loop it leaves scalar) and say nothing of
  # what the harnesses look for.
  CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DFS_FUZZ=ON -DFS_SANITIZE=ON -DFS_WERROR=OFF -DBUILD_TESTING=OFF -DFS_WITH_MPI=OFF -DFS_WITH_CUDA=OFF >/dev/null
  # shellcheck disable=SC2046
  cmake --build "$build" -j"$(nproc)" --target $(printf 'fuzz_%s ' $names)
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp
harness() { # NAME: its executable, which must exist
  local exe="$build/tests/fuzz/fuzz_$1"
  [ -f "tests/fuzz/fuzz_$1.c" ] || usage
  [ -x "$exe" ] || { echo "fuzz: no $exe: build it first (scripts/fuzz.sh --build)" >&2; exit 1; }
  echo "$exe"
}

case "$1" in
--build)
  missing=$(missing_packages | tr '\n' ' ')
  if [ -n "${missing// /}" ]; then
    echo "fuzz: the harnesses need Debian's clang and its libFuzzer: missing $missing (scripts/setup.sh installs them)" >&2
    exit 1
  fi
  build_harnesses
  ;;
--runs)
  [ $# -eq 3 ] || usage
  exe=$(harness "$2")
  scratch="$build/corpus-runs/$2"
  rm -rf "$scratch" && mkdir -p "$scratch"
  exec "$exe" -runs="$3" -seed=1 -max_len=8192 -print_final_stats=1 -artifact_prefix="$build/" \
    "$scratch" "tests/fuzz/corpus/$2"
  ;;
*)
  [ $# -eq 2 ] && [ -f "tests/fuzz/fuzz_$1.c" ] || usage
  install_missing
  build_harnesses
  exe=$(harness "$1")
  mkdir -p "$build/corpus/$1"
  exec "$exe" -max_total_time="$2" -max_len=8192 -print_final_stats=1 -artifact_prefix="$build/" \
    "$build/corpus/$1" "tests/fuzz/corpus/$1"
  ;;
esac
