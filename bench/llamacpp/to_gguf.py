#!/usr/bin/env python3
"""Convert an fsrun checkpoint (model.safetensors) to GGUF for llama.cpp.

A peer for measurement only (issue 14): the same weights in llama.cpp, so
its decoding speed and its loss can be compared with fsrun's.  Written with
the `gguf` package (build/llamacpp/venv, made by bench/llamacpp/build.sh).

What the mapping is, and why:
  * architecture "gpt2": learned positions, pre-LN blocks with biases, a
    fused QKV projection, GELU (tanh) MLP of width 4C, LayerNorm eps 1e-5,
    exactly fsrun's model;
  * fsrun keeps Hugging Face's Conv1D layout (in, out); GGUF wants
    (out, in): c_attn, c_proj, c_fc and mlp.c_proj are transposed;
  * no output.weight when the head is tied (llama.cpp then projects with
    token_embd); an untied lm_head.weight becomes output.weight;
  * tokenizer "gpt2" whose 256 tokens are GPT-2's byte-to-unicode characters
    in byte order, so llama.cpp's byte-level BPE maps byte b to token b
    (fsrun's tokenizer); the gguf writer refuses an empty merges list and
    llama.cpp needs the key, so there is one merge of two strings no token
    is ("ĠĠ ĠĠ": every token is a single character), which can never fire;
    no BOS is added.

Usage:
    build/llamacpp/venv/bin/python bench/llamacpp/to_gguf.py CKPT.safetensors OUT.gguf
        [--type f32|f16|bf16|q8_0] [--n-head N]
--type sets the 2-D weights' format (token_embd, the head, included;
position_embd, norms and biases stay f32, as llama-quantize leaves them).
n_head comes from the graph stored in the checkpoint's metadata.
"""

import argparse
import configparser
import json
import re
import struct
import sys

import numpy as np

import gguf


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        meta = header.pop("__metadata__", {}) or {}
        tensors = {}
        for name, info in header.items():
            if info["dtype"] != "F32":  # fsrun writes f32
                sys.exit(f"to_gguf: {path}: tensor {name} is {info['dtype']}, expected F32")
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            tensors[name] = np.frombuffer(f.read(end - begin), dtype="<f4").reshape(info["shape"])
    return tensors, meta


def graph_value(meta, section, key):
    text = meta.get("graph")
    if not text:
        return None
    cp = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), comment_prefixes=(";", "#"))
    cp.read_string(text)
    return cp.get(section, key, fallback=None)


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def add_weight(w, name, data, kind):
    """A 2-D weight in the chosen format; vectors and f32 as they are."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim < 2 or kind == "f32":
        w.add_tensor(name, data)
    elif kind == "f16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        q = gguf.quants.quantize(data, TYPES[kind])
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=TYPES[kind])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--type", choices=sorted(TYPES), default="f32")
    ap.add_argument("--n-head", type=int, default=0, help="override the graph's [model] n_head")
    a = ap.parse_args()

    t, meta = read_safetensors(a.checkpoint)
    plugin = graph_value(meta, "attention", "plugin") or "dense"
    if plugin != "dense":
        sys.exit(f"to_gguf: {a.checkpoint}: [attention] plugin = {plugin}; llama.cpp's gpt2 is dense attention only")
    if (graph_value(meta, "model", "reversible") or "false").lower() in ("true", "1", "yes", "on"):
        sys.exit(f"to_gguf: {a.checkpoint}: [model] reversible = true is not GPT-2")
    tok = (graph_value(meta, "model", "tokenizer") or "byte").strip()
    if tok != "byte":
        sys.exit(f"to_gguf: {a.checkpoint}: [model] tokenizer = {tok}; this converter writes fsrun's byte "
                 "tokenizer only")
    n_head = a.n_head or int(graph_value(meta, "model", "n_head") or 0)
    if n_head <= 0:
        sys.exit(f"to_gguf: {a.checkpoint}: no [model] n_head in its metadata: pass --n-head N")
    wte, wpe = t["transformer.wte.weight"], t["transformer.wpe.weight"]
    V, C = wte.shape
    T = wpe.shape[0]
    L = 1 + max(int(m.group(1)) for k in t if (m := re.match(r"transformer\.h\.(\d+)\.", k)))
    if V != 256:
        sys.exit(f"to_gguf: vocabulary of {V} tokens; this converter writes fsrun's byte tokenizer (256)")
    if C % n_head:
        sys.exit(f"to_gguf: n_embd {C} is not a multiple of n_head {n_head}")

    w = gguf.GGUFWriter(a.out, "gpt2")
    w.add_name(f"fsrun {a.checkpoint}")
    w.add_file_type(FILE_TYPES[a.type])
    w.add_context_length(T)
    w.add_embedding_length(C)
    w.add_feed_forward_length(4 * C)
    w.add_block_count(L)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-5)

    b2u = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([b2u[b] for b in range(256)])
    w.add_token_types([gguf.TokenType.NORMAL] * 256)
    w.add_token_merges(["ĠĠ ĠĠ"])  # never fires: no token is two characters
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    add_weight(w, "token_embd.weight", wte, a.type)
    add_weight(w, "position_embd.weight", wpe, "f32")
    for l in range(L):
        p, b = f"transformer.h.{l}.", f"blk.{l}."
        w.add_tensor(b + "attn_norm.weight", t[p + "ln_1.weight"])
        w.add_tensor(b + "attn_norm.bias", t[p + "ln_1.bias"])
        add_weight(w, b + "attn_qkv.weight", t[p + "attn.c_attn.weight"].T, a.type)
        w.add_tensor(b + "attn_qkv.bias", t[p + "attn.c_attn.bias"])
        add_weight(w, b + "attn_output.weight", t[p + "attn.c_proj.weight"].T, a.type)
        w.add_tensor(b + "attn_output.bias", t[p + "attn.c_proj.bias"])
        w.add_tensor(b + "ffn_norm.weight", t[p + "ln_2.weight"])
        w.add_tensor(b + "ffn_norm.bias", t[p + "ln_2.bias"])
        add_weight(w, b + "ffn_up.weight", t[p + "mlp.c_fc.weight"].T, a.type)
        w.add_tensor(b + "ffn_up.bias", t[p + "mlp.c_fc.bias"])
        add_weight(w, b + "ffn_down.weight", t[p + "mlp.c_proj.weight"].T, a.type)
        w.add_tensor(b + "ffn_down.bias", t[p + "mlp.c_proj.bias"])
    if "lm_head.weight" in t:  # untied head
        add_weight(w, "output.weight", t["lm_head.weight"], a.type)
    w.add_tensor("output_norm.weight", t["transformer.ln_f.weight"])
    w.add_tensor("output_norm.bias", t["transformer.ln_f.bias"])

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{a.out}: gpt2, L={L} H={n_head} C={C} T={T} V={V}, weights {a.type}")


if __name__ == "__main__":
    main()
