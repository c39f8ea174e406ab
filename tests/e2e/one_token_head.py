#!/usr/bin/env python3
"""one_token_head.py SRC DST TOKEN VALUE: a copy of checkpoint SRC whose
logits are the same at every position: ln_f maps every state to e_0 (gain
0, bias e_0) and only wte[TOKEN] has a component along it, VALUE, so the
logits are VALUE for TOKEN and 0 for every other (the head is tied)."""
import json
import struct
import sys

src, dst, token, value = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
b = bytearray(open(src, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])


def put(name, i, v):
    o = 8 + n + h[name]["data_offsets"][0] + 4 * i
    b[o:o + 4] = struct.pack("<f", v)


C = h["transformer.ln_f.weight"]["shape"][0]
V = h["transformer.wte.weight"]["shape"][0]
for i in range(C):
    put("transformer.ln_f.weight", i, 0.0)
    put("transformer.ln_f.bias", i, 1.0 if i == 0 else 0.0)
for v in range(V):
    put("transformer.wte.weight", v * C, value if v == token else 0.0)
open(dst, "wb").write(bytes(b))
