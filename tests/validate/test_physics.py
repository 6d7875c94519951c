"""Physics metrics (checked against independent brute-force computations) and checks."""
from __future__ import annotations

import numpy as np
import pytest

from hepdeploy.metrics import (
    robust_bias_resolution,
    roc_auc,
    roc_curve,
    signal_efficiency_at,
)
from hepdeploy.spec import PhysicsSpec
from hepdeploy.validate.physics import infer_task, physics_checks


def _pairwise_auc(scores: np.ndarray, signal: np.ndarray) -> float:
    pos, neg = scores[signal], scores[~signal]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def test_auc_equals_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    signal = rng.random(400) < 0.3
    scores = np.round(rng.normal(size=400) + signal, 1)  # rounding makes many ties
    assert roc_auc(scores, signal) == pytest.approx(_pairwise_auc(scores, signal), abs=1e-12)
    assert roc_auc(-scores, signal) == pytest.approx(1 - _pairwise_auc(scores, signal), abs=1e-12)
    assert np.isnan(roc_auc(scores, np.zeros(400, bool)))


def test_roc_curve_and_signal_efficiency() -> None:
    rng = np.random.default_rng(2)
    signal = np.r_[np.ones(20_000, bool), np.zeros(20_000, bool)]
    scores = np.r_[rng.normal(2.0, 1.0, 20_000), rng.normal(0.0, 1.0, 20_000)]
    fpr, tpr = roc_curve(scores, signal)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # Unit Gaussians 2 sigma apart: the cut keeping 1% background (x > 2.326) keeps 37.3% of signal.
    assert signal_efficiency_at(scores, signal, 0.01) == pytest.approx(0.373, abs=0.02)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, signal), abs=1e-3)


def test_bias_and_resolution_of_a_gaussian() -> None:
    rng = np.random.default_rng(3)
    bias, resolution = robust_bias_resolution(rng.normal(0.05, 0.2, 200_000))
    assert bias == pytest.approx(0.05, abs=3e-3)
    assert resolution == pytest.approx(0.2, abs=3e-3)


def test_classification_checks_catch_a_degraded_candidate() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 5000)
    logits = rng.normal(size=(5000, 3)) + 2.0 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    noisy = probs + rng.normal(scale=0.3, size=probs.shape)
    good = physics_checks({"p": probs.copy()}, {"p": probs}, {"labels": labels}, PhysicsSpec())
    bad = physics_checks({"p": noisy}, {"p": probs}, {"labels": labels}, PhysicsSpec())
    assert good.task == "classification" and good.passed
    metrics = {c.metric for c in good.checks}
    assert {"auc[class 0]", "auc[class 2]", "signal_efficiency@0.01bkg[class 1]", "argmax_agreement"} <= metrics
    assert not bad.passed
    auc0 = next(c for c in bad.checks if c.metric == "auc[class 0]")
    assert auc0.reference == pytest.approx(roc_auc(probs[:, 0], labels == 0))
    assert auc0.change < -0.01 and not auc0.passed


def test_logits_are_turned_into_probabilities() -> None:
    rng = np.random.default_rng(5)
    # 5000 events: the 1 % background working point needs 20 background events beyond the cut.
    labels = rng.integers(0, 2, 5000)
    logits = rng.normal(size=(5000, 2)) + np.eye(2)[labels]
    result = physics_checks({"z": logits}, {"z": logits}, {"y": labels}, PhysicsSpec())
    assert any("softmax" in note for note in result.notes)
    assert result.passed


def test_regression_checks_report_bias_and_resolution_change() -> None:
    rng = np.random.default_rng(6)
    target = rng.uniform(10, 100, 20_000)
    ref = target * (1 + rng.normal(0.0, 0.1, target.size))
    cand = ref * (1 + rng.normal(0.03, 0.05, target.size))  # shifted by 3% and smeared
    result = physics_checks({"e": cand[:, None]}, {"e": ref[:, None]}, {"targets": target}, PhysicsSpec())
    assert result.task == "regression"
    by_name = {c.metric: c for c in result.checks}
    assert by_name["bias"].change == pytest.approx(0.03, abs=0.01)
    assert not by_name["bias"].passed
    assert by_name["resolution"].change > 0.005
    assert by_name["resolution_vs_reference"].candidate == pytest.approx(0.05, abs=0.01)


def test_edge_classification_efficiency_and_purity() -> None:
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    ref = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.2, 0.1, 0.1], np.float32)
    result = physics_checks({"w": ref.copy()}, {"w": ref}, {"y": truth}, PhysicsSpec(task="edge_classification"))
    by_name = {c.metric: c for c in result.checks}
    assert by_name["edge_efficiency@0.5"].reference == pytest.approx(3 / 4)
    assert by_name["edge_purity@0.5"].reference == pytest.approx(3 / 4)
    assert by_name["edge_auc"].reference == pytest.approx(_pairwise_auc(ref, truth.astype(bool)))


def test_infer_task_and_missing_labels() -> None:
    assert infer_task(np.zeros((10, 5)), np.arange(10) % 5) == "classification"
    assert infer_task(np.zeros((10, 1)), np.linspace(1, 2, 10)) == "regression"
    assert infer_task(np.zeros((4, 30)), np.ones((4, 30), np.int64)) == "edge_classification"
    none = physics_checks({"p": np.zeros((3, 2))}, {"p": np.zeros((3, 2))}, {}, PhysicsSpec())
    assert not none.ran and "only numerical checks ran" in none.notes[0]
