"""Physics agreement: the metrics an analysis was tuned on, as allowed degradation, with intervals.

A candidate is judged against the reference model on the same events with the same labels:
ROC AUC and signal efficiency at a fixed background efficiency per class (one-vs-rest),
argmax agreement and, when the spec asks for it, background rejection at a fixed signal
efficiency for classifiers; bias and resolution (IQR/1.349 of the relative residual)
for regressions; efficiency, purity and AUC for edge classifiers (interaction networks). Each
metric is computed inclusively and in every bin of the spec's binning variables.

Every change carries an interval from a paired bootstrap (:mod:`hepdeploy.validate.bootstrap`:
the events are resampled and both models are judged on the same resample). A check is

- PASS when its whole 95 % interval of degradation lies inside the allowance,
- FAIL when its *simultaneous* interval lies wholly outside,
- UNDECIDED otherwise (with about how many events would decide it), or when it rests on too
  few events to be judged at all ("not enough events (have N, need M)").

The many comparisons (classes x metrics x bins) are controlled where they matter. "The
candidate fails" is a claim that *some* metric is out: it is made only when a simultaneous
interval excludes the allowance, and the simultaneous intervals of all checks hold together
with the stated confidence (a max-statistic bootstrap: the critical value is the 95th
percentile over replicas of the largest standardised deviation of any judged metric), so a
candidate inside every allowance is called FAIL in at most 5 % of reference sets. "The
candidate passes" is a claim that *every* metric is in, which needs each one's own interval
inside (an intersection-union test needs no correction): a candidate outside some allowance
is called PASS in at most 2.5 % of reference sets. The candidate's physics verdict is FAIL if
any check fails, else UNDECIDED if any is undecided, else PASS; so a redrawn reference set
moves a verdict from or to UNDECIDED, and from PASS to FAIL only with these small probabilities.
The metrics themselves (kernel, scalar definition, direction, floor, allowance) are entries of
:mod:`hepdeploy.validate.metric_registry`; this module builds the views they read, per task, and
judges what they compute.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hepdeploy.errors import DataError
from hepdeploy.metrics import relative_residual, roc_curve
from hepdeploy.spec import PhysicsSpec
from hepdeploy.validate.bootstrap import Kernel, Resampling, RocKernel, evaluate, resample
from hepdeploy.validate.metric_registry import metrics_for
from hepdeploy.validate.physics_metric import (
    DecisionsView,
    Kind,
    PhysicsMetric,
    ScoresView,
    Subset,
    TargetView,
    View,
    ViewKind,
)

log = logging.getLogger(__name__)

Outcome = Literal["PASS", "FAIL", "UNDECIDED", "INFO"]
# Where the ROC band is drawn (background efficiencies) and from how many replicas.
ROC_BAND_GRID = np.logspace(-3, 0, 31)
ROC_BAND_REPLICAS = 100

# ---------------------------------------------------------------------------- checks


@dataclass
class PhysicsCheck:
    """One physics metric of the candidate next to the reference model's, its interval and outcome.

    ``interval`` is the 95 % interval of the change (candidate - reference, or candidate /
    reference - 1 when ``relative``) for metrics judged against the reference, and of the
    candidate's value for ``level`` metrics; ``half_width``
    (its half width) is the smallest change this reference set can resolve for this metric;
    ``simultaneous`` is the wider interval that holds together with every other check's, the
    one a FAIL rests on.
    """

    metric: str
    output: str
    reference: float | None
    candidate: float
    limit: float | None
    rule: str  # what passing means, in words: "drop <= 0.01", ">= 0.95", "info"
    kind: Kind = "info"
    outcome: Outcome = "INFO"
    bin: str | None = None  # "jet_pt [30, 100)"; None: all events
    interval: tuple[float, float] | None = None
    half_width: float | None = None
    simultaneous: tuple[float, float] | None = None
    n_events: int = 0
    reason: str = ""
    relative: bool = False  # the change is judged relative to the reference's value

    @property
    def change(self) -> float | None:
        if self.reference is None:
            return None
        if self.relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                return float(np.float64(self.candidate) / np.float64(self.reference) - 1.0)
        return self.candidate - self.reference

    @property
    def passed(self) -> bool:
        return self.outcome in ("PASS", "INFO")

    @property
    def informational(self) -> bool:
        return self.kind == "info"

    @property
    def name(self) -> str:
        return self.metric if self.bin is None else f"{self.metric} in {self.bin}"

    def value_text(self) -> str:
        """'0.9612 -> 0.9598 (-0.0014 [-0.0031, +0.0003])': the values, the change and its interval."""
        if self.reference is None:
            text = f"{self.candidate:.4f}"
            if self.interval is not None:
                text += f" [{self.interval[0]:.4f}, {self.interval[1]:.4f}]"
            return text
        text = f"{self.reference:.4f} -> {self.candidate:.4f} ({self.change:+.4f}"
        if self.interval is not None:
            text += f" [{self.interval[0]:+.4f}, {self.interval[1]:+.4f}]"
        return text + (" relative)" if self.relative else ")")

    def summary(self) -> str:
        reason = f"; {self.reason}" if self.reason else ""
        return f"{self.name}: {self.outcome} {self.value_text()} ({self.rule}){reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "bin": self.bin, "output": self.output, "reference": _num(self.reference),
            "candidate": _num(self.candidate), "change": _num(self.change), "limit": _num(self.limit),
            "rule": self.rule, "kind": self.kind, "outcome": self.outcome, "passed": self.passed,
            "informational": self.informational,
            "interval": None if self.interval is None else [_num(self.interval[0]), _num(self.interval[1])],
            "half_width": _num(self.half_width),
            "simultaneous": None if self.simultaneous is None else [_num(v) for v in self.simultaneous],
            "n_events": self.n_events, "reason": self.reason, "relative": self.relative,
        }


@dataclass
class PhysicsResult:
    """The physics checks of one candidate (or why none ran)."""

    task: str
    output: str | None = None
    labels: str | None = None
    checks: list[PhysicsCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    # For plots only (not in the JSON report): ROC curves (and bands) per class, residuals.
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    residuals: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def ran(self) -> bool:
        return bool(self.checks)

    @property
    def outcome(self) -> Outcome:
        """FAIL if a check fails, else UNDECIDED if one is undecided, else PASS (INFO when nothing ran)."""
        outcomes = {c.outcome for c in self.checks}
        if not self.ran:
            return "INFO"
        if "FAIL" in outcomes:
            return "FAIL"
        return "UNDECIDED" if "UNDECIDED" in outcomes else "PASS"

    @property
    def passed(self) -> bool:
        return self.ran and self.outcome == "PASS"

    def deciding(self) -> list[PhysicsCheck]:
        """The checks that make the verdict what it is (the failing ones, else the undecided ones)."""
        return [c for c in self.checks if c.outcome == self.outcome and self.outcome in ("FAIL", "UNDECIDED")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "output": self.output, "labels": self.labels, "ran": self.ran,
            "outcome": self.outcome if self.ran else None, "passed": self.passed if self.ran else None,
            "bootstrap": self.bootstrap, "notes": list(self.notes), "checks": [c.to_dict() for c in self.checks],
        }


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


# ---------------------------------------------------------------------------- planning


@dataclass
class _Planned:
    """A check before it is judged: its metric on each model as (kernel, row) pairs, and its floor."""

    check: PhysicsCheck
    reference: tuple[int, int] | None  # (kernel index, row) of the reference model's value
    candidate: tuple[int, int]
    floor: str = ""  # "not enough events (have N, need M)" when the metric rests on too few events


class _Plan:
    """The checks of one candidate and the kernels that compute them, evaluated in one bootstrap pass."""

    def __init__(self, output: str, n_rows: int, spec: PhysicsSpec) -> None:
        self.output = output
        self.n_rows = n_rows
        self.spec = spec
        self.kernels: list[Kernel] = []
        self._index: dict[int, int] = {}  # id(kernel) -> its index: metrics sharing a kernel evaluate it once
        self.planned: list[_Planned] = []

    def _kernel(self, kernel: Kernel) -> int:
        if id(kernel) not in self._index:
            self._index[id(kernel)] = len(self.kernels)
            self.kernels.append(kernel)
        return self._index[id(kernel)]

    def add_metrics(self, view_kind: ViewKind, view: View) -> None:
        """Plan every registered metric of ``view_kind`` that the spec asks for on ``view``."""
        for metric in metrics_for(view_kind):
            if metric.planned(self.spec):
                self.add(metric, view)

    def add(self, metric: PhysicsMetric, view: View) -> None:
        spec = self.spec
        kernels = metric.kernel(view, spec)
        reference = None if kernels.reference is None else (self._kernel(kernels.reference.kernel),
                                                            kernels.reference.row)
        candidate = (self._kernel(kernels.candidate.kernel), kernels.candidate.row)
        check = PhysicsCheck(metric.title(view, spec), self.output, None, math.nan, metric.limit(spec),
                             metric.rule(spec), kind=metric.kind, bin=view.subset.label,
                             n_events=view.subset.n_events, relative=metric.judged == "relative_change")
        self.planned.append(_Planned(check, reference, candidate, metric.floor(view, spec)))


def physics_checks(
    candidate: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    physics: Any | None = None,
    variables: dict[str, np.ndarray] | None = None,
) -> PhysicsResult:
    """Run the physics checks the spec's ``validation.physics`` block asks for, with intervals.

    ``physics`` is a PhysicsSpec (defaults when None). ``variables`` holds the per-event arrays
    the bins name, and ``event`` (the event of every row, for graph networks). Without labels,
    returns a result with no checks and a note saying only numerical checks ran.
    """
    physics = physics or PhysicsSpec()
    variables = variables or {}
    if physics.task == "none":
        return PhysicsResult("none", notes=["physics checks are off (validation.physics.task: none)"])
    if not labels:
        return PhysicsResult(physics.task, notes=["no labels or targets: only numerical checks ran"])
    label_name, truth = next(iter(labels.items()))
    if len(labels) > 1:
        log.info("several label arrays (%s); physics uses %r", ", ".join(labels), label_name)
    output = physics.output or _first_output_matching(reference, truth)
    if output not in reference or output not in candidate:
        raise DataError(f"validation.physics.output {output!r} is not an output (outputs: {', '.join(reference)})")
    ref, cand = np.asarray(reference[output]), np.asarray(candidate[output])
    if ref.shape[0] != truth.shape[0]:
        raise DataError(f"labels {label_name!r} have {truth.shape[0]} rows but output {output!r} has {ref.shape[0]}")
    task = physics.task if physics.task != "auto" else infer_task(ref, truth)
    result = PhysicsResult(task, output=output, labels=label_name)
    events = _events_of(variables, truth.shape[0])
    subsets = _subsets(physics, variables, events, truth.shape[0], result)
    plan = _Plan(output, truth.shape[0], physics)
    if task == "classification":
        _classification(plan, result, cand, ref, truth, subsets)
    elif task == "edge_classification":
        _edge_classification(plan, result, cand, ref, truth, subsets)
    elif task == "regression":
        _regression(plan, result, cand, ref, truth, subsets)
    else:
        result.notes.append(f"could not infer the physics task from labels {label_name!r}: only numerical checks ran")
        return result
    resampling = None
    settings = physics.bootstrap
    if settings.replicas > 0:
        n_events = int(events.max()) + 1 if events is not None else truth.shape[0]
        resampling = resample(n_events, settings.replicas, settings.seed, events)
    values = evaluate(plan.kernels, truth.shape[0], resampling)
    _judge(plan, values, settings.confidence, result)
    if resampling is not None:
        _roc_bands(result, resampling)
    for curve in result.curves.values():  # the scores were kept for the bands only
        for key in ("_scores_ref", "_scores_cand", "_signal"):
            curve.pop(key, None)
    return result


def _events_of(variables: dict[str, np.ndarray], n_rows: int) -> np.ndarray | None:
    """The event index of every row (``variables['event']``, renumbered 0..E-1), or None: each row is an event."""
    if "event" not in variables:
        return None
    event = np.asarray(variables["event"]).reshape(-1)
    if event.shape[0] != n_rows:
        raise DataError(f"variable 'event' has {event.shape[0]} rows but the labels have {n_rows}")
    return np.unique(event, return_inverse=True)[1].astype(np.int64)


def _subsets(physics: Any, variables: dict[str, np.ndarray], events: np.ndarray | None, n_rows: int,
             result: PhysicsResult) -> list[Subset]:
    """All events, then every bin of every binning variable."""
    def count(rows: np.ndarray | None) -> int:
        if events is None:
            return n_rows if rows is None else len(rows)
        return int(np.unique(events if rows is None else events[rows]).size)

    subsets = [Subset(None, None, count(None))]
    for name, edges in physics.bins.items():
        if name not in variables:
            raise DataError(f"validation.physics.bins names variable {name!r}, which the reference set does not hold "
                            f"(it has {', '.join(sorted(variables)) or 'none'}; add it to data.variables)")
        value = np.asarray(variables[name], dtype=np.float64).reshape(-1)
        if value.shape[0] != n_rows:
            raise DataError(f"variable {name!r} has {value.shape[0]} rows but the labels have {n_rows}")
        outside = int(((value < edges[0]) | (value > edges[-1])).sum())
        if outside:
            result.notes.append(f"{outside} events lie outside the bins of {name} [{edges[0]:g}, {edges[-1]:g}]")
        for k, (low, high) in enumerate(zip(edges, edges[1:], strict=False)):
            last = k == len(edges) - 2
            inside = (value >= low) & ((value <= high) if last else (value < high))
            rows = np.nonzero(inside)[0]
            subsets.append(Subset(f"{name} [{low:g}, {high:g}{']' if last else ')'}", rows, count(rows)))
    return subsets


def _first_output_matching(outputs: dict[str, np.ndarray], truth: np.ndarray) -> str:
    for name, value in outputs.items():
        if value.ndim and value.shape[0] == truth.shape[0]:
            return name
    return next(iter(outputs))


def infer_task(prediction: np.ndarray, truth: np.ndarray) -> str:
    """classification | edge_classification | regression | unknown, from the labels' values and shapes."""
    integral = truth.dtype.kind in "biu" or (truth.dtype.kind == "f" and np.all(np.mod(truth, 1) == 0))
    binary = integral and np.isin(np.unique(truth), [0, 1]).all()
    per_row = prediction.reshape(prediction.shape[0], -1).shape[1] if prediction.ndim else 1
    if binary and (truth.shape == prediction.shape or (per_row == 1 and truth.size == prediction.shape[0])):
        return "classification" if per_row == 1 else "edge_classification"
    if integral and truth.ndim == 1 and per_row > 1:
        return "classification"
    if truth.ndim == 2 and truth.shape == prediction.shape and integral and np.all(truth.sum(axis=1) == 1):
        return "classification"  # one-hot labels
    if truth.dtype.kind == "f" and truth.size == prediction.size:
        return "regression"
    return "unknown"


