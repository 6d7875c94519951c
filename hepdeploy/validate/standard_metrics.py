"""The physics metrics every analysis is checked on: ROC AUC and signal efficiency at a fixed
background efficiency per class (its drop absolute, or relative to the reference's when asked for), and argmax agreement and accuracy, for classifiers; AUC,
efficiency and purity for edge classifiers; bias and resolution (IQR/1.349 of the relative
residual) for regressions. Each is a :class:`~hepdeploy.validate.physics_metric.PhysicsMetric`
entry of :mod:`hepdeploy.validate.metric_registry`.
"""
from __future__ import annotations

import math

import numpy as np

from hepdeploy.metrics import IQR_TO_SIGMA, roc_auc, signal_efficiency_at
from hepdeploy.spec import PhysicsSpec
from hepdeploy.validate.bootstrap import Kernel, QuantileKernel, RatioKernel, RocKernel
from hepdeploy.validate.physics_metric import (
    DecisionsView,
    KernelFunction,
    KernelRow,
    MetricKernels,
    PhysicsMetric,
    ScoresView,
    TargetView,
    Who,
    statistical_floor,
)

# ---------------------------------------------------------------------------- classes and edges: ROC


def _roc(view: ScoresView, who: Who, background_efficiencies: tuple[float, ...]) -> Kernel:
    """One model's ROC kernel on the view (AUC, then the efficiency at each background efficiency)."""
    return view.shared(("roc", who, background_efficiencies), lambda: RocKernel(
        view.scores(who), view.signal, background_efficiencies, rows=view.subset.rows, n_rows=view.n_rows))


def _class_roc(row: int) -> KernelFunction:
    def kernels(view: ScoresView, spec: PhysicsSpec) -> MetricKernels:
        targets = (spec.background_efficiency,)
        return MetricKernels(KernelRow(_roc(view, "reference", targets), row),
                             KernelRow(_roc(view, "candidate", targets), row))
    return kernels


def _edge_roc(view: ScoresView, spec: PhysicsSpec) -> MetricKernels:
    return MetricKernels(KernelRow(_roc(view, "reference", ()), 0), KernelRow(_roc(view, "candidate", ()), 0))


def _auc(view: ScoresView, who: Who, spec: PhysicsSpec) -> float:
    return roc_auc(view.scores(who), view.signal)


def _auc_floor(view: ScoresView, spec: PhysicsSpec) -> str:
    need = spec.min_signal_events
    return (statistical_floor(view.n_signal, need, "signal events")
            or statistical_floor(view.n_background, need, "background events"))


def _signal_efficiency(view: ScoresView, who: Who, spec: PhysicsSpec) -> float:
    return signal_efficiency_at(view.scores(who), view.signal, spec.background_efficiency)


def _signal_efficiency_floor(view: ScoresView, spec: PhysicsSpec) -> str:
    bkg = spec.background_efficiency
    beyond = int(math.floor(view.n_background * bkg))
    return (statistical_floor(view.n_signal, spec.min_signal_events, "signal events")
            or statistical_floor(beyond, spec.min_background_beyond_cut, f"background events beyond the {bkg:g} cut"))


AUC = PhysicsMetric(
    "auc", "class", kernel=_class_roc(0), scalar=_auc, title=lambda view, spec: f"auc[{view.label}]",
    direction="higher", allowance="max_auc_drop", floor=_auc_floor)
SIGNAL_EFFICIENCY = PhysicsMetric(
    "signal_efficiency", "class", kernel=_class_roc(1), scalar=_signal_efficiency,
    title=lambda view, spec: f"signal_efficiency@{spec.background_efficiency:g}bkg[{view.label}]",
    direction="higher", allowance="max_signal_efficiency_drop", floor=_signal_efficiency_floor)
