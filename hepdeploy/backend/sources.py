"""Opening runners: over a spec's source model, over a deployable artifact, over either.

The one place that maps a framework (the spec's ``source.framework``) or an artifact's
file type to the loader and runner that execute it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hepdeploy.artifacts import load_onnx, read_engine_sidecar
from hepdeploy.backend.base import RenamedRunner, Runner
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner, ProviderList, check_in_child
from hepdeploy.backend.pytorch import TorchModuleRunner
from hepdeploy.backend.tf import KerasRunner, SavedModelRunner
from hepdeploy.backend.trt import TensorRTEngineRunner
from hepdeploy.errors import ModelLoadError, SpecError
from hepdeploy.frameworks import source_framework
from hepdeploy.fsutil import check_input_file, missing, sha256_file
from hepdeploy.plan_compat import plan_metadata_of
from hepdeploy.spec import ModelSpec, load_spec

ENGINE_SUFFIXES = (".plan", ".engine")


def source_runner(spec: ModelSpec, loaded: Any | None = None) -> Runner:
    """A runner over the spec's source model (loaded here unless ``loaded`` is the model object already), as
    the framework registry (:mod:`hepdeploy.frameworks`) says."""
    framework = source_framework(spec.source.framework)
    where = spec.source.path or spec.source.factory or spec.name
    model = loaded if loaded is not None else framework.load(spec)
    return framework.open_runner(spec, model, f"{framework.name}:{where}")  # type: ignore[no-any-return]


def torch_runner(spec: ModelSpec, model: Any, name: str) -> Runner:
    if spec.source.framework == "exported_program" and not hasattr(model, "forward"):
        model = model.module()
    return TorchModuleRunner(model, spec.inputs, [t.name for t in spec.outputs], name=name)


def keras_runner(spec: ModelSpec, model: Any, name: str) -> Runner:
    return KerasRunner(model, spec.inputs, [t.name for t in spec.outputs], name=name)


def savedmodel_runner(spec: ModelSpec, model: Any, name: str) -> Runner:
    return SavedModelRunner(model, spec.inputs, [t.name for t in spec.outputs], name=name)


def onnx_runner(spec: ModelSpec, model: None, name: str) -> Runner:
    """An ONNX source, its tensors translated positionally to the spec's names where they differ (as convert does)."""
    path = Path(spec.source.path)  # type: ignore[arg-type]  # the spec requires one
    runner = OnnxRuntimeRunner(path, name=name)
    inputs, outputs = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    if runner.input_names == inputs and runner.output_names == outputs:
        return runner
    if len(runner.input_names or []) != len(inputs) or len(runner.output_names or []) != len(outputs):
        raise SpecError(f"{spec.source.path}: the model has {len(runner.input_names or [])} input(s) and "
                        f"{len(runner.output_names or [])} output(s); the spec lists {len(inputs)} and {len(outputs)}")
    return RenamedRunner(runner, dict(zip(inputs, runner.input_names or [], strict=True)),
                         dict(zip(outputs, runner.output_names or [], strict=True)), name=name)


def artifact_runner(path: Path | str, providers: ProviderList | None = None,
                    intra_op_threads: int | None = None) -> Runner:
    """A runner over a deployable artifact: ``.onnx`` in ONNX Runtime (CPU unless ``providers``
    say otherwise), ``.plan``/``.engine`` in TensorRT. A missing or corrupt file is one clear line."""
    path = Path(path)
    if path.suffix != ".onnx" and path.suffix not in ENGINE_SUFFIXES:
        raise ModelLoadError(f"{path}: not a deployable artifact (.onnx, or a TensorRT .plan/.engine); "
                             "convert the model first or give its spec")
    if not path.exists():
        raise ModelLoadError(missing(path, "model"))
    if path.suffix in ENGINE_SUFFIXES:
        # A version-compatible plan carries its lean runtime as host code, which the runtime must allow.
        metadata = plan_metadata_of(read_engine_sidecar(path))
        return TensorRTEngineRunner(path, allow_host_code=metadata is not None and metadata.version_compatible)
    load_onnx(path, load_weights=False)  # a corrupt file says so before ONNX Runtime tries
    check_in_child(path, where=path.name)  # a graph that crashes ONNX Runtime natively ends a child, not us
    return OnnxRuntimeRunner(path, providers=providers, intra_op_threads=intra_op_threads)


@dataclass
class OpenedSource:
    """A runner over a reference (source) model, where it came from, and its spec when there is one."""

    runner: Runner
    provenance: dict[str, Any] = field(default_factory=dict)
    spec: ModelSpec | None = None


def open_source(source: Runner | ModelSpec | Path | str) -> OpenedSource:
    """A runner, a spec, a spec file (``.yaml``) or a model file, opened as the model that makes references."""
    if isinstance(source, Runner):
        return OpenedSource(source, {"framework": source.backend, "path": None, "sha256": None})
    if isinstance(source, ModelSpec):
        spec = source
    else:
        path = Path(source)
        if path.suffix not in (".yaml", ".yml"):
            check_input_file(path, "source model")
            return OpenedSource(artifact_runner(path), _file_info(path, path.suffix.lstrip(".")))
        spec = load_spec(path)
    model_file = spec.source.path or spec.source.weights  # torch factories keep their weights in a file
    info = _file_info(Path(model_file) if model_file else None, spec.source.framework)
    info["spec"] = spec.name
    if spec.source.factory:
        info["factory"] = spec.source.factory
    if spec.source.zoo:
        info["zoo"] = spec.source.zoo
    return OpenedSource(source_runner(spec), info, spec)


def _file_info(path: Path | None, framework: str) -> dict[str, Any]:
    info: dict[str, Any] = {"framework": framework, "path": str(path) if path else None, "sha256": None}
    if path is not None and Path(path).is_file():
        info["sha256"] = sha256_file(Path(path))
    return info
