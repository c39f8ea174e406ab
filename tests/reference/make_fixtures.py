#!/usr/bin/python3
"""Reference fixtures for the FastServe GPT-2 runtime.

README
======
Regenerate (from the repository root; needs Debian's python3-torch, which is
only importable from the system interpreter):

    /usr/bin/python3 tests/reference/make_fixtures.py

This rewrites ``tests/reference/gpt_tiny.safetensors`` (about 100 KB) and
``tests/reference/gpt_tiny_reversible.safetensors`` (the same shapes with 4
reversible layers: parameters, logits, loss and gradients; see
``forward_reversible``) and prints the worked attention example.  The output is deterministic (fixed
seed, float64 computation); do not hand-edit the binary file.

What is in the file
-------------------
One safetensors file, written by hand (8-byte little-endian header length,
JSON header padded with spaces so that 8 + header length is a multiple of 8,
then raw little-endian data; no dependency on the ``safetensors`` package).

* ``__metadata__``: the config as strings: V, maxT, L, H, C, B, T, lr, beta1,
  beta2, eps, weight_decay.
* Parameters, Hugging Face ``GPT2LMHeadModel`` names and Conv1D layout
  (weights are (in, out)), F32:
  ``transformer.wte.weight`` (V,C), ``transformer.wpe.weight`` (maxT,C),
  ``transformer.h.{i}.ln_1.weight|bias`` (C),
  ``transformer.h.{i}.attn.c_attn.weight`` (C,3C), ``...c_attn.bias`` (3C),
  ``transformer.h.{i}.attn.c_proj.weight`` (C,C), ``...c_proj.bias`` (C),
  ``transformer.h.{i}.ln_2.weight|bias`` (C),
  ``transformer.h.{i}.mlp.c_fc.weight`` (C,4C), ``...c_fc.bias`` (4C),
  ``transformer.h.{i}.mlp.c_proj.weight`` (4C,C), ``...c_proj.bias`` (C),
  ``transformer.ln_f.weight|bias`` (C).  No ``lm_head``: the head is tied to
  wte.  The parameters are drawn in float32, so the float64 reference
  computation starts from exactly the values stored in the file.
* ``input_ids`` I32 (B,T), ``targets`` I32 (B,T).
* ``logits`` F32 (B,T,V); ``loss`` F32 [1] = mean cross-entropy over B*T.
* ``grad.<param>`` F32: d loss / d param (wte includes the embedding and the
  tied-head contributions).
* ``adamw2.<param>`` F32: the parameters after two AdamW steps on the same
  batch (loss and gradient recomputed before each step).  torch.optim.AdamW
  semantics: lr 1e-2, betas (0.9, 0.95), eps 1e-8, decoupled weight decay
  0.1 on parameters with ndim >= 2 only (wte, wpe, the four weight matrices
  per block), no clipping, constant lr, bias-corrected moments.
* ``attn_example.x`` (4,3) = [[1,2,3],[4,5,6],[7,8,9],[10,11,12]],
  ``attn_example.noncausal`` = softmax(X X^T / sqrt(3)) X and
  ``attn_example.causal`` (same with a causal mask), float64 -> F32.
  The weights are nearly one-hot (scores up to 365/sqrt(3) = 210.7), so the
  outputs are close to X rows; the example mainly checks the layout and that
  softmax subtracts the row max (exp(210) overflows float32).

Model (GPT-2, from scratch, no transformers): x = wte[ids] + wpe[pos];
per block x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); LayerNorm eps 1e-5;
attention: qkv = x @ c_attn.weight + c_attn.bias, split q,k,v on the last
dim, head h = columns [h*D, (h+1)*D), softmax(q k^T / sqrt(D)) with causal
mask, merge heads, @ c_proj.weight + bias; MLP: c_fc, GELU (tanh
approximation), c_proj; final ln_f; logits = x @ wte^T.

Tiny config: V=64, maxT=16, L=2, H=2, C=16, B=2, T=11 (T < maxT and odd on
purpose: rows T..maxT-1 of wpe get zero gradient, only weight decay).

Checks done while generating: gradients of 3 random parameter entries
against float64 central finite differences (1e-6 relative), the explicit
AdamW against torch.optim.AdamW, and a read-back of the written file.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch

CFG = dict(V=64, maxT=16, L=2, H=2, C=16, B=2, T=11)
OPT = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
SEED = 1234
LN_EPS = 1e-5

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_PATH = os.path.join(HERE, "gpt_tiny.safetensors")
CFG_REV = dict(CFG, L=4)
OUT_REV_PATH = os.path.join(HERE, "gpt_tiny_reversible.safetensors")


# --------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------
def param_specs(cfg):
    """(name, shape, kind) in a fixed order; kind in {mat, bias, lnw, lnb}."""
    V, maxT, L, C = cfg["V"], cfg["maxT"], cfg["L"], cfg["C"]
    specs = [("transformer.wte.weight", (V, C), "mat"),
             ("transformer.wpe.weight", (maxT, C), "mat")]
    for i in range(L):
        p = "transformer.h.%d." % i
        specs += [
            (p + "ln_1.weight", (C,), "lnw"),
            (p + "ln_1.bias", (C,), "lnb"),
            (p + "attn.c_attn.weight", (C, 3 * C), "mat"),
            (p + "attn.c_attn.bias", (3 * C,), "bias"),
            (p + "attn.c_proj.weight", (C, C), "mat"),
            (p + "attn.c_proj.bias", (C,), "bias"),
            (p + "ln_2.weight", (C,), "lnw"),
            (p + "ln_2.bias", (C,), "lnb"),
            (p + "mlp.c_fc.weight", (C, 4 * C), "mat"),
            (p + "mlp.c_fc.bias", (4 * C,), "bias"),
            (p + "mlp.c_proj.weight", (4 * C, C), "mat"),
            (p + "mlp.c_proj.bias", (C,), "bias"),
        ]
    specs += [("transformer.ln_f.weight", (C,), "lnw"),
              ("transformer.ln_f.bias", (C,), "lnb")]
    return specs


def init_params(cfg, gen):
    params = {}
    for name, shape, kind in param_specs(cfg):
        r = torch.randn(shape, generator=gen, dtype=torch.float64)
        if kind == "mat":
            v = 0.2 * r
        elif kind == "bias":
            v = 0.1 * r
        elif kind == "lnw":
            v = 1.0 + 0.1 * r
        else:  # lnb
            v = 0.1 * r
        # Round to float32 so the stored parameters are exactly the ones the
        # float64 reference computation starts from.
        params[name] = v.to(torch.float32).to(torch.float64)
    return params


# --------------------------------------------------------------------------
# model (float64, from scratch)
# --------------------------------------------------------------------------
def layernorm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased, as nn.LayerNorm
    return (x - mu) / torch.sqrt(var + LN_EPS) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                       * (x + 0.044715 * x ** 3)))


def attention(x, P, p, H):
    B, T, C = x.shape
    D = C // H
    qkv = x @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
    q, k, v = qkv.split(C, dim=-1)
    # heads are consecutive slices of D columns
    q = q.view(B, T, H, D).transpose(1, 2)  # (B,H,T,D)
    k = k.view(B, T, H, D).transpose(1, 2)
    v = v.view(B, T, H, D).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att, dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    return y @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]


def mlp(x, P, p):
    h = x @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"]
    h = gelu_tanh(h)
    return h @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]


def forward(P, ids, targets, cfg):
    B, T = ids.shape
    wte = P["transformer.wte.weight"]
    x = wte[ids] + P["transformer.wpe.weight"][:T].unsqueeze(0)
    for i in range(cfg["L"]):
        p = "transformer.h.%d." % i
        x = x + attention(layernorm(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"]),
                          P, p, cfg["H"])
        x = x + mlp(layernorm(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"]), P, p)
    x = layernorm(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"])
    logits = x @ wte.t()
    logp = torch.log_softmax(logits, dim=-1)
    loss = -logp.gather(-1, targets.unsqueeze(-1)).mean()
    return logits, loss


def forward_reversible(P, ids, targets, cfg):
    """Reversible residual layers (Reformer), as [model] reversible = true:
    the stream is a pair (x1, x2), both the embedding output at the start;
    y1 = x1 + attn(ln_1(x2)), y2 = x2 + mlp(ln_2(y1)); ln_f reads the mean
    (y1 + y2) / 2.  Autograd stores every activation: the reference for the
    runtime's backward, which rebuilds them from the layer outputs."""
    B, T = ids.shape
    wte = P["transformer.wte.weight"]
    x1 = wte[ids] + P["transformer.wpe.weight"][:T].unsqueeze(0)
    x2 = x1
    for i in range(cfg["L"]):
        p = "transformer.h.%d." % i
        x1 = x1 + attention(layernorm(x2, P[p + "ln_1.weight"], P[p + "ln_1.bias"]), P, p, cfg["H"])
        x2 = x2 + mlp(layernorm(x1, P[p + "ln_2.weight"], P[p + "ln_2.bias"]), P, p)
    x = layernorm(0.5 * (x1 + x2), P["transformer.ln_f.weight"], P["transformer.ln_f.bias"])
    logits = x @ wte.t()
    logp = torch.log_softmax(logits, dim=-1)
    loss = -logp.gather(-1, targets.unsqueeze(-1)).mean()
    return logits, loss


