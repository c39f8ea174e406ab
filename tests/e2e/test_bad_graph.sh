#!/usr/bin/env bash
# test_bad_graph.sh — bad graphs and bad inputs found before any work:
# each must exit 2 with one stderr line "fsrun: FILE:LINE: [section] key =
# value: reason" (where a line exists), and must not create [run] out.
# Covers: a missing graph file, INI syntax, an unknown section / key (with
# the "did you mean" suggestion), wrong types, out-of-range values, n_embd
# not a multiple of n_head, [layer.N] beyond n_layer, attention plugins that
# are missing (the message lists the available ones, each once), not a
# plugin, of the wrong kind, data files missing / empty / too short, a
# prompt longer than the context (after a successful short training run),
# and --set overriding a key (reflected in the summary, the metrics and the
# checkpoint's graph).
. "$(dirname "$0")/lib.sh"

standard_data

# expect_config_error GRAPH [ARGS...] -- FRAGMENT...: fsrun GRAPH ARGS exits
# 2, prints one error line holding every FRAGMENT, and writes nothing.
expect_config_error() {
    local graph=$1 args=()
    shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        args+=("$1")
        shift
    done
    shift
    rm -rf out
    assert_exit 2 "$FSRUN" "$graph" ${args[@]+"${args[@]}"}
    assert_one_error_line
    assert_err "$@"
    [ ! -e out ] && ok "nothing written ([run] out not created)" || fail "a config error created [run] out"
}

# ---- the graph file itself ----

expect_config_error nosuch.ini -- "nosuch.ini"
mkdir -p a_directory.ini
expect_config_error a_directory.ini -- "a_directory.ini"

# special files where a file is expected are refused before fsrun reads
# them (a FIFO would block forever, /dev/zero never end): exit 2, one line
mkfifo fifo.ini fifo.txt fifo.json
for g in fifo.ini /dev/zero; do
    rm -rf out
    assert_exit 2 timeout 20 "$FSRUN" "$g"
    assert_one_error_line
    assert_err "$g: not a regular file"
done
write_graph g.ini
for key in data.train data.val; do
    expect_config_error g.ini --set $key=fifo.txt -- "fifo.txt" "not a regular file"
done
rm -rf out
assert_exit 2 timeout 20 "$FSRUN" g.ini --set model.tokenizer=bpe:fifo.json
assert_one_error_line
assert_err "fifo.json: not a regular file"

# an empty graph file (or only comments) is refused by name, not reported
# as the first key a mode misses
: >empty.ini
expect_config_error empty.ini -- "empty.ini: the graph file is empty"
printf '; nothing yet\n\n' >comments.ini
expect_config_error comments.ini -- "comments.ini: the graph file is empty"

write_graph g.ini "+this line is not ini"
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^this line')"

write_graph g.ini "+[train]" "+steps = 5"
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^steps = 5')" "[train] steps" "duplicate"

# ---- unknown section / key, with suggestions ----

write_graph g.ini "+[trian]" "+steps = 3"
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^\[trian\]'): [trian]" "did you mean [train]"

write_graph g.ini train.stpes=3
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^stpes'): [train] stpes = 3:" "did you mean 'steps'"

write_graph g.ini model.n_layr=3
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^n_layr'): [model] n_layr = 3:" "did you mean 'n_layer'"

# a key the dense plugin does not declare
write_graph g.ini attention.window=3
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^window'): [attention] window = 3:" "unknown key"

# the same typo through --set names --set instead of a line
write_graph g.ini
expect_config_error g.ini --set train.stpes=3 -- "--set" "[train] stpes = 3" "did you mean 'steps'"

# a --set value names --set alone, never "--set:0:"
expect_config_error g.ini --set attention.plugin=nosuch -- "fsrun: --set: [attention] plugin = nosuch: no attention plugin"
assert_not_contains "$(last_err)" "--set:0:" "no line number for --set"
expect_config_error g.ini --set layer.7.plugin=dense -- "fsrun: --set: [layer.7]: layers 7-7 do not exist"
assert_not_contains "$(last_err)" "--set:0:" "no line number for --set"

