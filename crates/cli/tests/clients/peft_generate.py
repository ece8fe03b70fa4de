#!/usr/bin/env python3
"""Greedy text from transformers + PEFT: a Hugging Face directory with a PEFT adapter on
top. Run with the PEFT venv's python (scripts/setup-peft-venv):

    python peft_generate.py HF_DIR ADAPTER_DIR PROMPT N_TOKENS

Prints the generated text as JSON (a string) on stdout.
"""

import json
import sys
import warnings

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    hf, adapter, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    print(json.dumps(tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)))


if __name__ == "__main__":
    main()
