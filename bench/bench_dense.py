#!/usr/bin/env python3
"""Dense attention, fsrun vs PyTorch eager: forward + backward time and peak
memory as T grows (issue 14, item 3).

fsrun's side is build/bench/bench_attention with plugins=dense (the plugin
as fsrun loads it: flash-style blocks, O(T) saved state); PyTorch's is
bench/torch_attention.py (the (B, H, T, T) scores, masked_fill, softmax, @ V
of eager mode, autograd keeping the probabilities).  Both take the best of
a few repeats inside one process after an untimed forward + backward, and
report the growth of their peak RSS over the inputs.  This script runs the
two side by side, interleaved (fsrun T1, torch T1, fsrun T2, ... then the
next round), and prints medians over rounds and the ratios.

Usage:  python3 bench/bench_dense.py [--T 1024,2048,4096,8192] [--B 1] [--H 8]
            [--D 64] [--causal 1] [--rounds 3] [--torch-threads 0] [--json FILE]
Goal (issue 14): at T = 8k, fsrun's forward + backward >= 3x faster than
PyTorch eager with <= 1/20 of its memory.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

from bench import (ROOT, TORCH_PY, FOREIGN, run, med, fmt, span, other_load, foreign_note, cpu_info,
                   machine_busy_s, children_cpu_s)

TORCH_ATT = os.path.join(ROOT, "bench", "torch_attention.py")
ROW = re.compile(r"^\s*(\d+)\s+dense\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def mem_available_mib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def fs_case(a, T):
    cmd = [a.bench_attention, f"T={T}", f"B={a.B}", f"H={a.H}", f"D={a.D}", f"causal={a.causal}",
           "plugins=dense", f"reps={a.reps}", f"time_s={a.timeout}"]
    b0, c0, t0 = machine_busy_s(), children_cpu_s(), time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        print(f"  ! timed out: {' '.join(cmd)}", file=sys.stderr)
        return None
    wall, b1, c1 = time.perf_counter() - t0, machine_busy_s(), children_cpu_s()
    if b0 is not None and b1 is not None and wall > 0.2:  # the same noise indicator as bench.py's runs
        FOREIGN.append(max(0.0, (b1 - b0) - (c1 - c0)) / (wall * (os.cpu_count() or 1)))
    for line in p.stdout.splitlines():
        m = ROW.match(line)
        if m and int(m.group(1)) == T:
            return {"fwd_ms": float(m.group(2)), "fb_ms": float(m.group(3)), "saved_mib": float(m.group(4)),
                    "peak_fb_mib": float(m.group(6)), "wall": wall}
    print(f"  ! no result from {' '.join(cmd)}:\n    " + "\n    ".join(p.stdout.strip().splitlines()[-3:]),
          file=sys.stderr)
    return None


def torch_case(a, T):
    # eager attention holds a few (B, H, T, T) tensors at once: skip, saying so, where they cannot fit
    need = 6 * a.B * a.H * T * T * 4 / 2**20
    avail = mem_available_mib()
    if avail is not None and need > 0.8 * avail:
        print(f"  ! PyTorch at T = {T} skipped: needs about {need:,.0f} MiB, {avail:,.0f} MiB available",
              file=sys.stderr)
        return None
    cmd = [TORCH_PY, TORCH_ATT, "--T", str(T), "--B", str(a.B), "--H", str(a.H), "--D", str(a.D),
           "--causal", str(a.causal), "--reps", str(a.reps), "--threads", str(a.torch_threads)]
    js, wall = run(cmd, dict(os.environ), a.timeout)
    return js


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", default="1024,2048,4096,8192")
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--causal", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    ap.add_argument("--reps", type=int, default=3, help="repeats inside each process (best of)")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads; 0 = torch's default")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per process")
    ap.add_argument("--bench-attention", default=os.path.join(ROOT, "build", "bench", "bench_attention"))
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    Ts = [int(x) for x in a.T.split(",") if x]
    if not os.access(a.bench_attention, os.X_OK):
        sys.exit(f"bench_dense: {a.bench_attention} not found: build first (cmake --build build -j2)")
    if not a.skip_torch and subprocess.run([TORCH_PY, "-c", "import torch"], capture_output=True).returncode:
        print(f"bench_dense: torch does not import in {TORCH_PY}: PyTorch columns skipped", file=sys.stderr)
        a.skip_torch = True
    model, isa = cpu_info()
    print(f"Dense attention forward + backward, B={a.B} H={a.H} D={a.D} "
          f"{'causal' if a.causal else 'bidirectional'}; fsrun flash-style (plugins=dense) vs PyTorch eager")
    print(f"  cpu {model}, {os.cpu_count()} cores, ISA {' '.join(isa)}; load avg "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {a.rounds} interleaved rounds, best of "
          f"{a.reps} inside each process, medians over rounds")
    sys.stdout.flush()
    res = {T: {"fs": [], "torch": []} for T in Ts}
    f0 = len(FOREIGN)
    for r in range(a.rounds):
        for T in Ts:
            n0 = len(FOREIGN)
            f = fs_case(a, T)
            res[T]["fs"].append(f)
            msg = f"  round {r + 1}/{a.rounds} T={T}: fsrun {fmt(f and f['fb_ms'], 1)} ms"
            if not a.skip_torch:
                t = torch_case(a, T)
                res[T]["torch"].append(t)
                msg += f"  pytorch {fmt(t and t['fb_ms'], 1)} ms"
            print(msg + other_load(n0), file=sys.stderr, flush=True)
    hdr = (f"  {'T':>6s} {'fsrun fwd ms':>12s} {'fwd+bwd ms':>10s} {'(range)':>15s} {'peak MiB':>9s} "
           f"{'saved MiB':>9s} {'torch fwd ms':>12s} {'fwd+bwd ms':>10s} {'(range)':>15s} {'peak MiB':>9s} "
           f"{'speedup':>7s} {'memory':>7s}")
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    for T in Ts:
        fs = [x for x in res[T]["fs"] if x]
        th = [x for x in res[T]["torch"] if x]
        ffb, tfb = med([x["fb_ms"] for x in fs]), med([x["fb_ms"] for x in th])
        fpk, tpk = med([x["peak_fb_mib"] for x in fs]), med([x["peak_fb_mib"] for x in th])
        speed = tfb / ffb if ffb and tfb else None
        mem = tpk / max(fpk, 0.1) if fpk is not None and tpk else None
        print(f"  {T:>6d} {fmt(med([x['fwd_ms'] for x in fs]), 1):>12s} {fmt(ffb, 1):>10s} "
              f"{span([x['fb_ms'] for x in fs], 1):>15s} {fmt(fpk, 1):>9s} "
              f"{fmt(med([x['saved_mib'] for x in fs]), 2):>9s} {fmt(med([x['fwd_ms'] for x in th]), 1):>12s} "
              f"{fmt(tfb, 1):>10s} {span([x['fb_ms'] for x in th], 1):>15s} {fmt(tpk, 0):>9s} "
              f"{fmt(speed, 1) + 'x' if speed else '-':>7s} {fmt(mem, 0) + 'x' if mem else '-':>7s}")
    print("  speedup = PyTorch fwd+bwd ms / fsrun's (medians); memory = PyTorch peak MiB / fsrun's; peak = growth "
          "of peak RSS over the inputs during forward + backward")
    for T in Ts:
        fs = [x for x in res[T]["fs"] if x]
        th = [x for x in res[T]["torch"] if x]
        if T == 8192 and fs and th:
            speed = med([x["fb_ms"] for x in th]) / med([x["fb_ms"] for x in fs])
            mem = med([x["peak_fb_mib"] for x in th]) / max(med([x["peak_fb_mib"] for x in fs]), 0.1)
            print(f"  goal at T = 8k (>= 3x faster, <= 1/20 of the memory): "
                  f"{'met' if speed >= 3 and mem >= 20 else 'NOT met'} ({speed:.1f}x, {mem:.0f}x)")
    print(f"  ({foreign_note(f0)[2:] or 'other work on the machine: not measured'})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({str(T): v for T, v in res.items()}, f, indent=1)


if __name__ == "__main__":
    main()
