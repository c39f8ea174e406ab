#!/usr/bin/env bash
# test_tokenizer_bpe.sh — fsrun's byte-level BPE against the tokenizers
# package (PyPI), token for token, on large texts: the whole King James
# Bible (data/kjv, or extracted here from Debian's bible-kjv) and a UTF-8
# stress text (accents, CJK, emoji, digits of several scripts, contractions,
# every kind of white space, <|endoftext|>, a sweep over all code points):
#  - a tokenizer that tokenizers' own trainer learned, read by fsrun as
#    tokenizer.json, as a directory, as vocab.json + merges.txt (compared
#    with transformers' GPT2TokenizerFast) and as a prefix;
#  - a tokenizer fsrun learned (--mode train-tokenizer), read by tokenizers;
#  - the token cache: written once, memory-mapped after, rebuilt when the
#    text or the tokenizer changes;
#  - configuration errors name the key.
. "$(dirname "$0")/lib.sh"
need_hf

if [ -s "$FS_SOURCE_DIR/data/kjv/train.txt" ]; then
    cat "$FS_SOURCE_DIR/data/kjv/train.txt" "$FS_SOURCE_DIR/data/kjv/val.txt" >kjv.txt
else
    command -v bible >/dev/null || die "the Bible is needed: scripts/setup.sh installs bible-kjv"
    bible -f gen1:1-rev22:21 | sed 's/^[^ ]* //' >kjv.txt
fi
[ "$(wc -c <kjv.txt)" -gt 4000000 ] && ok "the whole Bible: $(wc -c <kjv.txt) bytes" || die "kjv.txt is too short"
hf stress stress.txt 5
ok "stress text: $(wc -c <stress.txt) bytes"
hf stress stress_head.txt 97 # a smaller one, for learning merges with multi-byte characters
cat kjv.txt stress_head.txt >mix.txt

# tokenize GRAPH_ARGS...: fsrun --mode tokenize on kjv.txt (train) and stress.txt (val)
write_tok_graph() { write_graph tok.ini data.train=kjv.txt data.val=stress.txt "$@"; }
cache_of() { ls "$1".bpe-*.tokens | head -n 1; }

# compare LABEL REF_SPEC [FILES]: fsrun's caches of the texts (both by
# default) == the reference's encodings
compare() {
    local label=$1 ref=$2 f
    for f in ${3:-kjv.txt stress.txt}; do
        hf cache "$(cache_of $f)" fs.bin
        hf encode "$ref" $f ref.bin >/dev/null
        if hf same fs.bin ref.bin >same.out; then
            ok "$label: $f token for token ($(cat same.out))"
        else
            fail "$label: $f differs: $(cat same.out)"
        fi
    done
}

# ---- tokenizers' trainer -> fsrun ----
hf train-bpe mix.txt 3000 hfbpe || die "tokenizers could not learn a BPE"
write_tok_graph model.tokenizer=bpe:hfbpe/tokenizer.json model.vocab_size=3000
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
cp "$E2E_OUT" tok1.out
assert_eq "$(json_last tok1.out vocab)" 3000 "tokenize: the vocabulary size"
compare "tokenizer.json" hfbpe/tokenizer.json

