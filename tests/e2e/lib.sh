# lib.sh — shared helpers for the end-to-end tests (sourced, not run).
#
# Every test_*.sh does:   . "$(dirname "$0")/lib.sh"   ...   e2e_finish
#
# It provides
#   - a fresh scratch directory ($FS_TEST_TMP, emptied first) that is the
#     working directory of the test, so graphs use short relative paths;
#   - make_text: deterministic English-like text (no corpus needed);
#   - write_graph: a tiny GPT graph with section.key=value overrides;
#   - fsrun_rc / assert_exit: run fsrun (or any command), keep stdout in
#     $E2E_OUT and stderr in $E2E_ERR, and check the exit status (a status
#     >= 128 — a signal, a core dump — is always a failure);
#   - assert_* helpers that record a failure and carry on, so one run shows
#     every broken behaviour; e2e_finish exits non-zero if any failed;
#   - die for setup steps the rest of the test cannot do without;
#   - JSON helpers (python3 from PATH) for summary lines and safetensors.
set -euo pipefail

: "${FSRUN:?FSRUN must name the fsrun binary (ctest sets it)}"
[ -x "$FSRUN" ] || { echo "FAIL: FSRUN=$FSRUN is not executable" >&2; exit 1; }
FSRUN="$(realpath "$FSRUN")" # the test cds into its scratch directory
if [ -z "${FS_PLUGIN_PATH:-}" ]; then
    FS_PLUGIN_PATH="$(dirname "$FSRUN")/plugins"
fi
# absolute entries only, for the same reason
FS_PLUGIN_PATH="$(IFS=:; for d in $FS_PLUGIN_PATH; do printf '%s:' "$(realpath -m "$d")"; done)"
export FS_PLUGIN_PATH="${FS_PLUGIN_PATH%:}"
if [ -z "${FS_TEST_TMP:-}" ]; then
    FS_TEST_TMP="${TMPDIR:-/tmp}/fs_e2e_$(basename "$0" .sh)"
fi
rm -rf "$FS_TEST_TMP"
mkdir -p "$FS_TEST_TMP"
cd "$FS_TEST_TMP"
TMP="$FS_TEST_TMP"
E2E_OUT="$TMP/.last.out"
E2E_ERR="$TMP/.last.err"
E2E_RC=0
E2E_FAILS=0
E2E_PASSES=0
E2E_NAME="$(basename "$0" .sh)"

# Tests assert results, never speed. OpenMP workers that spin while idle make
# a 0.1 s run take 20 s when the cores are shared with other jobs; sleeping
# workers change no number.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

# python3 from PATH may be a version-manager shim that costs ~0.1 s a call;
# resolve the real interpreter once.
E2E_PY="$(command python3 -c 'import sys; print(sys.executable)')" || { echo "FAIL: python3 is needed" >&2; exit 1; }
python3() { "$E2E_PY" "$@"; }

# need_hf: the Hugging Face reference (transformers, tokenizers, PyTorch) in
# the test venv, $FS_PYTHON (ctest sets it; scripts/pyenv.sh makes it). A
# missing one fails the test: it is never skipped.
need_hf() {
    if [ -z "${FS_PYTHON:-}" ] || [ ! -x "$FS_PYTHON" ]; then
        echo "FAIL: FS_PYTHON='${FS_PYTHON:-}' is not an interpreter: run scripts/pyenv.sh and configure with" \
            "-DFS_PYTHON=\$(scripts/pyenv.sh) (scripts/test.sh does both)" >&2
        exit 1
    fi
    "$FS_PYTHON" -c "import transformers, tokenizers, safetensors, torch" ||
        { echo "FAIL: $FS_PYTHON lacks transformers/tokenizers/torch: run scripts/pyenv.sh" >&2; exit 1; }
    HF_REF="$FS_SOURCE_DIR/tests/e2e/hf_ref.py"
}
hf() { "$FS_PYTHON" "$HF_REF" "$@"; }

# Assertions never stop the script (they always return 0): a failure is
# counted and printed, and e2e_finish fails the test at the end.

# ---- reporting ---------------------------------------------------------

ok() { E2E_PASSES=$((E2E_PASSES + 1)); echo "ok   - $*"; }

# A failed check: print what was expected, the last command's output, carry on.
fail() {
    E2E_FAILS=$((E2E_FAILS + 1))
    echo "FAIL - $*"
}

# A failed setup step: nothing after it can be meaningful.
die() {
    echo "FAIL - $* (fatal)"
    show_last
    echo "$E2E_NAME: aborted after $E2E_PASSES passed, $((E2E_FAILS + 1)) failed"
    exit 1
}

