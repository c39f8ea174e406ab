#!/usr/bin/env python3
"""bench_tokenizer.py — BPE encoding speed, fsrun against the tokenizers
package (PyPI) on the same text and the same tokenizer.json, side by side.

    FS_PYTHON=$(scripts/pyenv.sh)
    $FS_PYTHON bench/bench_tokenizer.py                     # the Bible, conf/quickstart_bpe.ini's tokenizer
    $FS_PYTHON bench/bench_tokenizer.py --text FILE --tokenizer tokenizer.json --repeats 7

fsrun's time is what `fsrun --mode tokenize` reports for the encoding
alone ("seconds": the file read and the cache excluded; data.cache=false),
one thread. tokenizers is timed on Tokenizer.encode of the whole text as
one string (one thread, like fsrun) and on encode_batch of its lines (its
Rayon thread pool, every core). Runs are interleaved (fsrun, encode,
encode_batch, fsrun, ...) and the table shows medians and the ratio of
medians. Both must produce the same token count; the tests check the
tokens themselves (tests/e2e/test_tokenizer_bpe.sh). A benchmark: it
asserts nothing but that count.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fsrun_encode(fsrun, text, tok, vocab):
    with tempfile.TemporaryDirectory() as d:
        g = os.path.join(d, "g.ini")
        open(g, "w").write("[model]\ntokenizer = bpe:%s\nvocab_size = %d\n[data]\ntrain = %s\ncache = false\n"
                           % (tok, vocab, text))
        out = subprocess.run([fsrun, g, "--mode", "tokenize", "--set", "run.threads=1"], check=True,
                             capture_output=True, text=True).stdout
    o = json.loads(out.strip().splitlines()[-1])["train"]
    return o["seconds"], o["tokens"], o["bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", default=os.path.join(ROOT, "data/kjv/train.txt"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "runs/kjv_bpe4096/tokenizer.json"))
    ap.add_argument("--fsrun", default=os.path.join(ROOT, "build/fsrun"))
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    for p, how in ((a.text, "scripts/setup.sh extracts the Bible"),
                   (a.tokenizer, "build/fsrun conf/quickstart_bpe.ini --mode train-tokenizer"),
                   (a.fsrun, "cmake --build build")):
        if not os.path.exists(p):
            sys.exit("%s: missing (%s)" % (p, how))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(a.tokenizer)
    text = open(a.text, encoding="utf-8", newline="").read()
    lines = text.splitlines(keepends=True)
    vocab = tok.get_vocab_size()
    rows = {"fsrun, one thread": [], "tokenizers encode, one thread": [], "tokenizers encode_batch, all cores": []}
    counts = {}
    for _ in range(a.repeats):
        s, n, nbytes = fsrun_encode(a.fsrun, a.text, a.tokenizer, vocab)
        rows["fsrun, one thread"].append(s)
        counts["fsrun"] = n
        t0 = time.perf_counter()
        n = len(tok.encode(text).ids)
        rows["tokenizers encode, one thread"].append(time.perf_counter() - t0)
        counts["encode"] = n
        t0 = time.perf_counter()
        n = sum(len(e.ids) for e in tok.encode_batch(lines))
        rows["tokenizers encode_batch, all cores"].append(time.perf_counter() - t0)
        counts["batch"] = n
    if counts["fsrun"] != counts["encode"]:
        sys.exit("token counts differ: fsrun %d, tokenizers %d" % (counts["fsrun"], counts["encode"]))
    base = statistics.median(rows["fsrun, one thread"])
    print("%s: %d bytes -> %d tokens (%.4f a byte), %s (%d tokens), %d repeats, medians"
          % (os.path.relpath(a.text, ROOT), nbytes, counts["fsrun"], counts["fsrun"] / nbytes,
             os.path.relpath(a.tokenizer, ROOT), vocab, a.repeats))
    print("| encoder | seconds | MB/s | tokens/s | time / fsrun's |")
    print("|---|---|---|---|---|")
    for name, ts in rows.items():
        m = statistics.median(ts)
        print("| %s | %.3f | %.1f | %.2f M | %.2fx |" % (name, m, nbytes / m / 1e6, counts["fsrun"] / m / 1e6, m / base))
    if counts["batch"] != counts["fsrun"]:
        print("(encode_batch over lines counts %d tokens: a line ends where a pre-token would continue)"
              % counts["batch"])


if __name__ == "__main__":
    main()
