"""ONNX pass-through: checker, opset conversion, renaming to the spec, rank checks."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.convert import convert_from_spec
from hepdeploy.errors import ConversionError, SpecError
from hepdeploy.spec import spec_from_dict


def _spec(path, **extra):
    data = {"name": "jet", "source": {"framework": "onnx", "path": str(path)},
            "inputs": [{"name": "input_1", "shape": ["batch", 16]}],
            "outputs": [{"name": "probs", "shape": ["batch", 5]}]}
    data.update(extra)
    return spec_from_dict(data)


def test_passthrough_renames_to_the_spec_and_keeps_the_numbers(torch_sources, tmp_path):
    artifact = convert_from_spec(_spec(torch_sources["jet.onnx"]), tmp_path / "jet.onnx")
    model = onnx.load(str(artifact.path))
    assert [v.name for v in model.graph.input] == ["input_1"]
    assert [v.name for v in model.graph.output] == ["probs"]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][0] == "batch"
    assert artifact.sidecar.exporter == "onnx-passthrough" and artifact.sidecar.opset == 17
    assert artifact.sidecar.steps[0].parameters["renamed_inputs"] == {"features": "input_1"}
    x = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32)
    original = OnnxRuntimeRunner(torch_sources["jet.onnx"]).run({"features": x})["scores"]
    np.testing.assert_array_equal(OnnxRuntimeRunner(artifact.path).run({"input_1": x})["probs"], original)


def test_passthrough_converts_the_opset(torch_sources, tmp_path):
    artifact = convert_from_spec(_spec(torch_sources["jet.onnx"], opset=19), tmp_path / "jet.onnx")
    assert artifact.sidecar.opset == 19
    assert artifact.sidecar.steps[0].parameters["original_opset"] == 17
    assert onnx.load(str(artifact.path)).opset_import[0].version == 19


def test_rank_that_disagrees_with_the_model_is_a_spec_error_naming_the_tensor(torch_sources, tmp_path):
    spec = _spec(torch_sources["jet.onnx"], inputs=[{"name": "input_1", "shape": ["batch", 16, 1]}])
    with pytest.raises(SpecError, match=r"input 'input_1' has rank 3 .* rank 2"):
        convert_from_spec(spec, tmp_path / "jet.onnx")
    assert not (tmp_path / "jet.onnx").exists()


def test_wrong_fixed_size_and_wrong_count_are_spec_errors(torch_sources, tmp_path):
    with pytest.raises(SpecError, match="dimension 1 is 15 in the spec but 16"):
        convert_from_spec(_spec(torch_sources["jet.onnx"], inputs=[{"name": "input_1", "shape": ["batch", 15]}]),
                          tmp_path / "jet.onnx")
    two = [{"name": "a", "shape": ["batch", 16]}, {"name": "b", "shape": ["batch", 1]}]
    with pytest.raises(SpecError, match="1 input"):
        convert_from_spec(_spec(torch_sources["jet.onnx"], inputs=two), tmp_path / "jet.onnx")


def test_a_static_model_cannot_be_given_a_dynamic_dimension(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])])
    path = tmp_path / "static.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    spec = spec_from_dict({"name": "static", "source": {"framework": "onnx", "path": str(path)},
                           "inputs": [{"name": "x", "shape": ["batch", 16]}],
                           "outputs": [{"name": "y", "shape": ["batch", 16]}]})
    with pytest.raises(ConversionError, match="fixes it to 4"):
        convert_from_spec(spec, tmp_path / "out.onnx")
