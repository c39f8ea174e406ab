#!/usr/bin/env bash
# test_layer_sections.sh — a graph may have any number of [layer.*]
# sections, and every one is read: here 70 layers and 65 single-layer
# sections before the one that matters (only the first 64 were read, so
# [layer.69] plugin = flash was ignored and the run failed later, exit 1).
#   - a bad plugin name, a bad value or an out-of-range value in the 66th
#     section is a configuration error at its line (exit 2, nothing written);
#   - a good 66th section takes effect: [layer.69] plugin = longformer with
#     window = 1 changes the loss, and the loss is the one the same section
#     gives without the 65 others (which only restate defaults).
. "$(dirname "$0")/lib.sh"

make_text train.txt 3000 1
make_text val.txt 600 2

# graph FILE [section.key=value | +LINE ...]: 70 layers, one optimizer step,
# [layer.0] .. [layer.64] each restating the default causal = true.
graph() {
    local f=$1 fill=()
    shift
    for i in $(seq 0 64); do fill+=("+[layer.$i]" "+causal = true"); done
    write_graph "$f" model.n_layer=70 train.steps=1 train.batch=2 train.val_every=0 train.val_batches=1 \
        generate.max_tokens=0 "${fill[@]}" "$@"
}

# ---- errors in a section past the 64th ----

expect_config_error() { # GRAPH -- FRAGMENT...
    local g=$1
    shift 2
    rm -rf out
    assert_exit 2 "$FSRUN" "$g"
    assert_one_error_line
    assert_err "$@"
    [ ! -e out ] && ok "nothing written" || fail "a config error created [run] out"
}

graph g.ini "+[layer.69]" "+plugin = flash"
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^plugin = flash'): [layer.69] plugin = flash:" \
    "no attention plugin named 'flash'"

graph g.ini "+[layer.69]" "+causal = maybe"
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^causal = maybe'): [layer.69] causal = maybe:" "true or false"

graph g.ini "+[layer.66-69]" "+plugin = longformer" "+window = 0"
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^window = 0'): [layer.66-69] window = 0:" "must be an integer in [1, "

graph g.ini "+[layer.69]" "+window = 3"
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^window = 3'): [layer.69] window = 3:" "unknown key"

# ---- a section past the 64th takes effect ----

loss_of() { # GRAPH: the training loss of one step
    rm -rf out
    must_fsrun "$1"
    json_last "$E2E_OUT" loss
}
graph plain.ini
graph far.ini "+[layer.69]" "+plugin = longformer" "+window = 1"
write_graph alone.ini model.n_layer=70 train.steps=1 train.batch=2 train.val_every=0 train.val_batches=1 \
    generate.max_tokens=0 "+[layer.69]" "+plugin = longformer" "+window = 1"
plain=$(loss_of plain.ini)
far=$(loss_of far.ini)
alone=$(loss_of alone.ini)
assert_ne "$far" "$plain" "[layer.69] after 65 other sections changes layer 69's attention"
assert_eq "$far" "$alone" "... exactly as it does alone"

e2e_finish
