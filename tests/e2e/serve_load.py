"""serve_load.py — the server under concurrent load, over HTTP: 24
concurrent greedy requests of mixed lengths (streamed and not) give exactly
what each gives alone; a client that disconnects, streaming or waiting for
a whole answer, has its request cancelled and its KV blocks back (from
/metrics); a full queue answers 429 with Retry-After; SIGTERM under load
answers new requests 503, lets the running ones finish and exits 0, and
past shutdown_grace_s ends them with an error event and still exits 0.

Run by test_serve_load.sh in a directory holding l.ini (longformer
attention, so a request may run past max_seq: long streams to cancel) and
its checkpoint. Sizes follow the server's measured speed, so a sanitizer
build takes as long as a release one."""
import json
import signal
import socket
import threading
import time

from serve_util import ASAN, Checks, Server, generate, sse_events

ck = Checks("serve_load")
CANCELLED = 'fastserve_requests_finished_total{reason="cancelled"}'
PROMPTS = ["The ", "A dog sat on the mat. ", "Our teacher walked to the river", "x", "The old man found",
           "My sister ran past the gate. The king waited by the sea. ", "a bird", "The farmer carried an apple"]


def complete(srv, prompt, n, stream=False, logprobs=None):
    """The text of a greedy request (and its finish_reason)."""
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": stream}
    if logprobs is not None:
        body["logprobs"] = logprobs
    c = srv.conn(timeout=600)
    try:
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return "<status %d: %s>" % (r.status, r.read()[:200]), None
        if not stream:
            ch = json.loads(r.read())["choices"][0]
            return ch["text"], ch["finish_reason"]
        text, reason = "", None
        for data in sse_events(r):
            if data == "[DONE]":
                break
            ch = json.loads(data)["choices"][0]
            text += ch["text"]
            reason = ch["finish_reason"] or reason
        return text, reason
    finally:
        c.close()


def check_batching(srv, *sets, what=""):
    """Mixed lengths, some past max_seq (64), run together and alone; `sets`
    are the server's --set arguments that --mode generate must share."""
    jobs = [(PROMPTS[i % len(PROMPTS)], [1, 2, 5, 9, 17, 33, 70, 150][i % 8] + i, i % 3 == 0, 2 if i % 4 == 1 else None)
            for i in range(24)]
    solo = [complete(srv, p, n, False, lp) for p, n, _, lp in jobs]
    ck.ok(all(r == "length" for _, r in solo), what + "alone: every request runs to max_tokens")
    for i in (7, 23):
        p, n = jobs[i][0], jobs[i][1]
        raw, _ = generate("l.ini", p, n, "generate.temperature=0", *sets)
        ck.eq(solo[i][0], raw.decode("utf-8", "replace"), what + "alone: %d tokens of %r as --mode generate" % (n, p))
    together = [None] * len(jobs)
    go = threading.Barrier(len(jobs))

    def run(i):
        p, n, stream, lp = jobs[i]
        go.wait()
        together[i] = complete(srv, p, n, stream, lp)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    rate = sum(n for _, n, _, _ in jobs) / (time.time() - t0)
    bad = [i for i in range(len(jobs)) if together[i] != solo[i]]
    ck.ok(not bad, what + "24 concurrent greedy requests (8 streamed, 6 with logprobs) give exactly their solo "
          "outputs", ["%d: %r vs %r" % (i, together[i], solo[i]) for i in bad[:3]])
    ck.eq(srv.wait_metric("fastserve_kv_blocks_used", lambda v: v == 0), 0, what + "every KV block back after the batch")
    return rate