# ---- types ----

# an integer past int64 says so, not "must be an integer >= 0"
expect_config_error g.ini --set train.seed=18446744073709551615 -- "[train] seed = 18446744073709551615" \
    "the largest a key holds is 9223372036854775807"

write_graph g.ini train.steps=abc
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^steps'): [train] steps = abc:" "integer"

write_graph g.ini train.lr=fast
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^lr'): [train] lr = fast:" "number"

write_graph g.ini attention.causal=maybe
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^causal'): [attention] causal = maybe:" "true or false"

write_graph g.ini train.steps=12abc
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^steps'): [train] steps = 12abc:" "integer"

# ---- ranges ----

write_graph g.ini train.batch=0
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^batch'): [train] batch = 0:" "[1, 65536]"

write_graph g.ini generate.temperature=-1
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^temperature'): [generate] temperature = -1:"

write_graph g.ini model.vocab_size=100
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^vocab_size'): [model] vocab_size = 100:" "256"

write_graph g.ini "+[distill]" "+temperature = 0"
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^temperature = 0$'): [distill] temperature = 0:"

# ---- model shape ----

write_graph g.ini model.n_embd=30 model.n_head=4
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^n_embd'): [model] n_embd = 30:" "multiple" "n_head"

# A section-level error may point at the [section] line or at its first key.
assert_section_line() { # SECTION-REGEX SECTION-TEXT
    local h
    h=$(line_of g.ini "$1")
    case "$(last_err)" in
    *"g.ini:$h: $2"* | *"g.ini:$((h + 1)): $2"*) ok "error points at $2 (line $h or $((h + 1)))" ;;
    *) fail "error should name g.ini:$h (or $((h + 1))): $2: $(last_err)" ;;
    esac
}
write_graph g.ini "+[layer.9]" "+causal = true"
expect_config_error g.ini -- "[layer.9]" "n_layer = 2"
assert_section_line '^\[layer\.9\]' "[layer.9]"

write_graph g.ini "+[layer.1-5]" "+causal = true"
expect_config_error g.ini -- "[layer.1-5]" "n_layer = 2"
assert_section_line '^\[layer\.1-5\]' "[layer.1-5]"

# ---- plugins ----

write_graph g.ini attention.plugin=nosuch
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^plugin = nosuch'): [attention] plugin = nosuch:" "available:" "dense"
# the list of available plugins names each plugin once, even when the same
# directory is reached through FS_PLUGIN_PATH and beside fsrun
avail=$(sed -n -E 's/.*available: ([^);]*).*/\1/p' "$E2E_ERR" | tr -d ' ' | tr ',' '\n')
assert_contains "$avail" "dense" "the 'available:' list holds dense"
assert_eq "$(printf '%s\n' "$avail" | sort | uniq -d | tr '\n' ' ')" "" "'available:' lists no plugin twice"

printf 'this is a text file, not a shared object\n' >notaplugin.so
write_graph g.ini attention.plugin=./notaplugin.so
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^plugin = ./notaplugin'): [attention] plugin = ./notaplugin.so:" \
    "notaplugin.so" "cannot load plugin"

write_graph g.ini attention.plugin=./nonexistent.so
expect_config_error g.ini -- "[attention] plugin = ./nonexistent.so:" "nonexistent.so" "not found"

# wrong kind, by path: the distill plugin where attention is needed
run "$FSRUN" --list-plugins
soft_kd_path=$(awk '$1 == "distill" && $2 == "soft_kd" { print $4 }' "$E2E_OUT")
[ -n "$soft_kd_path" ] || die "--list-plugins does not show soft_kd's file"
write_graph g.ini attention.plugin="$soft_kd_path"
expect_config_error g.ini -- "[attention] plugin = $soft_kd_path:" "soft_kd" "distill plugin" "attention plugin is needed"

