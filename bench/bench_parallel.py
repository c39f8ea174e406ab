#!/usr/bin/env python3
"""Parallelism over MPI: tokens/s on 1 and 2 ranks for data, tensor and
pipeline parallelism, the overlap of the gradient all-reduce with
backward, the bytes each rank sends against the formulas, and the
pipeline bubble against (p - 1) / (m + p - 1).

Prints two tables for the quickstart shape (L=4 H=4 C=256 T=256, global
batch 8, 3.29 M parameters), every rank with one thread:

  1. training tokens/s (median over repeats) and the speedup over 1 rank
     (goal of issue 5: at least 1.7x on 2 ranks)
  2. communication per step: the time the runtime waits in grads_finish
     after backward (what backward did not hide), the overlap, and the
     bytes rank 0 sent, measured by Open MPI's own message counters (the
     pml "monitoring" component), against the ring all-reduce formula
     2 (d - 1) / d * 4 * n_params

Configurations, measured interleaved (A B C D A B C D ...):

  single     1 process, [parallel] plugin = single
  data       2 ranks, plugin = data, bucket_mb = 25 (PyTorch DDP's default;
             the whole 13 MB gradient is one bucket, all-reduced after
             backward: nothing overlaps)
  data+ovl   2 ranks, bucket_mb = 1: a bucket per layer, each all-reduced
             while backward computes the layers below it
  zero1      2 ranks, zero = 1: reduce-scatter to the owner's shard, step
             the shard, all-gather the parameters (not overlapped)
  tensor     2 ranks, Megatron split (heads, MLP columns)
  pipe-*     2 ranks, 2 stages of 2 layers, 8 micro-batches of 1 sequence:
             gpipe, 1f1b, interleaved 1F1B (2 virtual stages per rank)

Overlap = 1 - wait(data+ovl) / wait(data): the share of the all-reduce time
that the buckets hide behind backward (`data` waits for the whole
all-reduce, so its wait is the all-reduce's time).

It is a benchmark; nothing is asserted. The machine is shared: compare
within one run, never across runs.

Usage: python3 bench/bench_parallel.py [--build DIR] [--steps N] [--repeats N]
                                       [--quick] [--json FILE]
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = [
    ("single", 1, []),
    ("data", 2, ["--set", "parallel.plugin=data"]),
    ("data+ovl", 2, ["--set", "parallel.plugin=data", "--set", "parallel.bucket_mb=1"]),
    ("zero1", 2, ["--set", "parallel.plugin=data", "--set", "parallel.zero=1"]),
    ("tensor", 2, ["--set", "parallel.plugin=tensor"]),
    ("pipe-gpipe", 2, ["--set", "parallel.plugin=pipeline", "--set", "parallel.schedule=gpipe",
                       "--set", "parallel.microbatches=8"]),
    ("pipe-1f1b", 2, ["--set", "parallel.plugin=pipeline", "--set", "parallel.microbatches=8"]),
    ("pipe-int", 2, ["--set", "parallel.plugin=pipeline", "--set", "parallel.schedule=interleaved",
                     "--set", "parallel.interleave=2", "--set", "parallel.microbatches=8"]),
]
DATA_CONFIGS = ("data", "data+ovl", "zero1")


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    return None


def corpus(tmp):
    """The quickstart corpus, or English-like text when setup.sh has not
    extracted it (the speed does not depend on the words)."""
    kjv = os.path.join(ROOT, "data", "kjv", "train.txt")
    if os.path.exists(kjv):
        return kjv
    path = os.path.join(tmp, "train.txt")
    words = "the king said unto them and it came to pass that the people went forth into the land".split()
    x, out = 12345, []
    while sum(len(w) + 1 for w in out) < 400000:
        x = (1103515245 * x + 12345) % 2147483648
        out.append(words[(x >> 16) % len(words)])
    open(path, "w").write(" ".join(out))
    return path


def sent_bytes(prefix, kinds="C"):
    """Bytes rank 0 sent, from Open MPI's monitoring output (lines "K <rank>
    <peer> <bytes> bytes <n> msgs sent"): K = C counts what collectives
    carried, K = E every message through the point-to-point layer, which
    includes the application's own sends and the collectives' messages."""
    total = 0
    for path in glob.glob(prefix + ".0.prof"):
        for line in open(path):
            f = line.split("\t")
            if f[0] in kinds and len(f) >= 4:
                total += int(f[3].split()[0])
    return total


def run_one(args, name, ranks, extra, tmp, train):
    out = os.path.join(tmp, name)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [os.path.join(args.build, "fsrun"), os.path.join(ROOT, "conf", "quickstart.ini"),
           "--set", f"train.steps={args.steps}", "--set", "train.val_every=0", "--set", "data.val=",
           "--set", f"data.train={train}", "--set", "generate.max_tokens=0", "--set", "run.threads=1",
           "--set", "run.progress=off", "--set", f"run.out={out}"] + extra
    env = dict(os.environ)
    env["FS_PLUGIN_PATH"] = os.path.join(args.build, "plugins")
    mon = os.path.join(tmp, "mon_" + name)
    for f in glob.glob(mon + ".*"):
        os.remove(f)
    if ranks > 1:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PMIX_MCA_gds="hash")
        cmd = ["mpirun", "-np", str(ranks), "--mca", "pml_monitoring_enable", "1",
               "--mca", "pml_monitoring_enable_output", "3", "--mca", "pml_monitoring_filename", mon] + cmd
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    res = last_json(p.stdout)
    if p.returncode != 0 or res is None:
        sys.stderr.write(f"{name}: failed ({p.returncode}):\n{p.stderr[-2000:]}\n")
        return None
    if ranks > 1:
        # every step's traffic plus set-up and the final checkpoint's (ZeRO)
        res["sent_per_step"] = sent_bytes(mon) / args.steps
        res["sent_all_per_step"] = sent_bytes(mon, "E") / args.steps  # with the pipeline's point to point
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build directory with fsrun and plugins/")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10 steps, 2 repeats")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = 10, 2
    if not shutil.which("mpirun"):
        sys.exit("bench_parallel: mpirun not found (scripts/setup.sh installs openmpi-bin)")
    tmp = tempfile.mkdtemp(prefix="fs_bench_parallel_")
    train = corpus(tmp)
    raw = {name: [] for name, _, _ in CONFIGS}
    try:
        for r in range(args.repeats):
            for name, ranks, extra in CONFIGS:
                res = run_one(args, name, ranks, extra, tmp, train)
                if res:
                    raw[name].append(res)
                    print(f"  repeat {r + 1}/{args.repeats} {name:9s} {res['tokens_per_s']:9.1f} tok/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name, key):
        xs = [x[key] for x in raw[name] if key in x]
        return statistics.median(xs) if xs else None

    n_params = next((x["params"] for xs in raw.values() for x in xs), 0)
    base = med("single", "tokens_per_s")
    print(f"\nquickstart shape, {n_params:,} parameters, global batch 8 x 256 tokens, {args.steps} steps "
          f"(first untimed), 1 thread per rank, median of {args.repeats}")
    print("\nTable 1: training tokens/s")
    print(f"| {'config':9s} | ranks | tokens/s | speedup vs 1 rank |")
    print("|-----------|-------|----------|-------------------|")
    for name, ranks, _ in CONFIGS:
        t = med(name, "tokens_per_s")
        sp = f"{t / base:.2f}x" if t and base else "-"
        print(f"| {name:9s} | {ranks:5d} | {t if t else 0:8.0f} | {sp:>17s} |")

    d = 2
    formula = 2 * (d - 1) / d * 4 * n_params
    wait_all = med("data", "grads_finish_ms")
    print("\nTable 2: communication per step (rank 0)")
    print(f"| {'config':9s} | wait in grads_finish ms | overlap | collectives | bytes sent | ring formula | ratio |")
    print("|-----------|-------------------------|---------|-------------|------------|--------------|-------|")
    for name, ranks, _ in CONFIGS[1:]:
        if name not in DATA_CONFIGS:
            continue
        w = med(name, "grads_finish_ms")
        ov = f"{100 * (1 - w / wait_all):.0f}%" if name == "data+ovl" and w is not None and wait_all else "-"
        sent = med(name, "sent_per_step")
        coll = med(name, "comm_collectives")
        print(f"| {name:9s} | {w if w is not None else 0:23.2f} | {ov:>7s} | {coll if coll else 0:11.1f} | "
              f"{sent if sent else 0:10.0f} | {formula:12.0f} | {sent / formula if sent else 0:5.3f} |")
    print("\nwait: the runtime's time in grads_finish (+ params_updated for zero1) after backward; for `data` it"
          "\nis the whole all-reduce, so overlap = 1 - wait(data+ovl) / wait(data). bytes sent: Open MPI's pml"
          "\nmonitoring, all collectives of the run / steps (set-up, the loss sums and, for zero1, the final"
          "\ncheckpoint's gather included). formula: 2 (d - 1) / d * 4 * n_params for d = 2 ranks.")
    # tensor and pipeline parallelism: what rank 0 sends against the formulas
    L, C, T, B, V = 4, 256, 256, 8, 256
    btc = B * T * C * 4  # one activation of the whole batch, bytes
    tp_formula = L * 4 * 2 * (2 - 1) / 2 * btc  # 2 all-reduces per layer forward, 2 backward, ring
    pp_formula = btc + 2 * (2 - 1) / 2 * V * C * 4  # stage 0: activations forward; the tied wte's all-reduce
    print("\nTable 3: tensor and pipeline parallelism on 2 ranks (rank 0)")
    print("| config     | bytes sent | formula    | ratio | bubble measured | bubble ideal (p-1)/(vm+p-1) |")
    print("|------------|------------|------------|-------|-----------------|-----------------------------|")
    for name, _, _ in CONFIGS:
        if name not in ("tensor", "pipe-gpipe", "pipe-1f1b", "pipe-int"):
            continue
        sent = med(name, "sent_all_per_step")
        v = 2 if name == "pipe-int" else 1  # rank 0 holds v chunks: v activations forward, v - 1 gradients back
        f = tp_formula if name == "tensor" else pp_formula + (2 * v - 2) * btc
        bm, bi = med(name, "pipeline_bubble"), med(name, "pipeline_bubble_ideal")
        print(f"| {name:10s} | {sent if sent else 0:10.0f} | {f:10.0f} | {sent / f if sent else 0:5.3f} | "
              f"{bm if bm is not None else float('nan'):15.3f} | {bi if bi is not None else float('nan'):27.3f} |")
    print("\ntensor formula: 4 all-reduces of B*T*C floats per layer and step (after the row-parallel matmuls"
          "\nforward, after the column-parallel ones' input gradients backward), ring 2 (t - 1) / t. pipeline"
          "\nformula: stage 0 sends each micro-batch's activation (B*T*C floats per step; interleaved with v chunks"
          "\n(2v - 1) B*T*C: forward from each chunk, backward from all but the first) and all-reduces the"
          "\ntied wte's gradient with the last stage. bubble measured: 1 - (rank 0's compute time inside the"
          "\nschedule) / (the schedule's wall time); the ideal assumes equal stages and free messages.")
    if args.json:
        json.dump(raw, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
