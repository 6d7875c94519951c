"""Validation of real exported and optimized zoo networks against their PyTorch/Keras sources."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hepdeploy.judgement import Judgement
from hepdeploy.validate import Localization, validate_candidate, validate_runner, write_reports

pytestmark = pytest.mark.slow


def _scaled_weight_copy(source: Path, target: Path, factor: float = 1.01) -> tuple[str, list[str]]:
    """Copy an ONNX model with its second matrix weight scaled by ``factor``.

    Returns the weight's name and the nodes allowed to be blamed: the nodes that use the
    weight and the nodes right after them.
    """
    model = onnx.load(str(source))
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    matrices = [init for init in model.graph.initializer if len(init.dims) == 2]
    weight = matrices[1]
    value = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array((value * factor).astype(value.dtype), weight.name))
    onnx.save(model, str(target))
    users = consumers[weight.name]
    after = [n for user in users for out in user.output for n in consumers.get(out, [])]
    return weight.name, [n.name for n in users + after]


def test_fp32_passes_against_its_pytorch_source(jet_case) -> None:
    report = validate_candidate(jet_case.fp32, jet_case.reference, spec=jet_case.zoo.spec)
    assert report.passed, report.verdict
    assert report.precision == "fp32" and report.policy == "numerical"
    assert report.providers == ["CPUExecutionProvider"]
    assert report.reference["framework"] == "torch" and len(report.reference["sha256"]) == 64
    assert report.physics.ran and report.physics.task == "classification"


def test_fp32_passes_against_its_keras_source(facile_case) -> None:
    report = validate_candidate(facile_case.fp32, facile_case.reference, spec=facile_case.zoo.spec)
    assert report.passed, report.verdict
    assert report.physics.task == "regression"


def test_changed_weight_fails_and_is_localised(jet_case, tmp_path: Path) -> None:
    changed = tmp_path / "changed.onnx"
    weight, blamable = _scaled_weight_copy(jet_case.fp32, changed)
    report = validate_candidate(changed, jet_case.reference, spec=jet_case.zoo.spec,
                                localization=Localization(fp32_model=jet_case.fp32))
    assert not report.passed
    assert not report.numerical[0].passed
    loc = report.localization
    assert loc is not None and loc.first_divergent_node in blamable, (weight, loc.summary())
    # Everything computed before the changed weight agrees exactly.
    first = next(i for i, t in enumerate(loc.tensors) if t.exceeds)
    assert first > 0 and all(not t.exceeds for t in loc.tensors[:first])


def test_fp16_passes_at_fp16_tolerances_and_fails_at_fp32(jet_case) -> None:
    fp16 = jet_case.variant("fp16")
    at16 = validate_candidate(fp16, jet_case.reference, spec=jet_case.zoo.spec, judgement=Judgement(policy="numerical"))
    at32 = validate_candidate(fp16, jet_case.reference, spec=jet_case.zoo.spec,
                              judgement=Judgement(precision="fp32", policy="numerical"))
    assert at16.precision == "fp16" and at16.passed, at16.verdict
    assert not at32.passed
    assert at32.numerical[0].max_abs_error > 1e-5


def test_nan_in_one_output_fails_under_every_policy(jet_case, tmp_path: Path) -> None:
    model = onnx.load(str(jet_case.fp32))
    out = model.graph.output[0].name
    producer = next(n for n in model.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = "before_nan"
    poison = np.zeros(5, np.float32)
    poison[2] = np.nan
    model.graph.initializer.append(numpy_helper.from_array(poison, "poison"))
    model.graph.node.append(onnx.helper.make_node("Add", ["before_nan", "poison"], [out], name="inject_nan"))
    broken = tmp_path / "nan.onnx"
    onnx.save(model, str(broken))
    for policy in ("numerical", "physics", "either"):
        report = validate_candidate(broken, jet_case.reference, spec=jet_case.zoo.spec,
                                    judgement=Judgement(precision="int8", policy=policy))
        assert not report.passed
        assert "NaN/Inf values where the reference is finite" in report.verdict


def test_int8_physics_reports_auc_changes(jet_case) -> None:
    int8 = jet_case.variant("int8-cpu")
    report = validate_candidate(int8, jet_case.reference, spec=jet_case.zoo.spec, localization=Localization())
    assert report.precision == "int8" and report.policy == "physics"
    aucs = [c for c in report.physics.checks if c.metric.startswith("auc[") and c.bin is None]
    assert len(aucs) == 5
    # ... and again in each of the zoo spec's three jet pT bins.
    assert len([c for c in report.physics.checks if c.metric.startswith("auc[") and c.bin]) == 15
    assert all(0.5 < c.reference <= 1 and 0.5 < c.candidate <= 1 for c in aucs)
    assert any(abs(c.change) > 1e-5 for c in aucs)  # INT8 moves the AUCs, and the report says by how much
    # Found without being told: the FP32 parent artifact next to the variant (sidecar sha256).
    assert report.localization is not None and report.localization.fp32_model.endswith("fp32.onnx")
    matched = [t for t in report.localization.tensors if t.candidate_tensor]
    assert len(matched) >= len(report.localization.tensors) // 2
    # Activations wrapped in QuantizeLinear/DequantizeLinear are compared as their consumers read them.
    assert any(t.candidate_tensor != t.tensor for t in matched)


def test_int8_regression_reports_resolution_change(facile_case) -> None:
    report = validate_candidate(facile_case.variant("int8-trt"), facile_case.reference, spec=facile_case.zoo.spec)
    by_name = {c.metric: c for c in report.physics.checks}
    assert {"bias", "resolution"} <= set(by_name)
    assert by_name["resolution"].change is not None and abs(by_name["resolution"].change) > 0
    assert report.passed == all(c.passed for c in report.physics.checks) or report.hard_failures


def test_any_runner_can_be_validated(jet_case) -> None:
    """The PyTorch source itself, through the Runner interface, agrees with the golden outputs."""
    from hepdeploy.backend.sources import source_runner

    report = validate_runner(source_runner(jet_case.zoo.spec), jet_case.reference, name="torch-source",
                             spec=jet_case.zoo.spec)
    assert report.passed and report.numerical[0].max_abs_error == 0.0


def test_reports_for_real_variants(jet_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xmlschema

    changed = tmp_path / "changed.onnx"
    _scaled_weight_copy(jet_case.fp32, changed)
    reports = [
        validate_candidate(jet_case.fp32, jet_case.reference, spec=jet_case.zoo.spec),
        validate_candidate(jet_case.variant("int8-cpu"), jet_case.reference, spec=jet_case.zoo.spec),
        validate_candidate(changed, jet_case.reference, spec=jet_case.zoo.spec,
                           localization=Localization(fp32_model=jet_case.fp32)),
    ]
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    written = write_reports(reports, tmp_path / "report")
    names = {p.name for p in written}
    assert {"report.json", "junit.xml", "report.md", "report.html"} <= names

    schema = xmlschema.XMLSchema(str(Path(__file__).with_name("junit.xsd")))
    junit = tmp_path / "report" / "junit.xml"
    schema.validate(str(junit))
    tree = schema.to_dict(str(junit))
    suites = tree["testsuite"]
    assert [s["@name"] for s in suites] == ["fp32", "int8-cpu", "changed"]
    fp32_cases = suites[0]["testcase"]
    # one case per output x numerical check + one per physics metric
    assert len(fp32_cases) == 3 + len(reports[0].physics.checks)
    assert int(suites[2]["@failures"]) >= 1 and int(suites[0]["@failures"]) == 0

    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["schema"] == "hepdeploy.validation-report" and data["schema_version"] == 1
    assert data["passed"] is False and data["default_tolerances"]["fp16"]["atol"] > 0
    int8 = data["variants"][1]
    assert any(c["metric"].startswith("auc[") and c["change"] is not None for c in int8["physics"]["checks"])

    assert summary.read_text().startswith("earlier step\n## hepdeploy validation: ❌ FAIL")
    html = (tmp_path / "report" / "report.html").read_text()
    # Outside a build the headline is the worst candidate's; the opening table names each candidate's verdict
    # and deciding check; the bins where a check fails or is undecided are unfolded, the others folded.
    assert data["headline"]["outcome"] == "FAIL" and data["model"] is None and data["decisions"] is None
    assert html.index("<table id='decisions'>") < html.index("<h2 id='fp32'>")
    for variant in data["variants"]:
        assert escape(variant["deciding"]) in html
    assert data["variants"][2]["allowance_use"] > 1  # the changed weight is past its tolerance
    judged = [c for v in data["variants"] for c in v["physics"]["checks"]]
    assert ("<details open><summary>" in html) is any(c["outcome"] in ("FAIL", "UNDECIDED") for c in judged)
    assert "<details><summary>plots (" in html
    pngs = [p for p in written if p.suffix == ".png"]
    assert any(p.name.endswith("_roc.png") for p in pngs)
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{png.name}" in html


def test_graph_model_without_batch_axis(tracking_case, tmp_path: Path) -> None:
    """Interaction network: one graph per call (hits and edges), per-edge labels, edge metrics."""
    ref = tracking_case.reference
    assert not ref.batched and ref.labels["labels"].shape[0] == ref.inputs["edge_attr"].shape[0]
    report = validate_candidate(tracking_case.fp32, ref, spec=tracking_case.zoo.spec,
                                judgement=Judgement(chunk_size=100), localization=Localization(fp32_model=tracking_case.fp32))
    assert report.passed, report.verdict
    metrics = {c.metric: c for c in report.physics.checks}
    assert {"edge_auc", "edge_efficiency@0.5", "edge_purity@0.5"} <= set(metrics)
    assert 0.5 < metrics["edge_auc"].reference < 1
    assert report.localization.first_divergent_node is None


# ResNet-50's conversion self-check at batch 64 takes ~15 GB on a CPU: it runs only when asked
# for (HEPDEPLOY_TEST_HEAVY=1); the others run in every CI job.
_HEAVY = {"resnet50"}


@pytest.mark.parametrize("network", ["deepjet", "particlenet", "resnet50"])
def test_fp32_of_other_zoo_networks_passes(network: str, zoo_export, tmp_path: Path) -> None:
    import os

    from hepdeploy.convert import convert_from_spec
    from hepdeploy.validate import make_reference

    if network in _HEAVY and not os.environ.get("HEPDEPLOY_TEST_HEAVY"):
        pytest.skip(f"{network}: heavy to train; set HEPDEPLOY_TEST_HEAVY=1 to include it")
    exported = zoo_export(network)
    artifact = convert_from_spec(exported.spec, tmp_path / "fp32.onnx")
    reference = make_reference(exported.spec, exported.reference_path, max_samples=500)
    report = validate_candidate(artifact.path, reference, spec=exported.spec)
    assert report.passed, report.verdict
    assert report.physics.ran and report.physics.task == "classification"
