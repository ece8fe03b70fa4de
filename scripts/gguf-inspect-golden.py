#!/usr/bin/env python3
"""What gguf-py (llama.cpp's reference reader) says about GGUF files, for `verity inspect`'s test.

Run under the reference's python (it puts gguf-py on the path):

    /work/shared/tools/ref-llamacpp python scripts/gguf-inspect-golden.py \
        ~/.cache/verity/models/SmolLM2-135M-Instruct.Q4_1.gguf ... > crates/audit/tests/data/gguf-py-inspect.json

For each file (keyed by file name): GGUF version, architecture, tensor count, total parameter
count (sum of element counts, what llama.cpp's llama_model_n_params reports), per-type
tensor/parameter/byte counts, every `{arch}.*` hyperparameter, the tokenizer's model, vocab
size and special token ids, and the chat template.
"""
import json
import os
import subprocess
import sys

try:
    import gguf
except ImportError:
    src = subprocess.check_output([os.environ.get("REF_LLAMACPP", "/work/shared/tools/ref-llamacpp"), "src"], text=True).strip()
    sys.path.insert(0, os.path.join(src, "vendor", "llama.cpp", "gguf-py"))
    import gguf


def scalar(field):
    t = field.types[0]
    if t == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8")
    if t == gguf.GGUFValueType.ARRAY:
        return None
    v = field.parts[-1].tolist()[0]
    return v


def describe(path):
    r = gguf.GGUFReader(path)
    arch = scalar(r.fields["general.architecture"])
    types = {}
    for t in r.tensors:
        name = t.tensor_type.name
        e = types.setdefault(name, {"tensors": 0, "params": 0, "bytes": 0})
        e["tensors"] += 1
        e["params"] += int(t.n_elements)
        e["bytes"] += int(t.n_bytes)
    hp = {}
    for k, f in r.fields.items():
        if k.startswith(arch + "."):
            v = scalar(f)
            if v is not None:
                hp[k[len(arch) + 1:]] = v
    tok = {}
    if "tokenizer.ggml.model" in r.fields:
        tok["model"] = scalar(r.fields["tokenizer.ggml.model"])
    if "tokenizer.ggml.tokens" in r.fields:
        tok["vocab_size"] = len(r.fields["tokenizer.ggml.tokens"].data)
    for k in ("bos", "eos", "unknown", "padding"):
        key = f"tokenizer.ggml.{k}_token_id"
        if key in r.fields:
            tok[k] = scalar(r.fields[key])
    tmpl = r.fields.get("tokenizer.chat_template")
    return {
        "version": scalar(r.fields["GGUF.version"]),
        "architecture": arch,
        "tensor_count": len(r.tensors),
        "total_parameters": sum(int(t.n_elements) for t in r.tensors),
        "types": types,
        "hyperparameters": hp,
        "tokenizer": tok,
        "chat_template": scalar(tmpl) if tmpl is not None else None,
    }


out = {os.path.basename(p): describe(p) for p in sys.argv[1:]}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
print()
