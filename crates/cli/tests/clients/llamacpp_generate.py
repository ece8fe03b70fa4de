#!/usr/bin/env python3
"""Greedy text from llama.cpp (the reference build's Python bindings), with a GGUF LoRA adapter
at scale 1 when given. Run by `ref-llamacpp python`:

    ref-llamacpp python llamacpp_generate.py BASE.gguf PROMPT N_TOKENS [LORA.gguf]

Prints the generated text as JSON (a string) on stdout.
"""

import json
import sys

import llama_cpp


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    base, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lora = sys.argv[4] if len(sys.argv) == 5 else None
    llm = llama_cpp.Llama(
        model_path=base,
        lora_path=lora,
        lora_scale=1.0,
        n_ctx=256,
        n_threads=2,
        seed=0,
        verbose=False,
    )
    out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, top_k=1)
    print(json.dumps(out["choices"][0]["text"]))


if __name__ == "__main__":
    main()
