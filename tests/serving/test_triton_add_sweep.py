"""Spec-less ``triton add``: max_batch_size and the preferred size from a quick t(b) sweep, not 64."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.triton.check import check_repository_report
from hepdeploy.triton.config import read_model_config

SWEPT = re.compile(r"^facile: max_batch_size (\d+), preferred_batch_size \[(\d+)\] from a quick t\(b\) sweep", re.M)


def _add(repo: Path, model: Path, *extra: str) -> str:
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(model), "--name", "facile", *extra])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_a_spec_less_add_writes_the_swept_batching_and_the_repository_checks(facile_onnx, tmp_path) -> None:  # noqa: ANN001
    repo = tmp_path / "repo"
    said = SWEPT.search(_add(repo, facile_onnx.onnx_path, "--python-backend"))
    assert said, "the add says what the sweep chose"
    most, preferred = int(said.group(1)), int(said.group(2))
    for name in ("facile", "facile_py"):  # the twin batches as the model does
        config = read_model_config(repo / name / "config.pbtxt")
        assert config.max_batch_size == most
        assert list(config.dynamic_batching.preferred_batch_size) == [preferred] and preferred <= most
    report = check_repository_report(repo, run_models=True)
    assert not report.problems, [p.line() for p in report.problems]


def test_an_explicit_max_batch_size_skips_the_sweep(facile_onnx, tmp_path) -> None:  # noqa: ANN001
    repo = tmp_path / "repo"
    output = _add(repo, facile_onnx.onnx_path, "--max-batch-size", "500")
    assert not SWEPT.search(output)
    config = read_model_config(repo / "facile" / "config.pbtxt")
    assert config.max_batch_size == 500 and list(config.dynamic_batching.preferred_batch_size) == []


@pytest.mark.server
@pytest.mark.slow
def test_the_bundled_server_loads_the_swept_config(triton_binary, facile_onnx, tmp_path) -> None:  # noqa: ANN001
    from hepdeploy.triton.server import TritonServer

    repo = tmp_path / "repo"
    _add(repo, facile_onnx.onnx_path, "--python-backend")
    (repo / "facile").rename(tmp_path / "facile-onnx")  # this server has the Python backend only
    with TritonServer(repo, binary=triton_binary, load="all", startup_timeout_s=60, load_timeout_s=120) as server:
        ready, errors = server.ready_models(), server.model_load_errors()
    assert ready == ["facile_py"], errors
