"""serve_api.py — the OpenAI-compatible API, driven by the official openai
client and curl, against independent references: --mode generate (the
same greedy or seeded request gives the same text), Hugging Face
transformers (log-probabilities, the prompt's with echo too), Python's UTF-8 decoder (a model that
emits broken byte sequences still gives valid text), and hand-computed stop
cuts. Run by test_serve_api.sh in a directory holding g.ini (trained into
out/) and u.ini (a barely trained model in out_u/)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import openai

from serve_util import ASAN, Checks, Server, generate, sse_events

ck = Checks("serve_api")
KEY = "sekrit"
TEMPLATE_STOPS = ["\nUser:", "\nSystem:", "\nAssistant:"]


def client(srv, key=KEY):
    return openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % srv.port, api_key=key, max_retries=0, timeout=120)


def ref_text(graph, prompt, n, *sets):
    raw, _ = generate(graph, prompt, n, "generate.temperature=0", *sets)
    return raw.decode("utf-8", "replace")


def cut_at(text, stops):
    """Where a server checking after each token stops: the first token (here
    byte: the model is byte-level) that completes a stop string."""
    for i in range(1, len(text) + 1):
        hits = [text[:i].find(s) for s in stops if s in text[:i]]
        if hits:
            return text[:min(hits)], "stop"
    return text, None


# ---- completions ----

def check_completions(srv, cl):
    ck.eq([m.id for m in cl.models.list().data], ["g"], "GET /v1/models lists the graph's model")
    for prompt in ["The ", "A dog sat on ", ""]:
        want = ref_text("g.ini", prompt, 24)
        r = cl.completions.create(model="g", prompt=prompt, max_tokens=24, temperature=0)
        ck.eq(r.choices[0].text, want, "greedy completion of %r equals --mode generate" % prompt)
        ck.eq(r.choices[0].finish_reason, "length", "finish_reason length")
        ck.eq((r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens),
              (max(len(prompt), 1), 24, max(len(prompt), 1) + 24), "usage counts (byte tokens; '' is one token)")
        chunks = list(cl.completions.create(model="g", prompt=prompt, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        ck.eq(text, want, "streamed chunks of %r add up to the same text" % prompt)
        ck.eq([c.choices[0].finish_reason for c in chunks if c.choices][-1], "length", "the last chunk says length")
        ck.ok(not chunks[-1].choices and chunks[-1].usage.completion_tokens == 24, "include_usage: a last usage chunk")
    want = ref_text("g.ini", "The ", 24)
    r = cl.completions.create(model="g", prompt="The ", max_tokens=24, temperature=0, echo=True)
    ck.eq(r.choices[0].text, "The " + want, "echo puts the prompt first")
    r = cl.completions.create(model="g", prompt=[84, 104, 101, 32], max_tokens=24, temperature=0)
    ck.eq(r.choices[0].text, want, "a prompt of token ids")


def check_stops(srv, cl):
    want = ref_text("g.ini", "The ", 60)
    stop = want[10:13]
    if not ck.ok(len(stop) == 3, "the reference is long enough to take a stop string from", want):
        return
    text, _ = cut_at(want, [stop])
    key = 'fastserve_requests_finished_total{reason="%s"}'
    before = srv.metrics()
    for stream in (False, True):
        if stream:
            chunks = list(cl.completions.create(model="g", prompt="The ", max_tokens=60, temperature=0, stop=stop,
                                                stream=True))
            got = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            r = cl.completions.create(model="g", prompt="The ", max_tokens=60, temperature=0, stop=stop)
            got, reason = r.choices[0].text, r.choices[0].finish_reason
        ck.eq(got, text, "stop %r%s: the text ends before it" % (stop, " (streamed)" if stream else ""))
        ck.eq(reason, "stop", "finish_reason stop")
    # the engine ends them at its next iteration, unless it reached max_tokens
    # before the front end found the string (a small model runs ahead): stop
    # or length then, never cancelled
    ended = lambda m: m[key % "stop"] + m[key % "length"]  # noqa: E731
    srv.wait_metric(key % "stop", lambda v: ended(srv.metrics()) == ended(before) + 2)
    after = srv.metrics()
    ck.eq([ended(after) - ended(before), after[key % "cancelled"] - before[key % "cancelled"]], [2, 0],
          "/metrics counts the two replies a stop string ended as stop (or length), not cancelled")
    stops = [want[30:33], want[20:22] + "\x01"]  # the second never matches but shares a prefix
    text, _ = cut_at(want, stops)
    r = cl.completions.create(model="g", prompt="The ", max_tokens=60, temperature=0, stop=stops)
    ck.eq(r.choices[0].text, text, "a list of stop strings")
    # a stop string that never comes: all 60 tokens, finish length
    r = cl.completions.create(model="g", prompt="The ", max_tokens=60, temperature=0, stop="\x02\x03")
    ck.ok(r.choices[0].text == want and r.choices[0].finish_reason == "length", "an absent stop string changes nothing")


def byte_of(tok):
    """The byte-level token id of a logprobs token string."""
    if tok.startswith("bytes:"):
        return int(tok[8:10], 16)
    b = tok.encode("utf-8")
    assert len(b) == 1, tok
    return b[0]


def check_logprobs(srv, cl):
    import torch
    from transformers import GPT2LMHeadModel

    r = cl.completions.create(model="g", prompt="The cat", max_tokens=12, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    ids = [byte_of(t) for t in lp.tokens]
    ck.eq(len(ids), 12, "12 tokens with logprobs")
    ck.eq(bytes(ids).decode("utf-8", "replace"), r.choices[0].text, "the tokens spell the text")
    model = GPT2LMHeadModel.from_pretrained("out").eval()
    prompt = list(b"The cat")
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0].double()
    ref = torch.log_softmax(logits, -1)
    worst = 0.0
    for i, t in enumerate(ids):
        row = ref[len(prompt) + i - 1]
        worst = max(worst, abs(row[t].item() - lp.token_logprobs[i]))
        top = torch.topk(row, 3)
        want = sorted(top.values.tolist())
        got = sorted(v for k, v in lp.top_logprobs[i].items() if byte_of(k) in top.indices.tolist())
        ck.ok(len(got) == 3 and max(abs(a - b) for a, b in zip(got, want)) < 1e-4,
              "token %d: the top 3 alternatives are transformers' (and the sampled one is there)" % i, (got, want))
        ck.ok(byte_of(lp.tokens[i]) == top.indices[0].item(), "token %d: greedy picked transformers' argmax" % i)
    ck.ok(worst < 1e-4, "token log-probabilities equal transformers' log_softmax within 1e-4", worst)
    ck.eq(lp.text_offset, list(range(12)) if r.choices[0].text.isascii() else lp.text_offset,
          "text_offset counts the characters before each token")


def ref_logprobs(ids):
    """transformers' log_softmax over ids (teacher-forced): row i predicts ids[i + 1]."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained("out").eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)


