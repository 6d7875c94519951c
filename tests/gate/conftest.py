"""Fixtures of the gate's check tests: two versions of the zoo's jet MLP on the same events.

``jet_versions``: version N (the Keras jet MLP trained with seed 0, reduced budget) and N+1 (the same
network trained with seed 1), both converted to ONNX, and N's reference events (2000 jets with labels
and jet_pt; the outputs are N's).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@dataclass
class JetVersions:
    spec: Any  # the zoo's spec of version N
    zoo: Any  # its ZooExport (reference_path: the events' data file)
    folder: Path
    version_n: Path  # ONNX
    retrained: Path  # ONNX of N+1: another training seed
    events: Any  # ReferenceSet: inputs, N's outputs, labels, jet_pt

    def outputs_of(self, model: Path, rows: slice = slice(None)) -> dict[str, np.ndarray]:
        from hepdeploy.backend.onnxrt import OnnxRuntimeRunner

        with OnnxRuntimeRunner(model) as runner:
            return runner.run({name: value[rows] for name, value in self.events.inputs.items()})


@pytest.fixture(scope="session")
def jet_versions(zoo_export: Callable[..., Any], zoo_cache_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> JetVersions:
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.model_zoo import ExportOptions, export_network
    from hepdeploy.validate import make_reference

    version_n = zoo_export("jet_mlp")
    folder = tmp_path_factory.mktemp("gate-jet-mlp")
    retrained = export_network("jet_mlp", folder / "seed1", ExportOptions(
        seed=1, budget="reduced", cache_dir=zoo_cache_dir, reference_samples=2000))
    n_onnx = convert_from_spec(version_n.spec, folder / "n.onnx").path
    n1_onnx = convert_from_spec(retrained.spec, folder / "n1.onnx").path
    events = make_reference(n_onnx, version_n.reference_path, spec=version_n.spec)
    return JetVersions(version_n.spec, version_n, folder, n_onnx, n1_onnx, events)
