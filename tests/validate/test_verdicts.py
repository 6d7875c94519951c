"""Physics verdicts that hold on a second reference set: paired bootstrap intervals, three outcomes,
a statistical floor, bins, and the vectorised kernels behind them (checked against the scalar metrics
on explicitly resampled events)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hepdeploy.metrics import roc_auc, signal_efficiency_at
from hepdeploy.spec import PhysicsSpec
from hepdeploy.validate.bootstrap import (
    QuantileKernel,
    RatioKernel,
    RocKernel,
    evaluate,
    resample,
)
from hepdeploy.validate.physics import physics_checks


def _classifier(n: int, seed: int, classes: int = 3, separation: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """(labels, softmax scores) of a classifier that is good but not perfect."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + separation * np.eye(classes)[labels]
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, scores


def _noisy(scores: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """A worse model: its class probabilities blurred by noise (still probabilities)."""
    noisy = np.clip(scores + np.random.default_rng(seed).normal(scale=scale, size=scores.shape), 1e-6, 1.0)
    return noisy / noisy.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- the kernels


def _expanded(weights_column: np.ndarray) -> np.ndarray:
    """The rows of one replica, each repeated as often as it was drawn."""
    return np.repeat(np.arange(len(weights_column)), weights_column.astype(int))


def test_roc_kernel_equals_the_scalar_metrics_on_resampled_events_with_ties() -> None:
    rng = np.random.default_rng(1)
    signal = rng.random(3000) < 0.3
    scores = np.round(rng.normal(size=3000) + 1.5 * signal, 1)  # rounding makes many ties
    kernel = RocKernel(scores, signal, (0.01, 0.1))
    resampling = resample(3000, 40, seed=7)
    [(point, replicas)] = evaluate([kernel], 3000, resampling)
    assert point[0] == pytest.approx(roc_auc(scores, signal), abs=1e-12)
    assert point[1] == pytest.approx(signal_efficiency_at(scores, signal, 0.01), abs=1e-9)
    weights = resampling.weights(0)
    for column in (0, 13, 39):
        rows = _expanded(weights[:, column])
        assert replicas[0, column] == pytest.approx(roc_auc(scores[rows], signal[rows]), abs=1e-9)
        assert replicas[1, column] == pytest.approx(signal_efficiency_at(scores[rows], signal[rows], 0.01), abs=1e-9)
        assert replicas[2, column] == pytest.approx(signal_efficiency_at(scores[rows], signal[rows], 0.1), abs=1e-9)


def test_kernels_on_a_subset_of_rows_and_quantiles_and_ratios() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=2000)
    rows = np.nonzero(values > -0.5)[0]
    flags = (rng.random(2000) < 0.4).astype(float)
    resampling = resample(2000, 20, seed=3)
    quantiles = QuantileKernel(("q25", "q50", "q75"), values[rows], (0.25, 0.5, 0.75), rows=rows, n_rows=2000)
    ratio = RatioKernel(("mean",), flags[rows], np.ones(len(rows)), rows=rows, n_rows=2000)
    (q_point, q_reps), (r_point, r_reps) = evaluate([quantiles, ratio], 2000, resampling)
    assert list(q_point) == list(np.quantile(values[rows], (0.25, 0.5, 0.75), method="inverted_cdf"))
    assert r_point[0] == pytest.approx(flags[rows].mean())
    weights = resampling.weights(0)
    for column in (0, 11):
        chosen = _expanded(weights[:, column])
        chosen = chosen[values[chosen] > -0.5]
        assert list(q_reps[:, column]) == list(np.quantile(values[chosen], (0.25, 0.5, 0.75), method="inverted_cdf"))
        assert r_reps[0, column] == pytest.approx(flags[chosen].mean())


def test_replicas_are_seeded_and_events_are_resampled_whole() -> None:
    groups = np.repeat(np.arange(50), 4)  # 50 events of 4 rows
    a, b = resample(50, 30, seed=5, groups=groups), resample(50, 30, seed=5, groups=groups)
    weights = a.weights(0)
    assert np.array_equal(weights, b.weights(0)) and not np.array_equal(weights, resample(50, 30, 6, groups).weights(0))
    assert weights.shape == (200, 30)
    assert (weights.reshape(50, 4, 30) == weights.reshape(50, 4, 30)[:, :1]).all()  # one multiplicity per event


