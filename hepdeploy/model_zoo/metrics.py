"""Physics metrics of the zoo's tasks, in plain numpy (no scikit-learn dependency)."""
from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, is_signal: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_signal = np.asarray(is_signal).astype(bool).ravel()
    n_sig, n_bkg = int(is_signal.sum()), int((~is_signal).sum())
    if n_sig == 0 or n_bkg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average rank for ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[is_signal].sum() - n_sig * (n_sig + 1) / 2.0) / (n_sig * n_bkg))


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Macro one-vs-rest AUC, per-class AUC and accuracy."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    per_class = {}
    for k, name in enumerate(class_names):
        if probabilities.shape[1] == 2 and k == 0:
            continue  # binary: one AUC says it all
        per_class[f"auc_{name}"] = roc_auc(probabilities[:, k], labels == k)
    values = [v for v in per_class.values() if np.isfinite(v)]
    return {
        "auc": float(np.mean(values)) if values else float("nan"),
        "accuracy": float(np.mean(np.argmax(probabilities, axis=1) == labels)),
        **per_class,
    }


def robust_width(values: np.ndarray) -> float:
    """IQR / 1.349: the Gaussian sigma for Gaussian data, robust to tails."""
    q75, q25 = np.percentile(values, [75, 25])
    return float((q75 - q25) / 1.349)


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """Bias (median) and resolution (IQR/1.349) of the relative residual (pred - true) / true."""
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    relative = (predictions - targets) / np.maximum(np.abs(targets), 1.0)
    return {"bias": float(np.median(relative)), "resolution": robust_width(relative)}


def edge_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Edge efficiency (true edges kept) and purity (kept edges that are true) at a score cut."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(labels).astype(bool).ravel()
    kept = scores > threshold
    true_kept = int(np.sum(kept & truth))
    return {
        "efficiency": true_kept / max(int(truth.sum()), 1),
        "purity": true_kept / max(int(kept.sum()), 1),
        "auc": roc_auc(scores, truth),
    }
