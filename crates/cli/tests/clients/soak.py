"""Concurrent streaming clients for a while: no errors, no lost or interleaved tokens.

Each of a few distinct requests (different prompts, seeds and sampling) is first run alone
to get its reference output; then CLIENTS threads stream those requests concurrently for
SECONDS, and every streamed text must equal its request's reference exactly.

    python soak.py http://127.0.0.1:PORT CLIENTS SECONDS
"""
import sys
import threading
import time

import openai

base, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
client = openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0, timeout=600)
model = client.models.list().data[0].id

prompts = [
    "Tell me a short story about a robot.",
    "List three fruits.",
    "Why is the sea salty?",
    "Write a haiku about autumn.",
    "Explain what a CPU does.",
    "Give me a recipe for pancakes.",
    "What is the tallest mountain?",
    "Describe a cat.",
]
requests = [
    dict(messages=[{"role": "user", "content": p}], max_tokens=48, temperature=0.9, top_p=0.95, seed=100 + i)
    for i, p in enumerate(prompts)
]


def stream(req):
    chunks = client.chat.completions.create(model=model, stream=True, **req)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


reference = [stream(r) for r in requests]
assert all(reference), reference

errors, completed = [], [0]
lock = threading.Lock()
deadline = time.time() + seconds


def worker(k):
    i = k
    while time.time() < deadline:
        idx = i % len(requests)
        try:
            got = stream(requests[idx])
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            with lock:
                errors.append(f"client {k}: {e!r}")
            return
        if got != reference[idx]:
            with lock:
                errors.append(f"client {k}, request {idx}: streamed {got!r}, alone {reference[idx]!r}")
            return
        with lock:
            completed[0] += 1
        i += 1


threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("\n".join(errors[:5]))
    sys.exit(1)
print(f"soak: {clients} clients, {seconds:.0f} s, {completed[0]} streams, all identical to their solo runs")
