"""A serving configuration is checked against its TensorRT profiles and the data before it is published:
max_batch_size within every profile, preferred sizes inside them, every size the data needs in some profile."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from hepdeploy.serving.consistency import serving_problems
from hepdeploy.serving.shapes import DimPlan, ShapeProfile, bucket_profiles, plan_dim
from hepdeploy.spec import DimRange


def _profiles(batch: DimRange) -> tuple[list[ShapeProfile], dict[str, DimPlan]]:
    """Two profiles cut from a bimodal particle count, each with ``batch``; and the data's plan."""
    rng = np.random.default_rng(2)
    counts = np.concatenate([rng.poisson(12, 3000), rng.poisson(45, 2000)]).astype(np.int64)
    plan = plan_dim(counts, dim="n_pf")
    profiles = [replace(p, ranges={"batch": batch, **p.ranges}) for p in bucket_profiles(counts, 2, 0.0, plan)]
    return profiles, {"n_pf": plan}


def test_a_consistent_configuration_has_no_problems() -> None:
    profiles, data = _profiles(DimRange(min=1, opt=200, max=500))
    assert len(profiles) == 2
    assert serving_problems(500, [200], profiles, data) == []
    assert serving_problems(0, [], [], data) == []  # ONNX Runtime: no profiles, no batching


def test_batch_sizes_outside_the_profiles_are_named() -> None:
    profiles, data = _profiles(DimRange(min=1, opt=200, max=500))
    problems = serving_problems(1000, [200, 800], profiles, data)
    assert "max_batch_size 1000 exceeds profile 0's max batch 500: a full batch cannot run" in problems
    assert "preferred batch size 800 outside profile 1's batch range 1..500" in problems
    assert serving_problems(100, [200], profiles, data) == [
        "preferred batch size 200 is outside 1..max_batch_size 100"]
    assert serving_problems(0, [8], [], data) == ["preferred_batch_size [8] needs batching (max_batch_size > 0)"]
    assert "preferred_batch_size [8, 8] repeats a size" in serving_problems(64, [8, 8], [], data)
    lone = serving_problems(64, [], _profiles(DimRange(min=4, opt=32, max=64))[0], data)
    assert "profile 0's min batch is 4: a batch of 1 (a lone request) cannot run" in lone


def test_the_data_must_fit_the_profiles_without_gaps() -> None:
    profiles, data = _profiles(DimRange(min=1, opt=200, max=500))
    plan = data["n_pf"]
    low, high = profiles[0].ranges["n_pf"], profiles[1].ranges["n_pf"]
    # More particles than the top profile holds.
    wider = serving_problems(500, [200], profiles, {"n_pf": (plan.min, plan.max + 10)})
    assert wider == [f"n_pf: the data's sizes {plan.max + 1}..{plan.max + 10} fall in no profile "
                     f"({low.min}..{low.max}, {high.min}..{high.max})"]
    # A gap between two profiles.
    holed = [profiles[0], replace(profiles[1], ranges={**profiles[1].ranges, "n_pf": DimRange(
        min=high.min + 3, opt=max(high.opt or 0, high.min + 3), max=high.max)})]
    assert serving_problems(500, [200], holed, data) == [
        f"n_pf: the data's sizes {high.min}..{high.min + 2} fall in no profile "
        f"({low.min}..{low.max}, {high.min + 3}..{high.max})"]
    # A dim the data has and the profiles do not set.
    assert serving_problems(500, [200], profiles, {**data, "n_sv": (1, 8)}) == [
        "n_sv: the data needs 1..8 but no profile sets n_sv"]


def test_a_request_larger_than_max_batch_size_is_refused() -> None:
    """FACILE: one event is 16,000 channels, sent as one request of 16,000 rows."""
    event = {"batch": (16000, 16000)}
    assert serving_problems(16000, [], [], event) == []
    assert serving_problems(8000, [], [], event) == [
        "a request of the data carries up to 16000 rows: more than max_batch_size 8000 (Triton refuses it)"]
