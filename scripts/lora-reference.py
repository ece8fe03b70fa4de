#!/usr/bin/env python3
"""Reference data for LoRA parity (issue 12, "What it must show" 1 and 2), read by
crates/engine/tests/lora_parity.rs.

Run with the PEFT venv's python (scripts/setup-peft-venv prints its path):
    "$(scripts/setup-peft-venv)/bin/python" scripts/lora-reference.py

1. PEFT part. PEFT itself makes two adapters with random non-zero weights
   (init_lora_weights=False, fixed torch seed) for the F32 Hugging Face directory of the
   default model (`verity convert smollm2 --to hf`, made here when missing):
     A: r=8, lora_alpha=16, q_proj + v_proj;
     B: rsLoRA (use_rslora), all-linear, r=8, lora_alpha=16,
        rank_pattern {down_proj: 4, q_proj: 16}, alpha_pattern {o_proj: 32}.
   The random B matrices are multiplied by B_SCALE so that each adapter moves the logits by a
   clear margin (the delta's norm is printed and checked to be >= 5 % of the logits') while the
   text stays likely. transformers + PEFT (CPU, fp32, eager attention) then computes the logits
   of the base and of each adapter at every position of a fixed token sequence (BOS id 1 +
   the first tokens of tests/golden/text.txt, tokenized by the directory's tokenizer).
   The same logits are computed a second time with the attention's inputs rounded as
   llama.cpp's (and verity's) f16 KV cache rounds them: Q, K and V to f16, the probabilities
   to f16 before they weight V. That isolates what the f16 cache does from the rest.
2. llama.cpp part (when the reference build and the verity binary are there): both adapters
   converted to GGUF by llama.cpp's own convert_lora_to_gguf.py (from the reference's source
   tree, run by this python with its gguf-py) and by `verity convert --to gguf`, then
   scripts/lora-llamacpp-reference.py (run by `ref-llamacpp python`) computes llama.cpp's
   logits on the Q4_1 GGUF base with each of them, and without an adapter.

Output: ${VERITY_ASSETS:-~/.cache/verity/assets}/lora-ref/ (manifest.json lists everything;
logits are little-endian f32, row-major [n_tokens][n_vocab]). Idempotent: each part is skipped
when the manifest records it under the current VERSION. Deterministic.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = 1
N_TOKENS = 256  # positions compared (BOS + 255 text tokens)
B_SCALE = {"A": 0.3, "B": 0.06}
SEED = {"A": 1234, "B": 5678}

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("VERITY_ASSETS", Path.home() / ".cache/verity/assets"))
MODELS = Path(os.environ.get("VERITY_MODELS", Path.home() / ".cache/verity/models"))
REF_LLAMACPP = os.environ.get("REF_LLAMACPP", "/work/shared/tools/ref-llamacpp")


def log(*a):
    print("lora-reference:", *a, file=sys.stderr, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(out):
    p = out / "manifest.json"
    if p.exists():
        m = json.loads(p.read_text())
        if m.get("version") == VERSION:
            return m
    return {"version": VERSION}


def save_manifest(out, m):
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(m, indent=1) + "\n")
    tmp.replace(out / "manifest.json")


def adapter_configs():
    from peft import LoraConfig

    return {
        "A": LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        ),
        "B": LoraConfig(
            r=8,
            lora_alpha=16,
            use_rslora=True,
            target_modules="all-linear",
            rank_pattern={"down_proj": 4, "q_proj": 16},
            alpha_pattern={"o_proj": 32},
            init_lora_weights=False,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    }


def f16_kv_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with llama.cpp's f16 roundings (non-flash CPU path): K and V are stored
    in the f16 cache, Q is converted to f16 for the K·Q product, the softmax is f32 and its
    probabilities are converted to f16 for the V product; products accumulate in f32."""
    import torch
    from transformers.models.llama.modeling_llama import repeat_kv

    r16 = lambda t: t.to(torch.float16).to(t.dtype)  # noqa: E731
    k = repeat_kv(r16(key), module.num_key_value_groups)
    v = repeat_kv(r16(value), module.num_key_value_groups)
    w = torch.matmul(r16(query), k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = torch.nn.functional.softmax(w, dim=-1, dtype=w.dtype)
    out = torch.matmul(r16(w), v).transpose(1, 2).contiguous()
    return out, w


def peft_part(hf, out, m):
    import numpy as np
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, AttentionInterface

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register("f16kv", f16_kv_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("f16kv", eager_mask)  # the additive causal mask

    tok = AutoTokenizer.from_pretrained(hf)
    text = (ROOT / "tests/golden/text.txt").read_text()
    ids = [1] + tok(text, add_special_tokens=False)["input_ids"][: N_TOKENS - 1]
    assert len(ids) == N_TOKENS
    (out / "tokens.json").write_text(json.dumps(ids) + "\n")
    x = torch.tensor([ids])
    # Also every one of N_TOKENS spread-out ids alone, at position 0, one sequence each.
    single = [(i * 191 + 7) % tok.vocab_size for i in range(N_TOKENS)]
    m["single_tokens"] = single
    x1 = torch.tensor(single).reshape(N_TOKENS, 1)

    def logits(model, attn, inp=None):
        hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
        hf_model.set_attn_implementation(attn)
        assert hf_model.config._attn_implementation == attn
        with torch.no_grad():
            if inp is None:
                return model(x).logits[0].to(torch.float32).numpy()
            return model(inp).logits[:, 0].to(torch.float32).numpy()

    def write(name, arr):
        assert arr.shape == (N_TOKENS, m["n_vocab"]) and arr.dtype == np.float32
        arr.astype("<f4").tofile(out / name)

    base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager")
    base.eval()
    m["n_vocab"] = base.config.vocab_size
    m["n_tokens"] = N_TOKENS
    m["tokens_file"] = "tokens.json"
    m["hf_dir"] = str(hf)
    t_base = {a: logits(base, a) for a in ("eager", "f16kv")}
    write("torch-base.f32", t_base["eager"])
    write("torch-f16kv-base.f32", t_base["f16kv"])
    write("torch-single-base.f32", logits(base, "f16kv", x1))

    def lsm(z):
        z = z.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def nll(z):  # mean next-token NLL over the text
        return float(-lsm(z[:-1])[np.arange(N_TOKENS - 1), ids[1:]].mean())

    m["adapters"] = {}
    for name, cfg in adapter_configs().items():
        torch.manual_seed(SEED[name])
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager")
        pm = get_peft_model(model, cfg)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.mul_(B_SCALE[name])
        pm.eval()
        d = out / f"peft-{name}"
        if d.exists():
            shutil.rmtree(d)
        pm.save_pretrained(d)
        # Keep the directory self-contained: PEFT records the base by absolute path.
        t = {a: logits(pm, a) for a in ("eager", "f16kv")}
        write(f"torch-{name}.f32", t["eager"])
        write(f"torch-f16kv-{name}.f32", t["f16kv"])
        write(f"torch-single-{name}.f32", logits(pm, "f16kv", x1))
        with pm.disable_adapter():
            again = logits(pm, "eager")
        assert np.array_equal(again, t_base["eager"]), "PEFT with its adapter disabled is not the base"
        delta = t["eager"] - t_base["eager"]
        rel = float(np.linalg.norm(delta) / np.linalg.norm(t_base["eager"]))
        top1 = float((t["eager"].argmax(-1) == t_base["eager"].argmax(-1)).mean())
        info = {
            "dir": d.name,
            "torch_logits": f"torch-{name}.f32",
            "torch_f16kv_logits": f"torch-f16kv-{name}.f32",
            "torch_single_logits": f"torch-single-{name}.f32",
            "b_scale": B_SCALE[name],
            "seed": SEED[name],
            "delta_norm_over_logit_norm": rel,
            "top1_same_as_base": top1,
            "nll_text": nll(t["eager"]),
            "n_lora_params": sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n),
        }
        log(f"adapter {name}: |delta|/|logits| = {rel:.4f}, top-1 same as base {top1:.3f}, "
            f"text NLL {info['nll_text']:.3f} (base {nll(t_base['eager']):.3f})")
        assert 0.05 <= rel <= 0.6, f"adapter {name} moves the logits by {rel:.3f} of their norm"
        m["adapters"][name] = info
    m["torch_base_logits"] = "torch-base.f32"
    m["torch_f16kv_base_logits"] = "torch-f16kv-base.f32"
    m["torch_single_base_logits"] = "torch-single-base.f32"
    m["nll_text_base"] = nll(t_base["eager"])
    m["peft_done"] = True


def gguf_alpha(path, gguf_py):
    sys.path.insert(0, str(gguf_py))
    import gguf

    r = gguf.GGUFReader(path)
    f = r.fields["adapter.lora.alpha"]
    return float(f.parts[f.data[0]][0])


def llamacpp_part(out, m, verity, gguf_base):
    src = Path(subprocess.run([REF_LLAMACPP, "src"], check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([REF_LLAMACPP, "build"], check=True, stdout=subprocess.DEVNULL)
    llama = src / "vendor/llama.cpp"
    env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"))
    if not verity.exists():
        sys.exit(f"lora-reference: {verity} is not built (cargo build --release -p verity)")
    m["base_gguf"] = str(gguf_base)
    m["base_gguf_sha256"] = sha256(gguf_base)

    def ref_logits(name, lora=None):
        cmd = [REF_LLAMACPP, "python", str(ROOT / "scripts/lora-llamacpp-reference.py"),
               str(gguf_base), str(out / m["tokens_file"]), str(out / name)]
        subprocess.run(cmd + ([str(lora)] if lora else []), check=True)
        return name

    m["llamacpp_base_logits"] = ref_logits("llamacpp-base.f32")
    for name, info in m["adapters"].items():
        peft_dir = out / info["dir"]
        ll = out / f"{name}.llamacpp.gguf"
        vv = out / f"{name}.verity.gguf"
        for p in (ll, vv):
            p.unlink(missing_ok=True)
        # llama.cpp's converter reads the base's config.json only (--base).
        subprocess.run([sys.executable, str(llama / "convert_lora_to_gguf.py"), "--base", m["hf_dir"],
                        "--outtype", "f32", "--outfile", str(ll), str(peft_dir)],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([str(verity), "convert", str(peft_dir), "--to", "gguf", "--base", str(gguf_base), str(vv)],
                       check=True, stdout=subprocess.DEVNULL)
        info["gguf_llamacpp"] = ll.name
        info["gguf_verity"] = vv.name
        info["gguf_llamacpp_alpha"] = gguf_alpha(ll, llama / "gguf-py")
        info["gguf_verity_alpha"] = gguf_alpha(vv, llama / "gguf-py")
        info["llamacpp_logits"] = {
            "llamacpp": ref_logits(f"llamacpp-{name}-llamacpp.f32", ll),
            "verity": ref_logits(f"llamacpp-{name}-verity.f32", vv),
        }
        log(f"adapter {name}: adapter.lora.alpha {info['gguf_llamacpp_alpha']} (llama.cpp's converter), "
            f"{info['gguf_verity_alpha']} (verity convert)")
    m["llamacpp_done"] = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf", type=Path, default=ASSETS / "smollm2-f32-hf")
    ap.add_argument("--out", type=Path, default=ASSETS / "lora-ref")
    ap.add_argument("--verity", type=Path, default=ROOT / "target/release/verity")
    ap.add_argument("--base-gguf", type=Path, default=MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--peft-only", action="store_true", help="skip the llama.cpp part")
    args = ap.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    m = load_manifest(out)
    if not (args.hf / "model.safetensors").exists():
        if not args.verity.exists():
            sys.exit(f"lora-reference: {args.hf} is missing and {args.verity} is not built")
        log(f"writing {args.hf} with verity convert")
        subprocess.run([str(args.verity), "convert", str(args.base_gguf), "--to", "hf", str(args.hf)], check=True)
    if not m.get("peft_done"):
        peft_part(args.hf, out, m)
        save_manifest(out, m)
    if not args.peft_only and not m.get("llamacpp_done"):
        llamacpp_part(out, m, args.verity, args.base_gguf)
        save_manifest(out, m)
    print(out)


if __name__ == "__main__":
    main()