show_last() {
    echo "     --- last stdout (tail) ---"
    tail -n 5 "$E2E_OUT" 2>/dev/null | sed 's/^/     | /' || true
    echo "     --- last stderr (tail) ---"
    tail -n 8 "$E2E_ERR" 2>/dev/null | sed 's/^/     | /' || true
}

e2e_finish() {
    echo "$E2E_NAME: $E2E_PASSES passed, $E2E_FAILS failed"
    [ "$E2E_FAILS" -eq 0 ]
}

# ---- running -----------------------------------------------------------

# run CMD...: runs a command, stdout -> $E2E_OUT, stderr -> $E2E_ERR,
# status -> $E2E_RC; never trips set -e.
run() {
    set +e
    "$@" >"$E2E_OUT" 2>"$E2E_ERR"
    E2E_RC=$?
    set -e
}

# fsrun_rc ARGS...: run fsrun with ARGS (see run).
fsrun_rc() { run "$FSRUN" "$@"; }

# assert_exit CODE CMD...: CMD must exit with CODE (and never by a signal).
# Sets E2E_OK to 1 or 0 so a caller can skip dependent checks.
assert_exit() {
    local want=$1
    shift
    run "$@"
    if [ "$E2E_RC" -ge 128 ]; then
        fail "exit $want expected, got $E2E_RC (killed by signal $((E2E_RC - 128)), core dump?): $*"
        show_last
        E2E_OK=0
        return 0
    fi
    if [ "$E2E_RC" -ne "$want" ]; then
        fail "exit $want expected, got $E2E_RC: $*"
        show_last
        E2E_OK=0
        return 0
    fi
    local cmd="$*"
    ok "exit $want: ${cmd#"$FSRUN "}"
    E2E_OK=1
}

# must_fsrun ARGS...: a setup run of fsrun that has to succeed.
must_fsrun() {
    run "$FSRUN" "$@"
    [ "$E2E_RC" -eq 0 ] || die "setup: fsrun $* exited $E2E_RC"
}

# ---- assertions on text ------------------------------------------------

# assert_contains TEXT FRAGMENT [LABEL]
assert_contains() {
    case "$1" in
    *"$2"*) ok "${3:-contains '$2'}" ;;
    *)
        fail "${3:-text} should contain '$2'"
        printf '%s\n' "$1" | tail -n 6 | sed 's/^/     | /'
        ;;
    esac
}

# assert_not_contains TEXT FRAGMENT [LABEL]
assert_not_contains() {
    case "$1" in
    *"$2"*)
        fail "${3:-text} should not contain '$2'"
        printf '%s\n' "$1" | tail -n 6 | sed 's/^/     | /'
        ;;
    *) ok "${3:-does not contain '$2'}" ;;
    esac
}

# assert_eq GOT WANT LABEL
assert_eq() {
    if [ "$1" == "$2" ]; then
        ok "$3 ($1)"
    else
        fail "$3: got '$1', expected '$2'"
    fi
}

# assert_ne A B LABEL
assert_ne() {
    if [ "$1" != "$2" ]; then
        ok "$3"
    else
        fail "$3: both are '$1'"
    fi
}

last_out() { cat "$E2E_OUT"; }
last_err() { cat "$E2E_ERR"; }

# assert_err FRAGMENT...: the last stderr contains every fragment.
assert_err() {
    local f
    for f in "$@"; do assert_contains "$(last_err)" "$f" "stderr mentions '$f'"; done
}

# assert_one_error_line: stderr is exactly one line, "fsrun: ..." — what a
# configuration error must look like (no progress, no stack of messages).
assert_one_error_line() {
    local n
    n=$(grep -c '' "$E2E_ERR" || true)
    if [ "$n" -eq 1 ] && head -n 1 "$E2E_ERR" | grep -q '^fsrun: '; then
        ok "stderr is one 'fsrun: ...' line"
    else
        fail "stderr should be exactly one line starting 'fsrun: ' (got $n lines)"
        sed 's/^/     | /' "$E2E_ERR" | head -n 10
    fi
}

# assert_last_error_line FRAGMENT...: the last stderr line is "fsrun: ..."
# and contains every fragment (for failures after progress output).
assert_last_error_line() {
    local line f
    line=$(tail -n 1 "$E2E_ERR")
    case "$line" in
    "fsrun: "*) ok "last stderr line is an 'fsrun: ...' error" ;;
    *) fail "last stderr line should start with 'fsrun: ': '$line'" ;;
    esac
    for f in "$@"; do assert_contains "$line" "$f" "error line mentions '$f'"; done
}

