"""Two real versions of the jet MLP for the gate's tests: N (the zoo's training, seed 0) and N+1 (trained with
seed 1), converted to ONNX once per session, N's reference events (2000 jets with labels and jet_pt; the
outputs are N's), and edited copies of N (an output renamed, the class columns permuted), made with
onnx.helper so that only the edit differs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hepdeploy.artifacts import load_onnx, save_onnx
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.model_zoo import ExportOptions, export_network
from hepdeploy.spec import ModelSpec
from hepdeploy.triton.plan import ModelRequest
from hepdeploy.triton.repository import publish_model

REFERENCE_EVENTS = 2000


@dataclass
class JetVersions:
    """Version N (``onnx``) and a retrained N+1 (``retrained``) of the jet MLP, with N's spec and the events."""

    spec: ModelSpec
    onnx: Path
    retrained: Path
    folder: Path
    zoo: Any  # N's ZooExport (reference_path: the events' data file)
    events: Any  # ReferenceSet: inputs, N's outputs, labels, jet_pt

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        return self.events.inputs

    @property
    def labels(self) -> list[str]:
        return list(self.spec.triton.labels)

    def outputs(self, model: Path, rows: slice = slice(None)) -> dict[str, np.ndarray]:
        with OnnxRuntimeRunner(model, intra_op_threads=1, inter_op_threads=1) as runner:
            return runner.run({name: value[rows] for name, value in self.inputs.items()})

    def renamed_output(self, new_name: str) -> Path:
        """N with its output tensor renamed (the node that makes it and the graph output)."""
        model = load_onnx(self.onnx)
        old = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [new_name if name == old else name for name in node.output]
        model.graph.output[0].name = new_name
        return save_onnx(model, self.folder / f"renamed_{new_name}.onnx")

    def permuted(self, order: list[int], source: Path | None = None) -> Path:
        """``source`` (default N) with its class columns reordered by a Gather after the last node: same
        tensors, same names."""
        from onnx import helper, numpy_helper

        source = source or self.onnx
        model = load_onnx(source)
        final = model.graph.output[0].name
        inner = f"{final}_before_gather"
        for node in model.graph.node:
            node.output[:] = [inner if name == final else name for name in node.output]
        model.graph.initializer.append(numpy_helper.from_array(np.array(order, dtype=np.int64), "class_order"))
        model.graph.node.append(helper.make_node("Gather", [inner, "class_order"], [final], axis=1))
        return save_onnx(model, self.folder / f"{source.stem}_permuted_{''.join(map(str, order))}.onnx")

    def publish(self, repo: Path, model: Path | None = None) -> Path:
        """Publish ``model`` (default N) as the next version of jet_mlp in ``repo``; the model folder."""
        return publish_model(repo, ModelRequest(model or self.onnx, "jet_mlp", spec=self.spec)).model_dir


@pytest.fixture(scope="session")
def jet_versions(zoo_export, zoo_cache_dir, tmp_path_factory) -> JetVersions:
    convert = pytest.importorskip("hepdeploy.convert")
    folder = tmp_path_factory.mktemp("gate-jet-versions")
    export = zoo_export("jet_mlp")
    version_n = convert.convert_from_spec(export.spec, folder / "jet_mlp.onnx").path
    other = export_network("jet_mlp", folder / "seed1", ExportOptions(
        seed=1, budget="reduced", cache_dir=zoo_cache_dir, reference_samples=REFERENCE_EVENTS))
    retrained = convert.convert_from_spec(other.spec, folder / "jet_mlp_seed1.onnx").path
    from hepdeploy.validate import make_reference

    events = make_reference(version_n, export.reference_path, spec=export.spec)
    return JetVersions(spec=export.spec, onnx=version_n, retrained=retrained, folder=folder, zoo=export,
                       events=events)


def _write_gate_spec(spec: ModelSpec, folder: Path, name: str, variants: list[str],
                     gate_block: dict[str, Any]) -> Path:
    """``spec`` as a YAML file with these variants and this ``gate:`` block, for ``hepdeploy gate --spec``."""
    import yaml

    from hepdeploy.spec import spec_to_yaml

    data = yaml.safe_load(spec_to_yaml(spec, folder))
    data["variants"] = variants
    data["gate"] = gate_block
    # 2,000 test jets hold ~16 background jets per class beyond a 1 % cut, below the statistical floor (20):
    # efficiencies are judged at 5 % background here (the zoo's 80,000-jet sets judge them at 1 %).
    data.setdefault("validation", {}).setdefault("physics", {})["background_efficiency"] = 0.05
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def write_gate_spec() -> Any:
    """``write_gate_spec(spec, folder, name, variants, gate_block) -> Path``: a spec file for the gate."""
    return _write_gate_spec


@pytest.fixture
def published(jet_versions: JetVersions, tmp_path: Path) -> Path:
    """A repository holding version 1 of jet_mlp (N), published by hepdeploy: the model folder."""
    return jet_versions.publish(tmp_path / "model_repository")
