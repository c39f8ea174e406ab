#!/usr/bin/python3
"""PyTorch peer for dense attention: forward and forward + backward of
softmax(mask(Q K^T / sqrt(D))) V in eager mode, time and peak memory.

The attention is written exactly as bench/torch_gpt.py (and so nanoGPT and
torch 1.13 eager) writes it: a (B, H, T, T) score tensor, masked_fill with
-inf above the diagonal, softmax, @ V; autograd keeps the probabilities for
backward.  (torch 1.13 has no scaled_dot_product_attention; 2.x's would be
the fused kernel, not eager.)

Usage (torch only imports in the system interpreter):

    /usr/bin/python3 bench/torch_attention.py --T 4096 [--B 1] [--H 8] [--D 64]
        [--causal 1] [--reps 5] [--threads 0]

Prints one JSON line:
    {"impl": "pytorch", "fwd_ms": ..., "fb_ms": ..., "peak_fwd_mib": ...,
     "peak_fb_mib": ..., "reps": ..., "torch_threads": ..., "config": {...}}
Times are the best of `reps` runs after one untimed forward + backward
(the same as bench/bench_attention.c).  Memory is the growth of the
process's peak RSS over the inputs (q, k, v, the output gradient and the
mask), as bench_attention measures fsrun: autograd's saved tensors, the
temporaries and the three input gradients (3 B H T D floats, under 1% of
the total at T = 8k) count.
"""

import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def attention(q, k, v, mask):
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        att = att.masked_fill(mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    return att @ v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, required=True)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--causal", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--time-s", type=float, default=5.0, help="fewer reps once they would take longer")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads(N); 0 = torch's default")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shape = (a.B, a.H, a.T, a.D)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    dout = torch.randn(shape)
    mask = torch.triu(torch.ones(a.T, a.T, dtype=torch.bool), diagonal=1) if a.causal else None
    base = peak_mib()


    def fb():
        for t in (q, k, v):
            t.grad = None
        attention(q, k, v, mask).backward(dout)

    t0 = time.perf_counter()
    fb()
    warm = time.perf_counter() - t0
    reps = max(1, min(a.reps, int(a.time_s / warm) if warm > 0 else a.reps))
    best_f = best_fb = float("inf")
    # forward as training runs it (autograd on: the probabilities are kept)
    for _ in range(reps):
        t0 = time.perf_counter()
        y = attention(q, k, v, mask)
        best_f = min(best_f, time.perf_counter() - t0)
        del y
    peak_f = peak_mib() - base
    for _ in range(reps):
        t0 = time.perf_counter()
        fb()
        best_fb = min(best_fb, time.perf_counter() - t0)
    peak_fb = peak_mib() - base
    print(json.dumps({"impl": "pytorch", "fwd_ms": best_f * 1e3, "fb_ms": best_fb * 1e3,
                      "peak_fwd_mib": peak_f, "peak_fb_mib": peak_fb, "reps": reps,
                      "torch_threads": torch.get_num_threads(),
                      "config": {"B": a.B, "H": a.H, "T": a.T, "D": a.D, "causal": a.causal,
                                 "torch": torch.__version__}}))


if __name__ == "__main__":
    main()
