"""Driver for bench/serve-lora (see there)."""
import argparse
import json
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import PROMPTS, free_port, wait_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ["a", "b", "c", "d"]


def read_gguf_dims(path):
    """(n_layer, n_embd, n_ff, q_dim, kv_dim) from a GGUF file's metadata (llama family)."""
    kv = {}
    with open(path, "rb") as f:
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        assert magic == b"GGUF", path

        def s():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

        def value(t):
            if t == 8:
                return s()
            if t == 9:
                (et,) = struct.unpack("<I", f.read(4))
                (n,) = struct.unpack("<Q", f.read(8))
                return [value(et) for _ in range(n)]
            fmt = "<" + sizes[t]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        for _ in range(n_kv):
            k = s()
            (t,) = struct.unpack("<I", f.read(4))
            kv[k] = value(t)
    arch = kv["general.architecture"]
    n_embd = kv[f"{arch}.embedding_length"]
    n_head = kv[f"{arch}.attention.head_count"]
    n_kv = kv.get(f"{arch}.attention.head_count_kv", n_head)
    head_dim = kv.get(f"{arch}.attention.key_length", n_embd // n_head)
    return kv[f"{arch}.block_count"], n_embd, kv[f"{arch}.feed_forward_length"], n_head * head_dim, n_kv * head_dim


def write_peft(directory, seed, dims, rank, targets):
    """A PEFT LoRA directory with random f32 A and B (safetensors written by hand)."""
    n_layer, n_embd, n_ff, q_dim, kv_dim = dims
    shapes = {  # (out, in) of each projection
        "q_proj": ("self_attn", q_dim, n_embd), "k_proj": ("self_attn", kv_dim, n_embd),
        "v_proj": ("self_attn", kv_dim, n_embd), "o_proj": ("self_attn", n_embd, q_dim),
        "gate_proj": ("mlp", n_ff, n_embd), "up_proj": ("mlp", n_ff, n_embd), "down_proj": ("mlp", n_embd, n_ff),
    }
    rng = random.Random(seed)
    header, blobs, offset = {}, [], 0
    for layer in range(n_layer):
        for t in targets:
            group, out, inp = shapes[t]
            prefix = f"base_model.model.model.layers.{layer}.{group}.{t}"
            for half, shape in (("lora_A", [rank, inp]), ("lora_B", [out, rank])):
                n = shape[0] * shape[1]
                blob = struct.pack(f"<{n}f", *(rng.uniform(-0.05, 0.05) for _ in range(n)))
                header[f"{prefix}.{half}.weight"] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
                blobs.append(blob)
                offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for b in blobs:
            f.write(b)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "lora_dropout": 0.0, "bias": "none", "target_modules": targets}
    (directory / "adapter_config.json").write_text(json.dumps(config))


def complete(port, model, prompt, tokens):
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    if model:
        body["model"] = model
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["usage"]["completion_tokens"]


def load(port, models, requests, tokens):
    """One thread per entry of `models` (the model it asks for), each sending `requests`
    completions back to back: generated tokens/s over all."""
    done = [0]
    lock = threading.Lock()

    def worker(k, model):
        for i in range(requests):
            n = complete(port, model, PROMPTS[(k + i) % len(PROMPTS)], tokens)
            with lock:
                done[0] += n

    threads = [threading.Thread(target=worker, args=(k, m)) for k, m in enumerate(models)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.time() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path.home() / ".cache/verity/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per request")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each load, alternated")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "verity"], cwd=ROOT, check=True)
    verity = ROOT / "target/release/verity"
    dims = read_gguf_dims(a.model)
    targets = a.targets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        flags = []
        for i, name in enumerate(ADAPTERS):
            d = Path(tmp) / name
            write_peft(d, i + 1, dims, a.rank, targets)
            flags += ["--lora", f"{name}={d}"]
        port = free_port()
        cmd = [str(verity), "serve", "-m", a.model, "--port", str(port), "--parallel", "8",
               "--threads", str(a.threads), "--ctx", "2048", *flags]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base, spread, one = [], [], []
        try:
            wait_healthy(port, p)
            load(port, [""] + ADAPTERS, 1, 8)  # warm-up, every adapter once
            on_base = [""] * a.clients
            on_adapters = [ADAPTERS[k % len(ADAPTERS)] for k in range(a.clients)]
            on_one = [ADAPTERS[0]] * a.clients
            for _ in range(a.rounds):
                base.append(load(port, on_base, a.requests, a.tokens))
                spread.append(load(port, on_adapters, a.requests, a.tokens))
                one.append(load(port, on_one, a.requests, a.tokens))
        finally:
            p.terminate()
            p.wait()
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    print(f"\nmodel {Path(a.model).name}, {a.threads} threads, --parallel 8, {a.clients} clients x "
          f"{a.requests} requests x {a.tokens} tokens; adapters r={a.rank} on {a.targets}\n")
    print("| load | generated tokens/s (per round) | mean |")
    print("|---|---|---|")
    print(f"| all on the base | {', '.join(f'{v:.1f}' for v in base)} | {mean(base):.1f} |")
    print(f"| spread over {len(ADAPTERS)} adapters | {', '.join(f'{v:.1f}' for v in spread)} | {mean(spread):.1f} |")
    print(f"| all on one adapter | {', '.join(f'{v:.1f}' for v in one)} | {mean(one):.1f} |")
    print(f"\nadapters / base: {mean(spread) / mean(base):.2f}x (target >= 0.8x); "
          f"one adapter / base: {mean(one) / mean(base):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
