#!/usr/bin/env python3
"""Write crates/eval/tests/data/mini.parquet (snappy) and mini.jsonl with the same rows.

The test `parquet_rows_equal_jsonl_rows` reads both through verity's loaders. Run with any
Python that has pyarrow (e.g. the venv from scripts/setup-client-venv):
    $(scripts/setup-client-venv)/bin/python scripts/make-parquet-fixture.py
"""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "crates/eval/tests/data"
rows = [
    {"id": "q1", "question": "Which is a mammal?", "choices": {"text": ["cat", "trout"], "label": ["A", "B"]},
     "answerKey": "A", "score": 0.5, "n": 3, "ok": True, "note": None},
    {"id": "q2", "question": "Caf\u00e9 au lait — 2 + 2 = ?", "choices": {"text": ["4", "5", "22"], "label": ["A", "B", "C"]},
     "answerKey": "A", "score": -1.25, "n": -7, "ok": False, "note": "unicode \u2713"},
    {"id": "q3", "question": "", "choices": {"text": [], "label": []},
     "answerKey": "", "score": 1e-3, "n": 2**40, "ok": True, "note": "empty lists"},
]
table = pa.Table.from_pylist(rows)
pq.write_table(table, OUT / "mini.parquet", compression="snappy", row_group_size=2)
with open(OUT / "mini.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print("wrote", OUT / "mini.parquet", OUT / "mini.jsonl")
