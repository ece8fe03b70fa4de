"""Driver for bench/serve-throughput (see there)."""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF = os.environ.get("REF_LLAMACPP", str(ROOT.parent / "shared/tools/ref-llamacpp"))
PROMPTS = [
    "Once upon a time, in a land far away,",
    "The history of the printing press begins",
    "Here is a long list of things to do on a rainy day:",
    "The recipe for a good vegetable soup starts with",
    "In the year 2050, cities will",
    "The most important lesson I learned in school was",
    "A detailed description of the solar system:",
    "Dear diary, today was a strange day because",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port, proc, timeout=180):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not become healthy")


def complete(port, prompt, tokens):
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["usage"]["completion_tokens"]


def load(port, clients, requests, tokens):
    """`clients` threads, each sending `requests` completions back to back: tokens/s over all."""
    done = [0]
    lock = threading.Lock()

    def worker(k):
        for i in range(requests):
            n = complete(port, PROMPTS[(k + i) % len(PROMPTS)], tokens)
            with lock:
                done[0] += n

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.time() - t0), done[0]


def start(cmd, port):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(port, proc)
    return proc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path.home() / ".cache/verity/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per request")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "verity"], cwd=ROOT, check=True)
    verity = ROOT / "target/release/verity"
    rows = []

    port = free_port()
    p = start([str(verity), "serve", "-m", a.model, "--port", str(port), "--parallel", "8", "--threads", str(a.threads), "--ctx", "2048"], port)
    try:
        load(port, 1, 1, 8)  # warm-up
        one, _ = load(port, 1, a.requests, a.tokens)
        eight, _ = load(port, 8, a.requests, a.tokens)
    finally:
        p.terminate()
        p.wait()
    rows.append(("verity, 1 client", one))
    rows.append(("verity, 8 clients", eight))

    port = free_port()
    ref = [REF, "bin", "llama-server", "-m", a.model, "--port", str(port), "-t", str(a.threads), "--parallel", "8", "-c", str(2048 * 8)]
    p = start(ref, port)
    try:
        load(port, 1, 1, 8)
        ref_eight, _ = load(port, 8, a.requests, a.tokens)
    finally:
        p.terminate()
        p.wait()
    rows.append(("llama-server --parallel 8, 8 clients", ref_eight))

    print(f"\nmodel {Path(a.model).name}, {a.threads} threads, {a.requests} requests x {a.tokens} tokens per client\n")
    print("| server | generated tokens/s |")
    print("|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.1f} |")
    print(f"\nverity 8 clients / 1 client: {eight / one:.2f}x")
    print(f"verity / llama-server, 8 clients: {eight / ref_eight:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
