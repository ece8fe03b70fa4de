"""The reference's gguf-py, for scripts that write GGUF files (make-split-gguf.py,
set-chat-template.py). gguf-py needs numpy, which the reference's venv has: without it, the
calling script runs itself again under `ref-llamacpp python`."""
import os
import subprocess
import sys

REF = os.environ.get("REF_LLAMACPP", "/work/shared/tools/ref-llamacpp")
REEXEC = "VERITY_GGUF_REF_REEXEC"


def import_gguf():
    try:
        import numpy  # noqa: F401
    except ImportError:
        if os.environ.get(REEXEC):
            sys.exit(f"{sys.argv[0]}: numpy is missing even under ref-llamacpp python")
        os.environ[REEXEC] = "1"
        os.execv(REF, [REF, "python", os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    try:
        import gguf  # noqa: F401
    except ImportError:
        src = subprocess.check_output([REF, "src"], text=True).strip()
        sys.path.insert(0, os.path.join(src, "vendor", "llama.cpp", "gguf-py"))
    import gguf
    return gguf
