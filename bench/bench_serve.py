#!/usr/bin/env python3
"""bench_serve.py — serving under load: fsrun --mode serve with the fcfs and
mlfq schedulers side by side, and llama.cpp's llama-server (continuous
batching, 16 slots) on the same weights converted to GGUF, driven by the
same traces (bench/serve_loadgen.py). Prints tables; asserts nothing.

Tables (all servers up at once, idle but the one measured; each point runs
them in turn, A B C, so load from other work on the machine spreads over
all of them):

  1. closed loop: C clients each sending greedy 64-token requests back to
     back (C = 1, 16, 32): output tokens/s (the issue's goals: 32 streams
     against one; llama-server at 16)
  2. open loop: Poisson arrivals, heavy-tailed output lengths (Pareto 1.5
     from 8 tokens), at several rates (by default fractions of fcfs's
     16-client request rate): tokens/s, TTFT p50/p99, ITL p50/p99,
     end-to-end mean and p99
  3. the same trace behind a shared system prompt, for fsrun: prompt tokens
     sent against prompt tokens computed and the prefix-cache hits, from
     /metrics (full shared blocks are prefilled once)

    python3 bench/bench_serve.py                      # conf/quickstart.ini (trained first if needed)
    python3 bench/bench_serve.py --quick              # fewer requests and rates
    python3 bench/bench_serve.py --rates 2,4,8 --requests 80 --json out.json
    python3 bench/bench_serve.py --shape gpt2 --quick --tables closed   # the GPT-2-small shape, C = 1, 16
    python3 bench/bench_serve.py --max-running 16 --tables open --rates 20,40   # requests queue for slots
    python3 bench/bench_serve.py --schedulers fcfs --kv-dtypes f32,bf16 --tables closed --no-peer   # bf16 KV
    python3 bench/bench_serve.py --devices cpu,cuda --schedulers fcfs --tables closed --no-peer   # GPU vs CPU
    LLAMACPP_DIR=... python3 bench/bench_serve.py --peer-dir DIR   # bench/llamacpp's peer.py elsewhere

The peer needs bench/llamacpp/ (build.sh builds llama.cpp into
build/llamacpp; peer.py converts checkpoints with to_gguf.py); without it
the llama-server columns are left out, saying why. Loopback only; every
run is bounded in requests and seconds.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench as B  # noqa: E402
import serve_loadgen as lg  # noqa: E402

SHARED = ("You are a careful reader of the King James Bible. Answer with the words of the text itself, "
          "briefly. ")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, path, timeout=5):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


class Fsrun:
    def __init__(self, fsrun, graph, scheduler, threads, max_running=32, sets=()):
        self.name = "fsrun " + scheduler
        self.model = os.path.splitext(os.path.basename(graph))[0]
        self.extra = {}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([fsrun, graph, "--mode", "serve", "--set", "serve.port=0", "--set",
                                      "serve.scheduler=" + scheduler, "--set", "serve.max_running=%d" % max_running, "--set",
                                      "run.threads=%d" % threads] + list(sets), stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r":(\d+)/v1 ", line)
        if not m:
            self.log.seek(0)
            raise SystemExit("fsrun did not start: %s %s" % (line, self.log.read()[-500:]))
        self.port = int(m.group(1))

    def metrics(self):
        out = {}
        for line in get(self.port, "/metrics")[1].splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


class LlamaServer:
    def __init__(self, peer, gguf, context, threads):
        self.name = "llama-server"
        self.model = None
        self.extra = {"ignore_eos": True}  # exact lengths, as fsrun's byte model (no end-of-text token)
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        binary = os.path.join(peer.BIN, "llama-server")
        env = dict(os.environ, LD_LIBRARY_PATH=peer.BIN)
        # 16 slots of the model's context, f32 KV cache and no flash attention (fsrun's cache is f32;
        # peer.py's docstring says why flash attention is off with it)
        self.proc = subprocess.Popen([binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(self.port),
                                      "--parallel", "16", "--cont-batching", "-c", str(16 * context), "-t",
                                      str(threads), "-tb", str(threads), "-ctk", "f32", "-ctv", "f32", "-fa", "off",
                                      "--no-warmup"], stdout=self.log, stderr=self.log, env=env)
        end = time.time() + 120
        while time.time() < end:
            try:
                if get(self.port, "/health")[0] == 200:
                    return
            except Exception:
                time.sleep(0.2)
            if self.proc.poll() is not None:
                break
        self.log.seek(0)
        raise RuntimeError("llama-server did not start: " + self.log.read()[-800:].decode("utf-8", "replace"))

    def metrics(self):
        return {}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def run(server, reqs, concurrency=0, time_limit=600):
    if concurrency:
        asyncio.run(lg.closed_loop("127.0.0.1", server.port, reqs, concurrency, server.model, server.extra,
                                   time_limit))
    else:
        asyncio.run(lg.replay("127.0.0.1", server.port, reqs, server.model, server.extra, time_limit))
    return lg.summarize(reqs)


def fixed(n, tokens, prompts, seed=1):
    import random
    rng = random.Random(seed)
    return [lg.Request(0, rng.choice(prompts), tokens) for _ in range(n)]


# The GPT-2-small shape (86 M parameters with the byte vocabulary), one
# training step from the quickstart graph: its speed does not depend on
# how well it is trained (the requests ask for exact lengths).
GPT2_SETS = B.shape_sets(B.GPT2)


def ensure_checkpoint(fsrun, graph, shape, tmp):
    """(checkpoint, context, val text, the --set arguments that serve it)."""
    import configparser
    cp = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    cp.read(graph)
    val = cp.get("data", "val", fallback="data/kjv/val.txt")
    if shape == "gpt2":
        out = os.path.join(tmp, "gpt2")
        sets = GPT2_SETS + ["--set", "run.out=" + out]
        print("bench_serve: one training step of the GPT-2-small shape into %s" % out, file=sys.stderr)
        subprocess.run([fsrun, graph] + sets + ["--set", "train.steps=1", "--set", "generate.max_tokens=0", "--set",
                                                "data.val="], check=True, stdout=subprocess.DEVNULL)
        return os.path.join(out, "model.safetensors"), B.GPT2["seq"], val, sets
    out = cp.get("run", "out", fallback="runs/quickstart")
    ckpt = os.path.join(out, "model.safetensors")
    if not os.path.exists(ckpt):
        print("bench_serve: training %s first (%s is missing)" % (graph, ckpt), file=sys.stderr)
        subprocess.run([fsrun, graph], check=True, stdout=subprocess.DEVNULL)
    return ckpt, int(cp.get("model", "max_seq", fallback="256")), val, []


def start_peer(args, ckpt, context, tmp):
    sys.path.insert(0, args.peer_dir)
    try:
        import peer
    except ImportError:
        return None, "no %s/peer.py (bench/llamacpp/ comes with the speed work): llama-server left out" % args.peer_dir
    why = peer.available() or (None if os.access(os.path.join(peer.BIN, "llama-server"), os.X_OK)
                               else "llama-server not built: run bench/llamacpp/build.sh")
    if why:
        return None, why
    gguf = peer.to_gguf(os.path.abspath(ckpt), os.path.join(tmp, "model.gguf"))
    return LlamaServer(peer, gguf, context, args.threads), None


def fmt(x, scale=1.0, digits=1):
    return "-" if x is None or x != x else ("%.*f" % (digits, x * scale))


def table_closed(servers, prompts, levels, per_client, results):
    print("\n### Closed loop: C clients, greedy 64-token requests back to back (output tokens/s)\n")
    print("| C | " + " | ".join(s.name for s in servers) + " |")
    print("|---|" + "---|" * len(servers))
    for c in levels:
        row = []
        for s in servers:
            r = run(s, fixed(c * per_client, 64, prompts, seed=c), concurrency=c)
            results.append({"table": "closed", "server": s.name, "concurrency": c, **r})
            row.append(fmt(r.get("tokens_per_s")) + (" (%d failed)" % r["failed"] if r.get("failed") else ""))
        print("| %d | %s |" % (c, " | ".join(row)), flush=True)


COLS = "tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | e2e mean s | e2e p99 s"


def open_row(r):
    return " | ".join([fmt(r.get("tokens_per_s")), fmt(r.get("ttft_p50"), 1e3), fmt(r.get("ttft_p99"), 1e3),
                       fmt(r.get("itl_p50"), 1e3, 2), fmt(r.get("itl_p99"), 1e3, 2), fmt(r.get("e2e_mean"), 1, 2),
                       fmt(r.get("e2e_p99"), 1, 2)])


def table_open(servers, prompts, context, rates, n, results, seed):
    print("\n### Open loop: Poisson arrivals, Pareto(1.5) output lengths from 8 tokens, %d requests a rate\n" % n)
    # unloaded: the same trace one request at a time (what "x unloaded" divides by)
    alone = {}
    for s in servers:
        alone[s.name] = run(s, lg.make_trace(n, 1.0, seed, prompts, context), concurrency=1)
        results.append({"table": "open", "server": s.name, "rate": 0, **alone[s.name]})
    print("| rate req/s | server | " + COLS + " | e2e mean x unloaded | failed |")
    print("|---|---|" + "---|" * 9)
    for s in servers:
        print("| alone | %s | %s | 1.0 | %d |" % (s.name, open_row(alone[s.name]), alone[s.name].get("failed", 0)))
    for rate in rates:
        for s in servers:
            reqs = lg.make_trace(n, rate, seed, prompts, context)
            r = run(s, reqs)
            results.append({"table": "open", "server": s.name, "rate": rate, **r})
            print("| %.2f | %s | %s | %s | %d |" % (rate, s.name, open_row(r),
                                                 fmt(r.get("e2e_mean", 0) / alone[s.name].get("e2e_mean", 0)
                                                     if alone[s.name].get("e2e_mean") else None),
                                                 r.get("failed", 0)), flush=True)


def table_prefix(servers, prompts, context, rate, n, results, seed):
    print("\n### Shared system prompt (%d bytes) before every prompt, %.2f req/s, %d requests\n" % (len(SHARED), rate, n))
    print("| server | " + COLS + " | prompt tokens sent | computed | prefix-cache hits / lookups |")
    print("|---|" + "---|" * 10)
    for s in servers:
        reqs = lg.make_trace(n, rate, seed, prompts, context, shared=SHARED)
        before = s.metrics()
        r = run(s, reqs)
        after = s.metrics()
        sent = sum(len(q.prompt.encode()) for q in reqs if not q.error)

        def d(k):
            return after.get(k, 0) - before.get(k, 0) if after else None

        computed, hits, looks = (d("fastserve_prompt_tokens_computed_total"), d("fastserve_prefix_cache_hits_total"),
                                 d("fastserve_prefix_cache_lookups_total"))
        results.append({"table": "prefix", "server": s.name, "rate": rate, "prompt_sent": sent,
                        "prompt_computed": computed, "prefix_hits": hits, "prefix_lookups": looks, **r})
        print("| %s | %s | %d | %s | %s |" % (s.name, open_row(r), sent, "-" if computed is None else "%d" % computed,
                                              "-" if hits is None else "%d / %d" % (hits, looks)), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--graph", default=os.path.join(ROOT, "conf", "quickstart.ini"))
    ap.add_argument("--fsrun", default=os.path.join(ROOT, "build", "fsrun"))
    ap.add_argument("--schedulers", default="fcfs,mlfq")
    ap.add_argument("--kv-dtypes", default="f32", help="fsrun's [generate] kv_dtype, comma-separated: one server "
                    "per scheduler and dtype (f32,bf16 compares bf16 keys and values with f32's)")
    ap.add_argument("--shape", choices=("quickstart", "gpt2"), default="quickstart",
                    help="gpt2: the GPT-2-small shape (one training step of --graph with its sizes set)")
    ap.add_argument("--peer-dir", default=os.path.join(HERE, "llamacpp"), help="where bench/llamacpp's peer.py is")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-running", type=int, default=32, help="fsrun's [serve] max_running (llama-server: 16 "
                                                                  "slots); below the load's concurrency, requests "
                                                                  "queue for a slot and the schedulers differ most")
    ap.add_argument("--rates", default="auto", help="requests/s, comma-separated (auto: 0.3, 0.6, 0.9 and 1.2 "
                                                    "of fcfs's 16-client request rate)")
    ap.add_argument("--requests", type=int, default=60, help="requests per open-loop point")
    ap.add_argument("--quick", action="store_true", help="C = 1, 16; 2 rates; 30 requests")
    ap.add_argument("--tables", default="closed,open,prefix", help="which tables (closed runs anyway when "
                                                                     "--rates is auto: the rates come from it)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="raw numbers to this file")
    ap.add_argument("--devices", default="", help="fsrun's [run] device, comma-separated: one server per device "
                    "(cpu, cuda, cuda:N; default: the graph's own)")
    ap.add_argument("--prompts", help="text the prompts are cut from (default: the graph's [data] val)")
    a = ap.parse_args()
    os.chdir(ROOT)
    results, servers, tmp = [], [], tempfile.mkdtemp(prefix="bench_serve_")
    ckpt, context, val, sets = ensure_checkpoint(a.fsrun, a.graph, a.shape, tmp)
    prompts = lg.prompts_from(a.prompts or val, 20, 60)
    try:
        kvs = a.kv_dtypes.split(",")
        devices = [d for d in a.devices.split(",") if d] or [None]
        for sched in a.schedulers.split(","):
            for kv in kvs:
                for dev in devices:
                    server = Fsrun(a.fsrun, a.graph, sched, a.threads, a.max_running,
                                   list(sets) + ["--set", "generate.kv_dtype=" + kv] +
                                   (["--set", "run.device=" + dev] if dev else []))
                    server.name += (" kv " + kv if len(kvs) > 1 else "") + (" " + dev if dev else "")
                    servers.append(server)
        if not a.no_peer:
            peer, why = start_peer(a, ckpt, context, tmp)
            if peer:
                servers.append(peer)
            else:
                print("bench_serve: " + why, file=sys.stderr)
        print("servers: " + ", ".join(s.name for s in servers) + "; model %s (%s shape); %d threads each; fsrun "
              "max_running %d; shared machine: figures are provisional" % (a.graph, a.shape, a.threads, a.max_running))
        levels = [1, 16] if a.quick else [1, 16, 32]
        tables = set(a.tables.split(","))
        if "closed" in tables or a.rates == "auto":
            table_closed(servers, prompts, levels, 2 if a.quick else 4, results)
        if a.rates == "auto":
            fc = next(r for r in results if r["table"] == "closed" and r["concurrency"] == 16)
            req_rate = fc["tokens_per_s"] / 64.0  # requests/s of 64 tokens at 16 clients
            mean_out = sum(q.max_tokens for q in lg.make_trace(2000, 1, a.seed, prompts, context)) / 2000
            full = req_rate * 64.0 / mean_out  # the open-loop trace's request rate at that throughput
            rates = [round(full * f, 2) for f in ((0.5, 1.0) if a.quick else (0.3, 0.6, 0.9, 1.2))]
        else:
            rates = [float(x) for x in a.rates.split(",")]
        n = 30 if a.quick else a.requests
        if "open" in tables:
            table_open(servers, prompts, context, rates, n, results, a.seed)
        if "prefix" in tables:
            table_prefix([s for s in servers if isinstance(s, Fsrun)], prompts, context, rates[len(rates) // 2], n,
                         results, a.seed)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the GGUF and, with --shape gpt2, a 1 GB checkpoint
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
