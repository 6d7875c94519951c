"""The gate's change map: what changed between version N's and N+1's answers on the same events.

Reported, never judged (INFO): the fraction of events whose top class flips (Wilson 95 % interval),
per class the Wasserstein-1 distance between N's and N+1's score distributions with both histograms,
the events whose score vector moved most (L1), and a class permutation when N+1's score columns follow
N's in another order: the silent change a swapped class order makes while every tensor stays the same.
Scores may be logits or probabilities: the top class and rank correlations do not care which.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hepdeploy.errors import DataError
from hepdeploy.gate.outcome import CheckResult

log = logging.getLogger("hepdeploy.gate.change_map")

CHECK = "change_map"
DISTANCE_NAME = "wasserstein_1"
_BINS = 30
_Z95 = 1.959963984540054
# A permutation is reported when every moved class correlates with N's class it is mapped to at least
# this well, and the moved classes do _MARGIN better on average than with N's class of their own index.
_MIN_CORRELATION = 0.5
_MARGIN = 0.1
_CORRELATION_EVENTS = 100_000  # rank correlations on at most this many events (drawn with the seed)
_BRUTE_FORCE_CLASSES = 8  # up to 8! assignments tried exhaustively; more go to the Hungarian method


def change_map(baseline_outputs: Mapping[str, np.ndarray], candidate_outputs: Mapping[str, np.ndarray], *,
               output: str | None = None, class_names: Sequence[str] = (), top: int = 10, seed: int = 0) -> CheckResult:
    """Compare N's and N+1's ``output`` (default: the first with several classes, else the first shared)
    on the same events, in the same order. A [events] or [events, 1] output is a regression (or a single
    score): distances and largest changes only."""
    name = output or _default_output(baseline_outputs, candidate_outputs)
    if name is None or name not in baseline_outputs or name not in candidate_outputs:
        missing = name or "any output"
        return CheckResult(CHECK, "INFO", f"not compared: N and N+1 do not both have {missing}",
                           details={"output": name})
    base, cand = _columns(baseline_outputs[name], "N", name), _columns(candidate_outputs[name], "N+1", name)
    if base.shape != cand.shape:
        raise DataError(f"change map of {name!r}: N gives {list(base.shape)} and N+1 {list(cand.shape)} on the same "
                        "events (shapes must match)")
    classes = _class_names(class_names, base.shape[1])
    classifier = base.shape[1] > 1
    details: dict[str, Any] = {"output": name, "events": int(base.shape[0]), "classes": classes,
                               "task": "classification" if classifier else "regression",
                               "flip_fraction": None, "flip_interval": None,
                               "per_class": {c: _distribution_change(base[:, k], cand[:, k])
                                             for k, c in enumerate(classes)},
                               "largest_changes": _largest_changes(base, cand, classes, top), "permutation": None}
    if classifier:
        flips = int(np.count_nonzero(base.argmax(axis=1) != cand.argmax(axis=1)))
        low, high = wilson_interval(flips, base.shape[0])
        details.update(flip_fraction=flips / max(base.shape[0], 1), flip_interval=[low, high], flips=flips,
                       permutation=detect_permutation(base, cand, classes, seed=seed))
    return CheckResult(CHECK, "INFO", _reason(details), details=details)


def _default_output(baseline: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> str | None:
    shared = [n for n in baseline if n in candidate]
    several = [n for n in shared if np.ndim(baseline[n]) == 2 and np.shape(baseline[n])[1] > 1]
    return (several or shared or [None])[0]


def _columns(array: np.ndarray, side: str, name: str) -> np.ndarray:
    """[events, classes] float64; [events] becomes one column."""
    data = np.asarray(array)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise DataError(f"change map of {name!r}: {side}'s output has shape {list(data.shape)}; "
                        "only [events] and [events, classes] are mapped")
    return data.astype(np.float64, copy=False)


def _class_names(names: Sequence[str], count: int) -> list[str]:
    """The given names when there is one per column; else the column indices, as strings (JSON keys)."""
    if len(names) == count:
        return [str(n) for n in names]
    if names:
        log.warning("change map: %d class names for %d score columns; columns are named by index", len(names), count)
    return [str(k) for k in range(count)]


def wilson_interval(successes: int, trials: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial fraction (sensible at 0 and at 1, unlike the normal one)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # At 0 (or all) successes the bound is exactly 0 (1); the formula leaves rounding residue there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def wasserstein_1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance of two samples of the same size (the mean gap of their sorted values)."""
    return float(np.mean(np.abs(np.sort(a) - np.sort(b)))) if a.size else 0.0


