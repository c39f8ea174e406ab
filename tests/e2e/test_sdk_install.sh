#!/usr/bin/env bash
# test_sdk_install.sh — the SDK as an outside developer meets it:
#
#   1. `cmake --install` the build tree into a scratch prefix;
#   2. build sdk/examples/attention_window against that prefix only, with
#      CMake (find_package(FastServe)) and with pkg-config (fastserve-sdk);
#   3. run the INSTALLED fsrun: it must find its own plugins relative to its
#      directory, list and describe the example, train a tiny model with it
#      (by name through FS_PLUGIN_PATH), generate with it (by path), and,
#      with window >= max_seq, reproduce dense attention's losses.
#
# Environment (tests/e2e/CMakeLists.txt): FS_SOURCE_DIR, FS_BUILD_DIR,
# FS_TEST_TMP (scratch, ours alone).
set -euo pipefail

: "${FS_SOURCE_DIR:?}" "${FS_BUILD_DIR:?}" "${FS_TEST_TMP:?}"
case "$FS_TEST_TMP" in /|"") echo "FAIL: FS_TEST_TMP='$FS_TEST_TMP' is not a scratch directory" >&2; exit 1 ;; esac
T=$FS_TEST_TMP
rm -rf "$T"
mkdir -p "$T"
T=$(cd "$T" && pwd -P)
P=$T/prefix
EXAMPLE=$FS_SOURCE_DIR/sdk/examples/attention_window
SO=fsplugin_attention_example_window.so

step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}
# check DESCRIPTION COMMAND...: runs the command, fails the test if it fails
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
# Runs the installed fsrun; stdout to $1.out, stderr to $1.err; fails the
# test (showing stderr) on a non-zero exit.
run_fsrun() {
    local name=$1
    shift
    local rc=0
    "$FSRUN_INSTALLED" "$@" >"$T/$name.out" 2>"$T/$name.err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        sed 's/^/  stderr: /' "$T/$name.err" >&2
        fail "fsrun $* exited with $rc"
    fi
    ok "fsrun $* exits 0"
}
# The last stdout line of run $1 must be one JSON object holding key $2.
json_last_line() {
    local name=$1 key=$2 last
    last=$(tail -n 1 "$T/$name.out")
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$last" "$key" <<'PY' || fail "$name: last stdout line is not a JSON object with \"$key\": $last"
import json, sys
d = json.loads(sys.argv[1])
assert isinstance(d, dict) and sys.argv[2] in d, d
PY
    else
        case "$last" in "{"*"\"$key\""*"}") ;; *) fail "$name: last stdout line has no \"$key\": $last" ;; esac
    fi
    ok "$name: last stdout line is JSON with \"$key\""
}
json_value() { # run key -> the value of a numeric key in the last line
    tail -n 1 "$T/$1.out" | sed -n "s/.*\"$2\": *\([-0-9.eE+]*\).*/\1/p"
}

step "install into $P"
cmake --install "$FS_BUILD_DIR" --prefix "$P" >"$T/install.log"
FSRUN_INSTALLED=$P/bin/fsrun
check "installed fsrun is executable" test -x "$FSRUN_INSTALLED"
PC=$(find "$P" -name fastserve-sdk.pc -path '*/pkgconfig/*' | head -n 1)
[ -n "$PC" ] || fail "no fastserve-sdk.pc under $P"
LIBDIR=$(dirname "$(dirname "$PC")")
ok "pkg-config file at ${PC#"$P"/} (libdir ${LIBDIR#"$P"/})"
PLUGINDIR=$LIBDIR/fastserve/plugins
for f in plugin.h tensor.h attention.h parallel.h distill.h comm.h; do
    check "header include/fastserve/$f installed" test -f "$P/include/fastserve/$f"
done
for f in fsplugin_attention_dense.so fsplugin_parallel_single.so fsplugin_distill_soft_kd.so; do
    check "plugin ${PLUGINDIR#"$P"/}/$f installed" test -f "$PLUGINDIR/$f"
done
check "CMake package installed" test -f "$LIBDIR/cmake/FastServe/FastServeConfig.cmake"
if find "$P" -name 'fsplugin_*broken*' -o -name 'fsplugin_*notaplugin*' | grep -q .; then
    fail "the loader tests' broken plugins were installed"