def loss_and_grads(P, ids, targets, cfg, fwd=forward):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in P.items()}
    logits, loss = fwd(leaves, ids, targets, cfg)
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return logits.detach(), loss.detach(), {n: g.detach() for n, g in zip(names, grads)}


# --------------------------------------------------------------------------
# AdamW (explicit, torch.optim.AdamW semantics)
# --------------------------------------------------------------------------
def adamw_explicit(P, ids, targets, cfg, steps):
    lr, b1, b2, eps, wd = (OPT[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
    P = {n: t.clone() for n, t in P.items()}
    m = {n: torch.zeros_like(t) for n, t in P.items()}
    v = {n: torch.zeros_like(t) for n, t in P.items()}
    losses = []
    for t in range(1, steps + 1):
        _, loss, g = loss_and_grads(P, ids, targets, cfg)
        losses.append(loss.item())
        bc1 = 1.0 - b1 ** t
        bc2 = 1.0 - b2 ** t
        for n in P:
            decay = wd if P[n].dim() >= 2 else 0.0
            P[n] = P[n] * (1.0 - lr * decay)
            m[n] = b1 * m[n] + (1.0 - b1) * g[n]
            v[n] = b2 * v[n] + (1.0 - b2) * g[n] * g[n]
            # = lr * mhat / (sqrt(vhat) + eps), in torch's order of operations
            denom = torch.sqrt(v[n]) / math.sqrt(bc2) + eps
            P[n] = P[n] - (lr / bc1) * m[n] / denom
    return P, losses


def adamw_torch(P, ids, targets, cfg, steps):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in P.items()}
    decay = [t for t in leaves.values() if t.dim() >= 2]
    no_decay = [t for t in leaves.values() if t.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": OPT["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=OPT["lr"], betas=(OPT["beta1"], OPT["beta2"]), eps=OPT["eps"])
    for _ in range(steps):
        opt.zero_grad()
        _, loss = forward(leaves, ids, targets, cfg)
        loss.backward()
        opt.step()
    return {n: t.detach() for n, t in leaves.items()}


# --------------------------------------------------------------------------
# safetensors (hand-written)
# --------------------------------------------------------------------------
_DT = {np.dtype("<f4"): "F32", np.dtype("<i4"): "I32"}


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs = []
    off = 0
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr)
        dt = _DT[arr.dtype]
        raw = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (8 - (8 + len(hjson)) % 8) % 8
    hjson += b" " * pad
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        dt = {"F32": "<f4", "I32": "<i4"}[info["dtype"]]
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[base + a:base + b], dtype=dt).reshape(info["shape"])
    return out, meta


