#!/usr/bin/env bash
# test_hf_import.sh — fsrun reads what transformers' save_pretrained writes
# (models built here from a small GPT2Config and a fixed seed: nothing is
# downloaded), and agrees with transformers on it:
#  - tied, untied (tie_word_embeddings=False), bare GPT2Model names (no
#    "transformer." prefix, no head), sharded (model-0000N-of-0000M +
#    index), fp16 and bf16: --mode eval --checkpoint DIR gives transformers'
#    loss on the same windows within 1e-5; greedy tokens agree;
#  - what does not fit is refused with the tensor or key to change: an
#    untied head under a tied graph, another width, another n_head (from
#    config.json), more layers, a pytorch_model.bin-only directory;
#  - the source files are never written.
. "$(dirname "$0")/lib.sh"
need_hf

standard_data
T=32
write_graph g.ini generate.max_tokens=0

for v in tied untied bare sharded fp16 bf16; do
    hf make "hf_$v" $v || die "transformers could not write the $v model"
done
ls hf_sharded/model-0000*-of-0000*.safetensors >/dev/null 2>&1 && [ -f hf_sharded/model.safetensors.index.json ] &&
    ok "save_pretrained wrote a sharded checkpoint ($(ls hf_sharded/model-*.safetensors | wc -l) shards)" ||
    fail "the sharded model is not sharded"
python3 -c "import json; assert not any(k.startswith('transformer.') for k in json.loads(open(0).read()))" \
    <<<"$(st_header hf_bare/model.safetensors)" && ok "the bare model's names have no transformer. prefix" ||
    fail "the bare model has prefixed names"
sha_before=$(cat hf_tied/* hf_untied/* hf_bare/* hf_fp16/* hf_bf16/* | sha256sum)

# eval_against DIR LABEL [fsrun args...]: fsrun's loss == transformers'
# (which reads the directory DIR is or is in)
eval_against() {
    local dir=$1 label=$2 ref=$1
    shift 2
    [ -d "$ref" ] || ref=$(dirname "$ref")
    assert_exit 0 "$FSRUN" g.ini --mode eval --checkpoint "$dir" "$@"
    [ "$E2E_OK" = 1 ] || return 0
    local fs_loss
    fs_loss=$(json_last "$E2E_OUT" loss)
    hf eval "$ref" val.txt $T >hf.out || { fail "$label: transformers' eval failed"; return 0; }
    assert_close "$(json_last hf.out loss)" "$fs_loss" 1e-5 "$label: fsrun's loss == transformers'"
}

eval_against hf_tied tied
eval_against hf_untied untied --set model.tie_word_embeddings=false
eval_against hf_bare "bare GPT2Model"
eval_against hf_sharded sharded
eval_against hf_sharded/model.safetensors.index.json "sharded, the index named"
eval_against hf_fp16 fp16
eval_against hf_bf16 bf16
eval_against hf_tied/model.safetensors "a file rather than a directory"

# greedy tokens agree (tied and untied; fp16 through its float32 values)
for v in tied untied fp16; do
    extra=()
    [ $v = untied ] && extra=(--set model.tie_word_embeddings=false)
    assert_exit 0 "$FSRUN" g.ini --mode generate --checkpoint hf_$v --prompt "The cat" --set generate.temperature=0 \
        --set generate.max_tokens=16 "${extra[@]}"
    want=$(hf greedy hf_$v "The cat" 16)
    got=$(json_last "$E2E_OUT" text)
    python3 - "$want" "$got" <<'EOF' && ok "$v: greedy tokens == transformers' generate" || fail "$v: greedy tokens differ ($want vs '$got')"
import json, sys
want = bytes(json.loads(sys.argv[1])).decode('utf-8', 'replace')
assert want == sys.argv[2], (want, sys.argv[2])
EOF
done

# ---- what does not fit ----
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint hf_untied
assert_one_error_line
assert_err "lm_head.weight" "tie_word_embeddings = false"

hf make hf_wide tied --embd 48 --heads 2
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint hf_wide
assert_one_error_line
assert_err "transformer.wte.weight" "[256, 48]" "[model] n_embd = 48"

hf make hf_heads tied --heads 4
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint hf_heads
assert_one_error_line
assert_err "hf_heads/config.json" "n_head" "[model] n_head = 4"

hf make hf_deep tied --layers 3
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint hf_deep
assert_one_error_line
assert_err "hf_deep/config.json" "[model] n_layer = 3"
mkdir -p deep_alone && cp hf_deep/model.safetensors deep_alone/ # no config.json: the tensors tell
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint deep_alone/model.safetensors
assert_one_error_line
assert_err "transformer.h.2" "[model] n_layer"

hf make hf_vocab tied --vocab 300
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint hf_vocab --set model.vocab_size=256
assert_one_error_line
assert_err "[model] vocab_size = 300"

mkdir -p hf_bin && : >hf_bin/pytorch_model.bin
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint hf_bin
assert_one_error_line
assert_err "pytorch_model.bin" "safe_serialization=True"

rm hf_sharded/model-00002-of-*.safetensors
assert_exit 1 "$FSRUN" g.ini --mode eval --checkpoint hf_sharded
assert_one_error_line
assert_err "model-00002-of-" "missing"

assert_eq "$(cat hf_tied/* hf_untied/* hf_bare/* hf_fp16/* hf_bf16/* | sha256sum)" "$sha_before" \
    "the source models are byte for byte as save_pretrained wrote them"

e2e_finish
