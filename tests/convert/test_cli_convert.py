"""`hepdeploy convert` and `hepdeploy inspect` on real small models."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from hepdeploy_convert_test_helpers import FIXTURE_MODULE, HERE, JET

from hepdeploy.artifacts import read_artifact
from hepdeploy.backend.loaders import sniff_framework
from hepdeploy.cli import main


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_state_dict_with_factory_and_input_options(torch_sources, tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)
    code, out, err = invoke("convert", torch_sources["jet_mlp.pt"], "--factory", f"{FIXTURE_MODULE}:jet_mlp",
                            "--input", "input_1:float32:batch,16", "-o", tmp_path / "jet.onnx",
                            "--exporter", "torchscript")
    assert code == 0, err
    assert "wrote" in out and "jet.onnx" in out
    side = read_artifact(tmp_path / "jet.onnx").sidecar
    assert side.model_name == "jet" and side.exporter == "torch.onnx.torchscript"
    # Outputs found by running the model at two sizes: the batch axis is recognised as 'batch'.
    assert [(t.name, t.shape) for t in side.outputs] == [("output_0", ["batch", 5])]


def test_state_dict_without_factory_says_what_is_needed(torch_sources, tmp_path):
    code, _, err = invoke("convert", torch_sources["jet_mlp.pt"], "-o", tmp_path / "jet.onnx",
                          "--input", "input_1:float32:batch,16")
    assert code == 2 and "give --factory" in err and "jet_mlp.pt" in err


def test_onnx_source_without_a_spec_keeps_its_own_tensors(torch_sources, tmp_path):
    code, out, err = invoke("convert", torch_sources["jet.onnx"], "-o", tmp_path / "copy.onnx")
    assert code == 0, err
    side = read_artifact(tmp_path / "copy.onnx").sidecar
    assert [(t.name, t.shape) for t in side.inputs] == [("features", ["N", 16])]
    assert [(t.name, t.shape) for t in side.outputs] == [("scores", ["N", 5])]


def test_spec_file_and_source_override(torch_sources, tmp_path):
    spec = tmp_path / "jet.yaml"
    spec.write_text(yaml.safe_dump({"name": "jet_tagger", "source": {"framework": "onnx", "path": "elsewhere.onnx"},
                                    **JET, "dims": {"batch": {"min": 1, "opt": 8, "max": 32}}}))
    code, _, err = invoke("convert", "--spec", spec, torch_sources["jet.onnx"], "-o", tmp_path / "jet.onnx")
    assert code == 0, err
    side = read_artifact(tmp_path / "jet.onnx").sidecar
    assert side.model_name == "jet_tagger" and [t.name for t in side.inputs] == ["input_1"]
    check = side.steps[-1]
    assert {s["batch"] for s in check.parameters["sizes"]} == {1, 32}  # the spec's max, not 64


def test_file_kinds_are_recognised(torch_sources):
    assert sniff_framework(torch_sources["jet_script.pt"]) == "torchscript"
    assert sniff_framework(torch_sources["jet.pt2"]) == "exported_program"
    assert sniff_framework(torch_sources["jet_mlp.pt"]) == "torch_pickle"
    assert sniff_framework(torch_sources["jet.onnx"]) == "onnx"


def test_torchscript_file_through_the_cli(torch_sources, tmp_path):
    code, _, err = invoke("convert", torch_sources["jet_script.pt"], "--input", "x:float32:batch,16",
                          "--output-tensor", "probs:float32:batch,5", "-o", tmp_path / "jet.onnx")
    assert code == 0, err
    side = read_artifact(tmp_path / "jet.onnx").sidecar
    assert side.source.framework == "torchscript" and side.exporter == "torch.onnx.torchscript"
    assert "TorchScript module" in side.steps[0].parameters["exporter_choice"]


def test_inspect_text_and_json(torch_sources):
    code, out, err = invoke("inspect", torch_sources["jet.onnx"])
    assert code == 0, err
    assert "features" in out and "[N, 16]" in out and "Gemm" in out and "parameters: 181" in out
    code, out, err = invoke("inspect", "--json", torch_sources["jet.onnx"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["parameters"] == 16 * 8 + 8 + 8 * 5 + 5
    assert summary["opsets"]["ai.onnx"] == 17
    assert summary["op_types"]["Gemm"] == 2 and summary["op_types"]["Softmax"] == 1
    assert summary["inputs"] == [{"name": "features", "dtype": "float32", "shape": ["N", 16]}]


@pytest.mark.slow
def test_keras_file_without_a_spec(keras_sources, tmp_path):
    code, _, err = invoke("convert", keras_sources["model.keras"], "-o", tmp_path / "k.onnx")
    assert code == 0, err
    side = read_artifact(tmp_path / "k.onnx").sidecar
    assert [t.name for t in side.inputs] == ["parts", "glob"]
    assert side.inputs[0].shape == ["batch", "parts_dim1", 4]
    assert [(t.name, t.shape) for t in side.outputs] == [("o1", ["batch", 3]), ("o2", ["batch", 2])]
