"""Logits of a Hugging Face directory by transformers (fp32, eager attention), compared with
verity's for the same tokens: prints the normalised RMS error. Used by
crates/cli/tests/convert.rs with the PEFT venv's Python (scripts/setup-peft-venv).

    python hf_logits.py DIR OURS.f32 TOKEN,TOKEN,...
"""
import sys

import numpy as np
import torch
import transformers

d, ours_file, toks = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
m = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
with torch.no_grad():
    ref = m(torch.tensor([toks])).logits[0].numpy()
ours = np.fromfile(ours_file, dtype=np.float32).reshape(ref.shape)
e = np.sqrt(((ref - ours) ** 2).mean() / (ref ** 2).mean())
print(f"{type(m).__name__} nrmse {e:.8f}")
