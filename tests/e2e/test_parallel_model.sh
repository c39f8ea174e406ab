#!/usr/bin/env bash
# Tensor and pipeline parallelism (the model cut into shards) under mpirun
# against the single-process run of the same global batch: losses and
# global gradient norms of every step within 1e-5 relative, validation
# loss, and final weights and AdamW moments within 1e-5 (the checkpoint is
# always the whole model), for Megatron's tensor split (also with
# reversible layers and a chunked MLP), the pipeline schedules gpipe, 1f1b
# and interleaved 1F1B with virtual stages, stages set by hand, and 3D
# (data 2 x tensor 2 x pipeline 2 on 8 ranks, with ZeRO-1). Checkpoints
# reshard: a tensor-parallel run writes, a pipeline run and a single
# process resume and continue the straight run. Splits the model cannot
# take are refused on every rank.
HERE="$(cd "$(dirname "$0")" && pwd)" # lib.sh moves to the scratch directory
. "$HERE/lib.sh"
. "$HERE/mpi.sh"
mpi_require

standard_data
# 4 layers, 2 heads; lr 1e-3 as in test_parallel_data.sh. AdamW divides
# by sqrt(v): an element whose gradient is almost all cancellation (a
# nearly dead GELU unit's c_proj row) gets a step of about lr in a
# direction the rounding picks, and the shards sum in another order than
# one process (micro-batches of one sequence, partial matmuls). eps 1e-5
# (instead of 1e-8) keeps those steps at their gradient's size; every
# element with a real gradient is compared as tightly as before.
write_graph g.ini model.n_layer=4 train.lr=1e-3 train.eps=1e-5 train.val_every=5 train.checkpoint_every=0 \
    generate.max_tokens=0

# par NP NAME ARGS...: an mpirun run that must succeed; its validation loss
# must be the reference's
par() {
    local np=$1 name=$2
    shift 2
    mpi_run "$np" g.ini --set run.out="$name" "$@"
    if [ "$E2E_RC" -ne 0 ]; then
        fail "mpirun -np $np ($name) exited $E2E_RC"
        show_last
        return 0
    fi
    assert_close "$(json_last "$E2E_OUT" val_loss)" "$REF_VAL" 1e-5 "$name: validation loss"
}

must_fsrun g.ini --set run.out=ref
REF_VAL=$(json_last "$E2E_OUT" val_loss)
REF_PARAMS=$(json_last "$E2E_OUT" params)

# 1. tensor parallelism: heads and MLP columns split two ways
par 2 tp --set parallel.plugin=tensor
same_as ref tp "tensor x2"
assert_eq "$(json_last "$E2E_OUT" params)" "$REF_PARAMS" "the summary's params: the whole model"
assert_num "$(json_last "$E2E_OUT" params_per_rank)" "<" "$REF_PARAMS" "a tensor rank holds part of the parameters"
#    with reversible layers and the MLP in chunks (every sublayer's all-reduce)
must_fsrun g.ini --set run.out=ref_rev --set model.reversible=true --set model.ff_chunk=24
REV_VAL=$(json_last "$E2E_OUT" val_loss)
REF_VAL_SAVE=$REF_VAL
REF_VAL=$REV_VAL
par 2 tp_rev --set parallel.plugin=tensor --set model.reversible=true --set model.ff_chunk=24
same_as ref_rev tp_rev "tensor x2, reversible, ff_chunk"
REF_VAL=$REF_VAL_SAVE

# 2. pipeline parallelism: each schedule, 4 micro-batches of one sequence
par 2 gpipe --set parallel.plugin=pipeline --set parallel.schedule=gpipe --set parallel.microbatches=4
same_as ref gpipe "pipeline x2, gpipe"
par 2 1f1b --set parallel.plugin=pipeline --set parallel.schedule=1f1b --set parallel.microbatches=4
same_as ref 1f1b "pipeline x2, 1f1b"
par 2 inter --set parallel.plugin=pipeline --set parallel.schedule=interleaved --set parallel.interleave=2 \
    --set parallel.microbatches=2
same_as ref inter "pipeline x2, interleaved 1F1B with 2 virtual stages each"
par 2 stages --set parallel.plugin=pipeline --set parallel.stages=0-0,1-3 --set parallel.microbatches=2
same_as ref stages "pipeline x2, stages = 0-0,1-3"

# 3. 3D: data 2 x tensor 2 x pipeline 2 on 8 ranks, and with ZeRO-1
par 8 3d --set parallel.plugin=pipeline --set parallel.data=2 --set parallel.tensor=2 --set parallel.pipeline=2 \
    --set parallel.microbatches=2
same_as ref 3d "data 2 x tensor 2 x pipeline 2"
assert_contains "$(cat "$E2E_ERR")" "data 2 x tensor 2 x pipeline 2" "8 ranks laid out as asked"
par 8 3dz --set parallel.plugin=tensor --set parallel.data=2 --set parallel.pipeline=2 --set parallel.zero=1 \
    --set parallel.microbatches=2
same_as ref 3dz "3D with ZeRO-1 (the tensor plugin composing)"

# 4. resharding: tensor x2 writes at step 10 of 20; pipeline x2 and one
#    process resume; both continue the straight run
must_fsrun g.ini --set run.out=ref20 --set train.steps=20
REF_VAL=$(json_last "$E2E_OUT" val_loss)
mpi_run 2 g.ini --set run.out=half --set train.steps=20 --set run.stop_after=10 --set parallel.plugin=tensor
[ "$E2E_RC" -eq 0 ] || fail "tensor x2, first half: exit $E2E_RC"
cp -r half half1
par 2 half --set train.steps=20 --set parallel.plugin=pipeline --set parallel.microbatches=2 --resume
same_as ref20 half "tensor x2 -> pipeline x2 (resumed at step 10)" 11
assert_exit 0 "$FSRUN" g.ini --set run.out=half1 --set train.steps=20 --resume
same_as ref20 half1 "tensor x2 -> 1 process (resumed at step 10)" 11

# 5. splits the model cannot take: every rank exits 2, rank 0 says why
refused() { # refused WANT ARGS...
    local want=$1
    shift
    OMPI_MCA_orte_abort_on_non_zero_status=0 MPI_TIMEOUT=60 mpi_run 2 g.ini --set run.out=bad "$@"
    assert_eq "$(mpi_rank_rcs)" "0:2 1:2" "refused ($*): every rank exits 2"
    assert_contains "$(mpi_rank_err 0)" "$want" "refused ($*): rank 0 says why"
}
refused "cannot cut a reversible model" --set parallel.plugin=pipeline --set model.reversible=true
refused "--mode generate runs in one process" --set parallel.plugin=tensor --mode generate
#    ... and one process generates from the tensor run's whole checkpoint
assert_exit 0 "$FSRUN" g.ini --set run.out=tp --mode generate --set generate.max_tokens=8
assert_eq "$(json_last "$E2E_OUT" tokens)" 8 "generate from the checkpoint tensor x2 wrote"
refused "owns parameters ('plugin.layer0.attention.c_attn_global.weight')" --set parallel.plugin=tensor \
    --set attention.plugin=longformer --set attention.window=8 --set attention.global=first:1

e2e_finish
