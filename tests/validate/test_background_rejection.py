"""Background rejection at a fixed signal efficiency (1/eps_B at eps_S = 0.5): its definition against
direct counts, its bootstrap kernel against the definition on resampled events, and its checks on a
real zoo tagger, in the report and the verdict."""
from __future__ import annotations

import numpy as np
import pytest

from hepdeploy.spec import PhysicsSpec
from hepdeploy.validate.background_rejection import (
    RejectionKernel,
    background_efficiency_at,
    background_rejection_at,
)
from hepdeploy.validate.bootstrap import evaluate, resample
from hepdeploy.validate.physics import physics_checks


def test_rejection_equals_a_direct_count_on_known_scores() -> None:
    # Four signal and eight background jets: the cut keeping two signal jets (score >= 0.8) passes one
    # background jet (0.85) of eight.
    signal = np.array([0.9, 0.8, 0.7, 0.6])
    background = np.array([0.85, 0.65, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    scores, is_signal = np.r_[signal, background], np.r_[np.ones(4, bool), np.zeros(8, bool)]
    assert background_efficiency_at(scores, is_signal, 0.5) == 1 / 8
    assert background_rejection_at(scores, is_signal, 0.5) == 8.0
    # Continuous scores, an even number of signal jets: the tightest cut keeping half of them sits at
    # the n/2-th highest signal score, and eps_B is the fraction of background above it.
    rng = np.random.default_rng(11)
    sig, bkg = rng.normal(2.0, 1.0, 4000), rng.normal(0.0, 1.0, 30_000)
    cut = np.sort(sig)[::-1][len(sig) // 2 - 1]
    direct = 1.0 / np.mean(bkg > cut)
    scores, is_signal = np.r_[sig, bkg], np.r_[np.ones(sig.size, bool), np.zeros(bkg.size, bool)]
    assert background_rejection_at(scores, is_signal, 0.5) == pytest.approx(direct, rel=1e-12)
    # Unit Gaussians 2 sigma apart: half the signal is above 2.0, which keeps 2.28 % of the background
    # (up to the sampling of 4000 signal and 30 000 background jets).
    assert direct == pytest.approx(1 / 0.02275, rel=0.2)
    [(point, _)] = evaluate([RejectionKernel(scores, is_signal, 0.5)], len(scores), None)
    assert point[0] == pytest.approx(direct, rel=1e-12)
    assert np.isnan(background_rejection_at(scores, np.zeros(len(scores), bool), 0.5))


def test_the_kernel_equals_the_definition_on_resampled_events_with_ties() -> None:
    rng = np.random.default_rng(12)
    is_signal = rng.random(3000) < 0.3
    scores = np.round(rng.normal(size=3000) + 1.5 * is_signal, 1)  # rounding makes many ties
    resampling = resample(3000, 30, seed=5)
    [(point, replicas)] = evaluate([RejectionKernel(scores, is_signal, 0.5)], 3000, resampling)
    assert point[0] == pytest.approx(background_rejection_at(scores, is_signal, 0.5), rel=1e-12)
    weights = resampling.weights(0)
    for column in (0, 9, 29):
        rows = np.repeat(np.arange(3000), weights[:, column].astype(int))
        expected = background_rejection_at(scores[rows], is_signal[rows], 0.5)
        assert replicas[0, column] == pytest.approx(expected, rel=1e-12)


def test_it_is_checked_only_when_the_spec_sets_its_allowance() -> None:
    rng = np.random.default_rng(13)
    labels = rng.integers(0, 2, 4000)
    scores = 1 / (1 + np.exp(-(rng.normal(size=4000) + 1.5 * labels)))
    off = physics_checks({"s": scores}, {"s": scores}, {"y": labels}, PhysicsSpec())
    assert not any(c.metric.startswith("background_rejection") for c in off.checks)
    on = physics_checks({"s": scores}, {"s": scores}, {"y": labels}, PhysicsSpec(max_background_rejection_drop=0.05))
    [check] = [c for c in on.checks if c.metric.startswith("background_rejection")]
    assert check.metric == "background_rejection@0.5sig[class 1]" and check.outcome == "PASS"
    assert check.rule == "relative drop <= 0.05" and check.interval == (0.0, 0.0)


@pytest.mark.slow
def test_a_zoo_tagger_reports_the_rejection_change_with_an_interval_and_it_decides_the_verdict(jet_case) -> None:
    """jet_mlp (5 jet classes, 3 pT bins in its spec): its INT8 variant validated against the PyTorch
    reference with the rejection judged; then a blurred copy of the reference's scores, judged on the
    rejection alone, fails on it."""
    from hepdeploy.validate import validate_candidate

    zoo_spec = jet_case.zoo.spec
    physics = zoo_spec.validation.physics.model_copy(update={"max_background_rejection_drop": 0.05})
    spec = zoo_spec.model_copy(update={"validation": zoo_spec.validation.model_copy(update={"physics": physics})})
    report = validate_candidate(jet_case.variant("int8-cpu"), jet_case.reference, spec=spec)
    rejections = [c for c in report.physics.checks if c.metric.startswith("background_rejection@0.5sig[")]
    inclusive = [c for c in rejections if c.bin is None]
    assert len(inclusive) == 5 and len(rejections) == 5 + 15
    reference = jet_case.reference
    output = report.physics.output
    scores = reference.outputs[output].reshape(len(next(iter(reference.labels.values()))), -1)
    labels = next(iter(reference.labels.values())).reshape(-1)
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)  # probabilities: the checks take them as they are
    names = list(physics.class_names)
    class_of = {(names[k] if k < len(names) else f"class {k}"): k for k in range(scores.shape[1])}
    for check in inclusive:
        c = class_of[check.metric.split("[", 1)[1][:-1]]
        assert check.reference == pytest.approx(background_rejection_at(scores[:, c], labels == c, 0.5), rel=1e-9)
        assert check.rule == "relative drop <= 0.05" and check.relative
    # The zoo's jets separate well: no background passes half of the top and quark jets (rejection
    # inf, not judged), while W and Z taggers keep a few % of it.
    finite = [c for c in inclusive if np.isfinite(c.reference)]
    assert finite
    for check in finite:
        assert check.change == pytest.approx(check.candidate / check.reference - 1)
        assert check.interval is not None and check.interval[0] <= check.change <= check.interval[1]
        assert check.outcome in ("PASS", "FAIL", "UNDECIDED") and check.half_width > 0
    assert any(abs(c.change) > 0 for c in finite)  # INT8 moves the working point
    assert any(c.metric.startswith("background_rejection") for c in report.physics.deciding())
    as_json = report.to_dict()["physics"]["checks"]
    assert {c["metric"] for c in as_json} >= {c.metric for c in rejections}

    judged_alone = physics.model_copy(update={"max_auc_drop": 1.0, "max_signal_efficiency_drop": 1.0,
                                              "min_argmax_agreement": 0.0})
    blurred = np.clip(scores + np.random.default_rng(14).normal(scale=0.3, size=scores.shape), 1e-6, 1.0)
    blurred /= blurred.sum(axis=1, keepdims=True)
    result = physics_checks({output: blurred}, {output: scores}, reference.labels, judged_alone, reference.variables)
    assert result.outcome == "FAIL"
    assert result.deciding() and all(c.metric.startswith("background_rejection") for c in result.deciding())
    for check in result.deciding():
        assert check.simultaneous[1] < -0.05
