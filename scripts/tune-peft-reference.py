#!/usr/bin/env python3
"""Training reference for `verity tune`: PyTorch + PEFT train a LoRA adapter on exactly the
batches verity used (`verity tune ... --save-batches FILE`) and record the loss, the gradient
norm and the learning rate of every optimizer step ("100 steps, per-step loss within 1 % of
PEFT").

Run with the PEFT venv's python (scripts/setup-peft-venv prints its path), e.g.
    "$(scripts/setup-peft-venv)/bin/python" scripts/tune-peft-reference.py \\
        --model ~/.cache/verity/assets/smollm2-f32-hf --adapter INIT_ADAPTER_DIR \\
        --batches batches.json --out losses.json --lr 2e-4 --warmup 10 --schedule cosine

Input
-----
--model: a Hugging Face Llama directory (fp32; e.g. the one `verity convert --to hf` writes).
--adapter: the initial PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors),
  loaded with PeftModel.from_pretrained(model, DIR, is_trainable=True). Its lora_dropout is
  forced to 0 (every nn.Dropout gets p=0); the model runs in fp32 in train() mode.
--batches (JSON):
  {"steps": [                                  one entry per optimizer step, in order
     {"micro_batches": [                       gradient-accumulation micro-batches
        {"sequences": [                        one row of the micro-batch each
           {"tokens":   [int, ...],            length L_seq (rows may differ: padded here)
            "target":   [0|1, ...],            same length; target[i] = 1: token i is predicted
                                               from tokens[..i] (the logits at position i-1)
            "segments": [[start, len], ...]}   optional (default [[0, L_seq]]): packed
                                               examples. Positions restart at 0 at each start;
                                               attention is causal within a segment only.
        ]}]}]}
  Checked: target[i] = 0 at every segment start (nothing is predicted across segments) and at
  every position no segment covers (padding); segments sorted, disjoint, inside the sequence.

Loss of optimizer step s: the sum of the token cross-entropies -log softmax(logits[i-1])[tok[i]]
over every (sequence, i) with target[i] = 1 in all of the step's micro-batches, divided by the
step's total number of targets N_s. Each micro-batch contributes (its sum) / N_s, so the
accumulated gradient is the gradient of the step's loss.

Packing: one additive float mask [batch, 1, L, L] (0 where key j is in query i's segment and
j <= i, else float32 min) is passed as attention_mask with position_ids; transformers
(masking_utils._preprocess_mask_arguments) passes a 4-D mask through unchanged, and
eager/sdpa attention add it to the scores. Padding (positions outside every segment, and the
tail of shorter rows, token id 0) attends only to itself and has no targets. The first
micro-batch holding a multi-segment row is checked against running each segment alone.

Optimizer step (all in fp32, over the trainable LoRA parameters only):
  g       = accumulated gradient
  norm    = sqrt(sum over all LoRA tensors of sum(g^2))            -> "grad_norms" (pre-clip)
  if max_grad_norm > 0 (torch.nn.utils.clip_grad_norm_):
      g  *= min(1, max_grad_norm / (norm + 1e-6))
  lr_s    = lr * factor(s)                                         -> "lr"
  torch.optim.AdamW (decoupled weight decay wd, t = s + 1):
      p  *= 1 - lr_s * wd
      m   = b1 * m + (1 - b1) * g
      v   = b2 * v + (1 - b2) * g^2
      p  -= (lr_s / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
  then scheduler.step().

Schedules (transformers.get_{cosine,linear,constant}_schedule_with_warmup, W = --warmup,
T = number of steps in --batches, s = 0-based step; lr_s = lr * factor(s)):
  warm-up, s < W:  factor = s / max(1, W)            (so step 0 uses lr 0 when W > 0)
  cosine,  s >= W: factor = max(0, 0.5 * (1 + cos(pi * (s - W) / max(1, T - W))))
  linear,  s >= W: factor = max(0, (T - s) / max(1, T - W))
  constant, s >= W: factor = 1
  (cosine and linear reach 0 at s = T, one past the last step; the last step's factor is
  0.5 * (1 + cos(pi * (T-1-W) / (T-W))), resp. 1 / (T-W).)

Output (--out, JSON):
  {"losses": [step loss, fp32 computed, summed in float64], "grad_norms": [pre-clip global
   norm], "lr": [lr used at the step], "n_targets": [N_s], "n_steps": T, "settings": {...},
   "versions": {...}}
--save-adapter DIR: the trained adapter (save_pretrained).
Deterministic (torch.use_deterministic_algorithms, fixed seed; no randomness is used).
"""

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path


def die(msg):
    sys.exit(f"tune-peft-reference: {msg}")


