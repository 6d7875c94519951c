"""Runs one NVIDIA ModelOpt job in a child process.

ModelOpt's ONNX PTQ monkey-patches ``onnxruntime.quantization`` for the whole process
(its calibrators replace ORT's), after which ORT's own ``quantize_static`` (the int8-cpu
variant) fails or behaves differently. Running every ModelOpt call in a child process
keeps the parent's ONNX Runtime pristine, and keeps ModelOpt's import time and console
noise out of it too.

Protocol: ``python -m hepdeploy.optimize.modelopt_worker JOB.json``. The job names the
input model, the output path, a folder of ``.npz`` feeds (one model run each) and the
keyword arguments. On failure the child writes ``{"error": TYPE, "message": TEXT}`` to
``JOB.json.error`` and exits 1.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from hepdeploy.errors import ConversionError, DependencyMissingError

log = logging.getLogger("hepdeploy.optimize.modelopt_worker")


def run_job(job: dict[str, Any], folder: Path, timeout_s: float = 3600) -> None:
    """Run ``job`` in a child Python; raise ConversionError with the child's message on failure."""
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    verbose = logging.getLogger("hepdeploy").isEnabledFor(logging.DEBUG)
    completed = subprocess.run(
        [sys.executable, "-m", "hepdeploy.optimize.modelopt_worker", str(job_path)],
        stdout=None if verbose else subprocess.DEVNULL,
        stderr=None if verbose else subprocess.PIPE,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        error_path = job_path.with_name(job_path.name + ".error")
        if error_path.is_file():
            error = json.loads(error_path.read_text(encoding="utf-8"))
            if error["error"] in ("ModuleNotFoundError", "ImportError"):
                raise DependencyMissingError(
                    f"{job['step']}: needs NVIDIA ModelOpt ({error['message']}); "
                    "install it with: pip install 'hepdeploy[optimize]'"
                )
            raise ConversionError(f"{job['step']}: ModelOpt failed: {error['error']}: {error['message']}")
        tail = (completed.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise ConversionError(f"{job['step']}: ModelOpt worker exited with {completed.returncode}: {tail[0]}")


def _feeds(folder: str) -> list[dict[str, Any]]:
    import numpy as np

    feeds = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as archive:
            feeds.append({name: archive[name] for name in archive.files})
    return feeds


def feed_reader(feeds: list[dict[str, Any]]) -> Any:
    """An ONNX Runtime CalibrationDataReader over ``feeds`` (one model run each), rewindable.

    The one reader for both sides of the process boundary: this worker reads its ``.npz`` feeds
    with it, and ``optimize.int8`` its in-memory ones. It lives here because the worker must stay
    light to start (``int8`` imports this module, not the other way round).
    """
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._iter = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._iter, None)

        def get_first(self) -> dict[str, Any]:
            return feeds[0]

        def rewind(self) -> None:
            self._iter = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

    return FeedReader()


def _run(job: dict[str, Any]) -> None:
    import onnx

    if job["kind"] == "int8":
        from modelopt.onnx.quantization import quantize

        kwargs = dict(job["kwargs"])
        quantize(
            onnx_path=job["model"],
            output_path=job["output"],
            calibration_data_reader=feed_reader(_feeds(job["feeds"])),
            **kwargs,
        )
    elif job["kind"] == "fp16":
        from modelopt.onnx.autocast import convert_to_mixed_precision

        model = convert_to_mixed_precision(onnx_path=job["model"], calibration_data=job["feeds"], **job["kwargs"])
        onnx.save(model, job["output"])
    else:
        raise ValueError(f"unknown job kind {job['kind']!r}")


def main(argv: list[str]) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    try:
        _run(job)
    except Exception as error:  # report every failure to the parent as one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        job_path.with_name(job_path.name + ".error").write_text(
            json.dumps({"error": type(error).__name__, "message": message}), encoding="utf-8"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
