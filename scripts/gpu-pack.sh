#!/usr/bin/env bash
# gpu-pack.sh — a CUDA build made here, packed for a GPU machine that has the
# CUDA runtime (cuBLAS, NCCL, a driver) but none of FastServe's host
# libraries and no package registry (the metered machines this project is
# lent: gpu-check.sh's header). Writes .gpu/bundle.tar.xz (build/'s fsrun,
# plugins, GPU tests and bench_backend, with every library they link that
# is not the C runtime's or CUDA's) and .gpu/run.sh, which unpacks it there
# and runs gpu-check.sh on it:
#
#   scripts/gpu-pack.sh                here, after scripts/setup.sh (CUDA on)
#   BUDGET_S=300 bash .gpu/run.sh      there, from the repository's root;
#                                      the log and tables go to $OUT
#
# .gpu/ is git-ignored: carry it to the GPU machine with the working tree.
# The build's paths are absolute (the GPU tests read their fixtures from
# the source directory), so run.sh links this checkout's path there to the
# copy it runs in. About 14 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[ -x build/fsrun ] && grep -q "FS_WITH_CUDA:BOOL=ON" build/CMakeCache.txt ||
  { echo "gpu-pack: build/ is not a CUDA build (scripts/setup.sh where nvcc is)" >&2; exit 1; }
stage=.gpu/stage
rm -rf "$stage" && mkdir -p "$stage"/build/plugins "$stage"/build/tests/gpu "$stage"/build/bench "$stage"/lib
cp build/CMakeCache.txt build/fsrun "$stage"/build/
cp build/plugins/*.so "$stage"/build/plugins/
cp build/tests/gpu/CTestTestfile.cmake "$stage"/build/tests/gpu/
find build/tests/gpu -maxdepth 1 -type f -executable -name 'test_gpu_*' -exec cp {} "$stage"/build/tests/gpu/ \;
cp build/bench/bench_backend "$stage"/build/bench/
touch "$stage"/build/.from-gpu-pack
# what they link, less the C runtime (the GPU machine's own) and CUDA's
for b in "$stage"/build/fsrun "$stage"/build/plugins/*.so "$stage"/build/tests/gpu/test_gpu_* \
         "$stage"/build/bench/bench_backend; do
  ldd "$b"
done | awk '$3 ~ /^\// {print $1, $3}' | sort -u |
  grep -Ev "^(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+|libcuda|libcublas|libcublasLt|libnccl|libcudart)\.so" |
  while read -r name path; do cp -L "$path" "$stage/lib/$name"; done
(cd "$stage" && tar cf - build lib | xz -T0 -3 > ../bundle.tar.xz)
rm -rf "$stage"

cat > .gpu/run.sh <<EOF
#!/usr/bin/env bash
# made by scripts/gpu-pack.sh: unpack .gpu/bundle.tar.xz as build/ and run
# scripts/gpu-check.sh on it (BUDGET_S, \$OUT as gpu-check.sh takes them)
set -u
src=$root
if [ "\$PWD" != "\$src" ] && [ ! -e "\$src" ]; then mkdir -p "\$(dirname "\$src")" && ln -s "\$PWD" "\$src"; fi
cd "\$src" || exit 1
if [ -e build ] && [ ! -e build/.from-gpu-pack ]; then
  echo "gpu run: build/ is a build of its own here, not an unpacked bundle: run this on the GPU machine" >&2
  exit 1
fi
rm -rf build && tar xJf .gpu/bundle.tar.xz -C .gpu && mv .gpu/build build || exit 1
# cuBLAS and NCCL where the machine keeps them (NCCL may be a Python
# wheel's); never cuda/compat, whose libcuda hides the device from a
# matching driver
dirs=""
for n in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  f=\$(find /usr/local /opt /usr/lib /usr/lib64 -name "\$n" -not -path "*/compat/*" 2>/dev/null | head -n1)
  echo "gpu run: \$n: \${f:-not found}"
  [ -n "\$f" ] && dirs="\$dirs:\$(dirname "\$f")"
done
export LD_LIBRARY_PATH="\$src/.gpu/lib\$dirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
FS_GPU_BUILD=build exec scripts/gpu-check.sh "\${OUT:-build-gpu}"
EOF
chmod +x .gpu/run.sh
echo "gpu-pack: .gpu/bundle.tar.xz ($(du -h .gpu/bundle.tar.xz | cut -f1)) and .gpu/run.sh"
