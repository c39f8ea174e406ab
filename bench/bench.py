#!/usr/bin/env python3
"""FastServe benchmark: fsrun vs PyTorch on CPU, side by side.

Prints three tables:
  1. training tokens/s, quickstart.ini (L=4 H=4 C=256 T=256 B=8)
  2. training tokens/s, a GPT-2-small-shaped graph (L=12 H=12 C=768 T=1024 B=2)
  3. generation tokens/s (batch 1, KV cache) on the quickstart shape and,
     unless --skip-gpt2, on the GPT-2-small shape

Every comparison is measured in one run, interleaved: for each repeat, for
each OpenBLAS environment, fsrun then PyTorch (A B C D A B C D ...), and the
tables show medians over the repeats and the ratio fsrun / PyTorch.  Two
OpenBLAS environments are measured, both programs always in the same one:

  env    the environment as given (here OPENBLAS_CORETYPE=Haswell and
         OPENBLAS_L2_SIZE are set by the machine's defaults)
  unset  the same with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed
         (OpenBLAS then detects the CPU itself; fsrun re-execs itself with a
         better core only if the detected one is older than the CPU allows)

PyTorch runs bench/torch_gpt.py with /usr/bin/python3 (the only interpreter
with torch) in its best setting on this machine, as measured in that file's
docstring: 1 torch thread, OpenBLAS's default 2 threads.

Usage:  python3 bench/bench.py [--quick] [--skip-torch] [--skip-gpt2]
                               [--repeats N] [--json FILE]
"""

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = "/usr/bin/python3"
TORCH_SCRIPT = os.path.join(ROOT, "bench", "torch_gpt.py")
QUICKSTART = os.path.join(ROOT, "conf", "quickstart.ini")

QS = dict(layers=4, heads=4, embd=256, seq=256, batch=8)
VOCAB = 256  # quickstart.ini's byte tokenizer, for both shapes
GPT2 = dict(layers=12, heads=12, embd=768, seq=1024, batch=2)
UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---------------------------------------------------------------- helpers

def envs_to_run():
    given = dict(os.environ)
    unset = {k: v for k, v in os.environ.items() if k not in UNSET}
    desc = ", ".join(f"{k}={os.environ[k]}" for k in UNSET if k in os.environ) or "nothing set"
    return [("env", f"as given ({desc})", given),
            ("unset", "env -u " + " -u ".join(UNSET), unset)]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def span(xs, nd=0):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{min(xs):,.{nd}f}-{max(xs):,.{nd}f}"


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return None