# ----------------------------------------------------------------------------- outcomes


def test_identical_scores_pass_with_zero_width_intervals() -> None:
    labels, scores = _classifier(6000, seed=1)
    result = physics_checks({"p": scores.copy()}, {"p": scores}, {"labels": labels}, PhysicsSpec())
    assert result.outcome == "PASS"
    judged = [c for c in result.checks if not c.informational]
    assert judged and all(c.outcome == "PASS" and c.interval == (0.0, 0.0) for c in judged if c.reference is not None)
    agreement = next(c for c in judged if c.metric == "argmax_agreement")
    assert agreement.candidate == 1.0 and agreement.interval == (1.0, 1.0)


def test_a_known_shift_fails_with_an_interval_beyond_the_allowance() -> None:
    labels, scores = _classifier(20000, seed=2)
    result = physics_checks({"p": _noisy(scores, 0.15, seed=3)}, {"p": scores}, {"labels": labels}, PhysicsSpec())
    assert result.outcome == "FAIL"
    failing = [c for c in result.checks if c.outcome == "FAIL"]
    assert failing
    for check in failing:
        low, high = check.simultaneous
        assert high < -check.limit if check.kind == "drop" else high < check.limit
    assert "FAIL" in result.deciding()[0].summary()


def test_a_small_set_is_undecided_and_says_how_many_events_would_decide() -> None:
    labels, scores = _classifier(40000, seed=4, separation=1.0)
    candidate = _noisy(scores, 0.045, seed=5)  # AUC drops by about half the allowance
    spec = PhysicsSpec(max_signal_efficiency_drop=1.0, min_argmax_agreement=0.0)  # judge the AUCs only
    small = physics_checks({"p": candidate[:1000]}, {"p": scores[:1000]}, {"labels": labels[:1000]}, spec)
    undecided = [c for c in small.checks if c.metric.startswith("auc[") and c.outcome == "UNDECIDED"]
    assert small.outcome == "UNDECIDED" and undecided, [c.summary() for c in small.checks]
    needed = int(undecided[0].reason.split("about ")[1].split(" events")[0].replace(",", ""))
    assert needed > 1000
    # With (comfortably) as many events as it asked for, the same check is decided.
    n = min(40000, 2 * needed)
    large = physics_checks({"p": candidate[:n]}, {"p": scores[:n]}, {"labels": labels[:n]}, spec)
    decided = next(c for c in large.checks if c.metric == undecided[0].metric and c.bin is None)
    assert decided.outcome in ("PASS", "FAIL"), decided.summary()


def test_too_few_background_events_beyond_the_cut_are_not_judged() -> None:
    labels, scores = _classifier(900, seed=6)  # ~600 background per class: 6 beyond a 1 % cut
    result = physics_checks({"p": scores.copy()}, {"p": scores}, {"labels": labels}, PhysicsSpec())
    efficiency = next(c for c in result.checks if c.metric.startswith("signal_efficiency"))
    assert efficiency.outcome == "UNDECIDED"
    assert "not enough events (have 6 background events beyond the 0.01 cut, need 20)" in efficiency.reason
    assert result.outcome == "UNDECIDED"


def test_without_a_bootstrap_the_estimate_alone_decides() -> None:
    labels, scores = _classifier(6000, seed=7)
    spec = PhysicsSpec(bootstrap={"replicas": 0})
    result = physics_checks({"p": _noisy(scores, 0.15, seed=8)}, {"p": scores}, {"labels": labels}, spec)
    assert all(c.interval is None for c in result.checks) and not result.bootstrap
    assert {c.outcome for c in result.checks if not c.informational} <= {"PASS", "FAIL"}


# ----------------------------------------------------------------------------- coverage, bins, events


