#!/usr/bin/env python3
"""compare.py — compares two runs of fsrun independently of fsrun's code
(pure Python: struct and json, no numpy).

  compare.py losses REF.jsonl GOT.jsonl RTOL [FIRST_STEP]
      every training row of REF from FIRST_STEP on must be in GOT with its
      "loss" and "grad_norm" (the global norm before clipping) each within
      |got - ref| <= RTOL * |ref|; prints the worst.
  compare.py weights REF.safetensors GOT.safetensors ATOL [RTOL]
      same tensor names and shapes; every element |got - ref| <= ATOL +
      RTOL * |ref|; prints the worst tensor. Exit status 0 when they agree.
"""
import json
import struct
import sys


def losses(path):
    rows = {}
    for line in open(path):
        obj = json.loads(line)
        if "loss" in obj:
            # a resumed run appends: the last row of a step wins
            rows[obj["step"]] = (obj["loss"], obj.get("grad_norm"))
    return rows


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise SystemExit("%s: %s is %s, expected F32" % (path, name, t["dtype"]))
        lo, hi = t["data_offsets"]
        data = b[8 + n + lo:8 + n + hi]
        out[name] = (t["shape"], struct.unpack("<%df" % (len(data) // 4), data))
    return out


def cmp_losses(ref_path, got_path, rtol, first=1):
    ref, got = losses(ref_path), losses(got_path)
    steps = sorted(s for s in ref if s >= first)
    if not steps:
        print("no steps to compare in %s" % ref_path)
        return 1
    worst, where = -1.0, None
    for s in steps:
        if s not in got:
            print("step %d: missing from %s" % (s, got_path))
            return 1
        for i, key in enumerate(("loss", "grad_norm")):
            r, g = ref[s][i], got[s][i]
            if r is None:
                continue
            if g is None:
                print("step %d: no %s in %s" % (s, key, got_path))
                return 1
            rel = abs(g - r) / max(abs(r), 1e-30)
            if rel > worst:
                worst, where = rel, (s, key, r, g)
    print("losses: %d steps, worst relative difference %.3g at step %d %s (ref %.6f, got %.6f)"
          % ((len(steps), worst) + where))
    return 0 if worst <= rtol else 1


def cmp_weights(ref_path, got_path, atol, rtol=0.0):
    ref, got = read_st(ref_path), read_st(got_path)
    if sorted(ref) != sorted(got):
        print("tensor names differ: only in ref %s, only in got %s"
              % (sorted(set(ref) - set(got)), sorted(set(got) - set(ref))))
        return 1
    worst, worst_name, bad = -1.0, None, 0
    for name in sorted(ref):
        (rs, rv), (gs, gv) = ref[name], got[name]
        if rs != gs:
            print("%s: shape %s vs %s" % (name, rs, gs))
            return 1
        for r, g in zip(rv, gv):
            excess = abs(g - r) - (atol + rtol * abs(r))
            if excess > worst:
                worst, worst_name = excess, name
            if excess > 0:
                bad += 1
    print("weights: %d tensors, %d elements out of tolerance; worst excess %.3g in %s"
          % (len(ref), bad, worst, worst_name))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    what, a, b = sys.argv[1:4]
    if what == "losses":
        sys.exit(cmp_losses(a, b, float(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 1))
    if what == "weights":
        sys.exit(cmp_weights(a, b, float(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else 0.0))
    raise SystemExit(__doc__)
