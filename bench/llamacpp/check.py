#!/usr/bin/env python3
"""Check that llama.cpp runs the same model as fsrun: greedy outputs
identical, eval loss equal (issue 14, item 6).

Converts an fsrun checkpoint to GGUF (to_gguf.py, f32 weights), then
  1. greedy decoding: fsrun --mode generate with temperature 0 against a
     loop over llama.cpp's own logits (llama_decode through the ctypes
     bindings of the same llama-cpp-python sdist, the argmax taken here),
     the prompt fed token by token as fsrun does;
  2. eval loss: fsrun --mode eval (mean cross-entropy over consecutive
     windows of max_seq tokens of [data] val) against the same windows run
     through llama.cpp, the loss computed here in float64 from its logits.

Needs bench/llamacpp/build.sh to have run (build/llamacpp).  Usage:

    build/llamacpp/venv/bin/python bench/llamacpp/check.py [--checkpoint runs/x/model.safetensors]
        [--graph conf/quickstart.ini] [--tokens 200] [--windows 200] [--threads 2]

Without --checkpoint it trains conf/quickstart.ini (300 steps, a few
minutes on 2 cores) into a temporary directory first.  Exits 1 when the
outputs differ or the losses differ by more than 1e-4 (relative).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def llama_module(llama_dir):
    sys.path.insert(0, os.path.join(llama_dir, "src"))
    os.environ["LLAMA_CPP_LIB_PATH"] = os.path.join(llama_dir, "bin")
    import llama_cpp  # the sdist's own bindings, loading our build's libllama.so
    return llama_cpp


def fsrun_json(cmd):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        sys.exit(f"check: {' '.join(cmd)} failed:\n{p.stderr.strip()[-2000:]}")
    return json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="fsrun model.safetensors (default: train the graph first)")
    ap.add_argument("--graph", default=os.path.join(ROOT, "conf", "quickstart.ini"))
    ap.add_argument("--fsrun", default=os.path.join(ROOT, "build", "fsrun"))
    ap.add_argument("--llamacpp", default=os.path.join(ROOT, "build", "llamacpp"))
    ap.add_argument("--prompt", default="And God said,")
    ap.add_argument("--tokens", type=int, default=200, help="greedy tokens to compare")
    ap.add_argument("--windows", type=int, default=200, help="val windows for the loss (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    llama_cpp = llama_module(a.llamacpp)

    with tempfile.TemporaryDirectory(prefix="fscheck-") as tmp:
        ckpt = a.checkpoint
        if not ckpt:
            out = os.path.join(tmp, "run")
            print(f"check: training {a.graph} into {out}", file=sys.stderr, flush=True)
            fsrun_json([a.fsrun, a.graph, "--set", f"run.out={out}", "--set", "generate.max_tokens=0"])
            ckpt = os.path.join(out, "model.safetensors")
        run_dir = os.path.dirname(os.path.abspath(ckpt))
        gg = os.path.join(tmp, "model-f32.gguf")
        subprocess.run([sys.executable, os.path.join(HERE, "to_gguf.py"), ckpt, gg], check=True,
                       stdout=subprocess.DEVNULL)
        sets = ["--set", f"run.out={run_dir}"]

        # 1. greedy
        js = fsrun_json([a.fsrun, a.graph, "--mode", "generate", "--checkpoint", ckpt, "--prompt", a.prompt,
                         "--set", "generate.temperature=0", "--set", f"generate.max_tokens={a.tokens}"] + sets)
        fs_tokens = [ord(c) for c in js["text"]]  # fsrun writes each byte as the code point of that value
        m = llama_cpp.Llama(gg, n_ctx=0, n_batch=512, logits_all=True, verbose=False, n_threads=a.threads,
                            n_threads_batch=a.threads)
        n_ctx = m.n_ctx()
        prompt = list(a.prompt.encode())
        m.reset()
        for t in prompt:  # one token a step, as fsrun decodes
            m.eval([t])
        ll_tokens = []
        while len(ll_tokens) < a.tokens and m.n_tokens < n_ctx:
            nxt = int(np.argmax(m.scores[m.n_tokens - 1]))
            ll_tokens.append(nxt)
            if len(ll_tokens) < a.tokens:
                m.eval([nxt])
        same = fs_tokens == ll_tokens
        first = next((i for i, (x, y) in enumerate(zip(fs_tokens, ll_tokens)) if x != y),
                     min(len(fs_tokens), len(ll_tokens)))
        print(f"greedy, {len(ll_tokens)} tokens after {a.prompt!r}: "
              + ("identical" if same else f"DIFFER from token {first}"))
        print(f"  fsrun     {bytes(fs_tokens)!r}")
        print(f"  llama.cpp {bytes(ll_tokens)!r}")

        # 2. eval loss over the same windows
        val = None
        for line in open(a.graph):
            s = line.split(";")[0].strip()
            if s.replace(" ", "").startswith("val="):
                val = s.split("=", 1)[1].strip()
        data = open(os.path.join(ROOT, val), "rb").read()
        T = n_ctx
        windows = (len(data) - 1) // T
        if a.windows:
            windows = min(windows, a.windows)
        cut = os.path.join(tmp, "val.txt")
        with open(cut, "wb") as f:
            f.write(data[:windows * T + 1])
        fs_loss = fsrun_json([a.fsrun, a.graph, "--mode", "eval", "--checkpoint", ckpt, "--set", f"data.val={cut}"]
                             + sets)["loss"]
        total = 0.0
        for w in range(windows):
            toks = list(data[w * T:w * T + T + 1])
            m.reset()
            m.eval(toks[:T])
            logits = np.asarray(m.scores[:T], dtype=np.float64)
            mx = logits.max(axis=1, keepdims=True)
            lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))
            total += float((lse - logits[np.arange(T), toks[1:]]).sum())
        ll_loss = total / (windows * T)
        rel = abs(ll_loss - fs_loss) / abs(fs_loss)
        print(f"eval loss, {windows} windows of {T} tokens of {val}: fsrun {fs_loss:.6f}, llama.cpp {ll_loss:.6f} "
              f"(relative difference {rel:.1e})")
        ok = same and rel <= 1e-4
        print("check: " + ("the same model in both" if ok else "MISMATCH"))
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
