"""Physics agreement: the metrics an analysis was tuned on, as allowed degradation.

A candidate is judged against the reference model on the same events with the same
labels: ROC AUC and signal efficiency at a fixed background efficiency per class
(one-vs-rest) and argmax agreement for classifiers; bias and resolution (IQR/1.349 of the
relative residual) for regressions; efficiency, purity and AUC for edge classifiers
(interaction networks). The AUC is computed here with numpy (rank statistic with ties
averaged), so there is no scikit-learn dependency.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hepdeploy.errors import DataError
from hepdeploy.spec import PhysicsSpec

log = logging.getLogger("hepdeploy.validate.physics")

IQR_TO_SIGMA = 1.349  # IQR of a unit Gaussian: IQR/1.349 is a robust standard deviation


# ---------------------------------------------------------------------------- metrics


def roc_auc(scores: np.ndarray, is_signal: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_sig * n_bkg), ties count one half)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_signal, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    average_rank = ends - (counts - 1) / 2.0  # 1-based mean rank of each group of ties
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = average_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, is_signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background efficiency, signal efficiency) for every distinct score cut, from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_signal, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    true_pos = np.cumsum(y_sorted)[last_of_group]
    false_pos = last_of_group + 1 - true_pos
    return np.r_[0.0, false_pos / n_neg], np.r_[0.0, true_pos / n_pos]


def signal_efficiency_at(scores: np.ndarray, is_signal: np.ndarray, background_efficiency: float) -> float:
    """Signal efficiency of the cut that keeps ``background_efficiency`` of the background (interpolated)."""
    fpr, tpr = roc_curve(scores, is_signal)
    if not np.asarray(is_signal, dtype=bool).any() or np.asarray(is_signal, dtype=bool).all():
        return float("nan")
    return float(np.interp(background_efficiency, fpr, tpr))


def robust_bias_resolution(residual: np.ndarray) -> tuple[float, float]:
    """(median, IQR/1.349) of a residual distribution; NaN when empty."""
    r = np.asarray(residual, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    q25, q50, q75 = np.percentile(r, [25, 50, 75])
    return float(q50), float((q75 - q25) / IQR_TO_SIGMA)


# ---------------------------------------------------------------------------- checks


@dataclass
class PhysicsCheck:
    """One physics metric of the candidate next to the reference model's, and its allowance."""

    metric: str
    output: str
    reference: float | None
    candidate: float
    limit: float | None
    rule: str  # what passing means, in words: "drop <= 0.01", ">= 0.97", "info"
    passed: bool

    @property
    def change(self) -> float | None:
        if self.reference is None:
            return None
        return self.candidate - self.reference

    @property
    def informational(self) -> bool:
        return self.limit is None

    def summary(self) -> str:
        verdict = "info" if self.informational else "ok" if self.passed else "FAIL"
        ref = "" if self.reference is None else f" ref={self.reference:.4f}"
        change = "" if self.change is None else f" change={self.change:+.4f}"
        return f"{self.metric}: {verdict}{ref} cand={self.candidate:.4f}{change} ({self.rule})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "output": self.output, "reference": _num(self.reference),
            "candidate": _num(self.candidate), "change": _num(self.change), "limit": _num(self.limit),
            "rule": self.rule, "passed": self.passed, "informational": self.informational,
        }


@dataclass
class PhysicsResult:
    """The physics checks of one candidate (or why none ran)."""

    task: str
    output: str | None = None
    labels: str | None = None
    checks: list[PhysicsCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # For plots only (not in the JSON report): ROC curves per class, residuals.
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    residuals: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def ran(self) -> bool:
        return bool(self.checks)

    @property
    def passed(self) -> bool:
        return self.ran and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "output": self.output, "labels": self.labels, "ran": self.ran,
            "passed": self.passed if self.ran else None, "notes": list(self.notes),
            "checks": [c.to_dict() for c in self.checks],
        }


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def physics_checks(
    candidate: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    physics: Any | None = None,
) -> PhysicsResult:
    """Run the physics checks the spec's ``validation.physics`` block asks for.

    ``physics`` is a PhysicsSpec (defaults when None). Without labels, returns a result
    with no checks and a note saying only numerical checks ran.
    """
    physics = physics or PhysicsSpec()
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
    if task == "classification":
        _classification(result, cand, ref, truth, physics)
    elif task == "edge_classification":
        _edge_classification(result, cand, ref, truth, physics)
    elif task == "regression":
        _regression(result, cand, ref, truth, physics)
    else:
        result.notes.append(f"could not infer the physics task from labels {label_name!r}: only numerical checks ran")
    return result


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


