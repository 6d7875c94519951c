"""The physics-metric registry: every entry is complete, and its bootstrap kernel reproduces its scalar
definition on the events of a bin."""
from __future__ import annotations

import numpy as np
import pytest

from hepdeploy.errors import DataError
from hepdeploy.spec import PhysicsSpec
from hepdeploy.validate.bootstrap import Kernel, evaluate
from hepdeploy.validate.metric_registry import PHYSICS_METRICS, metrics_for, physics_metric
from hepdeploy.validate.physics_metric import (
    DecisionsView,
    PhysicsMetric,
    ScoresView,
    Subset,
    TargetView,
)

N_ROWS = 4000


def _views() -> dict[str, object]:
    """One view of every kind on the odd rows of a set (a bin), from seeded scores and residuals."""
    rng = np.random.default_rng(21)
    rows = np.arange(1, N_ROWS, 2)
    subset = Subset("x [0, 1)", rows, len(rows))
    signal = rng.random(len(rows)) < 0.4
    reference = 1 / (1 + np.exp(-(rng.normal(size=len(rows)) + 1.5 * signal)))
    candidate = np.clip(reference + rng.normal(scale=0.05, size=len(rows)), 0, 1)
    scores = {"reference": np.round(reference, 3), "candidate": np.round(candidate, 3), "signal": signal}
    residual = rng.normal(0.01, 0.1, size=(3, len(rows)))
    common = {"subset": subset, "n_rows": N_ROWS}
    return {
        "class": ScoresView(label="class 1", **scores, **common),
        "edges": ScoresView(label="edges", **scores, **common),
        "decisions": DecisionsView(agree=rng.random(len(rows)) < 0.97, correct_reference=rng.random(len(rows)) < 0.8,
                                   correct_candidate=rng.random(len(rows)) < 0.79, **common),
        "target": TargetView(tag="", reference=residual[0], candidate=residual[1], versus_reference=residual[2],
                             **common),
    }


def test_every_metric_is_complete_and_named_once() -> None:
    names = [metric.name for metric in PHYSICS_METRICS]
    assert len(names) == len(set(names))
    assert {metric.view for metric in PHYSICS_METRICS} == {"class", "decisions", "edges", "target"}
    for metric in PHYSICS_METRICS:
        assert callable(metric.kernel) and callable(metric.scalar) and callable(metric.title) and callable(metric.floor)
        if metric.direction is not None:
            assert metric.allowance in PhysicsSpec.model_fields
    assert physics_metric("background_rejection") in metrics_for("class")
    with pytest.raises(DataError, match="unknown physics metric 'purity'"):
        physics_metric("purity")


@pytest.mark.parametrize("metric", PHYSICS_METRICS, ids=lambda metric: metric.name)
def test_the_kernel_reproduces_the_scalar_definition(metric: PhysicsMetric) -> None:
    spec = PhysicsSpec(max_background_rejection_drop=0.1)
    view = _views()[metric.view]
    kernels = metric.kernel(view, spec)
    pairs = [("candidate", kernels.candidate)] + ([("reference", kernels.reference)] if kernels.reference else [])
    for who, where in pairs:
        assert isinstance(where.kernel, Kernel)
        [(point, _)] = evaluate([where.kernel], N_ROWS, None)
        assert point[where.row] == pytest.approx(metric.scalar(view, who, spec), rel=1e-9), who
    assert metric.title(view, spec) and isinstance(metric.floor(view, spec), str)


def test_an_entry_must_name_a_spec_field_and_a_direction_together() -> None:
    entry = PHYSICS_METRICS[0]
    with pytest.raises(ValueError, match="not a PhysicsSpec field"):
        PhysicsMetric("x", "class", entry.kernel, entry.scalar, entry.title, "higher", allowance="max_x_drop")
    with pytest.raises(ValueError, match="needs a direction and an allowance"):
        PhysicsMetric("x", "class", entry.kernel, entry.scalar, entry.title, "higher")
    assert PhysicsMetric("x", "class", entry.kernel, entry.scalar, entry.title, None).kind == "info"