def log(*a):
    print("tune-peft-reference:", *a, file=sys.stderr, flush=True)


def load_batches(path, vocab_size):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        die(f"cannot read {path}: {e}")
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not steps:
        die(f'{path}: expected {{"steps": [...]}} with at least one step')
    out = []
    for si, st in enumerate(steps):
        mbs = st.get("micro_batches") if isinstance(st, dict) else None
        if not isinstance(mbs, list) or not mbs:
            die(f"{path}: step {si} has no micro_batches")
        step = []
        for mi, mb in enumerate(mbs):
            seqs = mb.get("sequences") if isinstance(mb, dict) else None
            if not isinstance(seqs, list) or not seqs:
                die(f"{path}: step {si} micro-batch {mi} has no sequences")
            rows = []
            for qi, sq in enumerate(seqs):
                where = f"{path}: step {si} micro-batch {mi} sequence {qi}"
                toks, tgt = sq.get("tokens"), sq.get("target")
                if not isinstance(toks, list) or not toks or not all(isinstance(t, int) for t in toks):
                    die(f"{where}: tokens must be a non-empty list of ints")
                if any(t < 0 or t >= vocab_size for t in toks):
                    die(f"{where}: token id outside [0, {vocab_size})")
                if not isinstance(tgt, list) or len(tgt) != len(toks) or any(t not in (0, 1) for t in tgt):
                    die(f"{where}: target must be a list of 0/1 as long as tokens ({len(toks)})")
                segs = sq.get("segments") or [[0, len(toks)]]
                covered = [False] * len(toks)
                end = 0
                for s in segs:
                    if not (isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) for v in s)):
                        die(f"{where}: segments must be [[start, len], ...]")
                    a, n = s
                    if a < end or n <= 0 or a + n > len(toks):
                        die(f"{where}: segment {s} overlaps, is empty, is out of order or past the end")
                    if tgt[a]:
                        die(f"{where}: target[{a}] = 1 at a segment start (nothing precedes it in its segment)")
                    for i in range(a, a + n):
                        covered[i] = True
                    end = a + n
                bad = [i for i in range(len(toks)) if tgt[i] and not covered[i]]
                if bad:
                    die(f"{where}: target = 1 at position {bad[0]}, which no segment covers")
                rows.append((toks, tgt, [tuple(s) for s in segs]))
            step.append(rows)
        out.append(step)
    return out


def collate(rows, torch):
    """input_ids, position_ids, 4-D additive mask, (row, pos) index lists of the targets."""
    L = max(len(t) for t, _, _ in rows)
    B = len(rows)
    neg = torch.finfo(torch.float32).min
    ids = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(B, L, dtype=torch.long)
    mask = torch.full((B, 1, L, L), neg, dtype=torch.float32)
    tb, tp = [], []
    for b, (toks, tgt, segs) in enumerate(rows):
        ids[b, : len(toks)] = torch.tensor(toks)
        mask[b, 0].fill_diagonal_(0.0)  # everything attends to itself (padding: only to itself)
        for a, n in segs:
            pos[b, a : a + n] = torch.arange(n)
            mask[b, 0, a : a + n, a : a + n] = torch.triu(torch.full((n, n), neg), diagonal=1)
        for i, t in enumerate(tgt):
            if t:
                tb.append(b)
                tp.append(i)
    return ids, pos, mask, torch.tensor(tb, dtype=torch.long), torch.tensor(tp, dtype=torch.long)


def ce_sum(model, rows, torch):
    """Summed cross-entropy over the targets of one micro-batch (graph kept), and their count."""
    ids, pos, mask, tb, tp = collate(rows, torch)
    logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits
    if len(tb) == 0:
        return logits.sum() * 0.0, 0
    lg = logits[tb, tp - 1].float()
    return torch.nn.functional.cross_entropy(lg, ids[tb, tp], reduction="sum"), len(tb)


