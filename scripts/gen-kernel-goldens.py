#!/usr/bin/env python3
"""Generate golden data for verity-kernels' dequantization/quantization tests.

Uses llama.cpp's gguf-py (numpy) reference quantizers and dequantizers, which are
bit-exact with ggml-quants.c, to produce a small JSON file:

    crates/kernels/tests/data/quant-goldens.json

Each case holds the raw block bytes of one tensor type (hex), the f32 values ggml
dequantizes them to (hex of little-endian f32 bits, so comparison is exact), and,
for the types gguf-py can quantize, the f32 source values that were quantized.

Run (from the repository root):

    PYTHONPATH=~/.cache/verity-ref/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py \
        ~/.cache/verity-ref/venv/bin/python scripts/gen-kernel-goldens.py

One case is written per line so the Rust test can read it without a JSON library.
"""
import json
import os
import sys

import numpy as np

from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

SEED = 20240611
rng = np.random.default_rng(SEED)
QK_K = 256
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "kernels", "tests", "data",
                   "quant-goldens.json")


def f16_bytes(vals):
    return np.asarray(vals, dtype=np.float16).view(np.uint8)


def random_source(n):
    x = rng.standard_normal(n).astype(np.float32)
    # A block of zeros and a block with a large outlier exercise the edge cases.
    x[: min(32, n)] *= np.float32(0.01)
    if n >= 64:
        x[40] = np.float32(7.5)
    return x


def kquant_blocks(ty, n_blocks):
    """Random K-quant blocks: random bits everywhere, sane f16 scales."""
    blocks = []
    for _ in range(n_blocks):
        if ty == T.Q4_K:
            d = f16_bytes([rng.uniform(0.001, 0.05), rng.uniform(0.001, 0.05)])
            rest = rng.integers(0, 256, 12 + 128, dtype=np.uint8)
            blocks.append(np.concatenate([d, rest]))
        elif ty == T.Q5_K:
            d = f16_bytes([rng.uniform(0.001, 0.05), rng.uniform(0.001, 0.05)])
            rest = rng.integers(0, 256, 12 + 32 + 128, dtype=np.uint8)
            blocks.append(np.concatenate([d, rest]))
        elif ty == T.Q6_K:
            rest = rng.integers(0, 256, 128 + 64 + 16, dtype=np.uint8)
            d = f16_bytes([rng.uniform(-0.01, 0.01)])
            blocks.append(np.concatenate([rest, d]))
        elif ty == T.Q2_K:
            rest = rng.integers(0, 256, 16 + 64, dtype=np.uint8)
            d = f16_bytes([rng.uniform(0.001, 0.05), rng.uniform(0.001, 0.05)])
            blocks.append(np.concatenate([rest, d]))
        elif ty == T.Q3_K:
            rest = rng.integers(0, 256, 32 + 64 + 12, dtype=np.uint8)
            d = f16_bytes([rng.uniform(-0.01, 0.01)])
            blocks.append(np.concatenate([rest, d]))
        elif ty == T.IQ4_XS:
            d = f16_bytes([rng.uniform(-0.01, 0.01)])
            rest = rng.integers(0, 256, 2 + 4 + 128, dtype=np.uint8)
            blocks.append(np.concatenate([d, rest]))
        else:
            raise ValueError(ty)
    return np.concatenate(blocks)


def hexs(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes().hex()


def main():
    cases = []
    # Types gguf-py can quantize: quantize random data, keep the source too.
    for ty, n in [(T.F16, 64), (T.BF16, 64), (T.Q4_0, 128), (T.Q4_1, 128), (T.Q5_0, 128), (T.Q5_1, 128),
                  (T.Q8_0, 128)]:
        src = random_source(n)
        q = quantize(src, ty)
        raw = np.ascontiguousarray(q).view(np.uint8).reshape(-1)
        deq = dequantize(raw, ty).astype(np.float32).reshape(-1)
        cases.append({"type": ty.name, "n": n, "src": hexs(src), "bytes": hexs(raw), "f32": hexs(deq)})
    # K-quants: random blocks dequantized by gguf-py.
    for ty in [T.Q4_K, T.Q5_K, T.Q6_K]:
        n_blocks = 3
        raw = kquant_blocks(ty, n_blocks)
        deq = dequantize(raw, ty).astype(np.float32).reshape(-1)
        assert deq.shape[0] == n_blocks * QK_K
        cases.append({"type": ty.name, "n": n_blocks * QK_K, "src": "", "bytes": hexs(raw), "f32": hexs(deq)})

    # Low-bit types (appended last, so the cases above keep their random draws): K-quant-like
    # blocks of random bits; IQ4_NL blocks of 32 (random bits, f16 scale); MXFP4 quantized
    # by gguf-py, with exponents from a zero block to large values.
    for ty in [T.Q2_K, T.Q3_K, T.IQ4_XS]:
        raw = kquant_blocks(ty, 3)
        deq = dequantize(raw, ty).astype(np.float32).reshape(-1)
        cases.append({"type": ty.name, "n": 3 * QK_K, "src": "", "bytes": hexs(raw), "f32": hexs(deq)})
    nl = np.concatenate([np.concatenate([f16_bytes([rng.uniform(-0.05, 0.05)]),
                                         rng.integers(0, 256, 16, dtype=np.uint8)]) for _ in range(8)])
    cases.append({"type": "IQ4_NL", "n": 256, "src": "", "bytes": hexs(nl),
                  "f32": hexs(dequantize(nl, T.IQ4_NL).astype(np.float32).reshape(-1))})
    src = random_source(256)
    src[64:96] = 0.0
    src[96:128] *= np.float32(1e3)
    src[128:160] *= np.float32(1e-30)
    q = np.ascontiguousarray(quantize(src, T.MXFP4)).view(np.uint8).reshape(-1)
    cases.append({"type": "MXFP4", "n": 256, "src": hexs(src), "bytes": hexs(q),
                  "f32": hexs(dequantize(q, T.MXFP4).astype(np.float32).reshape(-1))})

    with open(OUT, "w") as f:
        f.write('{"seed": %d, "cases": [\n' % SEED)
        f.write(",\n".join(json.dumps(c, separators=(", ", ": ")) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