fi
ok "no test plugins installed"

step "the installed fsrun finds its own plugins (relative to its directory)"
# FS_PLUGIN_PATH unset: the prefix comes before the configured install
# directory and the build tree, so the installed copy must win.
env -u FS_PLUGIN_PATH "$FSRUN_INSTALLED" --describe dense >"$T/describe_dense.out"
found=$(sed -n 's/^ *file: //p' "$T/describe_dense.out")
[ -n "$found" ] || fail "fsrun --describe dense printed no file line"
[ "$(realpath "$found")" = "$(realpath "$PLUGINDIR/fsplugin_attention_dense.so")" ] ||
    fail "installed fsrun loaded dense from $found, not from $PLUGINDIR"
ok "dense loaded from $found"

step "build the example with CMake against the prefix"
cmake -S "$EXAMPLE" -B "$T/build-cmake" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >"$T/cmake-configure.log" ||
    { cat "$T/cmake-configure.log" >&2; fail "cmake configure of the example"; }
cmake --build "$T/build-cmake" -j2 >"$T/cmake-build.log" ||
    { cat "$T/cmake-build.log" >&2; fail "cmake build of the example"; }
check "CMake build made $SO" test -f "$T/build-cmake/$SO"
flags=$(cat "$T"/build-cmake/CMakeFiles/fsplugin_attention_example_window.dir/flags.make)
case "$flags" in *"$P/include"*) ok "CMake build uses the installed headers" ;;
*) fail "CMake build does not use $P/include: $flags" ;; esac
case "$flags" in *"$FS_SOURCE_DIR/sdk/include"*) fail "CMake build uses the source tree's headers" ;; esac
# the example's own test: forward, exact gradients, decode and scores against
# a dense-mask reference, through the plugin ABI with a stand-in host
ctest --test-dir "$T/build-cmake" --output-on-failure >"$T/example-ctest.log" 2>&1 ||
    { cat "$T/example-ctest.log" >&2; fail "the example's numerical check (ctest in its CMake build)"; }
ok "the example's numerical check passes (ctest in its CMake build)"

step "build the example with pkg-config against the prefix"
export PKG_CONFIG_PATH=$LIBDIR/pkgconfig
incdir=$(pkg-config --variable=includedir fastserve-sdk)
[ "$(realpath "$incdir")" = "$(realpath "$P/include")" ] ||
    fail "pkg-config includedir is $incdir, not inside the prefix $P"
ok "pkg-config includedir resolves to $P/include"
pdir=$(pkg-config --variable=plugindir fastserve-sdk)
[ "$(realpath "$pdir")" = "$(realpath "$PLUGINDIR")" ] || fail "pkg-config plugindir is $pdir, not $PLUGINDIR"
ok "pkg-config plugindir resolves to $PLUGINDIR"
make -C "$EXAMPLE" BUILD="$T/build-pc" CFLAGS="-O2 -Wall -Wextra -Werror" all check >"$T/make.log" 2>&1 ||
    { cat "$T/make.log" >&2; fail "make all check (pkg-config build) of the example"; }
check "pkg-config build made $SO" test -f "$T/build-pc/$SO"
grep -q "example_window: all checks passed" "$T/make.log" || fail "make check did not pass"
ok "make check: $(grep -c ' ok$' "$T/make.log") windows checked"
[ ! -e "$EXAMPLE/$SO" ] && [ ! -e "$EXAMPLE/check_window" ] || fail "the Makefile wrote into the source tree"
# and the documented one-liner
cc -std=c11 -O2 -shared -fPIC -fvisibility=hidden $(pkg-config --cflags fastserve-sdk) \
    -o "$T/oneline-$SO" "$EXAMPLE/window.c" -lm
check "one-line cc \$(pkg-config --cflags fastserve-sdk) build" test -f "$T/oneline-$SO"

for so in "$T/build-cmake/$SO" "$T/build-pc/$SO"; do
    syms=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v -x -e _init -e _fini | tr '\n' ' ')
    [ "$syms" = "fs_plugin_entry " ] || fail "$so exports '$syms', not just fs_plugin_entry"
    ok "${so#"$T"/} exports only fs_plugin_entry"
done