@pytest.mark.slow
def test_intervals_cover_the_true_difference() -> None:
    """Over 300 simulated reference sets, the 95 % interval of the AUC change covers the true change
    (computed on two million events) in at least ~93 % of them."""
    def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = (rng.random(n) < 0.4).astype(np.int64)
        reference = rng.normal(size=n) + 1.2 * labels
        candidate = reference + rng.normal(scale=0.4, size=n)  # a worse model on the same events
        return labels, 1 / (1 + np.exp(-reference)), 1 / (1 + np.exp(-candidate))

    labels, ref, cand = draw(2_000_000, seed=0)
    truth = roc_auc(cand, labels == 1) - roc_auc(ref, labels == 1)
    spec = PhysicsSpec(bootstrap={"replicas": 500})
    covered = 0
    trials = 300
    for trial in range(trials):
        labels, ref, cand = draw(2000, seed=1000 + trial)
        result = physics_checks({"s": cand}, {"s": ref}, {"y": labels}, spec)
        auc = next(c for c in result.checks if c.metric.startswith("auc["))
        covered += auc.interval[0] <= truth <= auc.interval[1]
    assert covered / trials >= 0.93, covered / trials


def test_a_candidate_degraded_only_at_high_pt_fails_in_that_bin() -> None:
    labels, scores = _classifier(30000, seed=9, separation=1.0)
    pt = np.random.default_rng(10).uniform(30, 300, 30000)
    candidate = scores.copy()
    high = pt >= 200
    candidate[high] = _noisy(scores[high], 0.12, seed=11)
    spec = PhysicsSpec(bins={"jet_pt": [30, 100, 200, 300]}, max_signal_efficiency_drop=1.0)
    result = physics_checks({"p": candidate}, {"p": scores}, {"labels": labels}, spec, {"jet_pt": pt})
    auc = {(c.metric, c.bin): c for c in result.checks if c.metric == "auc[class 0]"}
    assert auc[("auc[class 0]", "jet_pt [200, 300]")].outcome == "FAIL"
    assert auc[("auc[class 0]", None)].outcome == "PASS"
    assert auc[("auc[class 0]", "jet_pt [30, 100)")].interval == (0.0, 0.0)  # untouched there
    assert result.outcome == "FAIL"  # the worst bin decides


def test_rows_of_one_event_are_resampled_together() -> None:
    """Ten copies of every event carry no more information than one: with 'event' the intervals
    are as wide as for the events alone; without it they would be ~sqrt(10) narrower."""
    labels, scores = _classifier(3000, seed=12, classes=2)
    candidate = _noisy(scores, 0.05, seed=13)
    once = physics_checks({"p": candidate}, {"p": scores}, {"labels": labels}, PhysicsSpec())
    repeat = (np.repeat(labels, 10), np.repeat(scores, 10, axis=0), np.repeat(candidate, 10, axis=0))
    event = {"event": np.repeat(np.arange(3000), 10)}
    grouped = physics_checks({"p": repeat[2]}, {"p": repeat[1]}, {"labels": repeat[0]}, PhysicsSpec(), event)
    loose = physics_checks({"p": repeat[2]}, {"p": repeat[1]}, {"labels": repeat[0]}, PhysicsSpec())

    def width(result: object) -> float:
        auc = next(c for c in result.checks if c.metric.startswith("auc[") and c.bin is None)  # type: ignore[attr-defined]
        return auc.half_width

    assert width(grouped) == pytest.approx(width(once), rel=0.25)
    assert width(loose) < 0.5 * width(grouped)
    assert next(c for c in grouped.checks if c.metric.startswith("auc[")).n_events == 3000


# ----------------------------------------------------------------------------- reports and exit codes


