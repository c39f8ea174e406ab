#!/usr/bin/env bash
# test_hf_export.sh — a run directory is a Hugging Face model folder:
#  - model.safetensors holds the weights only (format pt; fastserve keys
#    beside), training_state.safetensors the moments, config.json GPT2Config;
#  - transformers' GPT2LMHeadModel.from_pretrained(run_dir) logs no warning
#    and its loss on fsrun's eval windows equals fsrun's --mode eval within
#    1e-5; greedy generation picks the same tokens (tied and untied heads);
#  - with a BPE tokenizer, tokenizer.json is there too:
#    AutoTokenizer.from_pretrained(run_dir) encodes the val text as fsrun's
#    token cache holds it, and the losses agree on those tokens;
#  - a model that is not GPT-2's computation (longformer) gets no config.json.
. "$(dirname "$0")/lib.sh"
need_hf

standard_data
T=32

# check_dir DIR GRAPH LABEL: from_pretrained without warnings, the same loss
check_dir() {
    local dir=$1 graph=$2 label=$3
    assert_exit 0 "$FSRUN" "$graph" --mode eval
    local fs_loss fs_tokens
    fs_loss=$(json_last "$E2E_OUT" loss)
    fs_tokens=$(json_last "$E2E_OUT" tokens)
    if hf eval "$dir" "${4:-val.txt}" $T --strict >hf.out 2>hf.err; then
        ok "$label: from_pretrained($dir) logs no warning"
        assert_eq "$(json_last hf.out tokens)" "$fs_tokens" "$label: the same eval windows"
        assert_close "$(json_last hf.out loss)" "$fs_loss" 1e-5 "$label: transformers' loss == fsrun's eval loss"
    else
        fail "$label: transformers could not load $dir"
        tail -n 5 hf.err | sed 's/^/     | /'
    fi
}

# ---- a dense byte-level run, tied head ----
write_graph g.ini train.steps=80 generate.max_tokens=0
assert_exit 0 "$FSRUN" g.ini
for f in model.safetensors training_state.safetensors config.json; do
    [ -f out/$f ] && ok "out/$f written" || fail "out/$f missing"
done
[ -f out/tokenizer.json ] && fail "a byte-level run wrote tokenizer.json" || ok "no tokenizer.json for the byte tokenizer"
python3 - out/model.safetensors out/training_state.safetensors out/config.json <<'EOF' && ok "model.safetensors: weights only, format pt; the state beside; config.json is GPT2Config" || fail "the run directory's files are not as documented"
import json, struct, sys
def header(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), len(b)
h, size = header(sys.argv[1])
meta = h.pop('__metadata__')
assert meta['format'] == 'pt', meta
assert meta['fastserve_format'] == 'fastserve/2' and meta['step'] == '80' and 'graph' in meta and 'fastserve_version' in meta, meta
assert all(k.startswith('transformer.') for k in h), sorted(h)
weights = sum(v['data_offsets'][1] - v['data_offsets'][0] for v in h.values())
assert size < weights + 64 * 1024, (size, weights)  # no moments inside
s, _ = header(sys.argv[2])
sm = s.pop('__metadata__')
assert sorted(s) == ['exp_avg', 'exp_avg_sq'] and s['exp_avg']['shape'] == [weights // 4], s
assert sm['step'] == '80' and len(sm['rng'].split()) == 4 and sm['optimizer_t'] == '80', sm
c = json.load(open(sys.argv[3]))
assert c['architectures'] == ['GPT2LMHeadModel'] and c['model_type'] == 'gpt2', c
assert (c['vocab_size'], c['n_positions'], c['n_embd'], c['n_layer'], c['n_head']) == (256, 32, 32, 2, 2), c
assert c['activation_function'] == 'gelu_new' and c['layer_norm_epsilon'] == 1e-5 and c['tie_word_embeddings'] is True, c
EOF
check_dir out g.ini "tied"

# greedy decoding: the same tokens as transformers' generate
assert_exit 0 "$FSRUN" g.ini --mode generate --prompt "The cat" --set generate.temperature=0 --set generate.max_tokens=20
fs_text=$(json_last "$E2E_OUT" text)
hf_ids=$(hf greedy out "The cat" 20)
assert_eq "$(python3 -c "import json,sys; print(bytes(json.loads(sys.argv[1])).decode('latin-1'))" "$hf_ids")" "$fs_text" \
    "greedy text == transformers' generate (tied)"

# ---- an untied head: lm_head.weight is its own matrix ----
write_graph u.ini train.steps=30 generate.max_tokens=0 model.tie_word_embeddings=false run.out=untied
assert_exit 0 "$FSRUN" u.ini
assert_contains "$(st_header untied/model.safetensors)" '"lm_head.weight"' "the untied run saves lm_head.weight"
assert_eq "$(python3 -c "import json; print(json.load(open('untied/config.json'))['tie_word_embeddings'])")" False \
    "config.json: tie_word_embeddings false"
check_dir untied u.ini "untied"
python3 - untied/model.safetensors <<'EOF' && ok "the untied head was trained apart from wte" || fail "lm_head.weight equals wte"
import struct, sys, json
b = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
get = lambda k: b[8 + n + h[k]['data_offsets'][0]:8 + n + h[k]['data_offsets'][1]]
assert get('lm_head.weight') != get('transformer.wte.weight')
EOF
assert_exit 0 "$FSRUN" u.ini --mode generate --prompt "The cat" --set generate.temperature=0 --set generate.max_tokens=20
assert_eq "$(python3 -c "import json,sys; print(bytes(json.loads(sys.argv[1])).decode('latin-1'))" "$(hf greedy untied "The cat" 20)")" \
    "$(json_last "$E2E_OUT" text)" "greedy text == transformers' generate (untied)"
# resuming an untied run continues it
write_graph u2.ini train.steps=40 generate.max_tokens=0 model.tie_word_embeddings=false run.out=untied
assert_exit 0 "$FSRUN" u2.ini --resume
assert_eq "$(json_last "$E2E_OUT" steps)" 40 "an untied run resumes"

# ---- BPE: tokenizer.json in the run directory ----
write_graph b.ini model.tokenizer=bpe:tok/tokenizer.json model.vocab_size=320 train.steps=30 generate.max_tokens=0 \
    run.out=bpe_out
assert_exit 0 "$FSRUN" b.ini --mode train-tokenizer
assert_exit 0 "$FSRUN" b.ini
[ -f bpe_out/tokenizer.json ] && ok "bpe_out/tokenizer.json written" || fail "no tokenizer.json in the BPE run"
cache=$(ls val.txt.bpe-*.tokens 2>/dev/null | head -n 1)
[ -n "$cache" ] && ok "the val text's token cache exists ($cache)" || die "no token cache for val.txt"
hf cache "$cache" fs_val.bin
hf encode fast:bpe_out val.txt hf_val.bin >/dev/null
hf same fs_val.bin hf_val.bin >same.out && ok "AutoTokenizer.from_pretrained(run_dir) encodes val.txt as fsrun's cache ($(cat same.out))" ||
    fail "AutoTokenizer and fsrun tokenize val.txt differently: $(cat same.out)"
check_dir bpe_out b.ini "bpe" "$cache"

# ---- not GPT-2's computation: no config.json ----
write_graph l.ini attention.plugin=longformer attention.window=4 train.steps=3 generate.max_tokens=0 run.out=lf_out
assert_exit 0 "$FSRUN" l.ini
[ -f lf_out/model.safetensors ] && [ ! -f lf_out/config.json ] && ok "longformer: weights, but no config.json" ||
    fail "longformer: a config.json would make transformers compute another model"

e2e_finish
