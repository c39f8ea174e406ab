#!/usr/bin/env python3
"""hf_ref.py — the Hugging Face side of the interop tests: transformers,
tokenizers and PyTorch as the independent reference for fsrun's files.
Run with the test venv's python ($FS_PYTHON, scripts/pyenv.sh).

  hf_ref.py make DIR VARIANT [--seed S] [--vocab V] [--positions P] [--embd C] [--layers L] [--heads H]
      a GPT2LMHeadModel from a small GPT2Config and a fixed seed, written by
      save_pretrained as VARIANT: tied, untied (tie_word_embeddings=False),
      bare (GPT2Model: no "transformer." prefix, no head), sharded
      (model-0000N-of-0000M.safetensors + index), fp16, bf16
  hf_ref.py eval DIR TOKENS T [--strict]
      transformers' loss over fsrun's eval windows of T tokens (window b reads
      [bT, bT+T) and predicts [bT+1, bT+T]); TOKENS is a text file (bytes are
      tokens), a token cache (*.tokens) or "tok:FILE" (AutoTokenizer of DIR).
      --strict: from_pretrained must log no warning. Prints {"loss", "tokens"}.
  hf_ref.py greedy DIR PROMPT N
      N greedy tokens after PROMPT (bytes), as a JSON list of ids
  hf_ref.py tensors DIR
      every tensor of DIR's model as float32, sha256 of its bytes, JSON
  hf_ref.py encode TOKENIZER TEXT OUT
      tokenizers' ids of TEXT (the whole file as one string) into OUT (int32);
      TOKENIZER is a tokenizer.json, "fast:DIR" (AutoTokenizer) or
      "vm:VOCAB,MERGES" (GPT2TokenizerFast from GPT-2's own two files)
  hf_ref.py train-bpe TEXT VOCAB OUT_DIR
      tokenizers' own BpeTrainer, byte-level: OUT_DIR/tokenizer.json and
      OUT_DIR/vocab.json + merges.txt
  hf_ref.py stress OUT [STEP]
      UTF-8 stress text: accents, CJK, emoji (with joiners and modifiers),
      digits of several scripts, contractions (any case), runs of every kind
      of white space, combining marks, <|endoftext|>, and every code point
      (every STEP-th, default 3) between letters, digits and spaces
  hf_ref.py cache FILE OUT      the tokens of a fsrun token cache into OUT (int32)
  hf_ref.py same A B            two int32 files hold the same tokens (prints where not)
"""
import hashlib
import json
import logging
import os
import struct
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402


def arg(flag, default, cast=int):
    if flag in sys.argv:
        return cast(sys.argv[sys.argv.index(flag) + 1])
    return default


def read_cache(path):
    b = open(path, "rb").read()
    assert b[:8] == b"FSTOKENS", path + ": not a fsrun token cache"
    version, width, _ident, _size, _hash, n = struct.unpack("<IIQQQQ", b[8:48])
    assert version == 1 and width == 4, (version, width)
    toks = np.frombuffer(b, dtype="<i4", count=n, offset=64)
    assert len(toks) == n
    return toks


def make(out, variant):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(arg("--seed", 1234))
    cfg = GPT2Config(vocab_size=arg("--vocab", 256), n_positions=arg("--positions", 32), n_embd=arg("--embd", 32),
                     n_layer=arg("--layers", 2), n_head=arg("--heads", 2), tie_word_embeddings=variant != "untied",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg)
    # GPT-2's init leaves biases and LayerNorms at 0 and 1: perturb them so every tensor matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn_like(p))
        if variant == "untied":
            model.lm_head.weight.copy_(0.05 * torch.randn_like(model.lm_head.weight))
    if variant == "bare":
        model.transformer.save_pretrained(out, safe_serialization=True)
    elif variant == "sharded":
        model.save_pretrained(out, safe_serialization=True, max_shard_size="40KB")
    elif variant == "fp16":
        model.half().save_pretrained(out, safe_serialization=True)
    elif variant == "bf16":
        model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True)


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def load(path, strict):
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    cap = Captured()
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(cap)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float32)
    logger.removeHandler(cap)
    said = cap.records + [str(w.message) for w in caught]
    if strict and said:
        sys.exit("from_pretrained(%s) warned: %s" % (path, said))
    model.eval()
    return model


