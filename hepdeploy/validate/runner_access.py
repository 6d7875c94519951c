"""How the validator opens runners (``hepdeploy.validate.runners``) and describes them.

The validator only relies on ``run(dict) -> dict`` plus the optional ``input_names``,
``output_names`` and ``providers_used`` attributes, so any Runner (a Triton client too)
can be validated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.errors import DataError, ModelLoadError
from hepdeploy.fsutil import check_input_file, sha256_file


def onnx_runner(model: Any, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime runner for a path, bytes or ModelProto; providers default to CPU."""
    from hepdeploy.validate.runners import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model, providers=providers)


def open_candidate(path: Path, providers: list[str] | None = None) -> Any:
    """A runner for a candidate model file (.onnx in ONNX Runtime, .plan/.engine in TensorRT)."""
    from hepdeploy.validate.runners import artifact_runner

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: candidate model not found")
    if path.suffix == ".onnx":
        from hepdeploy.artifacts import load_onnx

        load_onnx(path, load_weights=False)  # one clear line for a corrupt file
    return artifact_runner(path, providers=providers)


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
            return open_candidate(path), _file_info(path, path.suffix.lstrip(".")), None
    from hepdeploy.validate.runners import source_runner

    runner = source_runner(spec)
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
    from hepdeploy.validate.runners import run_chunked

    return {k: np.asarray(v) for k, v in run_chunked(runner, inputs, chunk_size, list(inputs)).items()}


def providers_of(runner: Any) -> list[str]:
    used = getattr(runner, "providers_used", None)
    if used:
        return [str(p) for p in used]
    return [type(runner).__name__]


def describe_runner(runner: Any) -> str:
    return f"{type(runner).__name__}({', '.join(providers_of(runner))})"
