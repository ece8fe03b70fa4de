"""An independent numpy (float64) forward pass of the issue-16 tiny random models (gemma3, phi3,
smollm3, qwen3moe), written from the GGUF alone: a plain statement of what each llama.cpp graph
computes, checked against the llama.cpp goldens in tests/golden/random/.

    scripts/make-test-models --numpy-check

On the F32 files it agrees with llama.cpp to ~0.03 % normalised RMS error (llama.cpp keeps K/V
in F16); on quantized files to ~0.6-1.9 %, as it dequantizes the weights but does not quantize
activations the way ggml's matrix products do. For qwen3moe it also prints the smallest router
margin (gap between the last chosen and the first unchosen expert's router logit, in units of
the router logits' std) over all golden tokens and layers: a near-tie there would let a tiny
numerical difference pick another expert.
"""
import json
import math
from pathlib import Path

import numpy as np

NEW_ARCHS = ("gemma3", "phi3", "smollm3", "qwen3moe")


def load(gguf, path):
    from gguf.quants import dequantize
    r = gguf.GGUFReader(str(path))
    w = {}
    for t in r.tensors:
        a = np.array(t.data) if t.tensor_type.name == "F32" else dequantize(t.data, t.tensor_type)
        w[t.name] = a.reshape([int(x) for x in reversed(t.shape)]).astype(np.float64)
    arch = r.fields["general.architecture"].contents()
    kv = {k[len(arch) + 1:]: f.contents() for k, f in r.fields.items() if k.startswith(arch + ".")}
    return arch, w, kv


def rms_norm(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1 + np.exp(-x))


