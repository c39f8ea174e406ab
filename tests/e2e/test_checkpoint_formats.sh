#!/usr/bin/env bash
# test_checkpoint_formats.sh — checkpoints in the first format still work:
# tests/reference/fastserve1/model.safetensors was written by fsrun before
# run directories took Hugging Face's layout (format = fastserve/1: the
# moments, RNG and step inside the weights file; make_fastserve1_fixture.sh),
# stopped at step 10 of 20.
#  - eval reads it, and its loss equals PyTorch's on the same weights
#    (GPT2LMHeadModel.load_state_dict from the file);
#  - --resume continues it: steps 11..20 have the losses of the old code's
#    straight 20-step run (metrics_straight.jsonl, written with the fixture)
#    within 1e-4, and the checkpoint it writes is in the new layout;
#  - that new checkpoint resumes in turn, and a state file at another step
#    than the weights is refused.
. "$(dirname "$0")/lib.sh"
need_hf

FIX="$FS_SOURCE_DIR/tests/reference/fastserve1"
standard_data
cp "$FIX/graph.ini" g.ini
sed -i '/^\[run\]/a device = cpu' g.ini # the CPU's kernels on a GPU machine too (lib.sh's write_graph says why)
mkdir -p out
cp "$FIX/model.safetensors" out/
assert_eq "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['__metadata__']['format'])" "$(st_header out/model.safetensors)")" \
    fastserve/1 "the fixture is in the first format"

# ---- eval of the old file == PyTorch on its weights ----
assert_exit 0 "$FSRUN" g.ini --mode eval
fs_loss=$(json_last "$E2E_OUT" loss)
"$FS_PYTHON" - out/model.safetensors >torch.out <<'EOF' || fail "PyTorch could not evaluate the fixture's weights"
import json, sys
import numpy as np, torch
from safetensors.numpy import load_file
from transformers import GPT2Config, GPT2LMHeadModel
w = {k: torch.from_numpy(v) for k, v in load_file(sys.argv[1]).items() if not k.startswith('optimizer.')}
m = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=16, n_embd=16, n_layer=2, n_head=2))
missing, unexpected = m.load_state_dict(w, strict=False)
assert set(missing) <= {'lm_head.weight'} and not unexpected, (missing, unexpected)
m.tie_weights(); m.eval()
toks = np.frombuffer(open('val.txt', 'rb').read(), dtype=np.uint8).astype(np.int64)
T = 16; nw = (len(toks) - 1) // T
x = torch.tensor(np.stack([toks[b * T:b * T + T] for b in range(nw)]))
y = torch.tensor(np.stack([toks[b * T + 1:b * T + T + 1] for b in range(nw)]))
with torch.no_grad():
    l = torch.nn.functional.cross_entropy(m(x).logits.double().reshape(-1, 256), y.reshape(-1))
print(json.dumps({"loss": l.item()}))
EOF
assert_close "$(json_last torch.out loss)" "$fs_loss" 1e-5 "eval of the fastserve/1 checkpoint == PyTorch on its weights"

# ---- resume it to the end ----
assert_exit 0 "$FSRUN" g.ini --resume --set run.stop_after=0
assert_err "resuming out/model.safetensors at step 10 of 20"
assert_eq "$(json_last "$E2E_OUT" steps)" 20 "the resumed run reaches step 20"
python3 "$FS_SOURCE_DIR/tests/e2e/compare.py" losses "$FIX/metrics_straight.jsonl" out/metrics.jsonl 1e-4 11 >cmp.out &&
    ok "steps 11..20 == the old code's straight run ($(cat cmp.out))" || fail "resuming the old checkpoint diverges: $(cat cmp.out)"
python3 - out/model.safetensors out/training_state.safetensors <<'EOF' && ok "the resumed run wrote the new layout" || fail "the resumed run did not write the new layout"
import json, struct, sys
def meta(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); return h, h.pop('__metadata__')
h, m = meta(sys.argv[1])
assert m['format'] == 'pt' and m['step'] == '20' and not any(k.startswith('optimizer.') for k in h), m
s, sm = meta(sys.argv[2])
assert sm['step'] == '20' and sorted(s) == ['exp_avg', 'exp_avg_sq'], sm
EOF

# ---- the new layout resumes too: 10 (old) + 5 + 5 == 10 (old) + 10 ----
mkdir -p two && cp "$FIX/model.safetensors" two/
cp g.ini two.ini
assert_exit 0 "$FSRUN" two.ini --resume --set run.out=two --set run.stop_after=15
assert_exit 0 "$FSRUN" two.ini --resume --set run.out=two --set run.stop_after=0
tensors_equal out/model.safetensors two/model.safetensors && ok "10 (old) + 5 + 5 steps == 10 (old) + 10: bit-identical weights" ||
    fail "resuming the new layout changed the run"
cmp -s out/training_state.safetensors two/training_state.safetensors && ok "... and training state" ||
    fail "the training states differ"

# ---- weights and state from different steps: refused ----
mkdir -p mixed && cp two/model.safetensors mixed/
assert_exit 0 "$FSRUN" two.ini --set run.out=mid --set run.stop_after=12 --set run.overwrite=true
cp mid/training_state.safetensors mixed/
assert_exit 1 "$FSRUN" two.ini --resume --set run.out=mixed
assert_last_error_line "step 20" "step 12" "[model] init"

e2e_finish