step "list and describe the example"
export FS_PLUGIN_PATH=$T/build-cmake
run_fsrun list --list-plugins
grep -Eq "^attention +example_window +1\.0\.0 +$T/build-cmake/$SO\$" "$T/list.out" ||
    { cat "$T/list.out" >&2; fail "--list-plugins does not list example_window from $T/build-cmake"; }
ok "--list-plugins lists example_window"
if grep -q '^broken' "$T/list.out"; then cat "$T/list.out" >&2; fail "--list-plugins reports a broken plugin"; fi
run_fsrun describe --describe example_window
grep -Eq '^ +window +int +default 16 ' "$T/describe.out" ||
    { cat "$T/describe.out" >&2; fail "--describe example_window does not show the window key"; }
ok "--describe example_window shows 'window  int  default 16'"
run_fsrun describe_path --describe "$T/build-pc/$SO"
grep -q "^attention plugin 'example_window'" "$T/describe_path.out" || fail "--describe by path"
ok "--describe by path"

step "train a tiny model with example_window (by name), then generate (by path)"
# a few KB of text with some structure to learn
for i in $(seq 1 150); do
    echo "line $i: the quick brown fox jumps over the lazy dog, $((i * 7 % 13)) times."
done >"$T/train.txt"
for i in $(seq 1 20); do echo "line $i: a slow red fox walks past the busy cat."; done >"$T/val.txt"
write_graph() { # file plugin extra-attention-line out-dir max_tokens
    cat >"$1" <<EOF
; written by test_sdk_install.sh
[model]
vocab_size = 256
n_layer = 1
n_head = 2
n_embd = 16
max_seq = 32

[attention]
plugin = $2
$3

[parallel]
plugin = single

[data]
train = $T/train.txt
val = $T/val.txt

[train]
steps = 3
batch = 2
lr = 1e-2
warmup = 1
val_every = 0
val_batches = 1
seed = 7

[generate]
prompt = line
max_tokens = $5
temperature = 0.8
top_k = 20

[run]
out = $4
threads = 2
progress = off
EOF
}
write_graph "$T/window.ini" example_window "window = 8" "$T/run" 10
run_fsrun train "$T/window.ini"
json_last_line train tokens_per_s
json_last_line train loss
loss=$(json_value train loss)
awk -v v="$loss" 'BEGIN { exit !(v ~ /^[0-9.eE+-]+$/ && v + 0 > 0 && v + 0 < 20) }' ||
    fail "training loss '$loss' is not a finite positive number"
ok "training loss $loss"
grep -q -- '--- sample (10 tokens' "$T/train.out" || fail "no 10-token sample after training"
ok "a 10-token sample after training (decode through the plugin)"
check "checkpoint written to $T/run" test -f "$T/run/model.safetensors"

run_fsrun generate "$T/window.ini" --mode generate --set "attention.plugin=$T/build-pc/$SO"
json_last_line generate tokens_per_s
[ "$(json_value generate tokens)" = 10 ] || fail "generate made $(json_value generate tokens) tokens, not 10"
ok "generate (plugin by path) made 10 tokens"

step "window >= max_seq reproduces dense causal attention"
write_graph "$T/wide.ini" example_window "window = 32" "$T/run-wide" 0
write_graph "$T/dense.ini" dense "" "$T/run-dense" 0
run_fsrun wide "$T/wide.ini"
run_fsrun dense "$T/dense.ini"
lw=$(json_value wide loss)
ld=$(json_value dense loss)
awk -v a="$lw" -v b="$ld" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 1e-4) }' ||
    fail "loss after 3 steps: example_window(window 32) $lw vs dense $ld"
ok "loss after 3 steps: example_window(window 32) $lw, dense $ld"

step "a bad key value is refused before any work"
rc=0
"$FSRUN_INSTALLED" "$T/window.ini" --set attention.window=0 >"$T/bad.out" 2>"$T/bad.err" || rc=$?
[ "$rc" -eq 2 ] || fail "window = 0 exited with $rc, not 2"
grep -q "window" "$T/bad.err" || fail "window = 0: the message does not name the key: $(cat "$T/bad.err")"
ok "window = 0 refused with exit 2: $(head -n 1 "$T/bad.err")"

printf '\nPASS: SDK install, out-of-tree build (CMake and pkg-config) and installed fsrun\n'
