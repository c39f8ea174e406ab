"""serve_soak.py — many small requests through concurrent keep-alive
clients: every one answered 200 with its tokens, then every KV block back
in the pool, no request left running, the counters agreeing with the count,
and the server's resident memory flat between the end of a warm-up and the
end (growth per request would show as megabytes here).

10,000 requests in a release build; under AddressSanitizer (whose freed
memory sits in a quarantine, so its RSS says nothing about leaks, and which
is ~10x slower) 1,500, with LeakSanitizer checking at exit instead."""
import http.client
import json
import random
import threading
import time

from serve_util import ASAN, Checks, Server

ck = Checks("serve_soak")
N = 1500 if ASAN else 10000
CLIENTS = 8
WARMUP = N // 10


def client(srv, jobs, lock, counts, failures, rss, warm_rss_at):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    rng = random.Random(threading.get_ident())
    while True:
        with lock:
            if not jobs:
                break
            i = jobs.pop()
        n = 1 + i % 2
        body = {"prompt": "The %s " % rng.choice(["cat", "dog", "king", "sea"]), "max_tokens": n,
                "temperature": 0 if i % 3 else 0.8, "seed": i, "stream": i % 10 == 0}
        try:
            c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            good = r.status == 200 and (body["stream"] and data.endswith(b"data: [DONE]\n\n") or
                                        not body["stream"] and json.loads(data)["usage"]["completion_tokens"] == n)
        except Exception as e:  # a broken connection is a failure, and a new one goes on
            good, data = False, repr(e).encode()
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        with lock:
            counts[0] += 1
            if not good:
                failures.append(data[:200])
            if counts[0] == warm_rss_at:
                rss.append(srv.rss_kib())
    c.close()


def main():
    srv = Server("s.ini", "serve.max_running=16")
    try:
        jobs, lock, counts, failures, rss = list(range(N)), threading.Lock(), [0], [], []
        t0 = time.time()
        threads = [threading.Thread(target=client, args=(srv, jobs, lock, counts, failures, rss, WARMUP))
                   for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(1800)
        took = time.time() - t0
        rss.append(srv.rss_kib())
        print("     (%d requests in %.1f s, %.0f/s, %d keep-alive clients)" % (N, took, N / took, CLIENTS))
        ck.ok(not failures, "%d requests, every one 200 with its tokens" % N, failures[:3])
        m = srv.metrics()
        ck.eq(m["fastserve_kv_blocks_used"], 0, "every KV block is back in the pool")
        ck.eq(m["fastserve_requests_running"] + m["fastserve_requests_waiting"], 0, "no request left")
        ck.eq(m['fastserve_requests_finished_total{reason="length"}'], N, "the engine finished all of them")
        ck.eq(m['fastserve_http_requests_total{route="/v1/completions",code="200"}'], N, "/metrics counted them")
        # a request's in-flight count ends in the server's completion callback,
        # which can run just after its client has read the answer and closed:
        # wait a moment for the last ones (under ASan it lagged one scrape)
        ck.eq(srv.wait_metric("fastserve_http_requests_in_flight", lambda v: v == 1, timeout=10), 1,
              "none in flight but /metrics itself")
        growth = (rss[1] - rss[0]) / 1024
        print("     (RSS %.1f MiB after %d requests, %.1f MiB after %d)" % (rss[0] / 1024, WARMUP, rss[1] / 1024, N))
        if not ASAN:
            ck.ok(growth < 4, "RSS flat: %.2f MiB from request %d to %d" % (growth, WARMUP, N))
    finally:
        ck.eq(srv.stop(), 0, "exit 0 on SIGTERM (under ASan: no leak at exit either)")
    ck.finish()


main()
