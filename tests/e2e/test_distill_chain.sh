#!/usr/bin/env bash
# test_distill_chain.sh — [distill.stage.N] chains:
#  - a 4-layer teacher -> 3 layers (tinybert, two stages) -> 2 layers
#    (distilbert, initialised from every other layer of stage 1) runs; each
#    stage has its own checkpoint; the table lists the teacher and both
#    stages with their sizes and validation losses; the last line is JSON;
#  - stopped inside stage 2 ([distill.stage.2] stop_after), the chain
#    pauses; --resume skips stage 1 and finishes stage 2 with the same
#    weights, bit for bit, as the uninterrupted chain;
#  - every stage is checked before the first trains: a layer map out of
#    range in stage 2, an unknown key in a stage, a gap in the numbering, a
#    missing first teacher checkpoint: exit 2, one line, nothing written;
#  - a stage's graph keeps values that text would lose (a leading ';', a
#    198-character line).
. "$(dirname "$0")/lib.sh"

standard_data
write_graph teacher.ini model.n_layer=4 train.steps=30 run.out=teacher_out generate.max_tokens=0
must_fsrun teacher.ini

chain_graph() { # FILE OUT [overrides...]
    local f=$1 out=$2
    shift 2
    write_graph "$f" run.out="$out" generate.max_tokens=0 run.threads=2 distill.teacher=teacher.ini \
        distill.plugin=tinybert \
        distill.stage.1.n_layer=3 distill.stage.1.steps=6 \
        distill.stage.2.plugin=distilbert distill.stage.2.n_layer=2 distill.stage.2.steps=8 \
        distill.stage.2.init=teacher-every-other-layer "$@"
}


chain_graph chain.ini chain_out
assert_exit 0 "$FSRUN" chain.ini --mode distill
cp "$E2E_OUT" chain.stdout
out=$(cat chain.stdout)
assert_contains "$out" "distill chain: 2 stages" "the table's title"
assert_contains "$out" "(teacher)" "the table lists the teacher"
assert_contains "$(grep '^1 ' chain.stdout)" "tinybert" "stage 1 row: tinybert"
assert_contains "$(grep '^1 ' chain.stdout)" "3+3" "stage 1 row: its two stages' steps"
assert_contains "$(grep '^2 ' chain.stdout)" "distilbert" "stage 2 row: distilbert"
assert_eq "$(json_last chain.stdout mode)" distill-chain "summary mode"
assert_eq "$(json_last chain.stdout done)" True "summary done"
python3 - chain.stdout <<'EOF' && ok "JSON: 3 rows, layers 4/3/2, size ratios < 1 decreasing, finite val losses" || fail "the chain's JSON is wrong"
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
s = json.loads(lines[-1])['stages']
assert [x['n_layer'] for x in s] == [4, 3, 2], s
assert s[0]['size_ratio'] == 1.0 and 1 > s[1]['size_ratio'] > s[2]['size_ratio'] > 0, s
assert all(isinstance(x['val_loss'], float) and 0 < x['val_loss'] < 10 for x in s), s
assert s[1]['checkpoint'] == 'chain_out/stage1/model.safetensors' and s[2]['checkpoint'] == 'chain_out/stage2/model.safetensors'
EOF
for f in chain_out/stage1/phase1-intermediate chain_out/stage1 chain_out/stage2; do
    [ -f $f/model.safetensors ] && ok "$f/model.safetensors" || fail "no $f/model.safetensors"
done
assert_contains "$(last_err)" "teacher chain_out/stage1/model.safetensors" "stage 2 learns from stage 1"
assert_contains "$(last_err)" "init teacher-every-other-layer" "stage 2 starts from stage 1's layers"
# a stage's checkpoint is an ordinary one: eval loads it with its graph
python3 - chain_out/stage2/model.safetensors <<'EOF' >stage2.ini && ok "stage 2's graph from its checkpoint" || fail "no graph in stage 2's checkpoint"
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
print(json.loads(b[8:8 + struct.unpack('<Q', b[:8])[0]])['__metadata__']['graph'])
EOF
assert_exit 0 "$FSRUN" stage2.ini --mode eval --checkpoint chain_out/stage2/model.safetensors
assert_contains "$(cat stage2.ini)" "n_layer = 2" "stage 2's graph has 2 layers"

