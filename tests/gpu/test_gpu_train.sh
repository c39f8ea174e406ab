#!/usr/bin/env bash
# test_gpu_train.sh — `fsrun --mode train` on a CUDA device, end to end,
# against the runtime's own CPU kernels (the reference the e2e tests check
# against PyTorch). Exits 77 ("skipped: no CUDA device") where there is
# none. tests/e2e/test_train_backend.sh runs the same path on the cpu
# backend on every machine; this is what only a GPU adds:
#  - fp32 on cuda:0: per-step losses within 1e-4 and gradient norms within
#    1e-3 (relative) of the CPU kernels' (the device sums in another order;
#    AdamW amplifies the difference in its first steps, so weights are
#    compared through what they compute: --mode eval on the CPU of both
#    checkpoints, within 1e-4);
#  - tf32 within 1e-2 of fp32 per step;
#  - bf16 (bf16 activations and GEMMs, f32 master weights): every step's
#    loss within 0.05 of fp32's, the loss falling, and its f32 checkpoint
#    read by --mode eval on the CPU within 0.05 of the device's own
#    validation loss;
#  - a vocabulary of 300 (the logits' padded rows) on cuda against the CPU
#    kernels, as fp32 above;
#  - device = auto trains on the GPU; the summary names backend, precision
#    and MFU;
#  - --mode generate on cuda (the serving engine's step on the device)
#    continues the fp32 checkpoint greedily as the CPU does, with f32 and
#    bf16 KV blocks;
#  - with 2 GPUs and mpirun: 2 ranks (one GPU each, gradients summed by
#    NCCL on device buffers, dist/comm_coll.c) against the one-GPU fp32
#    run, losses within 1e-4 and norms within 1e-3; said skipped otherwise.
. "$(dirname "$0")/../e2e/lib.sh"

standard_data
# heads of 64 (GPT-2's width): bf16 attention then runs on tensor cores
write_graph g.ini train.steps=8 train.val_every=4 train.val_batches=4 generate.max_tokens=0 model.n_embd=128 \
    model.n_head=2 model.max_seq=64 train.batch=8 train.lr=2e-3

fsrun_rc g.ini --set run.device=cuda --set run.out=fp32
if [ "$E2E_RC" = 2 ] && grep -q "no CUDA device is visible\|no cuda backend" "$E2E_ERR"; then
    echo "skipped: no CUDA device"
    exit 77
fi
[ "$E2E_RC" = 0 ] || { show_last; die "fsrun on cuda failed"; }
cp "$E2E_OUT" fp32.out
assert_eq "$(json_last fp32.out backend)" cuda "summary: backend cuda"
assert_eq "$(json_last fp32.out precision)" fp32 "summary: precision fp32"
assert_num "$(json_last fp32.out mfu)" '>' 0 "summary: MFU over the device's peak"

assert_exit 0 "$FSRUN" g.ini --set run.device=cpu --set run.out=cpu

# per-step KEY of two runs within TOL relative
steps_close() {
    python3 - "$@" <<'EOF'
import json, sys
a, b, key, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
col = lambda p: [json.loads(l)[key] for l in open(p + '/metrics.jsonl') if '"%s"' % key in l]
x, y = col(a), col(b)
assert len(x) == len(y) and x, (len(x), len(y))
for p, q in zip(x, y):
    assert abs(p - q) <= tol * max(1.0, abs(p)), (key, p, q)
EOF
}
steps_close cpu fp32 loss 1e-4 && ok "fp32 on cuda: losses within 1e-4 of the CPU kernels'" || fail "fp32 on cuda: losses differ"
steps_close cpu fp32 grad_norm 1e-3 && ok "fp32 on cuda: gradient norms within 1e-3" || fail "fp32 on cuda: norms differ"
steps_close cpu fp32 val_loss 1e-4 && ok "fp32 on cuda: validation losses within 1e-4" || fail "fp32 on cuda: val differs"
assert_exit 0 "$FSRUN" g.ini --mode eval --set run.device=cpu --set run.out=cpu
cp "$E2E_OUT" eval.cpu.out
assert_exit 0 "$FSRUN" g.ini --mode eval --set run.device=cpu --set run.out=fp32
assert_close "$(json_last "$E2E_OUT" loss)" "$(json_last eval.cpu.out loss)" 1e-4 \
    "the cuda checkpoint evaluates on the CPU as the CPU kernels' does"

assert_exit 0 "$FSRUN" g.ini --set run.device=cuda --set run.out=tf32 --set train.precision=tf32
steps_close fp32 tf32 loss 1e-2 && ok "tf32: losses within 1e-2 of fp32" || fail "tf32: losses differ from fp32"

