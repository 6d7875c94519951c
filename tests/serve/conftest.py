"""Session fixtures for the serve tests: the bundled Triton server, a repository of Python-backend
twins of the trained FACILE and jet MLP zoo networks (plus a deliberately wrong twin and a config the
server refuses), their golden sets, and one server running on it on 127.0.0.1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hepdeploy.lifetime import process_alive

# Two cores are shared by the test workers, the server and its Python-backend stubs.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class ServedModel:
    name: str  # the ONNX model's name; its twin is name + "_py"
    spec: object
    artifact: Path
    golden: Path
    inputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ServeRepository:
    path: Path
    models: dict[str, ServedModel]
    wrong_twin: str
    refused: str


def _served_model(zoo_export, name: str, out: Path) -> ServedModel:
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.validate import make_reference, save_reference

    export = zoo_export(name)
    artifact = convert_from_spec(export.spec, out / f"{name}.onnx")
    reference = make_reference(str(export.spec_path), export.reference_path, spec=export.spec)
    golden = save_reference(reference, out / f"{name}_golden.npz")
    return ServedModel(name, export.spec, artifact.path, golden, dict(reference.inputs))


def _perturbed_copy(source: Path, target: Path) -> Path:
    """The same model with every float weight scaled by 1.05: loads and runs, but answers wrongly."""
    import onnx
    from onnx import numpy_helper

    from hepdeploy.artifacts import Sidecar, sidecar_path_for, write_artifact

    model = onnx.load(str(source))
    for index, initializer in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(initializer)
        if array.dtype == np.float32 and array.size > 1:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array * np.float32(1.05), initializer.name))
    sidecar = Sidecar.model_validate_json(sidecar_path_for(source).read_text(encoding="utf-8"))
    return write_artifact(model, target, sidecar).path


def _write_refused_model(repo: Path, artifact: Path) -> str:
    """A Python-backend model whose preferred batch size exceeds max_batch_size (hand-made: our builder refuses it)."""
    from hepdeploy.spec import TritonSpec
    from hepdeploy.triton.config import build_model_config, config_to_pbtxt
    from hepdeploy.triton.python_backend import model_py_text, python_backend_config

    name = "refused_py"
    onnx_config = build_model_config(artifact, TritonSpec(max_batch_size=64), name=name, kind="cpu")
    config = python_backend_config(onnx_config, name)
    config.dynamic_batching.preferred_batch_size[:] = [128]
    folder = repo / name / "1"
    folder.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config_to_pbtxt(config), encoding="utf-8")
    (folder / "model.py").write_text(model_py_text(), encoding="utf-8")
    (folder / "model.onnx").write_bytes(artifact.read_bytes())
    return name


@pytest.fixture(scope="session")
def serve_repository(zoo_export, tmp_path_factory) -> ServeRepository:
    from hepdeploy.triton.repository import publish_model, publish_python_twin
    from hepdeploy.triton.plan import ModelRequest

    work = tmp_path_factory.mktemp("serve-models")
    repo = work / "model_repository"
    models = {name: _served_model(zoo_export, name, work) for name in ("facile", "jet_mlp")}
    for model in models.values():
        warmup = {k: v[:1] for k, v in model.inputs.items()}
        publish_python_twin(repo, model.artifact, spec=model.spec, warmup_inputs=warmup)
    # The ONNX Runtime model itself, as `triton add` / `build` publish it: the bundled server must refuse it.
    publish_model(repo, ModelRequest(models["jet_mlp"].artifact, name="jet_mlp", spec=models["jet_mlp"].spec, kind="cpu"))
    wrong = _perturbed_copy(models["jet_mlp"].artifact, work / "jet_mlp_wrong.onnx")
    publish_python_twin(repo, wrong, model_name="jet_mlp_wrong", spec=models["jet_mlp"].spec)
    refused = _write_refused_model(repo, models["jet_mlp"].artifact)
    return ServeRepository(repo, models, "jet_mlp_wrong_py", refused)


@pytest.fixture(scope="session")
def triton_server(serve_repository, triton_binary):
    """One server on the repository for the whole session, stopped by its own PID at the end."""
    from hepdeploy.triton.server import TritonServer

    server = TritonServer(serve_repository.path, binary=triton_binary, startup_timeout_s=180, load_timeout_s=300)
    server.start()
    try:
        yield server
    finally:
        pid = server.pid
        server.stop()
        assert pid is not None and not process_alive(pid), f"tritonserver pid {pid} still running after stop()"
