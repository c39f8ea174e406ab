#!/usr/bin/env bash
# test_train_backend_ranks.sh — data parallelism on a compute backend.
#
# Under mpirun each rank trains its slice of the batch on its own device
# (model/device_gpt.c through [backend] plugin = cpu here, the path
# device = cuda takes with one GPU per rank) and the gradients are averaged
# across ranks before the norm and AdamW (modes/train_device.c: through
# the backend's collectives when it has them, NCCL; the cpu backend has
# none, so they cross through host memory and MPI). The references are
# independent of that code:
#  - one process on the same backend with the whole batch (the arithmetic
#    the ranks split), and the runtime's own CPU kernels under the data
#    strategy on the same ranks (model/model.c and data_sync.c): losses,
#    gradient norms and every checkpoint tensor within 1e-5, on 2 ranks,
#    with grad_accum 2 (no clipping, so a wrong 1 / ranks shows), on 3
#    ranks, and with tensors a plugin owns (longformer's global
#    projections, whose gradients are buffers of their own);
#  - the log says how the gradients were summed; one summary line;
#  - checkpoints move between world sizes (2 ranks write, one process
#    resumes, and the other way round), continuing the straight run;
#  - what stays on the CPU kernels is refused before any work, exit 2,
#    naming the key: tensor and pipeline parallelism, ZeRO, and device =
#    cuda:N under several ranks (each needs its own GPU; on a machine
#    without one, any CUDA request is refused, naming the key).
HERE="$(cd "$(dirname "$0")" && pwd)" # lib.sh moves to the scratch directory
. "$HERE/lib.sh"
. "$HERE/mpi.sh"
mpi_require

standard_data
make_text train6.txt 6000 3
# lr 1e-3, as test_parallel_data.sh: ranks sum in another order than one
# process, and AdamW's normalised step turns a cancelled gradient's
# rounding into a move of up to lr
write_graph g.ini train.lr=1e-3 train.val_every=5 train.checkpoint_every=0 generate.max_tokens=0
BE=(--set backend.plugin=cpu)

# ref NAME ARGS...: one process on the backend
ref() {
    local name=$1
    shift
    must_fsrun g.ini "${BE[@]}" --set run.out="$name" "$@"
}

# 1. two ranks, each half the batch
ref ref1
mpi_data 2 be2 "${BE[@]}"
same_as ref1 be2 "backend x2 against one process on the backend"
assert_eq "$(json_last "$E2E_OUT" backend)" cpu "backend x2: the summary names the backend"
assert_eq "$(grep -c '"mode"' "$E2E_OUT")" 1 "backend x2: one summary line for two ranks"
assert_contains "$(cat "$E2E_ERR")" "gradients averaged over 2 ranks by mpi, per layer during backward" \
    "backend x2: the log says how the gradients were summed"
mpi_data 2 cpu2 --set run.device=cpu
same_as cpu2 be2 "backend x2 against the CPU kernels x2 (data_sync.c)"

# 2. gradient accumulation, no clipping: the mean over ranks and micro-batches
ref ref_acc --set train.grad_accum=2 --set train.grad_clip=0
mpi_data 2 be_acc "${BE[@]}" --set train.grad_accum=2 --set train.grad_clip=0
same_as ref_acc be_acc "backend x2, grad_accum 2, no clipping"

# 3. three ranks on six rows
ref ref3 --set train.batch=6 --set data.train=train6.txt
mpi_data 3 be3 "${BE[@]}" --set train.batch=6 --set data.train=train6.txt
same_as ref3 be3 "backend x3"

# 4. tensors a plugin owns: their gradients are summed too
LF=(--set attention.plugin=longformer --set attention.window=8 --set attention.global=first:2)
ref ref_lf "${LF[@]}"
mpi_data 2 be_lf "${BE[@]}" "${LF[@]}"
same_as ref_lf be_lf "backend x2, longformer's global projections"

# 5. two ranks write at step 5, one process resumes; and the other way round
mpi_data 2 r21 "${BE[@]}" --set run.stop_after=5
must_fsrun g.ini "${BE[@]}" --set run.out=r21 --resume
same_as ref1 r21 "backend: 2 ranks to step 5, one process resumes"
ref r12 --set run.stop_after=5
mpi_data 2 r12 "${BE[@]}" --resume
same_as ref1 r12 "backend: one process to step 5, 2 ranks resume"

# 6. refusals: before any work, exit 2, naming the key
refused() { # refused LABEL PATTERN NP ARGS...
    local label=$1 pattern=$2 np=$3
    shift 3
    rm -rf refused
    mpi_run "$np" g.ini --set run.out=refused "$@"
    assert_eq "$E2E_RC" 2 "$label: exit 2"
    assert_contains "$(cat "$E2E_ERR")" "$pattern" "$label: the message names it"
    [ ! -e refused/model.safetensors ] && ok "$label: no checkpoint" || fail "$label: a refused run wrote a checkpoint"
}
refused "tensor parallelism on a backend" "tensor x2, pipeline x1: on a backend" 2 "${BE[@]}" \
    --set parallel.plugin=tensor
refused "ZeRO on a backend" "[parallel] zero" 2 "${BE[@]}" --set parallel.plugin=data --set parallel.zero=1
if [ -e /dev/nvidiactl ]; then
    refused "one GPU named for two ranks" "each needs its own" 2 --set parallel.plugin=data --set run.device=cuda:0
else
    refused "cuda:0 without a GPU under mpirun" "[run] device" 2 --set parallel.plugin=data --set run.device=cuda:0
fi

e2e_finish
