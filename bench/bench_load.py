#!/usr/bin/env python3
"""Graceful under load (issue 14, item 4): training, decoding and serving
tokens/s on an idle machine and with a CPU hog on one core, side by side,
for fsrun, PyTorch and llama.cpp.

The hog is a busy loop (python3 -c 'while True: pass') pinned to the last
core this process may use; the bench starts it just before each loaded run
and stops it right after, so idle and loaded runs alternate:

    for each round:  for each case:  idle run, loaded run

Cases (each program in its own process, as it would be run):
  train  quickstart   fsrun (conf/quickstart.ini, 12 steps, median step);
                      PyTorch (bench/torch_gpt.py, its best setting: 1 torch
                      thread, 2 warm-up + 10 timed steps)
  decode quickstart   batch 1, KV cache, 13 prompt + 200 tokens: fsrun
                      --mode generate; PyTorch torch_gpt.py --generate;
                      llama.cpp llama-completion (same weights as GGUF, f32
                      KV cache; bench/llamacpp/peer.py)
  decode gpt2-small   the same at the GPT-2-small shape (L12 H12 C768,
                      byte vocabulary, 86 M parameters), 64 tokens
  serve  quickstart   16 closed-loop clients, 4 greedy 64-token requests
                      each, streamed (bench_serve.py's client): fsrun
                      --mode serve (fcfs) and llama-server (16 slots, f32
                      KV cache), each started for the run, output tokens/s
Everyone runs with its defaults for threads (fsrun run.threads = 0:
adaptive; llama.cpp -t = the cores; PyTorch's OpenBLAS its 2 threads).
Table: medians over rounds of idle and loaded tokens/s and the share kept
(loaded / idle); goal: fsrun keeps >= 40% under the hog.

Usage:  python3 bench/bench_load.py [--rounds 2] [--skip-torch] [--skip-llama]
            [--skip-gpt2] [--cases train,decode,serve] [--json FILE]
Needs build/fsrun (and bench/llamacpp/build.sh for the llama.cpp rows).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import bench as B
import bench_serve as S
import serve_loadgen as lg
from llamacpp import peer

GPT2 = B.GPT2


class Hog:
    """A busy loop on one core, started and stopped by the bench."""

    def __init__(self):
        cpus = sorted(os.sched_getaffinity(0))
        self.cpu = cpus[-1]
        self.p = None

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                  preexec_fn=lambda: os.sched_setaffinity(0, {self.cpu}))
        time.sleep(0.3)  # running before the measured program starts
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


def serve_tps(start, prompts, clients=16, per_client=4):
    """Output tokens/s of a server start() returns under `clients`
    closed-loop clients; None when it fails."""
    try:
        server = start()
    except (RuntimeError, SystemExit) as e:
        print(f"  ! serve: {e}", file=sys.stderr)
        return None
    try:
        r = S.run(server, S.fixed(clients * per_client, 64, prompts, seed=clients), concurrency=clients)
    finally:
        server.stop()
    return r.get("tokens_per_s") if not r.get("failed") else None


def median_or_none(xs):
    xs = [x for x in xs if x]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cases", default="train,decode,serve")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--fsrun", default=os.path.join(B.ROOT, "build", "fsrun"))
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    if not os.access(a.fsrun, os.X_OK):
        sys.exit(f"bench_load: {a.fsrun} not found: build first")
    if not a.skip_torch and subprocess.run([B.TORCH_PY, "-c", "import torch"], capture_output=True).returncode:
        print(f"bench_load: torch does not import in {B.TORCH_PY}: PyTorch rows skipped", file=sys.stderr)
        a.skip_torch = True
    why = None if a.skip_llama else peer.available()
    if why:
        print(f"bench_load: {why}: llama.cpp rows skipped", file=sys.stderr)
        a.skip_llama = True
    cases = {c.strip() for c in a.cases.split(",")}
    env = dict(os.environ)
    model, isa = B.cpu_info()
    print("Idle vs one core taken by a CPU hog: tokens/s (issue 14, item 4)")
    print(f"  cpu {model}, {os.cpu_count()} cores, ISA {' '.join(isa)}; load avg "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; hog pinned to cpu {Hog().cpu}; "
          f"{a.rounds} rounds of (idle, loaded) per case", flush=True)

    with tempfile.TemporaryDirectory(prefix="fsload-") as tmp:
        args = types.SimpleNamespace(fsrun=a.fsrun, no_snapshot=False, timeout=a.timeout, skip_torch=a.skip_torch,
                                     gen_torch_reps=3)
        b = B.Bench(args, tmp)
        # checkpoints to decode from (not timed)
        qs_dir, g_dir = os.path.join(tmp, "qs"), os.path.join(tmp, "gpt2")
        B.run([b.fsrun, B.QUICKSTART, "--set", "train.steps=30", "--set", "generate.max_tokens=0",
               "--set", "data.val=", "--set", f"run.out={qs_dir}"], env, a.timeout)
        if not a.skip_gpt2 and "decode" in cases:
            B.run([b.fsrun, B.QUICKSTART] + B.shape_sets(GPT2) + [
                "--set", "train.steps=1", "--set", "generate.max_tokens=0", "--set", "data.val=",
                "--set", f"run.out={g_dir}"], env, a.timeout)
        gg = {}
        if not a.skip_llama and cases & {"decode", "serve"}:
            for name, d in (("quickstart", qs_dir), ("gpt2-small", g_dir)):
                if os.path.exists(os.path.join(d, "model.safetensors")):
                    gg[name] = peer.to_gguf(os.path.join(d, "model.safetensors"), os.path.join(tmp, f"{name}.gguf"))
        cores = len(os.sched_getaffinity(0))

        def llama(name, tokens):
            tps, msg = peer.run_decode(gg[name], tokens, cores, a.timeout, env)
            if tps is None:
                print(f"  ! llama.cpp {name}: {msg}", file=sys.stderr)
            return tps

        runs = []  # (case, impl, fn)
        if "train" in cases:
            runs.append(("train quickstart", "fsrun",
                         lambda: (b.fs_train("qs", B.QS, 12, "env", env) or {}).get("tps")))
            if not a.skip_torch:
                runs.append(("train quickstart", "pytorch",
                             lambda: (b.torch_train(B.QS, 10, 2, "env", env) or {}).get("tps")))
        if "decode" in cases:
            shapes = [("quickstart", B.QS, qs_dir, 200)] + ([] if a.skip_gpt2 else [("gpt2-small", GPT2, g_dir, 64)])
            for name, shape, d, tokens in shapes:
                runs.append((f"decode {name}", "fsrun",
                             lambda shape=shape, d=d, tokens=tokens:
                             (b.fs_generate(d, shape, tokens, "env", env) or {}).get("tps")))
                if not a.skip_torch:
                    runs.append((f"decode {name}", "pytorch",
                                 lambda shape=shape, tokens=tokens:
                                 (b.torch_generate(shape, tokens, 1 if shape is GPT2 else 3, "env", env) or {})
                                 .get("tps")))
                if name in gg:
                    runs.append((f"decode {name}", "llama.cpp", lambda name=name, tokens=tokens: llama(name, tokens)))

        if "serve" in cases:
            prompts = lg.prompts_from(os.path.join(B.ROOT, "data", "kjv", "val.txt"), 20, 60)
            runs.append(("serve quickstart", "fsrun", lambda: serve_tps(
                lambda: S.Fsrun(b.fsrun, B.QUICKSTART, "fcfs", 0, 32, ["--set", f"run.out={qs_dir}"]), prompts)))
            if "quickstart" in gg:
                runs.append(("serve quickstart", "llama.cpp", lambda: serve_tps(
                    lambda: S.LlamaServer(peer, gg["quickstart"], B.QS["seq"], cores), prompts)))

        res = {(c, i): {"idle": [], "loaded": []} for c, i, _ in runs}
        t0 = time.perf_counter()
        for r in range(a.rounds):
            for case, impl, fn in runs:
                idle = fn()
                with Hog():
                    loaded = fn()
                res[(case, impl)]["idle"].append(idle)
                res[(case, impl)]["loaded"].append(loaded)
                print(f"  round {r + 1}/{a.rounds} {case:18s} {impl:9s} idle {B.fmt(idle)}  loaded {B.fmt(loaded)} "
                      "tok/s", file=sys.stderr, flush=True)

    hdr = f"  {'case':18s} {'program':9s} {'idle tok/s':>10s} {'loaded tok/s':>12s} {'kept':>6s} {'(pairs)':>11s}"
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    goals = []
    for (case, impl), v in res.items():
        i, l = median_or_none(v["idle"]), median_or_none(v["loaded"])
        kept = l / i if i and l else None
        pairs = [y / x for x, y in zip(v["idle"], v["loaded"]) if x and y]
        print(f"  {case:18s} {impl:9s} {B.fmt(i):>10s} {B.fmt(l):>12s} "
              f"{(f'{100 * kept:.0f}%' if kept else '-'):>6s} {B.span([100 * p for p in pairs]) + '%' if pairs else '-':>11s}")
        if impl == "fsrun" and kept is not None:
            goals.append((case, kept))
    print("  kept = loaded / idle (medians over rounds); (pairs) = min-max of loaded / idle over rounds, each pair "
          "measured back to back")
    for case, kept in goals:
        print(f"  goal, fsrun keeps >= 40% of its idle throughput ({case}): {'met' if kept >= 0.4 else 'NOT met'} "
              f"({100 * kept:.0f}%)")
    print(f"  ({time.perf_counter() - t0:.0f} s; load avg at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          "the idle runs are only as idle as the machine: other work shows in the load average)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{c}/{i}": v for (c, i), v in res.items()}, f, indent=1)


if __name__ == "__main__":
    main()
