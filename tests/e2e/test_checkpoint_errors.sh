#!/usr/bin/env bash
# test_checkpoint_errors.sh — bad checkpoints and failing writes, all runtime
# failures: exit 1, one "fsrun: ..." line naming the file and the problem,
# never a signal / core dump, nothing half-written.
#  - eval and generate with --checkpoint pointing at a file that is
#    truncated, not safetensors at all (random bytes, a text file, 4 bytes),
#    of another model shape, holding a NaN or an Inf, or missing;
#  - --resume from a checkpoint without training state;
#  - [run] out below a regular file (cannot be created), and a read-only
#    out directory when not running as root;
#  - "disk full" (ulimit -f): the run fails, the previous checkpoint is
#    byte-identical afterwards and no temporary file is left behind.
. "$(dirname "$0")/lib.sh"

standard_data
write_graph g.ini
must_fsrun g.ini
good=out/model.safetensors
[ -f "$good" ] || die "training wrote no $good"
size=$(wc -c <"$good")

# a checkpoint of another shape: the same graph with n_embd 16
write_graph g16.ini model.n_embd=16 run.out=out16
must_fsrun g16.ini

head -c $((size / 2)) "$good" >truncated.safetensors
head -c 100 "$good" >truncated_header.safetensors
head -c 4 "$good" >tiny.safetensors
python3 -c "import random; r = random.Random(7); open('random.safetensors', 'wb').write(bytes(r.randrange(256) for _ in range(4096)))"
make_text text.safetensors 4096 5
st_patch_f32 "$good" nan.safetensors transformer.wte.weight 0 nan
st_patch_f32 "$good" inf.safetensors transformer.h.1.mlp.c_proj.weight 5 inf
cmp -s "$good" nan.safetensors && die "st_patch_f32 did not change the file"
mkdir -p a_directory

# check_bad MODE FILE FRAGMENT...: fsrun --mode MODE --checkpoint FILE fails
# with exit 1 and one error line naming FILE and every FRAGMENT.
check_bad() {
    local mode=$1 file=$2
    shift 2
    local extra=()
    [ "$mode" = generate ] && extra=(--prompt "The ")
    assert_exit 1 "$FSRUN" g.ini --mode "$mode" --checkpoint "$file" "${extra[@]+"${extra[@]}"}"
    assert_one_error_line
    assert_err "$file" "$@"
    # no JSON result: a failed run must not look like a result to a script
    assert_not_contains "$(last_out)" "{" "$mode with $file prints no JSON result"
}

for mode in eval generate; do
    check_bad "$mode" truncated.safetensors "truncated"
    check_bad "$mode" truncated_header.safetensors "truncated"
    check_bad "$mode" tiny.safetensors "not a safetensors file"
    check_bad "$mode" random.safetensors "not a safetensors file"
    check_bad "$mode" text.safetensors "not a safetensors file"
    check_bad "$mode" out16/model.safetensors "transformer.wte.weight" "[256, 16]" "[256, 32]" "shape"
    check_bad "$mode" nan.safetensors "transformer.wte.weight" "NaN"
    check_bad "$mode" inf.safetensors "transformer.h.1.mlp.c_proj.weight" "Inf"
    check_bad "$mode" missing.safetensors "no such file"
    check_bad "$mode" a_directory "no model.safetensors"
done
# special files are refused before they are read: a FIFO would block the
# open forever, /dev/zero never end
mkfifo fifo.safetensors
for mode in eval generate; do
    extra=()
    [ "$mode" = generate ] && extra=(--prompt "The ")
    for f in fifo.safetensors /dev/zero; do
        assert_exit 1 timeout 20 "$FSRUN" g.ini --mode "$mode" --checkpoint "$f" "${extra[@]+"${extra[@]}"}"
        assert_one_error_line
        assert_err "$f: not a regular file"
    done
done
# the good checkpoint still works, so the failures above were about the files
assert_exit 0 "$FSRUN" g.ini --mode eval --checkpoint "$good"
assert_exit 0 "$FSRUN" g.ini --mode generate --checkpoint "$good" --prompt "The "

