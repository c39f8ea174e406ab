#!/usr/bin/env python3
"""Batch-1 decoding, fsrun vs llama.cpp, per weights format and thread
count (issue 14, items 1 and 2), and each format's eval loss next to f32's.

fsrun's side is build/bench/bench_decode (the decode step of model/seq.h
with [generate] weights = f32 | bf16 | q8, prompt 'And God said,' then
greedy tokens, tokens/s = (prompt + generated) / seconds, median of 3 per
process); llama.cpp's is llama-completion on the same checkpoint converted
to GGUF in the same format (f32, bf16, q8_0; bench/llamacpp/to_gguf.py),
f32 KV cache, its own eval-time tokens/s (bench/llamacpp/peer.py).  Both at
1 and 2 threads, interleaved (fsrun, llama.cpp, next cell, ... then the
next round); the table shows medians over rounds and the ratio.

Models: the quickstart model (conf/quickstart.ini trained here for 300
steps, or --qs-checkpoint) and the GPT-2-small shape (L12 H12 C768, byte
vocabulary, 86 M parameters; one training step: speed does not depend on
the values).  The loss table decodes --windows windows of max_seq tokens of
the quickstart model's [data] val with teacher forcing in each format
(f32's equals --mode eval's).

Usage:  python3 bench/bench_decode.py [--rounds 2] [--threads 1,2] [--weights f32,bf16,q8]
            [--qs-checkpoint runs/x/model.safetensors] [--skip-gpt2] [--skip-llama] [--windows 100]
Goal (issue 14): fsrun >= 1.2x llama.cpp's tokens/s with f32 weights at 1 and 2 threads, GPT-2-small
shape and quickstart; q8's loss within 1% of f32's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import bench as B
from llamacpp import peer

GGUF_TYPE = {"f32": "f32", "bf16": "bf16", "q8": "q8_0"}
GPT2_SETS = B.shape_sets(B.GPT2)


def fs_decode(tool, ckpt, val, weights, threads, tokens, windows=0, timeout=1200):
    """bench_decode's JSON lines -> {(weights, threads): tps, (weights, 'loss'): loss}"""
    cmd = [tool, ckpt, val, f"windows={windows}", f"weights={weights}", f"threads={threads}", f"tokens={tokens}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            js = json.loads(line)
            if "tokens_per_s" in js:
                out[(js["weights"], js["threads"])] = js["tokens_per_s"]
            if "loss" in js:
                out[(js["weights"], "loss")] = js["loss"]
    if p.returncode:
        print(f"  ! {' '.join(cmd)}: {p.stderr.strip()[-300:]}", file=sys.stderr)
    return out


# [generate] weights formats: bytes a weight takes (q8: 32 int8 and an fp16 scale per 32)
WEIGHT_BYTES = {"f32": 4.0, "bf16": 2.0, "q8": 34.0 / 32.0}
SHAPES = {"quickstart": B.QS, "gpt2-small": B.GPT2}


def read_bandwidth(threads):
    """GB/s that `threads` threads read from memory (build/bench/bench_peak), or None."""
    tool = os.path.join(B.ROOT, "build", "bench", "bench_peak")
    if not os.access(tool, os.X_OK):
        return None
    p = subprocess.run([tool, f"threads={threads}", "sizes=256", "reps=5"], capture_output=True, text=True)
    js = B.last_json(p.stdout) if p.returncode == 0 else None
    return js.get("read_gbs") if js else None


def llc_bytes():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            v = f.read().strip()
        return int(v[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(v[-1], 1) if v[-1] in "KM" else int(v)
    except (OSError, ValueError, IndexError):
        return None


def ceiling(name, fmt, gbs):
    """tokens/s if every token read all its weights at gbs GB/s; None while they fit in the last-level cache
    (then the caches, not memory, feed them)."""
    wb = B.product_weights(SHAPES[name]) * WEIGHT_BYTES[fmt]
    llc = llc_bytes()
    return gbs * 1e9 / wb if gbs and (llc is None or wb > llc) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--weights", default="f32,bf16,q8")
    ap.add_argument("--qs-checkpoint")
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--windows", type=int, default=100, help="val windows for the loss table (0: no loss table)")
    ap.add_argument("--fsrun", default=os.path.join(B.ROOT, "build", "fsrun"))
    ap.add_argument("--tool", default=os.path.join(B.ROOT, "build", "bench", "bench_decode"))
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    for p in (a.fsrun, a.tool):
        if not os.access(p, os.X_OK):
            sys.exit(f"bench_decode: {p} not found: build first (cmake --build build -j2)")
    why = None if a.skip_llama else peer.available()
    if why:
        print(f"bench_decode: {why}: llama.cpp columns skipped", file=sys.stderr)
        a.skip_llama = True
    threads = [int(t) for t in a.threads.split(",")]
    formats = a.weights.split(",")
    val = os.path.join(B.ROOT, "data", "kjv", "val.txt")
    model, isa = B.cpu_info()
    print("Batch-1 decoding tokens/s, fsrun vs llama.cpp (f32 KV cache both), per weights format")
    print(f"  cpu {model}, {os.cpu_count()} cores, ISA {' '.join(isa)}; load avg "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; {a.rounds} interleaved rounds, medians",
          flush=True)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="fsdecode-") as tmp:
        models = []
        qs = a.qs_checkpoint
        if not qs:
            d = os.path.join(tmp, "qs")
            B.run([a.fsrun, B.QUICKSTART, "--set", "generate.max_tokens=0", "--set", f"run.out={d}"], env, 1800)
            qs = os.path.join(d, "model.safetensors")
        models.append(("quickstart", qs, 200))
        if not a.skip_gpt2:
            d = os.path.join(tmp, "gpt2")
            B.run([a.fsrun, B.QUICKSTART] + GPT2_SETS + ["--set", "train.steps=1", "--set", "generate.max_tokens=0",
                                                        "--set", "data.val=", "--set", f"run.out={d}"], env, 1800)
            models.append(("gpt2-small", os.path.join(d, "model.safetensors"), 64))
        gg = {}
        if not a.skip_llama:
            for name, ckpt, _ in models:
                for f in formats:
                    gg[(name, f)] = peer.to_gguf(ckpt, os.path.join(tmp, f"{name}-{f}.gguf"), GGUF_TYPE[f])

        res = {}
        t0 = time.perf_counter()
        for r in range(a.rounds):
            for name, ckpt, tokens in models:
                for f in formats:
                    for t in threads:
                        cell = res.setdefault((name, f, t), {"fs": [], "llama": []})
                        fs = fs_decode(a.tool, ckpt, val, f, t, tokens).get((f, t))
                        cell["fs"].append(fs)
                        ll = None
                        if not a.skip_llama:
                            ll, msg = peer.run_decode(gg[(name, f)], tokens, t, 600, env)
                            if ll is None:
                                print(f"  ! llama.cpp {name} {f} {t}: {msg}", file=sys.stderr)
                        cell["llama"].append(ll)
                        print(f"  round {r + 1}/{a.rounds} {name:10s} {f:4s} {t} thr: fsrun {B.fmt(fs)}  llama.cpp "
                              f"{B.fmt(ll)} tok/s", file=sys.stderr, flush=True)
        bw = {t: read_bandwidth(t) for t in threads}
        print("  memory read bandwidth (bench_peak): " + ", ".join(f"{t} thr {B.fmt(g, 1)} GB/s" for t, g in bw.items()))
        hdr = (f"  {'model':10s} {'weights':7s} {'thr':>3s} {'fsrun tok/s':>11s} {'(range)':>13s} "
               f"{'llama.cpp':>9s} {'(range)':>13s} {'fs/llama':>8s} {'DRAM ceiling':>12s} {'fs/ceiling':>10s}")
        print(hdr)
        print("  " + "-" * (len(hdr) - 2))
        goals = []
        for (name, f, t), cell in res.items():
            fm, lm = B.med(cell["fs"]), B.med(cell["llama"])
            ratio = fm / lm if fm and lm else None
            cap = ceiling(name, f, bw.get(t))
            print(f"  {name:10s} {f:7s} {t:>3d} {B.fmt(fm):>11s} {B.span(cell['fs']):>13s} {B.fmt(lm):>9s} "
                  f"{B.span(cell['llama']):>13s} {B.fmt(ratio, 2):>8s} {B.fmt(cap):>12s} "
                  f"{B.fmt(fm / cap if fm and cap else None, 2):>10s}")
            if f == "f32" and ratio:
                goals.append((name, t, ratio))
        for name, t, ratio in goals:
            print(f"  goal, f32 decoding >= 1.2x llama.cpp ({name}, {t} thread{'s' if t > 1 else ''}): "
                  f"{'met' if ratio >= 1.2 else 'NOT met'} ({ratio:.2f}x)")
        losses = {}
        if a.windows:
            out = fs_decode(a.tool, qs, val, ",".join(formats), threads[0], 2, a.windows)
            losses = {f: out.get((f, "loss")) for f in formats}
            base = losses.get("f32")
            print(f"\n  eval loss, quickstart model, {a.windows} windows of val (teacher-forced decoding):")
            for f in formats:
                l = losses.get(f)
                rel = f" ({100 * (l - base) / base:+.3f}% vs f32)" if l and base and f != "f32" else ""
                print(f"    {f:5s} {l:.6f}{rel}" if l else f"    {f:5s} -")
            if base and losses.get("q8"):
                d = abs(losses["q8"] - base) / base
                print(f"  goal, q8 loss within 1% of f32's: {'met' if d <= 0.01 else 'NOT met'} ({100 * d:.3f}%)")
        print("  DRAM ceiling: tokens/s if each token read all its projection and head weights at the measured "
              "bandwidth (every weight is read once a token); '-' where they fit in the last-level cache.")
        print(f"  ({time.perf_counter() - t0:.0f} s; load avg at end "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"speed": {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in res.items()}, "loss": losses}, fh,
                          indent=1)


if __name__ == "__main__":
    main()