# ---- pause in stage 2, resume ----
chain_graph paused.ini paused_out distill.stage.2.stop_after=3
assert_exit 0 "$FSRUN" paused.ini --mode distill
assert_eq "$(json_last "$E2E_OUT" done)" False "stopped in stage 2: not done"
assert_contains "$(grep '^2 ' "$E2E_OUT")" "3/8" "the table shows stage 2 at step 3 of 8"
assert_contains "$(last_err)" "rerun with --resume" "the pause says how to continue"
sed -i '/^stop_after = /d' paused.ini
assert_exit 0 "$FSRUN" paused.ini --mode distill --resume
assert_contains "$(last_err)" "stage 1 is done" "resume skips the finished stage"
assert_contains "$(last_err)" "(resuming)" "resume continues stage 2"
assert_eq "$(json_last "$E2E_OUT" done)" True "resumed: done"
tensors_equal chain_out/stage2/model.safetensors paused_out/stage2/model.safetensors transformer. &&
    ok "paused + resumed chain == uninterrupted, bit for bit" || fail "the resumed chain differs"
tensors_equal chain_out/stage1/model.safetensors paused_out/stage1/model.safetensors transformer. &&
    ok "stage 1 identical too" || fail "stage 1 differs"
assert_eq "$(grep '^2 ' "$E2E_OUT" | awk '{print $9}')" "$(grep '^2 ' chain.stdout | awk '{print $9}')" \
    "the same validation loss in the table"
# everything done: --resume only prints the table
assert_exit 0 "$FSRUN" paused.ini --mode distill --resume
assert_contains "$(last_err)" "stage 2 is done" "a finished chain resumed trains nothing"

# ---- every stage is checked before the first trains ----
expect_config_error() { # GRAPH FRAGMENT...
    local graph=$1
    shift
    rm -rf bad_out
    assert_exit 2 "$FSRUN" "$graph" --mode distill
    assert_one_error_line
    assert_err "$@"
    [ ! -e bad_out ] && ok "nothing written" || fail "a config error created [run] out"
}
chain_graph bad.ini bad_out distill.stage.2.cos_layers=mapped distill.stage.2.layer_map=0,3
expect_config_error bad.ini "[distill.stage.2]" "teacher layer 3 (for student layer 1) does not exist" \
    "bad.ini:$(line_of bad.ini '^layer_map')"
chain_graph bad.ini bad_out distill.stage.1.n_layr=3
expect_config_error bad.ini "bad.ini:$(line_of bad.ini '^n_layr'): [distill.stage.1] n_layr = 3" "did you mean 'n_layer'"
chain_graph bad.ini bad_out distill.stage.3.steps=4
sed -i 's/^\[distill.stage.2\]/[distill.stage.4]/' bad.ini
expect_config_error bad.ini "[distill.stage.2] is missing"
chain_graph bad.ini bad_out distill.teacher_checkpoint=teacher_out/nothing.safetensors
expect_config_error bad.ini "teacher_out/nothing.safetensors" "train the teacher first"
chain_graph bad.ini bad_out distill.teacher=nosuch.ini
expect_config_error bad.ini "[distill] teacher = nosuch.ini" "nosuch.ini"
write_graph t128.ini model.vocab_size=128 run.out=teacher_out
chain_graph bad.ini bad_out distill.teacher=t128.ini
expect_config_error bad.ini "[distill] teacher = t128.ini" "vocabulary" "128" "256"
chain_graph bad.ini bad_out distill.stage.1.n_embd=16 distill.stage.1.plugin=distilbert
expect_config_error bad.ini "[distill.stage.1]" "widths must match"
chain_graph bad.ini bad_out distill.stage.1.teacher=teacher.ini
expect_config_error bad.ini "[distill.stage.1] teacher = teacher.ini: unknown key"

# A stage's graph is derived entry by entry, not through text: a value that
# starts with ';' (a comment after "key = ") and the longest line the
# parser takes ("key=" and 192 characters is 198) reach the stage unchanged.
long_name=$(printf 't%.0s' $(seq 188)).txt
cp train.txt "$long_name"
cp val.txt ';val.txt'
write_graph odd.ini run.out=odd_out generate.max_tokens=0 distill.teacher=teacher.ini data.train=- data.val=- \
    train.val_every=2 distill.stage.1.n_layer=2 distill.stage.1.steps=4 +[data] "+train=$long_name" "+val=;val.txt"
[ "$(grep -c '^train=t' odd.ini)" = 1 ] && [ "$(grep '^train=' odd.ini | tr -d '\n' | wc -c)" = 198 ] ||
    die "odd.ini should hold a 198-character train= line"
assert_exit 0 "$FSRUN" odd.ini --mode distill
assert_contains "$(cat odd_out/stage1/metrics.jsonl 2>/dev/null)" '"val_loss"' \
    "the stage validates on [data] val = ;val.txt"

e2e_finish
