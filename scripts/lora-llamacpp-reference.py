#!/usr/bin/env python3
"""llama.cpp's logits with LoRA adapters, for scripts/lora-reference.py (which calls it).
Run by the reference's python (`ref-llamacpp python`, which has `import llama_cpp`):

    ref-llamacpp python scripts/lora-llamacpp-reference.py BASE.gguf TOKENS.json OUT.f32 [LORA.gguf]

Evaluates the token ids of TOKENS.json (a JSON list) in one `eval` on BASE.gguf, with the GGUF
LoRA adapter LORA.gguf at scale 1 when given, and writes the logits of every position to
OUT.f32 (little-endian f32, row-major [n_tokens][n_vocab]). Same settings as the engine's
golden files: n_ctx 512, n_batch 512, n_threads 2, F16 KV cache (llama.cpp's default).
"""

import json
import sys

import llama_cpp
import numpy as np


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    base, tokens_file, out = sys.argv[1:4]
    lora = sys.argv[4] if len(sys.argv) == 5 else None
    tokens = json.load(open(tokens_file))
    llm = llama_cpp.Llama(
        model_path=base,
        lora_path=lora,
        lora_scale=1.0,
        logits_all=True,
        n_ctx=512,
        n_batch=512,
        n_threads=2,
        seed=0,
        verbose=False,
    )
    assert len(tokens) <= 512
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: len(tokens)], dtype=np.float32)
    assert scores.shape == (len(tokens), llm.n_vocab()), scores.shape
    assert np.isfinite(scores).all()
    scores.astype("<f4").tofile(out)


if __name__ == "__main__":
    main()
