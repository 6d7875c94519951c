"""The child side of :func:`hepdeploy.backend.onnxrt.check_in_child`.

``python -m hepdeploy.backend.onnxrt_child MODEL.onnx [FEEDS.npz]`` creates an ONNX Runtime
session on the CPU and runs the feeds once. A native crash (SIGSEGV, abort) ends this process
only; the parent reads the signal from the exit status. A Python-level failure prints its
first line on stderr and exits 1. Only numpy and onnxruntime are imported, so it starts fast.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(argv[0], sess_options=options, providers=["CPUExecutionProvider"])
        if len(argv) > 1:
            with np.load(argv[1], allow_pickle=False) as archive:
                session.run(None, {name: archive[name] for name in archive.files})
    except Exception as error:  # reported to the parent as one line; the parent decides what it means
        text = str(error).strip()
        print(text.splitlines()[0] if text else type(error).__name__, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
