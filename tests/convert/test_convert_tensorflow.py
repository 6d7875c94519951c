"""Keras (.keras, .h5) and TF SavedModel sources through tf2onnx, renamed to the spec."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hepdeploy_convert_test_helpers import TWO_IO

from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.backend.tf import KerasRunner
from hepdeploy.convert import convert_from_spec
from hepdeploy.errors import SpecError
from hepdeploy.spec import spec_from_dict

pytestmark = pytest.mark.slow  # TensorFlow's import alone takes several seconds


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _all_names(model):
    names = {v.name for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]}
    names |= {n for node in model.graph.node for n in [*node.input, *node.output]}
    return names


@pytest.mark.parametrize("source_key,framework", [("model.keras", "keras"), ("model.h5", "keras"),
                                                  ("savedmodel", "savedmodel")])
def test_keras_and_savedmodel_convert_with_spec_names(keras_sources, tmp_path, source_key, framework):
    spec = spec_from_dict({"name": "kmodel", "source": {"framework": framework,
                                                         "path": str(keras_sources[source_key])}, **TWO_IO})
    artifact = convert_from_spec(spec, tmp_path / "k.onnx")
    model = onnx.load(str(artifact.path))
    assert [v.name for v in model.graph.input] == ["parts", "glob"]
    assert [v.name for v in model.graph.output] == ["o1", "o2"]
    assert _dims(model.graph.input[0]) == ["batch", "n_particles", 4]
    assert _dims(model.graph.output[0]) == ["batch", 3]
    dim_params = {d.dim_param for v in [*model.graph.input, *model.graph.output] for d in v.type.tensor_type.shape.dim}
    assert not any(p.startswith("unk__") for p in dim_params)
    assert not any(n.endswith(":0") for n in [v.name for v in [*model.graph.input, *model.graph.output]])
    side = artifact.sidecar
    assert side.exporter == "tf2onnx" and side.source.framework == framework
    assert "tensorflow" in side.source.framework_version and side.source.sha256
    assert side.steps[-1].name == "self-check" and side.steps[-1].parameters["passed"]
    # Sizes the self-check never used: batch 3, 21 particles.
    import keras

    source = KerasRunner(keras.models.load_model(keras_sources["model.keras"]), ["parts", "glob"], ["o1", "o2"])
    rng = np.random.default_rng(9)
    inputs = {"parts": rng.standard_normal((3, 21, 4)).astype(np.float32),
              "glob": rng.standard_normal((3, 3)).astype(np.float32)}
    got, want = OnnxRuntimeRunner(artifact.path).run(inputs), source.run(inputs)
    for name in ("o1", "o2"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-4)


def test_keras_spec_with_the_wrong_rank_names_the_tensor(keras_sources, tmp_path):
    tensors = {"inputs": [{"name": "parts", "shape": ["batch", 4]}, TWO_IO["inputs"][1]], "outputs": TWO_IO["outputs"]}
    spec = spec_from_dict({"name": "kmodel", "source": {"framework": "keras",
                                                         "path": str(keras_sources["model.keras"])}, **tensors})
    with pytest.raises(SpecError, match="'parts' has rank 2"):
        convert_from_spec(spec, tmp_path / "k.onnx")
    assert not (tmp_path / "k.onnx").exists()
