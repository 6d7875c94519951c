"""How the validator gets runners: through ``hepdeploy.validate.runners`` when present.

The runners themselves belong to the convert stage (``runners.py``). This module is the
validator's one door to them, with a small ONNX Runtime fallback so validation of ONNX
candidates works even where that module lacks something. The validator only relies on
``run(dict) -> dict`` plus the optional ``input_names``, ``output_names`` and
``providers_used`` attributes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.errors import BadInputError, DataError, ModelLoadError
from hepdeploy.fsutil import check_input_file, sha256_file

log = logging.getLogger("hepdeploy.validate.runner_access")


def _runners_module() -> Any | None:
    try:
        from hepdeploy.validate import runners
    except ImportError:
        return None
    return runners


class _OrtRunner:
    """Minimal ONNX Runtime runner (fallback when runners.OnnxRuntimeRunner is missing)."""

    def __init__(self, model: Any, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        payload = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
        try:
            self.session = ort.InferenceSession(payload, options, providers=providers or ["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            where = model if isinstance(model, (str, Path)) else "model"
            raise ModelLoadError(f"{where}: ONNX Runtime cannot load it: {first}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers_used = list(self.session.get_providers())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names}
        values = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, values, strict=True))


def onnx_runner(model: Any, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime runner for a path or ModelProto; providers default to CPU."""
    runners = _runners_module()
    cls = getattr(runners, "OnnxRuntimeRunner", None) if runners else None
    if cls is not None:
        try:
            return cls(model, providers=providers) if providers else cls(model)
        except TypeError:
            log.debug("runners.OnnxRuntimeRunner signature differs; using the fallback runner")
    return _OrtRunner(model, providers)


def open_candidate(path: Path, providers: list[str] | None = None) -> Any:
    """A runner for a candidate model file (ONNX via ONNX Runtime; other kinds via runners.artifact_runner)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: candidate model not found")
    if path.suffix == ".onnx":
        from hepdeploy.artifacts import load_onnx

        load_onnx(path, load_weights=False)  # one clear line for a corrupt file
        return onnx_runner(path, providers)
    runners = _runners_module()
    if path.suffix in (".plan", ".engine") and runners is not None and hasattr(runners, "TensorRTEngineRunner"):
        return runners.TensorRTEngineRunner(path)  # DependencyMissingError without TensorRT and a GPU
    factory = getattr(runners, "artifact_runner", None) if runners else None
    if factory is None:
        raise ModelLoadError(f"{path}: only .onnx candidates can be validated here (no runner for {path.suffix!r})")
    return factory(path)


def open_source(source: Any) -> tuple[Any, dict[str, Any], Any]:
    """(runner, provenance of the source model, spec or None) for a Runner, spec or model path."""
    from hepdeploy.spec import ModelSpec, load_spec

    if hasattr(source, "run") and not isinstance(source, (str, Path)):
        info = {"framework": getattr(source, "framework", type(source).__name__), "path": None, "sha256": None}
        return source, info, None
    spec = None
    if isinstance(source, ModelSpec):
        spec = source
    else:
        path = Path(source)
        if path.suffix in (".yaml", ".yml"):
            spec = load_spec(path)
        else:
            check_input_file(path, "source model")
            if path.suffix == ".onnx":
                runner = open_candidate(path)
                return runner, _file_info(path, "onnx"), None
            runners = _runners_module()
            factory = getattr(runners, "artifact_runner", None) if runners else None
            if factory is None:
                raise BadInputError(f"{path}: cannot run a {path.suffix!r} model (give a spec or an .onnx file)")
            return factory(path), _file_info(path, path.suffix.lstrip(".")), None
    runners = _runners_module()
    factory = getattr(runners, "source_runner", None) if runners else None
    if factory is not None:
        runner = factory(spec)
    elif spec.source.framework == "onnx" and spec.source.path:
        runner = open_candidate(spec.resolve(spec.source.path))
    else:
        raise BadInputError(
            f"spec {spec.name}: running a {spec.source.framework} source needs hepdeploy.validate.runners.source_runner"
        )
    model_file = spec.source.path or spec.source.weights  # torch factories keep their weights in a file
    info = _file_info(spec.resolve(model_file) if model_file else None, spec.source.framework)
    if spec.source.factory:
        info["factory"] = spec.source.factory
    info["spec"] = spec.name
    if spec.source.zoo:
        info["zoo"] = spec.source.zoo
    return runner, info, spec


def _file_info(path: Path | None, framework: str) -> dict[str, Any]:
    info: dict[str, Any] = {"framework": framework, "path": str(path) if path else None, "sha256": None}
    if path is not None and Path(path).is_file():
        info["sha256"] = sha256_file(Path(path))
    return info


def run_in_chunks(runner: Any, inputs: dict[str, np.ndarray], chunk_size: int) -> dict[str, np.ndarray]:
    """Run batch-first inputs in chunks and concatenate the outputs on axis 0.

    Inputs without one common first dimension (a whole graph per call: hits, edges) are
    run in one call, since splitting them would cut the graph.
    """
    from hepdeploy.validate.reference import common_batch_size

    if chunk_size < 1:
        raise DataError(f"chunk size must be >= 1, got {chunk_size}")
    n = common_batch_size(inputs)
    if n is None or n <= chunk_size:
        return {k: np.asarray(v) for k, v in runner.run(inputs).items()}
    runners = _runners_module()
    chunked = getattr(runners, "run_chunked", None) if runners else None
    if chunked is not None:
        return {k: np.asarray(v) for k, v in chunked(runner, inputs, chunk_size, list(inputs)).items()}
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, chunk_size):
        result = runner.run({k: v[start:start + chunk_size] for k, v in inputs.items()})
        for name, value in result.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(values, axis=0) for name, values in parts.items()}


def providers_of(runner: Any) -> list[str]:
    used = getattr(runner, "providers_used", None)
    if used:
        return [str(p) for p in used]
    return [type(runner).__name__]


def describe_runner(runner: Any) -> str:
    return f"{type(runner).__name__}({', '.join(providers_of(runner))})"
