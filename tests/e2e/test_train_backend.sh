#!/usr/bin/env bash
# test_train_backend.sh — training through a compute backend's ops.
#
# [backend] plugin = cpu runs the train mode on model/device_gpt.c through
# the cpu backend's vtable: the path [run] device = cuda takes, on any
# machine. Its reference is the runtime's own CPU model (model/model.c,
# checked against PyTorch by the unit tests), which shares no model code
# with it:
#  - per-step losses and gradient norms, validation losses and every
#    checkpoint tensor agree within 1e-5 (relative) for: the tied head and
#    dense attention; a vocabulary of 300 (padded rows of logits), tied and
#    untied; an untied head with a longformer layer beside a dense
#    one ([layer.N] sections); tensors the plugins own (lsh's frozen
#    rotations, longformer's trained global projections); grad_accum 2 with
#    clipping active and a last validation batch of one window;
#  - the summary says where it ran (backend, precision) and the log names
#    the device;
#  - resume on the backend is bit for bit: 6 steps straight == 3
#    (stop_after) + --resume (parameters, AdamW's moments and its step go
#    to the device and back);
#  - its checkpoint is an ordinary one: --mode eval gives what it gives on
#    the CPU kernels' checkpoint; --mode eval on the backend gives the CPU
#    kernels' loss;
#  - a step that is not finite stops the run before anything is written,
#    or (on_nonfinite = skip) is dropped without an update;
#  - tf32 where the backend has no tensor cores computes fp32: the same
#    losses;
#  - --mode generate through the backend (the serving engine's step on it)
#    continues as on the CPU kernels; what it cannot run there (the CPU's
#    q8 weights, a plugin with tensors of its own) is refused, exit 2;
#  - what the device model does not do is refused before any work, exit 2,
#    naming the key and the fix: another mode with a backend named, bf16 on
#    a backend without it or on the CPU kernels, reversible layers,
#    distillation; device = auto never refuses (it trains on the CPU).
. "$(dirname "$0")/lib.sh"

standard_data