# --------------------------------------------------------------------------
def f32(t):
    return t.detach().to(torch.float32).numpy().astype("<f4")


def attn_example():
    X = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]], dtype=torch.float64)
    S = X @ X.t() / math.sqrt(3.0)
    noncausal = torch.softmax(S, dim=-1) @ X
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    causal = torch.softmax(S.masked_fill(~mask, float("-inf")), dim=-1) @ X
    return X, noncausal, causal


def finite_difference_check(P, ids, targets, cfg, grads, gen, forward=forward):
    h = 1e-5
    names = ["transformer.h.0.attn.c_attn.weight", "transformer.wte.weight",
             "transformer.h.1.ln_2.weight"]
    for name in names:
        t = P[name]
        idx = int(torch.randint(0, t.numel(), (1,), generator=gen).item())
        Pp = {n: x.clone() for n, x in P.items()}
        Pm = {n: x.clone() for n, x in P.items()}
        Pp[name].view(-1)[idx] += h
        Pm[name].view(-1)[idx] -= h
        _, lp = forward(Pp, ids, targets, cfg)
        _, lm = forward(Pm, ids, targets, cfg)
        fd = (lp.item() - lm.item()) / (2 * h)
        ag = grads[name].view(-1)[idx].item()
        rel = abs(fd - ag) / max(abs(fd), abs(ag), 1e-300)
        print("fd check %-40s [%4d] autograd % .12e  fd % .12e  rel %.2e"
              % (name, idx, ag, fd, rel))
        assert rel < 1e-6, "finite-difference mismatch for %s[%d]" % (name, idx)


