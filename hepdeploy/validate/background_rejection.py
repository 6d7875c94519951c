"""Background rejection at a fixed signal efficiency: 1/eps_B of the cut that keeps a fraction eps_S
of a class's signal, one-vs-rest (CMS b- and top-tagging quote it at eps_S = 0.5).

The cut is the tightest one that keeps eps_S of the signal: the first point of the ROC curve of
:func:`hepdeploy.metrics.roc_curve` (through (0, 0) and the point after every group of tied
scores, linear in between) whose signal efficiency reaches eps_S. The bootstrap kernel reads the
same curve from the ROC kernel's segments, per replica.

A tagger's rejection spans decades (5 for a loose one, 1000 for a good one), so its change is
judged relative to the reference's: the candidate may lose ``max_background_rejection_drop`` of
it. The metric is opt-in: unset (the default) it is not checked, since a good tagger needs a
large reference set to judge it: the background events passing the reference's cut must reach
``min_background_beyond_cut`` (and the class's signal events ``min_signal_events``).
"""
from __future__ import annotations

import math

import numpy as np

from hepdeploy.metrics import roc_curve
from hepdeploy.spec import PhysicsSpec
from hepdeploy.validate.bootstrap import Kernel, RocKernel
from hepdeploy.validate.physics_metric import (
    KernelRow,
    MetricKernels,
    PhysicsMetric,
    ScoresView,
    Who,
    statistical_floor,
)


def background_efficiency_at(scores: np.ndarray, is_signal: np.ndarray, signal_efficiency: float) -> float:
    """Background efficiency of the tightest cut that keeps ``signal_efficiency`` of the signal (interpolated
    along the ROC curve); NaN without both classes."""
    y = np.asarray(is_signal, dtype=bool)
    if not y.any() or y.all():
        return math.nan
    fpr, tpr = roc_curve(scores, y)
    k = int(np.searchsorted(tpr, signal_efficiency, side="left"))  # the first point reaching it
    if tpr[k] == signal_efficiency:
        return float(fpr[k])
    step = (signal_efficiency - tpr[k - 1]) / (tpr[k] - tpr[k - 1])
    return float(fpr[k - 1] + step * (fpr[k] - fpr[k - 1]))


def background_rejection_at(scores: np.ndarray, is_signal: np.ndarray, signal_efficiency: float) -> float:
    """1 / background efficiency at ``signal_efficiency``: inf when no background passes, NaN without both classes."""
    kept = background_efficiency_at(scores, is_signal, signal_efficiency)
    return math.inf if kept == 0 else 1.0 / kept


class RejectionKernel(Kernel):
    """The background rejection at a signal efficiency, per replica, from the ROC kernel's segments.

    In descending score order, signal group k (a group of tied scores holding signal) runs on the
    curve from (above_k, cs_{k-1}) to (above_k + within_k, cs_k): ``above`` is the background before
    it, ``within`` the background tied with it, ``cs`` the cumulative signal. The first group whose
    cs reaches eps_S * S holds the cut; the curve is interpolated along its diagonal.
    """

    def __init__(self, scores: np.ndarray, is_signal: np.ndarray, signal_efficiency: float,
                 rows: np.ndarray | None = None, n_rows: int | None = None) -> None:
        self.names = (f"background_rejection@{signal_efficiency:g}sig",)
        self.signal_efficiency = float(signal_efficiency)
        self.roc = RocKernel(scores, is_signal, (), rows=rows, n_rows=n_rows)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        signal = np.asarray(self.roc.signal @ weights, dtype=np.float64)  # [K, b]
        segments = np.asarray(self.roc.segments @ weights, dtype=np.float64)  # [K+1, b]
        within = (np.asarray(self.roc.within @ weights, dtype=np.float64) if self.roc.within.nnz
                  else np.zeros_like(signal))
        if len(signal) == 0:
            return np.full((1, weights.shape[1]), np.nan)
        steps = segments[:-1].copy()
        steps[1:] += within[:-1]
        above = np.cumsum(steps, axis=0)
        cumulative = np.cumsum(signal, axis=0)
        total_signal = cumulative[-1]
        total_background = segments.sum(axis=0) + within.sum(axis=0)
        wanted = self.signal_efficiency * total_signal
        k = np.minimum((cumulative < wanted).sum(axis=0), len(signal) - 1)  # the first group reaching it
        columns = np.arange(weights.shape[1])
        before = np.where(k > 0, cumulative[np.maximum(k - 1, 0), columns], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            along = np.where(within[k, columns] > 0,
                             (wanted - before) / signal[k, columns] * within[k, columns], 0.0)
            rejection = total_background / (above[k, columns] + along)
        return np.where(total_signal > 0, rejection, np.nan)[None]


def _kernels(view: ScoresView, spec: PhysicsSpec) -> MetricKernels:
    def kernel(who: Who) -> KernelRow:
        made = view.shared(("rejection", who, spec.signal_efficiency), lambda: RejectionKernel(
            view.scores(who), view.signal, spec.signal_efficiency, rows=view.subset.rows, n_rows=view.n_rows))
        return KernelRow(made, 0)
    return MetricKernels(kernel("reference"), kernel("candidate"))


def _scalar(view: ScoresView, who: Who, spec: PhysicsSpec) -> float:
    return background_rejection_at(view.scores(who), view.signal, spec.signal_efficiency)


def _floor(view: ScoresView, spec: PhysicsSpec) -> str:
    """Enough signal events, and enough background events passing the reference's cut."""
    kept = background_efficiency_at(view.reference, view.signal, spec.signal_efficiency)
    beyond = int(math.floor(view.n_background * kept + 1e-9)) if math.isfinite(kept) else 0
    return (statistical_floor(view.n_signal, spec.min_signal_events, "signal events")
            or statistical_floor(beyond, spec.min_background_beyond_cut,
                                 f"background events passing the {spec.signal_efficiency:g} signal-efficiency cut"))


BACKGROUND_REJECTION = PhysicsMetric(
    "background_rejection", "class", kernel=_kernels, scalar=_scalar,
    title=lambda view, spec: f"background_rejection@{spec.signal_efficiency:g}sig[{view.label}]",
    direction="higher", allowance="max_background_rejection_drop", judged="relative_change", floor=_floor)