# The same efficiency judged relative to the reference's (opt-in: the gate's default): an allowance of
# 1 % means 1 % of the efficiency wherever it sits, a loose tagger's 0.05 or a tight one's 0.6.
SIGNAL_EFFICIENCY_RELATIVE = PhysicsMetric(
    "signal_efficiency_relative", "class", kernel=_class_roc(1), scalar=_signal_efficiency,
    title=lambda view, spec: f"signal_efficiency_relative@{spec.background_efficiency:g}bkg[{view.label}]",
    direction="higher", allowance="max_signal_efficiency_relative_drop", judged="relative_change",
    floor=_signal_efficiency_floor)
EDGE_AUC = PhysicsMetric(
    "edge_auc", "edges", kernel=_edge_roc, scalar=_auc, title=lambda view, spec: "edge_auc",
    direction="higher", allowance="max_auc_drop",
    floor=lambda view, spec: (statistical_floor(view.n_signal, spec.min_signal_events, "true edges")
                              or statistical_floor(view.n_background, spec.min_signal_events, "false edges")))


# ---------------------------------------------------------------------------- edges: the selection


def _selection(view: ScoresView, spec: PhysicsSpec) -> Kernel:
    """Efficiency and purity of both models' edge selections (score above the threshold)."""
    def make() -> Kernel:
        y = view.signal
        chosen_ref, chosen_cand = view.reference > spec.threshold, view.candidate > spec.threshold
        return RatioKernel(("efficiency_ref", "efficiency_cand", "purity_ref", "purity_cand"),
                           np.stack([chosen_ref & y, chosen_cand & y, chosen_ref & y, chosen_cand & y]),
                           np.stack([y, y, chosen_ref, chosen_cand]), rows=view.subset.rows, n_rows=view.n_rows)
    return view.shared("selection", make)


def _selection_rows(reference: int, candidate: int) -> KernelFunction:
    def kernels(view: ScoresView, spec: PhysicsSpec) -> MetricKernels:
        kernel = _selection(view, spec)
        return MetricKernels(KernelRow(kernel, reference), KernelRow(kernel, candidate))
    return kernels


def _edge_efficiency(view: ScoresView, who: Who, spec: PhysicsSpec) -> float:
    chosen = view.scores(who) > spec.threshold
    return float((chosen & view.signal).sum() / view.signal.sum())


def _edge_purity(view: ScoresView, who: Who, spec: PhysicsSpec) -> float:
    chosen = view.scores(who) > spec.threshold
    return float((chosen & view.signal).sum() / chosen.sum()) if chosen.any() else math.nan


def _purity_floor(view: ScoresView, spec: PhysicsSpec) -> str:
    selected = min(int((view.reference > spec.threshold).sum()), int((view.candidate > spec.threshold).sum()))
    return statistical_floor(selected, spec.min_signal_events, "selected edges")


EDGE_EFFICIENCY = PhysicsMetric(
    "edge_efficiency", "edges", kernel=_selection_rows(0, 1), scalar=_edge_efficiency,
    title=lambda view, spec: f"edge_efficiency@{spec.threshold:g}", direction="higher",
    allowance="max_signal_efficiency_drop",
    floor=lambda view, spec: statistical_floor(view.n_signal, spec.min_signal_events, "true edges"))
EDGE_PURITY = PhysicsMetric(
    "edge_purity", "edges", kernel=_selection_rows(2, 3), scalar=_edge_purity,
    title=lambda view, spec: f"edge_purity@{spec.threshold:g}", direction="higher",
    allowance="max_signal_efficiency_drop", floor=_purity_floor)


# ---------------------------------------------------------------------------- a classifier's decisions


def _decisions(view: DecisionsView) -> Kernel:
    return view.shared("decisions", lambda: RatioKernel(
        ("agreement", "accuracy_ref", "accuracy_cand"),
        np.stack([view.agree, view.correct_reference, view.correct_candidate]), np.ones((3, len(view.agree))),
        rows=view.subset.rows, n_rows=view.n_rows))


