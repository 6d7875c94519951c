"""Non-inferiority of version N+1 against version N on real jet MLPs: identical versions pass with
zero-width intervals, another training judged on 300 jets is undecided with the events that would
decide it, and a version worse in one jet-pT bin only fails naming that bin."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from hepdeploy.errors import SpecError
from hepdeploy.gate.non_inferiority import check_non_inferiority
from hepdeploy.spec import GateSpec, ModelSpec, PhysicsSpec, spec_from_dict
from hepdeploy.validate.metric_registry import physics_metric

pytestmark = pytest.mark.slow

# 2000 test jets hold ~1600 background jets per class: 1 % of them (16) is below the floor of 20 background
# jets beyond the cut, so the tests' efficiency is taken at 5 % background (a key gate.physics may set).
WORKING_POINT = {"physics": {"background_efficiency": 0.05}}


def _rows(arrays: dict[str, np.ndarray], rows: Any) -> dict[str, np.ndarray]:
    return {name: value[rows] for name, value in arrays.items()}


def test_identical_versions_pass_with_zero_width_intervals(jet_versions: Any) -> None:
    events = jet_versions.events
    gate = GateSpec.model_validate(WORKING_POINT)
    result = check_non_inferiority(events.outputs, dict(events.outputs), events.labels, events.variables, gate,
                                   jet_versions.spec.validation.physics)
    assert result.check == "non_inferiority" and result.outcome == "PASS", result.reason
    judged = [f for f in result.findings if f.outcome != "INFO"]
    bins = {f.bin for f in judged}
    assert bins == {None, "jet_pt [400, 465)", "jet_pt [465, 530)", "jet_pt [530, 600]"}  # validation's bins
    assert {f.metric for f in judged} == {"auc", "signal_efficiency_relative"}  # no argmax agreement judged
    assert {f.klass for f in judged} == set(jet_versions.spec.validation.physics.class_names)
    assert all(f.interval == (0.0, 0.0) and f.change == 0.0 and not f.improved for f in judged)
    assert {f.spec_key for f in judged} == {"gate.physics.max_auc_drop", "gate.physics.max_signal_efficiency_relative_drop"}
    assert all(f.relative for f in judged if f.metric == "signal_efficiency_relative")
    curves = result.details["curves"]
    assert set(curves) == set(jet_versions.spec.validation.physics.class_names)
    assert curves["t"]["fpr_ref"] == curves["t"]["fpr_cand"] and len(curves["t"]["band_fpr"]) > 10
    assert result.details["bootstrap"]["seed"] == 0 and result.details["bootstrap"]["replicas"] == 1000
    json.dumps(result.to_dict(), allow_nan=False)  # gate.json can hold it as it is


def test_another_training_on_300_jets_is_undecided_with_the_events_that_would_decide_it(jet_versions: Any) -> None:
    events, few = jet_versions.events, slice(0, 300)
    retrained = jet_versions.outputs(jet_versions.retrained, few)
    result = check_non_inferiority(_rows(events.outputs, few), retrained, _rows(events.labels, few),
                                   _rows(events.variables, few), GateSpec(), jet_versions.spec.validation.physics)
    assert result.outcome == "UNDECIDED", result.reason
    assert "events would decide it (have 300)" in result.reason and "about " in result.reason
    # The retrained network really differs from N: some change of some metric is not zero.
    assert any(f.change for f in result.findings if f.outcome != "INFO")
    undecided = result.deciding()
    assert undecided and all(f.spec_key and f.spec_key.startswith("gate.physics.") for f in undecided)


def _degraded_model(source: Any, target: Any) -> Any:
    """N with noise added to its first layer's weights (same graph, same tensor names)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    weights = [w for w in model.graph.initializer if len(w.dims) == 2]
    first = weights[0]
    values = numpy_helper.to_array(first)
    noisy = values + np.random.default_rng(3).normal(0.0, 1.5 * values.std(), values.shape).astype(values.dtype)
    first.CopyFrom(numpy_helper.from_array(noisy, first.name))
    onnx.save(model, str(target))
    return target


