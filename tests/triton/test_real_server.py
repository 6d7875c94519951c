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
    publish_python_twin(repo, models["facile"], model_name="facile", spec=facile_spec, warmup_inputs=facile_golden)
    publish_python_twin(repo, models["interaction"], model_name="in", spec=interaction_spec,
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


@pytest.mark.server
@pytest.mark.slow
def test_the_readme_warmup_from_a_golden_file_runs_in_a_real_server(triton_binary, tmp_path, models, facile_spec):
    # As in the README's worked example: `triton add ... --warmup golden.npz --python-backend`, where the
    # golden file (from `hepdeploy reference`) keeps its inputs under input/NAME keys; here with a
    # TensorFlow-style tensor name, whose warm-up file name is escaped.
    import numpy as np
    import onnx
    from click.testing import CliRunner

    from hepdeploy.cli import main
    from hepdeploy.triton.config import read_model_config
    from hepdeploy.triton.server import TritonServer

    model = onnx.load(str(models["facile"]))
    for value in model.graph.input:
        value.name = "input_1:0"
    for node in model.graph.node:
        node.input[:] = ["input_1:0" if name == "input" else name for name in node.input]
    path = tmp_path / "facile_tf.onnx"
    onnx.save(model, str(path))
    golden = tmp_path / "golden.npz"
    rng = np.random.default_rng(0)
    np.savez(golden, **{"input/input_1:0": rng.standard_normal((4, 47)).astype(np.float32),
                        "output/output": np.zeros((4, 1), np.float32)})
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(path), "--name", "facile",
                                       "--warmup", str(golden), "--python-backend"])
    assert result.exit_code == 0, result.output
    twin = read_model_config(repo / "facile_py" / "config.pbtxt")
    entry = twin.model_warmup[0].inputs["input_1:0"]
    assert entry.input_data_file == "input_1%3A0" and (repo / "facile_py" / "warmup" / "input_1%3A0").is_file()
    with TritonServer(repo, binary=triton_binary, load=["facile_py"], startup_timeout_s=60,
                      load_timeout_s=120) as server:
        ready, errors = server.ready_models(), server.model_load_errors()
    assert ready == ["facile_py"], errors  # loading runs the warm-up: the server read and ran our file
