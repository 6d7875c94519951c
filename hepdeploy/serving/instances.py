"""Model instances within the machine: each instance's memory measured, the count bounded by cores and memory.

A Triton instance of an ONNX model holds its own ONNX Runtime session, so its memory is one session's: the
weights, the graph's rewrites and the arena its largest batch grows. That is measured, not estimated: a child
process (only numpy and onnxruntime imported) reads its resident set, creates the session, runs the inputs at the
largest profile and reads its high-water mark; the difference is the instance.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hepdeploy.backend.onnxrt import ort_error_line
from hepdeploy.errors import BadInputError, ModelLoadError, NativeCrashError
from hepdeploy.fsutil import check_input_file
from hepdeploy.lifetime import work_folder

CHILD_TIMEOUT_S = 600.0


def instance_memory_bytes(onnx_path: Path, inputs_at_largest_profile: Mapping[str, np.ndarray]) -> int:
    """Resident bytes one ONNX Runtime CPU session of ``onnx_path`` needs to run ``inputs_at_largest_profile``."""
    path = check_input_file(Path(onnx_path), "ONNX model")
    with work_folder("instance-memory") as folder:
        feeds = Path(folder) / "feeds.npz"
        np.savez(feeds, **{name: np.ascontiguousarray(v) for name, v in inputs_at_largest_profile.items()})
        command = [sys.executable, "-m", "hepdeploy.serving.instance_child", str(path), str(feeds)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as error:
            raise NativeCrashError(f"{path}: one session did not run within {CHILD_TIMEOUT_S:.0f} s") from error
    if done.returncode < 0:
        raise NativeCrashError(f"{path}: ONNX Runtime crashed ({signal.Signals(-done.returncode).name}) measuring "
                               "one instance's memory")
    if done.returncode != 0:
        line = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ModelLoadError(f"{path}: measuring one instance's memory failed: {ort_error_line(RuntimeError(line))}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return max(0, int(figures["peak_kib"]) - int(figures["baseline_kib"])) * 1024


def choose_instances(cores: int, memory_bytes: int, per_instance_bytes: int, needed: int) -> tuple[int, str]:
    """How many instances to run: ``needed`` (what the latency budget asks for) when the cores and the memory
    hold them, else as many as they hold; with why. Raises BadInputError when not even one fits."""
    if cores < 1 or memory_bytes <= 0 or per_instance_bytes < 0 or needed < 1:
        raise BadInputError(f"cores {cores}, memory {memory_bytes} B, per instance {per_instance_bytes} B and "
                            f"needed {needed} must be positive")
    by_memory = memory_bytes // per_instance_bytes if per_instance_bytes else needed
    if by_memory < 1:
        raise BadInputError(f"one instance needs {_mib(per_instance_bytes)}, more than the {_mib(memory_bytes)} given")
    count = min(needed, cores, by_memory)
    limits = f"{cores} core(s) hold {cores}, {_mib(memory_bytes)} holds {by_memory} of {_mib(per_instance_bytes)} each"
    if count == needed:
        return count, f"{count}: what the latency budget needs; {limits}"
    short = "cores" if cores <= by_memory else "memory"
    return count, f"{count}: the budget needs {needed}, but only {count} fit the {short} ({limits})"


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"
