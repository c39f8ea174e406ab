#!/usr/bin/env bash
# test_cli_tables.sh — what fsrun prints from its tables, without a model:
# key ranges in --help-graph and --describe (a bound at FS_PARAM_UNBOUNDED
# is an open side: ">= 1", "<= 8"; integers are written whole); the
# section --describe names for each plugin kind, with the runtime's keys;
# the modes --help lists and --mode / [run] mode accept; README's table of
# plugins against the plugins the build makes.
. "$(dirname "$0")/lib.sh"

# ---- ranges ----

# key_line NAME [SECTION]: the line of key NAME in the last stdout (first
# match; with SECTION, the first after the line "[SECTION]")
key_line() {
    awk -v k="$1" -v s="${2:-}" '
        BEGIN { in_s = (s == "") }
        /^\[/ { in_s = (s == "" || $0 == "[" s "]") }
        in_s && $1 == k { print; exit }' "$E2E_OUT"
}
# no_exponent LABEL: no range in the last stdout is written 1e+15, and no
# integer key's range has an exponent at all
no_exponent() {
    assert_not_contains "$(last_out)" "e+15" "$1: no 1e+15 (it is no bound)"
    assert_eq "$(grep -E '^ +[a-z_0-9]+ +int' "$E2E_OUT" | grep -c 'e+' || true)" 0 "$1: integers are written whole"
}

assert_exit 0 "$FSRUN" --help-graph
assert_contains "$(key_line seed train)" "default 1337           >= 0 " "--help-graph: [train] seed is '>= 0'"
assert_contains "$(key_line steps train)" ">= 1 " "--help-graph: [train] steps is '>= 1'"
assert_contains "$(key_line steps distill.stage.N)" ">= 0 " "--help-graph: [distill.stage.N] steps is '>= 0'"
assert_contains "$(key_line max_seq model)" "[2, 1048576]" "--help-graph: [model] max_seq is [2, 1048576]"
no_exponent --help-graph

assert_exit 0 "$FSRUN" --describe test_ranges
assert_contains "$(key_line closed)" "[1, 8]" "--describe: a closed range"
assert_contains "$(key_line at_least)" ">= 1 " "--describe: open above"
assert_contains "$(key_line at_most)" "<= 8 " "--describe: open below (not [-1e+15, 8])"
assert_contains "$(key_line legacy_big)" ">= 2 " "--describe: a bound beyond FS_PARAM_UNBOUNDED is open too"
assert_contains "$(key_line wide)" "[2, 1048576]" "--describe: integers are written whole"
for k in any_float no_range; do
    assert_eq "$(key_line $k | grep -cE '\[|>=|<=' || true)" 0 "--describe: $k has no range"
done
no_exponent "--describe test_ranges"
for p in longformer tinybert; do
    assert_exit 0 "$FSRUN" --describe $p
    no_exponent "--describe $p"
done

# ---- --describe: one section per plugin kind ----

describe_kind() { # PLUGIN KIND SECTIONS RUNTIME_KEY
    assert_exit 0 "$FSRUN" --describe "$1"
    assert_contains "$(head -n 1 "$E2E_OUT")" "$2 plugin '$1'" "--describe $1: a $2 plugin"
    assert_contains "$(last_out)" "keys in $3 (with the runtime's own):" "--describe $1: keys in $3"
    assert_contains "$(key_line "$4")" "$4" "--describe $1: the runtime's key '$4'"
}
describe_kind dense attention "[attention] and [layer.N]" causal
describe_kind data parallel "[parallel]" plugin
describe_kind soft_kd distill "[distill]" teacher
# a file path: the kind it declares
assert_exit 0 "$FSRUN" --describe "$FS_BUILD_DIR/plugins/fsplugin_parallel_tensor.so"
assert_contains "$(head -n 1 "$E2E_OUT")" "parallel plugin 'tensor'" "--describe FILE: the kind the file declares"
assert_exit 1 "$FSRUN" --describe "$FS_BUILD_DIR/tests/plugins/fsplugin_attention_broken_abi_new.so"
assert_err "plugin ABI 2.0 is newer"

# ---- modes ----

assert_exit 0 "$FSRUN" --help
assert_contains "$(last_out)" "[--mode train|distill|generate|eval|tokenize|train-tokenizer|serve]" "--help: the usage line names every mode"
for m in train distill generate eval serve; do
    assert_eq "$(grep -cE "^  $m +[a-z]" "$E2E_OUT" || true)" 1 "--help: mode $m with its line of help"
done
make_text val.txt 600 2
write_graph g.ini
assert_exit 2 "$FSRUN" g.ini --mode server
assert_one_error_line
assert_err "--mode server: must be one of train, distill, generate, eval, tokenize, train-tokenizer, serve"
write_graph g.ini run.mode=server
assert_exit 2 "$FSRUN" g.ini
assert_err "g.ini:$(line_of g.ini '^mode = server'): [run] mode = server: must be one of: train, distill, generate, eval, tokenize, train-tokenizer, serve"
# [run] mode = serve dispatches too: without a checkpoint it fails before listening
write_graph g.ini run.mode=serve serve.port=0
assert_exit 1 "$FSRUN" g.ini
assert_err "model.safetensors"
# [run] mode dispatches: eval without a checkpoint fails in its own way
write_graph g.ini run.mode=eval
assert_exit 1 "$FSRUN" g.ini
assert_err "model.safetensors"
assert_not_contains "$(last_err)" "step" "[run] mode = eval does not train"
# --mode beats [run] mode
assert_exit 2 "$FSRUN" g.ini --mode distill
assert_err "[distill] teacher: required by --mode distill"

# ---- README's plugin table: every kind, every plugin the build makes ----

FS_PLUGIN_PATH="$FS_BUILD_DIR/plugins" assert_exit 0 "$FSRUN" --list-plugins
for kind in attention parallel distill; do
    built=$(awk -v k="$kind" -v d="$FS_BUILD_DIR/plugins/" '$1 == k && index($4, d) == 1 { print $2 }' "$E2E_OUT" |
        sort | tr '\n' ' ')
    listed=$(grep -E "^\| $kind \|" "$FS_SOURCE_DIR/README.md" | cut -d'|' -f3 | tr -d '`,' | tr ' ' '\n' |
        grep -v '^$' | sort | tr '\n' ' ')
    assert_eq "$listed" "$built" "README's plugin table lists the $kind plugins"
done

e2e_finish
