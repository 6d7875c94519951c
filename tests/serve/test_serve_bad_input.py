"""Bad input, second campaign, with the real server: a serve check passes only when the server loads
what it can load, and a server leaves no bytecode in the repository."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.cli import main

pytestmark = pytest.mark.server


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.slow
def test_serve_check_fails_when_a_python_model_does_not_load_and_leaves_no_bytecode(
        triton_binary, serve_repository, tmp_path: Path) -> None:  # noqa: ANN001 - items 4 and 11
    jet = serve_repository.models["jet_mlp"]
    repo = tmp_path / "repo"
    code, output = run("triton", "add", repo, jet.artifact, "--name", "jet", "--python-backend")
    assert code == 0, output
    code, output = run("triton", "serve-check", repo, f"--golden-for=jet={jet.golden}")
    assert code == 0, output  # jet_py loads and agrees; jet (ONNX Runtime backend) is refused by this server
    code, output = run("triton", "check", repo)
    assert code == 0 and "__pycache__" not in output, output  # the server wrote no bytecode into the repository

    broken = repo / "jet_py" / "1" / "model.py"
    broken.write_text(broken.read_text() + "\ndef oops(:\n")
    code, output = run("triton", "serve-check", repo)
    assert code == 1 and "the server refused Python-backend model(s) jet_py" in output, output

    shutil.rmtree(repo / "jet")  # only the broken Python model is left: nothing loads
    code, output = run("triton", "serve-check", repo)
    assert code == 1 and "the server loaded no model" in output, output
