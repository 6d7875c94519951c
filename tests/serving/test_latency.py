"""t(b) of a real model (the zoo's FACILE in ONNX Runtime), measured with perf_analyzer's stability rule."""
from __future__ import annotations

import numpy as np
import pytest

from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.serving.latency import (
    P99_REQUESTS,
    LatencyCurve,
    LatencyPoint,
    data_inputs_for,
    knee,
    measure_latency_curve,
    quick_sweep,
)


@pytest.mark.slow
def test_t_of_b_rises_with_the_batch_and_every_p99_rests_on_enough_requests_or_says_why(facile_onnx) -> None:  # noqa: ANN001
    inputs_for = data_inputs_for(facile_onnx.inputs, seed=0)
    with OnnxRuntimeRunner(facile_onnx.onnx_path, intra_op_threads=1) as runner:
        # 16,000 rows (one FACILE event) take milliseconds: 1,000 of them do not fit in 2 s.
        curve = measure_latency_curve(runner.run, inputs_for, [1, 256, 16000], percentile=0.99, max_seconds=2.0)
    assert [p.batch for p in curve.points] == [1, 256, 16000]
    for point in curve.points:
        assert point.requests >= P99_REQUESTS or (not point.stable and "stopped by the 2 s bound" in point.why)
        assert point.p50_s <= point.p99_s
    small, _, event = curve.points
    assert event.p50_s > 10 * small.p50_s  # 16,000 rows cost far more than one
    assert not event.stable and event.requests < P99_REQUESTS
    assert curve.seconds(16000, "p99") == event.p99_s
    assert small.p50_s < curve.seconds(1000) < event.p50_s


def test_the_median_needs_fewer_requests_and_inputs_are_seeded_draws_from_the_data(facile_onnx) -> None:  # noqa: ANN001
    inputs_for = data_inputs_for(facile_onnx.inputs, seed=5)
    assert all(np.array_equal(inputs_for(300)[k], data_inputs_for(facile_onnx.inputs, seed=5)(300)[k])
               for k in facile_onnx.inputs)
    with OnnxRuntimeRunner(facile_onnx.onnx_path, intra_op_threads=1) as runner:
        curve = measure_latency_curve(runner.run, inputs_for, [64], percentile=0.5, max_seconds=5.0)
    (point,) = curve.points
    assert point.requests >= 30 and point.windows >= 3
    assert point.stable == ("agreed within 10% on p50" in point.why)


def test_the_quick_sweep_picks_where_rows_per_second_stop_improving(facile_onnx) -> None:  # noqa: ANN001
    sweep = quick_sweep(facile_onnx.onnx_path, seconds=1.0)
    sizes = [p.batch for p in sweep.curve.points]
    assert sweep.max_batch_size in sizes and sweep.preferred_batch_size == [sweep.max_batch_size]
    rates = {p.batch: p.batch / p.p50_s for p in sweep.curve.points}
    assert all(rates[b] <= rates[sweep.max_batch_size] * 1.1 for b in sizes if b > sweep.max_batch_size)
    assert f"max_batch_size {sweep.max_batch_size}" in sweep.why


def _curve(rows_per_s: dict[int, float]) -> LatencyCurve:
    return LatencyCurve([LatencyPoint(b, b / r, b / r, b / r, 9, 3, True) for b, r in rows_per_s.items()], "", "")


def test_the_knee_is_the_smallest_size_no_larger_one_beats_by_more_than_ten_percent() -> None:
    assert knee(_curve({1: 1e5, 16: 1e6, 256: 2e6, 4096: 2.1e6, 16384: 1e6}))[0] == 256
    assert knee(_curve({1: 1e5, 16: 1e6, 256: 1.5e6, 4096: 2.5e6}))[0] == 4096
    # One noisy size (64) does not stop the search early.
    assert knee(_curve({1: 1e5, 16: 1e6, 64: 0.9e6, 256: 2e6}))[0] == 256
