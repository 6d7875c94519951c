"""Helpers shared by the convert tests (importable; conftest.py holds the fixtures)."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
FIXTURE_MODULE = "hepdeploy_convert_fixture_models"

TWO_IO = {
    "inputs": [{"name": "parts", "shape": ["batch", "n_particles", 4]}, {"name": "glob", "shape": ["batch", 3]}],
    "outputs": [{"name": "o1", "shape": ["batch", 3]}, {"name": "o2", "shape": ["batch", 2]}],
}
JET = {
    "inputs": [{"name": "input_1", "shape": ["batch", 16]}],
    "outputs": [{"name": "probs", "shape": ["batch", 5]}],
}


def fixture_models():
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import hepdeploy_convert_fixture_models as models

    return models


def write_spec(folder: Path, name: str, source: dict, tensors: dict, **extra) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "source": source, **tensors, **extra}, sort_keys=False))
    return path


