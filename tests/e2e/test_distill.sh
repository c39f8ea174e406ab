#!/usr/bin/env bash
# test_distill.sh — distill mode with the soft_kd plugin:
#  - a 2-layer teacher is trained, a 1-layer student distils from it
#    (temperature 2, alpha 0.5): exit 0, summary "mode": "distill", a student
#    checkpoint with the student's shapes that eval can load;
#  - numbers: alpha = 0 is plain cross-entropy, so the losses equal a train
#    run of the same student graph; alpha = 1 against a teacher identical to
#    the student's initial weights gives a first loss of 0 (KL of equal
#    distributions), and a positive one against the trained teacher;
#  - bad configuration (exit 2, one line, nothing written): no teacher, a
#    teacher graph that is missing or broken, another vocabulary, a shorter
#    max_seq, unknown / out-of-range soft_kd keys, a missing teacher
#    checkpoint (the message names the file);
#  - a corrupt teacher checkpoint (truncated, another shape) is a runtime
#    failure like a corrupt checkpoint in eval / generate: exit 1, one line
#    naming the file.
. "$(dirname "$0")/lib.sh"

standard_data

write_graph teacher.ini train.steps=30 run.out=teacher_out generate.max_tokens=0
must_fsrun teacher.ini
[ -f teacher_out/model.safetensors ] || die "the teacher run wrote no checkpoint"

# student_graph FILE [overrides...]: the 1-layer student distilling from it
student_graph() {
    local f=$1
    shift
    write_graph "$f" model.n_layer=1 run.out=student_out generate.max_tokens=0 \
        distill.teacher=teacher.ini distill.teacher_checkpoint=teacher_out/model.safetensors \
        distill.plugin=soft_kd distill.temperature=2 distill.alpha=0.5 "$@"
}

# ---- a distillation run ----
student_graph student.ini
assert_exit 0 "$FSRUN" student.ini --mode distill
cp "$E2E_OUT" distill.out
assert_eq "$(json_last distill.out mode)" distill "summary mode"
assert_eq "$(json_last distill.out steps)" 10 "summary steps"
assert_eq "$(json_last distill.out checkpoint)" student_out/model.safetensors "summary checkpoint"
assert_num "$(json_last distill.out tokens_per_s)" '>' 0 "summary tokens_per_s"
assert_contains "$(last_err)" "teacher_out/model.safetensors" "stderr names the teacher checkpoint"
assert_contains "$(last_err)" "soft_kd" "stderr names the distill plugin"
assert_eq "$(metrics_col student_out/metrics.jsonl loss | wc -l)" 10 "one metrics row per distill step"
python3 - student_out/model.safetensors <<'EOF' && ok "the student checkpoint has 1 layer of width 32" || fail "the student checkpoint has the wrong tensors"
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
assert h['transformer.wte.weight']['shape'] == [256, 32]
assert 'transformer.h.0.attn.c_attn.weight' in h
assert not any(k.startswith('transformer.h.1.') for k in h), 'a second layer in a 1-layer student'
EOF
assert_exit 0 "$FSRUN" student.ini --mode eval
# [run] mode = distill works like --mode distill
student_graph student_mode.ini run.mode=distill run.out=student_mode_out
assert_exit 0 "$FSRUN" student_mode.ini
assert_eq "$(json_last "$E2E_OUT" mode)" distill "[run] mode = distill"

# ---- numbers ----
# alpha = 0: only the hard-label cross-entropy, the same batches -> the same
# losses as training the student graph without a teacher
student_graph a0.ini distill.alpha=0 run.out=a0_out
must_fsrun a0.ini --mode distill
student_graph plain.ini run.out=plain_out
must_fsrun plain.ini --mode train
python3 - a0_out/metrics.jsonl plain_out/metrics.jsonl <<'EOF' && ok "alpha = 0: distill losses == train losses (1e-5)" || fail "alpha = 0: distill losses differ from train losses"
import json, sys
a = [json.loads(l)['loss'] for l in open(sys.argv[1]) if '"loss"' in l]
b = [json.loads(l)['loss'] for l in open(sys.argv[2]) if '"loss"' in l]
assert len(a) == len(b) == 10, (len(a), len(b))
for x, y in zip(a, b):
    assert abs(x - y) <= 1e-5, (x, y)
EOF