ARGMAX_AGREEMENT = PhysicsMetric(
    "argmax_agreement", "decisions",
    kernel=lambda view, spec: MetricKernels(None, KernelRow(_decisions(view), 0)),
    scalar=lambda view, who, spec: float(np.mean(view.agree)), title=lambda view, spec: "argmax_agreement",
    direction="higher", allowance="min_argmax_agreement", judged="value",
    floor=lambda view, spec: statistical_floor(len(view.agree), spec.min_events, "events"))
ACCURACY = PhysicsMetric(
    "accuracy", "decisions",
    kernel=lambda view, spec: MetricKernels(KernelRow(_decisions(view), 1), KernelRow(_decisions(view), 2)),
    scalar=lambda view, who, spec: float(np.mean(view.correct(who))), title=lambda view, spec: "accuracy",
    direction=None)


# ---------------------------------------------------------------------------- regression targets


class ResidualKernel(QuantileKernel):
    """Bias (median) and resolution (IQR/1.349) of a residual distribution."""

    def __init__(self, residual: np.ndarray, rows: np.ndarray | None, n_rows: int) -> None:
        super().__init__(("bias", "resolution"), residual, (0.25, 0.5, 0.75), rows=rows, n_rows=n_rows)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        q25, q50, q75 = super().__call__(weights)
        return np.stack([q50, (q75 - q25) / IQR_TO_SIGMA])


def _residual(view: TargetView, which: Who | str) -> Kernel:
    return view.shared(("residual", which), lambda: ResidualKernel(
        view.residual(which), view.subset.rows, view.n_rows))  # type: ignore[arg-type]


def _both_models(row: int) -> KernelFunction:
    def kernels(view: TargetView, spec: PhysicsSpec) -> MetricKernels:
        return MetricKernels(KernelRow(_residual(view, "reference"), row), KernelRow(_residual(view, "candidate"), row))
    return kernels


def _versus_reference(row: int) -> KernelFunction:
    def kernels(view: TargetView, spec: PhysicsSpec) -> MetricKernels:
        return MetricKernels(None, KernelRow(_residual(view, "versus_reference"), row))
    return kernels


def _quantiles(values: np.ndarray) -> np.ndarray:
    return np.quantile(values, (0.25, 0.5, 0.75), method="inverted_cdf")


def _bias(view: TargetView, who: Who, spec: PhysicsSpec) -> float:
    return float(_quantiles(view.residual(who))[1])


def _resolution(view: TargetView, who: Who, spec: PhysicsSpec) -> float:
    q25, _, q75 = _quantiles(view.residual(who))
    return float((q75 - q25) / IQR_TO_SIGMA)


def _target_floor(view: TargetView, spec: PhysicsSpec) -> str:
    return statistical_floor(view.subset.n_events, spec.min_events, "events")


BIAS = PhysicsMetric(
    "bias", "target", kernel=_both_models(0), scalar=_bias, title=lambda view, spec: f"bias{view.tag}",
    direction="two-sided", allowance="max_bias_change", floor=_target_floor)
RESOLUTION = PhysicsMetric(
    "resolution", "target", kernel=_both_models(1), scalar=_resolution,
    title=lambda view, spec: f"resolution{view.tag}", direction="lower", allowance="max_resolution_change",
    floor=_target_floor)
BIAS_VS_REFERENCE = PhysicsMetric(
    "bias_vs_reference", "target", kernel=_versus_reference(0),
    scalar=lambda view, who, spec: _bias(view, "versus_reference", spec),  # type: ignore[arg-type]
    title=lambda view, spec: f"bias_vs_reference{view.tag}", direction=None)
RESOLUTION_VS_REFERENCE = PhysicsMetric(
    "resolution_vs_reference", "target", kernel=_versus_reference(1),
    scalar=lambda view, who, spec: _resolution(view, "versus_reference", spec),  # type: ignore[arg-type]
    title=lambda view, spec: f"resolution_vs_reference{view.tag}", direction=None)
