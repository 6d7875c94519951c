"""PyTorch sources (factory + state dict, TorchScript, ExportedProgram) to checked ONNX artifacts."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from hepdeploy_convert_test_helpers import FIXTURE_MODULE, JET, TWO_IO, fixture_models

from hepdeploy.artifacts import read_artifact
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.backend.pytorch import TorchModuleRunner
from hepdeploy.convert import convert_from_spec
from hepdeploy.convert.selfcheck import self_check
from hepdeploy.errors import DisagreementError, SpecError
from hepdeploy.spec import spec_from_dict


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _torch_spec(torch_sources, model: str, tensors: dict, **extra):
    data = {"name": model, "source": {"framework": "torch", "factory": f"{FIXTURE_MODULE}:{model}",
                                      "weights": str(torch_sources[f"{model}.pt"])}, **tensors, **extra}
    return spec_from_dict(data, base_dir=torch_sources["dir"])


def _fresh_inputs(sizes: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    return {"parts": rng.standard_normal((sizes["batch"], sizes["n"], 4)).astype(np.float32),
            "glob": rng.standard_normal((sizes["batch"], 3)).astype(np.float32)}


def test_two_inputs_two_outputs_second_dynamic_dim_with_dynamo(torch_sources, tmp_path):
    spec = _torch_spec(torch_sources, "two_in_two_out", TWO_IO)
    artifact = convert_from_spec(spec, tmp_path / "two.onnx", exporter="dynamo")
    model = onnx.load(str(artifact.path))
    assert [v.name for v in model.graph.input] == ["parts", "glob"]
    assert [v.name for v in model.graph.output] == ["o1", "o2"]
    assert _dims(model.graph.input[0]) == ["batch", "n_particles", 4]
    assert _dims(model.graph.output[1]) == ["batch", 2]
    assert not list(tmp_path.glob("*.data")), "weights must be inside the .onnx"
    side = json.loads((tmp_path / "two.json").read_text())
    assert side["exporter"] == "torch.onnx.dynamo" and side["opset"] >= 18
    assert side["source"]["sha256"] and side["source"]["path"].endswith("two_in_two_out.pt")
    assert side["source"]["factory"].endswith(":two_in_two_out") and side["source"]["framework_version"].startswith("2.")
    check = next(s for s in side["steps"] if s["name"] == "self-check")
    assert check["parameters"]["passed"] and {s["batch"] for s in check["parameters"]["sizes"]} == {1, 64}
    assert len({s["n_particles"] for s in check["parameters"]["sizes"]}) == 2
    # Sizes the self-check never used still agree with the source: nothing was baked in.
    source = TorchModuleRunner(fixture_models().two_in_two_out(), ["parts", "glob"], ["o1", "o2"])
    inputs = _fresh_inputs({"batch": 5, "n": 11})
    got, want = OnnxRuntimeRunner(artifact.path).run(inputs), source.run(inputs)
    for name in ("o1", "o2"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-4)


def test_two_inputs_two_outputs_with_torchscript_exporter(torch_sources, tmp_path):
    spec = _torch_spec(torch_sources, "two_in_two_out", TWO_IO, opset=17)
    artifact = convert_from_spec(spec, tmp_path / "two.onnx", exporter="torchscript")
    assert artifact.sidecar.exporter == "torch.onnx.torchscript" and artifact.sidecar.opset == 17
    model = onnx.load(str(artifact.path))
    assert _dims(model.graph.input[0]) == ["batch", "n_particles", 4]
    inputs = _fresh_inputs({"batch": 3, "n": 2})
    source = TorchModuleRunner(fixture_models().two_in_two_out(), ["parts", "glob"], ["o1", "o2"])
    got, want = OnnxRuntimeRunner(artifact.path).run(inputs), source.run(inputs)
    np.testing.assert_allclose(got["o2"], want["o2"], atol=1e-5, rtol=1e-4)


def test_auto_with_an_old_opset_uses_the_torchscript_exporter(torch_sources, tmp_path):
    spec = _torch_spec(torch_sources, "jet_mlp", JET, opset=16)
    artifact = convert_from_spec(spec, tmp_path / "jet.onnx", exporter="auto")
    assert artifact.sidecar.exporter == "torch.onnx.torchscript" and artifact.sidecar.opset == 16


def test_torchscript_file_takes_the_torchscript_exporter_and_the_sidecar_says_why(torch_sources, tmp_path):
    spec = spec_from_dict({"name": "jet", "source": {"framework": "torchscript",
                                                      "path": str(torch_sources["jet_script.pt"])}, **JET})
    artifact = convert_from_spec(spec, tmp_path / "jet.onnx", exporter="auto")
    export = artifact.sidecar.steps[0]
    assert artifact.sidecar.exporter == "torch.onnx.torchscript"
    assert export.parameters["requested_exporter"] == "auto"
    assert export.parameters["exporter_order"] == ["torchscript", "dynamo"]
    assert "TorchScript module" in export.parameters["exporter_choice"] and "fallback_from" not in export.parameters
    assert artifact.sidecar.source.sha256 and artifact.sidecar.source.framework == "torchscript"
    assert read_artifact(artifact.path).sidecar.exporter == "torch.onnx.torchscript"


def test_exported_program_converts_with_dynamo(torch_sources, tmp_path):
    spec = spec_from_dict({"name": "jet", "source": {"framework": "exported_program",
                                                      "path": str(torch_sources["jet.pt2"])}, **JET})
    artifact = convert_from_spec(spec, tmp_path / "jet.onnx")
    assert artifact.sidecar.exporter == "torch.onnx.dynamo"
    model = onnx.load(str(artifact.path))
    assert [v.name for v in model.graph.input] == ["input_1"] and _dims(model.graph.input[0]) == ["batch", 16]
    assert [v.name for v in model.graph.output] == ["probs"]


def test_a_graph_that_differs_from_its_source_fails_and_is_not_written(torch_sources, tmp_path):
    spec = _torch_spec(torch_sources, "batch_scaled", {"inputs": [{"name": "x", "shape": ["batch", 4]}],
                                                      "outputs": [{"name": "y", "shape": ["batch", 2]}]})
    with pytest.raises(DisagreementError, match="disagrees with its source") as info:
        convert_from_spec(spec, tmp_path / "scaled.onnx", exporter="torchscript")
    assert info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_auto_tries_torchscript_first_on_a_small_model_and_keeps_it_only_when_exact(torch_sources, tmp_path):
    # The jet MLP's TorchScript graph is exact: dynamo's fixed cost is not paid.
    jet = convert_from_spec(_torch_spec(torch_sources, "jet_mlp", JET), tmp_path / "jet.onnx", exporter="auto")
    export = jet.sidecar.steps[0].parameters
    assert jet.sidecar.exporter == "torch.onnx.torchscript" and "fallback_from" not in export
    assert "small model (181 parameters" in export["exporter_choice"]
    # BatchScaled's TorchScript graph bakes the traced batch in: the self-check rejects it and dynamo is tried
    # next (it specialises the batch too, and says so).
    spec = _torch_spec(torch_sources, "batch_scaled", {"inputs": [{"name": "x", "shape": ["batch", 4]}],
                                                      "outputs": [{"name": "y", "shape": ["batch", 2]}]})
    with pytest.raises(DisagreementError, match=r"torchscript: DisagreementError: .*; dynamo: .*fixes it to 2"):
        convert_from_spec(spec, tmp_path / "scaled.onnx", exporter="auto")
    assert not (tmp_path / "scaled.onnx").exists()


def test_exporter_order_follows_what_the_model_is(torch_sources):
    from hepdeploy.convert.from_torch import SMALL_MODEL_PARAMETERS, exporter_order

    small = _torch_spec(torch_sources, "jet_mlp", JET)
    assert exporter_order(fixture_models().jet_mlp(), small, "auto")[0] == ["torchscript", "dynamo"]
    width = int(SMALL_MODEL_PARAMETERS ** 0.5) + 1
    large = torch.nn.Linear(width, width)
    order, why = exporter_order(large, small, "auto")
    assert order == ["dynamo", "torchscript"] and f"{width * width + width} parameters" in why
    assert exporter_order(large, small, "torchscript") == (["torchscript"], "--exporter torchscript")
    old = _torch_spec(torch_sources, "jet_mlp", JET, opset=16)
    assert exporter_order(large, old, "auto")[0] == ["torchscript"]


def test_self_check_catches_a_corrupted_artifact(torch_sources, tmp_path):
    spec = _torch_spec(torch_sources, "jet_mlp", JET, opset=17)
    artifact = convert_from_spec(spec, tmp_path / "jet.onnx", exporter="torchscript")
    source = TorchModuleRunner(fixture_models().jet_mlp(), ["input_1"], ["probs"])
    model = onnx.load(str(artifact.path))
    assert self_check(model, source, spec).passed
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = onnx.numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    with pytest.raises(DisagreementError, match="probs"):
        self_check(model, source, spec)
    report = self_check(model, source, spec, raise_on_failure=False)
    assert not report.passed and report.max_abs_error["probs"] > 1e-5


def test_a_spec_whose_rank_does_not_fit_the_torch_model_is_a_spec_error(torch_sources, tmp_path):
    spec = _torch_spec(torch_sources, "jet_mlp", {"inputs": [{"name": "input_1", "shape": ["batch", 16, 2]}],
                                                  "outputs": JET["outputs"]})
    with pytest.raises(SpecError, match="input_1"):
        convert_from_spec(spec, tmp_path / "jet.onnx", exporter="torchscript")
    assert not (tmp_path / "jet.onnx").exists()


@pytest.mark.slow
def test_zoo_source_is_exported_then_converted(tmp_path):
    from hepdeploy.convert import convert_zoo

    spec = spec_from_dict({"name": "jet_zoo", "source": {"framework": "zoo", "zoo": "jet_mlp", "zoo_flavour": "torch"},
                           "inputs": [{"name": "input_1", "shape": ["batch", 16]}],
                           "outputs": [{"name": "output", "shape": ["batch", 5]}]})
    artifact = convert_zoo(spec, tmp_path / "jet.onnx", exporter="torchscript", work_dir=tmp_path / "zoo",
                           train=False)
    side = json.loads((tmp_path / "jet.json").read_text())
    assert side["model_name"] == "jet_zoo" and side["source"]["zoo"] == "jet_mlp"
    assert side["source"]["framework"] == "torch" and side["exporter"] == "torch.onnx.torchscript"
    assert (tmp_path / "zoo" / "jet_mlp_torch.pt").is_file()
    model = onnx.load(str(artifact.path))
    assert [v.name for v in model.graph.input] == ["input_1"] and [v.name for v in model.graph.output] == ["output"]
