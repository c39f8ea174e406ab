#!/usr/bin/env bash
# test_distill_augment.sh — data from the teacher:
#  - augment = generate:R: the teacher's sequences are cached beside its
#    checkpoint; a rerun (and another student) generates nothing, reads
#    them all and gets the same losses bit for bit; the batch grows to
#    B (1 + R) rows (the loss differs from a run without);
#  - augment = replace:P,K: tokens are replaced (reported), reproducibly;
#  - teacher_cache: the first student computes the teacher's top-k, the
#    next reads them all and gets the same losses; with k = the vocabulary
#    the renormalised top-k distribution is the teacher's own, so the losses
#    equal a run without the cache bit for bit, and with a small k they differ;
#  - bad values: exit 2, one line.
. "$(dirname "$0")/lib.sh"

standard_data
write_graph teacher.ini model.n_layer=3 train.steps=20 run.out=teacher_out generate.max_tokens=0
must_fsrun teacher.ini

student_graph() { # FILE OUT [overrides...]
    local f=$1 out=$2
    shift 2
    write_graph "$f" run.out="$out" generate.max_tokens=0 train.steps=6 distill.teacher=teacher.ini \
        distill.plugin=soft_kd "$@"
}
losses() { metrics_col "$1/metrics.jsonl" loss | md5sum; }

# ---- generate ----
student_graph gen.ini gen_out distill.augment=generate:2 distill.augment_prompt=8
assert_exit 0 "$FSRUN" gen.ini --mode distill
cache=teacher_out/model.safetensors.generate-R2-T32-p8-t1.cache
[ -f $cache ] && ok "the sequences are cached beside the teacher: $cache" || fail "no $cache"
assert_contains "$(last_err)" "augment: 0 sequences from the cache, 48 generated" "first run: 6 steps x 4 windows x 2"
sum1=$(md5sum <$cache)
student_graph gen_again.ini gen_again_out distill.augment=generate:2 distill.augment_prompt=8
assert_exit 0 "$FSRUN" gen_again.ini --mode distill
assert_contains "$(last_err)" "augment: 48 sequences from the cache, 0 generated" "another student reads them all"
assert_eq "$(md5sum <$cache)" "$sum1" "the cache file is unchanged"
assert_eq "$(losses gen_again_out)" "$(losses gen_out)" "the same losses from the cache"
student_graph plain.ini plain_out
must_fsrun plain.ini --mode distill
assert_ne "$(losses plain_out)" "$(losses gen_out)" "the generated rows change the loss"
# an explicit cache file
student_graph gen_own.ini gen_own_out distill.augment=generate:1 distill.augment_cache=own/gen.cache
assert_exit 0 "$FSRUN" gen_own.ini --mode distill
[ -f own/gen.cache ] && ok "augment_cache names the file" || fail "no own/gen.cache"

# ---- replace ----
student_graph rep.ini rep_out distill.augment=replace:0.3,4
assert_exit 0 "$FSRUN" rep.ini --mode distill
replaced=$(last_err | sed -n 's/.*augment: \([0-9]*\) of \([0-9]*\) tokens replaced.*/\1 \2/p')
assert_num "$(echo "$replaced" | cut -d' ' -f1)" '>' 0 "some tokens replaced"
assert_num "$(echo "$replaced" | cut -d' ' -f1)" '<' "$(echo "$replaced" | cut -d' ' -f2)" "not all of them"
student_graph rep2.ini rep2_out distill.augment=replace:0.3,4
must_fsrun rep2.ini --mode distill
assert_eq "$(losses rep2_out)" "$(losses rep_out)" "replacement is reproducible"
assert_ne "$(losses rep_out)" "$(losses plain_out)" "replacement changes the data"

# ---- teacher_cache ----
student_graph tc.ini tc_out distill.teacher_cache=tc/top256.cache distill.teacher_cache_k=256
assert_exit 0 "$FSRUN" tc.ini --mode distill
assert_contains "$(last_err)" "teacher_cache: 0 windows from the cache, 24 computed" "first student computes"
assert_eq "$(losses tc_out)" "$(losses plain_out)" "k = vocabulary: the same losses as without the cache"
student_graph tc2.ini tc2_out distill.teacher_cache=tc/top256.cache distill.teacher_cache_k=256
assert_exit 0 "$FSRUN" tc2.ini --mode distill
assert_contains "$(last_err)" "teacher_cache: 24 windows from the cache, 0 computed" "the next student reads them"
assert_eq "$(losses tc2_out)" "$(losses tc_out)" "the same losses from the cache"
student_graph tc8.ini tc8_out distill.teacher_cache=tc/top8.cache distill.teacher_cache_k=8
assert_exit 0 "$FSRUN" tc8.ini --mode distill
assert_ne "$(losses tc8_out)" "$(losses plain_out)" "k = 8: the renormalised top-8 targets differ"
# distilbert without its hidden-state term may use the cache too
student_graph tcd.ini tcd_out distill.plugin=distilbert distill.alpha_cos=0 distill.teacher_cache=tc/top8.cache \
    distill.teacher_cache_k=8
assert_exit 0 "$FSRUN" tcd.ini --mode distill
assert_contains "$(last_err)" "24 windows from the cache, 0 computed" "distilbert (alpha_cos = 0) reads the cache"

# ---- bad values ----
for v in generate:0 generate:x replace:0.5 replace:2,3 replace:0.5,999 sample:2; do
    student_graph bad.ini bad_out distill.augment=$v
    assert_exit 2 "$FSRUN" bad.ini --mode distill
    assert_one_error_line
    assert_err "[distill] augment = $v"
done

e2e_finish
