#!/usr/bin/env bash
# Distillation with data parallelism under mpirun: every rank holds the
# whole teacher (its graph's [parallel] runs on a world of one) and
# distils its rows of the global batch into a data-parallel student. The
# losses, gradient norms and final weights equal the single-process
# distillation of the same batch: soft_kd, and tinybert whose projection
# parameters the distill plugin owns (combined across ranks like the
# model's gradients) in its joint stage. Cache files (augment = generate,
# teacher_cache) are written by one process: refused on several ranks.
HERE="$(cd "$(dirname "$0")" && pwd)" # lib.sh moves to the scratch directory
. "$HERE/lib.sh"
. "$HERE/mpi.sh"
mpi_require

standard_data
write_graph teacher.ini train.steps=20 run.out=teacher_out generate.max_tokens=0
must_fsrun teacher.ini

student() { # student FILE [overrides...]: a 1-layer student of the teacher
    local f=$1
    shift
    write_graph "$f" model.n_layer=1 train.lr=1e-3 train.val_every=5 generate.max_tokens=0 \
        distill.teacher=teacher.ini distill.teacher_checkpoint=teacher_out/model.safetensors "$@"
}

for plugin in soft_kd tinybert; do
    extra=()
    [ $plugin = tinybert ] && extra=(distill.stages=joint)
    student $plugin.ini distill.plugin=$plugin "${extra[@]}"
    must_fsrun $plugin.ini --mode distill --set run.out=${plugin}_1
    mpi_run 2 $plugin.ini --mode distill --set run.out=${plugin}_2 --set parallel.plugin=data
    if [ "$E2E_RC" -ne 0 ]; then
        fail "$plugin: mpirun -np 2 exited $E2E_RC"
        show_last
        continue
    fi
    same_as ${plugin}_1 ${plugin}_2 "$plugin, data x2"
    assert_eq "$(grep -c 'fsrun: distill: teacher' "$E2E_ERR")" 1 "$plugin: progress printed once, by rank 0"
done

OMPI_MCA_orte_abort_on_non_zero_status=0 MPI_TIMEOUT=60 mpi_run 2 soft_kd.ini --mode distill --set run.out=bad \
    --set parallel.plugin=data --set distill.augment=generate:1
assert_eq "$(mpi_rank_rcs)" "0:2 1:2" "augment = generate on 2 ranks: every rank exits 2"
assert_contains "$(mpi_rank_err 0)" "written by one process" "augment = generate on 2 ranks: rank 0 says why"

e2e_finish
