#!/usr/bin/env bash
# test_plan.sh — fsrun --plan GRAPH.ini --ranks N: one row per (data,
# tensor, pipeline) split with product N, the reasons for the invalid ones,
# exactly one recommendation (the fastest estimate that fits the memory per
# rank, none when nothing fits), the JSON last line, --set, --json, and the
# usage and graph errors (exit 2, one 'fsrun: ...' line, nothing run).
# The numbers themselves are checked by hand in tests/unit/test_plan.c;
# here the parameter bytes are checked against GPT-2's parameter count.
. "$(dirname "$0")/lib.sh"

write_graph g.ini # 2 layers, 2 heads, C = 32, T = 32, V = 256, batch 4

# py_json FILE EXPR: evaluates EXPR with `j` = the JSON on FILE's last line.
py_json() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
j = json.loads(lines[-1])
print(eval(sys.argv[2]))
EOF
}

split_of() { py_json "$E2E_OUT" "' '.join('%d,%d,%d' % (s['data'], s['tensor'], s['pipeline']) for s in j['splits'] $1)"; }
reason_of() { py_json "$E2E_OUT" "[s['reason'] for s in j['splits'] if (s['data'], s['tensor'], s['pipeline']) == ($1)][0]"; }

# ---- 4 ranks: every split, two of them invalid ----
assert_exit 0 "$FSRUN" --plan g.ini --ranks 4
assert_eq "$(split_of '')" "4,1,1 2,1,2 2,2,1 1,1,4 1,2,2 1,4,1" "the six splits of 4 ranks, most data-parallel first"
assert_eq "$(split_of "if not s['valid']")" "1,1,4 1,4,1" "the invalid splits"
assert_contains "$(reason_of '1, 1, 4')" "pipeline = 4 > n_layer = 2" "p = 4 > 2 layers is the reason"
assert_contains "$(reason_of '1, 4, 1')" "tensor = 4 does not divide n_head = 2" "t = 4 vs 2 heads is the reason"
assert_eq "$(grep -c 'invalid: ' "$E2E_OUT")" 2 "the table shows both invalid rows"
assert_eq "$(grep -c '<- recommended' "$E2E_OUT")" 1 "the table marks exactly one row recommended"
assert_eq "$(py_json "$E2E_OUT" "sum(1 for s in j['splits'] if s.get('recommended'))")" 1 "the JSON marks exactly one split"
rec=$(py_json "$E2E_OUT" "'%d,%d,%d' % (j['recommended']['data'], j['recommended']['tensor'], j['recommended']['pipeline'])")
row=$(grep '<- recommended' "$E2E_OUT" | awk '{print $2 "," $3 "," $4}')
assert_eq "$row" "$rec" "the starred table row is the JSON's recommendation"
# the recommendation is the fastest estimate among the splits that fit
fastest=$(py_json "$E2E_OUT" "(lambda f: '%d,%d,%d' % (f['data'], f['tensor'], f['pipeline']))(min((s for s in j['splits'] if s['valid'] and s['fits']), key=lambda s: s['step_s']))")
assert_eq "$rec" "$fastest" "recommended = the lowest step estimate that fits"
# parameters: a data-parallel rank holds the whole GPT-2, V C + T C +
# L (12 C^2 + 13 C) + 2 C floats
want=$(python3 -c "V, T, C, L = 256, 32, 32, 2; print(4 * (V*C + T*C + L*(12*C*C + 13*C) + 2*C))")
assert_eq "$(py_json "$E2E_OUT" "int([s for s in j['splits'] if s['data'] == 4][0]['memory']['params'])")" "$want" \
    "data = 4: parameter bytes = 4 x GPT-2's parameter count"
# the pipeline halves the layers: the first stage holds 1 layer + embeddings
want=$(python3 -c "V, T, C = 256, 32, 32; print(4 * (V*C + T*C + 12*C*C + 13*C))")
assert_eq "$(py_json "$E2E_OUT" "int([s for s in j['splits'] if (s['data'], s['pipeline']) == (2, 2)][0]['memory']['params'])")" \
    "$want" "pipeline = 2: the first stage's parameter bytes"
assert_eq "$(py_json "$E2E_OUT" "[s['bubble'] for s in j['splits'] if s['pipeline'] == 2 and s['data'] == 2][0]")" \
    "$(python3 -c 'print(1 / 3)')" "bubble (p-1)/(m+p-1) with p = 2, m = batch / data = 2"

