#!/usr/bin/env bash
# test_checkpoint_trust.sh — weights go only into the model they were
# trained as, and a checkpoint's metadata is read strictly:
#  - the graph stored in model.safetensors against the graph loading it:
#    a key that changes the function (n_head with the same shapes, n_layer,
#    causal, the attention plugin of one layer, reversible) is an error
#    naming the key, for eval, generate, a distillation teacher and
#    --resume; keys that do not (lr, steps) are allowed on resume and said
#    once, and not said at all by eval;
#  - a tensor the model does not have is an error naming it;
#  - every metadata field (step, optimizer_t, rng, loss, val_loss, format,
#    fastserve_format, graph) parsed whole and range-checked: a bad one is
#    exit 1 naming the field, never a silent restart or a "success";
#  - [model] init (a new run from the weights) takes another graph's
#    weights and says what differs.
# config.json would catch some shape keys of a dense model first: the
# checkpoints here are copied without it, so the graph is what is checked.
. "$(dirname "$0")/lib.sh"

standard_data
write_graph g.ini train.steps=6 generate.max_tokens=0
must_fsrun g.ini
[ -f out/training_state.safetensors ] || die "training wrote no training state"
alone() { # DIR: the checkpoint (weights and state) alone in DIR
    rm -rf "$1" && mkdir -p "$1" && cp out/model.safetensors out/training_state.safetensors "$1"/
}
alone lone

# ---- keys that change the function: errors naming them ----

function_error() { # MODE SET FRAGMENT...
    local mode=$1 set=$2
    shift 2
    local extra=()
    [ "$mode" = generate ] && extra=(--prompt "The ")
    assert_exit 1 "$FSRUN" g.ini --mode "$mode" --checkpoint lone/model.safetensors --set "$set" "${extra[@]+"${extra[@]}"}"
    assert_one_error_line
    assert_err "lone/model.safetensors" "$@" "would compute another function"
}
for mode in eval generate; do
    function_error $mode model.n_head=4 "[model] n_head = 2" "--set: [model] n_head = 4"
    function_error $mode attention.causal=false "[attention] causal = true" "--set: [attention] causal = false"
    function_error $mode layer.1.plugin=lsh "[attention] plugin = dense for layer 1" "--set: [layer.1] plugin = lsh"
    function_error $mode model.reversible=true "[model] reversible = false"
done
# the same graph, spelt differently, is the same model
assert_exit 0 "$FSRUN" g.ini --mode eval --checkpoint lone/model.safetensors --set attention.causal=yes \
    --set train.lr=0.003
assert_not_contains "$(last_err)" "graph changes" "eval says nothing of keys that keep the model"

# a 4-layer checkpoint where the graph has 2 layers: eval and as a teacher
write_graph g4.ini model.n_layer=4 train.steps=2 run.out=out4 generate.max_tokens=0
must_fsrun g4.ini
rm -f out4/config.json
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint out4/model.safetensors
assert_one_error_line
assert_err "out4/model.safetensors" "n_layer"
write_graph student.ini run.out=sout train.steps=2 generate.max_tokens=0 distill.teacher=g.ini \
    distill.teacher_checkpoint=out4/model.safetensors
assert_exit 1 "$FSRUN" student.ini --mode distill
assert_err "out4/model.safetensors" "n_layer"
[ ! -e sout/model.safetensors ] && ok "no student trained from the wrong teacher" || fail "a student was written"

# --resume with n_head changed: the shapes are the same, the model is not
alone res
assert_exit 1 "$FSRUN" g.ini --resume --set run.out=res --set train.steps=8 --set model.n_head=4
assert_one_error_line
assert_err "res/model.safetensors" "[model] n_head = 2" "--set: [model] n_head = 4" "[model] init"
cmp -s out/model.safetensors res/model.safetensors && ok "the refused resume wrote nothing" ||
    fail "the refused resume changed the checkpoint"

# keys that keep the model: allowed on resume, said once
assert_exit 0 "$FSRUN" g.ini --resume --set run.out=res --set train.steps=8 --set train.lr=1e-3
assert_eq "$(grep -c 'graph changes that keep its model' "$E2E_ERR")" 1 "the changes are said once"
assert_err "[train] steps 6 -> 8" "[train] lr 3e-3 -> 1e-3"
assert_eq "$(json_last "$E2E_OUT" steps)" 8 "the resumed run trained on"

# a tensor this model does not have
alone extra
st_add_tensor out/model.safetensors extra/model.safetensors transformer.h.0.attn.extra.weight
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint extra/model.safetensors
assert_one_error_line
assert_err "extra/model.safetensors" "transformer.h.0.attn.extra.weight" "another graph"

# [model] init: a new run from another graph's weights is allowed, and said
write_graph lsh.ini train.steps=2 run.out=lsh_out generate.max_tokens=0 layer.1.plugin=lsh model.init=lone
assert_exit 0 "$FSRUN" lsh.ini
assert_err "[attention] plugin = dense" "only the starting point"

# ---- metadata, field by field ----

# bad_meta FILE KEY VALUE FRAGMENT...: FILE (model or training_state) of a
# copy with KEY = VALUE: --resume fails with exit 1 naming the field.
bad_meta() {
    local file=$1 key=$2 value=$3
    shift 3
    alone meta
    st_set_meta out/$file.safetensors meta/$file.safetensors "$key" "$value"
    assert_exit 1 "$FSRUN" g.ini --resume --set run.out=meta --set train.steps=8
    assert_one_error_line
    assert_err "meta/$file.safetensors" "$key" "$@"
    assert_not_contains "$(last_out)" "{" "no result for $key = $value"
}
bad_meta training_state step abc "\"abc\"" "whole number"
bad_meta training_state step -5 "\"-5\""
bad_meta training_state step " 6" "whole number"
bad_meta training_state step 99999999999999999999 "whole number"
bad_meta training_state step - "no metadata step"
bad_meta training_state optimizer_t abc "\"abc\""
bad_meta training_state optimizer_t 7 "from 0 to 6"
bad_meta training_state rng zz "four words"
bad_meta training_state rng "0000000000000000 0000000000000000 0000000000000000 0000000000000000" "not all zero"
bad_meta training_state loss nan "finite"
bad_meta training_state val_loss -3 "-1 for none"
bad_meta training_state format other "not a training state"
bad_meta model step abc "\"abc\""
bad_meta model step 5 "at step 5" "at step 6"
bad_meta model graph "this is not ini" "metadata graph"
bad_meta model fastserve_format fastserve/9 "fastserve/9" "newer fsrun"
# a step past [train] steps does not "finish" at once
alone meta
assert_exit 1 "$FSRUN" g.ini --resume --set run.out=meta --set train.steps=4
assert_one_error_line
assert_err "meta/training_state.safetensors" "step = 6" "[train] steps = 4" "raise [train] steps"
# eval reads the weights' own fields too
alone meta
st_set_meta out/model.safetensors meta/model.safetensors step -1
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint meta/model.safetensors
assert_err "meta/model.safetensors" "metadata step = \"-1\""

e2e_finish
