"""The batch latency t(b), measured with perf_analyzer's stability rule.

For each batch size, back-to-back calls of ``run`` are grouped into measurement windows; measuring stops when
the last three windows agree within ``stability`` (10 %) of their average on the statistic asked (p50, or the
percentile), each window holding enough requests for that statistic (at least 1,000 over the three windows for
p99). A batch size that ``max_seconds`` stops first is kept, marked unstable with the reason. The same function
measures an ONNX Runtime session in this process or a Triton client's call: ``run`` is any callable.

``quick_sweep`` is the cheap version ``triton add`` uses for a model without a spec: a few sizes, p50 only.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hepdeploy.artifacts import read_artifact
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner, check_in_child
from hepdeploy.errors import BadInputError, DataError, SpecError
from hepdeploy.graph_bounds import graph_dim_bounds, minimums
from hepdeploy.sampling import sample_inputs, typical_sizes
from hepdeploy.spec import DynamicBatching, TensorSpec, TritonSpec, infer_batch_axis
from hepdeploy.triton.config import default_batched

log = logging.getLogger("hepdeploy.serving.latency")

Quantile = Literal["p50", "p99", "mean"]
WINDOWS_AGREEING = 3
P99_REQUESTS = 1000  # perf_analyzer's advice for a p99: at least this many requests
P50_REQUESTS = 30
QUICK_SIZES = (1, 4, 16, 64, 256, 1024, 4096, 16384)
SWEEP_MEMORY_BYTES = 1 << 30  # the quick sweep's largest batch: its activations within this
PROBE_BATCH = 64
IMPROVEMENT = 0.10  # the quick sweep's max batch: where throughput per row stops improving by more than this


@dataclass(frozen=True)
class LatencyPoint:
    """t(b) at one batch size: the statistics of the last three windows' requests, and whether they agreed."""

    batch: int
    p50_s: float
    p99_s: float
    mean_s: float
    requests: int
    windows: int
    stable: bool
    why: str = ""


@dataclass
class LatencyCurve:
    """t(b) over the measured batch sizes; ``where`` says what ran (backend, machine), ``why`` how it was measured."""

    points: list[LatencyPoint]
    where: str
    why: str

    def seconds(self, batch: int, quantile: Quantile = "p50") -> float:
        """t(batch): linear between measured sizes, the first point's below them, the last segment's slope above."""
        if not self.points:
            raise DataError("the latency curve has no points")
        sizes = np.array([p.batch for p in self.points], dtype=float)
        values = np.array([_statistic(p, quantile) for p in self.points], dtype=float)
        if batch <= sizes[-1] or len(sizes) == 1:
            return float(np.interp(batch, sizes, values))
        slope = max(0.0, (values[-1] - values[-2]) / (sizes[-1] - sizes[-2]))
        return float(values[-1] + slope * (batch - sizes[-1]))

    def __call__(self, batch: int) -> float:
        return self.seconds(batch)

    def as_dict(self) -> dict[str, Any]:
        return {"where": self.where, "why": self.why, "points": [vars(p) for p in self.points]}


def _statistic(point: LatencyPoint, quantile: Quantile) -> float:
    return {"p50": point.p50_s, "p99": point.p99_s, "mean": point.mean_s}[quantile]


@dataclass
class _Windows:
    """Per-window latencies of one batch size, and the rule that says when they agree."""

    quantile: float
    stability: float
    windows: list[list[float]] = field(default_factory=list)

    def statistic(self, latencies: Sequence[float]) -> float:
        return float(np.percentile(latencies, self.quantile * 100))

    def agree(self) -> bool:
        if len(self.windows) < WINDOWS_AGREEING:
            return False
        values = [self.statistic(w) for w in self.windows[-WINDOWS_AGREEING:]]
        average = sum(values) / len(values)
        return all(abs(v - average) <= self.stability * average for v in values)

    def last(self) -> list[float]:
        return [t for window in self.windows[-WINDOWS_AGREEING:] for t in window]