def _as_probabilities(reference: np.ndarray, candidate: np.ndarray, result: PhysicsResult) -> tuple[np.ndarray, np.ndarray]:
    """Both models' scores as probabilities, transformed alike: a softmax (several classes) or a sigmoid
    (one) when the reference's scores are logits, else as they are.

    The reference decides for both: an INT8 softmax whose rows miss 1 by more than 1e-3 must not be
    mistaken for logits while the reference's are not.
    """
    s = reference.astype(np.float64)
    c = candidate.astype(np.float64)
    if s.ndim == 1 or s.shape[1] == 1:
        s, c = s.reshape(-1), c.reshape(-1)
        if s.min(initial=0.0) < 0.0 or s.max(initial=0.0) > 1.0:
            result.notes.append("scores look like logits: a sigmoid was applied")
            return 1.0 / (1.0 + np.exp(-s)), 1.0 / (1.0 + np.exp(-c))
        return s, c
    if np.allclose(s.sum(axis=1), 1.0, atol=1e-3) and s.min() >= 0.0:
        return s, c
    result.notes.append("scores look like logits: a softmax was applied")

    def softmax(x: np.ndarray) -> np.ndarray:
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    return softmax(s), softmax(c)


def _roc_curves(s_ref: np.ndarray, s_cand: np.ndarray, is_signal: np.ndarray) -> dict[str, np.ndarray]:
    fpr_ref, tpr_ref = roc_curve(s_ref, is_signal)
    fpr_cand, tpr_cand = roc_curve(s_cand, is_signal)
    return {"fpr_ref": fpr_ref, "tpr_ref": tpr_ref, "fpr_cand": fpr_cand, "tpr_cand": tpr_cand,
            "_scores_ref": s_ref, "_scores_cand": s_cand, "_signal": is_signal}


