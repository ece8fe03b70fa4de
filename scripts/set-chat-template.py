#!/usr/bin/env python3
"""A copy of a GGUF file with its chat template replaced, written by the reference's gguf-py
(as its gguf_new_metadata.py --chat-template does; that script needs tqdm, which the
reference's venv lacks, so this one copies the fields itself).

    scripts/set-chat-template.py SRC DST TEMPLATE_FILE

gguf-py needs numpy, which the reference's venv has: without it, the script runs itself again
under `ref-llamacpp python` (as scripts/make-split-gguf.py does).
"""
import os
import sys

from gguf_ref import import_gguf as _import_gguf


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst, template_file = sys.argv[1:]
    template = open(template_file, encoding="utf-8").read()
    gguf = _import_gguf()
    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    tmp = dst + f".tmp-{os.getpid()}"
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        name = field.name
        if name == gguf.Keys.General.ARCHITECTURE or name.startswith("GGUF.") \
                or name == gguf.Keys.Tokenizer.CHAT_TEMPLATE:
            continue
        if name == gguf.Keys.General.ALIGNMENT:
            writer.add_custom_alignment(field.contents())
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
    writer.add_chat_template(template)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    os.replace(tmp, dst)


if __name__ == "__main__":
    main()