def _measure_batch(run: Callable[[dict[str, np.ndarray]], Any], inputs: dict[str, np.ndarray], batch: int,
                   windows: _Windows, limits: tuple[int, float, float]) -> LatencyPoint:
    """Windows of back-to-back calls at one batch size until three agree or ``max_seconds`` is spent."""
    per_window, min_window_s, max_seconds = limits
    run(inputs)  # warm-up: first-call allocations are not t(b)
    started = time.perf_counter()
    while not windows.agree() and time.perf_counter() - started < max_seconds:
        window: list[float] = []
        opened = time.perf_counter()
        while len(window) < per_window or time.perf_counter() - opened < min_window_s:
            sent = time.perf_counter()
            run(inputs)
            window.append(time.perf_counter() - sent)
            if time.perf_counter() - started >= max_seconds:
                break
        windows.windows.append(window)
    latencies = windows.last()
    stable = windows.agree()
    name = f"p{windows.quantile * 100:g}"
    why = f"{WINDOWS_AGREEING} windows agreed within {windows.stability:.0%} on {name}" if stable else (
        f"stopped by the {max_seconds:g} s bound after {len(windows.windows)} window(s) "
        + ("that did not agree" if len(windows.windows) >= WINDOWS_AGREEING else "")
        + f" on {name}; {len(latencies)} requests in the last {min(len(windows.windows), WINDOWS_AGREEING)}")
    return LatencyPoint(batch=batch, p50_s=float(np.percentile(latencies, 50)),
                        p99_s=float(np.percentile(latencies, 99)), mean_s=float(np.mean(latencies)),
                        requests=len(latencies), windows=len(windows.windows), stable=stable, why=why.strip())


def measure_latency_curve(run: Callable[[dict[str, np.ndarray]], Any], inputs_for: Callable[[int], dict[str, np.ndarray]],
                          batches: Sequence[int], *, percentile: float = 0.99, stability: float = 0.10,
                          min_requests: int | None = None, max_seconds: float = 10.0,
                          min_window_s: float = 0.05) -> LatencyCurve:
    """t(b) at each of ``batches``; ``percentile`` is the statistic the windows must agree on (0.5: the median).

    ``min_requests`` (over the three windows) defaults to 1,000 for a tail percentile and 30 for the median. The
    curve's ``where`` says "this process"; a caller that knows what ``run`` reaches sets it."""
    if not batches or any(b < 1 for b in batches):
        raise BadInputError(f"batch sizes {list(batches)} must be positive")
    if not 0 < percentile < 1 or not 0 < stability < 1:
        raise BadInputError(f"percentile {percentile} and stability {stability} must lie in (0, 1)")
    needed = min_requests if min_requests is not None else (P99_REQUESTS if percentile > 0.5 else P50_REQUESTS)
    per_window = math.ceil(needed / WINDOWS_AGREEING)
    points = []
    for batch in sorted(set(batches)):
        windows = _Windows(quantile=percentile, stability=stability)
        point = _measure_batch(run, inputs_for(batch), batch, windows, (per_window, min_window_s, max_seconds))
        log.debug("t(%d) = %.3g ms p50, %.3g ms p99 over %d requests (%s)", batch, point.p50_s * 1e3,
                  point.p99_s * 1e3, point.requests, point.why)
        points.append(point)
    why = (f"perf_analyzer's rule: windows of >= {per_window} requests and >= {min_window_s:g} s until "
           f"{WINDOWS_AGREEING} agree within {stability:.0%} on p{percentile * 100:g}, at most {max_seconds:g} s per size")
    return LatencyCurve(points=points, where="this process", why=why)