def check_prompt_logprobs(lp, ids, n, what):
    """lp (a completion's logprobs) covers the prompt ids first: the first
    token null, every other one transformers' log p and top n."""
    ref = ref_logprobs(ids)
    ck.eq([byte_of(t) for t in lp.tokens[:len(ids)]], ids, what + ": the prompt's tokens come first")
    ck.ok(lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, what + ": the first prompt token's are null")
    worst, tops = 0.0, True
    for i in range(1, len(ids)):
        row = ref[i - 1]
        worst = max(worst, abs(row[ids[i]].item() - lp.token_logprobs[i]))
        top = torch_topk(row, n)
        got = sorted(v for k, v in lp.top_logprobs[i].items() if byte_of(k) in top[1])
        tops &= len(got) == n and max(abs(a - b) for a, b in zip(got, sorted(top[0]))) < 1e-4
        tops &= abs(lp.top_logprobs[i][lp.tokens[i]] - lp.token_logprobs[i]) < 1e-9
    ck.ok(worst < 1e-4, what + ": prompt log-probabilities equal transformers' log_softmax within 1e-4", worst)
    ck.ok(tops, what + ": each prompt token's top %d are transformers' (and the token itself is there)" % n)


def torch_topk(row, n):
    import torch

    t = torch.topk(row, n)
    return t.values.tolist(), t.indices.tolist()


