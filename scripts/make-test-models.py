#!/usr/bin/env python3
"""Tiny random-weight GGUF test models for qwen2 / qwen3 / llama (Llama-3 style), their
quantizations, and reference logits from llama.cpp.

Run via the wrapper `scripts/make-test-models` (which runs this under `ref-llamacpp python`):

    scripts/make-test-models                # build models (idempotent) + write goldens
    scripts/make-test-models --no-goldens   # models only

Models go to ${VERITY_ASSETS:-~/.cache/verity/assets}/test-models/, goldens to
tests/golden/random/. Everything is deterministic: the F32 base files are written from a
seeded numpy generator, so re-running reproduces them byte for byte, and llama-quantize
is deterministic, so the quantized files are reproduced too. Expected checksums of every
model file are committed in tests/golden/random/manifest.json.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REF = os.environ.get("REF_LLAMACPP", "/work/shared/tools/ref-llamacpp")
GOLDEN = ROOT / "tests" / "golden" / "random"
TEXT = ROOT / "tests" / "golden" / "text.txt"  # BPE merges are learned from this (committed) text


def _import_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError:
        src = subprocess.check_output([REF, "src"], text=True).strip()
        sys.path.insert(0, os.path.join(src, "vendor", "llama.cpp", "gguf-py"))
    import gguf
    return gguf


# --------------------------------------------------------------------------------------
# Shapes: hidden 256, 2 layers, 4 heads, 2 KV heads, FFN 512, ctx 512 (all matrix rows are
# multiples of 256 so every K-quant applies to every matrix).
N_EMBD = 256
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 512
N_CTX = 512

N_MERGES_TARGET = 250  # 256 byte tokens + 250 merged tokens + 6 special = 512
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
            "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]

ARCHS = {
    # qwen2: q/k/v biases, untied output.weight
    "qwen2": dict(head_dim=64, rope_theta=1000000.0, eps=1e-6, tied=False, qkv_bias=True,
                  qk_norm=False, llama3_rope=False, pre="qwen2",
                  bos="<|endoftext|>", eos="<|im_end|>", add_bos=False, seed=1),
    # qwen3: per-head q/k RMSNorm, no biases, tied embeddings, head_dim 128 != n_embd/n_head
    # (as in the real Qwen3-0.6B: n_embd 1024, 16 heads x 128), so key_length is set.
    "qwen3": dict(head_dim=128, rope_theta=1000000.0, eps=1e-6, tied=True, qkv_bias=False,
                  qk_norm=True, llama3_rope=False, pre="qwen2",
                  bos="<|endoftext|>", eos="<|im_end|>", add_bos=False, seed=2),
    # llama (Llama-3 style): rope_freqs.weight (llama3 rope scaling), theta 500000, GQA
    "llama": dict(head_dim=64, rope_theta=500000.0, eps=1e-5, tied=False, qkv_bias=False,
                  qk_norm=False, llama3_rope=True, pre="llama-bpe",
                  bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True, seed=3),
}

# (arch, file-type label, llama-quantize type, --pure). Every type appears at least once,
# every arch has >= 3 types. Labels: Q4_K / Q5_K are `--pure` Q4_K_M / Q5_K_M (all matrices
# Q4_K / Q5_K); Q4_K_M is the normal (non-pure) Q4_K + Q6_K mixture; Q3_K is `--pure` Q3_K_M.
# MXFP4: llama-quantize's only MXFP4 file type, MXFP4_MOE, puts MXFP4 in expert tensors and
# Q8_0 elsewhere, so the dense models get every matrix in MXFP4 through its per-tensor override
# (EXTRA_ARGS): still llama.cpp's own quantizer (quantize_row_mxfp4_ref).
QUANTS = [
    ("qwen2", "F16", "F16", True),
    ("qwen2", "Q8_0", "Q8_0", True),
    ("qwen2", "Q4_0", "Q4_0", True),
    ("qwen2", "Q5_1", "Q5_1", True),
    ("qwen2", "Q4_K_M", "Q4_K_M", False),
    ("qwen2", "Q6_K", "Q6_K", True),
    ("qwen3", "BF16", "BF16", True),
    ("qwen3", "Q8_0", "Q8_0", True),
    ("qwen3", "Q4_1", "Q4_1", True),
    ("qwen3", "Q5_0", "Q5_0", True),
    ("qwen3", "Q4_K", "Q4_K_M", True),
    ("qwen3", "Q5_K_M", "Q5_K_M", False),
    ("llama", "F16", "F16", True),
    ("llama", "BF16", "BF16", True),
    ("llama", "Q8_0", "Q8_0", True),
    ("llama", "Q4_0", "Q4_0", True),
    ("llama", "Q4_1", "Q4_1", True),
    ("llama", "Q5_0", "Q5_0", True),
    ("llama", "Q5_1", "Q5_1", True),
    ("llama", "Q5_K", "Q5_K_M", True),
    ("llama", "Q6_K", "Q6_K", True),
    ("llama", "Q4_K_M", "Q4_K_M", False),
    # The low-bit types (issue 16).
    ("qwen2", "Q2_K", "Q2_K", True),
    ("qwen2", "IQ4_NL", "IQ4_NL", True),
    ("qwen3", "Q3_K", "Q3_K_M", True),
    ("qwen3", "IQ4_XS", "IQ4_XS", True),
    ("qwen3", "MXFP4", "MXFP4_MOE", True),
    ("llama", "Q2_K", "Q2_K", True),
    ("llama", "Q3_K", "Q3_K_M", True),
    ("llama", "IQ4_NL", "IQ4_NL", True),
    ("llama", "IQ4_XS", "IQ4_XS", True),
    ("llama", "MXFP4", "MXFP4_MOE", True),
]
EXTRA_ARGS = {"MXFP4": ["--tensor-type", "weight=mxfp4"]}

GOLDEN_SEED = 1234
GOLDEN_N_TOKENS = 16
GOLDEN_N_GREEDY = 8
TOKENIZER_CHECK_TEXT = "Hello world! The GNU General Public License, version 3 (2007).\n  def f(x): return x"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Byte-level BPE vocabulary (GPT-2 style) learned deterministically from tests/golden/text.txt

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs])), bs  # byte -> char, byte order of ids 0..255


def build_vocab():
    b2u, order = bytes_to_unicode()
    tokens = [b2u[b] for b in order]
    text = TEXT.read_text(encoding="utf-8")
    pat = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")
    counts = {}
    for w in pat.findall(text):
        key = tuple(b2u[b] for b in w.encode("utf-8"))
        counts[key] = counts.get(key, 0) + 1
    words = [[list(k), c] for k, c in sorted(counts.items())]
    merges = []
    seen = set(tokens)
    n_new = 0
    while n_new < N_MERGES_TARGET:
        pairs = {}
        for syms, c in words:
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(f"{best[0]} {best[1]}")
        new = best[0] + best[1]
        if new not in seen:
            seen.add(new)
            tokens.append(new)
            n_new += 1
        for w in words:
            syms = w[0]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == best[0] and syms[i + 1] == best[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            w[0] = out
    types = [1] * len(tokens) + [3] * len(SPECIALS)  # 1 = normal, 3 = control
    tokens = tokens + SPECIALS
    return tokens, types, merges


# --------------------------------------------------------------------------------------

def llama3_rope_factors(head_dim, base, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        old_context_len=8192):
    """Exactly what convert_hf_to_gguf (conversion/llama.py) computes for rope_type llama3."""
    import math
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_freq_wavelen:
            out.append(1)
        elif wavelen > low_freq_wavelen:
            out.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_base(gguf, arch, path, vocab):
    cfg = ARCHS[arch]
    tokens, types, merges = vocab
    n_vocab = len(tokens)
    hd = cfg["head_dim"]
    q_dim, kv_dim = N_HEAD * hd, N_HEAD_KV * hd
    rng = np.random.default_rng(cfg["seed"])

    def mat(n_out, n_in, std):  # numpy [n_out, n_in] -> GGUF ne [n_in, n_out]
        return (rng.standard_normal((n_out, n_in)) * std).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", "model")
    w.add_string("general.name", f"verity-test-{arch}-tiny")
    w.add_uint32("general.file_type", 0)  # ALL_F32
    w.add_uint32(f"{arch}.context_length", N_CTX)
    w.add_uint32(f"{arch}.embedding_length", N_EMBD)
    w.add_uint32(f"{arch}.block_count", N_LAYER)
    w.add_uint32(f"{arch}.feed_forward_length", N_FF)
    w.add_uint32(f"{arch}.attention.head_count", N_HEAD)
    w.add_uint32(f"{arch}.attention.head_count_kv", N_HEAD_KV)
    w.add_float32(f"{arch}.rope.freq_base", cfg["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg["eps"])
    if hd * N_HEAD != N_EMBD:
        w.add_uint32(f"{arch}.attention.key_length", hd)
        w.add_uint32(f"{arch}.attention.value_length", hd)
    if arch == "llama":
        w.add_uint32("llama.vocab_size", n_vocab)
        w.add_uint32("llama.rope.dimension_count", hd)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", cfg["pre"])
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", tokens.index(cfg["bos"]))
    w.add_uint32("tokenizer.ggml.eos_token_id", tokens.index(cfg["eos"]))
    w.add_uint32("tokenizer.ggml.padding_token_id", tokens.index("<|endoftext|>"))
    w.add_bool("tokenizer.ggml.add_bos_token", cfg["add_bos"])
    w.add_uint32("general.quantization_version", 2)

    # embedding: std 1 when untied (embedding rows are RMS-normalised before use anyway);
    # when tied it is also the LM head, so std 0.2 -> logits std ~ 0.2*sqrt(256) ~ 3
    w.add_tensor("token_embd.weight", mat(n_vocab, N_EMBD, 0.2 if cfg["tied"] else 1.0))
    if cfg["llama3_rope"]:
        f = llama3_rope_factors(hd, cfg["rope_theta"])
        assert np.any(f != 1.0) and np.any(f == 1.0), f
        w.add_tensor("rope_freqs.weight", f)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(N_EMBD))
        w.add_tensor(p + "attn_q.weight", mat(q_dim, N_EMBD, 0.1))
        w.add_tensor(p + "attn_k.weight", mat(kv_dim, N_EMBD, 0.1))
        w.add_tensor(p + "attn_v.weight", mat(kv_dim, N_EMBD, 0.06))
        if cfg["qkv_bias"]:
            w.add_tensor(p + "attn_q.bias", (rng.standard_normal(q_dim) * 0.5).astype(np.float32))
            w.add_tensor(p + "attn_k.bias", (rng.standard_normal(kv_dim) * 0.5).astype(np.float32))
            w.add_tensor(p + "attn_v.bias", (rng.standard_normal(kv_dim) * 0.1).astype(np.float32))
        if cfg["qk_norm"]:
            w.add_tensor(p + "attn_q_norm.weight", norm(hd))
            w.add_tensor(p + "attn_k_norm.weight", norm(hd))
        w.add_tensor(p + "attn_output.weight", mat(N_EMBD, q_dim, 0.06))
        w.add_tensor(p + "ffn_norm.weight", norm(N_EMBD))
        w.add_tensor(p + "ffn_gate.weight", mat(N_FF, N_EMBD, 0.06))
        w.add_tensor(p + "ffn_up.weight", mat(N_FF, N_EMBD, 0.06))
        w.add_tensor(p + "ffn_down.weight", mat(N_EMBD, N_FF, 0.06))
    w.add_tensor("output_norm.weight", norm(N_EMBD))
    if not cfg["tied"]:
        w.add_tensor("output.weight", mat(n_vocab, N_EMBD, 0.2))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def base_name(arch):
    return f"{arch}-tiny-F32.gguf"


def quant_name(arch, label):
    return f"{arch}-tiny-{label}.gguf"


def build_models(outdir, expected):
    """Write F32 bases + quantizations into outdir; skip files whose sha256 matches."""
    gguf = _import_gguf()
    outdir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    print(f"vocab: {len(vocab[0])} tokens, {len(vocab[2])} merges")
    sums = {}
    rebuilt_base = set()
    for arch in ARCHS:
        dst = outdir / base_name(arch)
        tmp = outdir / (base_name(arch) + ".tmp")
        write_base(gguf, arch, tmp, vocab)
        h = sha256(tmp)
        if dst.exists() and sha256(dst) == h:
            tmp.unlink()
            print(f"ok      {dst.name} {h}")
        else:
            os.replace(tmp, dst)
            rebuilt_base.add(arch)
            print(f"wrote   {dst.name} {h}")
        if expected and expected.get(dst.name) not in (None, h):
            print(f"WARNING {dst.name}: sha256 {h} != manifest {expected[dst.name]}")
        sums[dst.name] = h
    for arch, label, qtype, pure in QUANTS:
        src, dst = outdir / base_name(arch), outdir / quant_name(arch, label)
        exp = (expected or {}).get(dst.name)
        if dst.exists() and arch not in rebuilt_base and (exp is None or sha256(dst) == exp):
            print(f"ok      {dst.name}")
        else:
            cmd = [REF, "bin", "llama-quantize"] + (["--pure"] if pure else []) + \
                EXTRA_ARGS.get(label, []) + [str(src), str(dst), qtype, "2"]
            print("run     " + " ".join(cmd))
            r = subprocess.run(cmd, capture_output=True, text=True)
            log = outdir / (dst.name + ".quantize.log")
            log.write_text(r.stdout + r.stderr)
            if r.returncode != 0:
                sys.exit(f"llama-quantize failed, see {log}")
        h = sha256(dst)
        if exp is not None and exp != h:
            print(f"WARNING {dst.name}: sha256 {h} != manifest {exp}")
        sums[dst.name] = h
    with open(outdir / "SHA256SUMS", "w") as f:
        for k, v in sums.items():
            f.write(f"{v}  {k}\n")
    return sums


def tensor_types(path):
    gguf = _import_gguf()
    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def make_goldens(outdir, sums):
    import llama_cpp
    GOLDEN.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(GOLDEN_SEED)
    n_normal = 256 + N_MERGES_TARGET
    toks = [int(t) for t in rng.integers(0, n_normal, GOLDEN_N_TOKENS)]
    files = [(a, "F32") for a in ARCHS] + [(a, l) for a, l, _, _ in QUANTS]
    summary = []
    for arch, label in files:
        name = base_name(arch) if label == "F32" else quant_name(arch, label)
        path = outdir / name
        llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_batch=64,
                              n_threads=2, seed=0, verbose=False)
        n_vocab = llm.n_vocab()
        llm.reset()
        llm.eval(toks)
        logits = np.array(llm.scores[: len(toks)], dtype=np.float32)
        assert logits.shape == (len(toks), n_vocab)
        # greedy continuation (argmax), exercises incremental decoding with the KV cache
        greedy = []
        for _ in range(GOLDEN_N_GREEDY):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        tok_check = llm.tokenize(TOKENIZER_CHECK_TEXT.encode(), add_bos=True, special=False)
        stem = f"{arch}-{label}"
        (GOLDEN / f"{stem}.f32").write_bytes(logits.astype("<f4").tobytes())
        ttypes = tensor_types(path)
        types = sorted(set(ttypes.values()))
        meta = {"model": name, "arch": arch, "type": label, "model_sha256": sums[name],
                "tensor_types": types, "tensors": ttypes, "add_bos": False, "tokens": toks, "n_vocab": n_vocab,
                "n_tokens": len(toks), "logits_file": f"{stem}.f32",
                "logits_layout": "little-endian f32, row-major [n_tokens][n_vocab]",
                "greedy_tokens": greedy,
                "tokenizer_check": {"text": TOKENIZER_CHECK_TEXT, "add_special": True,
                                    "tokens": [int(t) for t in tok_check]}}
        with open(GOLDEN / f"{stem}.json", "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        std = float(logits.std(axis=-1).mean())
        summary.append((stem, std, types))
        print(f"golden  {stem:14s} logits std/row {std:.3f}  top1 {logits.argmax(-1)[:6].tolist()}  "
              f"greedy {greedy}  types {types}")
        del llm
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", default=os.path.join(
        os.environ.get("VERITY_ASSETS", os.path.expanduser("~/.cache/verity/assets")), "test-models"))
    ap.add_argument("--no-goldens", action="store_true")
    args = ap.parse_args()
    outdir = Path(args.outdir)
    manifest_path = GOLDEN / "manifest.json"
    expected = None
    if manifest_path.exists():
        expected = json.loads(manifest_path.read_text())["sha256"]
    sums = build_models(outdir, expected)
    if not args.no_goldens:
        make_goldens(outdir, sums)
        GOLDEN.mkdir(parents=True, exist_ok=True)
        manifest = {"dir": "${VERITY_ASSETS:-~/.cache/verity/assets}/test-models",
                    "models": [{"file": base_name(a), "arch": a, "type": "F32", "pure": True}
                               for a in ARCHS] +
                              [dict({"file": quant_name(a, l), "arch": a, "type": l,
                                     "llama_quantize_type": q, "pure": p},
                                    **({"llama_quantize_args": EXTRA_ARGS[l]} if l in EXTRA_ARGS else {}))
                               for a, l, q, p in QUANTS],
                    "sha256": sums}
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
