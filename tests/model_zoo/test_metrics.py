"""The zoo's physics metrics against cases with known answers."""
from __future__ import annotations

import numpy as np

from hepdeploy.metrics import roc_auc
from hepdeploy.model_zoo import metrics


def test_roc_auc_known_values() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), labels) == 0.75
    rng = np.random.default_rng(0)
    assert abs(roc_auc(rng.uniform(size=20000), rng.integers(0, 2, 20000)) - 0.5) < 0.02


def test_regression_and_edge_metrics() -> None:
    truth = np.linspace(10, 100, 1001)
    result = metrics.regression_metrics(truth * 1.1, truth)
    assert abs(result["bias"] - 0.1) < 1e-9 and result["resolution"] < 1e-9
    edges = metrics.edge_metrics(np.array([0.9, 0.8, 0.2, 0.7]), np.array([1, 0, 1, 1]))
    assert edges["efficiency"] == 2 / 3 and edges["purity"] == 2 / 3