def _classification(plan: _Plan, result: PhysicsResult, cand: np.ndarray, ref: np.ndarray, truth: np.ndarray,
                    subsets: list[Subset]) -> None:
    """Per subset: every class against the rest ("class" metrics), then the decisions ("decisions" metrics)."""
    if truth.ndim == 2 and truth.shape == ref.shape and truth.shape[1] > 1:
        truth = truth.argmax(axis=1)
    truth = truth.reshape(-1).astype(np.int64)
    p_ref, p_cand = _as_probabilities(ref.reshape(ref.shape[0], -1), cand.reshape(cand.shape[0], -1), result)
    binary = p_ref.ndim == 1
    n_classes = 2 if binary else p_ref.shape[1]
    classes = [1] if binary else list(range(n_classes))
    names = list(plan.spec.class_names)
    if truth.min() < 0 or truth.max() >= n_classes:
        raise DataError(f"labels hold classes {truth.min()}..{truth.max()} but the output has {n_classes} classes")
    pick_ref = (p_ref > 0.5) if binary else p_ref.argmax(axis=1)
    pick_cand = (p_cand > 0.5) if binary else p_cand.argmax(axis=1)
    for subset in subsets:
        y = subset.take(truth)
        for c in classes:
            label = names[c] if c < len(names) else f"class {c}"
            is_signal = y == c
            if is_signal.all() or not is_signal.any():
                where = "" if subset.label is None else f" in {subset.label}"
                result.notes.append(f"{label}: no signal or no background events{where}, AUC not defined")
                continue
            view = ScoresView(subset=subset, n_rows=plan.n_rows, label=label, signal=is_signal,
                              reference=subset.take(p_ref if binary else p_ref[:, c]),
                              candidate=subset.take(p_cand if binary else p_cand[:, c]))
            plan.add_metrics("class", view)
            if subset.label is None:
                result.curves[label] = _roc_curves(view.reference, view.candidate, is_signal)
        plan.add_metrics("decisions", DecisionsView(
            subset=subset, n_rows=plan.n_rows, agree=subset.take(pick_ref == pick_cand),
            correct_reference=subset.take(pick_ref == truth), correct_candidate=subset.take(pick_cand == truth)))


