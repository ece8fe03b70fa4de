#!/usr/bin/env python3
"""Gradient reference for `verity tune`: the LoRA gradients PyTorch + PEFT compute for one
fixed batch, read by the tune crate's gradient test.

Run with the PEFT venv's python (scripts/setup-peft-venv prints its path):
    "$(scripts/setup-peft-venv)/bin/python" scripts/tune-grad-reference.py
    "$(scripts/setup-peft-venv)/bin/python" scripts/tune-grad-reference.py --force   # rebuild

What it does (CPU, deterministic, no network):
1. PEFT makes a LoRA adapter for the F32 Hugging Face directory of the default model
   (${VERITY_ASSETS:-~/.cache/verity/assets}/smollm2-f32-hf, written by
   `verity convert SmolLM2-135M-Instruct.Q4_1.gguf --to hf DIR` when missing):
   r=8, lora_alpha=16 (scale 2), target_modules="all-linear" (PEFT picks q/k/v/o_proj and
   gate/up/down_proj of every layer, not lm_head: checked), lora_dropout=0,
   init_lora_weights=False (A and B keep nn.Linear's kaiming-uniform init, torch seed SEED),
   every B multiplied by B_SCALE so the adapter moves the logits clearly (checked: between
   5 % and 60 % of the logits' norm) while the text stays likely. Saved with
   save_pretrained -> adapter/ (adapter_config.json + adapter_model.safetensors).
2. A fixed batch of 4 sequences x 128 tokens: BOS (id 1, as scripts/lora-reference.py) and
   127 tokens of a window of tests/golden/text.txt (tokenized by the directory's tokenizer,
   add_special_tokens=False); the 4 windows start at evenly spread token offsets.
   labels = input_ids; loss = transformers' causal-LM loss: mean cross-entropy over the
   4 x 127 predicted positions (position i's logits predict token i+1).
3. fp32, eager attention, model.train() (dropout is 0 everywhere), loss.backward():
   the gradient of every LoRA A and B. The same is done once more in float64 (model and
   adapter upcast; attention softmax, RMSNorm, RoPE and the loss in float64, where stock
   transformers keeps them in float32) as a truth to measure fp32 error against.

Output, under ${VERITY_ASSETS:-~/.cache/verity/assets}/tune-ref/grad/ (or --out):
  adapter/                 the PEFT adapter (names base_model.model.model.layers.N.
                           {self_attn.{q,k,v,o}_proj|mlp.{gate,up,down}_proj}.lora_{A,B}.weight,
                           A [r, in], B [out, r], f32; scale = alpha / r = 2)
  batch.json               {"tokens": [[128 ints] x 4], "loss": fp32 loss as float,
                            "loss_f64": float64 loss, "n_targets": 508, "window_offsets": [...],
                            "bos": 1}
  grads.safetensors        d loss / d param, one F32 tensor per LoRA parameter, named and shaped
                           exactly as in adapter/adapter_model.safetensors (fp32 run)
  grads-f64.safetensors    the same from the float64 run, stored as F64
  manifest.json            version, settings, norms and fp32-vs-f64 errors; "done": true
Idempotent: nothing is recomputed when manifest.json records "done" under the current VERSION
and the files are there (--force rebuilds). Deterministic (fixed seed, deterministic algorithms).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

VERSION = 1
SEED = 4242
B_SCALE = 0.2
RANK, ALPHA = 8, 16
N_SEQ, SEQ_LEN = 4, 128
BOS = 1
TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("VERITY_ASSETS", Path.home() / ".cache/verity/assets"))
MODELS = Path(os.environ.get("VERITY_MODELS", Path.home() / ".cache/verity/models"))


def log(*a):
    print("tune-grad-reference:", *a, file=sys.stderr, flush=True)


def f64_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention, but with the softmax in the inputs' dtype (the stock one
    always takes it in float32, which would spoil the float64 run)."""
    import torch
    from transformers.models.llama.modeling_llama import repeat_kv

    k = repeat_kv(key, module.num_key_value_groups)
    v = repeat_kv(value, module.num_key_value_groups)
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = torch.nn.functional.softmax(w, dim=-1)
    return torch.matmul(w, v).transpose(1, 2).contiguous(), w


