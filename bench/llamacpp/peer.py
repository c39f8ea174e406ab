"""llama.cpp as a peer in fsrun's benchmarks (issue 14): find the build that
bench/llamacpp/build.sh made, convert checkpoints to GGUF, and time its
decoding.  Imported by bench/bench_load.py and bench/bench_decode.py.

Decoding speed is llama-completion's own "eval time" line: the generated
tokens (one llama_decode each, batch 1, KV cache) over the seconds they
took, sampling excluded; the prompt goes through first as one batch and is
not counted.  The KV cache is f32 (-ctk f32 -ctv f32) unless asked
otherwise: llama-bench, which would be the natural tool, only offers f16 and
quantized caches in this version, and fsrun's cache is f32.  With an f32
cache flash attention is off (-fa off): llama.cpp's flash-attention path
with f32 K/V was 3x slower per token here (quickstart, 1 thread: 3.1 ms vs
0.97 ms), so "auto" would not be its best.
"""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DIR = os.environ.get("LLAMACPP_DIR", os.path.join(ROOT, "build", "llamacpp"))
BIN = os.path.join(DIR, "bin")
PY = os.path.join(DIR, "venv", "bin", "python")
EVAL = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")


def available():
    """None when usable, else why not (one line)."""
    for p in (os.path.join(BIN, "llama-completion"), PY):
        if not os.access(p, os.X_OK):
            return f"llama.cpp not built ({p} missing): run bench/llamacpp/build.sh"
    return None


def to_gguf(checkpoint, out, kind="f32"):
    """fsrun checkpoint -> GGUF (bench/llamacpp/to_gguf.py); returns out or raises."""
    if not os.path.exists(out):
        subprocess.run([PY, os.path.join(HERE, "to_gguf.py"), checkpoint, out, "--type", kind], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out


def completion_cmd(gguf, tokens, threads, prompt="And God said,", kv="f32"):
    return [os.path.join(BIN, "llama-completion"), "-m", gguf, "-p", prompt, "-n", str(tokens), "-t", str(threads),
            "-tb", str(threads), "--temp", "0", "-s", "1", "--ignore-eos", "-no-cnv", "--no-warmup",
            "-ctk", kv, "-ctv", kv, "-c", "0"] + (["-fa", "off"] if kv == "f32" else [])


def decode_tps(text):
    """tokens/s from llama-completion's output, or None."""
    m = None
    for m in EVAL.finditer(text):
        pass
    if not m or float(m.group(1)) <= 0:
        return None
    return int(m.group(2)) / (float(m.group(1)) / 1e3)


def run_decode(gguf, tokens, threads, timeout=600, env=None, kv="f32"):
    """(tokens/s or None, message)"""
    try:
        p = subprocess.run(completion_cmd(gguf, tokens, threads, kv=kv), capture_output=True, text=True,
                           errors="replace", timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    tps = decode_tps(p.stdout + p.stderr)
    if p.returncode != 0 or tps is None:
        return None, f"exit {p.returncode}: " + " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
    return tps, ""


if __name__ == "__main__":
    why = available()
    print(why or f"llama.cpp at {BIN}")
    sys.exit(1 if why else 0)