# ---- numbers -------------------------------------------------------------

# assert_num A OP B LABEL     (OP: < <= > >= ==, floats allowed)
assert_num() {
    if python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[3]); sys.exit(0 if eval('a ' + sys.argv[2] + ' b') else 1)" "$1" "$2" "$3"; then
        ok "$4 ($1 $2 $3)"
    else
        fail "$4: expected $1 $2 $3"
    fi
}

# assert_close A B TOL LABEL
assert_close() {
    if python3 -c "import sys; sys.exit(0 if abs(float(sys.argv[1]) - float(sys.argv[2])) <= float(sys.argv[3]) else 1)" "$1" "$2" "$3"; then
        ok "$4 ($1 ~ $2 within $3)"
    else
        fail "$4: $1 and $2 differ by more than $3"
    fi
}

# ---- JSON ----------------------------------------------------------------

# json_last FILE KEY: KEY of the JSON object on the last non-empty line of
# FILE (stdout of fsrun ends with one; the text before it is raw bytes).
# Strings print raw, numbers as Python prints them, null as "null", a
# missing key, bad JSON or a line that is not UTF-8 as "<missing>" /
# "<not json>".
json_last() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1], 'rb').read().split(b'\n') if l.strip()]
try:
    obj = json.loads(lines[-1].decode('utf-8'))
except Exception:
    print('<not json>'); sys.exit(0)
v = obj.get(sys.argv[2], '<missing>') if isinstance(obj, dict) else '<not json>'
print('null' if v is None else v)
EOF
}

# json_text_len FILE: the length in UTF-8 bytes of "text" in the last JSON
# line of FILE (= the generated bytes when they are valid UTF-8, as ASCII is).
json_text_len() {
    python3 - "$1" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1], 'rb').read().split(b'\n') if l.strip()]
print(len(json.loads(lines[-1].decode('utf-8'))['text'].encode('utf-8')))
EOF
}

# metrics_col FILE KEY: the raw text of KEY in every metrics.jsonl row that
# has it, "STEP VALUE" per line, value exactly as written (for string-equal
# comparisons of losses).
metrics_col() {
    python3 - "$1" "$2" <<'EOF'
import json, re, sys
key = sys.argv[2]
for line in open(sys.argv[1]):
    obj = json.loads(line)
    if key in obj:
        raw = re.search(r'"%s":\s*([^,}]+)' % re.escape(key), line).group(1).strip()
        print(obj['step'], raw)
EOF
}

# tensors_equal A B [PREFIX]: every tensor (optionally: whose name starts with
# PREFIX) of A has the same bytes in B
tensors_equal() {
    python3 - "$@" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop('__metadata__', None)
    return {k: b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]] for k, v in h.items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
pre = sys.argv[3] if len(sys.argv) > 3 else ''
names = [k for k in a if k.startswith(pre)]
assert names, 'no tensors'
for k in names:
    assert k in b, k + ' missing'
    assert a[k] == b[k], k + ' differs'
EOF
}

# st_header FILE: the safetensors header of FILE as JSON on one line.
st_header() {
    python3 - "$1" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
print(json.dumps(json.loads(b[8:8 + n])))
EOF
}

