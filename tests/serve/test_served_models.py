"""Through a real Triton server (the bundled one, 127.0.0.1): twins load, answers are validated
against golden sets, a wrong twin fails, refused configs carry the server's own message."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

# Generous limits: they only stop a hang; a loaded 2-core CI machine can take minutes to train and start.
pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_python_backend_twins_of_facile_and_jet_mlp_load(triton_server, serve_repository):
    ready = triton_server.ready_models()
    assert {"facile_py", "jet_mlp_py", "jet_mlp_wrong_py"} <= set(ready)
    assert serve_repository.refused not in ready


def test_twin_config_has_the_onnx_models_names_dims_and_batching(serve_repository):
    from hepdeploy.triton.config import build_model_config, read_model_config
    from hepdeploy.triton.python_backend import same_interface

    for name, model in serve_repository.models.items():
        twin = read_model_config(serve_repository.path / f"{name}_py" / "config.pbtxt")
        onnx_config = build_model_config(model.artifact, model.spec.triton, name=name, platform="onnxruntime_onnx")
        assert twin.backend == "python" and not twin.platform
        assert same_interface(twin, onnx_config) == []
        assert twin.max_batch_size == model.spec.triton.max_batch_size
        assert list(twin.dynamic_batching.preferred_batch_size) == model.spec.triton.dynamic_batching.preferred_batch_size


@pytest.mark.parametrize("name", ["facile", "jet_mlp"])
def test_validation_through_the_server_passes_against_the_golden_set(triton_server, serve_repository, name):
    from hepdeploy.backend.triton import ServerTarget, TritonRunner
    from hepdeploy.judgement import Judgement
    from hepdeploy.validate import load_reference, validate_runner

    model = serve_repository.models[name]
    reference = load_reference(model.golden)
    expected = (model.spec.inputs, model.spec.outputs)
    with TritonRunner(ServerTarget(triton_server.grpc_url, timeout_s=60), f"{name}_py", expected=expected,
                      max_request_batch=512) as runner:
        report = validate_runner(runner, reference, name=f"{name}_py", spec=model.spec,
                                 judgement=Judgement(precision="fp32"))
        # 2000 golden rows in requests of at most 512: the reference set really was split.
        assert runner.requests_sent >= 4
    assert report.passed, report.verdict
    assert report.physics.ran  # labels/targets were used: the same physics checks as local validation


def test_validate_cli_with_server_passes_and_a_perturbed_twin_fails(triton_server, serve_repository, tmp_path):
    from hepdeploy.cli import main

    model = serve_repository.models["jet_mlp"]
    runner = CliRunner()
    good = runner.invoke(main, ["validate", "--server", triton_server.grpc_url, "--model", "jet_mlp_py:1",
                                "--golden", str(model.golden), "--artifact", str(model.artifact),
                                "--report-dir", str(tmp_path / "reports")])
    assert good.exit_code == 0, good.output
    assert (tmp_path / "reports").is_dir() and any((tmp_path / "reports").iterdir())

    wrong = runner.invoke(main, ["validate", "--server", triton_server.grpc_url, "--model",
                                 serve_repository.wrong_twin, "--golden", str(model.golden)])
    assert wrong.exit_code == 1, wrong.output
    assert "disagrees with the golden set" in wrong.output


def test_http_protocol_gives_the_same_answers(triton_server, serve_repository):
    from hepdeploy.backend.triton import ServerTarget, TritonRunner

    model = serve_repository.models["facile"]
    sample = {k: v[:300] for k, v in model.inputs.items()}
    with TritonRunner(ServerTarget(triton_server.grpc_url), "facile_py") as grpc_runner, \
            TritonRunner(ServerTarget(triton_server.http_url, protocol="http"), "facile_py") as http_runner:
        np.testing.assert_array_equal(grpc_runner.run(sample)["output"], http_runner.run(sample)["output"])


def test_metadata_is_checked_against_the_artifact_before_any_inference(triton_server, serve_repository):
    from hepdeploy.backend.triton import ServedModelMismatchError, ServerTarget, TritonRunner

    facile = serve_repository.models["facile"].spec
    jet = serve_repository.models["jet_mlp"]
    with TritonRunner(ServerTarget(triton_server.grpc_url), "jet_mlp_py", expected=(facile.inputs, facile.outputs)) \
            as runner:
        with pytest.raises(ServedModelMismatchError, match="input"):
            runner.run(jet.inputs)
        assert runner.requests_sent == 0


def test_a_config_the_server_refuses_is_reported_with_the_servers_own_message(triton_server, serve_repository):
    errors = triton_server.model_load_errors()
    assert serve_repository.refused in errors
    assert "dynamic batching preferred size must be <= max batch size" in errors[serve_repository.refused]


def test_an_onnxruntime_model_is_refused_by_the_bundled_server_with_its_message(triton_server, triton_binary):
    assert not triton_binary.can_load("onnxruntime_onnx") and triton_binary.can_load("python")
    assert "jet_mlp" not in triton_server.ready_models()
    errors = triton_server.model_load_errors()
    # The first thing the bundled server lacks for it: the checksum repository agent our configs name by
    # default (NGC images ship it), else the ONNX Runtime backend.
    assert ("unable to find 'libtritonrepoagent_checksum.so' for repo agent 'checksum'" in errors["jet_mlp"]
            or "unable to find backend library for backend 'onnxruntime'" in errors["jet_mlp"]), errors["jet_mlp"]