# ---- --memory-per-rank moves or removes the recommendation ----
smallest=$(py_json "$E2E_OUT" "min(s['memory']['total'] for s in j['splits'] if s['valid'])")
small_split=$(py_json "$E2E_OUT" "(lambda f: '%d,%d,%d' % (f['data'], f['tensor'], f['pipeline']))(min((s for s in j['splits'] if s['valid']), key=lambda s: s['memory']['total']))")
assert_exit 0 "$FSRUN" --plan g.ini --ranks 4 --memory-per-rank "$(python3 -c "print(int($smallest))")"
assert_eq "$(py_json "$E2E_OUT" "'%d,%d,%d' % (j['recommended']['data'], j['recommended']['tensor'], j['recommended']['pipeline'])")" \
    "$small_split" "a limit only the smallest split meets recommends it"
assert_exit 0 "$FSRUN" --plan g.ini --ranks 4 --memory-per-rank 1K
assert_eq "$(py_json "$E2E_OUT" "j['recommended']")" "None" "1 KiB per rank: nothing recommended"
assert_contains "$(last_out)" "recommended: none" "the table says nothing fits"
assert_eq "$(grep -c '<- recommended' "$E2E_OUT" || true)" 0 "no row is starred"
assert_exit 0 "$FSRUN" --plan g.ini --ranks 4 --memory-per-rank 2G
assert_eq "$(py_json "$E2E_OUT" "j['memory_per_rank']")" "2147483648" "2G is 2 GiB"

# ---- [parallel] keys and --set ----
assert_exit 0 "$FSRUN" --plan g.ini --ranks 4 --set parallel.microbatches=4
assert_contains "$(reason_of '2, 1, 2')" "microbatches = 4 does not divide batch / data = 2" "--set microbatches reaches the plan"
write_graph deep.ini model.n_layer=4 parallel.schedule=interleaved parallel.interleave=2 parallel.microbatches=2
assert_exit 0 "$FSRUN" --plan deep.ini --ranks 2
assert_eq "$(py_json "$E2E_OUT" "[(s['schedule'], s['bubble']) for s in j['splits'] if s['pipeline'] == 2][0]")" \
    "('interleaved', $(python3 -c 'print(1 / 5)'))" "interleave = 2: bubble (p-1)/(v m + p - 1) = 1/5"
assert_exit 0 "$FSRUN" --plan deep.ini --ranks 4
assert_contains "$(reason_of '1, 1, 4')" "pipeline x interleave = 4 x 2 = 8 virtual stages > n_layer = 4" \
    "p x v > n_layer is the reason"

# the graph may also come first
assert_exit 0 "$FSRUN" g.ini --plan --ranks 2 --json
assert_eq "$(py_json "$E2E_OUT" "len(j['splits'])")" 3 "fsrun GRAPH.ini --plan --ranks 2 plans too"
assert_exit 2 "$FSRUN" --plan --ranks 2
assert_one_error_line
assert_err "needs a graph file"

# ---- --json: only the JSON ----
assert_exit 0 "$FSRUN" --plan g.ini --ranks 2 --json
assert_eq "$(grep -c '' "$E2E_OUT")" 1 "--json prints one line"
assert_eq "$(py_json "$E2E_OUT" "len(j['splits'])")" 3 "2 ranks: three splits"

# ---- errors: exit 2, one line, nothing planned ----
assert_exit 2 "$FSRUN" --plan g.ini
assert_one_error_line
assert_err "--ranks"
assert_exit 2 "$FSRUN" --plan g.ini --ranks 0
assert_one_error_line
assert_err "--ranks 0"
assert_exit 2 "$FSRUN" --plan g.ini --ranks two
assert_one_error_line
assert_exit 2 "$FSRUN" --plan g.ini --ranks
assert_one_error_line
assert_exit 2 "$FSRUN" --plan nosuch.ini --ranks 2
assert_one_error_line
assert_err "nosuch.ini"
assert_exit 2 "$FSRUN" --plan g.ini --ranks 2 --memory-per-rank lots
assert_one_error_line
assert_err "--memory-per-rank lots"
assert_exit 2 "$FSRUN" --plan g.ini --ranks 2 --frobnicate
assert_one_error_line
assert_err "--frobnicate"
write_graph bad.ini parallel.schedule=pipedream
assert_exit 2 "$FSRUN" --plan bad.ini --ranks 2
assert_one_error_line
assert_err "bad.ini:$(line_of bad.ini '^schedule')" "schedule = pipedream" "gpipe, 1f1b or interleaved"
# 7 ranks: 7 divides neither the batch nor the heads, and 7 > 2 layers
assert_exit 2 "$FSRUN" --plan g.ini --ranks 7
assert_one_error_line
assert_err "no valid"
assert_eq "$(grep -c 'invalid: ' "$E2E_OUT")" 3 "7 ranks: the three splits are listed with their reasons"
[ ! -e out ] && ok "--plan ran nothing (no run directory)" || fail "--plan created out/"

# ---- --help ----
assert_exit 0 "$FSRUN" --help
assert_contains "$(last_out)" "--plan GRAPH.ini --ranks N" "--help documents --plan"

e2e_finish
