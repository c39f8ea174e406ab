#!/usr/bin/env python3
"""serve_loadgen.py — a load generator for OpenAI-compatible servers
(fsrun --mode serve, llama.cpp's llama-server, ...): it makes a trace and
replays it, streaming every request, and measures what clients see.

The trace: Poisson arrivals at a given rate (exponential gaps), prompts
drawn from a text file's lines, output lengths heavy-tailed (Pareto with
shape alpha, from out_min up, capped so prompt plus output fit the
context), optionally every prompt behind one shared system prompt. The
same seed gives the same trace, so servers and schedulers are compared on
identical work. A closed-loop mode keeps C requests in flight instead.

Measured per request, from the client: time to first token (TTFT), the gaps
between streamed tokens (inter-token latency, ITL), end-to-end latency;
overall, output tokens per second from the first send to the last byte.
Requests ask for exact lengths (greedy; "ignore_eos" for servers with an
end-of-text token), so every server does the same work.

Standard library only: asyncio with a small HTTP/1.1 client (chunked
transfer, server-sent events). Loopback servers only; every run is bounded
in requests and time.

    python3 bench/serve_loadgen.py --port 8080 --rate 4 --requests 50 --text data/kjv/val.txt
"""
import argparse
import asyncio
import json
import math
import random
import time


class Request:
    def __init__(self, at, prompt, max_tokens):
        self.at, self.prompt, self.max_tokens = at, prompt, max_tokens
        self.sent = self.first = self.end = None
        self.times = []  # arrival of each streamed piece of text
        self.tokens = 0
        self.error = None


def prompts_from(path, lo=20, hi=80, limit=5000):
    """Lines of a text file between lo and hi bytes (ASCII), as prompts."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if lo <= len(line.encode()) <= hi and line.isascii():
                out.append(line + " ")
                if len(out) >= limit:
                    break
    if not out:
        raise SystemExit("no usable prompts in %s" % path)
    return out


def make_trace(n, rate, seed, prompts, context, out_min=8, alpha=1.5, out_max=None, shared=""):
    """n requests: Poisson arrivals at `rate`/s, Pareto(alpha) output lengths
    from out_min, prompt + output within `context` byte tokens."""
    rng = random.Random(seed)
    t, reqs = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate) if rate > 0 else 0.0
        prompt = shared + rng.choice(prompts)
        room = context - len(prompt.encode()) - 1
        want = int(out_min * (1.0 - rng.random()) ** (-1.0 / alpha))
        cap = min(room, out_max or room)
        reqs.append(Request(t, prompt, max(1, min(want, cap))))
    return reqs


async def _read_body(reader, headers):
    """Yields the body's bytes as they come (chunked or not)."""
    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            yield await reader.readexactly(size)
            await reader.readline()
    n = headers.get("content-length")
    if n is not None:
        yield await reader.readexactly(int(n))
        return
    while True:
        b = await reader.read(65536)
        if not b:
            return
        yield b


async def send(host, port, req, model, extra, path="/v1/completions"):
    body = dict({"prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0, "stream": True}, **extra)
    if model:
        body["model"] = model
    data = json.dumps(body).encode()
    req.sent = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nAccept: text/event-stream"
                     b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), host.encode(), port,
                                                                                len(data)) + data)
        await writer.drain()
        status = (await reader.readline()).split()
        headers = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip().lower()
        if len(status) < 2 or status[1] != b"200":
            req.error = "status %s" % (status[1].decode() if len(status) > 1 else "?")
        buf = b""
        async for chunk in _read_body(reader, headers):
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                now = time.perf_counter()
                for line in event.split(b"\n"):
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        continue
                    obj = json.loads(payload)
                    if "error" in obj:
                        req.error = obj["error"].get("message", "error")
                        continue
                    ch = (obj.get("choices") or [{}])[0]
                    text = ch.get("text") or (ch.get("delta") or {}).get("content") or ""
                    if text:
                        req.times.append(now)
                        req.first = req.first or now
                    usage = obj.get("usage")
                    if usage and usage.get("completion_tokens"):
                        req.tokens = usage["completion_tokens"]
        writer.close()
    except Exception as e:  # counted, never fatal
        req.error = "%s: %s" % (type(e).__name__, e)
    req.end = time.perf_counter()
    if not req.tokens:
        req.tokens = len(req.times)


async def replay(host, port, reqs, model=None, extra=None, time_limit=600):
    """Sends each request at its arrival time; waits for all (bounded)."""
    extra = extra or {}
    start = time.perf_counter()

    async def one(r):
        delay = r.at - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        await send(host, port, r, model, extra)

    tasks = [asyncio.ensure_future(one(r)) for r in reqs]
    done, pending = await asyncio.wait(tasks, timeout=time_limit)
    for t in pending:
        t.cancel()
    for r in reqs:
        if r.end is None:
            r.error = r.error or "not finished within %g s" % time_limit
    return reqs


async def closed_loop(host, port, reqs, concurrency, model=None, extra=None, time_limit=600):
    """concurrency clients, each sending its next request when the last ends."""
    extra = extra or {}
    queue = list(reversed(reqs))

    async def client():
        while queue:
            await send(host, port, queue.pop(), model, extra)

    await asyncio.wait([asyncio.ensure_future(client()) for _ in range(concurrency)], timeout=time_limit)
    for r in reqs:
        if r.end is None:
            r.error = r.error or "not finished within %g s" % time_limit
    return reqs


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(reqs):
    ok = [r for r in reqs if not r.error and r.first]
    if not ok:
        return {"requests": len(reqs), "failed": len(reqs)}
    ttft = [r.first - r.sent for r in ok]
    itl = [b - a for r in ok for a, b in zip(r.times, r.times[1:])]
    e2e = [r.end - r.sent for r in ok]
    span = max(r.end for r in ok) - min(r.sent for r in ok)
    return {
        "requests": len(reqs),
        "failed": len(reqs) - len(ok),
        "errors": sorted({r.error for r in reqs if r.error})[:3],
        "output_tokens": sum(r.tokens for r in ok),
        "tokens_per_s": sum(r.tokens for r in ok) / span if span > 0 else float("nan"),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50),
        "itl_p99": percentile(itl, 99),
        "e2e_mean": sum(e2e) / len(e2e),
        "e2e_p99": percentile(e2e, 99),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="a loopback address")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--text", required=True, help="a text file whose lines become prompts")
    ap.add_argument("--rate", type=float, default=4, help="requests per second (Poisson); 0 = all at once")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=0, help="closed loop with this many clients instead")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--out-min", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=1.5)
    ap.add_argument("--shared-prefix", default="", help="a system prompt every request starts with")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=600)
    a = ap.parse_args()
    if not (a.host.startswith("127.") or a.host in ("localhost", "::1")):
        raise SystemExit("loopback servers only")
    reqs = make_trace(a.requests, a.rate, a.seed, prompts_from(a.text), a.context, a.out_min, a.alpha,
                      shared=a.shared_prefix)
    if a.concurrency:
        asyncio.run(closed_loop(a.host, a.port, reqs, a.concurrency, a.model, time_limit=a.time_limit))
    else:
        asyncio.run(replay(a.host, a.port, reqs, a.model, time_limit=a.time_limit))
    print(json.dumps(summarize(reqs), indent=1))


if __name__ == "__main__":
    main()