def machine_busy_s():
    """Seconds of CPU time the whole machine has spent not idle (all cores,
    steal included), from /proc/stat; None where unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


FOREIGN = []  # per run: share of the machine's cores busy with other work


WAIT_IDLE = {"max_s": 0.0, "threshold": 0.10, "waited_s": 0.0}


def wait_idle():
    """With --wait-idle S: before a run, wait (at most S seconds) until the
    other work on the machine stays below 10% of the cores for 1 second."""
    deadline = time.perf_counter() + WAIT_IDLE["max_s"]
    t0 = time.perf_counter()
    while WAIT_IDLE["max_s"] > 0:
        b0 = machine_busy_s()
        time.sleep(1.0)
        b1 = machine_busy_s()
        if b0 is None or b1 is None or (b1 - b0) / (os.cpu_count() or 1) < WAIT_IDLE["threshold"]:
            break
        if time.perf_counter() > deadline:
            break
    WAIT_IDLE["waited_s"] += time.perf_counter() - t0


def run(cmd, env, timeout):
    """Runs cmd, returns (last JSON line of its stdout or None, wall seconds).
    Also records how busy the machine was with work other than cmd during
    the run (FOREIGN), so noisy runs can be spotted."""
    wait_idle()
    b0, c0 = machine_busy_s(), children_cpu_s()
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                           errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  ! timed out after {timeout}s: {' '.join(cmd)}", file=sys.stderr)
        return None, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    b1, c1 = machine_busy_s(), children_cpu_s()
    if b0 is not None and b1 is not None and wall > 0.2:
        FOREIGN.append(max(0.0, (b1 - b0) - (c1 - c0)) / (wall * (os.cpu_count() or 1)))
    js = last_json(p.stdout)
    if p.returncode != 0 or js is None:
        print(f"  ! exit {p.returncode}: {' '.join(cmd)}\n    "
              + "\n    ".join((p.stderr or p.stdout).strip().splitlines()[-5:]), file=sys.stderr)
        return None, wall
    return js, wall


def snapshot_fsrun(path, tmp):
    """Copy fsrun and its plugins to tmp so that a rebuild by someone else
    during the benchmark cannot change the binary between repeats."""
    src_dir = os.path.dirname(os.path.abspath(path))
    dst = os.path.join(tmp, "fsrun-snapshot")
    os.makedirs(os.path.join(dst, "plugins"), exist_ok=True)
    shutil.copy2(path, os.path.join(dst, "fsrun"))
    pdir = os.path.join(src_dir, "plugins")
    if os.path.isdir(pdir):
        for f in os.listdir(pdir):
            if f.endswith(".so"):
                shutil.copy2(os.path.join(pdir, f), os.path.join(dst, "plugins", f))
    return os.path.join(dst, "fsrun")


def fsrun_median_step(metrics_path, tokens_per_step):
    """fsrun's JSON tokens_per_s is a mean over the timed steps (all but the
    first).  metrics.jsonl holds that running mean after each step, so the
    step times can be recovered and a median taken, the same statistic that
    torch_gpt.py reports.  Returns (median tokens/s, n steps) or (None, 0)."""
    try:
        rows = [json.loads(l) for l in open(metrics_path) if '"tokens_per_s"' in l]
    except (OSError, json.JSONDecodeError):
        return None, 0
    rows = [r for r in rows if "step" in r and "tokens_per_s" in r]
    if len(rows) < 2:
        return None, 0
    cum_prev, dts = 0.0, []
    for i, r in enumerate(rows[1:], start=1):  # row 0 is the untimed first step
        if r["tokens_per_s"] <= 0:
            return None, 0
        cum = i * tokens_per_step / r["tokens_per_s"]
        dts.append(cum - cum_prev)
        cum_prev = cum
    m = statistics.median(dts)
    return (tokens_per_step / m if m > 0 else None), len(dts)


def shape_sets(shape):
    """fsrun's --set arguments that turn quickstart.ini into `shape`."""
    if shape is QS:
        return []
    return ["--set", f"model.n_layer={shape['layers']}", "--set", f"model.n_head={shape['heads']}",
            "--set", f"model.n_embd={shape['embd']}", "--set", f"model.max_seq={shape['seq']}",
            "--set", f"train.batch={shape['batch']}"]


def product_weights(shape):
    """Weights a token is multiplied by: each layer's four projections (12 C^2) and the head (V C);
    the embeddings are looked up, not multiplied."""
    return 12 * shape["layers"] * shape["embd"] ** 2 + VOCAB * shape["embd"]


def flops_per_token(shape):
    """Model FLOPs of one training token (forward + backward), as llm.c and
    the PaLM paper count them: 6 per product weight plus the attention
    scores and their use, 6 L C T (12 L C T halved: causal attention
    computes only the lower triangle)."""
    return 6 * product_weights(shape) + 6 * shape["layers"] * shape["embd"] * shape["seq"]


def sgemm_peak(bench_peak, env):
    """The machine's measured sgemm peak (bench/bench_peak.c: OpenBLAS
    through fsrun's wrapper, all usable cores, square products), GFLOP/s,
    or None when it could not be measured."""
    if not os.access(bench_peak, os.X_OK):
        print(f"bench: {bench_peak} not built: no MFU column (cmake --build build --target bench_peak)",
              file=sys.stderr)
        return None
    p = subprocess.run([bench_peak, f"threads={len(os.sched_getaffinity(0))}"], env=env, capture_output=True,
                       text=True, timeout=600)
    js = last_json(p.stdout) if p.returncode == 0 else None
    return js


def cpu_info():
    model, flags = "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return model, isa


# ---------------------------------------------------------------- runners

