"""The gate's change map on real jet MLP versions: identical answers change nothing, a retrained model
changes a few top classes, a swapped class order with unchanged tensors is found as a permutation (and
then fails the interface check), and a regression output gets distances and largest changes only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hepdeploy.gate.change_map import change_map
from hepdeploy.gate.interface import check_interface, interface_of_published

pytestmark = pytest.mark.slow

SWAP_G_Q = [1, 0, 2, 3, 4]


def test_identical_answers_flip_nothing_and_permute_nothing(jet_versions):
    outputs = jet_versions.outputs(jet_versions.onnx)
    result = change_map(outputs, outputs, class_names=jet_versions.labels)
    assert result.check == "change_map" and result.outcome == "INFO"
    details = result.details
    assert details["flip_fraction"] == 0 and details["flip_interval"][0] == 0 < details["flip_interval"][1] < 0.01
    assert details["permutation"] is None
    assert {c: d["distance"] for c, d in details["per_class"].items()} == {c: 0.0 for c in jet_versions.labels}
    json.dumps(result.to_dict())


def test_a_retrained_model_flips_a_few_top_classes_and_is_no_permutation(jet_versions):
    baseline, candidate = jet_versions.outputs(jet_versions.onnx), jet_versions.outputs(jet_versions.retrained)
    result = change_map(baseline, candidate, class_names=jet_versions.labels, top=5)
    details = result.details
    assert 0 < details["flip_fraction"] < 0.3
    low, high = details["flip_interval"]
    assert low < details["flip_fraction"] < high
    assert details["permutation"] is None
    assert all(d["distance"] > 0 and d["distance_name"] == "wasserstein_1" for d in details["per_class"].values())
    some_class = details["per_class"][jet_versions.labels[0]]
    assert len(some_class["edges"]) == len(some_class["baseline_hist"]) + 1
    assert sum(some_class["baseline_hist"]) == sum(some_class["candidate_hist"]) == len(jet_versions.inputs["input_1"])
    largest = details["largest_changes"]
    changes = [row["change"] for row in largest]
    assert len(largest) == 5 and changes == sorted(changes, reverse=True)
    first = largest[0]
    moved = np.abs(candidate["output"][first["event"]] - baseline["output"][first["event"]]).sum()
    assert first["change"] == pytest.approx(moved, rel=1e-5)
    assert first["baseline_top"] in jet_versions.labels and first["candidate_top"] in jet_versions.labels


def test_logits_against_probabilities_change_no_top_class(jet_versions):
    probabilities = jet_versions.outputs(jet_versions.onnx)
    logits = {"output": np.log(probabilities["output"])}
    details = change_map(probabilities, logits, class_names=jet_versions.labels).details
    assert details["flip_fraction"] == 0 and details["permutation"] is None


def test_a_swapped_class_order_is_a_permutation_and_fails_the_interface(published, jet_versions):
    swapped = jet_versions.permuted(SWAP_G_Q)
    jet_versions.publish(published.parent, swapped)
    # The tensors are the same: without the change map the interface check sees nothing.
    baseline, candidate = interface_of_published(published, 1), interface_of_published(published, 2)
    assert check_interface(baseline, candidate).outcome == "PASS"

    result = change_map(jet_versions.outputs(jet_versions.onnx), jet_versions.outputs(swapped),
                        class_names=baseline.labels)
    permutation = result.details["permutation"]
    assert permutation is not None
    assert permutation["mapping"] == {"g": "q", "q": "g", "W": "W", "Z": "Z", "t": "t"}
    assert permutation["correlation"]["g"] > permutation["identity_correlation"]["g"]
    assert "g behaves like N's q" in result.reason

    judged = check_interface(baseline, candidate, permutation=permutation)
    assert judged.outcome == "FAIL"
    assert "candidate class g behaves like N's class q" in judged.reason


def test_a_retrained_model_with_two_similar_classes_swapped_is_a_permutation(jet_versions):
    # W and Z jets look alike (their score columns correlate ~0.8 anyway): the swap must still stand out.
    labels = jet_versions.labels
    order = [labels.index(c) for c in ("g", "q", "Z", "W", "t")]
    swapped = jet_versions.permuted(order, jet_versions.retrained)
    result = change_map(jet_versions.outputs(jet_versions.onnx), jet_versions.outputs(swapped), class_names=labels)
    permutation = result.details["permutation"]
    assert permutation is not None
    assert {c: b for c, b in permutation["mapping"].items() if c != b} == {"W": "Z", "Z": "W"}
    assert permutation["agreement"]["mapped"] > permutation["agreement"]["identity"]


def test_a_regression_output_gets_distances_and_largest_changes_only(zoo_export, tmp_path):
    convert = pytest.importorskip("hepdeploy.convert")
    from hepdeploy.artifacts import load_onnx, save_onnx
    from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
    from hepdeploy.data import load_tensors
    from onnx import numpy_helper

    export = zoo_export("facile")
    version_n = convert.convert_from_spec(export.spec, tmp_path / "facile.onnx").path
    # N+1: the same network with its largest weight matrix scaled by 1 % (a perturbed layer).
    model = load_onnx(version_n)
    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    largest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(largest) * np.float32(1.01), largest.name))
    perturbed = save_onnx(model, tmp_path / "facile_perturbed.onnx")
    events = load_tensors(export.reference_path)
    inputs = {t.name: events[t.name] for t in export.spec.inputs}
    answers = []
    for path in (version_n, perturbed):
        with OnnxRuntimeRunner(path, intra_op_threads=1) as runner:
            answers.append(runner.run(inputs))

    details = change_map(*answers, top=3).details
    assert details["task"] == "regression" and details["flip_fraction"] is None and details["permutation"] is None
    (only,) = details["per_class"].values()
    assert only["distance"] > 0
    name = details["output"]
    rows = details["largest_changes"]
    assert len(rows) == 3
    assert rows[0]["change"] == pytest.approx(abs(rows[0]["candidate"] - rows[0]["baseline"]), rel=1e-6)
    assert rows[0]["baseline"] == pytest.approx(float(np.ravel(answers[0][name][rows[0]["event"]])[0]))
