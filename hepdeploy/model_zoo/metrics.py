"""The zoo's training reports: its tasks' metrics over a test set."""
from __future__ import annotations

import numpy as np

from hepdeploy.metrics import relative_residual, robust_bias_resolution, roc_auc


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


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """Bias (median) and resolution (IQR/1.349) of the relative residual (pred - true) / true (events with
    true 0 left out), as validation takes them (``metrics.relative_residual``)."""
    relative, _ = relative_residual(np.asarray(predictions).ravel(), np.asarray(targets).ravel())
    bias, resolution = robust_bias_resolution(relative)
    return {"bias": bias, "resolution": resolution}


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