# alpha = 1 against a teacher equal to the student's initial weights: a run
# with lr = 0 saves exactly the initial weights of its seed
write_graph self.ini model.n_layer=1 train.lr=0 train.steps=1 run.out=self_out generate.max_tokens=0
must_fsrun self.ini
student_graph a1_self.ini distill.alpha=1 distill.teacher=self.ini distill.teacher_checkpoint=self_out/model.safetensors \
    run.out=a1_self_out train.steps=1
must_fsrun a1_self.ini --mode distill
first_self=$(metrics_col a1_self_out/metrics.jsonl loss | head -n1 | cut -d' ' -f2)
assert_close "$first_self" 0 1e-6 "alpha = 1, teacher == student: the first loss is T^2 KL(p || p) = 0"
student_graph a1.ini distill.alpha=1 run.out=a1_out train.steps=1
must_fsrun a1.ini --mode distill
first_trained=$(metrics_col a1_out/metrics.jsonl loss | head -n1 | cut -d' ' -f2)
assert_num "$first_trained" '>' 0.01 "alpha = 1, trained teacher: the first loss is positive"

# ---- bad configuration: exit 2 before any work ----
expect_distill_config_error() { # GRAPH FRAGMENT...
    local graph=$1
    shift
    rm -rf bad_out
    assert_exit 2 "$FSRUN" "$graph" --mode distill
    assert_one_error_line
    assert_err "$@"
    [ ! -e bad_out ] && ok "nothing written" || fail "a config error created [run] out"
}

student_graph bad.ini run.out=bad_out distill.teacher=-
expect_distill_config_error bad.ini "[distill] teacher"

student_graph bad.ini run.out=bad_out distill.teacher=nosuch_teacher.ini
expect_distill_config_error bad.ini "bad.ini:$(line_of bad.ini '^teacher = ')" "[distill] teacher = nosuch_teacher.ini" "nosuch_teacher.ini"

write_graph broken_teacher.ini train.stpes=3
student_graph bad.ini run.out=bad_out distill.teacher=broken_teacher.ini
expect_distill_config_error bad.ini "broken_teacher.ini:$(line_of broken_teacher.ini '^stpes'): [train] stpes = 3" "did you mean 'steps'"

write_graph t128.ini model.vocab_size=128 run.out=teacher_out
student_graph bad.ini run.out=bad_out distill.teacher=t128.ini
expect_distill_config_error bad.ini "[distill] teacher = t128.ini" "vocabulary" "128" "256"

write_graph t16.ini model.max_seq=16 run.out=teacher_out
student_graph bad.ini run.out=bad_out distill.teacher=t16.ini
expect_distill_config_error bad.ini "[distill] teacher = t16.ini" "max_seq"

student_graph bad.ini run.out=bad_out distill.temprature=2
expect_distill_config_error bad.ini "bad.ini:$(line_of bad.ini '^temprature'): [distill] temprature = 2" "did you mean 'temperature'"

student_graph bad.ini run.out=bad_out distill.alpha=1.5
expect_distill_config_error bad.ini "bad.ini:$(line_of bad.ini '^alpha'): [distill] alpha = 1.5"

student_graph bad.ini run.out=bad_out distill.plugin=nosuch_kd
expect_distill_config_error bad.ini "[distill] plugin = nosuch_kd" "soft_kd"

# a missing teacher checkpoint: the code treats it as a configuration error
student_graph bad.ini run.out=bad_out distill.teacher_checkpoint=teacher_out/missing.safetensors
expect_distill_config_error bad.ini "teacher_out/missing.safetensors"

# ---- a corrupt teacher checkpoint: a runtime failure (exit 1), as in eval ----
head -c 20000 teacher_out/model.safetensors >teacher_truncated.safetensors
student_graph bad.ini run.out=bad_out distill.teacher_checkpoint=teacher_truncated.safetensors
assert_exit 1 "$FSRUN" bad.ini --mode distill
assert_last_error_line "teacher_truncated.safetensors" "truncated"
# a checkpoint of a narrower model than the teacher graph
write_graph narrow.ini model.n_embd=16 run.out=narrow_out generate.max_tokens=0 train.steps=2
must_fsrun narrow.ini
student_graph bad.ini run.out=bad_out distill.teacher_checkpoint=narrow_out/model.safetensors
assert_exit 1 "$FSRUN" bad.ini --mode distill
assert_last_error_line "narrow_out/model.safetensors" "shape" "[256, 16]"
[ ! -e bad_out/model.safetensors ] && ok "no student checkpoint after a failed distill" || fail "a failed distill wrote a checkpoint"

e2e_finish
