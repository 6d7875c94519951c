"""Real small source models for the convert tests, built once per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from hepdeploy_convert_test_helpers import fixture_models  # noqa: E402


@pytest.fixture(scope="session")
def torch_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """State dicts, a TorchScript file, an ExportedProgram and an ONNX file of the fixture models."""
    import torch

    models = fixture_models()
    folder = tmp_path_factory.mktemp("torch_sources")
    out: dict[str, Path] = {"dir": folder}
    for name in ("two_in_two_out", "jet_mlp", "batch_scaled"):
        out[f"{name}.pt"] = folder / f"{name}.pt"
        torch.save(getattr(models, name)().state_dict(), out[f"{name}.pt"])
    jet = models.jet_mlp()
    out["jet_script.pt"] = folder / "jet_script.pt"
    torch.jit.script(jet).save(str(out["jet_script.pt"]))
    out["jet.pt2"] = folder / "jet.pt2"
    program = torch.export.export(jet, (torch.randn(4, 16),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    torch.export.save(program, str(out["jet.pt2"]))
    # An ONNX file with names of its own (features -> scores), opset 17, dynamic batch.
    out["jet.onnx"] = folder / "jet.onnx"
    torch.onnx.export(jet, (torch.randn(3, 16),), str(out["jet.onnx"]), dynamo=False, opset_version=17,
                      input_names=["features"], output_names=["scores"],
                      dynamic_axes={"features": {0: "N"}, "scores": {0: "N"}})
    return out


@pytest.fixture(scope="session")
def keras_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-input two-output Keras model as .keras, .h5 and a SavedModel folder."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    import keras

    folder = tmp_path_factory.mktemp("keras_sources")
    keras.utils.set_random_seed(3)
    parts = keras.Input((None, 4), name="parts")
    glob = keras.Input((3,), name="glob")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(3, activation="relu")(parts))
    o1 = keras.layers.Multiply(name="o1")([pooled, glob])
    o2 = keras.layers.Dense(2, name="o2")(pooled)
    model = keras.Model([parts, glob], [o1, o2])
    out = {"dir": folder, "model.keras": folder / "model.keras", "model.h5": folder / "model.h5",
           "savedmodel": folder / "savedmodel"}
    model.save(out["model.keras"])
    model.save(out["model.h5"])
    model.export(str(out["savedmodel"]), verbose=False)
    return out
