"""Confirmation against a live server, the clients one instance carries, and KEDA's threshold: the trained
FACILE network's Python-backend twin on the bundled Triton server, one event = 16,000 channels."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from hepdeploy.backend.triton import ServerTarget
from hepdeploy.errors import BadInputError, ServerError
from hepdeploy.perf import PerfLevel
from hepdeploy.serving.confirm import (
    ClientsLoad,
    OpenLoopLoad,
    clients_per_instance,
    confirm_against_server,
    keda_queue_threshold,
)
from hepdeploy.spec import DynamicBatching, TritonSpec

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROWS = 16_000


class _Predicted:
    """What a batching choice predicts (the queue model is tested on its own)."""

    predicted_p50_s = 0.02
    predicted_p99_s = 0.05


@pytest.fixture(scope="module")
def facile_server(zoo_export, triton_binary, tmp_path_factory):
    """FACILE's twin with dynamic batching up to two events and 2 ms of queue delay, on a local server."""
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.data import load_tensors
    from hepdeploy.triton.repository import publish_python_twin
    from hepdeploy.triton.server import TritonServer

    export = zoo_export("facile")
    work = tmp_path_factory.mktemp("confirm")
    artifact = convert_from_spec(export.spec, work / "facile.onnx")
    triton = TritonSpec(max_batch_size=2 * ROWS, warmup=False,
                        dynamic_batching=DynamicBatching(preferred_batch_size=[ROWS], max_queue_delay_microseconds=2000))
    spec = export.spec.model_copy(update={"triton": triton})
    served = publish_python_twin(work / "repo", artifact.path, model_name="facile", spec=spec).name
    inputs = {"input": load_tensors(Path(export.reference_path))["input"]}
    with TritonServer(work / "repo", binary=triton_binary, startup_timeout_s=180, load_timeout_s=300) as server:
        yield ServerTarget(server.grpc_url, timeout_s=60), served, inputs


def test_arrivals_are_seeded_poisson() -> None:
    load = OpenLoopLoad(rate_per_s=200, rows_per_request=1, seconds=50, warmup_s=0, seed=3)
    first, again, other = load.arrivals_s(), load.arrivals_s(), OpenLoopLoad(200, 1, 50, 0, seed=4).arrivals_s()
    assert np.array_equal(first, again) and not np.array_equal(first[:100], other[:100])
    gaps = np.diff(first)
    assert abs(len(first) / 50 - 200) < 200 * 0.05  # 10,000 arrivals: the count is within 5 % of the rate
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential gaps: the coefficient of variation is 1
    assert first[-1] < 50


@pytest.mark.slow
def test_open_loop_load_measures_the_served_config(facile_server) -> None:
    target, model, inputs = facile_server
    load = OpenLoopLoad(rate_per_s=20, rows_per_request=ROWS, seconds=3, warmup_s=0.5, seed=1)
    result = confirm_against_server(target, model, inputs, _Predicted(), load)
    arrivals = load.arrivals_s()
    assert result.requests == int(np.sum(arrivals >= load.warmup_s))  # every request after the warm-up answered
    assert 0 < result.measured_p50_s <= result.measured_p99_s
    assert result.predicted_p99_s == 0.05 and math.isclose(result.p99_ratio, result.measured_p99_s / 0.05)
    # The server saw the requests as whole events, batched at most two together (max_batch_size 32,000).
    assert result.server is not None and ROWS <= result.server["rows_per_execution"] <= 2 * ROWS


@pytest.mark.slow
def test_clients_per_instance_and_the_keda_threshold(facile_server) -> None:
    target, model, inputs = facile_server
    generous = clients_per_instance(target, model, inputs, budget_s=30.0,
                                    load=ClientsLoad(ROWS, repeats=3, seconds=0.6, warmup_s=0.2, max_clients=2))
    assert (generous.point, generous.low, generous.high, generous.per_repeat) == (2, 2, 2, [2, 2, 2])
    assert [len(levels) for levels in generous.levels] == [2, 2, 2]  # the cap stops the climb
    level = generous.operating_level()
    assert level is not None and level.clients == 2
    threshold = keda_queue_threshold(level, ROWS)
    assert threshold.threshold == max(1, math.ceil(threshold.metric_ms)) and "queue time per execution" in threshold.why
    # A budget no event can meet: not even one client fits, and each repeat stops at its first level.
    none = clients_per_instance(target, model, inputs, budget_s=1e-6,
                                load=ClientsLoad(ROWS, repeats=3, seconds=0.4, warmup_s=0.1, max_clients=4))
    assert (none.point, none.low, none.high) == (0, 0, 0) and none.operating_level() is None
    assert all(len(levels) == 1 for levels in none.levels)


def test_bad_loads_and_a_level_without_server_statistics() -> None:
    with pytest.raises(BadInputError):
        OpenLoopLoad(rate_per_s=0, rows_per_request=1)
    with pytest.raises(BadInputError):
        ClientsLoad(rows_per_event=ROWS, repeats=2)  # an interval needs at least three runs
    level = PerfLevel(1, 1.0, 10, 10, 10 * ROWS, 10.0, 10.0 * ROWS, 10.0, 5.0, 6.0, 7.0, 5.0, server=None)
    with pytest.raises(ServerError, match="no server statistics"):
        keda_queue_threshold(level, ROWS)
