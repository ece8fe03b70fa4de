#!/usr/bin/env python3
"""Generate a real model's reference goldens in tests/golden/ from llama.cpp.

Run through the reference wrapper (it provides `import llama_cpp` against the pinned build):

    /work/shared/tools/ref-llamacpp python scripts/gen-goldens.py [smollm2|gemma3]

(`gemma3`: Gemma 3 270M Q4_K_M, $VERITY_MODEL_GEMMA3 or
~/.cache/verity/models/gemma-3-270m-q4_k_m.gguf, from scripts/fetch-models; it writes
gemma3-logits.json and gemma3-greedy.json over the same text.)

Writes:
  tests/golden/text.txt            (only if missing) the evaluation text: the first
                                   paragraphs of /usr/share/common-licenses/GPL-3, whole
                                   paragraphs, until the text is 1,100-1,300 tokens
  tests/golden/smollm2-logits.json top-32 log-softmax at every position of text.txt
  tests/golden/smollm2-greedy.json greedy (argmax) completions of three fixed prompts

The model is $VERITY_MODEL_SMOLLM2 or ~/.cache/verity/models/SmolLM2-135M-Instruct.Q4_1.gguf.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
WHICH = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
MODELS = {
    "smollm2": ("VERITY_MODEL_SMOLLM2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "gemma3": ("VERITY_MODEL_GEMMA3", "gemma-3-270m-q4_k_m.gguf",
               "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}
_env, _file, EXPECTED_SHA = MODELS[WHICH]
MODEL = Path(os.environ.get(_env) or Path.home() / ".cache/verity/models" / _file)
TEXT_SOURCE = Path("/usr/share/common-licenses/GPL-3")
TOP_K = 32
N_CTX = 2048
GREEDY_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
]
GREEDY_NEW_TOKENS = 64


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_add_bos(llm):
    """What the GGUF declares in tokenizer.ggml.add_bos_token (None when absent)."""
    v = llm.metadata.get("tokenizer.ggml.add_bos_token")
    if v is None:
        return None
    return str(v).lower() == "true"


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def make_text(llm, add_bos):
    """First whole paragraphs of GPL-3 so that the token count lands in [1100, 1300]."""
    paras = TEXT_SOURCE.read_text(encoding="utf-8").split("\n\n")
    text = ""
    for p in paras:
        cand = text + p + "\n\n"
        n = len(llm.tokenize(cand.encode(), add_bos=add_bos, special=False))
        if n > 1300:
            break
        text = cand
        if n >= 1100:
            break
    n = len(llm.tokenize(text.encode(), add_bos=add_bos, special=False))
    assert 1100 <= n <= 1300, n
    return text


def main():
    sha = sha256(MODEL)
    if sha != EXPECTED_SHA:
        print(f"warning: {MODEL} sha256 {sha} != expected {EXPECTED_SHA}", file=sys.stderr)

    llm = llama_cpp.Llama(model_path=str(MODEL), logits_all=True, n_ctx=N_CTX, n_batch=512,
                          n_threads=2, seed=0, verbose=False)
    declared = model_add_bos(llm)
    add_bos = bool(declared)  # SmolLM2 declares add_bos_token = false -> no BOS; Gemma true
    print(f"model {MODEL} sha256 {sha}; tokenizer.ggml.add_bos_token={declared} -> add_bos={add_bos}")
    n_vocab = llm.n_vocab()
    eos = llm.token_eos()

    # ---- a) logits over text.txt
    text_path = GOLDEN / "text.txt"
    if not text_path.exists():
        text_path.write_text(make_text(llm, add_bos), encoding="utf-8")
    text = text_path.read_text(encoding="utf-8")
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    print(f"text.txt: {len(text)} chars, {len(tokens)} tokens")
    assert len(tokens) <= N_CTX
    llm.reset()
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    assert logits.shape == (len(tokens), n_vocab)
    lp = log_softmax(logits)
    positions = []
    for row in lp:
        # stable sort on -logprob: ties broken by lower id
        ids = np.argsort(-row, kind="stable")[:TOP_K]
        positions.append({"ids": [int(i) for i in ids],
                          "logprobs": [round(float(row[i]), 6) for i in ids]})
    top1 = np.argmax(logits[:-1], axis=-1)
    acc = float(np.mean(top1 == np.array(tokens[1:])))
    print(f"next-token top-1 accuracy on text: {acc:.3f}")
    out = {"model_sha256": sha, "text_file": "text.txt", "add_bos": add_bos,
           "n_vocab": n_vocab, "n_ctx": N_CTX, "tokens": [int(t) for t in tokens],
           "top_k": TOP_K, "positions": positions}
    with open(GOLDEN / f"{WHICH}-logits.json", "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")

    # ---- b) greedy completions
    results = []
    for prompt in GREEDY_PROMPTS:
        ptoks = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=False)
        llm.reset()
        llm.eval(ptoks)
        out_toks = []
        margins = []  # top-1 minus top-2 logit at each step: how close to a tie the choice was
        stopped = False
        for _ in range(GREEDY_NEW_TOKENS):
            logits = np.asarray(llm.scores[llm.n_tokens - 1])
            nxt = int(np.argmax(logits))  # first maximum on ties
            top2 = np.partition(logits, -2)[-2:]
            margins.append(round(float(top2[1] - top2[0]), 5))
            out_toks.append(nxt)
            if nxt == eos:
                stopped = True
                break
            llm.eval([nxt])
        text_out = llm.detokenize(out_toks).decode("utf-8", errors="replace")
        print(f"{prompt!r} -> {text_out!r}")
        results.append({"prompt": prompt, "add_bos": add_bos, "eos_id": eos,
                        "max_new_tokens": GREEDY_NEW_TOKENS, "stopped_at_eos": stopped,
                        "prompt_tokens": [int(t) for t in ptoks],
                        "output_tokens": out_toks, "output_text": text_out,
                        "output_margins": margins})
    with open(GOLDEN / f"{WHICH}-greedy.json", "w") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