# wrong kind, by name: no attention plugin of that name exists
write_graph g.ini attention.plugin=soft_kd
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^plugin = soft_kd'): [attention] plugin = soft_kd:" "soft_kd"

# an attention plugin where a distill plugin is needed (checked in every mode)
write_graph g.ini "+[distill]" "+plugin = dense"
expect_config_error g.ini -- "g.ini:$(grep -n '^plugin = dense$' g.ini | tail -n1 | cut -d: -f1): [distill] plugin = dense:"

# ---- data files ----

write_graph g.ini data.train=nonexistent.txt
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^train = '): [data] train = nonexistent.txt:" "nonexistent.txt"

write_graph g.ini data.val=nonexistent_val.txt
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^val = '): [data] val = nonexistent_val.txt:" "nonexistent_val.txt"

: >empty.txt
write_graph g.ini data.train=empty.txt
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^train = '): [data] train = empty.txt:" "empty"

write_graph g.ini data.val=empty.txt
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^val = '): [data] val = empty.txt:" "empty"

# 32 bytes cannot make one window of max_seq 32 (33 tokens are needed)
head -c 32 train.txt >short.txt
write_graph g.ini data.train=short.txt
expect_config_error g.ini -- "[data] train = short.txt:" "short"

write_graph g.ini data.train=
expect_config_error g.ini -- "[data] train"

# a directory where a text file is expected (fopen succeeds on a directory)
mkdir -p data_dir
write_graph g.ini data.train=data_dir
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^train = '): [data] train = data_dir:" "data_dir"
write_graph g.ini data.val=data_dir
expect_config_error g.ini -- "g.ini:$(line_of g.ini '^val = '): [data] val = data_dir:" "data_dir"

# an empty [run] out: nowhere to write, a configuration error
write_graph g.ini run.out=
expect_config_error g.ini -- "[run] out"

# ---- --set overrides a key ----

write_graph g.ini
assert_exit 0 "$FSRUN" g.ini --set train.steps=3
assert_eq "$(json_last "$E2E_OUT" steps)" 3 "--set train.steps=3: summary \"steps\""
assert_eq "$(json_last "$E2E_OUT" mode)" train "summary \"mode\""
assert_eq "$(metrics_col out/metrics.jsonl loss | wc -l)" 3 "--set train.steps=3: three metrics rows"
graph_text=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['__metadata__']['graph'])" "$(st_header out/model.safetensors)")
assert_contains "$graph_text" "steps = 3" "the checkpoint's graph holds the --set value"
assert_not_contains "$graph_text" "steps = 10" "the checkpoint's graph does not hold the overridden value"

# ---- a prompt longer than the context (needs a trained model) ----

write_graph g.ini run.overwrite=true # out holds the run above
must_fsrun g.ini
[ -f out/model.safetensors ] || die "training wrote no checkpoint"
long=$(printf 'x%.0s' $(seq 40))
assert_exit 2 "$FSRUN" g.ini --mode generate --prompt "$long"
assert_one_error_line
assert_err "--prompt" "40" "32" "max_seq"
exact=$(printf 'y%.0s' $(seq 32))
assert_exit 2 "$FSRUN" g.ini --mode generate --prompt "$exact"
assert_one_error_line
assert_err "--prompt" "max_seq"
write_graph g.ini generate.prompt="$long"
assert_exit 2 "$FSRUN" g.ini --mode generate
assert_one_error_line
assert_err "g.ini:$(line_of g.ini '^prompt = '): [generate] prompt = $long:" "max_seq"
# one token shorter than the context is fine
write_graph g.ini
assert_exit 0 "$FSRUN" g.ini --mode generate --prompt "$(printf 'z%.0s' $(seq 31))"

e2e_finish