def check_packing(model, steps, torch):
    """The first multi-segment row: its per-target losses packed == each segment alone."""
    for step in steps:
        for rows in step:
            for toks, tgt, segs in rows:
                if len(segs) < 2:
                    continue
                with torch.no_grad():
                    ids, pos, mask, tb, tp = collate([(toks, tgt, segs)], torch)
                    lp = torch.log_softmax(model(input_ids=ids, position_ids=pos, attention_mask=mask).logits[0].double(), -1)
                    worst = 0.0
                    for a, n in segs:
                        seg = toks[a : a + n]
                        ls = torch.log_softmax(model(input_ids=torch.tensor([seg])).logits[0].double(), -1)
                        for i in range(1, n):
                            d = abs(float(lp[a + i - 1, toks[a + i]] - ls[i - 1, seg[i]]))
                            worst = max(worst, d)
                if worst > 1e-3:
                    die(f"packed attention differs from per-segment runs by {worst:.2e} nats "
                        "(this transformers version does not honour the 4-D mask / position_ids)")
                log(f"packing check: {len(segs)} segments, max |log p| difference {worst:.1e}")
                return worst
    return None


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("Run with") :],
    )
    ap.add_argument("--model", required=True, type=Path, help="HF Llama directory (fp32)")
    ap.add_argument("--adapter", required=True, type=Path, help="initial PEFT LoRA adapter directory")
    ap.add_argument("--batches", required=True, type=Path, help="batches.json from verity tune --save-batches")
    ap.add_argument("--out", required=True, type=Path, help="losses.json to write")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    ap.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999], metavar=("B1", "B2"))
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="<= 0: no clipping")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager", help="attention implementation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-adapter", type=Path, help="write the trained adapter here")
    args = ap.parse_args()

    for p, what in ((args.model / "config.json", "--model"), (args.adapter / "adapter_config.json", "--adapter"),
                    (args.batches, "--batches")):
        if not p.exists():
            die(f"{what}: {p} does not exist")
    if args.warmup < 0:
        die("--warmup must be >= 0")

    import torch
    import transformers
    import peft
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=args.attn)
    steps = load_batches(args.batches, model.config.vocab_size)
    T = len(steps)
    cfg = json.loads((args.adapter / "adapter_config.json").read_text())
    if cfg.get("lora_dropout", 0.0):
        log(f"adapter has lora_dropout {cfg['lora_dropout']}: forced to 0")
    pm = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    pm.to(torch.float32)
    pm.train()
    for m in pm.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if getattr(pm.get_base_model().config, "attention_dropout", 0.0):
        pm.get_base_model().config.attention_dropout = 0.0
    params = [p for n, p in pm.named_parameters() if p.requires_grad]
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    if not params or not all("lora_" in n for n in names):
        die(f"unexpected trainable parameters: {[n for n in names if 'lora_' not in n][:5]}")
    log(f"{T} steps, {len(params)} LoRA tensors ({sum(p.numel() for p in params)} params), "
        f"lr {args.lr} {args.schedule} warm-up {args.warmup}, wd {args.weight_decay}, "
        f"betas {tuple(args.betas)}, eps {args.eps}, max grad norm {args.max_grad_norm}")

    packing_err = check_packing(pm, steps, torch)

    opt = torch.optim.AdamW(params, lr=args.lr, betas=tuple(args.betas), eps=args.eps,
                            weight_decay=args.weight_decay)
    if args.schedule == "cosine":
        sched = transformers.get_cosine_schedule_with_warmup(opt, args.warmup, T)
    elif args.schedule == "linear":
        sched = transformers.get_linear_schedule_with_warmup(opt, args.warmup, T)
    else:
        sched = transformers.get_constant_schedule_with_warmup(opt, args.warmup)

    losses, norms, lrs, ntargets = [], [], [], []
    t0 = time.time()
    for s, step in enumerate(steps):
        n = sum(t for rows in step for _, tgt, _ in rows for t in tgt)
        if n == 0:
            die(f"step {s} has no targets")
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for rows in step:
            total, _ = ce_sum(pm, rows, torch)
            (total / n).backward()
            loss += float(total.detach()) / n
        if args.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        if not math.isfinite(loss) or not math.isfinite(norm):
            die(f"step {s}: loss {loss}, grad norm {norm}")
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        losses.append(loss)
        norms.append(norm)
        lrs.append(lr)
        ntargets.append(n)
        log(f"step {s + 1}/{T}: loss {loss:.6f}, grad norm {norm:.6f}, lr {lr:.6g}, "
            f"{n} targets ({time.time() - t0:.1f} s)")

    res = {
        "losses": losses,
        "grad_norms": norms,
        "lr": lrs,
        "n_targets": ntargets,
        "n_steps": T,
        "settings": {
            "model": str(args.model), "adapter": str(args.adapter), "batches": str(args.batches),
            "lr": args.lr, "warmup": args.warmup, "schedule": args.schedule,
            "weight_decay": args.weight_decay, "betas": list(args.betas), "eps": args.eps,
            "max_grad_norm": args.max_grad_norm, "attn": args.attn, "dtype": "float32",
            "packing_check_max_abs_logp_diff": packing_err,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(args.out)
    if args.save_adapter:
        pm.save_pretrained(args.save_adapter)
        log(f"adapter -> {args.save_adapter}")
    print(args.out)


if __name__ == "__main__":
    main()
