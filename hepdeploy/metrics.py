"""Scalar physics metrics in plain numpy (no scikit-learn): the definitions the zoo's training
reports use and the bootstrap kernels of validation are checked against."""
from __future__ import annotations

import numpy as np

IQR_TO_SIGMA = 1.349  # IQR of a unit Gaussian: IQR/1.349 is a robust standard deviation


def roc_auc(scores: np.ndarray, is_signal: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_sig * n_bkg), ties count one half); NaN without both classes."""
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
    y = np.asarray(is_signal, dtype=bool)
    if not y.any() or y.all():
        return float("nan")
    fpr, tpr = roc_curve(scores, y)
    return float(np.interp(background_efficiency, fpr, tpr))


def relative_residual(predicted: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted - true) / true, and which events have it: the one definition of the residual that bias
    and resolution are taken from, in validation and in the zoo's training reports alike. Events whose
    true value is 0 have no relative residual (their entries are NaN and False)."""
    predicted = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    usable = np.abs(true) > np.finfo(np.float64).tiny
    with np.errstate(invalid="ignore", divide="ignore"):
        residual = np.where(usable, (predicted - true) / np.where(usable, true, 1.0), np.nan)
    return residual, usable


def robust_bias_resolution(residual: np.ndarray) -> tuple[float, float]:
    """(median, IQR/1.349) of the finite values of a residual distribution; NaN when there are none."""
    r = np.asarray(residual, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    q25, q50, q75 = np.percentile(r, [25, 50, 75])
    return float(q50), float((q75 - q25) / IQR_TO_SIGMA)
