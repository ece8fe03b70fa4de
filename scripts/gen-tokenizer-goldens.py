#!/usr/bin/env python3
"""Reference token ids for SmolLM2's vocabulary, from llama.cpp (llama-cpp-python).

Usage: /work/shared/tools/ref-llamacpp python scripts/gen-tokenizer-goldens.py \
           SmolLM2-135M-Instruct.Q4_1.gguf ggml-vocab-llama-bpe.gguf.inp \
           > crates/tokenizer/tests/data/smollm2.out.json

Writes JSON: {"model": ..., "source": ..., "cases": [{"text": ..., "ids": [...]}, ...]} with
ids from Llama(vocab_only=True).tokenize(text, add_bos=False, special=False).
"""
import json
import os
import sys

import llama_cpp


def main():
    model, inp = sys.argv[1], sys.argv[2]
    with open(inp, encoding="utf-8") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()
    texts.append("The capital of France is")
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    cases = [
        {"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)}
        for t in texts
    ]
    json.dump(
        {
            "model": os.path.basename(model),
            "source": f"llama-cpp-python {llama_cpp.__version__}, strings of {os.path.basename(inp)}",
            "cases": cases,
        },
        sys.stdout,
        ensure_ascii=False,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
