"""The gate's interface check between a published jet MLP (N) and what a candidate would publish: the same
tensors pass; a renamed output, reordered labels, another batch size or a changed preprocess.json fail
unless the change is declared."""
from __future__ import annotations

import json

import pytest

from hepdeploy.gate.interface import check_interface, interface_of_plan, interface_of_published
from hepdeploy.triton.plan import ModelRequest, plan_model
from hepdeploy.triton.repository import publish_model

pytestmark = pytest.mark.slow


def _candidate(jet_versions, model=None, **triton):
    settings = jet_versions.spec.triton.model_copy(update=triton)
    request = ModelRequest(model or jet_versions.retrained, "jet_mlp", triton=settings)
    return interface_of_plan(plan_model(request))


def test_a_retrained_model_with_the_same_tensors_keeps_the_interface(published, jet_versions):
    baseline = interface_of_published(published, 1)
    assert [t.name for t in baseline.outputs] == ["output"] and baseline.labels == jet_versions.labels
    assert baseline.batch_axis == "batch" and baseline.label_output == "output"
    result = check_interface(baseline, _candidate(jet_versions))
    assert result.check == "interface" and result.outcome == "PASS", result.reason
    recorded = json.loads(json.dumps(result.to_dict()))["details"]
    assert recorded["baseline"]["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 5]}]
    assert recorded["candidate"]["labels"] == jet_versions.labels


def test_a_renamed_output_fails_naming_it(published, jet_versions):
    candidate = _candidate(jet_versions, jet_versions.renamed_output("jet_scores"))
    result = check_interface(interface_of_published(published, 1), candidate)
    assert result.outcome == "FAIL"
    names = {f.name for f in result.deciding()}
    assert {"output output", "output jet_scores"} <= names
    assert "'output' removed or renamed (the candidate has 'jet_scores' instead)" in result.reason


def test_a_declared_interface_change_is_reported_not_failed(published, jet_versions):
    candidate = _candidate(jet_versions, jet_versions.renamed_output("jet_scores"))
    reason = "new client release reads jet_scores"
    result = check_interface(interface_of_published(published, 1), candidate, allow_change=reason)
    assert result.outcome == "PASS"
    assert result.details["allow_interface_change"] == reason and reason in result.reason
    assert {f.outcome for f in result.findings if f.name.startswith("output")} == {"INFO"}


def test_reordered_labels_fail_as_a_class_order_change(published, jet_versions):
    reordered = list(reversed(jet_versions.labels))
    result = check_interface(interface_of_published(published, 1), _candidate(jet_versions, labels=reordered))
    assert result.outcome == "FAIL"
    (finding,) = result.deciding()
    assert finding.name == "labels" and finding.candidate == reordered
    assert finding.message.startswith("class order changed in labels.txt")


def test_a_smaller_max_batch_size_fails(published, jet_versions):
    result = check_interface(interface_of_published(published, 1), _candidate(jet_versions, max_batch_size=2048))
    assert result.outcome == "FAIL"
    assert [f.name for f in result.deciding()] == ["max_batch_size"]
    assert result.deciding()[0].candidate == 2048


def test_the_baseline_config_can_be_read_as_it_was_at_a_git_ref(published, jet_versions):
    now = (published / "config.pbtxt").read_text()
    assert "max_batch_size: 4096" in now
    at_ref = now.replace("max_batch_size: 4096", "max_batch_size: 8192")
    baseline = interface_of_published(published, 1, config_text=at_ref)
    assert baseline.max_batch_size == 8192
    result = check_interface(baseline, interface_of_published(published, 1))
    assert result.outcome == "FAIL" and result.deciding()[0].baseline == 8192


def test_a_changed_preprocess_json_fails(published, jet_versions):
    rules = {"input_1": {"vars": [["jet_pt", None]]}, "output": {"names": jet_versions.labels}}
    (published / "preprocess.json").write_text(json.dumps(rules))
    baseline = interface_of_published(published, 1)
    assert baseline.preprocess == rules
    # The version's own preprocess.json comes before the model folder's.
    (published / "1" / "preprocess.json").write_text(json.dumps({**rules, "input_1": {"vars": [["jet_pt", 0.5]]}}))
    result = check_interface(baseline, interface_of_published(published, 1))
    assert result.outcome == "FAIL" and "preprocess.json changed in 'input_1'" in result.reason
    removed = check_interface(baseline, _candidate(jet_versions))
    assert removed.outcome == "FAIL" and "preprocess.json removed" in removed.reason


def test_a_publish_rewrites_the_shared_labels_so_the_baseline_is_read_as_it_was(published, jet_versions):
    config_before = (published / "config.pbtxt").read_text()
    labels_before = (published / "labels.txt").read_bytes()
    reordered = list(reversed(jet_versions.labels))
    triton = jet_versions.spec.triton.model_copy(update={"labels": reordered})
    spec = jet_versions.spec.model_copy(update={"triton": triton})
    publish_model(published.parent, ModelRequest(jet_versions.retrained, "jet_mlp", spec=spec))
    candidate = interface_of_published(published, 2)
    assert candidate.labels == reordered
    # labels.txt belongs to the model folder: N now announces N+1's labels, and the change is invisible ...
    assert check_interface(interface_of_published(published, 1), candidate).outcome == "PASS"
    # ... unless N is read as it was before the commit.
    baseline = interface_of_published(published, 1, config_before, files_at_ref={"labels.txt": labels_before})
    result = check_interface(baseline, candidate)
    assert result.outcome == "FAIL" and [f.name for f in result.deciding()] == ["labels"]