# st_patch_f32 SRC DST TENSOR INDEX VALUE: copy SRC to DST with one float of
# TENSOR (element INDEX, flat) replaced by VALUE ('nan', 'inf' or a number).
st_patch_f32() {
    python3 - "$@" <<'EOF'
import json, struct, sys
src, dst, name, idx, val = sys.argv[1:6]
b = bytearray(open(src, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
t = json.loads(b[8:8 + n])[name]
assert t['dtype'] == 'F32'
off = 8 + n + t['data_offsets'][0] + 4 * int(idx)
assert off + 4 <= 8 + n + t['data_offsets'][1]
b[off:off + 4] = struct.pack('<f', float(val))
open(dst, 'wb').write(bytes(b))
EOF
}

# st_set_meta SRC DST KEY VALUE: copy SRC to DST with __metadata__[KEY] set to
# VALUE ('-' removes it); the tensors' bytes are unchanged.
st_set_meta() {
    python3 - "$@" <<'EOF'
import json, struct, sys
src, dst, key, val = sys.argv[1:5]
b = open(src, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
meta = h.setdefault('__metadata__', {})
if val == '-':
    meta.pop(key, None)
else:
    meta[key] = val
text = json.dumps(h, separators=(',', ':')).encode()
text += b' ' * (-(8 + len(text)) % 8)
open(dst, 'wb').write(struct.pack('<Q', len(text)) + text + b[8 + n:])
EOF
}

# st_add_tensor SRC DST NAME: copy SRC to DST with one more F32 tensor NAME
# of 4 zeros.
st_add_tensor() {
    python3 - "$@" <<'EOF'
import json, struct, sys
src, dst, name = sys.argv[1:4]
b = open(src, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
data = b[8 + n:]
h[name] = {'dtype': 'F32', 'shape': [4], 'data_offsets': [len(data), len(data) + 16]}
text = json.dumps(h, separators=(',', ':')).encode()
text += b' ' * (-(8 + len(text)) % 8)
open(dst, 'wb').write(struct.pack('<Q', len(text)) + text + data + bytes(16))
EOF
}

# ---- data and graphs -----------------------------------------------------

# make_text FILE NBYTES [SEED]: deterministic English-like text of exactly
# NBYTES bytes: short sentences over a small vocabulary, so a tiny model
# learns it quickly.
make_text() {
    python3 - "$1" "$2" "${3:-1}" <<'EOF'
import sys
path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
subjects = ["the cat", "a dog", "the old man", "my sister", "the king", "a bird", "the farmer", "our teacher"]
verbs = ["sat on", "looked at", "walked to", "found", "spoke of", "ran past", "carried", "waited by"]
objects = ["the mat", "the river", "a small house", "the green hill", "the gate", "an apple tree", "the market", "the sea"]
x = seed * 2654435761 % 4294967296 or 1
def rnd(k):
    global x
    x = (1103515245 * x + 12345) % 2147483648
    return (x >> 16) % k
out = []
size = 0
while size < n:
    s = "%s %s %s. " % (subjects[rnd(8)], verbs[rnd(8)], objects[rnd(8)])
    s = s[0].upper() + s[1:]
    if rnd(6) == 0:
        s += "\n"
    out.append(s)
    size += len(s)
open(path, 'w').write("".join(out)[:n])
EOF
}

# write_graph FILE [section.key=value ...] [+RAW-INI-LINE ...]
# A tiny GPT (2 layers, 2 heads, C = 32, T = 32, one thread) that trains in
# a fraction of a second. section.key=value replaces or adds a key; section.key=- removes
# it; an argument starting with '+' is appended verbatim as a line (for
# extra sections or deliberately broken lines).
write_graph() {
    python3 - "$@" <<'EOF'
import sys
path, args = sys.argv[1], sys.argv[2:]
g = {
    "model": {"vocab_size": "256", "n_layer": "2", "n_head": "2", "n_embd": "32", "max_seq": "32"},
    "attention": {"plugin": "dense", "causal": "true"},
    "parallel": {"plugin": "single"},
    "data": {"train": "train.txt", "val": "val.txt"},
    "train": {"steps": "10", "batch": "4", "lr": "3e-3", "warmup": "2", "val_every": "5",
              "val_batches": "4", "seed": "1337"},
    "generate": {"max_tokens": "16", "temperature": "0.8", "prompt": "The "},
    # one thread: tiny matmuls gain nothing from more, and tests may share
    # the machine; test_train_resume sets 2 where determinism is checked.
    # The CPU's own kernels, on a machine with a GPU too (auto would train
    # there): these tests hold them to their references; the device path is
    # test_train_backend's (the cpu backend) and tests/gpu's
    "run": {"out": "out", "progress": "off", "threads": "1", "device": "cpu"},
}
raw = []
for a in args:
    if a.startswith("+"):
        raw.append(a[1:])
        continue
    k, v = a.split("=", 1)
    sec, key = k.rsplit(".", 1)
    g.setdefault(sec, {})
    if v == "-":
        g[sec].pop(key, None)
    else:
        g[sec][key] = v
with open(path, "w") as f:
    f.write("; written by tests/e2e/lib.sh write_graph\n")
    for sec, kv in g.items():
        f.write("[%s]\n" % sec)
        for k, v in kv.items():
            f.write("%s = %s\n" % (k, v))
        f.write("\n")
    for line in raw:
        f.write(line + "\n")
EOF
}

# line_of FILE REGEX: the line number of the first line matching REGEX.
line_of() { grep -n -m1 -E "$2" "$1" | cut -d: -f1; }

# standard_data: train.txt (6000 bytes) and val.txt (1500 bytes, other seed).
standard_data() {
    make_text train.txt 6000 1
    make_text val.txt 1500 2
}