def check_echo_logprobs(srv, cl):
    """echo with logprobs: the prompt's tokens and their log-probabilities,
    then the generated ones, whole, streamed and with max_tokens 0."""
    prompt = "The cat sat"
    ids = list(prompt.encode())
    plain = cl.completions.create(model="g", prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    r = cl.completions.create(model="g", prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True)
    c = r.choices[0]
    ck.eq(c.text, prompt + plain.choices[0].text, "echo + logprobs: the prompt, then the same text")
    lp = c.logprobs
    check_prompt_logprobs(lp, ids, 2, "echo + logprobs")
    ck.eq((lp.tokens[len(ids):], lp.token_logprobs[len(ids):], lp.top_logprobs[len(ids):]),
          (plain.choices[0].logprobs.tokens, plain.choices[0].logprobs.token_logprobs,
           plain.choices[0].logprobs.top_logprobs), "echo + logprobs: the generated tokens' as without echo")
    ck.eq(lp.text_offset, list(range(len(c.text))) if c.text.isascii() else lp.text_offset,
          "echo + logprobs: text_offset counts the characters of the prompt and the text before each token")
    ck.eq((r.usage.prompt_tokens, r.usage.completion_tokens), (len(ids), 6), "echo + logprobs: usage")
    z = cl.completions.create(model="g", prompt=prompt, max_tokens=0, logprobs=3, echo=True)
    ck.eq((z.choices[0].text, z.choices[0].finish_reason, z.usage.completion_tokens), (prompt, "length", 0),
          "max_tokens 0: the prompt alone")
    ck.eq(len(z.choices[0].logprobs.tokens), len(ids), "max_tokens 0: the prompt's tokens only")
    check_prompt_logprobs(z.choices[0].logprobs, ids, 3, "max_tokens 0")
    chunks = list(cl.completions.create(model="g", prompt=prompt, max_tokens=6, temperature=0, logprobs=2,
                                        echo=True, stream=True))
    ck.eq((chunks[0].choices[0].text, len(chunks[0].choices[0].logprobs.tokens)), (prompt, len(ids)),
          "streamed: the echoed chunk carries the prompt's logprobs")
    joined = {k: sum((getattr(ch.choices[0].logprobs, k) for ch in chunks if ch.choices[0].logprobs), [])
              for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
    ck.eq(("".join(ch.choices[0].text for ch in chunks), joined),
          (c.text, {k: getattr(lp, k) for k in joined}), "streamed: the chunks add up to the whole reply")
    chunks = list(cl.completions.create(model="g", prompt=prompt, max_tokens=0, logprobs=1, echo=True, stream=True))
    first = chunks[0].choices[0]
    ck.ok(first.text == prompt and first.logprobs.tokens == lp.tokens[:len(ids)]
          and chunks[-1].choices[0].finish_reason == "length", "streamed with max_tokens 0: the prompt and its logprobs")


def check_echo_prefix(srv, cl):
    """A prompt whose two blocks are in the prefix cache (check_prefix_cache
    sent it; a request without echo shows they still are): with echo and
    logprobs, every position is computed again (a cached block would skip
    the logits it needs), and the numbers are transformers'."""
    prompt = "Prefix sharing: forty bytes of a prompt."
    key = "fastserve_prompt_tokens_computed_total"
    computed = []
    for echo in (False, True):
        m0 = srv.metrics()
        r = cl.completions.create(model="g", prompt=prompt, max_tokens=2, temperature=0, logprobs=1, echo=echo)
        computed.append((srv.metrics()[key] - m0[key], r.usage.prompt_tokens_details.cached_tokens))
    ck.eq(computed, [(8, 32), (40, 0)],
          "a cached prompt: 8 tokens computed without echo, all 40 with echo + logprobs (none cached)")
    check_prompt_logprobs(r.choices[0].logprobs, list(prompt.encode()), 1, "a cached prompt")
    ck.eq(r.choices[0].text, prompt + ref_text("g.ini", prompt, 2), "a cached prompt: the same text")


# ---- chat ----

def check_chat(srv, cl):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the cat?"}]
    prompt = "System: Be brief.\nUser: Where is the cat?\nAssistant:"
    want, reason = cut_at(ref_text("g.ini", prompt, 40), TEMPLATE_STOPS)
    r = cl.chat.completions.create(model="g", messages=msgs, max_tokens=40, temperature=0)
    ck.eq(r.choices[0].message.content, want, "chat: the template's prompt, generated as --mode generate does")
    ck.eq(r.choices[0].message.role, "assistant", "chat: the reply's role")
    ck.eq(r.choices[0].finish_reason, reason or "length", "chat: finish_reason")
    ck.eq(r.usage.prompt_tokens, len(prompt), "chat: prompt_tokens are the rendered template's")
    chunks = list(cl.chat.completions.create(model="g", messages=msgs, max_tokens=40, temperature=0, stream=True))
    ck.eq(chunks[0].choices[0].delta.role, "assistant", "chat stream: the role comes first")
    ck.eq("".join(c.choices[0].delta.content or "" for c in chunks), want, "chat stream: deltas add up to the reply")
    ck.eq(chunks[-1].choices[0].finish_reason, reason or "length", "chat stream: the last chunk's finish_reason")
    # chat logprobs: the same numbers as the completions endpoint on the rendered prompt
    r = cl.chat.completions.create(model="g", messages=msgs, max_tokens=5, temperature=0, logprobs=True,
                                   top_logprobs=2)
    c = cl.completions.create(model="g", prompt=prompt, max_tokens=5, temperature=0, logprobs=2)
    content = r.choices[0].logprobs.content
    ck.eq([t.token for t in content], c.choices[0].logprobs.tokens[:len(content)], "chat logprobs: the tokens")
    ck.ok(all(abs(a.logprob - b) < 1e-6 for a, b in zip(content, c.choices[0].logprobs.token_logprobs)),
          "chat logprobs: the same log p as completions")
    ck.ok(all(len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode()) for t in content if t.token.isascii()),
          "chat logprobs: two alternatives and the bytes")


def check_sampling(srv, cl):
    raw, _ = generate("g.ini", "The ", 40, "generate.temperature=0.9", "generate.seed=5", "generate.top_k=0",
                      "generate.top_p=1")
    want = raw.decode("utf-8", "replace")
    a = cl.completions.create(model="g", prompt="The ", max_tokens=40, temperature=0.9, seed=5)
    b = cl.completions.create(model="g", prompt="The ", max_tokens=40, temperature=0.9, seed=5, stream=True)
    ck.eq(a.choices[0].text, want, "sampled with a seed: --mode generate's text for that seed")
    ck.eq("".join(c.choices[0].text for c in b), want, "the same seed streamed")
    r = cl.completions.create(model="g", prompt="The ", max_tokens=40, temperature=0.9, top_p=0.8, seed=9,
                              extra_body={"top_k": 5})
    raw, _ = generate("g.ini", "The ", 40, "generate.temperature=0.9", "generate.seed=9", "generate.top_k=5",
                      "generate.top_p=0.8")
    ck.eq(r.choices[0].text, raw.decode("utf-8", "replace"), "top_k and top_p as --mode generate")


# ---- errors: the client's exceptions, then curl's status codes ----

def check_client_errors(srv, cl):
    def raises(exc, fn, what, says):
        try:
            fn()
            ck.ok(False, what, "no error")
        except exc as e:
            ck.ok(says in str(e), what, str(e))
        except Exception as e:
            ck.ok(False, what, "%s: %s" % (type(e).__name__, e))

    raises(openai.BadRequestError, lambda: cl.completions.create(model="g", prompt="x", max_tokens=101),
           "400 past [serve] max_tokens_limit", "max_tokens_limit = 100")
    raises(openai.BadRequestError, lambda: cl.completions.create(model="g", prompt="x" * 100, max_tokens=60),
           "400 past the context", "context")
    raises(openai.NotFoundError, lambda: cl.completions.create(model="gpt-4", prompt="x"), "404 another model",
           "does not exist")
    raises(openai.AuthenticationError, lambda: client(srv, "wrong").completions.create(model="g", prompt="x"),
           "401 a wrong key", "API key")
    raises(openai.BadRequestError, lambda: cl.chat.completions.create(model="g", messages=[]), "400 no messages",
           "non-empty")


def curl(srv, method, path, body=None, headers=(), data_file=None):
    args = ["curl", "-s", "-o", "curl.body", "-D", "curl.headers", "-w", "%{http_code}", "-X", method,
            "http://127.0.0.1:%d%s" % (srv.port, path)]
    for h in headers:
        args += ["-H", h]
    if body is not None:
        args += ["--data-binary", body]
    if data_file:
        args += ["--data-binary", "@" + data_file]
    code = int(subprocess.run(args, capture_output=True, text=True, timeout=120).stdout)
    with open("curl.body", "rb") as f:
        raw = f.read()
    with open("curl.headers") as f:
        hdrs = f.read().lower()
    return code, raw, hdrs


def check_error_object(raw, what):
    try:
        e = json.loads(raw)["error"]
        ck.ok(set(e) == {"message", "type", "param", "code"} and e["message"], what + ": an OpenAI error object")
    except Exception as ex:
        ck.ok(False, what + ": an OpenAI error object", "%s: %r" % (ex, raw[:200]))


def check_statuses(srv):
    counted = 'fastserve_http_requests_total{route="/v1/completions",code="401"}'
    before = srv.metrics().get(counted, 0)
    auth = ["Authorization: Bearer " + KEY, "Content-Type: application/json"]
    good = json.dumps({"model": "g", "prompt": "The ", "max_tokens": 3, "temperature": 0})
    cases = [
        ("200 completion", "POST", "/v1/completions", good, auth, 200),
        ("200 /health without the key", "GET", "/health", None, [], 200),
        ("200 /metrics without the key", "GET", "/metrics", None, [], 200),
        ("400 malformed JSON", "POST", "/v1/completions", '{"prompt": "x",', auth, 400),
        ("400 a wrong type", "POST", "/v1/completions", '{"prompt": "x", "max_tokens": "3"}', auth, 400),
        ("400 past the context", "POST", "/v1/completions", json.dumps({"prompt": "y" * 120, "max_tokens": 20}),
         auth, 400),
        ("400 past max_tokens_limit", "POST", "/v1/completions", '{"prompt": "x", "max_tokens": 1000}', auth, 400),
        ("401 no key", "POST", "/v1/completions", good, ["Content-Type: application/json"], 401),
        ("401 a wrong key", "POST", "/v1/completions", good, ["Authorization: Bearer sekrit2"], 401),
        ("401 a key of another scheme", "POST", "/v1/completions", good, ["Authorization: Basic " + KEY], 401),
        ("404 an unknown route", "GET", "/v1/engines", None, auth, 404),
        ("404 an unknown model", "GET", "/v1/models/other", None, auth, 404),
        ("200 the model", "GET", "/v1/models/g", None, auth, 200),
        ("405 GET on a POST route", "GET", "/v1/completions", None, auth, 405),
        ("405 POST on a GET route", "POST", "/v1/models", "{}", auth, 405),
    ]
    for what, method, path, body, headers, want in cases:
        code, raw, hdrs = curl(srv, method, path, body, headers)
        ck.eq(code, want, "curl: " + what)
        if want >= 400:
            check_error_object(raw, what)
        if want == 401:
            ck.ok("www-authenticate: bearer" in hdrs, what + ": WWW-Authenticate")
        if want == 405:
            ck.ok("allow: " in hdrs, what + ": Allow names the method")
    with open("big.json", "w") as f:
        json.dump({"prompt": "z" * 2000, "max_tokens": 1}, f)
    code, raw, _ = curl(srv, "POST", "/v1/completions", headers=auth, data_file="big.json")
    ck.eq(code, 413, "curl: 413 a body over max_body_kb")
    check_error_object(raw, "413")
    code, raw, _ = curl(srv, "POST", "/v1/completions", headers=auth + ["Transfer-Encoding: chunked"],
                        data_file="big.json")
    ck.eq(code, 413, "curl: 413 a chunked body over max_body_kb (no Content-Length)")
    # the server is still up and answers
    code, raw, _ = curl(srv, "POST", "/v1/completions", good, auth)
    ck.eq(code, 200, "curl: still answering after the refusals")
    # keep-alive: two requests on one connection
    c = srv.conn()
    for i in range(2):
        c.request("POST", "/v1/completions", body=good, headers={"Authorization": "Bearer " + KEY})
        r = c.getresponse()
        r.read()
        ck.eq(r.status, 200, "keep-alive request %d on one connection" % (i + 1))
    c.request("GET", "/v1/nowhere", headers={"Authorization": "Bearer " + KEY})
    r = c.getresponse()
    r.read()
    c.request("POST", "/v1/completions", body=good, headers={"Authorization": "Bearer " + KEY})
    r = c.getresponse()
    r.read()
    ck.eq(r.status, 200, "the connection survives a 404")
    c.close()
    m = srv.metrics()
    ck.eq(m.get(counted, 0) - before, 3, "/metrics counts requests by route and status")


# ---- reload ----

def retrain(seed, steps):
    p = subprocess.run([os.environ["FSRUN"], "g.ini", "--set", "run.overwrite=true", "--set", "train.seed=%d" % seed,
                        "--set", "train.steps=%d" % steps], capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr


def wait_log(srv, text, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if text in srv.stderr():
            return True
        time.sleep(0.05)
    return False


def check_reload(srv, cl):
    before = cl.completions.create(model="g", prompt="The ", max_tokens=30, temperature=0).choices[0].text
    retrain(7, 100)
    new = ref_text("g.ini", "The ", 30)
    ck.ok(new != before, "the retrained model writes something else", new)
    srv.send(signal.SIGHUP)
    ck.ok(wait_log(srv, "SIGHUP: reloaded"), "SIGHUP: the server says it reloaded")
    got = cl.completions.create(model="g", prompt="The ", max_tokens=30, temperature=0).choices[0].text
    ck.eq(got, new, "after SIGHUP: the new checkpoint's text")
    retrain(8, 60)
    third = ref_text("g.ini", "The ", 30)
    status, body = srv.post("/admin/reload", {}, key=KEY)
    ck.eq(status, 200, "POST /admin/reload with the key")
    ck.eq(body.get("status"), "reloaded", "/admin/reload says reloaded")
    got = cl.completions.create(model="g", prompt="The ", max_tokens=30, temperature=0).choices[0].text
    ck.eq(got, third, "after /admin/reload: the newest checkpoint's text")
    status, _ = srv.post("/admin/reload", {})
    ck.eq(status, 401, "/admin/reload without the key: 401")
    os.rename("out/model.safetensors", "out/model.moved")
    status, body = srv.post("/admin/reload", {}, key=KEY)
    os.rename("out/model.moved", "out/model.safetensors")
    ck.eq(status, 500, "/admin/reload of a missing checkpoint: 500")
    ck.ok("unchanged" in body.get("error", {}).get("message", ""), "... saying the weights are unchanged", body)
    got = cl.completions.create(model="g", prompt="The ", max_tokens=30, temperature=0).choices[0].text
    ck.eq(got, third, "... and serving the weights it had")


# ---- bytes that are not UTF-8 ----

def check_utf8():
    srv = Server("u.ini", log="server_u")
    try:
        sets = ["generate.temperature=1", "generate.seed=11", "generate.top_k=0", "generate.top_p=1"]
        raw, _ = generate("u.ini", "The ", 80, *sets)
        try:
            raw.decode("utf-8")
            ck.ok(False, "the barely trained model emits bytes that are not UTF-8", raw)
        except UnicodeDecodeError:
            ck.ok(True, "the barely trained model emits bytes that are not UTF-8")
        want = raw.decode("utf-8", "replace")
        body = {"model": "u", "prompt": "The ", "max_tokens": 80, "temperature": 1, "seed": 11}
        status, _, data = srv.request("POST", "/v1/completions", json.dumps(body))
        ck.eq(status, 200, "non-UTF-8 output: 200")
        text = json.loads(data.decode("utf-8"))["choices"][0]["text"]  # strict: valid UTF-8 or it raises
        ck.eq(text, want, "non-UTF-8 output arrives as Python's bytes.decode('utf-8', 'replace')")
        c = srv.conn()
        c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True, logprobs=0)))
        r = c.getresponse()
        parts, toks = [], []
        for data in sse_events(r):  # each chunk decoded strictly
            if data != "[DONE]":
                ch = json.loads(data)["choices"][0]
                parts.append(ch["text"])
                toks += (ch["logprobs"] or {}).get("tokens", [])
        c.close()
        ck.eq("".join(parts), want, "streamed: every chunk valid UTF-8, together the same text")
        ck.eq(bytes(byte_of(t) for t in toks), raw, "logprobs name the raw bytes (bytes:\\xNN for a broken one)")
        code, raw403, _ = curl(srv, "POST", "/admin/reload", "{}")
        ck.eq(code, 403, "/admin/reload on a server without api_key: 403")
        check_error_object(raw403, "403")
    finally:
        ck.eq(srv.stop(), 0, "SIGTERM: the second server exits 0")


