"""The bad-input tests' shared material: a real (reduced-budget) jet MLP, converted, with its golden set
and a twin whose input has a TensorFlow-style name; and the CLI as a user meets it."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from hepdeploy.cli import main


def _run(*args: object) -> tuple[int, list[str]]:
    """Exit code and the non-empty lines of the output of ``hepdeploy ARGS``."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def run() -> Callable[..., tuple[int, list[str]]]:
    """``run("optimize", model, ...)``: the CLI as a user meets it (exit code, non-empty output lines)."""
    return _run


@pytest.fixture(scope="session")
def jet(zoo_export, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: ANN001
    exported = zoo_export("jet_mlp")
    folder = tmp_path_factory.mktemp("bad-input-jet")
    for path in (exported.spec_path, exported.source_path, exported.reference_path, exported.calibration_path):
        shutil.copy(path, folder / path.name)
    spec = folder / exported.spec_path.name
    model = folder / "jet_mlp.onnx"
    assert _run("convert", folder / exported.source_path.name, "--spec", spec, "-o", model)[0] == 0
    golden = folder / "golden.npz"
    assert _run("reference", spec, "--data", folder / exported.reference_path.name, "-o", golden)[0] == 0
    other = folder / "other_names.onnx"  # the same network with a TensorFlow-style input name
    graph = onnx.load(str(model))
    for node in graph.graph.node:
        node.input[:] = ["input_1:0" if name == "input_1" else name for name in node.input]
    graph.graph.input[0].name = "input_1:0"
    onnx.save(graph, str(other))
    return {"folder": folder, "spec": spec, "model": model, "golden": golden, "other": other,
            "calibration": folder / exported.calibration_path.name}
