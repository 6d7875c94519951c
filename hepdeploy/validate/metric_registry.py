"""The physics-metric registry: every metric the physics checks plan, compute and judge.

A new metric is one module (its kernel, scalar definition and :class:`PhysicsMetric` entry, like
:mod:`hepdeploy.validate.background_rejection`), one line here, and its allowance field in
:class:`hepdeploy.spec.PhysicsSpec`. The per-task functions of :mod:`hepdeploy.validate.physics`
plan every metric of a view kind on each view they build, in this order.
"""
from __future__ import annotations

from hepdeploy.errors import DataError
from hepdeploy.validate.background_rejection import BACKGROUND_REJECTION
from hepdeploy.validate.physics_metric import PhysicsMetric, ViewKind
from hepdeploy.validate.standard_metrics import (
    ACCURACY,
    ARGMAX_AGREEMENT,
    AUC,
    BIAS,
    BIAS_VS_REFERENCE,
    EDGE_AUC,
    EDGE_EFFICIENCY,
    EDGE_PURITY,
    RESOLUTION,
    RESOLUTION_VS_REFERENCE,
    SIGNAL_EFFICIENCY,
    SIGNAL_EFFICIENCY_RELATIVE,
)

PHYSICS_METRICS: tuple[PhysicsMetric, ...] = (
    AUC,
    SIGNAL_EFFICIENCY,
    SIGNAL_EFFICIENCY_RELATIVE,
    BACKGROUND_REJECTION,
    ARGMAX_AGREEMENT,
    ACCURACY,
    EDGE_AUC,
    EDGE_EFFICIENCY,
    EDGE_PURITY,
    BIAS,
    RESOLUTION,
    BIAS_VS_REFERENCE,
    RESOLUTION_VS_REFERENCE,
)


def metrics_for(view: ViewKind) -> tuple[PhysicsMetric, ...]:
    """The metrics planned on every view of this kind, in registry order."""
    return tuple(metric for metric in PHYSICS_METRICS if metric.view == view)


def physics_metric(name: str) -> PhysicsMetric:
    """The registry entry of metric family ``name`` ("auc", "background_rejection", ...)."""
    for metric in PHYSICS_METRICS:
        if metric.name == name:
            return metric
    raise DataError(f"unknown physics metric {name!r} (known: {', '.join(m.name for m in PHYSICS_METRICS)})")