assert_exit 0 "$FSRUN" g.ini --set run.device=cuda --set run.out=bf16 --set train.precision=bf16
cp "$E2E_OUT" bf16.out
python3 - fp32 bf16 <<'EOF' && ok "bf16 follows fp32's loss curve within 0.05 and falls" || fail "bf16's loss curve"
import json, sys
col = lambda p: [json.loads(l)['loss'] for l in open(p + '/metrics.jsonl') if '"loss"' in l]
f, b = col(sys.argv[1]), col(sys.argv[2])
assert len(f) == len(b) == 8, (f, b)
assert all(abs(x - y) <= 0.05 for x, y in zip(f, b)), (f, b)
assert b[-1] < b[0] - 0.3, b
EOF
assert_exit 0 "$FSRUN" g.ini --mode eval --set run.device=cpu --set run.out=bf16
assert_close "$(json_last "$E2E_OUT" loss)" "$(json_last bf16.out val_loss)" 0.05 \
    "the bf16 run's f32 checkpoint evaluates on the CPU near its device validation loss"

# a vocabulary that is no multiple of 64: the head's GEMMs run over the
# padded width (device_gpt.c), the loss zeroes the pad of its gradient
assert_exit 0 "$FSRUN" g.ini --set run.device=cuda --set run.out=v300 --set model.vocab_size=300
assert_exit 0 "$FSRUN" g.ini --set run.device=cpu --set run.out=v300cpu --set model.vocab_size=300
steps_close v300cpu v300 loss 1e-4 && ok "vocabulary 300 on cuda: losses within 1e-4 of the CPU kernels'" ||
    fail "vocabulary 300 on cuda: losses differ"
steps_close v300cpu v300 grad_norm 1e-3 && ok "vocabulary 300 on cuda: gradient norms within 1e-3" ||
    fail "vocabulary 300 on cuda: norms differ"

assert_exit 0 "$FSRUN" g.ini --set run.device=auto --set run.out=auto --set train.steps=2
assert_eq "$(json_last "$E2E_OUT" backend)" cuda "device = auto trains on the GPU"

# generation on the device (the serving engine's step: model/
# device_batch.c, the dense plugin's CUDA paged step, the KV pool in
# device memory) continues the fp32 checkpoint as the CPU does: greedy,
# 24 tokens
assert_exit 0 "$FSRUN" g.ini --mode generate --set run.device=cpu --set run.out=fp32 --set generate.max_tokens=24 \
    --set generate.temperature=0
cp "$E2E_OUT" gen.cpu.out
assert_exit 0 "$FSRUN" g.ini --mode generate --set run.device=cuda --set run.out=fp32 --set generate.max_tokens=24 \
    --set generate.temperature=0
assert_contains "$(cat "$E2E_ERR")" "(backend cuda)" "--mode generate on cuda: the log names the device"
assert_eq "$(json_last "$E2E_OUT" backend)" cuda "--mode generate on cuda: the summary says backend cuda"
assert_eq "$(json_last "$E2E_OUT" text)" "$(json_last gen.cpu.out text)" \
    "--mode generate on cuda: the CPU's greedy continuation"
assert_exit 0 "$FSRUN" g.ini --mode generate --set run.device=cuda --set run.out=fp32 --set generate.max_tokens=24 \
    --set generate.temperature=0 --set generate.kv_dtype=bf16
assert_eq "$(json_last "$E2E_OUT" tokens)" 24 "--mode generate on cuda with bf16 KV blocks: 24 tokens"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -ge 2 ] && command -v mpirun >/dev/null 2>&1; then
    . "$(dirname "$0")/../e2e/mpi.sh"
    mpi_run 2 g.ini --set run.device=cuda --set parallel.plugin=data --set run.out=nccl2
    [ "$E2E_RC" = 0 ] || { show_last; die "2 ranks on cuda failed"; }
    assert_contains "$(cat "$E2E_ERR")" "gradients averaged over 2 ranks by nccl, per layer during backward" "2 ranks: gradients summed by NCCL"
    steps_close fp32 nccl2 loss 1e-4 && ok "NCCL x2: losses within 1e-4 of one GPU's" || fail "NCCL x2: losses differ"
    steps_close fp32 nccl2 grad_norm 1e-3 && ok "NCCL x2: gradient norms within 1e-3" || fail "NCCL x2: norms differ"
else
    echo "skipped (NCCL data parallelism): needs 2 GPUs and mpirun, found ${gpus:-0} GPU(s)"
fi

e2e_finish
