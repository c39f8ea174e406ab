#!/usr/bin/env bash
# test_distill_plugins.sh — the distilbert and tinybert plugins in distill
# mode, [distill] init, and their configuration errors:
#  - distilbert (cosine on the last layer and on mapped layers) and tinybert
#    (two stages, each its own run and checkpoint; a narrower student with
#    its projection) train a 2-layer student from a 4-layer teacher;
#  - tinybert's projections are trained (they leave the identity) and saved
#    in the student checkpoint, which eval and generate still load;
#  - the same seed gives the same numbers bit for bit (2 threads), and a
#    two-stage run stopped in its first stage and resumed equals an
#    uninterrupted one;
#  - init = teacher-layers copies exactly the listed teacher layers;
#  - bad configuration is exit 2, one line, before any work: a layer map out
#    of range, distilbert across widths, init across widths or with the
#    wrong number of layers, a student whose attention (longformer) cannot
#    expose its scores, teacher_cache with a loss on hidden states.
. "$(dirname "$0")/lib.sh"

standard_data
write_graph teacher.ini model.n_layer=4 train.steps=30 run.out=teacher_out generate.max_tokens=0
must_fsrun teacher.ini
[ -f teacher_out/model.safetensors ] || die "the teacher run wrote no checkpoint"

student_graph() { # FILE [overrides...]
    local f=$1
    shift
    write_graph "$f" run.out=student_out generate.max_tokens=0 train.steps=8 run.threads=2 \
        distill.teacher=teacher.ini "$@"
}


# ---- distilbert ----
student_graph db.ini distill.plugin=distilbert run.out=db_out
assert_exit 0 "$FSRUN" db.ini --mode distill
assert_eq "$(json_last "$E2E_OUT" mode)" distill "distilbert: summary mode"
assert_eq "$(json_last "$E2E_OUT" steps)" 8 "distilbert: summary steps"
assert_contains "$(last_err)" "plugin distilbert" "stderr names distilbert"
student_graph db_mapped.ini distill.plugin=distilbert distill.cos_layers=mapped distill.layer_map=1,3 run.out=dbm_out
assert_exit 0 "$FSRUN" db_mapped.ini --mode distill
python3 - db_out/metrics.jsonl dbm_out/metrics.jsonl <<'EOF' && ok "cos_layers = mapped changes the loss" || fail "cos_layers = mapped gives the same losses as last"
import json, sys
a = [json.loads(l)['loss'] for l in open(sys.argv[1]) if '"loss"' in l]
b = [json.loads(l)['loss'] for l in open(sys.argv[2]) if '"loss"' in l]
assert a[0] != b[0]
EOF

# ---- tinybert: two stages ----
student_graph tb.ini distill.plugin=tinybert run.out=tb_out
assert_exit 0 "$FSRUN" tb.ini --mode distill
assert_contains "$(last_err)" "phase 1/2 'intermediate': 4 steps" "stderr: the intermediate stage"
assert_contains "$(last_err)" "phase 2/2 'prediction': 4 steps" "stderr: the prediction stage"
[ -f tb_out/phase1-intermediate/model.safetensors ] && ok "the intermediate stage has its own checkpoint" ||
    fail "no tb_out/phase1-intermediate/model.safetensors"
