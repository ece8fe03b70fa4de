#!/usr/bin/env python3
"""A split copy of a GGUF file, written by the reference's gguf-py (its GGUFWriter's
`split_max_tensors`), so the parts are what llama.cpp tooling writes:
PREFIX-00001-of-0000N.gguf ..., each carrying split.no / split.count / split.tensors.count,
the first holding all metadata and the tokenizer, the tensors spread over the N parts.

    scripts/make-split-gguf.py [SRC] [--parts N] [--outdir DIR]

SRC defaults to the default model in the store
(${VERITY_MODELS:-~/.cache/verity/models}/SmolLM2-135M-Instruct.Q4_1.gguf). The parts go to
${VERITY_ASSETS:-~/.cache/verity/assets}/test-models/split/ by default, named after SRC's
stem; the first part's path is printed. Idempotent: a complete set of parts is kept.

gguf-py needs numpy, which the reference's venv has: without it, the script runs itself again
under `ref-llamacpp python` (as scripts/make-test-models does).
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

from gguf_ref import import_gguf as _import_gguf


def part_names(stem, n):
    # gguf-py's SHARD_NAME_FORMAT (and llama.cpp's llama_split_path)
    return [f"{stem}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]


def split(gguf, src, outdir, n_parts):
    reader = gguf.GGUFReader(src)
    n = len(reader.tensors)
    per_part = -(-n // n_parts)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    tmpdir = outdir / f".tmp-{os.getpid()}"
    tmpdir.mkdir(parents=True, exist_ok=True)
    try:
        writer = gguf.GGUFWriter(tmpdir / src.name, arch, split_max_tensors=per_part)
        # As gguf-py's gguf_new_metadata.py copies a file: every key but the ones the writer
        # makes itself (architecture, the GGUF.* header fields, split.*).
        for field in reader.fields.values():
            name = field.name
            if name == gguf.Keys.General.ARCHITECTURE or name.startswith("GGUF.") \
                    or name.startswith("split."):
                continue
            if name == gguf.Keys.General.ALIGNMENT:
                writer.add_custom_alignment(field.contents())
                continue
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
        for t in reader.tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        if len(writer.tensors) != n_parts:
            sys.exit(f"make-split-gguf: {n} tensors at {per_part} a part make "
                     f"{len(writer.tensors)} parts, not {n_parts}")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.close()
        # Moved in only once all are written, so a set of parts on disk is always complete.
        for name in part_names(src.stem, n_parts):
            os.replace(tmpdir / name, outdir / name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def main():
    models = os.environ.get("VERITY_MODELS", os.path.expanduser("~/.cache/verity/models"))
    assets = os.environ.get("VERITY_ASSETS", os.path.expanduser("~/.cache/verity/assets"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", nargs="?", default=os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--outdir", default=os.path.join(assets, "test-models", "split"))
    args = ap.parse_args()
    src, outdir = Path(args.src), Path(args.outdir)
    if args.parts < 2:
        sys.exit("make-split-gguf: --parts must be at least 2")
    if not src.is_file():
        sys.exit(f"make-split-gguf: {src} is missing; run `verity run --raw -n 1 hi` once to "
                 "fetch the default model")
    names = part_names(src.stem, args.parts)
    if not all((outdir / name).is_file() for name in names):
        split(_import_gguf(), src, outdir, args.parts)
    print(outdir / names[0])


if __name__ == "__main__":
    main()
