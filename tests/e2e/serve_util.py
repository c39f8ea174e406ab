"""serve_util.py — what the serving tests share: an fsrun --mode serve
process on a free loopback port, plain HTTP/1.1 helpers (http.client, so a
test sees status codes, headers and chunks as they are), the /metrics page
as numbers, --mode generate's output as the reference, and ok/FAIL
reporting in the e2e tests' format (every check printed; a failure counted,
the script goes on and exits 1 at the end).

Everything is bounded: a server that does not start within a minute, a
request that does not answer within its timeout, a process that does not
exit after SIGTERM are failures, never hangs."""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

FSRUN = os.environ["FSRUN"]
ASAN = b"libasan" in subprocess.run(["ldd", FSRUN], capture_output=True).stdout


class Checks:
    def __init__(self, name):
        self.name, self.passed, self.failed = name, 0, 0

    def ok(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print("ok   - " + what, flush=True)
        else:
            self.failed += 1
            print("FAIL - " + what + (": " + str(detail) if detail != "" else ""), flush=True)
        return cond

    def eq(self, got, want, what):
        return self.ok(got == want, what, "got %r, want %r" % (got, want))

    def finish(self):
        print("%s: %d passed, %d failed" % (self.name, self.passed, self.failed), flush=True)
        sys.exit(1 if self.failed else 0)


class Server:
    """fsrun GRAPH --mode serve with serve.port=0 and the --set's given."""

    def __init__(self, graph, *sets, log="server"):
        args = [FSRUN, graph, "--mode", "serve", "--set", "serve.port=0"]
        for s in sets:
            args += ["--set", s]
        self.out = open(log + ".out", "wb+")
        self.err = open(log + ".err", "wb+")
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=self.err)
        self.port = None
        end = time.time() + (300 if ASAN else 60)
        while time.time() < end and self.proc.poll() is None:
            self.out.seek(0)
            m = re.search(rb"at http://[^ ]*:(\d+)/v1 ", self.out.read())
            if m:
                self.port = int(m.group(1))
                return
            time.sleep(0.05)
        raise RuntimeError("the server did not start: exit %s, stderr %s" % (self.proc.poll(), self.stderr()))

    def stderr(self):
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def stdout(self):
        self.out.seek(0)
        return self.out.read().decode("utf-8", "replace")

    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=120):
        """Sends sig (None: it was sent already); returns the exit status
        (None when it had to be killed)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def summary(self):
        lines = [l for l in self.stdout().splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, headers dict lower-cased, body bytes) on a fresh connection."""
        c = self.conn(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def post(self, path, body, key=None, timeout=120):
        h = {"Content-Type": "application/json"}
        if key:
            h["Authorization"] = "Bearer " + key
        status, _, data = self.request("POST", path, body, h, timeout)
        return status, json.loads(data)

    def metrics(self):
        status, _, data = self.request("GET", "/metrics")
        assert status == 200, status
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def wait_metric(self, name, pred, timeout=10):
        """Polls /metrics until pred(value) holds; returns the last value."""
        end = time.time() + timeout
        v = None
        while time.time() < end:
            v = self.metrics().get(name)
            if v is not None and pred(v):
                return v
            time.sleep(0.02)
        return v


def sse_events(resp):
    """The data: payloads of a server-sent event stream, as they come."""
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            return
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    yield line[6:].decode("utf-8")


def generate(graph, prompt, max_tokens, *sets):
    """--mode generate's (raw bytes, JSON summary) for the prompt."""
    args = [FSRUN, graph, "--mode", "generate", "--prompt", prompt, "--set", "generate.max_tokens=%d" % max_tokens]
    for s in sets:
        args += ["--set", s]
    p = subprocess.run(args, capture_output=True, timeout=300)
    if p.returncode:
        raise RuntimeError("generate failed: " + p.stderr.decode("utf-8", "replace"))
    out = p.stdout
    cut = out.rindex(b'\n{"mode"')
    summary = json.loads(out[cut + 1:].decode("utf-8"))
    return out[len(prompt.encode()):cut], summary
