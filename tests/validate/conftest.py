"""Fixtures of the validate tests: real (small) models and their reference sets.

``jet_case``: the zoo's jet_mlp (PyTorch flavour, reduced training) converted to an FP32
artifact, its reference set made by running the PyTorch source, and lazily its FP16 and
INT8 variants made by the optimize stage. ``tiny_onnx``: an untrained 2-layer MLP
exported straight to ONNX (no training, for CLI and bad-input tests).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@dataclass
class ModelCase:
    zoo: Any
    folder: Path
    fp32: Path
    reference: Any
    variants: dict[str, Path] = field(default_factory=dict)

    def variant(self, name: str) -> Path:
        if name not in self.variants:
            from hepdeploy.optimize import optimize_artifact

            out = self.folder / f"{name}.onnx"
            result = optimize_artifact(self.fp32, name, out, calibration=self.zoo.calibration_path, spec=self.zoo.spec)
            assert result.status == "ok", result.line()
            self.variants[name] = out
        return self.variants[name]


def _case(zoo_export: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory, name: str,
          flavour: str | None) -> ModelCase:
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.validate import make_reference

    exported = zoo_export(name, flavour=flavour)
    folder = tmp_path_factory.mktemp(f"validate-{name}")
    artifact = convert_from_spec(exported.spec, folder / "fp32.onnx")
    reference = make_reference(exported.spec, exported.reference_path)
    return ModelCase(exported, folder, artifact.path, reference)


@pytest.fixture(scope="session")
def jet_case(zoo_export: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    return _case(zoo_export, tmp_path_factory, "jet_mlp", "torch")


@pytest.fixture(scope="session")
def facile_case(zoo_export: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    return _case(zoo_export, tmp_path_factory, "facile", None)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained MLP x[batch, 8] -> (prob[batch, 3], energy[batch, 1]) as a bare .onnx."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(8, 16)
            self.cls = torch.nn.Linear(16, 3)
            self.reg = torch.nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.relu(self.body(x))
            return torch.softmax(self.cls(h), dim=-1), self.reg(h)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), (torch.zeros(4, 8),), str(path), input_names=["x"],
                      output_names=["prob", "energy"], dynamic_axes={"x": {0: "batch"}, "prob": {0: "batch"},
                                                                      "energy": {0: "batch"}},
                      dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs and labels for tiny_onnx as a data .npz."""
    from hepdeploy.data import save_tensors

    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("tiny-data") / "data.npz"
    save_tensors(path, {"x": rng.normal(size=(300, 8)).astype(np.float32),
                        "labels": rng.integers(0, 3, 300)})
    return path


@pytest.fixture(scope="session")
def tracking_case(zoo_export: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    return _case(zoo_export, tmp_path_factory, "interaction_network", None)