def main():
    torch.set_default_dtype(torch.float64)
    cfg = CFG
    gen = torch.Generator().manual_seed(SEED)
    P = init_params(cfg, gen)
    ids = torch.randint(0, cfg["V"], (cfg["B"], cfg["T"]), generator=gen)
    targets = torch.randint(0, cfg["V"], (cfg["B"], cfg["T"]), generator=gen)

    logits, loss, grads = loss_and_grads(P, ids, targets, cfg)
    print("loss %.12f (ln V = %.6f)" % (loss.item(), math.log(cfg["V"])))

    finite_difference_check(P, ids, targets, cfg, grads, gen)

    P2, losses = adamw_explicit(P, ids, targets, cfg, steps=2)
    P2t = adamw_torch(P, ids, targets, cfg, steps=2)
    diffs = {n: (P2[n] - P2t[n]).abs().max().item() for n in P}
    worst = max(diffs.values())
    print("adamw losses before steps 1,2: %s; explicit vs torch.optim.AdamW max |diff| %.3e"
          % (losses, worst))
    assert worst < 1e-13, "explicit AdamW disagrees with torch.optim.AdamW"
    _, loss3 = forward(P2, ids, targets, cfg)
    print("loss after 2 AdamW steps %.12f" % loss3.item())

    X, nc, ca = attn_example()
    def show(title, A):
        print(title)
        for row in A.tolist():
            print("   " + "  ".join("%.17g" % v for v in row))
    show("attn_example.x =", X)
    show("attn_example.noncausal = softmax(X X^T / sqrt(3)) X =", nc)
    show("attn_example.causal (same, causal mask) =", ca)
    print("(scores reach 365/sqrt(3) = 210.7: exp overflows float32 unless the row max"
          " is subtracted first, so the example also tests softmax stability)")

    names = [n for n, _, _ in param_specs(cfg)]
    tensors = []
    tensors += [(n, f32(P[n])) for n in names]
    tensors += [("input_ids", ids.to(torch.int32).numpy().astype("<i4")),
                ("targets", targets.to(torch.int32).numpy().astype("<i4")),
                ("logits", f32(logits)),
                ("loss", f32(loss.reshape(1)))]
    tensors += [("grad." + n, f32(grads[n])) for n in names]
    tensors += [("adamw2." + n, f32(P2[n])) for n in names]
    tensors += [("attn_example.x", f32(X)),
                ("attn_example.noncausal", f32(nc)),
                ("attn_example.causal", f32(ca))]
    meta = {k: str(v) for k, v in cfg.items()}
    meta.update({"lr": "0.01", "beta1": "0.9", "beta2": "0.95", "eps": "1e-8",
                 "weight_decay": "0.1"})
    write_safetensors(OUT_PATH, tensors, meta)

    # read back and compare
    back, meta_back = read_safetensors(OUT_PATH)
    assert meta_back == meta
    assert set(back) == {n for n, _ in tensors}
    for n, a in tensors:
        assert back[n].shape == a.shape and np.array_equal(back[n], a), n
    size = os.path.getsize(OUT_PATH)
    print("wrote %s: %d tensors, %d bytes" % (OUT_PATH, len(tensors), size))
    assert size < 200 * 1024
    make_reversible_fixture()


def make_reversible_fixture():
    """gpt_tiny_reversible.safetensors: the same tiny shapes with 4 layers
    (CFG_REV), its own parameters, the reversible model's logits, loss and
    every gradient (names as in gpt_tiny.safetensors)."""
    cfg = CFG_REV
    gen = torch.Generator().manual_seed(SEED + 1)
    P = init_params(cfg, gen)
    ids = torch.randint(0, cfg["V"], (cfg["B"], cfg["T"]), generator=gen)
    targets = torch.randint(0, cfg["V"], (cfg["B"], cfg["T"]), generator=gen)
    logits, loss, grads = loss_and_grads(P, ids, targets, cfg, fwd=forward_reversible)
    print("reversible loss %.12f" % loss.item())
    finite_difference_check(P, ids, targets, cfg, grads, gen, forward=forward_reversible)
    names = [n for n, _, _ in param_specs(cfg)]
    tensors = [(n, f32(P[n])) for n in names]
    tensors += [("input_ids", ids.to(torch.int32).numpy().astype("<i4")),
                ("targets", targets.to(torch.int32).numpy().astype("<i4")),
                ("logits", f32(logits)), ("loss", f32(loss.reshape(1)))]
    tensors += [("grad." + n, f32(grads[n])) for n in names]
    meta = {k: str(v) for k, v in cfg.items()}
    meta["reversible"] = "true"
    write_safetensors(OUT_REV_PATH, tensors, meta)
    back, meta_back = read_safetensors(OUT_REV_PATH)
    assert meta_back == meta
    for n, a in tensors:
        assert np.array_equal(back[n], a), n
    print("wrote %s: %d tensors, %d bytes" % (OUT_REV_PATH, len(tensors), os.path.getsize(OUT_REV_PATH)))


if __name__ == "__main__":
    sys.exit(main())