rm -f ./*.tokens
mkdir -p vm && cp hfbpe/vocab.json hfbpe/merges.txt vm/
write_tok_graph model.tokenizer=bpe:vm model.vocab_size=3000
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
compare "vocab.json + merges.txt (GPT2TokenizerFast)" vm:vm/vocab.json,vm/merges.txt
id_vm=$(cache_of kjv.txt)

rm -f ./*.tokens
cp hfbpe/vocab.json p-vocab.json && cp hfbpe/merges.txt p-merges.txt
write_tok_graph model.tokenizer=bpe:p model.vocab_size=3000
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
assert_eq "$(cache_of kjv.txt)" "$id_vm" "a prefix P (P-vocab.json, P-merges.txt) is the same tokenizer (the same cache key)"

rm -f ./*.tokens
write_tok_graph model.tokenizer=bpe:hfbpe/tokenizer.json model.vocab_size=3000
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
id_json=$(cache_of kjv.txt)
rm -f ./*.tokens
write_tok_graph model.tokenizer=bpe:hfbpe model.vocab_size=3000
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
assert_eq "$(cache_of kjv.txt)" "$id_json" "a directory holding tokenizer.json is that tokenizer (the same cache key)"

# ---- fsrun's trainer -> tokenizers ----
rm -f ./*.tokens
write_tok_graph model.tokenizer=bpe:learned/tokenizer.json model.vocab_size=2048
assert_exit 0 "$FSRUN" tok.ini --mode train-tokenizer
cp "$E2E_OUT" learn.out
assert_eq "$(json_last learn.out vocab)" 2048 "train-tokenizer: the vocabulary asked for"
[ -f learned/tokenizer.json ] && ok "learned/tokenizer.json written" || die "train-tokenizer wrote nothing"
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
cp "$E2E_OUT" learned_tok.out
compare "fsrun's learned tokenizer, read by tokenizers" learned/tokenizer.json
tpb=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['train']['tokens_per_byte'])" learned_tok.out)
assert_num "$tpb" '<' 0.33 "2048 tokens learned on the Bible: under a third of a token per byte"
"$FS_PYTHON" - learned/tokenizer.json <<'EOF' && ok "the learned tokenizer decodes back to the text (tokenizers' decoder)" || fail "round trip through tokenizers failed"
import sys
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
text = open('stress_head.txt', encoding='utf-8', newline='').read()
assert t.decode(t.encode(text).ids, skip_special_tokens=False) == text
assert t.token_to_id('<|endoftext|>') == 2047
EOF

# ---- the cache ----
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
python3 - "$E2E_OUT" <<'EOF' && ok "the second run maps both caches" || fail "the second run tokenized again"
import json, sys
o = json.loads(open(sys.argv[1], 'rb').read().split(b'\n')[-2])
assert o['train']['from_cache'] and o['val']['from_cache'], o
EOF
stress_cache=$(cache_of stress.txt)
python3 - <<'EOF'
b = bytearray(open('stress.txt', 'rb').read())
b[5] = ord('Q') if b[5] != ord('Q') else ord('R')  # the same size, another text
open('stress.txt', 'wb').write(bytes(b))
EOF
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
assert_err "tokenized again" "the text changed"
python3 - "$E2E_OUT" <<'EOF' && ok "an edited text of the same size is tokenized again" || fail "a stale cache was used"
import json, sys
o = json.loads(open(sys.argv[1], 'rb').read().split(b'\n')[-2])
assert o['train']['from_cache'] and not o['val']['from_cache'], o
EOF
compare "after the edit" learned/tokenizer.json stress.txt
write_tok_graph model.tokenizer=bpe:learned/tokenizer.json model.vocab_size=2048 data.cache=false
rm -f ./*.tokens
assert_exit 0 "$FSRUN" tok.ini --mode tokenize
[ -z "$(ls ./*.tokens 2>/dev/null)" ] && ok "[data] cache = false writes no cache" || fail "a cache was written with cache = false"

# ---- errors ----
write_tok_graph model.tokenizer=bpe:nosuch.json
assert_exit 2 "$FSRUN" tok.ini --mode tokenize
assert_one_error_line
assert_err "[model] tokenizer = bpe:nosuch.json" "train-tokenizer"
write_tok_graph model.tokenizer=wordpiece
assert_exit 2 "$FSRUN" tok.ini
assert_one_error_line
assert_err "[model] tokenizer = wordpiece" "bpe:PATH"
write_tok_graph model.tokenizer=bpe:learned/tokenizer.json model.vocab_size=1000
assert_exit 2 "$FSRUN" tok.ini --mode tokenize
assert_one_error_line
assert_err "[model] vocab_size = 1000" "2048"
write_tok_graph model.tokenizer=bpe:learned/tokenizer.json model.vocab_size=2048
assert_exit 2 "$FSRUN" tok.ini --mode train-tokenizer
assert_one_error_line
assert_err "learned/tokenizer.json exists" "[run] overwrite = true"

e2e_finish