def test_a_version_worse_in_one_pt_bin_only_fails_naming_that_bin(jet_versions: Any) -> None:
    """N+1 equals N except for jets of 530 <= pT <= 600 GeV, whose scores come from N with a noisy first layer.

    The jet MLP's inputs are substructure features without the jet's pT, so no graph could single out
    a pT bin: N+1's outputs are made from two real model runs instead, N's and the degraded model's on
    the jets of that bin."""
    events = jet_versions.events
    degraded = _degraded_model(jet_versions.onnx, jet_versions.folder / "degraded.onnx")
    high = np.nonzero(events.variables["jet_pt"] >= 530.0)[0]
    candidate = {name: value.copy() for name, value in events.outputs.items()}
    for name, value in jet_versions.outputs(degraded, high).items():
        candidate[name][high] = value
    gate = GateSpec.model_validate(WORKING_POINT)
    result = check_non_inferiority(events.outputs, candidate, events.labels, events.variables, gate,
                                   jet_versions.spec.validation.physics)
    assert result.outcome == "FAIL", result.reason
    assert "in jet_pt [530, 600]" in result.reason and "allowance" in result.reason
    failing = result.deciding()
    assert failing and {f.bin for f in failing} <= {"jet_pt [530, 600]", None}
    assert any(f.bin == "jet_pt [530, 600]" for f in failing)
    assert all(f.spec_key in ("gate.physics.max_auc_drop", "gate.physics.max_signal_efficiency_relative_drop")
               for f in failing)
    untouched = [f for f in result.findings if f.bin in ("jet_pt [400, 465)", "jet_pt [465, 530)")]
    assert untouched and all(f.interval == (0.0, 0.0) for f in untouched if f.outcome != "INFO")


def test_without_labels_it_is_undecided_never_pass(jet_versions: Any) -> None:
    events = jet_versions.events
    result = check_non_inferiority(events.outputs, dict(events.outputs), {}, events.variables, GateSpec(),
                                   jet_versions.spec.validation.physics)
    assert result.outcome == "UNDECIDED" and result.reason == "no labels: non-inferiority cannot be judged"


def test_the_relative_efficiency_change_is_the_ratio_of_the_two_efficiencies(jet_versions: Any) -> None:
    from hepdeploy.metrics import signal_efficiency_at

    events = jet_versions.events
    retrained = jet_versions.outputs(jet_versions.retrained)
    result = check_non_inferiority(events.outputs, retrained, events.labels, events.variables,
                                   GateSpec.model_validate(WORKING_POINT), jet_versions.spec.validation.physics)
    metric = physics_metric("signal_efficiency_relative")
    assert metric.judged == "relative_change" and metric.allowance == "max_signal_efficiency_relative_drop"
    assert not metric.planned(PhysicsSpec()) and metric.planned(GateSpec().physics)  # opt-in, on in the gate
    finding = next(f for f in result.findings if f.metric == "signal_efficiency_relative" and f.klass == "W"
                   and f.bin is None)
    is_w = events.labels["labels"] == 2
    baseline = signal_efficiency_at(events.outputs["output"][:, 2], is_w, 0.05)
    candidate = signal_efficiency_at(retrained["output"][:, 2], is_w, 0.05)
    assert finding.baseline == pytest.approx(baseline) and finding.candidate == pytest.approx(candidate)
    assert finding.change == pytest.approx(candidate / baseline - 1.0)


def test_the_gate_block_takes_what_it_leaves_unset_from_validation(jet_versions: Any) -> None:
    data = jet_versions.spec.model_dump(mode="json", exclude_defaults=True)
    data["gate"] = {"physics": {"max_auc_drop": 0.005}, "seed": 7}
    spec: ModelSpec = spec_from_dict(data)
    physics = spec.gate.physics_against(spec.validation.physics)
    assert physics.max_auc_drop == 0.005 and physics.max_signal_efficiency_relative_drop == 0.01
    assert physics.bins == spec.validation.physics.bins and physics.class_names == ["g", "q", "W", "Z", "t"]
    assert physics.min_argmax_agreement is None and physics.max_signal_efficiency_drop is None
    assert physics.bootstrap.seed == 7
    data["gate"] = {"physics": {"max_auc_dorp": 0.005}}
    with pytest.raises(SpecError, match=r"gate\.physics\.max_auc_dorp: unknown key"):
        spec_from_dict(data)


def test_a_finding_of_no_change_keeps_its_zeros_in_json() -> None:
    from hepdeploy.gate.outcome import Finding

    data = Finding("auc[t]", "PASS", baseline=1.0, candidate=1.0, change=0.0, interval=(0.0, 0.0)).to_dict()
    assert data["change"] == 0.0 and data["interval"] == [0.0, 0.0]
    assert "improved" not in data and "extra" not in data and "spec_key" not in data
