#!/usr/bin/env bash
# Build llama.cpp, the serving peer fsrun is measured against (issue 14),
# from the sources vendored in the llama-cpp-python sdist on PyPI, into
# build/llamacpp (nothing of it is committed; none of it goes into fsrun).
#
#   bench/llamacpp/build.sh            fetch + build once (cached), print the bin dir
#   LLAMACPP_VERSION=0.3.36 bench/llamacpp/build.sh   a given llama-cpp-python release
#   LLAMACPP_DIR=/some/dir bench/llamacpp/build.sh    somewhere else than build/llamacpp
#
# Result, under $LLAMACPP_DIR:
#   bin/       llama-bench, llama-server, llama-cli, llama-completion, llama-perplexity, libllama.so, libggml*.so
#   src/       the unpacked sdist (its llama_cpp/ ctypes bindings load bin/libllama.so)
#   venv/      Python with gguf + numpy (the GGUF converter) and the bindings' own needs
#   STAMP      what was built; a second run with the same version does nothing
# Takes 10-20 minutes on 2 cores the first time.
set -euo pipefail
cd "$(dirname "$0")/../.."

dir=${LLAMACPP_DIR:-build/llamacpp}
version=${LLAMACPP_VERSION:-0.3.36}
jobs=${LLAMACPP_JOBS:-$(nproc)}
targets=(llama-bench llama-server llama-cli llama-completion llama-perplexity llama)
stamp="llama-cpp-python $version; targets ${targets[*]}"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ -f "$dir/STAMP" ] && [ "$(cat "$dir/STAMP")" = "$stamp" ] && [ -x "$dir/bin/llama-bench" ]; then
  echo "$dir/bin"
  exit 0
fi

# Python for the converter and the bindings: a venv of our own, so the
# system's (or pyenv's) packages are left alone.
if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv"
fi
"$dir/venv/bin/pip" install -q gguf numpy typing_extensions diskcache jinja2 >&2

sdist="$dir/llama_cpp_python-$version.tar.gz"
if [ ! -s "$sdist" ]; then
  echo "llamacpp: downloading the llama-cpp-python $version sdist from PyPI" >&2
  "$dir/venv/bin/pip" download -q --no-binary :all: --no-deps -d "$dir" "llama-cpp-python==$version" >&2
fi
rm -rf "$dir/src"
mkdir -p "$dir/src"
tar xzf "$sdist" -C "$dir/src" --strip-components=1
src="$dir/src/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "llamacpp: $sdist has no vendor/llama.cpp" >&2; exit 1; }

# CPU only, native kernels (as fsrun's -march=native), shared libs for the
# Python bindings; nothing fetched at build time (no prebuilt web UI, no curl).
echo "llamacpp: building ${targets[*]} with $jobs jobs" >&2
cmake -S "$src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_APP=OFF \
  >"$dir/cmake.log" 2>&1 || { tail -30 "$dir/cmake.log" >&2; exit 1; }
cmake --build "$dir/build" -j"$jobs" --target "${targets[@]}" >"$dir/build.log" 2>&1 ||
  { tail -40 "$dir/build.log" >&2; exit 1; }
rm -f "$dir/bin"
ln -s build/bin "$dir/bin" # llama.cpp puts programs and libraries in its build/bin
for t in llama-bench llama-server llama-cli llama-completion llama-perplexity; do
  [ -x "$dir/bin/$t" ] || { echo "llamacpp: $t was not built (see $dir/build.log)" >&2; exit 1; }
done
echo "$stamp" > "$dir/STAMP"
echo "$dir/bin"
