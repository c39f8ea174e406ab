#!/usr/bin/env bash
# test_decode_weights.sh — [generate] weights = f32 | bf16 | q8 as a user
# sets it: each format generates (exit 0, the asked number of tokens);
# text from f32 equals text with the key left out (the
# default); q8 on a model whose width is not a multiple of 32 fails with
# the key's name and the way out, and an unknown format is a config error
# naming the choices. (Each format's logits against the training forward
# are in tests/unit/test_decode_weights.c.)
. "$(dirname "$0")/lib.sh"

standard_data
write_graph g.ini train.steps=20 generate.max_tokens=0
assert_exit 0 "$FSRUN" g.ini
[ "$E2E_OK" = 1 ] || die "training failed"

gen() { run "$FSRUN" g.ini --mode generate --set generate.max_tokens=24 --set generate.temperature=1 --set generate.seed=7 "$@"; }
gen
assert_eq "$E2E_RC" 0 "generate with the default weights: exit"
default_text=$(json_last "$E2E_OUT" text)
for w in f32 bf16 q8; do
    gen --set generate.weights=$w
    assert_eq "$E2E_RC" 0 "generate with weights = $w: exit"
    assert_eq "$(json_last "$E2E_OUT" tokens)" 24 "weights = $w: tokens"
    [ $w = f32 ] && assert_eq "$(json_last "$E2E_OUT" text)" "$default_text" "weights = f32 is the default"
done

# q8 needs widths in blocks of 32: n_embd = 48 is refused, saying why
write_graph g48.ini model.n_embd=48 train.steps=2 generate.max_tokens=0 run.out=out48
assert_exit 0 "$FSRUN" g48.ini
run "$FSRUN" g48.ini --mode generate --set generate.weights=q8
assert_ne "$E2E_RC" 0 "q8 on n_embd = 48: fails"
assert_contains "$(cat "$E2E_ERR")" "weights = q8" "q8 on n_embd = 48: names the key"
assert_contains "$(cat "$E2E_ERR")" "multiple of 32" "q8 on n_embd = 48: says why"
run "$FSRUN" g48.ini --mode generate --set generate.weights=bf16 --set generate.max_tokens=4
assert_eq "$E2E_RC" 0 "bf16 on n_embd = 48: exit"

run "$FSRUN" g.ini --mode generate --set generate.weights=int4
assert_eq "$E2E_RC" 2 "weights = int4: a config error"
assert_contains "$(cat "$E2E_ERR")" "f32, bf16, q8" "weights = int4: the choices"

e2e_finish
