#!/usr/bin/env bash
# Set up a Debian 12 machine for FastServe: install the packages it needs
# (only those missing), build it in build/, and extract the King James Bible
# from Debian's bible-kjv package into data/kjv/{train,val}.txt.
#
#   scripts/setup.sh            everything
#   scripts/setup.sh --no-data  packages and build only (what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."

want_data=1
[ "${1:-}" = "--no-data" ] && want_data=0

packages=(build-essential cmake pkg-config libinih-dev libcmocka-dev libjansson-dev libmicrohttpd-dev libopenblas-openmp-dev
          openmpi-bin libopenmpi-dev bible-kjv python3 curl clang libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

build_type=${FS_BUILD_TYPE:-Release}
cmake -S . -B build -DCMAKE_BUILD_TYPE="$build_type" ${FS_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$(nproc)"

if [ $want_data = 1 ] && [ ! -s data/kjv/val.txt ]; then
  # One verse a line; drop the "Ge1:1 " references; the last 10% of the
  # verses (the end of the New Testament) are held out for validation.
  mkdir -p data/kjv
  bible -f gen1:1-rev22:21 | sed 's/^[^ ]* //' > data/kjv/all.txt
  n=$(wc -l < data/kjv/all.txt)
  head -n $((n * 9 / 10)) data/kjv/all.txt > data/kjv/train.txt
  tail -n +$((n * 9 / 10 + 1)) data/kjv/all.txt > data/kjv/val.txt
  rm data/kjv/all.txt
  echo "setup: corpus in data/kjv ($(wc -c < data/kjv/train.txt) train bytes, $(wc -c < data/kjv/val.txt) val bytes)" >&2
fi
