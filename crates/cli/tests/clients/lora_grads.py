"""LoRA gradients by PyTorch autograd (transformers + PEFT, CPU, fp32, eager attention) on a
Hugging Face directory written by `verity convert --to hf --dtype f32`, for one fixed batch
of random tokens. Used by crates/cli/tests/tune_archs.rs with the PEFT venv's Python
(scripts/setup-peft-venv).

    python lora_grads.py HF_DIR OUT_DIR SEED

1. PEFT makes a LoRA adapter: r=8, lora_alpha=16 (scale 2), target_modules q/k/v/o_proj and
   gate/up/down_proj of every layer, lora_dropout=0, init_lora_weights=False (A and B keep
   nn.Linear's kaiming-uniform init, torch seed SEED), every B multiplied by B_SCALE so that
   the adapter moves the logits clearly (checked: between 2 % and 100 % of their norm).
   Saved with save_pretrained -> OUT_DIR/adapter/.
2. A batch of 2 sequences x 48 tokens, uniform random ids in [0, vocab) (torch generator
   seeded with SEED). labels = input_ids; loss = transformers' causal-LM loss, the mean
   cross-entropy over the 2 x 47 predicted positions.
3. model.train() with every dropout 0, loss.backward(): the gradient of every LoRA A and B.
   The same is done in float64 (model and adapter upcast: the products are float64, while
   transformers keeps its norms, softmax and RoPE angles in float32), as a rough measure of
   the fp32 noise in the reference.

Writes OUT_DIR/batch.json {"tokens": [[48 ints] x 2], "loss": fp32 loss, "loss_f64": float,
"n_targets": 94, "b_scale", "delta_logits": |delta logits| / |logits|, "f32_vs_f64_worst":
worst per-tensor relative RMS difference of the fp32 gradient from the float64 one, "model":
transformers' class name, "window_effect": |logits with every sliding window opened -
logits| / |logits| of the base, 0 without windows} and OUT_DIR/grads.safetensors (each LoRA parameter's gradient, F32,
named and shaped as in adapter/adapter_model.safetensors). Prints one summary line to stderr.
"""
import json
import math
import sys
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

RANK, ALPHA = 8, 16
B_SCALE = 0.2
N_SEQ, SEQ_LEN = 2, 48
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Phi-3 keeps q/k/v and gate/up in one matrix each: PEFT adapts the fused modules.
FUSED_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def saved_name(param_name):
    """PEFT's in-model parameter name -> its name in adapter_model.safetensors."""
    return param_name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def main():
    hf, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)

    def load():
        return AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager")

    base = load()
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (N_SEQ, SEQ_LEN), generator=g)
    with torch.no_grad():
        base.eval()
        base_logits = base(x).logits.double()
        # How much the sliding windows matter here: the same logits with every window
        # opened past the sequence (0 for models without windows).
        window_effect = 0.0
        # (A config without layer_types, Mistral's, windows every layer.)
        layer_types = getattr(base.config, "layer_types", None)
        if getattr(base.config, "sliding_window", None) and (
            layer_types is None or "sliding_attention" in layer_types
        ):
            w = base.config.sliding_window
            base.config.sliding_window = 4 * SEQ_LEN
            wide = base(x).logits.double()
            base.config.sliding_window = w
            assert torch.equal(base(x).logits.double(), base_logits)
            window_effect = float((wide - base_logits).norm() / base_logits.norm())

    targets = FUSED_TARGETS if base.config.model_type == "phi3" else TARGETS
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=targets,
        lora_dropout=0.0,
        init_lora_weights=False,
        bias="none",
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(B_SCALE)
    pm.save_pretrained(out / "adapter")
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    n_layers = base.config.num_hidden_layers
    if len(saved) != 2 * len(targets) * n_layers:
        sys.exit(f"lora_grads.py: {len(saved)} adapter tensors, expected {2 * len(targets) * n_layers}")

    loss32, logits32, g32 = run(pm, x, saved, torch.float32)
    # The same loss by hand: mean cross-entropy over the N_SEQ x (SEQ_LEN - 1) targets.
    lsm = torch.log_softmax(logits32[:, :-1], dim=-1)
    manual = -lsm.gather(-1, x[:, 1:, None]).mean().item()
    assert abs(loss32 - manual) < 1e-5 * max(1.0, abs(loss32)), (loss32, manual)
    delta = float((logits32 - base_logits).norm() / base_logits.norm())
    if not 0.02 <= delta <= 1.0:
        sys.exit(f"lora_grads.py: the adapter moves the logits by {delta:.3f} of their norm")
    zero = [n for n, t in g32.items() if float(t.abs().max()) == 0.0]
    if zero:
        sys.exit(f"lora_grads.py: zero gradients for {zero[:3]}")

    # float64: the same adapter on the upcast model.
    del pm, base
    torch.manual_seed(seed)
    m64 = get_peft_model(load(), cfg)
    with torch.no_grad():
        for n, p in m64.named_parameters():
            if p.requires_grad:
                p.copy_(saved[saved_name(n)])
    m64.to(torch.float64)
    loss64, _, g64 = run(m64, x, saved, torch.float64)
    worst64 = max(
        float((g32[n].double() - g64[n]).norm() / max(float(g64[n].norm()), 1e-300)) for n in g32
    )

    save_file({n: t.contiguous() for n, t in sorted(g32.items())}, out / "grads.safetensors")
    batch = {
        "tokens": x.tolist(),
        "loss": loss32,
        "loss_f64": loss64,
        "n_targets": N_SEQ * (SEQ_LEN - 1),
        "b_scale": B_SCALE,
        "delta_logits": delta,
        "window_effect": window_effect,
        "f32_vs_f64_worst": worst64,
        "model": type(m64.get_base_model()).__name__,
    }
    (out / "batch.json").write_text(json.dumps(batch) + "\n")
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in g32.values()))
    print(
        f"lora_grads.py: {batch['model']} loss {loss32:.6f} (f64 {loss64:.6f}), |delta logits| "
        f"{delta:.3f}, {len(g32)} tensors, |grad| {norm:.4g}, fp32 vs f64 worst {worst64:.2e}, "
        f"windows move the logits by {window_effect:.3f}",
        file=sys.stderr,
    )


def run(model, x, saved, dtype):
    """Forward and backward over the batch in train mode; (loss, logits, grads by saved name)."""
    model.train()
    for m in model.modules():  # dropout 0 everywhere (it already is; make sure)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    params = {saved_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(saved):
        sys.exit("lora_grads.py: trainable parameters differ from the adapter file's tensors")
    for n, p in params.items():
        assert p.dtype == dtype and p.shape == saved[n].shape, n
        assert torch.equal(p.detach().float(), saved[n]), f"{n} did not round-trip"
    if dtype == torch.float32:
        o = model(input_ids=x, labels=x)  # transformers' own causal-LM loss
        logits, loss = o.logits, o.loss
    else:  # transformers' loss upcasts to float32: by hand
        logits = model(input_ids=x).logits
        loss = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, x[:, 1:, None]).mean()
    assert logits.dtype == dtype and loss.dtype == dtype
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    return loss.item(), logits.detach().double(), grads


if __name__ == "__main__":
    main()