# --resume from a model-only checkpoint (no step / rng / optimizer state)
python3 - "$good" noopt.safetensors <<'EOF'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
data = b[8 + n:]
meta = {'format': 'test'}
out, pieces, off = {}, [], 0
for k, v in h.items():
    if k == '__metadata__' or k.startswith('optimizer.'):
        continue
    s, e = v['data_offsets']
    out[k] = dict(v, data_offsets=[off, off + e - s])
    pieces.append(data[s:e])
    off += e - s
out['__metadata__'] = meta
hdr = json.dumps(out).encode()
hdr += b' ' * (-len(hdr) % 8)
open(sys.argv[2], 'wb').write(struct.pack('<Q', len(hdr)) + hdr + b''.join(pieces))
EOF
mkdir -p resume_out
cp noopt.safetensors resume_out/model.safetensors
assert_exit 0 "$FSRUN" g.ini --mode eval --checkpoint noopt.safetensors # a valid model checkpoint
assert_exit 1 "$FSRUN" g.ini --set run.out=resume_out --resume
assert_last_error_line "resume_out/model.safetensors"
cmp -s noopt.safetensors resume_out/model.safetensors && ok "a failed resume leaves the checkpoint alone" ||
    fail "a failed resume changed resume_out/model.safetensors"

# --resume with no checkpoint at all: a configuration error, before any work
assert_exit 2 "$FSRUN" g.ini --set run.out=fresh_out --resume
assert_one_error_line
assert_err "fresh_out/model.safetensors"

# ---- [run] out that cannot be written ----

echo "a regular file" >afile
assert_exit 1 "$FSRUN" g.ini --set run.out="$TMP/afile/sub"
assert_one_error_line
assert_err "afile/sub"
[ "$(cat afile)" = "a regular file" ] && ok "the regular file is untouched" || fail "afile was changed"

if [ "$(id -u)" -ne 0 ]; then
    mkdir -p ro_out
    cp "$good" ro_out/model.safetensors
    chmod 0555 ro_out
    assert_exit 1 "$FSRUN" g.ini --set run.out=ro_out
    assert_one_error_line
    assert_err "ro_out" "not writable"
    cmp -s "$good" ro_out/model.safetensors && ok "read-only out: the old checkpoint survives" ||
        fail "read-only out: the old checkpoint changed"
    chmod 0755 ro_out
else
    echo "skip - read-only [run] out: running as root, chmod does not stop writes"
fi

# ---- disk full while writing the checkpoint ----
# The previous checkpoint comes from another seed, so a new one would differ.
write_graph df.ini run.out=df_out train.seed=7
must_fsrun df.ini
cp df_out/model.safetensors old.safetensors
write_graph df.ini run.out=df_out run.overwrite=true
# 64 KiB of file size: enough for metrics.jsonl, not for the ~420 KB checkpoint.
# SIGXFSZ ignored, so write() fails with EFBIG as on a full disk.
run bash -c '(ulimit -f 64; trap "" XFSZ; exec "$0" "$1")' "$FSRUN" df.ini
if [ "$E2E_RC" -eq 1 ]; then ok "disk full: exit 1"; else
    fail "disk full: exit 1 expected, got $E2E_RC"
    show_last
fi
assert_last_error_line "df_out/model.safetensors"
assert_not_contains "$(last_out)" '"checkpoint"' "disk full: no summary line claiming a checkpoint"
cmp -s old.safetensors df_out/model.safetensors && ok "disk full: the old checkpoint is byte-identical" ||
    fail "disk full: the old checkpoint was changed"
leftover=$(cd df_out && ls -A | grep -v -x -e model.safetensors -e metrics.jsonl -e training_state.safetensors \
    -e config.json || true)
assert_eq "$leftover" "" "disk full: no temporary file left in [run] out"
# and the survivor is still a usable checkpoint
assert_exit 0 "$FSRUN" df.ini --mode eval

e2e_finish