def tokens_of(spec, model_dir):
    if spec.startswith("tok:"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        return np.array(tok(open(spec[4:], encoding="utf-8", newline="").read())["input_ids"], dtype=np.int64)
    if spec.endswith(".tokens"):
        return read_cache(spec).astype(np.int64)
    return np.frombuffer(open(spec, "rb").read(), dtype=np.uint8).astype(np.int64)


def evaluate(path, spec, T, strict):
    import torch

    model = load(path, strict)
    toks = tokens_of(spec, path)
    windows = (len(toks) - 1) // T
    total, n = 0.0, 0
    with torch.no_grad():
        for b0 in range(0, windows, 16):
            nb = min(16, windows - b0)
            x = torch.tensor(np.stack([toks[b * T:b * T + T] for b in range(b0, b0 + nb)]))
            y = torch.tensor(np.stack([toks[b * T + 1:b * T + T + 1] for b in range(b0, b0 + nb)]))
            logits = model(x).logits.double()
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                       reduction="sum").item()
            n += nb * T
    print(json.dumps({"loss": total / n, "tokens": n}))


def greedy(path, prompt, n):
    import torch

    model = load(path, False)
    ids = torch.tensor([list(prompt.encode("utf-8"))])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    print(json.dumps(out[0, ids.shape[1]:].tolist()))


def tensors(path):
    from safetensors.torch import load_file
    import torch

    files = []
    if os.path.isdir(path):
        idx = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(idx):
            files = sorted({os.path.join(path, f) for f in json.load(open(idx))["weight_map"].values()})
        else:
            files = [os.path.join(path, "model.safetensors")]
    else:
        files = [path]
    out = {}
    for f in files:
        for k, v in load_file(f).items():
            k = k if k.startswith("transformer.") or k == "lm_head.weight" else "transformer." + k
            out[k] = hashlib.sha256(v.to(torch.float32).numpy().tobytes()).hexdigest()
    print(json.dumps(out, sort_keys=True))


def encode(spec, text_path, out):
    text = open(text_path, encoding="utf-8", newline="").read()  # "\r\n" stays
    if spec.startswith("fast:"):
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(spec[5:])(text)["input_ids"]
    elif spec.startswith("vm:"):
        from transformers import GPT2TokenizerFast

        vocab, merges = spec[3:].split(",")
        ids = GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)(text)["input_ids"]
    else:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(spec).encode(text).ids
    np.array(ids, dtype="<i4").tofile(out)
    print(len(ids))


def train_bpe(text, vocab, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([text], trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    tok.model.save(out_dir)  # vocab.json, merges.txt


def stress(out, step):
    import random

    rnd = random.Random(7)
    parts = ["café naïve résumé Ærøskøbing Łódź ", "中文字符和标点，。！", "日本語のテキスト、カタカナ ", "한국어 텍스트 ",
             "😀😃🎉👍🏽👨‍👩‍👧‍👦 🇫🇷 ", "1234567890 ١٢٣ ०१२ Ⅻ ½ ²³ ", "I'm you're we've they'll she'd it's ISN'T 'S 'Re ",
             "   ", "\t\t", "\n\n\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085", "\u1680",
             "\u200b", "\u2009", "\u202f", "\u205f", "\x0b\x0c", "e\u0301", "हिन्दी ", "العربية ", "Ελληνικά ",
             "Русский ", "∑∫√≈≠ ", "$%&*()[]{} ", "--- ... !!! ???", "'", "''", "' ", " '", "x", " y", "  z",
             "\x1c\x1d\x1e\x1f", "\x7f", "\ufeff", "\U0001d400\U0001d7d8 ", "<|endoftext|>", " <|endoftext|> ",
             "2024-01-02 12:34:56.789", "    def f(x):\n        return x  \n"]
    out_parts = [rnd.choice(parts) for _ in range(20000)]
    for cp in range(0, 0x110000, step):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        out_parts.append(c + "a" + c + " " + c + "1" + c + c + " ")
    open(out, "w", encoding="utf-8", newline="").write("".join(out_parts))


def same(a, b):
    x, y = np.fromfile(a, dtype="<i4"), np.fromfile(b, dtype="<i4")
    if len(x) == len(y) and (x == y).all():
        print("same: %d tokens" % len(x))
        return 0
    i = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
    print("differ: %d vs %d tokens, first difference at %d: %s vs %s"
          % (len(x), len(y), i, x[max(0, i - 3):i + 4].tolist(), y[max(0, i - 3):i + 4].tolist()))
    return 1


def main():
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2], sys.argv[3])
    elif cmd == "eval":
        evaluate(sys.argv[2], sys.argv[3], int(sys.argv[4]), "--strict" in sys.argv)
    elif cmd == "greedy":
        greedy(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "tensors":
        tensors(sys.argv[2])
    elif cmd == "encode":
        encode(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "train-bpe":
        train_bpe(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif cmd == "stress":
        stress(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3)
    elif cmd == "cache":
        read_cache(sys.argv[2]).astype("<i4").tofile(sys.argv[3])
    elif cmd == "same":
        sys.exit(same(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