class Bench:
    def __init__(self, args, tmp):
        self.a = args
        self.tmp = tmp
        self.fsrun = args.fsrun if args.no_snapshot else snapshot_fsrun(args.fsrun, tmp)
        self.envs = envs_to_run()
        self.cores = {}  # (impl, env) -> core name seen
        self.peak = {}  # env -> bench_peak's JSON (peak_gflops: the MFU denominator)

    def fs_train(self, name, shape, steps, env_name, env):
        out = os.path.join(self.tmp, f"{name}-{env_name}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [self.fsrun, QUICKSTART] + shape_sets(shape) + [
            "--set", f"train.steps={steps}", "--set", "generate.max_tokens=0",
            "--set", "data.val=",  # no validation pass at the last step
            "--set", f"run.out={out}"]
        js, wall = run(cmd, env, self.a.timeout)
        if js is None:
            return None
        self.cores[("fsrun", env_name)] = js.get("blas_core")
        tok = shape["batch"] * shape["seq"]
        mtps, n = fsrun_median_step(os.path.join(out, "metrics.jsonl"), tok)
        return {"tps": mtps if mtps else js["tokens_per_s"], "mean_tps": js["tokens_per_s"],
                "gflops": js.get("matmul_gflops"), "share": js.get("matmul_share"),
                "core": js.get("blas_core"), "threads": js.get("threads"), "wall": wall,
                "timed_steps": n, "ckpt": js.get("checkpoint"), "out": out}

    def torch_train(self, shape, steps, warmup, env_name, env):
        cmd = [TORCH_PY, TORCH_SCRIPT, "--threads", "1", "--grad-clip", "1.0",
               "--steps", str(steps), "--warmup", str(warmup)] + [
            f"--{k}={v}" for k, v in shape.items()]
        js, wall = run(cmd, env, self.a.timeout)
        if js is None:
            return None
        ob = js["config"].get("openblas") or {}
        core = f"{ob.get('core', '?')}/{ob.get('threads', '?')}thr"
        self.cores[("torch", env_name)] = core
        return {"tps": js["tokens_per_s"], "mean_tps": js.get("mean_tokens_per_s"), "core": core,
                "wall": wall}

    def fs_generate(self, out_dir, shape, max_tokens, env_name, env, threads=0):
        cmd = [self.fsrun, QUICKSTART] + shape_sets(shape) + [
            "--mode", "generate", "--set", f"run.out={out_dir}", "--set", f"run.threads={threads}",
            "--set", f"generate.max_tokens={max_tokens}"]
        js, wall = run(cmd, env, self.a.timeout)
        if js is None:
            return None
        return {"tps": js["tokens_per_s"], "tokens": js.get("tokens"), "wall": wall,
                "kv_bytes": js.get("kv_cache_bytes")}

    def torch_generate(self, shape, max_tokens, reps, env_name, env):
        cmd = [TORCH_PY, TORCH_SCRIPT, "--threads", "1", "--generate", str(max_tokens),
               "--gen-repeats", str(reps)] + [f"--{k}={v}" for k, v in shape.items() if k != "batch"]
        js, wall = run(cmd, env, self.a.timeout)
        if js is None:
            return None
        ob = js["config"].get("openblas") or {}
        self.cores[("torch", env_name)] = f"{ob.get('core', '?')}/{ob.get('threads', '?')}thr"
        return {"tps": js["tokens_per_s"], "tokens": js.get("tokens"), "wall": wall}

    # ------------------------------------------------------------ tables

    def train_table(self, title, name, shape, reps, fs_steps, t_steps, t_warmup):
        print(f"\n{title}")
        print(f"  fsrun: {fs_steps} steps (first untimed) per run; PyTorch: {t_warmup} warmup + "
              f"{t_steps} timed steps per run; {reps} interleaved runs each per environment")
        res = {e[0]: {"fs": [], "torch": []} for e in self.envs}
        t0, f0 = time.perf_counter(), len(FOREIGN)
        for r in range(reps):
            for env_name, _, env in self.envs:
                n0 = len(FOREIGN)
                f = self.fs_train(name, shape, fs_steps, env_name, env)
                res[env_name]["fs"].append(f)
                msg = f"  run {r + 1}/{reps} {env_name:5s}: fsrun {fmt(f and f['tps'])}"
                if not self.a.skip_torch:
                    t = self.torch_train(shape, t_steps, t_warmup, env_name, env)
                    res[env_name]["torch"].append(t)
                    msg += f"  pytorch {fmt(t and t['tps'])}"
                print(msg + " tok/s" + other_load(n0), file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t0
        self.print_train(res, shape)
        print(f"  ({elapsed:.0f} s for this table{foreign_note(f0)})", flush=True)
        return res

    def mfu(self, tps, shape, env_name):
        peak = (self.peak.get(env_name) or {}).get("peak_gflops")
        return tps * flops_per_token(shape) * 1e-9 / peak if tps and peak else None

    def print_train(self, res, shape):
        hdr = (f"  {'env':6s} {'fsrun core':11s} {'fsrun tok/s':>11s} {'(range)':>15s} "
               f"{'torch core':16s} {'torch tok/s':>11s} {'(range)':>15s} {'fs/torch':>8s} "
               f"{'pair ratios':>11s} {'mm GFLOP/s':>10s} {'mm share':>8s} {'MFU fs':>6s} {'MFU torch':>9s}")
        print(hdr)
        print("  " + "-" * (len(hdr) - 2))
        for env_name, _, _ in self.envs:
            fs = [x for x in res[env_name]["fs"] if x]
            th = [x for x in res[env_name]["torch"] if x]
            f_tps = [x["tps"] for x in fs]
            t_tps = [x["tps"] for x in th]
            fm, tm = med(f_tps), med(t_tps)
            ratio = fm / tm if fm and tm else None
            pairs = [a["tps"] / b["tps"] for a, b in zip(res[env_name]["fs"], res[env_name]["torch"])
                     if a and b]
            print(f"  {env_name:6s} {str(fs[0]['core'] if fs else '-'):11s} {fmt(fm):>11s} "
                  f"{span(f_tps):>15s} {str(th[0]['core'] if th else '-'):16s} {fmt(tm):>11s} "
                  f"{span(t_tps):>15s} {fmt(ratio, 2):>8s} {span(pairs, 2):>11s} "
                  f"{fmt(med([x['gflops'] for x in fs]), 0):>10s} {fmt(med([x['share'] for x in fs]), 2):>8s} "
                  f"{fmt(self.mfu(fm, shape, env_name), 2):>6s} {fmt(self.mfu(tm, shape, env_name), 2):>9s}")

    def gen_table(self, items, reps):
        print("\n3. Generation tokens/s, batch 1, KV cache (prompt 'And God said,' fed token by token, "
              "then sampled; tokens/s = (prompt + generated) / seconds)")
        print(f"  fsrun: --mode generate on a checkpoint trained in this bench, one generation per process, "
              f"run.threads=0 (all cores, the default) and, as 'fsrun 1thr', run.threads=1; PyTorch: same shape, random weights, KV cache, median of {self.a.gen_torch_reps} "
              f"generations after 1 warmup per process (GPT-2: 1); runs = interleaved runs per cell")
        hdr = (f"  {'graph':10s} {'env':6s} {'tokens':>6s} {'fsrun tok/s':>11s} {'(range)':>13s} "
               f"{'fsrun 1thr':>10s} {'(range)':>13s} {'torch tok/s':>11s} {'(range)':>13s} "
               f"{'fs/torch':>8s} {'pair ratios':>11s} {'fs1/torch':>9s} {'runs':>4s}")
        out = {}
        t0, f0 = time.perf_counter(), len(FOREIGN)
        for label, shape, ckpt_dirs, max_tokens, r_n, t_reps in items:
            res = {e[0]: {"fs": [], "fs1": [], "torch": []} for e in self.envs}
            for r in range(r_n):
                for env_name, _, env in self.envs:
                    n0 = len(FOREIGN)
                    f = self.fs_generate(ckpt_dirs[env_name], shape, max_tokens, env_name, env)
                    res[env_name]["fs"].append(f)
                    f1 = self.fs_generate(ckpt_dirs[env_name], shape, max_tokens, env_name, env, threads=1)
                    res[env_name]["fs1"].append(f1)
                    msg = (f"  gen {label} run {r + 1}/{r_n} {env_name:5s}: fsrun {fmt(f and f['tps'])}"
                           f"  fsrun-1thr {fmt(f1 and f1['tps'])}")
                    if not self.a.skip_torch:
                        t = self.torch_generate(shape, max_tokens, t_reps, env_name, env)
                        res[env_name]["torch"].append(t)
                        msg += f"  pytorch {fmt(t and t['tps'])}"
                    print(msg + " tok/s" + other_load(n0), file=sys.stderr, flush=True)
            out[label] = res
        print(hdr)
        print("  " + "-" * (len(hdr) - 2))
        for label, shape, _, max_tokens, r_n, _ in items:
            for env_name, _, _ in self.envs:
                fs = [x for x in out[label][env_name]["fs"] if x]
                fs1 = [x for x in out[label][env_name]["fs1"] if x]
                th = [x for x in out[label][env_name]["torch"] if x]
                fm, f1m, tm = (med([x["tps"] for x in fs]), med([x["tps"] for x in fs1]),
                               med([x["tps"] for x in th]))
                pairs = [a["tps"] / b["tps"] for a, b in
                         zip(out[label][env_name]["fs"], out[label][env_name]["torch"]) if a and b]
                print(f"  {label:10s} {env_name:6s} {str(fs[0]['tokens'] if fs else '-'):>6s} "
                      f"{fmt(fm):>11s} {span([x['tps'] for x in fs]):>13s} "
                      f"{fmt(f1m):>10s} {span([x['tps'] for x in fs1]):>13s} {fmt(tm):>11s} "
                      f"{span([x['tps'] for x in th]):>13s} "
                      f"{fmt(fm / tm if fm and tm else None, 2):>8s} {span(pairs, 2):>11s} "
                      f"{fmt(f1m / tm if f1m and tm else None, 2):>9s} {r_n:>4d}")
        print(f"  ({time.perf_counter() - t0:.0f} s for this table{foreign_note(f0)})", flush=True)
        return out


def other_load(since):
    xs = FOREIGN[since:]
    return f"  [other load {' '.join(f'{100 * x:.0f}%' for x in xs)}]" if xs else ""


def foreign_note(since):
    xs = FOREIGN[since:]
    if not xs:
        return ""
    noisy = sum(1 for x in xs if x > 0.10)
    return (f"; other work on the machine during these runs: median {100 * statistics.median(xs):.0f}%, "
            f"max {100 * max(xs):.0f}% of the cores ({noisy} of {len(xs)} runs above 10%)")


def header(b):
    model, isa = cpu_info()
    print("FastServe bench: fsrun vs PyTorch (CPU)")
    print(f"  date      {time.strftime('%Y-%m-%d %H:%M:%S')}   host {platform.node()}")
    print(f"  cpu       {model}; {os.cpu_count()} logical cores "
          f"({len(os.sched_getaffinity(0))} usable); ISA {' '.join(isa)}")
    print(f"  load avg  {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) at start; "
          "other work on the machine makes numbers noisy: compare within a row")
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "runtime"],
                               capture_output=True, text=True).stdout.strip()
        print(f"  source    commit {rev or '?'}{' + uncommitted changes in runtime/' if dirty else ''}")
    except OSError:
        pass
    print(f"  fsrun     {b.a.fsrun}" + ("" if b.a.no_snapshot else f" (run from a copy: {b.fsrun})"))
    for env_name, desc, env in b.envs:
        p = subprocess.run([b.fsrun, "--version"], env=env, capture_output=True, text=True)
        blas = next((l for l in p.stdout.splitlines() if l.startswith("BLAS")), "BLAS: ?")
        print(f"  env {env_name:5s} {desc}\n            fsrun {blas}")
        b.peak[env_name] = sgemm_peak(os.path.join(os.path.dirname(os.path.abspath(b.a.fsrun)), "bench",
                                                   "bench_peak"), env)
        pk = b.peak[env_name]
        if pk:
            print(f"            sgemm peak {pk['peak_gflops']:.0f} GFLOP/s measured ({pk['threads']} threads, "
                  f"{pk['core']}; by size {', '.join(f'{k}: {v:.0f}' for k, v in pk['sizes'].items())})")
    if not b.a.skip_torch:
        print(f"  pytorch   {TORCH_PY} bench/torch_gpt.py --threads 1 (torch 1 intra-op thread; "
              "its OpenBLAS keeps its default thread count), float32 eager, AdamW, grad clip 1.0", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    ap.add_argument("--skip-torch", action="store_true", help="fsrun only")
    ap.add_argument("--skip-gpt2", action="store_true", help="skip the GPT-2-small-shaped graph")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved runs per cell, quickstart tables")
    ap.add_argument("--gpt2-repeats", type=int, default=None, help="interleaved runs per cell, GPT-2 tables")
    ap.add_argument("--gen-torch-reps", type=int, default=3, help="timed generations per PyTorch process")
    ap.add_argument("--fsrun", default=os.path.join(ROOT, "build", "fsrun"))
    ap.add_argument("--no-snapshot", action="store_true", help="run build/fsrun in place, not a copy")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per process")
    ap.add_argument("--json", metavar="FILE", help="also write every raw measurement here")
    ap.add_argument("--tables", default="1,2,3", help="which tables to run, e.g. 1,3 (default 1,2,3)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each run wait up to S s for other work on the machine to stop "
                         "(below 10%% of the cores); 0 = do not wait (default)")
    a = ap.parse_args()
    WAIT_IDLE["max_s"] = a.wait_idle
    tables = {t.strip() for t in a.tables.split(",")}
    if not os.access(a.fsrun, os.X_OK):
        sys.exit(f"bench: {a.fsrun} not found: build first (cmake -S . -B build && cmake --build build -j2)")
    if not a.skip_torch:
        ok = subprocess.run([TORCH_PY, "-c", "import torch"], capture_output=True).returncode == 0 \
            if os.path.exists(TORCH_PY) else False
        if not ok:
            print(f"bench: torch is not importable from {TORCH_PY}: PyTorch columns skipped", file=sys.stderr)
            a.skip_torch = True
    R = a.repeats or (2 if a.quick else 3)
    RG = a.gpt2_repeats or (1 if a.quick else 2)
    qs_fs_steps, qs_t_steps, qs_t_warm = (5, 4, 1) if a.quick else (12, 10, 2)
    g_fs_steps, g_t_steps, g_t_warm = (2, 1, 1) if a.quick else (3, 2, 1)
    gen_reps = 3 if a.quick else 5

    # a kill removes the temporary directory (checkpoints of up to 1 GB) too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fsbench-") as tmp:
        b = Bench(a, tmp)
        header(b)
        raw = {}
        if "1" in tables:
            raw["quickstart"] = b.train_table(
                "1. Training tokens/s, quickstart.ini (L=4 H=4 C=256 T=256 B=8, 3.3M params, AdamW, clip 1.0)",
                "qs", QS, R, qs_fs_steps, qs_t_steps, qs_t_warm)
        if not a.skip_gpt2 and "2" in tables:
            raw["gpt2"] = b.train_table(
                "2. Training tokens/s, GPT-2-small shape (L=12 H=12 C=768 T=1024 B=2, vocab 256, 86M params)",
                "gpt2", GPT2, RG, g_fs_steps, g_t_steps, g_t_warm)
        if "3" in tables:
            # checkpoints to generate from (training not timed): quickstart 30 steps; the GPT-2
            # shape reuses table 2's checkpoints, or trains 1 step when table 2 did not run
            env0 = b.envs[0][2]
            qs_dir = os.path.join(tmp, "gen-qs")
            run([b.fsrun, QUICKSTART, "--set", "train.steps=30", "--set", "generate.max_tokens=0",
                 "--set", "data.val=", "--set", f"run.out={qs_dir}"], env0, a.timeout)
            items = [("quickstart", QS, {e: qs_dir for e, _, _ in b.envs}, 200, gen_reps, a.gen_torch_reps)]
            if not a.skip_gpt2:
                g = {e: os.path.join(tmp, f"gpt2-{e}") for e, _, _ in b.envs}
                for e, d in g.items():
                    if not os.path.exists(os.path.join(d, "model.safetensors")):
                        run([b.fsrun, QUICKSTART] + shape_sets(GPT2) + [
                            "--set", "train.steps=1", "--set", "generate.max_tokens=0", "--set", "data.val=",
                            "--set", f"run.out={d}"], env0, a.timeout)
                items.append(("gpt2-small", GPT2, g, 200, RG, 1))
            raw["generate"] = b.gen_table(items, gen_reps)
        print("\nColumns: tok/s = median over runs of each run's tokens/s (fsrun: batch*T / median step time, "
              "recovered from metrics.jsonl; PyTorch: batch*T / median step time); (range) = min-max over "
              "runs; fs/torch = ratio of the medians (>1: fsrun faster); pair ratios = min-max of fsrun/"
              "PyTorch over the runs measured next to each other; mm GFLOP/s and mm share = fsrun's "
              "matmul_gflops and matmul_share (median over runs): sgemm FLOP/s achieved and the share of "
              "training step time inside sgemm; MFU = model FLOP/s (tok/s x 6 x product weights + 6 L C T "
              "per token, as llm.c counts) / the sgemm peak measured at the start (bench_peak; the issue's "
              "goal on the GPT-2-small shape: 0.60).")
        print(f"load avg at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"total {time.perf_counter() - t_start:.0f} s"
              + (f", of which {WAIT_IDLE['waited_s']:.0f} s waiting for the machine to be idle"
                 if a.wait_idle else ""))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"cores": {f"{k[0]}/{k[1]}": v for k, v in b.cores.items()}, "sgemm_peak": b.peak,
                       "results": raw}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
