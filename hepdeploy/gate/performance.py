"""Performance: versions N and N+1 timed side by side, in one run, in ONNX Runtime on this CPU.

Both sessions are open at once with the same thread settings (one intra-op, one inter-op thread, as
CMSSW runs them) and run the same batch in turns, the order alternating from pair to pair, after a
warm-up; the ratio is the median of the per-pair time ratios (N+1 / N), which a change of load during
the run moves little. A slowdown beyond ``gate.performance.noise_band`` is reported; it is judged
only when ``gate.performance.max_slowdown`` is set, and fails only beyond that allowance plus the
noise band.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.data import common_batch_size
from hepdeploy.gate.outcome import CheckResult, Finding
from hepdeploy.spec import GatePerformanceSpec, GateSpec

CHECK = "performance"
SPEC_KEY = "gate.performance.max_slowdown"
WARMUP_RUNS = 3
MIN_PAIRS = 10
MAX_PAIRS = 5000


def check_performance(baseline_file: Path, candidate_file: Path, inputs: dict[str, np.ndarray],
                      gate: GateSpec) -> CheckResult:
    """Throughput and p50/p99 latency of N (``baseline_file``) and N+1 on ``inputs``, and their ratio.

    A model that is not an ONNX file (a TensorRT plan, a Python-backend folder) cannot be timed here:
    UNDECIDED when the spec sets ``max_slowdown``, else INFO, with the reason.
    """
    settings = gate.performance
    untimed = [f"{who} {path} is not an ONNX file" for who, path in (("N", baseline_file), ("N+1", candidate_file))
               if not (Path(path).is_file() and Path(path).suffix == ".onnx")]
    if untimed:
        outcome = "UNDECIDED" if settings.max_slowdown is not None else "INFO"
        return CheckResult(CHECK, outcome, f"not timed: {'; '.join(untimed)} (only ONNX models are timed here, "
                                           "in ONNX Runtime on this CPU)")
    feed = _feed(inputs, settings.batch)
    baseline_times, candidate_times = _interleaved(Path(baseline_file), Path(candidate_file), feed, settings.seconds)
    rows = int(next(iter(feed.values())).shape[0])
    ratio = statistics.median(c / b for b, c in zip(baseline_times, candidate_times, strict=True))
    details: dict[str, Any] = {
        "baseline": _figures(baseline_times, rows), "candidate": _figures(candidate_times, rows),
        "ratio": round(ratio, 4), "noise_band": settings.noise_band, "max_slowdown": settings.max_slowdown,
        "batch": rows if common_batch_size(feed) is not None else None, "pairs": len(baseline_times), "threads": {"intra_op": 1, "inter_op": 1},
        "statistic": "median over interleaved pairs of N+1's time / N's time",
    }
    outcome, reason = _judge(ratio, settings)
    finding = Finding(
        name="latency ratio N+1 / N", outcome=outcome, message=reason, metric="latency_ratio",
        baseline=details["baseline"]["p50_ms"], candidate=details["candidate"]["p50_ms"], change=round(ratio - 1, 4),
        allowance=settings.max_slowdown, relative=True,
        improved=ratio < 1 - settings.noise_band,
        spec_key=SPEC_KEY if outcome == "FAIL" else None, extra={"noise_band": settings.noise_band})
    return CheckResult(CHECK, outcome, reason, [finding], details)


def _feed(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` rows of every input (all rows of a set smaller than that); the whole inputs of a
    model without a batch axis (a graph per call: its edges index its nodes, so no rows can be dropped)."""
    if common_batch_size(inputs) is None:
        return {name: np.ascontiguousarray(value) for name, value in inputs.items()}
    return {name: np.ascontiguousarray(np.asarray(value)[:batch]) for name, value in inputs.items()}


def _interleaved(baseline: Path, candidate: Path, feed: dict[str, np.ndarray],
                 seconds: float) -> tuple[list[float], list[float]]:
    """Seconds per run of each model, in pairs run back to back (the first of a pair alternating)."""
    runners = [OnnxRuntimeRunner(path, intra_op_threads=1, inter_op_threads=1) for path in (baseline, candidate)]
    times: tuple[list[float], list[float]] = ([], [])
    try:
        for runner in runners:
            for _ in range(WARMUP_RUNS):
                runner.run(feed)
        start = time.perf_counter()
        pair = 0
        while pair < MIN_PAIRS or (time.perf_counter() - start < seconds and pair < MAX_PAIRS):
            for which in ((0, 1) if pair % 2 == 0 else (1, 0)):
                began = time.perf_counter()
                runners[which].run(feed)
                times[which].append(time.perf_counter() - began)
            pair += 1
    finally:
        for runner in runners:
            runner.close()
    return times


def _figures(times: list[float], rows: int) -> dict[str, float]:
    seconds = np.asarray(times)
    return {"throughput_per_s": round(rows / float(seconds.mean()), 1),
            "p50_ms": round(float(np.percentile(seconds, 50)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 4), "runs": len(times)}


def _judge(ratio: float, settings: GatePerformanceSpec) -> tuple[str, str]:
    """INFO without an allowance; FAIL beyond the allowance plus the noise band; PASS otherwise."""
    change = ratio - 1.0
    measured = f"N+1 takes {ratio:.3f}x N's time per batch"
    if not math.isfinite(ratio) or ratio <= 0:
        return "UNDECIDED", f"the timing gave no usable ratio ({ratio})"
    beyond_noise = change > settings.noise_band
    noise = (f"; a slowdown of {change:.1%}, beyond the noise band of {settings.noise_band:.0%}" if beyond_noise
             else f" (within the noise band of {settings.noise_band:.0%})" if abs(change) <= settings.noise_band
             else f"; faster by {-change:.1%}")
    if settings.max_slowdown is None:
        return "INFO", f"{measured}{noise}; not judged (gate.performance.max_slowdown is not set)"
    limit = settings.max_slowdown + settings.noise_band
    if change > limit:
        return "FAIL", (f"{measured}{noise}; allowance {settings.max_slowdown:.0%} plus the noise band: "
                        f"{limit:.0%}")
    return "PASS", f"{measured}{noise}; within the allowance of {settings.max_slowdown:.0%} slower"