def _edge_classification(plan: _Plan, result: PhysicsResult, cand: np.ndarray, ref: np.ndarray, truth: np.ndarray,
                         subsets: list[Subset]) -> None:
    """Per subset: the true edges against the false ones ("edges" metrics)."""
    y_all = truth.reshape(-1).astype(bool)
    s_ref_all, s_cand_all = _as_probabilities(ref.reshape(-1), cand.reshape(-1), result)
    for subset in subsets:
        view = ScoresView(subset=subset, n_rows=plan.n_rows, label="edges", signal=subset.take(y_all),
                          reference=subset.take(s_ref_all), candidate=subset.take(s_cand_all))
        if view.signal.all() or not view.signal.any():
            result.notes.append("edge labels are all true or all false"
                                + ("" if subset.label is None else f" in {subset.label}")
                                + ": AUC, efficiency and purity not defined")
            continue
        plan.add_metrics("edges", view)
        if subset.label is None:
            result.curves["edges"] = _roc_curves(view.reference, view.candidate, view.signal)


def _regression(plan: _Plan, result: PhysicsResult, cand: np.ndarray, ref: np.ndarray, truth: np.ndarray,
                subsets: list[Subset]) -> None:
    """Per target and subset: the relative residuals where the target is not 0 ("target" metrics)."""
    n = truth.shape[0]
    y = truth.reshape(n, -1).astype(np.float64)
    p_ref = ref.reshape(n, -1).astype(np.float64)
    p_cand = cand.reshape(n, -1).astype(np.float64)
    if p_ref.shape != y.shape:
        raise DataError(f"targets have shape {list(truth.shape)} but output {result.output!r} has {list(ref.shape)}")
    for k in range(y.shape[1]):
        tag = "" if y.shape[1] == 1 else f"[{k}]"
        true = y[:, k]
        rel_ref, usable = relative_residual(p_ref[:, k], true)
        rel_cand, _ = relative_residual(p_cand[:, k], true)
        if not usable.all():
            result.notes.append(f"target{tag}: {int((~usable).sum())} events with target 0 left out of relative residuals")
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_diff = (p_cand[:, k] - p_ref[:, k]) / np.abs(true)
        for subset in subsets:
            rows = np.nonzero(usable)[0] if subset.rows is None else subset.rows[usable[subset.rows]]
            plan.add_metrics("target", TargetView(
                subset=Subset(subset.label, rows, len(rows)), n_rows=plan.n_rows, tag=tag, reference=rel_ref[rows],
                candidate=rel_cand[rows], versus_reference=rel_diff[rows]))
        result.residuals[f"target{tag}"] = {"reference": rel_ref[usable], "candidate": rel_cand[usable]}


