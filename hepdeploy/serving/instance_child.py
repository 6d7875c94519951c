"""The child side of :func:`hepdeploy.serving.instances.instance_memory_bytes`.

``python -m hepdeploy.serving.instance_child MODEL.onnx FEEDS.npz`` reads its resident set once numpy and
onnxruntime are imported, creates one CPU session (one thread, as a Triton CPU instance runs), runs the feeds
twice, and prints ``{"baseline_kib": ..., "peak_kib": ...}`` (``VmRSS`` before, ``VmHWM`` after) as JSON on
stdout. Only numpy and onnxruntime are imported, so the baseline is the same for every model.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def main(argv: list[str]) -> int:
    import numpy as np
    import onnxruntime as ort

    with np.load(argv[1], allow_pickle=False) as archive:
        feeds = {name: archive[name] for name in archive.files}
    baseline = _status_kib("VmRSS")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(argv[0], sess_options=options, providers=["CPUExecutionProvider"])
        for _ in range(2):  # the second run reuses the arena the first one grew
            session.run(None, feeds)
    except Exception as error:  # reported to the parent as one line
        text = str(error).strip()
        print(text.splitlines()[0] if text else type(error).__name__, file=sys.stderr)
        return 1
    print(json.dumps({"baseline_kib": baseline, "peak_kib": _status_kib("VmHWM")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