def open_stream(srv, n, stream=True):
    """A raw socket with a long greedy request sent; the caller reads or closes."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    body = json.dumps({"prompt": "The ", "max_tokens": n, "temperature": 0, "stream": stream}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def check_cancel(srv, rate):
    n = int(max(rate, 100) * 30)  # far more than the test waits for
    for stream in (True, False):
        what = "a streaming client" if stream else "a client waiting for a whole answer"
        before = srv.metrics()
        s = open_stream(srv, n, stream)
        if stream:
            got = b""
            while got.count(b"data: ") < 3:
                got += s.recv(4096)
        else:
            srv.wait_metric("fastserve_requests_running", lambda v: v == 1)
            time.sleep(0.2)
        busy = srv.metrics()
        ck.ok(busy["fastserve_kv_blocks_used"] > 0, what + ": its request holds KV blocks while it runs")
        s.close()
        t0 = time.time()
        c = srv.wait_metric(CANCELLED, lambda v: v == before.get(CANCELLED, 0) + 1)
        ck.eq(c, before.get(CANCELLED, 0) + 1, what + " that disconnects: its request is cancelled")
        ck.eq(srv.wait_metric("fastserve_kv_blocks_used", lambda v: v == 0), 0, what + ": its KV blocks are back")
        print("     (cancelled and freed %.3f s after the disconnect)" % (time.time() - t0))
        out = srv.metrics()["fastserve_generation_tokens_total"] - before["fastserve_generation_tokens_total"]
        ck.ok(out < n / 2, what + ": it stopped generating (%d of %d tokens)" % (out, n))


def check_queue_full(rate):
    # fcfs: the second request waits behind the first (mlfq would let it
    # preempt the first once that one is demoted, leaving the queue empty)
    srv = Server("l.ini", "serve.scheduler=fcfs", "serve.max_running=1", "serve.max_queue=1",
                 "serve.max_tokens_limit=10000000", log="server_q")
    try:
        n = int(max(rate, 100) * 30)
        a = open_stream(srv, n)
        srv.wait_metric("fastserve_requests_running", lambda v: v == 1)
        b = open_stream(srv, n)
        srv.wait_metric("fastserve_requests_waiting", lambda v: v == 1)
        status, headers, body = srv.request("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 1}))
        ck.eq(status, 429, "a full queue ([serve] max_queue = 1): 429")
        ck.eq(headers.get("retry-after"), "1", "429 with Retry-After")
        ck.eq(json.loads(body)["error"].get("code"), "queue_full", "429's error object says the queue is full")
        a.close()
        b.close()
        ck.eq(srv.wait_metric("fastserve_kv_blocks_used", lambda v: v == 0), 0, "both cancelled: every block back")
        status, _, _ = srv.request("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 1}))
        ck.eq(status, 200, "with room again: 200")
    finally:
        ck.eq(srv.stop(), 0, "that server exits 0 on SIGTERM")


def stream_all(srv, n, results, i, started):
    """Reads a whole stream: (text length, finish_reason, error code)."""
    s = open_stream(srv, n)
    f = s.makefile("rb")
    status = f.readline()
    started.release()
    text, reason, error = "", None, None
    try:
        while True:
            line = f.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                data = line[6:].strip().decode("utf-8")
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    error = obj["error"]["code"]
                else:
                    text += obj["choices"][0]["text"]
                    reason = obj["choices"][0]["finish_reason"] or reason
    finally:
        s.close()
    results[i] = (status.split()[1:2], len(text), reason, error)


def check_shutdown(rate, grace, n, k, want_reason, want_error, what):
    srv = Server("l.ini", "serve.shutdown_grace_s=%g" % grace, "serve.max_tokens_limit=10000000", log="server_" + what)
    results = [None] * k
    started = threading.Semaphore(0)
    threads = [threading.Thread(target=stream_all, args=(srv, n, results, i, started)) for i in range(k)]
    for t in threads:
        t.start()
    for _ in range(k):
        started.acquire()
    srv.wait_metric("fastserve_generation_tokens_total", lambda v: v >= k)
    t0 = time.time()
    srv.send(signal.SIGTERM)
    end = time.time() + 30
    while "stopping:" not in srv.stderr() and time.time() < end:
        time.sleep(0.01)
    status, headers, body = srv.request("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 1}))
    ck.eq(status, 503, what + ": a new request while draining gets 503")
    ck.eq(json.loads(body)["error"].get("code"), "shutting_down", what + ": ... saying the server is shutting down")
    for t in threads:
        t.join(600)
    code = srv.stop(None)
    ck.eq(code, 0, what + ": exit 0 after SIGTERM under load (%.1f s)" % (time.time() - t0))
    ck.ok(all(r and r[0] == [b"200"] and r[2] == want_reason and r[3] == want_error for r in results),
          what + ": every stream ends with finish_reason %s, error %s" % (want_reason, want_error), results)
    if want_reason:
        ck.ok(all(r[1] == n for r in results), what + ": ... with all %d tokens" % n)
    return srv.summary()


def main():
    srv = Server("l.ini", "serve.max_running=8", "serve.max_tokens_limit=10000000")
    try:
        blocks_f32 = srv.metrics()["fastserve_kv_blocks_total"]
        rate = check_batching(srv)
        print("     (%.0f tokens/s alone)" % rate)
        check_cancel(srv, rate)
    finally:
        ck.eq(srv.stop(), 0, "SIGTERM: exit 0")
    # bf16 keys and values ([generate] kv_dtype): the same guarantees
    bf16 = "generate.kv_dtype=bf16"
    srv = Server("l.ini", "serve.max_running=8", "serve.max_tokens_limit=10000000", bf16, log="server_bf16")
    try:
        ck.eq(srv.metrics()["fastserve_kv_blocks_total"], 2 * blocks_f32,
              "kv bf16: the same kv_cache_mb holds twice the blocks")
        check_batching(srv, bf16, what="kv bf16: ")
    finally:
        ck.eq(srv.stop(), 0, "kv bf16: SIGTERM: exit 0")
    check_queue_full(rate)
    # 8 streams that need about 3 s together: all finish within the grace period
    n = max(int(rate * 3 / 8), 200)
    s = check_shutdown(rate, 30, n, 8, "length", None, "drain")
    ck.eq(s.get("shut_down"), 0, "drain: no request was cut")
    # 4 streams that would need minutes: cut at the end of a 0.5 s grace period
    s = check_shutdown(rate, 0.5, int(max(rate, 100) * 120), 4, None, "shutting_down", "grace")
    ck.eq(s.get("shut_down"), 4, "grace: the engine ended all 4 (FS_FINISH_SHUTDOWN)")
    ck.finish()


main()