assert_eq "$(json_last "$E2E_OUT" checkpoint)" tb_out/model.safetensors "the last stage writes [run] out"
assert_eq "$(metrics_col tb_out/phase1-intermediate/metrics.jsonl loss | wc -l)" 4 "4 intermediate steps"
assert_eq "$(metrics_col tb_out/metrics.jsonl loss | wc -l)" 4 "4 prediction steps"
python3 - tb_out/phase1-intermediate/model.safetensors <<'EOF' && ok "the projections were trained (moved off the identity)" || fail "the projections did not move"
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
for name in ('plugin.distill.proj_hidden', 'plugin.distill.proj_embedding'):
    t = h[name]
    assert t['shape'] == [32, 32], t
    lo, hi = t['data_offsets']
    w = struct.unpack('<%df' % ((hi - lo) // 4), b[8 + n + lo:8 + n + hi])
    moved = max(abs(w[i * 32 + j] - (1.0 if i == j else 0.0)) for i in range(32) for j in range(32))
    assert moved > 1e-4, (name, moved)
EOF
assert_exit 0 "$FSRUN" tb.ini --mode eval
assert_exit 0 "$FSRUN" tb.ini --mode generate --set generate.max_tokens=8

# a narrower student: the projections map 16 -> 32
student_graph tb16.ini distill.plugin=tinybert model.n_embd=16 model.n_head=4 run.out=tb16_out distill.attention=probs
assert_exit 0 "$FSRUN" tb16.ini --mode distill
python3 - tb16_out/model.safetensors <<'EOF' && ok "16 -> 32 projections in the checkpoint" || fail "wrong projection shapes"
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
h = json.loads(b[8:8 + struct.unpack('<Q', b[:8])[0]])
assert h['plugin.distill.proj_hidden']['shape'] == [16, 32]
assert h['plugin.distill.proj_embedding']['shape'] == [16, 32]
EOF

# ---- the same seed, the same numbers, bit for bit ----
for plugin in distilbert tinybert; do
    for run in a b; do
        student_graph "rep_$plugin$run.ini" distill.plugin=$plugin distill.stages=joint run.out="rep_${plugin}_$run"
        [ $plugin = distilbert ] && sed -i '/^stages = /d' "rep_$plugin$run.ini"
        must_fsrun "rep_$plugin$run.ini" --mode distill
    done
    assert_eq "$(metrics_col rep_${plugin}_a/metrics.jsonl loss | md5sum)" \
        "$(metrics_col rep_${plugin}_b/metrics.jsonl loss | md5sum)" "$plugin: two runs, the same losses"
    tensors_equal rep_${plugin}_a/model.safetensors rep_${plugin}_b/model.safetensors &&
        ok "$plugin: two runs, the same checkpoint bit for bit" || fail "$plugin: the checkpoints differ"
done

# ---- gradient accumulation: 2 x 2 windows == 4 windows (the plugin's own
# gradients and the hidden-state and attention gradients scaled alike) ----
for plugin in distilbert tinybert; do
    extra=()
    [ $plugin = tinybert ] && extra=(distill.stages=joint)
    # run.overwrite: the second plugin's runs replace the first's
    student_graph acc1.ini distill.plugin=$plugin train.batch=4 run.out=acc1_out train.steps=4 run.overwrite=true \
        "${extra[@]}"
    student_graph acc2.ini distill.plugin=$plugin train.batch=2 train.grad_accum=2 run.out=acc2_out train.steps=4 \
        run.overwrite=true "${extra[@]}"
    must_fsrun acc1.ini --mode distill
    must_fsrun acc2.ini --mode distill
    python3 - acc1_out/metrics.jsonl acc2_out/metrics.jsonl <<'EOF' && ok "$plugin: batch 4 == batch 2 x grad_accum 2 (losses within 1e-4)" || fail "$plugin: gradient accumulation changes the losses"
import json, sys
a = [json.loads(l)['loss'] for l in open(sys.argv[1]) if '"loss"' in l]
b = [json.loads(l)['loss'] for l in open(sys.argv[2]) if '"loss"' in l]
assert len(a) == len(b) == 4, (a, b)
for x, y in zip(a, b):
    assert abs(x - y) <= 1e-4 * max(1, abs(x)), (a, b)
EOF
done

# ---- stopped in the first stage, resumed ----
student_graph tbs.ini distill.plugin=tinybert run.out=tbs_out run.stop_after=2
assert_exit 0 "$FSRUN" tbs.ini --mode distill
assert_contains "$(last_err)" "continue with --resume" "a stopped stage says how to continue"
[ ! -e tbs_out/model.safetensors ] && ok "no prediction stage before the intermediate one ends" ||
    fail "the prediction stage ran after a stopped intermediate stage"
sed -i '/^stop_after = /d' tbs.ini
assert_exit 0 "$FSRUN" tbs.ini --mode distill --resume
assert_contains "$(last_err)" "(resuming)" "the intermediate stage resumes"
tensors_equal tb_out/model.safetensors tbs_out/model.safetensors transformer. &&
    ok "stopped + resumed == uninterrupted, bit for bit" || fail "the resumed run differs from the uninterrupted one"
assert_exit 0 "$FSRUN" tbs.ini --mode distill --resume
assert_contains "$(last_err)" "phase 2/2 'prediction' is done" "a finished run resumed does nothing"

# ---- init = teacher-layers ----
student_graph init.ini "distill.init=teacher-layers = 3,1" train.lr=0 train.steps=1 run.out=init_out
assert_exit 0 "$FSRUN" init.ini --mode distill
assert_contains "$(last_err)" "init teacher-layers = 3,1" "stderr names the init"
python3 - init_out/model.safetensors teacher_out/model.safetensors <<'EOF' && ok "student layers 0, 1 == teacher layers 3, 1; embeddings and ln_f copied" || fail "init = teacher-layers copied the wrong tensors"
import json, struct, sys
def load(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop('__metadata__', None)
    return {k: b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]] for k, v in h.items()}
s, t = load(sys.argv[1]), load(sys.argv[2])
for k in s:
    if not k.startswith('transformer.'):
        continue
    src = k
    if k.startswith('transformer.h.'):
        layer = int(k.split('.')[2])
        src = k.replace('transformer.h.%d.' % layer, 'transformer.h.%d.' % [3, 1][layer], 1)
    assert s[k] == t[src], k
EOF

# ---- bad configuration: exit 2, one line, nothing written ----
expect_config_error() { # GRAPH FRAGMENT...
    local graph=$1
    shift
    rm -rf bad_out
    assert_exit 2 "$FSRUN" "$graph" --mode distill
    assert_one_error_line
    assert_err "$@"
    [ ! -e bad_out ] && ok "nothing written" || fail "a config error created [run] out"
}
student_graph bad.ini distill.plugin=tinybert distill.layer_map=1,4 run.out=bad_out
expect_config_error bad.ini "bad.ini:$(line_of bad.ini '^layer_map'): [distill] layer_map = 1,4" \
    "teacher layer 4 (for student layer 1) does not exist" "0-3"
student_graph bad.ini distill.plugin=tinybert distill.layer_map=1 run.out=bad_out
expect_config_error bad.ini "lists 1 teacher layers for a student of 2 layers"
student_graph bad.ini distill.plugin=distilbert model.n_embd=16 run.out=bad_out
expect_config_error bad.ini "widths must match" "student's n_embd is 16" "alpha_cos = 0" "tinybert"
student_graph bad.ini distill.plugin=soft_kd model.n_embd=16 distill.init=teacher-every-other-layer run.out=bad_out
expect_config_error bad.ini "bad.ini:$(line_of bad.ini '^init'): [distill] init = teacher-every-other-layer" \
    "equal widths"
student_graph bad.ini distill.plugin=soft_kd "distill.init=teacher-layers = 0,1,2" run.out=bad_out
expect_config_error bad.ini "lists 3 teacher layers, but the student has 2"
student_graph bad.ini distill.plugin=soft_kd distill.init=teacher-odd-layers run.out=bad_out
expect_config_error bad.ini "must be random, teacher-every-other-layer, or teacher-layers"
student_graph bad.ini distill.plugin=tinybert attention.plugin=longformer attention.window=8 run.out=bad_out
expect_config_error bad.ini "tinybert" "layer 0 of the student" "'longformer'" "cannot expose its scores"
student_graph bad.ini distill.plugin=tinybert distill.teacher_cache=tc.cache run.out=bad_out
expect_config_error bad.ini "[distill] teacher_cache = tc.cache" "hidden states"
# the sparse student distils once the attention term is off
student_graph sparse.ini distill.plugin=tinybert attention.plugin=longformer attention.window=8 \
    distill.w_attention=0 run.out=sparse_out
assert_exit 0 "$FSRUN" sparse.ini --mode distill

e2e_finish