class F64Patches:
    """transformers' Llama keeps three things in float32 whatever the model's dtype: RMSNorm
    (it casts to float32), RoPE (inv_freq and the angles in float32) and the causal-LM loss
    (logits.float()). Within this context the first two run in the inputs' dtype with
    inv_freq recomputed in float64; the float64 run computes its loss by hand."""

    def __enter__(self):
        import torch
        from transformers.models.llama import modeling_llama as ml

        def rms(mod, h):
            return mod.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon))

        def rope(mod, x, position_ids):
            inv = getattr(mod, "_inv_freq_f64", None)
            if inv is None:
                cfg = mod.config
                dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
                theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None))
                inv = 1.0 / (float(theta) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
                assert torch.allclose(inv.float(), mod.inv_freq.float()), "unexpected RoPE inv_freq"
                assert mod.attention_scaling == 1.0
                mod._inv_freq_f64 = inv
            freqs = position_ids[..., None].to(torch.float64) * inv
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

        self.saved = (ml.LlamaRMSNorm.forward, ml.LlamaRotaryEmbedding.forward)
        ml.LlamaRMSNorm.forward, ml.LlamaRotaryEmbedding.forward = rms, rope
        return self

    def __exit__(self, *exc):
        from transformers.models.llama import modeling_llama as ml

        ml.LlamaRMSNorm.forward, ml.LlamaRotaryEmbedding.forward = self.saved


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules="all-linear",
        init_lora_weights=False,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )


def saved_name(param_name):
    """PEFT's in-model parameter name -> its name in adapter_model.safetensors."""
    return param_name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def build(hf, out, threads):
    import numpy as np
    import torch
    from peft import PeftModel, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    AttentionInterface.register("eager_f64", f64_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("eager_f64", eager_mask)

    # --- the batch
    tok = AutoTokenizer.from_pretrained(hf)
    text = (ROOT / "tests/golden/text.txt").read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_text = SEQ_LEN - 1
    if len(ids) < n_text:
        sys.exit(f"tune-grad-reference: tests/golden/text.txt has {len(ids)} tokens, need >= {n_text}")
    span = len(ids) - n_text
    offsets = [round(i * span / (N_SEQ - 1)) for i in range(N_SEQ)]
    tokens = [[BOS] + ids[o : o + n_text] for o in offsets]
    assert all(len(t) == SEQ_LEN for t in tokens)
    x = torch.tensor(tokens)

    # --- the adapter (fp32, PEFT's own init under a fixed seed, B scaled)
    torch.manual_seed(SEED)
    base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        base.eval()
        base_logits = base(x).logits.double()
    pm = get_peft_model(base, lora_config())
    picked = set()
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            picked.add(name.rsplit(".", 1)[-1])
    if picked != TARGETS:
        sys.exit(f"tune-grad-reference: all-linear picked {sorted(picked)}, expected {sorted(TARGETS)}")
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(B_SCALE)
    adir = out / "adapter"
    if adir.exists():
        shutil.rmtree(adir)
    pm.save_pretrained(adir)
    saved = load_file(adir / "adapter_model.safetensors")
    # The reference trains exactly what was saved: reload it the way a user would.
    del pm, base

    def run(dtype, attn):
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=dtype, attn_implementation=attn)
        pm = PeftModel.from_pretrained(model, adir, is_trainable=True)
        pm.to(dtype)
        pm.train()
        for m in pm.modules():  # dropout 0 everywhere (it already is; make sure)
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        assert pm.get_base_model().config.attention_dropout == 0.0
        params = {saved_name(n): p for n, p in pm.named_parameters() if p.requires_grad}
        if set(params) != set(saved):
            sys.exit("tune-grad-reference: trainable parameters differ from the adapter file's tensors")
        for n, p in params.items():
            assert p.dtype == dtype and p.shape == saved[n].shape, n
            assert torch.equal(p.detach().float(), saved[n]), f"{n} did not round-trip"
        if dtype == torch.float32:
            out_ = pm(input_ids=x, labels=x)  # transformers' own causal-LM loss
            loss = out_.loss
        else:
            out_ = pm(input_ids=x)
            lsm = torch.log_softmax(out_.logits[:, :-1], dim=-1)
            loss = -lsm.gather(-1, x[:, 1:, None]).mean()
        assert loss.dtype == dtype and out_.logits.dtype == dtype
        loss.backward()
        # The same loss by hand (float64 from these logits): mean CE over 4 x 127 targets.
        lg = out_.logits.detach().double()[:, :-1]
        lsm = torch.log_softmax(lg, dim=-1)
        manual = -lsm.gather(-1, x[:, 1:, None]).squeeze(-1).mean().item()
        grads = {n: p.grad.detach().clone() for n, p in params.items()}
        logits = out_.logits.detach().double()
        return loss.item(), manual, grads, logits

    log(f"fp32 forward + backward, batch {N_SEQ} x {SEQ_LEN}")
    loss32, manual32, g32, logits32 = run(torch.float32, "eager")
    log(f"float64 forward + backward")
    with F64Patches():
        loss64, manual64, g64, _ = run(torch.float64, "eager_f64")
    assert abs(loss32 - manual32) < 1e-5 * max(1.0, abs(loss32)), (loss32, manual32)

    delta = logits32 - base_logits
    rel = float(delta.norm() / base_logits.norm())
    top1 = float((logits32.argmax(-1) == base_logits.argmax(-1)).double().mean())
    log(f"adapter: |delta logits|/|logits| = {rel:.4f}, top-1 same as base {top1:.3f}")
    if not 0.05 <= rel <= 0.6:
        sys.exit(f"tune-grad-reference: the adapter moves the logits by {rel:.3f} of their norm")

    def norm(gs):
        return math.sqrt(sum(float(g.double().pow(2).sum()) for g in gs.values()))

    rel_err = {}
    for n in g32:
        d = (g32[n].double() - g64[n]).norm() / max(float(g64[n].norm()), 1e-30)
        rel_err[n] = float(d)
    worst = max(rel_err, key=rel_err.get)
    tot_err = math.sqrt(sum(float((g32[n].double() - g64[n]).pow(2).sum()) for n in g32)) / norm(g64)
    zero = [n for n, g in g32.items() if float(g.abs().max()) == 0.0]
    if zero:
        sys.exit(f"tune-grad-reference: zero gradients for {zero[:3]}...")

    save_file({n: g.contiguous() for n, g in sorted(g32.items())}, out / "grads.safetensors")
    save_file({n: g.contiguous() for n, g in sorted(g64.items())}, out / "grads-f64.safetensors")
    batch = {
        "tokens": tokens,
        "loss": loss32,
        "loss_f64": loss64,
        "n_targets": N_SEQ * (SEQ_LEN - 1),
        "window_offsets": offsets,
        "bos": BOS,
    }
    (out / "batch.json").write_text(json.dumps(batch) + "\n")
    import peft
    import transformers

    return {
        "version": VERSION,
        "hf_dir": str(hf),
        "adapter_dir": "adapter",
        "batch": "batch.json",
        "grads": "grads.safetensors",
        "grads_f64": "grads-f64.safetensors",
        "rank": RANK,
        "alpha": ALPHA,
        "scale": ALPHA / RANK,
        "targets": sorted(TARGETS),
        "seed": SEED,
        "b_scale": B_SCALE,
        "n_seq": N_SEQ,
        "seq_len": SEQ_LEN,
        "loss": loss32,
        "loss_f64": loss64,
        "base_loss": float(-torch.log_softmax(base_logits[:, :-1], -1).gather(-1, x[:, 1:, None]).mean()),
        "n_tensors": len(g32),
        "n_lora_params": sum(g.numel() for g in g32.values()),
        "grad_norm": norm(g32),
        "grad_norm_f64": norm(g64),
        "fp32_vs_f64_rel_err_total": tot_err,
        "fp32_vs_f64_rel_err_worst_tensor": {"name": worst, "rel_err": rel_err[worst]},
        "delta_norm_over_logit_norm": rel,
        "top1_same_as_base": top1,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "done": True,
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='example:\n  "$(scripts/setup-peft-venv)/bin/python" scripts/tune-grad-reference.py\n\n'
        + "See the top of this file for the output formats.",
    )
    ap.add_argument("--hf", type=Path, default=ASSETS / "smollm2-f32-hf", help="F32 HF directory of the base")
    ap.add_argument("--out", type=Path, default=ASSETS / "tune-ref/grad", help="output directory")
    ap.add_argument("--verity", type=Path, default=ROOT / "target/release/verity",
                    help="used only to write --hf when it is missing")
    ap.add_argument("--base-gguf", type=Path, default=MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="rebuild even when the manifest says done")
    args = ap.parse_args()

    out = args.out
    mp = out / "manifest.json"
    if not args.force and mp.exists():
        m = json.loads(mp.read_text())
        files = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "batch.json",
                 "grads.safetensors", "grads-f64.safetensors"]
        if m.get("version") == VERSION and m.get("done") and all((out / f).exists() for f in files):
            log(f"up to date (manifest version {VERSION}); --force rebuilds")
            print(out)
            return
    if not (args.hf / "model.safetensors").exists():
        if not args.verity.exists():
            sys.exit(f"tune-grad-reference: {args.hf} is missing and {args.verity} is not built "
                     "(cargo build --release -p verity)")
        log(f"writing {args.hf} with verity convert")
        subprocess.run([str(args.verity), "convert", str(args.base_gguf), "--to", "hf", str(args.hf)], check=True)
    out.mkdir(parents=True, exist_ok=True)
    mp.unlink(missing_ok=True)
    m = build(args.hf, out, args.threads)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(m, indent=1) + "\n")
    tmp.replace(mp)
    log(f"loss {m['loss']:.6f} (f64 {m['loss_f64']:.6f}, base {m['base_loss']:.6f}), "
        f"{m['n_tensors']} tensors / {m['n_lora_params']} params, |grad| {m['grad_norm']:.6g} "
        f"(f64 {m['grad_norm_f64']:.6g}), fp32 vs f64 rel err {m['fp32_vs_f64_rel_err_total']:.2e} "
        f"(worst {m['fp32_vs_f64_rel_err_worst_tensor']['name']}: "
        f"{m['fp32_vs_f64_rel_err_worst_tensor']['rel_err']:.2e})")
    print(out)


if __name__ == "__main__":
    main()
