#!/usr/bin/env python3
"""Seed corpora for the fuzz targets (fuzz/corpus/<target>/), small valid inputs of each format.

    /work/shared/tools/ref-llamacpp python scripts/make-fuzz-seeds.py   (needs gguf-py + numpy)
"""
import json, os, struct, subprocess, sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
C = ROOT / "fuzz" / "corpus"
try:
    import gguf
except ImportError:
    src = subprocess.check_output([os.environ.get("REF_LLAMACPP", "/work/shared/tools/ref-llamacpp"), "src"], text=True).strip()
    sys.path.insert(0, os.path.join(src, "vendor", "llama.cpp", "gguf-py"))
    import gguf

rng = np.random.default_rng(0)
TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(ord("a"), ord("a") + 12)] + ["ab", "abc"]


def tiny_gguf(path, arch="llama", qtype=None):
    w = gguf.GGUFWriter(str(path), arch)
    n_embd, n_ff, n_vocab = 32, 64, len(TOKENS)
    w.add_block_count(1); w.add_context_length(64); w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff); w.add_head_count(2); w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS); w.add_token_types([3, 3, 3, 3] + [1] * (n_vocab - 4))
    w.add_token_merges(["a b", "ab c"]); w.add_bos_token_id(0); w.add_eos_token_id(1)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    t = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.02
    w.add_tensor("token_embd.weight", t(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    hd = n_embd // 2
    for name, shape in [("attn_norm", (n_embd,)), ("ffn_norm", (n_embd,)), ("attn_q", (n_embd, n_embd)),
                        ("attn_k", (hd, n_embd)), ("attn_v", (hd, n_embd)), ("attn_output", (n_embd, n_embd)),
                        ("ffn_gate", (n_ff, n_embd)), ("ffn_up", (n_ff, n_embd)), ("ffn_down", (n_embd, n_ff))]:
        data = np.ones(shape, np.float32) if len(shape) == 1 else t(*shape)
        if qtype is not None and len(shape) == 2:
            q = gguf.quants.quantize(data, qtype)
            w.add_tensor(f"blk.0.{name}.weight", q, raw_dtype=qtype)
        else:
            w.add_tensor(f"blk.0.{name}.weight", data)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


for d in ["gguf", "hf_dir", "tokenizer_json", "chat_template", "oms_bundle"]:
    (C / d).mkdir(parents=True, exist_ok=True)
tiny_gguf(C / "gguf" / "tiny-f32.gguf")
tiny_gguf(C / "gguf" / "tiny-q8_0.gguf", qtype=gguf.GGMLQuantizationType.Q8_0)
tiny_gguf(C / "gguf" / "tiny-q4_0.gguf", qtype=gguf.GGMLQuantizationType.Q4_0)

# hf_dir: config.json, 0xFF 0xFF, model.safetensors
config = {"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
          "intermediate_size": 16, "vocab_size": 4, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
tensors = {"model.embed_tokens.weight": np.zeros((4, 8), np.float32), "model.norm.weight": np.ones(8, np.float16)}
header, blob = {}, b""
for k, v in tensors.items():
    b = v.tobytes()
    header[k] = {"dtype": "F32" if v.dtype == np.float32 else "F16", "shape": list(v.shape), "data_offsets": [len(blob), len(blob) + len(b)]}
    blob += b
h = json.dumps(header).encode()
st = struct.pack("<Q", len(h)) + h + blob
(C / "hf_dir" / "tiny").write_bytes(json.dumps(config).encode() + b"\xff\xff" + st)

# hf_dir: gpt-oss experts as transformers' MXFP4 blocks and scales (safetensors U8)
config = {"model_type": "gpt_oss", "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
          "head_dim": 16, "num_hidden_layers": 1, "intermediate_size": 32, "num_local_experts": 2,
          "num_experts_per_tok": 1, "vocab_size": 4, "rms_norm_eps": 1e-5, "sliding_window": 4,
          "quantization_config": {"quant_method": "mxfp4"}}
u8 = {"model.layers.0.mlp.experts.gate_up_proj_blocks": np.arange(2 * 64 * 16, dtype=np.uint8).reshape(2, 64, 1, 16),
      "model.layers.0.mlp.experts.gate_up_proj_scales": np.full((2, 64, 1), 127, np.uint8)}
header, blob = {}, b""
for k, v in u8.items():
    b = v.tobytes()
    header[k] = {"dtype": "U8", "shape": list(v.shape), "data_offsets": [len(blob), len(blob) + len(b)]}
    blob += b
h = json.dumps(header).encode()
st = struct.pack("<Q", len(h)) + h + blob
(C / "hf_dir" / "mxfp4").write_bytes(json.dumps(config).encode() + b"\xff\xff" + st)

# tokenizer.json: a byte-level BPE with a few merges
vocab = {t: i for i, t in enumerate(TOKENS)}
tok = {"version": "1.0", "truncation": None, "padding": None,
       "added_tokens": [{"id": 2, "content": "<|im_start|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
       "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
       "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                 "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": ["a b", "ab c"]}}
(C / "tokenizer_json" / "bpe").write_bytes(json.dumps(tok).encode())
(C / "tokenizer_json" / "bpe-with-config").write_bytes(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}).encode() + b"\xff\xff" + json.dumps(tok).encode())

templates = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "llama3": "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
    "macros": "{% macro m(x) %}{{ x|upper }}{% endmacro %}{% set ns = namespace(n=0) %}{% for x in messages %}{% set ns.n = ns.n + 1 %}{{ m(x.content) }}{{ x.content.split(' ')|join(',') }}{% endfor %}{{ ns.n }}",
}
for k, v in templates.items():
    (C / "chat_template" / k).write_text(v)

# LoRA adapters: a GGUF LoRA file, and a PEFT directory (config, 0xFF 0xFF, safetensors)
(C / "adapter").mkdir(parents=True, exist_ok=True)
w = gguf.GGUFWriter(str(C / "adapter" / "lora.gguf"), "llama")
w.add_string("general.type", "adapter"); w.add_string("adapter.type", "lora"); w.add_float32("adapter.lora.alpha", 4.0)
w.add_tensor("blk.0.attn_q.weight.lora_a", rng.standard_normal((2, 8)).astype(np.float32))
w.add_tensor("blk.0.attn_q.weight.lora_b", rng.standard_normal((8, 2)).astype(np.float32))
w.add_tensor("blk.0.ffn_down.weight.lora_a", rng.standard_normal((2, 16)).astype(np.float16))
w.add_tensor("blk.0.ffn_down.weight.lora_b", np.zeros((8, 2), np.float16))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
peft_config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_rslora": True, "target_modules": ["q_proj", "down_proj"],
               "rank_pattern": {"down_proj": 1}, "alpha_pattern": {"q_proj": 8}, "bias": "none", "use_dora": False, "modules_to_save": None}
pre = "base_model.model.model.layers.0."
tensors = {pre + "self_attn.q_proj.lora_A.weight": rng.standard_normal((2, 8)).astype(np.float32),
           pre + "self_attn.q_proj.lora_B.weight": rng.standard_normal((8, 2)).astype(np.float32),
           pre + "mlp.down_proj.lora_A.weight": rng.standard_normal((1, 16)).astype(np.float16),
           pre + "mlp.down_proj.lora_B.weight": rng.standard_normal((8, 1)).astype(np.float16)}
header, blob = {}, b""
for k, v in tensors.items():
    b = v.tobytes()
    header[k] = {"dtype": "F32" if v.dtype == np.float32 else "F16", "shape": list(v.shape), "data_offsets": [len(blob), len(blob) + len(b)]}
    blob += b
h = json.dumps(header).encode()
(C / "adapter" / "peft").write_bytes(json.dumps(peft_config).encode() + b"\xff\xff" + struct.pack("<Q", len(h)) + h + blob)

# Training data: a first byte choosing the format (0 jsonl, 1 json, 2 parquet), then the file.
(C / "tune_data").mkdir(parents=True, exist_ok=True)
chat = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello"}]}
for name, body in {
    "text.jsonl": b"\x00" + b'{"text": "hello world"}\n{"text": "second line"}\n',
    "pc.jsonl": b"\x00" + b'{"prompt": "Q: 1+1?", "completion": " 2"}\n',
    "msgs.jsonl": b"\x00" + json.dumps(chat).encode() + b"\n",
    "array.json": b"\x01" + b'[{"text": "a"}, {"text": "b"}]',
    "bad.jsonl": b"\x00" + b'{"text": 1}\n{"oops": []}\n',
}.items():
    (C / "tune_data" / name).write_bytes(body)

# The architectures of issue 16, small enough for the fuzzer (max_len 65536): matrices in Q8_0,
# norms and LongRoPE factors in F32, so the mutations reach the MoE, window, per-layer and
# LongRoPE checks of HParams and the loader. Their own generator keeps the seeds above as they were.
arng = np.random.default_rng(16)


def tiny_arch_gguf(path, arch, n_layer=2, moe=False, fused=False, qk_norm=False, post_norms=False,
                   meta=lambda w: None, extra=lambda w: None, gpt_oss=False):
    w = gguf.GGUFWriter(str(path), arch)
    n_embd, n_ff, n_vocab, hd, n_head, n_head_kv = 32, 32, len(TOKENS), 16, 2, 1
    w.add_block_count(n_layer); w.add_context_length(64); w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff); w.add_head_count(n_head); w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd); w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6); w.add_rope_freq_base(10000.0)
    meta(w)
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS); w.add_token_types([3, 3, 3, 3] + [1] * (n_vocab - 4))
    w.add_token_merges(["a b", "ab c"]); w.add_bos_token_id(0); w.add_eos_token_id(1)
    q8 = gguf.GGMLQuantizationType.Q8_0

    def mat(name, *shape):  # numpy [.., rows, cols] -> GGUF ne [cols, rows, ..]
        data = (arng.standard_normal(shape) * 0.1).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(data, q8), raw_dtype=q8)

    def norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * arng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd)
    norm("output_norm.weight", n_embd)
    extra(w)
    q_dim, kv_dim = n_head * hd, n_head_kv * hd
    for l in range(n_layer):
        p = f"blk.{l}."
        norm(p + "attn_norm.weight", n_embd)
        if fused:
            mat(p + "attn_qkv.weight", q_dim + 2 * kv_dim, n_embd)
        else:
            mat(p + "attn_q.weight", q_dim, n_embd)
            mat(p + "attn_k.weight", kv_dim, n_embd)
            mat(p + "attn_v.weight", kv_dim, n_embd)
        if qk_norm:
            norm(p + "attn_q_norm.weight", hd); norm(p + "attn_k_norm.weight", hd)
        mat(p + "attn_output.weight", n_embd, q_dim)
        if gpt_oss:  # q/k/v/o biases, sinks, the FFN norm's own name, biased router and experts
            for t, n in [("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim), ("attn_output", n_embd)]:
                w.add_tensor(p + t + ".bias", (0.1 * arng.standard_normal(n)).astype(np.float32))
            w.add_tensor(p + "attn_sinks.weight", arng.standard_normal(n_head).astype(np.float32))
        norm(p + ("post_attention_norm.weight" if gpt_oss else "ffn_norm.weight"), n_embd)
        if post_norms:
            norm(p + "post_attention_norm.weight", n_embd); norm(p + "post_ffw_norm.weight", n_embd)
        if moe:
            n_exp, n_ff_exp = moe
            mat(p + "ffn_gate_inp.weight", n_exp, n_embd)
            mat(p + "ffn_gate_exps.weight", n_exp, n_ff_exp, n_embd)
            mat(p + "ffn_up_exps.weight", n_exp, n_ff_exp, n_embd)
            mat(p + "ffn_down_exps.weight", n_exp, n_embd, n_ff_exp)
            if gpt_oss:
                for t, shape in [("ffn_gate_inp", (n_exp,)), ("ffn_gate_exps", (n_exp, n_ff_exp)),
                                 ("ffn_up_exps", (n_exp, n_ff_exp)), ("ffn_down_exps", (n_exp, n_embd))]:
                    w.add_tensor(p + t + ".bias", (0.1 * arng.standard_normal(shape)).astype(np.float32))
        elif fused:
            mat(p + "ffn_up.weight", 2 * n_ff, n_embd)
            mat(p + "ffn_down.weight", n_embd, n_ff)
        else:
            mat(p + "ffn_gate.weight", n_ff, n_embd)
            mat(p + "ffn_up.weight", n_ff, n_embd)
            mat(p + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    assert path.stat().st_size <= 65536, path


def gemma3_meta(w):
    w.add_sliding_window(4); w.add_sliding_window_pattern([True, False]); w.add_rope_freq_base_swa(10000.0)


def phi3_meta(w):
    w.add_rope_dimension_count(12); w.add_sliding_window(2047)
    w.add_rope_scaling_orig_ctx_len(16); w.add_rope_scaling_attn_factors(1.2)


def phi3_factors(w):
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"]:
        w.add_tensor(name, (1.0 + arng.random(6)).astype(np.float32))


def smollm3_meta(w):
    w.add_rope_dimension_count(16); w.add_vocab_size(len(TOKENS))


def qwen3moe_meta(w):
    w.add_expert_count(4); w.add_expert_used_count(2); w.add_expert_feed_forward_length(32)


def gpt_oss_meta(w):
    w.add_expert_count(4); w.add_expert_used_count(2); w.add_expert_feed_forward_length(32)
    w.add_sliding_window(4)
    w.add_string("gpt-oss.rope.scaling.type", "yarn"); w.add_float32("gpt-oss.rope.scaling.factor", 32.0)
    w.add_rope_scaling_orig_ctx_len(16)


tiny_arch_gguf(C / "gguf" / "gemma3.gguf", "gemma3", qk_norm=True, post_norms=True, meta=gemma3_meta)
tiny_arch_gguf(C / "gguf" / "phi3-longrope.gguf", "phi3", fused=True, meta=phi3_meta, extra=phi3_factors)
tiny_arch_gguf(C / "gguf" / "smollm3.gguf", "smollm3", n_layer=4, meta=smollm3_meta)
tiny_arch_gguf(C / "gguf" / "qwen3moe.gguf", "qwen3moe", n_layer=1, moe=(4, 32), qk_norm=True, meta=qwen3moe_meta)
tiny_arch_gguf(C / "gguf" / "gpt-oss.gguf", "gpt-oss", n_layer=2, moe=(4, 32), meta=gpt_oss_meta,
               gpt_oss=True)
