"""Runs NVIDIA ModelOpt jobs in one child process that imports ModelOpt once.

ModelOpt's ONNX PTQ monkey-patches ``onnxruntime.quantization`` for the whole process
(its calibrators replace ORT's), after which ORT's own ``quantize_static`` (the int8-cpu
variant) fails or behaves differently. Running every ModelOpt call in a child process
keeps the parent's ONNX Runtime pristine, and keeps ModelOpt's console noise out of it.

Importing ModelOpt costs ~3 s here, more than the jobs themselves on a small model, so a
build holds one :class:`ModelOptWorker` for all its variants: the child starts (and
imports) when the build begins, while the parent exports the model, and serves every
fp16 and int8-trt job of the build. ``hepdeploy optimize`` makes a worker for its one job.

Protocol: ``python -m hepdeploy.optimize.modelopt_worker``; one JSON job per line on the
child's stdin, one JSON reply per line on the child's stdout, which carries nothing else
(the child's own stdout, and ModelOpt's chatter, go to its stderr). A job names the input
model, the output path, a folder of ``.npz`` feeds (one model run each) and the keyword
arguments. A reply is ``{"ok": true, ...}`` or ``{"error": TYPE, "message": TEXT, ...}``;
both carry the worker's ``pid``, how many jobs it has run (``job``) and how many times it
imported ModelOpt (``imports``: 1 for a healthy worker).
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from hepdeploy.errors import ConversionError, DependencyMissingError, NativeCrashError
from hepdeploy.lifetime import die_with_parent

log = logging.getLogger("hepdeploy.optimize.modelopt_worker")

JOB_TIMEOUT_S = 3600.0


class ModelOptWorker:
    """One child Python serving ModelOpt jobs; a context manager (the child ends on exit or Ctrl-C).

    The child starts at :meth:`start` (or the first job) and imports ModelOpt at once, so a
    caller that starts it early overlaps the import with its own work. A child that dies
    (a native crash in ModelOpt or ONNX Runtime) fails that job only: the next job starts a
    fresh child.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.starts = 0  # children started: 1 for a build whose worker never crashed

    def __enter__(self) -> ModelOptWorker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(kill=exc_type is not None)  # after an error or Ctrl-C the child's job is not waited for

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child now (it imports ModelOpt while the caller goes on); no-op when running."""
        if self.running:
            return
        self.close()
        verbose = logging.getLogger("hepdeploy").isEnabledFor(logging.DEBUG)
        # The child's stderr goes to a file, not a pipe nobody reads while it works: a crash's last
        # line is read back from it.
        self._stderr = None if verbose else tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "hepdeploy.optimize.modelopt_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1,
            # Ctrl-C reaches the parent, which ends the child in close(): no half-written output; a parent
            # killed outright takes the worker with it.
            start_new_session=True, preexec_fn=die_with_parent,
        )
        self.starts += 1

    def run(self, job: dict[str, Any], timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        """Run ``job``; its reply (pid, job count, imports). Raises ConversionError, DependencyMissingError
        or NativeCrashError (the child died) with the step's name."""
        self.start()
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(job) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass  # the child is already gone: reported below from its exit status
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        line = process.stdout.readline() if ready else ""
        if not line:
            raise self._dead(job["step"], timed_out=not ready, timeout_s=timeout_s)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            if reply["error"] in ("ModuleNotFoundError", "ImportError"):
                raise DependencyMissingError(
                    f"{job['step']}: needs NVIDIA ModelOpt ({reply['message']}); "
                    "install it with: pip install 'hepdeploy[optimize]'"
                )
            raise ConversionError(f"{job['step']}: ModelOpt failed: {reply['error']}: {reply['message']}")
        return reply

    def _dead(self, step: str, timed_out: bool, timeout_s: float) -> Exception:
        """The error for a child that gave no reply; the child is ended and forgotten."""
        process = self._process
        assert process is not None
        if timed_out:
            process.kill()
        returncode = process.wait()
        tail = self._stderr_tail()
        self.close()
        if timed_out:
            return ConversionError(f"{step}: ModelOpt did not finish within {timeout_s:.0f} s")
        if returncode < 0:
            return NativeCrashError(f"{step}: ModelOpt crashed ({signal.Signals(-returncode).name}); "
                                    "the variant was not made")
        return ConversionError(f"{step}: ModelOpt worker exited with {returncode}: {tail}")

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return "(its output went to the console)"
        self._stderr.seek(0)
        lines = self._stderr.read().strip().splitlines()
        return lines[-1] if lines else "(no output)"

    def close(self, kill: bool = False) -> None:
        """End the child: closing its stdin ends a child between jobs; ``kill`` ends one in a job."""
        process, self._process = self._process, None
        if process is not None:
            if kill:
                process.kill()
            if process.stdin is not None:
                try:
                    process.stdin.close()
                except BrokenPipeError:
                    pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def run_job(job: dict[str, Any], worker: ModelOptWorker | None = None) -> dict[str, Any]:
    """Run ``job`` in ``worker`` (a build's), or in a worker of its own; the worker's reply."""
    if worker is not None:
        return worker.run(job)
    with ModelOptWorker() as own:
        return own.run(job)


def worker_parameters(reply: dict[str, Any]) -> dict[str, Any]:
    """What a variant's step record says of the worker that made it (a build asserts one import)."""
    return {"modelopt_worker_pid": reply["pid"], "modelopt_worker_job": reply["job"],
            "modelopt_imports": reply["imports"], "modelopt_import_seconds": reply["import_seconds"]}


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


def _import_modelopt() -> None:
    """ModelOpt's two ONNX entry points, imported once per worker (the ~3 s a build pays once)."""
    import modelopt.onnx.autocast  # noqa: F401
    import modelopt.onnx.quantization  # noqa: F401


def _run(job: dict[str, Any]) -> None:
    import onnx

    if job["kind"] == "int8":
        from modelopt.onnx.quantization import quantize

        quantize(
            onnx_path=job["model"],
            output_path=job["output"],
            calibration_data_reader=feed_reader(_feeds(job["feeds"])),
            **job["kwargs"],
        )
    elif job["kind"] == "fp16":
        from modelopt.onnx.autocast import convert_to_mixed_precision

        model = convert_to_mixed_precision(onnx_path=job["model"], calibration_data=job["feeds"], **job["kwargs"])
        onnx.save(model, job["output"])
    else:
        raise ValueError(f"unknown job kind {job['kind']!r}")


def _error_reply(error: BaseException) -> dict[str, Any]:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return {"error": type(error).__name__, "message": message}


def main() -> int:
    # Replies go to the real stdout; everything else written to stdout (print, C libraries) to stderr.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    started = time.perf_counter()
    import_error: dict[str, Any] | None = None
    try:
        _import_modelopt()
    except Exception as error:  # reported with every job: the parent names the missing package
        import_error = _error_reply(error)
    identity = {"pid": os.getpid(), "imports": 0 if import_error else 1,
                "import_seconds": round(time.perf_counter() - started, 3)}
    jobs = 0
    for line in sys.stdin:
        jobs += 1
        reply: dict[str, Any] = dict(import_error) if import_error else {"ok": True}
        if import_error is None:
            try:
                _run(json.loads(line))
            except Exception as error:  # every failure goes back to the parent as one line
                reply = _error_reply(error)
        replies.write(json.dumps({**reply, **identity, "job": jobs}) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
