"""Non-inferiority: is version N+1 at least as good as version N on the same labelled events?

The validate stage's paired bootstrap judges N+1 as the "candidate" against N as the "reference"
(:func:`hepdeploy.validate.physics.physics_checks`), with the allowances of ``gate.physics``
(:meth:`hepdeploy.spec.GateSpec.physics_against`) in every bin of ``validation.physics.bins``. Its
rules decide: PASS when a change's 95 % interval lies inside its allowance, FAIL when its
simultaneous interval lies outside, UNDECIDED otherwise, with about how many events would decide it.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from hepdeploy.errors import DataError
from hepdeploy.gate.outcome import CheckResult, Finding, outcome_of
from hepdeploy.spec import GateSpec, PhysicsSpec
from hepdeploy.validate.metric_registry import physics_metric
from hepdeploy.validate.physics import PhysicsCheck, PhysicsResult, physics_checks

CHECK = "non_inferiority"
# Points of a ROC curve kept in details["curves"]: enough for a plot on a log axis, few enough for gate.json.
CURVE_POINTS = 400
# How a reason line names a metric family.
_WORDS = {"auc": "AUC", "signal_efficiency": "signal efficiency", "signal_efficiency_relative": "signal efficiency",
          "background_rejection": "background rejection", "edge_auc": "edge AUC"}
_TITLE = re.compile(r"^(?P<family>[a-z_]+)(?P<point>@[^\[]*)?(?:\[(?P<klass>.*)\])?$")


def check_non_inferiority(baseline_outputs: dict[str, np.ndarray], candidate_outputs: dict[str, np.ndarray],
                          labels: dict[str, np.ndarray], variables: dict[str, np.ndarray] | None, gate: GateSpec,
                          validation_physics: PhysicsSpec) -> CheckResult:
    """N+1 (``candidate_outputs``) against N (``baseline_outputs``), same events in the same order.

    One finding per metric x class x bin (the reported-only ones as INFO); no labels, or no metric
    that could be judged, is UNDECIDED, never PASS.
    """
    if not labels:
        return CheckResult(CHECK, "UNDECIDED", "no labels: non-inferiority cannot be judged")
    physics = gate.physics_against(validation_physics)
    result = physics_checks(candidate_outputs, baseline_outputs, labels, physics, variables or {})
    findings = [_finding(check) for check in result.checks]
    details: dict[str, Any] = {
        "task": result.task, "output": result.output, "labels": result.labels, "notes": list(result.notes),
        "curves": {name: _curve_lists(curve) for name, curve in result.curves.items()},
        "bootstrap": {**result.bootstrap, "replicas": physics.bootstrap.replicas, "seed": physics.bootstrap.seed,
                      "confidence": physics.bootstrap.confidence},
    }
    outcome = outcome_of(findings)
    if outcome == "INFO":
        why = "; ".join(result.notes) or "no metric could be judged"
        return CheckResult(CHECK, "UNDECIDED", f"non-inferiority not judged: {why}", findings, details)
    return CheckResult(CHECK, outcome, _reason(outcome, findings, result), findings, details)


def _finding(check: PhysicsCheck) -> Finding:
    """One physics check as a gate finding: N's and N+1's values, the change, its interval and allowance."""
    family, klass = metric_family(check.metric)
    allowance_key = allowance_field(family)
    judged = check.kind != "info"
    return Finding(
        name=check.name, outcome=check.outcome, message=check.summary(), metric=family, klass=klass, bin=check.bin,
        baseline=_number(check.reference), candidate=_number(check.candidate), change=_number(check.change),
        interval=check.interval if check.interval is not None and all(map(math.isfinite, check.interval)) else None,
        allowance=check.limit, relative=check.relative, improved=_improved(check),
        spec_key=f"gate.physics.{allowance_key}" if judged and allowance_key else None,
        extra={key: value for key, value in {
            "rule": check.rule, "kind": check.kind, "n_events": check.n_events, "reason": check.reason,
            "simultaneous": None if check.simultaneous is None else [_number(v) for v in check.simultaneous],
        }.items() if value not in (None, "")})


def metric_family(title: str) -> tuple[str, str | None]:
    """'signal_efficiency@0.01bkg[b]' -> ('signal_efficiency', 'b'); 'accuracy' -> ('accuracy', None)."""
    match = _TITLE.match(title)
    if match is None:
        return title, None
    return match["family"], match["klass"]


def allowance_field(family: str) -> str | None:
    """The PhysicsSpec field holding the allowance of metric ``family`` (None: reported only, or unknown)."""
    try:
        return physics_metric(family).allowance
    except DataError:  # a title the registry does not know by its prefix: reported without a spec key
        return None


def _improved(check: PhysicsCheck) -> bool:
    """The whole interval lies on the better side of zero (only for a change with a better side)."""
    if check.interval is None or check.reference is None:
        return False
    low, high = check.interval
    if check.kind == "drop":
        return low > 0
    if check.kind == "increase":
        return high < 0
    return False


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _reason(outcome: str, findings: list[Finding], result: PhysicsResult) -> str:
    """The deciding finding in one line (the worst FAIL, else an UNDECIDED that says how many events would
    decide it), or what passed."""
    judged = [f for f in findings if f.outcome != "INFO"]
    if outcome == "PASS":
        improved = sum(f.improved for f in judged)
        better = f", {improved} improved" if improved else ""
        return f"N+1 is at least as good as N: {len(judged)} metric x class x bin checks within their allowances{better}"
    deciding = [f for f in judged if f.outcome == outcome]
    if outcome == "FAIL":
        worst = max(deciding, key=_excess)
        more = f" (and {len(deciding) - 1} more)" if len(deciding) > 1 else ""
        return f"{_sentence(worst)}{more}"
    resolvable = [f for f in deciding if "would decide" in f.extra.get("reason", "")]
    first = sorted(resolvable or deciding, key=lambda f: f.bin is not None)[0]
    more = f" ({len(deciding)} undecided)" if len(deciding) > 1 else ""
    return f"{_sentence(first)}; {first.extra.get('reason', 'undecided')}{more}"


def _excess(finding: Finding) -> float:
    """How far a change lies beyond its allowance, in allowances."""
    if finding.change is None or not finding.allowance:
        return math.inf
    return abs(finding.change) / finding.allowance


def _sentence(finding: Finding) -> str:
    """'AUC of class b drops by 0.031 [0.024, 0.038] in jet_pt [530, 600], allowance 0.002'."""
    what = _WORDS.get(finding.metric or "", finding.metric or finding.name)
    if finding.klass is not None:
        what += f" of class {finding.klass}"
    where = f" in {finding.bin}" if finding.bin else " on all events"
    if finding.change is None:
        return f"{what}{where}: not defined"
    unit = " relative" if finding.relative else ""
    verb = "drops" if finding.change < 0 else "rises" if finding.change > 0 else "changes"
    amount = f"{abs(finding.change):.3g}"
    if finding.interval is not None:
        sign = -1.0 if finding.change < 0 else 1.0
        low, high = sorted((sign * finding.interval[0], sign * finding.interval[1]))
        amount += f" [{low:.3g}, {high:.3g}]"
    allowance = "" if finding.allowance is None else f", allowance {finding.allowance:g}{unit}"
    return f"{what} {verb} by {amount}{unit}{where}{allowance}"


def _curve_lists(curve: dict[str, np.ndarray]) -> dict[str, list[float | None]]:
    """A ROC curve (and its bands) as JSON-able lists; curves longer than :data:`CURVE_POINTS` thinned
    evenly in the fraction of events and in log(background efficiency)."""
    lists: dict[str, list[float | None]] = {}
    for who in ("ref", "cand"):
        fpr, tpr = np.asarray(curve[f"fpr_{who}"]), np.asarray(curve[f"tpr_{who}"])
        keep = _thinned(fpr)
        lists[f"fpr_{who}"], lists[f"tpr_{who}"] = _list(fpr[keep]), _list(tpr[keep])
    for key, values in curve.items():
        if key.startswith("band_"):
            lists[key] = _list(np.asarray(values))
    return lists


def _thinned(fpr: np.ndarray) -> np.ndarray:
    if fpr.size <= CURVE_POINTS:
        return np.arange(fpr.size)
    even = np.linspace(0, fpr.size - 1, CURVE_POINTS // 2).astype(np.int64)
    logs = np.searchsorted(fpr, np.logspace(-4, 0, CURVE_POINTS // 2)).clip(0, fpr.size - 1)
    return np.unique(np.concatenate([even, logs]))


def _list(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.astype(np.float64)]
