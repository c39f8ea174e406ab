#!/usr/bin/env bash
# Data parallelism under mpirun against the single-process run of the same
# global batch: losses and global gradient norms of every step within 1e-5
# relative and final weights (and AdamW moments) within 1e-5, for plain buckets (several of them, with
# gradient accumulation), ZeRO-1 (also on 3 ranks, where the shards need
# padding), and plugin-owned parameters (Longformer's global projections).
# Checkpoints move between world sizes: 2 ranks write, 1 resumes, and the
# other way round, continuing the straight run's losses.
HERE="$(cd "$(dirname "$0")" && pwd)" # lib.sh moves to the scratch directory
. "$HERE/lib.sh"
. "$HERE/mpi.sh"
mpi_require

standard_data
make_text train6.txt 6000 3
# lr 1e-3 (lib.sh's graphs use 3e-3): the ranks sum the gradient in another
# order than one process does, and AdamW normalises every element's step,
# so an element whose gradient is mostly cancellation moves by up to lr in a
# direction the rounding picks. At 3e-3 an odd element ends 1e-5 away after
# 10 steps; at 1e-3 they stay within 1e-6 while every other element agrees
# to 1e-7.
write_graph g.ini train.lr=1e-3 train.val_every=0 train.checkpoint_every=0 generate.max_tokens=0

# reference: one process, plugin single
ref() { # ref NAME ARGS...: a single-process run into NAME
    local name=$1
    shift
    must_fsrun g.ini --set run.out="$name" "$@"
}

# 1. plain data parallelism, default bucket (one bucket for this tiny model)
ref ref1
#    (the data plugin on one process is the single strategy: same numbers)
ref one --set parallel.plugin=data --set parallel.zero=1
same_as ref1 one "data plugin, one process"
mpi_data 2 dp
same_as ref1 dp "data x2"
assert_eq "$(grep -c '"mode"' "$E2E_OUT")" 1 "one summary line for two ranks"
assert_eq "$(grep -c '"lr"' dp/metrics.jsonl)" 10 "metrics.jsonl written once (10 step rows)"
# [run] threads = 0 under mpirun: the cores shared by the ranks on this
# machine (mpi_run does not bind ranks to cores), at least 1
mpi_data 2 thr --set run.threads=0 --set train.steps=1
want=$(( $(nproc) / 2 )); [ "$want" -ge 1 ] || want=1
assert_eq "$(json_last "$E2E_OUT" threads)" "$want" "threads = 0 on 2 ranks: cores / 2"

# 2. several buckets started during backward, with gradient accumulation:
#    0.02 MB = 5242 floats; the layers hold 12.7 k floats each, the embeddings
#    9.2 k, so every layer and the embeddings close a bucket of their own.
#    No clipping here: clipping rescales the whole gradient (and AdamW does
#    not care about scale), which would hide a wrong 1 / data factor.
ref ref2 --set train.grad_accum=2 --set train.grad_clip=0
mpi_data 2 buckets --set parallel.bucket_mb=0.02 --set train.grad_accum=2 --set train.grad_clip=0
same_as ref2 buckets "buckets + grad_accum 2"
assert_num "$(json_last "$E2E_OUT" comm_collectives)" ">=" 3 "several buckets per step"

# 3. ZeRO-1 with accumulation; 3 ranks on 6 rows (34688 floats: padded shards)
mpi_data 2 zero --set parallel.zero=1 --set parallel.bucket_mb=0.02 --set train.grad_accum=2 --set train.grad_clip=0
same_as ref2 zero "ZeRO-1 x2 + grad_accum 2"
ref ref3 --set train.batch=6 --set data.train=train6.txt
mpi_data 3 zero3 --set parallel.zero=1 --set train.batch=6 --set data.train=train6.txt
same_as ref3 zero3 "ZeRO-1 x3 (padded shards)"

# 4. plugin-owned parameters: Longformer's global-token projections
LF=(--set attention.plugin=longformer --set attention.window=8 --set attention.global=first:2)
ref ref_lf "${LF[@]}"
mpi_data 2 dp_lf "${LF[@]}"
same_as ref_lf dp_lf "plugin-owned parameters (longformer global)"

# 5. resume across world sizes: 2 ranks (ZeRO-1) write at step 5, 1 resumes
mpi_data 2 r21 --set parallel.zero=1 --set run.stop_after=5
must_fsrun g.ini --set run.out=r21 --resume
same_as ref1 r21 "2 ranks (ZeRO-1) -> 1 rank"
#    and 1 rank writes, 2 ranks (ZeRO-1, each taking its shard) resume
ref r12 --set run.stop_after=5
mpi_data 2 r12 --set parallel.zero=1 --resume
same_as ref1 r12 "1 rank -> 2 ranks (ZeRO-1)"

e2e_finish