def data_inputs_for(data: Mapping[str, np.ndarray], seed: int = 0) -> Callable[[int], dict[str, np.ndarray]]:
    """Batches drawn from the data's rows (seeded; with replacement only when the batch exceeds the rows)."""
    sizes = {int(np.shape(v)[0]) for v in data.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise DataError(f"the data's arrays disagree on their number of rows: {sorted(sizes)}")
    rows = sizes.pop()

    def inputs_for(batch: int) -> dict[str, np.ndarray]:
        picked = np.random.default_rng(seed).choice(rows, size=batch, replace=batch > rows)
        return {name: np.ascontiguousarray(np.asarray(values)[picked]) for name, values in data.items()}

    return inputs_for


def sampled_inputs_for(inputs: Sequence[TensorSpec], bounds: Mapping[str, int] | None = None,
                       seed: int = 0) -> Callable[[int], dict[str, np.ndarray]]:
    """Batches of the project's seeded sample inputs (other dynamic dims at their typical sizes)."""
    batched, why = infer_batch_axis(list(inputs))
    if not batched:
        raise SpecError(f"no batch axis to sweep: {why}")
    batch_dim = str(inputs[0].shape[0])

    def inputs_for(batch: int) -> dict[str, np.ndarray]:
        sizes = typical_sizes(list(inputs), None, bounds=bounds)
        sizes[batch_dim] = batch
        return sample_inputs(list(inputs), sizes, seed=seed)

    return inputs_for


@dataclass(frozen=True)
class SweepDefaults:
    """max_batch_size and preferred sizes for a model without a spec, from a quick t(b) sweep, with why."""

    max_batch_size: int
    preferred_batch_size: list[int]
    why: str
    curve: LatencyCurve

    def triton_spec(self, base: TritonSpec | None = None) -> TritonSpec:
        """``base`` (or the defaults) with this max_batch_size and these preferred sizes."""
        base = base or TritonSpec()
        batching = base.dynamic_batching or DynamicBatching()
        return base.model_copy(update={
            "max_batch_size": self.max_batch_size,
            "dynamic_batching": batching.model_copy(update={"preferred_batch_size": list(self.preferred_batch_size)})})


def knee(curve: LatencyCurve, improvement: float = IMPROVEMENT) -> tuple[int, str]:
    """(batch, why): the smallest measured size whose rows/s no larger size beats by more than ``improvement``:
    where throughput per row stops improving (one noisy size cannot stop it early)."""
    sizes = [p.batch for p in curve.points]
    rate = [p.batch / p.p50_s for p in curve.points]
    best = max(range(len(sizes)), key=rate.__getitem__)
    chosen = next(k for k in range(len(sizes)) if rate[k] * (1 + improvement) >= max(rate[k:]))
    beyond = (f"the best, {rate[best]:.3g} rows/s at {sizes[best]}, is within {improvement:.0%} of it"
              if best != chosen else "no size measured gives more")
    why = (f"rows/s by batch: {', '.join(f'{b}: {r:.3g}' for b, r in zip(sizes, rate, strict=True))}; "
           f"{sizes[chosen]} gives {rate[chosen]:.3g} rows/s and {beyond}")
    return sizes[chosen], why


def spec_less_defaults(onnx_path: Path, *, seconds: float = 1.0, seed: int = 0) -> SweepDefaults | None:
    """``triton add``'s batching for an ONNX model without a spec: a quick sweep when the model has a batch axis
    (as the triton stage finds it), None when it has none (it is published with max_batch_size 0)."""
    artifact = read_artifact(Path(onnx_path))
    if not default_batched([*artifact.sidecar.inputs, *artifact.sidecar.outputs]):
        return None
    return quick_sweep(Path(onnx_path), seconds=seconds, seed=seed)


def quick_sweep(onnx_path: Path, *, sizes: Sequence[int] = QUICK_SIZES, seconds: float = 2.0,
                seed: int = 0) -> SweepDefaults:
    """A cheap t(b) sweep of an ONNX model in ONNX Runtime on this CPU: p50 only, about ``seconds`` in all.

    Sizes stop at the first that alone takes more than a quarter of ``seconds``, that ONNX Runtime cannot run,
    or whose activations would pass SWEEP_MEMORY_BYTES. The model is first run once in a child process, so a
    graph that crashes ONNX Runtime natively raises NativeCrashError instead of ending this process."""
    inputs = list(read_artifact(Path(onnx_path)).sidecar.inputs)
    inputs_for = sampled_inputs_for(inputs, minimums(graph_dim_bounds(Path(onnx_path))), seed)
    check_in_child(Path(onnx_path), inputs_for(min(sizes)), where=str(onnx_path))
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_size = seconds / len(sizes)
    points: list[LatencyPoint] = []
    notes: list[str] = []
    with OnnxRuntimeRunner(Path(onnx_path), intra_op_threads=threads) as runner:
        largest = runner.rows_within(SWEEP_MEMORY_BYTES, inputs_for(PROBE_BATCH))
        for batch in sorted(sizes):
            if largest is not None and batch > max(largest, min(sizes)):
                notes.append(f"sizes above {largest} rows not tried: their activations would pass "
                             f"{SWEEP_MEMORY_BYTES / 2**30:g} GiB")
                break
            try:
                curve = measure_latency_curve(runner.run, inputs_for, [batch], percentile=0.5, min_requests=9,
                                              max_seconds=per_size, min_window_s=per_size / 8)
            except DataError as error:
                if not points:
                    raise
                notes.append(f"ONNX Runtime cannot run {batch} rows ({error}); sizes stop below it")
                break
            points.extend(curve.points)
            if curve.points[0].p50_s > seconds / 4:
                break
    curve = LatencyCurve(points, where=f"ONNX Runtime CPU, {threads} thread(s), this machine",
                         why=f"quick sweep: p50 of 3 windows of >= 3 calls and >= {per_size / 8:.2g} s, "
                             f"at most {per_size:.2g} s per size")
    most, why = knee(curve)
    why = f"max_batch_size {most}, preferred [{most}] (sent as soon as it is queued): {why}"
    return SweepDefaults(max_batch_size=most, preferred_batch_size=[most],
                         why="; ".join([why, *notes]), curve=curve)
