"""Driver for bench/constrained-decoding (see there)."""
import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 30},
                "email": {"type": "string", "format": "email", "maxLength": 40},
                "tier": {"enum": ["free", "pro", "enterprise"]},
            },
            "required": ["name", "email", "tier"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "minItems": 2,
            "maxItems": 6,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                    "gift": {"type": "boolean"},
                },
                "required": ["sku", "quantity", "gift"],
                "additionalProperties": False,
            },
        },
        "note": {"anyOf": [{"type": "string", "maxLength": 60}, {"type": "null"}]},
    },
    "required": ["customer", "items", "note"],
    "additionalProperties": False,
}

PROMPTS = [
    "Write an example order for a small online shop.",
    "Invent an order from a returning customer.",
    "Give me a sample purchase order as data.",
    "Make up an order for a bakery supply store.",
    "Create a realistic test order.",
    "Show an order a customer might place on a Monday.",
    "Generate an order for office supplies.",
    "Describe an order for garden tools.",
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


def stream(port, body):
    """One streamed chat request: (tokens generated, decode seconds from the first to the
    last token, (text, finish_reason))."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    first = last = None
    tokens = 0
    text = []
    finish = None
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            v = json.loads(line[6:])
            if v.get("usage"):
                tokens = v["usage"]["completion_tokens"]
            for c in v.get("choices", []):
                finish = c.get("finish_reason") or finish
                t = c.get("delta", {}).get("content")
                if t:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(t)
    return tokens, (last - first) if first else 0.0, ("".join(text), finish)


TEMPERATURE = 1.0


def request(prompt, seed, constrained, max_tokens):
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": TEMPERATURE,
        "seed": seed,
        "max_tokens": max_tokens,
    }
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "order", "strict": True, "schema": SCHEMA}}
    else:
        body["ignore_eos"] = True
    return body


def run(port, jobs, clients):
    """`jobs`: request bodies; `clients` threads take them in order. Returns per-job
    (tokens, decode seconds) and the wall time."""
    out = [None] * len(jobs)
    nxt = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(jobs):
                return
            n, secs, text = stream(port, jobs[i])
            out[i] = (n, secs, text)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.perf_counter() - t0


def per_token_ms(results):
    """Decode time per token over all requests (the first token is the prompt's)."""
    toks = sum(max(n - 1, 0) for n, _, _ in results)
    secs = sum(s for _, s, _ in results)
    return 1000 * secs / toks if toks else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=1.0,
                    help="0 is greedy: no full-vocabulary sort per token, so the constraint's share shows more")
    a = ap.parse_args()
    global TEMPERATURE
    TEMPERATURE = a.temperature
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "verity"], cwd=ROOT, check=True)
    verity = ROOT / "target/release/verity"
    port = free_port()
    cmd = [str(verity), "serve", "--port", str(port), "--parallel", "8", "--threads", str(a.threads), "--ctx", "2048"]
    if a.model:
        cmd += ["-m", a.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_healthy(port, proc)
        run(port, [request(PROMPTS[0], 0, True, 400), request(PROMPTS[1], 1, False, 32)], 1)  # warm-up
        valid = [0, 0, 0]  # parsed, finished with "stop", all
        for clients in (1, 8):
            n = a.requests * clients
            ratios, cms, ums, ctoks = [], [], [], []
            for rnd in range(a.rounds):
                seeds = [1000 * rnd + clients * 100 + i for i in range(n)]
                cjobs = [request(PROMPTS[i % len(PROMPTS)], seeds[i], True, 400) for i in range(n)]
                cres, cwall = run(port, cjobs, clients)
                for _, _, (text, finish) in cres:
                    valid[2] += 1
                    if finish != "stop":
                        continue
                    valid[1] += 1
                    try:
                        json.loads(text)
                        valid[0] += 1
                    except ValueError:
                        print(f"not JSON: {text!r}", file=sys.stderr)
                ujobs = [request(PROMPTS[i % len(PROMPTS)], seeds[i], False, max(cres[i][0], 1)) for i in range(n)]
                ures, uwall = run(port, ujobs, clients)
                assert [r[0] for r in ures] == [r[0] for r in cres], "unconstrained twins decoded other lengths"
                c, u = per_token_ms(cres), per_token_ms(ures)
                cms.append(c)
                ums.append(u)
                ratios.append(c / u)
                ctoks.append(sum(r[0] for r in cres) / n)
            rows.append((f"batch {clients}", statistics.median(ctoks), statistics.median(ums), statistics.median(cms), statistics.median(ratios), ratios))

        # Mixed: four constrained clients beside four unconstrained ones. Are the
        # unconstrained rows slower than among their own kind?
        mixed_u, alone_u = [], []
        for rnd in range(a.rounds):
            n = 4 * a.requests
            seeds = [50_000 + 1000 * rnd + i for i in range(n)]
            cjobs = [request(PROMPTS[i % len(PROMPTS)], seeds[i], True, 400) for i in range(n)]
            ujobs = [request(PROMPTS[(i + 3) % len(PROMPTS)], seeds[i] + 7, False, 120) for i in range(n)]
            # baseline: eight unconstrained clients
            base, _ = run(port, ujobs + [request(PROMPTS[i % len(PROMPTS)], seeds[i] + 9, False, 120) for i in range(n)], 8)
            alone_u.append(per_token_ms(base[:n]))
            # mixed: interleave so four of the eight clients carry constrained requests
            out = [None, None]

            def side(k, jobs):
                out[k] = run(port, jobs, 4)[0]

            ts = [threading.Thread(target=side, args=(0, cjobs)), threading.Thread(target=side, args=(1, ujobs))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            mixed_u.append(per_token_ms(out[1]))
    finally:
        proc.terminate()
        proc.wait()

    print(f"\nverity serve --parallel 8, {a.threads} threads, temperature {a.temperature}, {a.rounds} rounds (medians)\n")
    print("| clients | tokens per request | unconstrained ms/token | JSON-schema ms/token | cost ratio | ratios per round |")
    print("|---|---:|---:|---:|---:|---|")
    for name, toks, u, c, r, rs in rows:
        print(f"| {name} | {toks:.0f} | {u:.2f} | {c:.2f} | {r:.3f} | {', '.join(f'{x:.3f}' for x in rs)} |")
    mu, au = statistics.median(mixed_u), statistics.median(alone_u)
    print(f"\nunconstrained rows beside 4 constrained rows: {mu:.2f} ms/token; among 8 unconstrained: {au:.2f} ms/token; ratio {mu / au:.3f}")
    print(f"constrained requests: {valid[2]}; ended by the grammar (finish_reason stop): {valid[1]}, of which parse as JSON: {valid[0]} (the rest hit max_tokens 400)")


if __name__ == "__main__":
    sys.exit(main())