def check_prefix_cache(srv, cl):
    """A prompt sent twice: the second finds its two full blocks (kv_block =
    16 byte tokens) in the prefix cache and computes only the 8 tokens past
    them, with the same greedy text as --mode generate."""
    prompt = "Prefix sharing: forty bytes of a prompt."
    assert len(prompt) == 40
    want = ref_text("g.ini", prompt, 8)
    got, computed, hits = [], [], []
    for _ in range(2):
        m0 = srv.metrics()
        r = cl.completions.create(model="g", prompt=prompt, max_tokens=8, temperature=0)
        m1 = srv.metrics()
        got.append(r.choices[0].text)
        computed.append(m1["fastserve_prompt_tokens_computed_total"] - m0["fastserve_prompt_tokens_computed_total"])
        hits.append(m1["fastserve_prefix_cache_hits_total"] - m0["fastserve_prefix_cache_hits_total"])
    ck.eq(got, [want, want], "a prompt sent twice: both answers equal --mode generate")
    ck.eq(computed, [40, 8], "prefix cache: the second computes only the 8 tokens past its 2 cached blocks")
    ck.eq(hits, [0, 2], "prefix cache: 2 hits the second time")


def check_on_backend():
    """The same model served through a compute backend's ops (model/device_batch.h) with
    the KV pool in the backend's memory: the cpu backend here, the path [run] device =
    cuda takes. Its log-probabilities (decode, and the prompt's with echo, chunked) are
    transformers' within 1e-4, and its chat completions run."""
    srv = Server("g.ini", "serve.api_key=" + KEY, "backend.plugin=cpu", "serve.prefill_chunk=5",
                 log="server_backend")
    try:
        ck.ok("serving on CPU" in srv.stderr() and "(backend cpu)" in srv.stderr(),
              "the log says the steps run on the backend", srv.stderr()[-500:])
        cl = client(srv)
        check_logprobs(srv, cl)
        check_echo_logprobs(srv, cl)
        check_chat(srv, cl)
        check_sampling(srv, cl)
    finally:
        ck.eq(srv.stop(), 0, "SIGTERM: the server on the backend exits 0")
        ck.eq(srv.summary().get("backend"), "cpu", "its summary names the backend")


def main():
    srv = Server("g.ini", "serve.api_key=" + KEY, "serve.max_body_kb=1", "serve.max_tokens_limit=100")
    try:
        cl = client(srv)
        check_completions(srv, cl)
        check_prefix_cache(srv, cl)
        check_stops(srv, cl)
        check_logprobs(srv, cl)
        check_echo_logprobs(srv, cl)
        check_echo_prefix(srv, cl)
        check_chat(srv, cl)
        check_sampling(srv, cl)
        check_client_errors(srv, cl)
        check_statuses(srv)
        check_reload(srv, cl)
    finally:
        code = srv.stop()
        ck.eq(code, 0, "SIGTERM: the server exits 0")
        s = srv.summary()
        ck.ok(s.get("mode") == "serve" and s.get("requests", 0) > 50, "its last stdout line is a JSON summary", s)
        ck.eq(s.get("backend"), "none", "the summary: the CPU's own kernels")
        if code != 0:
            print(srv.stderr()[-3000:])
    check_utf8()
    check_on_backend()
    ck.finish()


main()
