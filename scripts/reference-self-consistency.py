"""How closely llama.cpp agrees with itself when only its attention path or its matrix
product kernel changes.

Runs the reference over the golden inputs with flash attention off (how the goldens were
made) and on, and prints the same figures that crates/engine/tests/reference.rs checks for
verity: mean KL and top-1 agreement over tests/golden/text.txt, and how many of the 64
greedy tokens of each golden prompt stay identical. Then it runs again with flash attention
off and the CPU backend's tiled K-quant GEMM off (`GGML_CPU_TILED_MM=0`, read once per
process, hence a child process): the same integer products, summed in another float order.
This is the noise floor that any second implementation quantizing activations the way
llama.cpp does will meet.

    /work/shared/tools/ref-llamacpp python scripts/reference-self-consistency.py [smollm2|gemma3]
"""
import json
import os
import subprocess
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
import sys
WHICH = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
MODEL = {
    "smollm2": os.environ.get("VERITY_MODEL_SMOLLM2", str(Path.home() / ".cache/verity/models/SmolLM2-135M-Instruct.Q4_1.gguf")),
    "gemma3": os.environ.get("VERITY_MODEL_GEMMA3", str(Path.home() / ".cache/verity/models/gemma-3-270m-q4_k_m.gguf")),
}[WHICH]


def load(flash_attn):
    return llama_cpp.Llama(model_path=MODEL, logits_all=True, flash_attn=flash_attn, n_ctx=2048, n_threads=2, verbose=False)


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def compare(name, a, b):
    p, q = log_softmax(a), log_softmax(b)
    kl = (np.exp(p) * (p - q)).sum(axis=1).mean()
    top1 = (a.argmax(1) == b.argmax(1)).mean()
    print(f"{name}: over {len(a)} tokens: mean KL {kl:.6f}, top-1 agreement {top1 * 100:.2f}%")


def main():
    tokens = json.load(open(ROOT / f"tests/golden/{WHICH}-logits.json"))["tokens"]
    if len(sys.argv) > 2 and sys.argv[2] == "--dump":
        llm = load(False)
        llm.eval(tokens)
        np.save(sys.argv[3], np.array(llm.scores[: len(tokens)], dtype=np.float32))
        return
    greedy = json.load(open(ROOT / f"tests/golden/{WHICH}-greedy.json"))
    scores = {}
    for fa in (False, True):
        llm = load(fa)
        llm.eval(tokens)
        scores[fa] = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        if fa:
            for case in greedy:
                llm.reset()
                llm.eval(case["prompt_tokens"])
                same = 0
                for expected in case["output_tokens"]:
                    nxt = int(np.argmax(np.asarray(llm.scores[llm.n_tokens - 1])))
                    if nxt != expected:
                        break
                    same += 1
                    llm.eval([nxt])
                print(f"greedy {case['prompt']!r}: {same} of {len(case['output_tokens'])} tokens identical")
    compare("flash attention off vs on", scores[False], scores[True])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "scores.npy")
        env = dict(os.environ, GGML_CPU_TILED_MM="0")
        subprocess.run([sys.executable, __file__, WHICH, "--dump", out], env=env, check=True)
        compare("tiled GEMM on vs off", scores[False], np.load(out))


if __name__ == "__main__":
    main()
