"""Which versions of hepdeploy's dependencies this process runs with (for provenance records)."""
from __future__ import annotations

import importlib.metadata
import platform

import numpy as np

from hepdeploy import __version__

# Distributions whose versions decide what a build produces; absent ones are left out.
_RECORDED = ("torch", "onnx", "onnxruntime", "onnxslim", "nvidia-modelopt", "tensorflow-cpu",
             "tensorflow", "keras", "tf2onnx", "tensorrt", "tritonclient")


# One module, several distributions: "onnxruntime" is whichever of these is installed.
_ALTERNATIVES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                 "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")}


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (for onnxruntime: either build), or None."""
    for candidate in _ALTERNATIVES.get(name, (name,)):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def onnxruntime_version() -> str | None:
    """ONNX Runtime's version, whichever of its two distributions is installed."""
    return package_version("onnxruntime")


def versions() -> dict[str, str]:
    """hepdeploy, Python, numpy and every recorded dependency that is installed."""
    found = {"hepdeploy": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in _RECORDED:
        version = package_version(name)
        if version is not None:
            found[name] = version
    return found