def _as_probabilities(scores: np.ndarray, result: PhysicsResult, who: str) -> np.ndarray:
    """Scores as probabilities: softmax (several classes) or sigmoid (one) for logits."""
    s = scores.astype(np.float64)
    if s.ndim == 1 or s.shape[1] == 1:
        flat = s.reshape(-1)
        if flat.min(initial=0.0) < 0.0 or flat.max(initial=0.0) > 1.0:
            if who == "reference":
                result.notes.append("scores look like logits: a sigmoid was applied")
            return 1.0 / (1.0 + np.exp(-flat))
        return flat
    rows_sum_to_one = np.allclose(s.sum(axis=1), 1.0, atol=1e-3) and s.min() >= 0.0
    if not rows_sum_to_one:
        if who == "reference":
            result.notes.append("scores look like logits: a softmax was applied")
        shifted = np.exp(s - s.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return s


def _classification(result: PhysicsResult, cand: np.ndarray, ref: np.ndarray, truth: np.ndarray, spec: Any) -> None:
    if truth.ndim == 2 and truth.shape == ref.shape and truth.shape[1] > 1:
        truth = truth.argmax(axis=1)
    truth = truth.reshape(-1).astype(np.int64)
    p_ref = _as_probabilities(ref.reshape(ref.shape[0], -1), result, "reference")
    p_cand = _as_probabilities(cand.reshape(cand.shape[0], -1), result, "candidate")
    binary = p_ref.ndim == 1
    n_classes = 2 if binary else p_ref.shape[1]
    classes = [1] if binary else list(range(n_classes))
    names = list(spec.class_names)
    if truth.min() < 0 or truth.max() >= n_classes:
        raise DataError(f"labels hold classes {truth.min()}..{truth.max()} but the output has {n_classes} classes")
    bkg = spec.background_efficiency
    for c in classes:
        label = names[c] if c < len(names) else f"class {c}"
        is_signal = truth == c
        if is_signal.all() or not is_signal.any():
            result.notes.append(f"{label}: no signal or no background events, AUC not defined")
            continue
        s_ref = p_ref if binary else p_ref[:, c]
        s_cand = p_cand if binary else p_cand[:, c]
        auc_ref, auc_cand = roc_auc(s_ref, is_signal), roc_auc(s_cand, is_signal)
        result.checks.append(PhysicsCheck(f"auc[{label}]", result.output or "", auc_ref, auc_cand, spec.max_auc_drop,
                                          f"drop <= {spec.max_auc_drop:g}", auc_ref - auc_cand <= spec.max_auc_drop))
        eff_ref = signal_efficiency_at(s_ref, is_signal, bkg)
        eff_cand = signal_efficiency_at(s_cand, is_signal, bkg)
        allowed = spec.max_signal_efficiency_drop
        result.checks.append(PhysicsCheck(
            f"signal_efficiency@{bkg:g}bkg[{label}]", result.output or "", eff_ref, eff_cand, allowed,
            f"drop <= {allowed:g}", eff_ref - eff_cand <= allowed,
        ))
        fpr_ref, tpr_ref = roc_curve(s_ref, is_signal)
        fpr_cand, tpr_cand = roc_curve(s_cand, is_signal)
        result.curves[label] = {"fpr_ref": fpr_ref, "tpr_ref": tpr_ref, "fpr_cand": fpr_cand, "tpr_cand": tpr_cand}
    pick_ref = (p_ref > 0.5) if binary else p_ref.argmax(axis=1)
    pick_cand = (p_cand > 0.5) if binary else p_cand.argmax(axis=1)
    agreement = float(np.mean(pick_ref == pick_cand))
    result.checks.append(PhysicsCheck("argmax_agreement", result.output or "", None, agreement,
                                      spec.min_argmax_agreement, f">= {spec.min_argmax_agreement:g}",
                                      agreement >= spec.min_argmax_agreement))
    acc_ref, acc_cand = float(np.mean(pick_ref == truth)), float(np.mean(pick_cand == truth))
    result.checks.append(PhysicsCheck("accuracy", result.output or "", acc_ref, acc_cand, None, "info", True))


def _edge_classification(result: PhysicsResult, cand: np.ndarray, ref: np.ndarray, truth: np.ndarray,
                         spec: Any) -> None:
    y = truth.reshape(-1).astype(bool)
    s_ref = _as_probabilities(ref.reshape(-1), result, "reference")
    s_cand = _as_probabilities(cand.reshape(-1), result, "candidate")
    if y.all() or not y.any():
        result.notes.append("edge labels are all true or all false: AUC, efficiency and purity not defined")
        return
    threshold = spec.threshold
    allowed = spec.max_signal_efficiency_drop

    def eff_purity(s: np.ndarray) -> tuple[float, float]:
        chosen = s > threshold
        true_pos = float(np.sum(chosen & y))
        return true_pos / float(y.sum()), (true_pos / float(chosen.sum()) if chosen.any() else 0.0)

    auc_ref, auc_cand = roc_auc(s_ref, y), roc_auc(s_cand, y)
    (eff_ref, pur_ref), (eff_cand, pur_cand) = eff_purity(s_ref), eff_purity(s_cand)
    out = result.output or ""
    result.checks += [
        PhysicsCheck("edge_auc", out, auc_ref, auc_cand, spec.max_auc_drop, f"drop <= {spec.max_auc_drop:g}",
                     auc_ref - auc_cand <= spec.max_auc_drop),
        PhysicsCheck(f"edge_efficiency@{threshold:g}", out, eff_ref, eff_cand, allowed, f"drop <= {allowed:g}",
                     eff_ref - eff_cand <= allowed),
        PhysicsCheck(f"edge_purity@{threshold:g}", out, pur_ref, pur_cand, allowed, f"drop <= {allowed:g}",
                     pur_ref - pur_cand <= allowed),
    ]
    fpr_ref, tpr_ref = roc_curve(s_ref, y)
    fpr_cand, tpr_cand = roc_curve(s_cand, y)
    result.curves["edges"] = {"fpr_ref": fpr_ref, "tpr_ref": tpr_ref, "fpr_cand": fpr_cand, "tpr_cand": tpr_cand}


def _regression(result: PhysicsResult, cand: np.ndarray, ref: np.ndarray, truth: np.ndarray, spec: Any) -> None:
    n = truth.shape[0]
    y = truth.reshape(n, -1).astype(np.float64)
    p_ref = ref.reshape(n, -1).astype(np.float64)
    p_cand = cand.reshape(n, -1).astype(np.float64)
    if p_ref.shape != y.shape:
        raise DataError(f"targets have shape {list(truth.shape)} but output {result.output!r} has {list(ref.shape)}")
    out = result.output or ""
    for k in range(y.shape[1]):
        tag = "" if y.shape[1] == 1 else f"[{k}]"
        true = y[:, k]
        usable = np.abs(true) > np.finfo(np.float64).tiny
        if not usable.all():
            result.notes.append(f"target{tag}: {int((~usable).sum())} events with target 0 left out of relative residuals")
        rel_ref = (p_ref[usable, k] - true[usable]) / true[usable]
        rel_cand = (p_cand[usable, k] - true[usable]) / true[usable]
        rel_diff = (p_cand[usable, k] - p_ref[usable, k]) / np.abs(true[usable])
        bias_ref, res_ref = robust_bias_resolution(rel_ref)
        bias_cand, res_cand = robust_bias_resolution(rel_cand)
        bias_diff, res_diff = robust_bias_resolution(rel_diff)
        result.checks += [
            PhysicsCheck(f"bias{tag}", out, bias_ref, bias_cand, spec.max_bias_change,
                         f"|change| <= {spec.max_bias_change:g}", abs(bias_cand - bias_ref) <= spec.max_bias_change),
            PhysicsCheck(f"resolution{tag}", out, res_ref, res_cand, spec.max_resolution_change,
                         f"increase <= {spec.max_resolution_change:g}",
                         res_cand - res_ref <= spec.max_resolution_change),
            PhysicsCheck(f"bias_vs_reference{tag}", out, None, bias_diff, None, "info", True),
            PhysicsCheck(f"resolution_vs_reference{tag}", out, None, res_diff, None, "info", True),
        ]
        result.residuals[f"target{tag}"] = {"reference": rel_ref, "candidate": rel_cand}