def forward(arch, w, kv, toks, n_ctx=64):
    """Logits [T, n_vocab] and the qwen3moe router margins (empty for the others)."""
    eps = kv["attention.layer_norm_rms_epsilon"]
    nh, nkv, n_embd = kv["attention.head_count"], kv["attention.head_count_kv"], kv["embedding_length"]
    hd = kv.get("attention.key_length", n_embd // nh)
    n_rot = kv.get("rope.dimension_count", hd)
    base = kv.get("rope.freq_base", 10000.0)
    T = len(toks)
    x = w["token_embd.weight"][toks]
    if arch == "gemma3":
        x = x * math.sqrt(n_embd)  # embeddings scaled in the graph
    # gemma3: windowed layers are all but every 6th (no sliding_window_pattern key), RoPE base
    # 10000 there (no rope.freq_base_swa key); a key j is visible from query i iff i - j < window
    window = kv.get("attention.sliding_window", 0) if arch == "gemma3" else 0
    # phi3 LongRoPE: long factors iff the context exceeds original_context_length; attn_factor
    # multiplies cos and sin (so q and k), on the rotated dimensions only
    factors, mscale = None, kv.get("rope.scaling.attn_factor", 1.0)
    if "rope_factors_long.weight" in w:
        use_long = n_ctx > kv.get("rope.scaling.original_context_length", kv["context_length"])
        factors = w["rope_factors_long.weight" if use_long else "rope_factors_short.weight"]
    neox = arch != "smollm3"  # smollm3 rotates adjacent pairs (llama's NORM style)

    def rope(q, b):
        inv = b ** (-np.arange(0, n_rot, 2) / n_rot)
        if factors is not None:
            inv = inv / factors
        ang = np.arange(T)[:, None] * inv
        c, s = (np.cos(ang) * mscale)[:, None, :], (np.sin(ang) * mscale)[:, None, :]
        r, rest = q[..., :n_rot], q[..., n_rot:]
        if neox:  # pairs (i, i + n_rot/2)
            a, bb = r[..., :n_rot // 2], r[..., n_rot // 2:]
            out = np.concatenate([a * c - bb * s, a * s + bb * c], -1)
        else:  # pairs (2i, 2i+1)
            a, bb = r[..., 0::2], r[..., 1::2]
            out = np.empty_like(r)
            out[..., 0::2], out[..., 1::2] = a * c - bb * s, a * s + bb * c
        return np.concatenate([out, rest], -1)

    margins = []
    for il in range(kv["block_count"]):
        p = f"blk.{il}."
        swa = window > 0 and il % 6 < 5
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        if p + "attn_qkv.weight" in w:  # phi3: rows q, k, v
            q, k, v = np.split(h @ w[p + "attn_qkv.weight"].T, [nh * hd, nh * hd + nkv * hd], -1)
        else:
            q, k, v = (h @ w[p + f"attn_{n}.weight"].T for n in "qkv")
        q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
        if p + "attn_q_norm.weight" in w:
            q = rms_norm(q, w[p + "attn_q_norm.weight"], eps)
            k = rms_norm(k, w[p + "attn_k_norm.weight"], eps)
        if not (arch == "smollm3" and (il + 1) % 4 == 0):  # smollm3: no RoPE on layers 3, 7, ...
            b = 10000.0 if swa else base
            q, k = rope(q, b), rope(k, b)
        i, j = np.arange(T)[:, None], np.arange(T)[None, :]
        mask = (j <= i) & ((i - j < window) if swa else True)
        att = np.zeros((T, nh, hd))
        for hh in range(nh):
            kvh = hh // (nh // nkv)
            s = np.where(mask, q[:, hh] @ k[:, kvh].T / math.sqrt(hd), -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kvh]
        a = att.reshape(T, -1) @ w[p + "attn_output.weight"].T
        if arch == "gemma3":
            a = rms_norm(a, w[p + "post_attention_norm.weight"], eps)
        x = x + a
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        if arch == "gemma3":  # GeGLU, tanh GELU
            f = (gelu_tanh(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) \
                @ w[p + "ffn_down.weight"].T
            f = rms_norm(f, w[p + "post_ffw_norm.weight"], eps)
        elif arch == "phi3":  # fused ffn_up: first n_ff rows gate, then up
            gu = h @ w[p + "ffn_up.weight"].T
            n = gu.shape[-1] // 2
            f = (silu(gu[:, :n]) * gu[:, n:]) @ w[p + "ffn_down.weight"].T
        elif arch == "qwen3moe":  # softmax over all experts, top-k, weights renormalised
            lg = h @ w[p + "ffn_gate_inp.weight"].T
            k_used = kv["expert_used_count"]
            srt = np.sort(lg, -1)[:, ::-1]
            margins.append((srt[:, k_used - 1] - srt[:, k_used]) / lg.std())
            pr = np.exp(lg - lg.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            top = np.argsort(-pr, -1)[:, :k_used]
            f = np.zeros_like(x)
            for t in range(T):
                for e, we in zip(top[t], pr[t, top[t]] / pr[t, top[t]].sum()):
                    g = w[p + "ffn_gate_exps.weight"][e] @ h[t]
                    u = w[p + "ffn_up_exps.weight"][e] @ h[t]
                    f[t] += we * (w[p + "ffn_down_exps.weight"][e] @ (silu(g) * u))
        else:
            f = (silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) \
                @ w[p + "ffn_down.weight"].T
        x = x + f
    x = rms_norm(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T, np.array(margins)


def check(gguf, golden_dir, model_dir):
    for path in sorted(Path(golden_dir).glob("*.json")):
        g = json.loads(path.read_text())
        if "logits_file" not in g or g["arch"] not in NEW_ARCHS:
            continue
        arch, w, kv = load(gguf, Path(model_dir) / g["model"])
        ours, margins = forward(arch, w, kv, g["tokens"])
        ref = np.fromfile(Path(golden_dir) / g["logits_file"], dtype="<f4").reshape(ours.shape)
        e = math.sqrt(((ours - ref) ** 2).sum() / (ref ** 2).sum())
        extra = f"  min router margin {margins.min():.3f} std" if margins.size else ""
        print(f"numpy   {path.stem:28s} NRMSE vs llama.cpp {e * 100:.3f}%{extra}")