# ---------------------------------------------------------------------------- judging


def _judge(plan: _Plan, values: list[tuple[np.ndarray, np.ndarray | None]], confidence: float,
           result: PhysicsResult) -> None:
    """Intervals, outcomes and reasons of every planned check (see the module docstring for the rule)."""
    def value_of(where: tuple[int, int] | None) -> tuple[float | None, np.ndarray | None]:
        if where is None:
            return None, None
        point, replicas = values[where[0]]
        return float(point[where[1]]), (None if replicas is None else replicas[where[1]])

    estimates, spreads, deviations = [], [], []
    for planned in plan.planned:
        check = planned.check
        ref_point, ref_reps = value_of(planned.reference)
        cand_point, cand_reps = value_of(planned.candidate)
        check.reference, check.candidate = ref_point, float(cand_point)  # type: ignore[arg-type]
        estimate = float(_judged(check, ref_point, check.candidate))
        reps = None if cand_reps is None else _judged(check, ref_reps, cand_reps)
        spread = float(np.nanstd(reps, ddof=1)) if reps is not None and np.isfinite(reps).sum() > 1 else math.nan
        estimates.append(estimate)
        spreads.append(spread)
        # Standardised deviations of the replicas: their quantile is this check's critical value.
        deviations.append(np.abs(reps - estimate) / spread if spread > 0 else None)
    judged = [k for k, planned in enumerate(plan.planned)
              if planned.check.kind != "info" and not planned.floor and deviations[k] is not None]
    simultaneous = _NORMAL_95
    if judged:
        with warnings.catch_warnings():  # a replica where every metric is undefined is simply left out
            warnings.simplefilter("ignore", RuntimeWarning)
            simultaneous = _quantile(np.nanmax(np.stack([deviations[k] for k in judged]), axis=0), confidence)
    for k, planned in enumerate(plan.planned):
        check, estimate, spread = planned.check, estimates[k], spreads[k]
        if math.isfinite(spread):
            own = _quantile(deviations[k], confidence) if deviations[k] is not None else 0.0
            check.half_width = own * spread
            check.interval = (estimate - check.half_width, estimate + check.half_width)
            wide = max(simultaneous, own) * spread
            check.simultaneous = (estimate - wide, estimate + wide)
        if check.kind == "info":
            continue
        if planned.floor:
            check.outcome, check.reason = "UNDECIDED", planned.floor
        elif not math.isfinite(estimate):
            check.outcome, check.reason = "UNDECIDED", "the metric is not defined on these events"
        else:
            check.outcome, check.reason = _decide(check, estimate)
    result.checks = [planned.check for planned in plan.planned]
    if values and values[0][1] is not None:
        result.bootstrap = {"replicas": int(values[0][1].shape[1]), "confidence": confidence,
                            "simultaneous_critical_value": round(float(simultaneous), 4),
                            "judged_checks": len(judged)}