def test_validate_exits_3_when_undecided_and_reports_the_intervals(tiny_onnx: Path, tiny_data: Path,
                                                                  tmp_path: Path) -> None:
    from hepdeploy.cli import main

    golden = tmp_path / "golden.npz"
    made = CliRunner().invoke(main, ["reference", str(tiny_onnx), "--data", str(tiny_data), "-o", str(golden),
                                     "--labels", "labels"])
    assert made.exit_code == 0, made.output
    # 300 events: the 1 % working point rests on 2 background events per class, so physics cannot decide.
    result = CliRunner().invoke(main, ["validate", str(tiny_onnx), "--golden", str(golden), "--policy", "physics",
                                       "--report-dir", str(tmp_path / "report")])
    assert result.exit_code == 3, result.output
    assert "undecided" in result.stderr and "not enough events" in result.stderr
    assert "UNDECIDED" in result.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    variant = report["variants"][0]
    assert report["outcome"] == "UNDECIDED" and variant["outcome"] == "UNDECIDED" and not variant["passed"]
    auc = next(c for c in variant["physics"]["checks"] if c["metric"].startswith("auc["))
    assert auc["interval"] == [0.0, 0.0] and auc["n_events"] == 300
    assert "95 % interval" in (tmp_path / "report" / "report.md").read_text()


def _tf_style_classifier(path: Path, weights: np.ndarray) -> Path:
    """A classifier as old TensorFlow exporters wrote it: IR 3, opset 9, ``name:0`` tensors, batch dim ``N``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["input_1:0", "dense/kernel:0"], ["dense/MatMul:0"]),
             helper.make_node("Softmax", ["dense/MatMul:0"], ["ID_pred/Softmax:0"], axis=1)]
    graph = helper.make_graph(
        nodes, "tf2onnx", [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["N", weights.shape[0]])],
        [helper.make_tensor_value_info("ID_pred/Softmax:0", TensorProto.FLOAT, ["N", weights.shape[1]])],
        [numpy_helper.from_array(weights.astype(np.float32), "dense/kernel:0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], producer_name="tf2onnx")
    model.ir_version = 3
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("layout", ["golden.npz", "test_data"])
def test_verdicts_on_a_model_we_did_not_make(tmp_path: Path, layout: str) -> None:
    """IR 3 / opset 9, TensorFlow-style names and a batch dim named N: the same verdicts, and the
    binning variable survives both reference layouts."""
    from hepdeploy.cli import main
    from hepdeploy.data import save_tensors
    from hepdeploy.validate.reference import load_reference

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(8, 3)) * 1.5
    x = rng.normal(size=(20000, 8)).astype(np.float32)
    labels = np.argmax(x @ weights + 1.5 * rng.normal(size=(20000, 3)), axis=1)
    save_tensors(tmp_path / "data.npz", {"input_1:0": x, "labels": labels,
                                         "jet_pt": rng.uniform(30, 300, 20000).astype(np.float32)})
    reference = _tf_style_classifier(tmp_path / "reference.onnx", weights)
    golden = tmp_path / layout
    made = CliRunner().invoke(main, ["reference", str(reference), "--data", str(tmp_path / "data.npz"), "-o", str(golden),
                                     "--labels", "labels", "--variable", "jet_pt",
                                     *(["--samples-per-set", "5000"] if layout == "test_data" else [])])
    assert made.exit_code == 0, made.output
    kept = load_reference(golden)
    assert list(kept.outputs) == ["ID_pred/Softmax:0"] and kept.variables["jet_pt"].shape == (20000,)

    expected = {"same": (weights + 1e-3, 0, "PASS"), "worse": (weights + rng.normal(size=weights.shape), 1, "FAIL")}
    for name, (candidate_weights, exit_code, outcome) in expected.items():
        candidate = _tf_style_classifier(tmp_path / f"{name}.onnx", candidate_weights)
        report_dir = tmp_path / f"report-{name}"
        result = CliRunner().invoke(main, ["validate", str(candidate), "--golden", str(golden), "--policy", "physics",
                                           "--report-dir", str(report_dir)])
        assert result.exit_code == exit_code, result.output
        variant = json.loads((report_dir / "report.json").read_text())["variants"][0]
        assert variant["outcome"] == outcome
        auc = next(c for c in variant["physics"]["checks"] if c["metric"] == "auc[class 0]")
        assert auc["n_events"] == 20000 and auc["interval"][0] <= auc["interval"][1]