# close A B: two runs' metrics (every row's loss, grad_norm, val_loss) and
# checkpoints (every tensor) agree within 1e-5 relative to the tensor's
# largest magnitude.
close() {
    python3 - "$1" "$2" <<'EOF'
import json, struct, sys
def rows(d):
    return [{k: v for k, v in json.loads(l).items() if k in ('step', 'loss', 'grad_norm', 'val_loss')}
            for l in open(d + '/metrics.jsonl')]
def tensors(d):
    b = open(d + '/model.safetensors', 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop('__metadata__', None)
    out = {}
    for k, v in h.items():
        raw = b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]]
        out[k] = struct.unpack('<%df' % (len(raw) // 4), raw)
    return out
a, b = sys.argv[1], sys.argv[2]
ra, rb = rows(a), rows(b)
assert len(ra) == len(rb) and ra, (len(ra), len(rb))
for x, y in zip(ra, rb):
    assert x.keys() == y.keys(), (x, y)
    for k in x:
        assert abs(x[k] - y[k]) <= 1e-5 * max(1.0, abs(x[k])), (k, x, y)
ta, tb = tensors(a), tensors(b)
assert ta.keys() == tb.keys(), set(ta) ^ set(tb)
for k in ta:
    scale = max(max(abs(v) for v in ta[k]), 1e-30)
    worst = max(abs(p - q) for p, q in zip(ta[k], tb[k]))
    assert worst <= 1e-5 * scale, (k, worst, scale)
EOF
}

# both NAME OVERRIDES...: train with the runtime's kernels (NAME.cpu) and
# through the cpu backend (NAME.be), and compare them.
both() {
    local name="$1"
    shift
    write_graph "$name.ini" train.steps=6 train.val_every=3 "run.out=$name.cpu" generate.max_tokens=0 "$@"
    assert_exit 0 "$FSRUN" "$name.ini" --set run.device=cpu
    cp "$E2E_OUT" "$name.cpu.out"
    assert_exit 0 "$FSRUN" "$name.ini" --set backend.plugin=cpu --set "run.out=$name.be"
    cp "$E2E_OUT" "$name.be.out"
    cp "$E2E_ERR" "$name.be.err"
    close "$name.cpu" "$name.be" && ok "$name: the backend's run equals the CPU kernels' within 1e-5" ||
        fail "$name: the backend's run differs from the CPU kernels'"
}

# ---- the same training on both paths ----

both dense
assert_eq "$(json_last dense.cpu.out backend)" none "the CPU kernels' summary: backend none"
assert_eq "$(json_last dense.be.out backend)" cpu "the backend's summary: backend cpu"
assert_eq "$(json_last dense.be.out precision)" fp32 "the backend's summary: precision fp32"
assert_num "$(json_last dense.be.out model_tflops)" '>' 0 "the backend's summary: model_tflops"
grep -q '^fsrun: on .*(cpu:0, backend cpu, fp32)' dense.be.err && ok "the log names the device and backend" ||
    fail "no 'fsrun: on ... (cpu:0, backend cpu, fp32)' line: $(cat dense.be.err)"

both mixed model.tie_word_embeddings=false "+[layer.0]" "+plugin = longformer" "+window = 8" "+dilation = 1,2"

# a vocabulary that is no multiple of 64: the device model's logits rows
# are padded to one (device_gpt.c's ldv), the GEMMs and the loss skip the pad
both vocab300 model.vocab_size=300
both vocab300_untied model.vocab_size=300 model.tie_word_embeddings=false

# tensors the plugins own: lsh's rotations (frozen), longformer's global
# projections (trained)
both lsh attention.plugin=lsh attention.bucket_size=8 attention.chunk=8
both global "+[layer.1]" "+plugin = longformer" "+window = 4" "+global = first:2"
python3 - global.be/model.safetensors <<'EOF' && ok "the global projections are in the backend's checkpoint" || fail "no global projections"
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
h = json.loads(b[8:8 + struct.unpack('<Q', b[:8])[0]])
assert 'plugin.layer1.attention.c_attn_global.weight' in h, sorted(h)
EOF

both clipped train.grad_accum=2 train.batch=2 train.grad_clip=0.05 train.val_batches=30
python3 - clipped.cpu/metrics.jsonl <<'EOF' && ok "clipping was active (every grad_norm > grad_clip)" || fail "clipping never acted"
import json, sys
norms = [json.loads(l)['grad_norm'] for l in open(sys.argv[1]) if 'grad_norm' in l]
assert norms and min(norms) > 0.05, norms
EOF

# ---- resume on the backend ----

write_graph r.ini train.steps=6 train.val_every=3 generate.max_tokens=0 backend.plugin=cpu
assert_exit 0 "$FSRUN" r.ini --set run.out=straight
assert_exit 0 "$FSRUN" r.ini --set run.out=resumed --set run.stop_after=3
assert_exit 0 "$FSRUN" r.ini --set run.out=resumed --resume
tensors_equal straight/model.safetensors resumed/model.safetensors && ok "resume: the weights equal a straight run's" ||
    fail "resume on the backend changed the weights"
tensors_equal straight/training_state.safetensors resumed/training_state.safetensors &&
    ok "resume: AdamW's moments equal a straight run's" || fail "resume on the backend changed the moments"
assert_eq "$(metrics_col resumed/metrics.jsonl loss | tail -n3)" "$(metrics_col straight/metrics.jsonl loss | tail -n3)" \
    "resume: steps 4-6 lose what a straight run's do"

# ---- a step that is not finite, on the device ----
# q and k of one head get a 1e30 coordinate (test_nonfinite.sh's case): the
# next step's loss is NaN; the device path stops before writing, or skips
# the step without an update
write_graph nf.ini train.steps=4 train.checkpoint_every=2 train.val_every=0 generate.max_tokens=0 \
    backend.plugin=cpu run.out=nf
assert_exit 0 "$FSRUN" nf.ini
st_patch_f32 nf/model.safetensors huge.tmp transformer.h.0.attn.c_attn.weight 0 1e30
st_patch_f32 huge.tmp nf/model.safetensors transformer.h.0.attn.c_attn.weight 32 1e30
mkdir -p nf.huge && cp nf/*.safetensors nf.huge/
assert_exit 1 "$FSRUN" nf.ini --resume --set train.steps=8
assert_last_error_line "step 5" "NaN" "diverged" "nf/model.safetensors (step 4) is unchanged"
cmp -s nf/model.safetensors nf.huge/model.safetensors && ok "non-finite on the device: the checkpoint is unchanged" ||
    fail "the diverged run wrote the checkpoint"
assert_exit 1 "$FSRUN" nf.ini --resume --set train.steps=12 --set train.on_nonfinite=skip --set train.max_skipped=3
assert_eq "$(grep -c '"skipped": true' nf/metrics.jsonl)" 2 "skip on the device: two skipped rows, then the stop"
tensors_equal nf.huge/model.safetensors nf/model.safetensors && ok "skipped steps left the device's weights as they were" ||
    fail "a skipped step changed the weights"
assert_eq "$(st_header nf/training_state.safetensors | python3 -c "import json,sys; print(json.load(sys.stdin)['__metadata__']['optimizer_t'])")" 4 \
    "skip on the device: AdamW made no update (optimizer_t stays 4)"

# ---- the checkpoint is an ordinary one ----

assert_exit 0 "$FSRUN" dense.ini --mode eval --set run.out=dense.cpu
cp "$E2E_OUT" eval.cpu.out
assert_exit 0 "$FSRUN" dense.ini --mode eval --set run.out=dense.be
assert_close "$(json_last "$E2E_OUT" loss)" "$(json_last eval.cpu.out loss)" 1e-5 \
    "--mode eval reads the backend's checkpoint as the CPU kernels' own"
assert_exit 0 "$FSRUN" dense.ini --mode eval --set run.out=dense.cpu --set backend.plugin=cpu --set train.batch=3
assert_close "$(json_last "$E2E_OUT" loss)" "$(json_last eval.cpu.out loss)" 1e-5 \
    "--mode eval on the backend (3 windows a batch, the last one short) gives the CPU kernels' loss"

# ---- tf32 without tensor cores is fp32 ----

assert_exit 0 "$FSRUN" dense.ini --set backend.plugin=cpu --set run.out=tf32 --set train.precision=tf32
assert_eq "$(json_last "$E2E_OUT" precision)" tf32 "the summary says tf32"
assert_eq "$(metrics_col tf32/metrics.jsonl loss)" "$(metrics_col dense.be/metrics.jsonl loss)" \
    "tf32 on the cpu backend (no FS_BACKEND_TF32) loses what fp32 does"

# ---- refusals ----

# generation through the backend is the serving engine's step on it (model/device_batch.h)
assert_exit 0 "$FSRUN" dense.ini --mode generate --set run.out=dense.be --set generate.max_tokens=12 \
    --set generate.temperature=0
cp "$E2E_OUT" gen.cpu.out
assert_exit 0 "$FSRUN" dense.ini --mode generate --set backend.plugin=cpu --set run.out=dense.be \
    --set generate.max_tokens=12 --set generate.temperature=0
assert_eq "$(json_last "$E2E_OUT" text)" "$(json_last gen.cpu.out text)" \
    "--mode generate through the backend continues greedily as the CPU kernels do"
assert_err "serving on CPU" "(backend cpu)"
assert_eq "$(json_last "$E2E_OUT" backend)" cpu "the generate summary names the backend"
assert_eq "$(json_last gen.cpu.out backend)" none "... and none on the CPU kernels"
assert_exit 2 "$FSRUN" dense.ini --mode generate --set backend.plugin=cpu --set run.out=dense.be \
    --set generate.weights=q8
assert_err "[backend] plugin = cpu asks for a compute backend, but serving cannot run there" \
    "[generate] weights = q8: bf16 and q8 are the CPU's decode formats" "set weights = f32"
# a pool bigger than anything can hold: the key and the fix, not a crash
assert_exit 2 "$FSRUN" dense.ini --mode serve --set backend.plugin=cpu --set run.out=dense.be --set serve.port=0 \
    --set serve.kv_cache_mb=100000000
assert_err "[serve] kv_cache_mb = 100000000" "KV pool: 12800000000 blocks" "set [serve] kv_cache_mb (and swap_mb)"
assert_exit 2 "$FSRUN" lsh.ini --mode generate --set backend.plugin=cpu --set run.out=lsh.be
assert_err "serving cannot run there" "plugin.layer0.attention.rotations: an attention plugin's own tensor" \
    "[run] device = cpu"

assert_exit 2 "$FSRUN" dense.ini --set backend.plugin=cpu --set run.out=bf16 --set train.precision=bf16
assert_err "[train] precision = bf16: backend 'cpu' has no bf16 arithmetic" "use fp32 or tf32"
[ ! -e bf16/model.safetensors ] && ok "bf16 refused: no checkpoint" || fail "a refused run wrote a checkpoint"

assert_exit 2 "$FSRUN" dense.ini --set run.device=cpu --set run.out=bf16 --set train.precision=bf16
assert_err "[train] precision = bf16: train trains on the runtime's own CPU kernels here, which compute fp32"
[ ! -e bf16/model.safetensors ] && ok "bf16 on the CPU kernels refused: no checkpoint" || fail "a refused run wrote a checkpoint"

assert_exit 2 "$FSRUN" dense.ini --set backend.plugin=cpu --set run.out=rev --set model.reversible=true
assert_err "[model] reversible" "reversible layers run on the runtime's own CPU kernels only"

write_graph teacher.ini train.steps=2 run.out=teacher generate.max_tokens=0
assert_exit 0 "$FSRUN" teacher.ini --set run.device=cpu
write_graph student.ini train.steps=2 run.out=student generate.max_tokens=0 run.mode=distill \
    distill.teacher=teacher.ini distill.teacher_checkpoint=teacher/model.safetensors distill.plugin=soft_kd \
    backend.plugin=cpu
assert_exit 2 "$FSRUN" student.ini
assert_err "--mode distill runs on the runtime's own CPU kernels only"

# auto never refuses: with no GPU it is the CPU kernels
assert_exit 0 "$FSRUN" dense.ini --set run.device=auto --set run.out=auto --set model.reversible=true
assert_eq "$(json_last "$E2E_OUT" backend)" none "device = auto with reversible layers trains on the CPU kernels"

e2e_finish
