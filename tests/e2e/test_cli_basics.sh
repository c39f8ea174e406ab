#!/usr/bin/env bash
# test_cli_basics.sh — the command line without a model: --help, --version
# (ABI, BLAS, CUDA), --list-plugins (dense, single, soft_kd), --describe
# (soft_kd's temperature and alpha; an unknown plugin), and the usage errors
# that must exit 2 before any work: no arguments, an unknown option,
# --mode bogus, a --set that is not section.key=value, an option missing its
# value, two graph files.
. "$(dirname "$0")/lib.sh"

standard_data
write_graph g.ini

# --help: usage on stdout, exit 0
assert_exit 0 "$FSRUN" --help
assert_contains "$(last_out)" "usage: fsrun GRAPH.ini" "--help prints the usage line"
assert_contains "$(last_out)" "--set section.key=value" "--help documents --set"
assert_contains "$(last_out)" "--mode" "--help documents --mode"

# --version: the ABI, the BLAS and whether CUDA was found
assert_exit 0 "$FSRUN" --version
assert_contains "$(last_out)" "ABI" "--version names the plugin ABI"
assert_contains "$(last_out)" "BLAS" "--version names the BLAS"
assert_contains "$(last_out)" "CUDA" "--version says what CUDA is"
assert_eq "$(grep -cE 'ABI [0-9]+\.[0-9]+' "$E2E_OUT" || true)" 1 "--version prints an ABI major.minor"

# --list-plugins: the three required plugins, each with its kind
assert_exit 0 "$FSRUN" --list-plugins
assert_eq "$(grep -cE '^attention +dense ' "$E2E_OUT" || true)" 1 "--list-plugins lists attention 'dense' once"
assert_eq "$(grep -cE '^parallel +single ' "$E2E_OUT" || true)" 1 "--list-plugins lists parallel 'single' once"
assert_eq "$(grep -cE '^distill +soft_kd ' "$E2E_OUT" || true)" 1 "--list-plugins lists distill 'soft_kd' once"

# --describe soft_kd: its keys with types, defaults and ranges
assert_exit 0 "$FSRUN" --describe soft_kd
assert_contains "$(last_out)" "soft_kd" "--describe names the plugin"
assert_contains "$(last_out)" "distill" "--describe names the kind"
assert_eq "$(grep -cE '^ +temperature +float' "$E2E_OUT" || true)" 1 "--describe soft_kd shows temperature (float)"
assert_eq "$(grep -cE '^ +alpha +float .*\[0, 1\]' "$E2E_OUT" || true)" 1 "--describe soft_kd shows alpha in [0, 1]"
assert_exit 0 "$FSRUN" --describe dense
assert_contains "$(last_out)" "causal" "--describe dense shows the runtime's attention keys"

# --describe of nothing that exists: usage error
assert_exit 2 "$FSRUN" --describe nosuch
assert_one_error_line
assert_err "nosuch"

# no arguments: usage on stderr, exit 2, nothing on stdout
assert_exit 2 "$FSRUN"
assert_contains "$(last_err)" "usage:" "no arguments prints the usage on stderr"
assert_eq "$(wc -c <"$E2E_OUT")" 0 "no arguments writes nothing to stdout"

# unknown option
assert_exit 2 "$FSRUN" g.ini --frobnicate
assert_one_error_line
assert_err "--frobnicate"

# --mode bogus: names the mode and the valid ones; no training happened
assert_exit 2 "$FSRUN" g.ini --mode bogus
assert_one_error_line
assert_err "bogus" "train" "generate" "eval" "distill"
[ ! -e out ] && ok "--mode bogus wrote no run directory" || fail "--mode bogus created out/"

# --set in a bad form
for bad in foo train.steps =3 train=3; do
    assert_exit 2 "$FSRUN" g.ini --set "$bad"
    assert_one_error_line
    assert_err "$bad" "section.key=value"
done
# --set of an unknown key or section, and a bad value
assert_exit 2 "$FSRUN" g.ini --set train.nokey=3
assert_one_error_line
assert_err "[train]" "nokey"
assert_exit 2 "$FSRUN" g.ini --set nosection.key=3
assert_one_error_line
assert_err "nosection"
assert_exit 2 "$FSRUN" g.ini --set train.batch=0
assert_one_error_line
assert_err "[train] batch = 0"

# an option without its value, two graph files
for opt in --set --mode --prompt --checkpoint --describe; do
    assert_exit 2 "$FSRUN" g.ini "$opt"
    assert_one_error_line
    assert_err "$opt"
done
assert_exit 2 "$FSRUN" g.ini g.ini
assert_one_error_line

[ ! -e out ] && ok "no usage error created the run directory" || fail "a usage error created out/"
e2e_finish
