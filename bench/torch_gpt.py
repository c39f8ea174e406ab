#!/usr/bin/python3
"""PyTorch peer benchmark: GPT-2 training step on CPU.

The same architecture as the FastServe runtime (and tests/reference/
make_fixtures.py): wte + learned wpe, pre-LN blocks (causal multi-head
attention with a fused qkv projection, GELU-tanh MLP of width 4C), final
LayerNorm, head tied to wte, mean cross-entropy.  float32, eager mode,
torch.optim.AdamW (lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on
ndim >= 2 parameters only), trained on uniformly random byte tokens (V=256).

Usage (PyTorch is only importable from the system interpreter):

    /usr/bin/python3 bench/torch_gpt.py --layers 4 --heads 4 --embd 256 \\
        --seq 256 --batch 8 --steps 10 --warmup 2 [--threads N]

    /usr/bin/python3 bench/torch_gpt.py --generate 200 [--gen-check]
        (generation with a KV cache, batch 1, see bench_generate)

Prints one JSON line:
    {"impl":"pytorch","tokens_per_s":...,"median_step_s":...,
     "torch_threads":...,"config":{...}}
tokens_per_s = batch*seq / median step time over the timed steps (warmup
steps excluded); mean_tokens_per_s = timed tokens / total timed seconds.  A
step is zero_grad + forward + backward [+ grad-norm clip with --grad-clip] +
optimizer step.

Which setting is PyTorch's best on this machine
-----------------------------------------------
Debian's torch 1.13.1 (python3-torch): torch.__config__.show() reports
MKL-DNN (oneDNN) v2.6.3, OpenMP, BLAS_INFO=generic, "CPU capability usage:
AVX2"; libtorch_cpu.so links libblas.so.3 -> OpenBLAS (openblas-pthread), so
the float32 matmuls of nn.Linear go to OpenBLAS sgemm, whose kernel is
chosen by OPENBLAS_CORETYPE (the environment sets Haswell).  The default
torch.get_num_threads() here is 1, although the machine has 2 cores.

torch.set_num_threads() does NOT change OpenBLAS's thread count (OpenBLAS
pthreads, 2 threads by default here; OPENBLAS_NUM_THREADS sets it), so
--threads 2 puts 2 OpenMP threads beside 2 OpenBLAS threads on 2 cores.

Measured on the 2-core AMD EPYC (Zen 5, AVX-512) KVM guest, L=4 H=4 C=256
T=256 B=8 (2048 tokens/step, 3.29M params), median of 20 timed steps after 3
warmup; each setting run 2-4 times, the range over runs is shown (the VM
drifts by about 15% between runs, so compare settings run side by side):

  env                                   torch thr  OpenBLAS     median step     tokens/s
  default (CORETYPE=Haswell, L2=512)        1       Haswell/2    0.269-0.313 s   6.5-7.6k
  -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE  1       Cooperlake/2 0.188-0.229 s   8.9-10.9k
  OPENBLAS_CORETYPE=SKYLAKEX                1       SkylakeX/2   0.188-0.224 s   9.2-10.9k
  default (Haswell)                         2       Haswell/2    0.647-0.715 s   2.9-3.2k
  unset                                     2       Cooperlake/2 0.496-0.557 s   3.7-4.1k
  SKYLAKEX                                  2       SkylakeX/2   0.462-0.532 s   3.8-4.4k
  SKYLAKEX + OMP_WAIT_POLICY=PASSIVE        2       SkylakeX/2   0.201-0.225 s   9.1-10.2k
  unset + OMP_WAIT_POLICY=PASSIVE           2       Cooperlake/2 0.200-0.234 s   8.8-10.2k
  Haswell + OMP_WAIT_POLICY=PASSIVE         2       Haswell/2    0.275-0.314 s   6.5-7.4k
  OPENBLAS_NUM_THREADS=1, Haswell           1       Haswell/1    0.434-0.438 s   4.7k
  OPENBLAS_NUM_THREADS=1, SKYLAKEX          1       SkylakeX/1   0.273-0.275 s   7.4-7.5k
  OPENBLAS_NUM_THREADS=1, Haswell           2       Haswell/1    0.401-0.407 s   5.0-5.1k
  OPENBLAS_NUM_THREADS=1, SKYLAKEX          2       SkylakeX/1   0.244-0.246 s   8.3-8.4k
  ("unset" = env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE; "default" rows
   with --threads 0 (torch's default, 1) equal the --threads 1 rows.)

BEST SETTING: an AVX-512 OpenBLAS kernel, i.e. the environment's
OPENBLAS_CORETYPE=Haswell removed (OpenBLAS then picks Cooperlake) or
OPENBLAS_CORETYPE=SKYLAKEX (the two are equal within noise), with torch's
default 1 intra-op thread and OpenBLAS's 2 threads:  about 0.19-0.22 s/step,
9-11k tokens/s, 1.4x the default environment (Haswell kernel, ~0.27-0.31 s).
The peer number to beat is therefore

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 \
        bench/torch_gpt.py --threads 1

(or OPENBLAS_CORETYPE=SKYLAKEX), run side by side with ours.  torch
--threads 2 is 2.3-2.5x slower (OpenMP threads spin while OpenBLAS threads
run); OMP_WAIT_POLICY=PASSIVE removes that penalty but gains nothing over 1
thread.  One OpenBLAS thread costs ~25-45%.
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def attn(self, x, mask):
        B, T, C = x.shape
        H, D = self.H, C // self.H
        q, k, v = self.c_attn(x).split(C, dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
        att = att.masked_fill(mask[:T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.attn_proj(y)

    def forward(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, V, maxT, L, H, C):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(maxT, C)
        self.h = nn.ModuleList([Block(C, H) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        # True above the diagonal = masked out
        self.register_buffer("mask", torch.ones(maxT, maxT, dtype=torch.bool).triu(1))
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif n.endswith("bias"):
                nn.init.zeros_(p)

    def logits(self, idx):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.h:
            x = blk(x, self.mask)
        x = self.ln_f(x)
        return x @ self.wte.weight.t()  # tied head

    def forward(self, idx, targets):
        B, T = idx.shape
        logits = self.logits(idx)
        return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))

    def decode_step(self, tok, pos, kc, vc):
        """One token through the model with a KV cache (batch 1).
        tok: int; kc, vc: per layer (1, H, maxT, D) tensors, filled up to pos.
        Returns the logits (V,) for the next token."""
        x = self.wte.weight[tok] + self.wpe.weight[pos]
        x = x.view(1, 1, -1)
        C = x.shape[-1]
        for i, blk in enumerate(self.h):
            H, D = blk.H, C // blk.H
            q, k, v = blk.c_attn(blk.ln_1(x)).split(C, dim=-1)
            kc[i][:, :, pos] = k.view(1, H, D)
            vc[i][:, :, pos] = v.view(1, H, D)
            q = q.view(1, H, 1, D)
            att = (q @ kc[i][:, :, :pos + 1].transpose(-2, -1)) * (1.0 / math.sqrt(D))
            att = F.softmax(att, dim=-1)
            y = (att @ vc[i][:, :, :pos + 1]).reshape(1, 1, C)
            x = x + blk.attn_proj(y)
            x = x + blk.mlp_proj(F.gelu(blk.c_fc(blk.ln_2(x)), approximate="tanh"))
        x = self.ln_f(x)
        return (x @ self.wte.weight.t()).view(-1)


def sample(logits, temperature, top_k, gen):
    if temperature <= 0:
        return int(torch.argmax(logits))
    v, ix = torch.topk(logits / temperature, min(top_k, logits.numel()) if top_k > 0 else logits.numel())
    p = F.softmax(v, dim=-1)
    return int(ix[torch.multinomial(p, 1, generator=gen)])


def bench_generate(model, args):
    """Autoregressive sampling with a KV cache, batch 1, timed like fsrun's
    generate mode: the prompt is fed one token at a time through the cache,
    then max_tokens are sampled (temperature, top-k); tokens_per_s =
    (prompt + generated tokens) / seconds.  Weights are the random init
    (speed does not depend on them)."""
    prompt = list(args.prompt.encode("utf-8")) or [10]
    n_new = min(args.generate, args.seq - len(prompt) + 1)
    L, C = len(model.h), args.embd
    H, D = args.heads, args.embd // args.heads
    gen = torch.Generator().manual_seed(args.seed)
    runs = []
    with torch.inference_mode():
        for r in range(args.gen_repeats + 1):  # the first run warms up
            kc = [torch.zeros(1, H, args.seq, D) for _ in range(L)]
            vc = [torch.zeros(1, H, args.seq, D) for _ in range(L)]
            t0 = time.perf_counter()
            pos, out = 0, []
            for t in prompt:
                logits = model.decode_step(t, pos, kc, vc)
                pos += 1
            while len(out) < n_new:
                tok = sample(logits, args.temperature, args.top_k, gen)
                out.append(tok)
                if len(out) == n_new:
                    break
                logits = model.decode_step(tok, pos, kc, vc)
                pos += 1
            secs = time.perf_counter() - t0
            if r > 0:
                runs.append(secs)
        err = None
        if args.gen_check:  # cached logits == full recompute at the last position
            seq = torch.tensor([prompt + out[:-1]])
            full = model.logits(seq)[0, -1]
            err = float((full - logits).abs().max())
    med = statistics.median(runs)
    return {
        "impl": "pytorch", "mode": "generate", "kv_cache": True,
        "tokens": n_new, "prompt_tokens": len(prompt),
        "tokens_per_s": (n_new + len(prompt)) / med, "median_s": med, "runs_s": runs,
        "torch_threads": torch.get_num_threads(), "max_abs_err_vs_recompute": err,
        "config": {"layers": L, "heads": H, "embd": C, "seq": args.seq, "vocab": args.vocab,
                   "openblas": openblas_info(), "torch": torch.__version__},
    }


def openblas_info():
    """Core kernel and thread count of the OpenBLAS that torch's matmuls use
    (torch.set_num_threads does not change the latter; OPENBLAS_NUM_THREADS
    does).  None where torch does not load OpenBLAS."""
    try:
        import ctypes
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return {"core": lib.openblas_get_corename().decode(),
                "threads": int(lib.openblas_get_num_threads())}
    except (OSError, AttributeError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads(N); 0 = leave torch's default")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grad-clip", type=float, default=0.0,
                    help="clip the global grad norm to this (0 = off; fsrun's quickstart uses 1.0)")
    ap.add_argument("--generate", type=int, default=0, metavar="N",
                    help="instead of training, time sampling N tokens with a KV cache (batch 1)")
    ap.add_argument("--prompt", default="And God said,")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--gen-repeats", type=int, default=3, help="timed generations (median), after 1 warmup")
    ap.add_argument("--gen-check", action="store_true",
                    help="also check the cached logits against a full recompute")
    args = ap.parse_args()
    assert args.embd % args.heads == 0

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = GPT(args.vocab, args.seq, args.layers, args.heads, args.embd)
    if args.generate > 0:
        print(json.dumps(bench_generate(model, args)))
        return
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    n_total = args.warmup + args.steps
    data = torch.randint(0, args.vocab, (n_total, args.batch, args.seq + 1))
    times, losses = [], []
    for s in range(n_total):
        x, y = data[s, :, :-1].contiguous(), data[s, :, 1:].contiguous()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        t1 = time.perf_counter()
        losses.append(loss.item())
        if s >= args.warmup:
            times.append(t1 - t0)

    med = statistics.median(times)
    out = {
        "impl": "pytorch",
        "tokens_per_s": args.batch * args.seq / med,
        "median_step_s": med,
        "mean_tokens_per_s": args.batch * args.seq * len(times) / sum(times),
        "torch_threads": torch.get_num_threads(),
        "config": {
            "layers": args.layers, "heads": args.heads, "embd": args.embd,
            "seq": args.seq, "batch": args.batch, "vocab": args.vocab,
            "steps": args.steps, "warmup": args.warmup, "grad_clip": args.grad_clip,
            "params": sum(p.numel() for p in model.parameters()),
            "torch": torch.__version__,
            "openblas": openblas_info(),
            "first_loss": losses[0], "last_loss": losses[-1],
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
