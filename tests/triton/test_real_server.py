"""Published folders as a real Triton server reads them (the bundled server, Python backend only).

The server runs ``model_warmup`` from our ``warmup/`` files at load time, so a model that loads
proves the warm-up files, the explicit ``max_batch_size: 0`` and the dims are what Triton expects;
a warm-up file of the wrong size is refused by the server and by ``triton check`` alike.
"""
from __future__ import annotations

import os

import pytest

from hepdeploy.triton.check import check_repository

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.mark.server
@pytest.mark.slow
def test_server_loads_published_twins_and_runs_their_warmup(
    triton_binary, tmp_path, models, facile_spec, facile_golden, interaction_spec, interaction_golden
):
    from hepdeploy.triton.repository import publish_python_twin
    from hepdeploy.triton.server import TritonServer

    repo = tmp_path / "repo"
    publish_python_twin(repo, models["facile"], name="facile_py", spec=facile_spec, warmup_inputs=facile_golden)
    publish_python_twin(repo, models["interaction"], name="in_py", spec=interaction_spec,
                        warmup_inputs=interaction_golden)
    assert "max_batch_size: 0" in (repo / "in_py" / "config.pbtxt").read_text()
    (repo / "facile_py" / "warmup" / "input").write_bytes(b"\0" * 12)  # broken on purpose
    problems = check_repository(repo, run_models=False)
    assert [p.path.name for p in problems] == ["input"] and "warm-up file has 12 bytes" in problems[0].message

    with TritonServer(repo, binary=triton_binary, load="all", startup_timeout_s=60, load_timeout_s=120) as server:
        ready = server.ready_models()
        errors = server.model_load_errors()
    assert ready == ["in_py"], errors
    assert "warmup setting expects 188 bytes" in errors["facile_py"]