_NORMAL_95 = 1.959963984540054


def _judged(check: PhysicsCheck, reference: Any, candidate: Any) -> Any:
    """The judged quantity (of the sample, or per replica): the change from the reference (absolute or
    relative) for metrics judged against it, else the candidate's value. Not finite: NaN (undefined)."""
    if reference is None:
        change = candidate
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            change = (np.divide(candidate, reference) - 1.0) if check.relative else np.subtract(candidate, reference)
    return np.where(np.isfinite(change), change, np.nan)


def _quantile(values: np.ndarray, q: float) -> float:
    finite = values[np.isfinite(values)]
    return float(np.quantile(finite, q)) if finite.size else math.nan


def _decide(check: PhysicsCheck, estimate: float) -> tuple[Outcome, str]:
    """PASS when the 95 % interval is inside the allowance, FAIL when the simultaneous one is outside.

    Without a bootstrap (no intervals) the estimate alone decides, as a plain comparison.
    """
    low, high = check.interval if check.interval is not None else (estimate, estimate)
    wide_low, wide_high = check.simultaneous if check.simultaneous is not None else (estimate, estimate)
    limit = float(check.limit)  # type: ignore[arg-type]
    if check.kind == "drop":  # the change may fall to -limit
        passed, failed, boundary, inside = low >= -limit, wide_high < -limit, -limit, estimate >= -limit
    elif check.kind == "increase":
        passed, failed, boundary, inside = high <= limit, wide_low > limit, limit, estimate <= limit
    elif check.kind == "level":
        passed, failed, boundary, inside = low >= limit, wide_high < limit, limit, estimate >= limit
    else:  # abs: the change must stay within +-limit
        passed, failed = low >= -limit and high <= limit, wide_low > limit or wide_high < -limit
        boundary, inside = (limit if estimate >= 0 else -limit), abs(estimate) <= limit
    if passed:
        return "PASS", ""
    if failed:
        return "FAIL", ""
    # Towards PASS the 95 % interval must shrink inside; towards FAIL the simultaneous one outside.
    half = check.half_width if inside else (wide_high - wide_low) / 2
    distance = abs(estimate - boundary)
    if distance == 0 or half is None:
        return "UNDECIDED", "the change sits on the allowance"
    needed = math.ceil(check.n_events * (half / distance) ** 2)
    which = "" if inside else f" (the simultaneous interval [{wide_low:+.4f}, {wide_high:+.4f}] decides a FAIL)"
    return "UNDECIDED", (f"the interval straddles the allowance{which}; about {needed:,} events would decide it "
                         f"(have {check.n_events:,})")


def _roc_bands(result: PhysicsResult, resampling: Resampling) -> None:
    """The ROC curves' pointwise 95 % bootstrap bands (first replicas only: they are for plots)."""
    few = resampling.first(ROC_BAND_REPLICAS)
    for curve in result.curves.values():
        signal = curve["_signal"]
        kernels = [RocKernel(curve[f"_scores_{who}"], signal, tuple(ROC_BAND_GRID)) for who in ("ref", "cand")]
        for who, (_, replicas) in zip(("ref", "cand"), evaluate(kernels, len(signal), few), strict=True):
            tpr = replicas[1:]  # [grid, replicas]
            curve["band_fpr"] = ROC_BAND_GRID
            curve[f"band_{who}_low"] = np.nanpercentile(tpr, 2.5, axis=1)
            curve[f"band_{who}_high"] = np.nanpercentile(tpr, 97.5, axis=1)
