"""The Triton platform registry: every kind of model hepdeploy publishes and checks, in one table.

Shaped like :mod:`hepdeploy.variants`. The spec (which ``triton.platform`` it accepts), the CLI
(``triton add --platform`` choices), the config builder (the platform's own config fields), the
publisher (which file, which name in the version folder), the checker (what a served version must
hold) and the server (which backend loads it) all read this table. Adding a platform is one entry
here plus, where it needs them, its filler and its checker. Both are named as ``module:function``
and resolved by the triton stage only, so this module stays below every stage.

A filler is called as ``filler(config, request)`` with the ``ModelConfig`` being built and the
:class:`~hepdeploy.triton.config.ConfigRequest`; it sets what only this platform has (accelerators,
thread counts, engine profiles). A checker is called as ``checker(model_checker, config,
version_dir, manifest)`` for every served version of a model folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hepdeploy.errors import BadInputError, ModelLoadError

ConfigField = Literal["platform", "backend"]


@dataclass(frozen=True)
class TritonPlatform:
    """One Triton platform (or backend-only model kind) as hepdeploy writes and checks it."""

    name: str  # what the config's platform (or, for backend-only kinds, backend) field says
    backend: str  # the Triton backend that loads it
    config_field: ConfigField  # which config field names it
    default_filename: str | None  # what Triton loads from a version folder without default_model_filename
    suffixes: tuple[str, ...]  # model file suffixes that mean this platform (a folder: its marker file)
    folder_marker: str | None  # a model that is a folder holds this file (a SavedModel's saved_model.pb)
    runs_on_cpu: bool  # may be served by KIND_CPU instances (a TensorRT plan may not)
    user_choice: bool  # may be named by ``--platform`` / ``triton.platform`` for a model file
    filler: str | None  # "module:function": the platform's own config fields; None: nothing of its own
    checker: str | None  # "module:function": what one served version must hold; None: not checked
    summary: str


REGISTRY: tuple[TritonPlatform, ...] = (
    TritonPlatform("onnxruntime_onnx", "onnxruntime", "platform", "model.onnx", (".onnx",), None, True, True,
                   "hepdeploy.triton.config:fill_onnxruntime", "hepdeploy.triton.check:check_onnx_version",
                   "an ONNX graph run by ONNX Runtime (CPU, CUDA, or its TensorRT execution provider)"),
    TritonPlatform("tensorrt_plan", "tensorrt", "platform", "model.plan", (".plan", ".engine", ".trt"), None, False,
                   True, "hepdeploy.triton.config:fill_tensorrt", "hepdeploy.triton.check:check_plan_version",
                   "a serialized TensorRT engine for one GPU and TensorRT version"),
    TritonPlatform("pytorch_libtorch", "pytorch", "platform", "model.pt", (".pt", ".pts", ".torchscript"), None, True,
                   True, None, "hepdeploy.triton.check:check_torchscript_version", "a TorchScript module (libtorch)"),
    TritonPlatform("tensorflow_savedmodel", "tensorflow", "platform", "model.savedmodel", (), "saved_model.pb", True,
                   True, None, "hepdeploy.triton.check:check_savedmodel_version", "a TensorFlow SavedModel folder"),
    TritonPlatform("python", "python", "backend", "model.py", (), None, True, False,
                   None, "hepdeploy.triton.check:check_python_version",
                   "a model.py run by Triton's Python backend (hepdeploy's twins and preprocessing)"),
    TritonPlatform("ensemble", "ensemble", "platform", None, (), None, True, False, None,
                   "hepdeploy.triton.check:check_ensemble_version",
                   "a pipeline of other models in the repository (no file of its own)"),
)
PLATFORMS: dict[str, TritonPlatform] = {entry.name: entry for entry in REGISTRY}
PLATFORM_NAMES: tuple[str, ...] = tuple(PLATFORMS)
# What ``--platform`` and ``triton.platform`` may name.
USER_PLATFORMS: tuple[str, ...] = tuple(entry.name for entry in REGISTRY if entry.user_choice)
DEFAULT_PLATFORM = "onnxruntime_onnx"


def triton_platform(name: str) -> TritonPlatform:
    """The registry entry for ``name``; an unknown name is bad input."""
    entry = PLATFORMS.get(name)
    if entry is None:
        raise BadInputError(f"Triton platform {name!r} is not supported (one of {', '.join(PLATFORM_NAMES)})")
    return entry


def platform_of_config(platform: str, backend: str) -> str:
    """The platform a config's ``platform``/``backend`` pair names (``backend: onnxruntime`` is onnxruntime_onnx);
    an unknown backend is returned as it is."""
    if platform:
        return platform
    for entry in REGISTRY:
        if entry.backend == backend:
            return entry.name
    return backend


def backend_of(platform_or_backend: str) -> str:
    """The Triton backend that loads a platform (a backend name is its own backend)."""
    entry = PLATFORMS.get(platform_or_backend)
    if entry is not None:
        return entry.backend
    return "tensorflow" if platform_or_backend == "tensorflow_graphdef" else platform_or_backend


def platform_for_file(path: Path) -> str:
    """The platform of a model file (or folder), from its suffix or its marker file."""
    path = Path(path)
    if path.is_dir():
        for entry in REGISTRY:
            if entry.folder_marker and (path / entry.folder_marker).is_file():
                return entry.name
        markers = ", ".join(e.folder_marker for e in REGISTRY if e.folder_marker)
        raise ModelLoadError(f"{path}: a folder but no model folder Triton knows (none of {markers})")
    suffix = path.suffix.lower()
    for entry in REGISTRY:
        if suffix in entry.suffixes:
            return entry.name
    raise ModelLoadError(f"{path}: cannot tell the Triton platform from the suffix {suffix!r}; pass --platform")