def _distribution_change(base: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    """One class's score distributions: the distance and both histograms on common edges."""
    finite = np.isfinite(base) & np.isfinite(cand)
    base, cand = base[finite], cand[finite]
    both = np.concatenate([base, cand])
    edges = np.histogram_bin_edges(both, bins=_BINS) if both.size else np.linspace(0.0, 1.0, _BINS + 1)
    return {"distance": wasserstein_1(base, cand), "distance_name": DISTANCE_NAME, "edges": edges.tolist(),
            "baseline_hist": np.histogram(base, edges)[0].tolist(),
            "candidate_hist": np.histogram(cand, edges)[0].tolist(),
            "non_finite_events": int(np.count_nonzero(~finite))}


def _largest_changes(base: np.ndarray, cand: np.ndarray, classes: list[str], top: int) -> list[dict[str, Any]]:
    """The ``top`` events whose score vector moved most (L1), with each side's top class (classifiers) or
    value (one column)."""
    change = np.nan_to_num(np.abs(cand - base).sum(axis=1), nan=np.inf)
    order = np.argsort(-change, kind="stable")[:max(top, 0)]
    rows = []
    for event in order:
        row: dict[str, Any] = {"event": int(event), "change": float(change[event])}
        if base.shape[1] > 1:
            row.update(baseline_top=classes[int(base[event].argmax())],
                       candidate_top=classes[int(cand[event].argmax())])
        else:
            row.update(baseline=float(base[event, 0]), candidate=float(cand[event, 0]))
        rows.append(row)
    return rows


def _rank_columns(data: np.ndarray) -> np.ndarray:
    """Each column replaced by its ranks, centred and scaled to unit norm (Spearman by dot products)."""
    ranks = data.argsort(axis=0, kind="stable").argsort(axis=0, kind="stable").astype(np.float64)
    ranks -= ranks.mean(axis=0)
    norms = np.linalg.norm(ranks, axis=0)
    return np.divide(ranks, norms, out=np.zeros_like(ranks), where=norms > 0)


def class_correlations(base: np.ndarray, cand: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """[candidate class, N class] Spearman correlation of the score columns over the events."""
    finite = np.isfinite(base).all(axis=1) & np.isfinite(cand).all(axis=1)
    base, cand = base[finite], cand[finite]
    if base.shape[0] > _CORRELATION_EVENTS:
        rows = np.random.default_rng(seed).choice(base.shape[0], _CORRELATION_EVENTS, replace=False)
        base, cand = base[rows], cand[rows]
    return _rank_columns(cand).T @ _rank_columns(base)


def _best_assignment(correlation: np.ndarray) -> list[int]:
    """The N class for each candidate class that maximises the summed correlation (a permutation)."""
    count = correlation.shape[0]
    if count <= _BRUTE_FORCE_CLASSES:
        rows = np.arange(count)
        return list(max(itertools.permutations(range(count)), key=lambda p: correlation[rows, list(p)].sum()))
    from scipy.optimize import linear_sum_assignment

    _, columns = linear_sum_assignment(-correlation)
    return [int(c) for c in columns]


def detect_permutation(base: np.ndarray, cand: np.ndarray, classes: list[str], *, seed: int = 0) -> dict | None:
    """``{"mapping": {candidate class: N class}, "correlation": ..., "agreement": ...}`` when N+1's columns
    follow N's in another order, clearly; None when the identity fits.

    Clearly: every moved class correlates with the N class it is mapped to at least ``_MIN_CORRELATION``,
    the moved classes gain at least ``_MARGIN`` correlation on average over the identity (a per-class margin
    would miss a swap of two similar classes, W and Z, whose columns correlate 0.8 anyway), and the top
    class agrees with N's on more events once the mapping is applied.
    """
    correlation = class_correlations(base, cand, seed=seed)
    best = _best_assignment(correlation)
    moved = [k for k, j in enumerate(best) if j != k]
    if not moved:
        return None
    mapped = np.array([correlation[k, best[k]] for k in moved])
    identity = np.array([correlation[k, k] for k in moved])
    base_top, cand_top = base.argmax(axis=1), cand.argmax(axis=1)
    agreement = {"identity": float(np.mean(base_top == cand_top)),
                 "mapped": float(np.mean(base_top == np.asarray(best)[cand_top]))}
    if mapped.min() < _MIN_CORRELATION or (mapped - identity).mean() < _MARGIN \
            or agreement["mapped"] <= agreement["identity"]:
        return None
    return {"mapping": {classes[k]: classes[j] for k, j in enumerate(best)},
            "correlation": {classes[k]: float(correlation[k, best[k]]) for k in range(len(best))},
            "identity_correlation": {classes[k]: float(correlation[k, k]) for k in range(len(best))},
            "agreement": agreement}


def _reason(details: dict[str, Any]) -> str:
    per_class = details["per_class"]
    worst = max(per_class, key=lambda c: per_class[c]["distance"])
    distance = f"largest {DISTANCE_NAME} {per_class[worst]['distance']:.3g} (class {worst})"
    if details["task"] == "regression":
        return f"{details['events']} events of {details['output']!r}: {distance}"
    low, high = details["flip_interval"]
    text = (f"top class flips on {100 * details['flip_fraction']:.2f}% of {details['events']} events "
            f"[{100 * low:.2f}%, {100 * high:.2f}%]; {distance}")
    permutation = details["permutation"]
    if permutation:
        moved = [f"{c} behaves like N's {b}" for c, b in permutation["mapping"].items() if c != b]
        text += "; classes permuted: " + ", ".join(moved)
    return text
