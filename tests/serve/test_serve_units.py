"""Serving pieces that need no server: twin files, the no-server message, perf helpers, bad input."""
from __future__ import annotations

import ast
import io

import numpy as np
import pytest
from click.testing import CliRunner


def _tiny_artifact(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from hepdeploy.artifacts import Sidecar, SourceRecord, write_artifact
    from hepdeploy.spec import TensorSpec

    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    sidecar = Sidecar(model_name="tiny", source=SourceRecord(framework="onnx"),
                      inputs=[TensorSpec(name="x", shape=["batch", 4])], outputs=[TensorSpec(name="y", shape=["batch", 3])])
    return write_artifact(model, tmp_path / "tiny.onnx", sidecar)


def test_python_twin_plan_has_the_onnx_configs_interface(tmp_path):
    from hepdeploy.spec import DynamicBatching, TritonSpec
    from hepdeploy.triton.config import build_model_config
    from hepdeploy.triton.plan import ModelRequest, plan_model, python_twin_request
    from hepdeploy.triton.python_backend import same_interface

    artifact = _tiny_artifact(tmp_path)
    triton = TritonSpec(max_batch_size=32, dynamic_batching=DynamicBatching(preferred_batch_size=[8, 16]))
    main = ModelRequest(artifact.path, "tiny", triton=triton, warmup_inputs={"x": np.ones((2, 4), np.float32)})
    plan = plan_model(python_twin_request(main, artifact.path))
    config = plan.config
    onnx_config = build_model_config(artifact, triton, name="tiny", platform="onnxruntime_onnx", kind="gpu")
    assert config.name == "tiny_py" and config.backend == "python" and not config.platform
    assert (plan.role, plan.twin_of) == ("python_twin", "tiny")
    assert same_interface(config, onnx_config) == []
    assert [g.kind for g in config.instance_group] == [2]  # KIND_CPU: the twin runs ONNX Runtime on the CPU
    assert not config.HasField("optimization") and not config.default_model_filename
    assert plan.files["model.onnx"] == artifact.path
    assert [(s.file_name, s.data) for s in plan.warmup] == [("x", np.ones(4, np.float32).tobytes())]
    model_py = plan.files["model.py"]
    ast.parse(model_py.decode())  # valid Python
    assert "class TritonPythonModel" in model_py.decode()


def test_triton_add_python_backend_publishes_both_models(tmp_path):
    from hepdeploy.cli import main
    from hepdeploy.triton.config import read_model_config
    from hepdeploy.triton.python_backend import same_interface

    artifact = _tiny_artifact(tmp_path)
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(artifact.path), "--python-backend"])
    assert result.exit_code == 0, result.output
    onnx_config = read_model_config(repo / "tiny" / "config.pbtxt")
    twin = read_model_config(repo / "tiny_py" / "config.pbtxt")
    assert same_interface(onnx_config, twin) == []
    assert sorted(p.name for p in (repo / "tiny_py" / "1").iterdir()) == ["hepdeploy-manifest.json", "model.onnx",
                                                                         "model.py"]


def test_no_server_anywhere_gives_the_container_command_lines(tmp_path, monkeypatch):
    from hepdeploy.errors import DependencyMissingError
    from hepdeploy.triton.server import find_tritonserver

    monkeypatch.setenv("PATH", str(tmp_path))  # no tritonserver on PATH
    with pytest.raises(DependencyMissingError) as error:
        find_tritonserver(allow_bundled=False, repository=tmp_path / "repo")
    text = str(error.value)
    for tool in ("docker run", "podman run", "apptainer exec"):
        assert tool in text
    assert "nvcr.io/nvidia/tritonserver" in text and str(tmp_path / "repo") in text


def test_a_given_tritonserver_that_is_not_executable_is_bad_input(tmp_path):
    from hepdeploy.cli import main

    fake = tmp_path / "tritonserver"
    fake.write_text("not a program")
    (tmp_path / "repo").mkdir()
    result = CliRunner().invoke(main, ["triton", "serve", str(tmp_path / "repo"), "--tritonserver", str(fake)])
    assert result.exit_code == 2
    assert "not an executable tritonserver" in result.output


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path):
    import zipfile

    from hepdeploy.errors import DependencyMissingError
    from hepdeploy.triton.server import bundled_server_dir, install_bundled_server

    wheel = tmp_path / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pytriton/tritonserver/bin/tritonserver", "#!/bin/sh\n")
    with pytest.raises(DependencyMissingError, match="sha256"):
        install_bundled_server(tmp_path / "cache", wheel=wheel)
    assert not bundled_server_dir(tmp_path / "cache").exists()  # nothing half-installed


def test_server_and_model_references_are_checked():
    from hepdeploy.backend.triton import parse_model_ref, parse_server_url
    from hepdeploy.errors import BadInputError, UnsafeNameError

    assert parse_server_url("grpc://127.0.0.1:8001") == "127.0.0.1:8001"
    assert parse_model_ref("facile:3") == ("facile", "3")
    with pytest.raises(BadInputError):
        parse_server_url("localhost")
    with pytest.raises(BadInputError):
        parse_model_ref("facile:latest")
    with pytest.raises(UnsafeNameError):
        parse_model_ref("../facile")


def test_request_batches_cycle_golden_rows_up_to_the_request_batch():
    from hepdeploy.perf import request_batches

    inputs = {"x": np.arange(10, dtype=np.float32).reshape(5, 2)}
    batches = request_batches(inputs, 8)
    assert len(batches) == 1 and batches[0]["x"].shape == (8, 2)
    np.testing.assert_array_equal(batches[0]["x"][5:], inputs["x"][:3])
    assert len(request_batches(inputs, 2)) == 3


def test_perf_analyzer_command_and_csv_parsing(tmp_path):
    from hepdeploy.backend.triton import ServerTarget
    from hepdeploy.perf import (
        EventDefinition,
        PerfSettings,
        ServedLoad,
        parse_perf_analyzer_csv,
        perf_analyzer_command,
        perf_analyzer_input_data,
    )

    sample = {"x": np.zeros((16, 5, 3), np.float32)}
    served = ServedLoad("gnn", "2", True, {"x": "float32"}, {"x": [-1, -1, 3]}, [], [sample])
    settings = PerfSettings(duration_s=2.0, event=EventDefinition(batch_per_request=16))
    files = (tmp_path / "in.json", tmp_path / "out.csv")
    command = perf_analyzer_command("perf_analyzer", ServerTarget("127.0.0.1:8001"), served, 4, settings, *files)
    text = " ".join(command)
    assert "--shape x:5,3" in text and "-b 16" in text and "--concurrency-range 4:4" in text and "-x 2" in text
    assert "--input-data " + str(tmp_path / "in.json") in text
    assert "--measurement-interval 2000" in text and "-u 127.0.0.1:8001" in text
    # A server on this host gets its tensors through system shared memory unless told otherwise.
    assert command[-1] == "--shared-memory=system"
    plain = perf_analyzer_command("perf_analyzer", ServerTarget("127.0.0.1:8001", shared_memory="off"), served, 4,
                                  settings, *files)
    assert "--shared-memory=system" not in plain
    data = perf_analyzer_input_data([sample], True)
    assert data["data"][0]["x"]["shape"] == [5, 3] and len(data["data"]) == 16
    csv_text = io.StringIO()
    csv_text.write("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
                   "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
                   "p50 latency,p90 latency,p95 latency,p99 latency,Avg latency\n")
    csv_text.write("4,3200,10,200,30,5,900,5,3,1100,1300,1400,1900,1150\n")
    level = parse_perf_analyzer_csv(csv_text.getvalue(), 4, 2.0, EventDefinition(16, 2))
    assert level.inferences_per_s == 3200 and level.requests_per_s == 200 and level.events_per_s == 100
    assert (level.latency_ms_p50, level.latency_ms_p95, level.latency_ms_p99) == (1.1, 1.4, 1.9)


def test_perf_refuses_bad_concurrency(tmp_path):
    from hepdeploy.cli import main

    result = CliRunner().invoke(main, ["perf", "--server", "127.0.0.1:1", "--model", "m", "--golden",
                                       str(tmp_path / "g.npz"), "--concurrency", "1,0"])
    assert result.exit_code == 2


def test_shared_memory_is_for_loopback_servers_only():
    from hepdeploy.backend.triton import ServerTarget, TritonRunner
    from hepdeploy.backend.triton_shm import is_loopback, shared_memory_wanted
    from hepdeploy.errors import BadInputError

    assert is_loopback("127.0.0.1:8001") and is_loopback("localhost:8001") and is_loopback("[::1]:8001")
    assert not is_loopback("10.0.0.5:8001") and not is_loopback("triton.example.org:8001")
    assert shared_memory_wanted("auto", "127.0.0.1:8001") and not shared_memory_wanted("off", "127.0.0.1:8001")
    # A remote address never tries it: auto says no, on is refused in one line, before any connection.
    runner = TritonRunner(ServerTarget("192.0.2.1:8001", shared_memory="auto"), "model")
    assert not runner.uses_shared_memory and runner.shared_memory_regions is None
    runner.close()
    with pytest.raises(BadInputError, match="not a loopback address"):
        ServerTarget("192.0.2.1:8001", shared_memory="on")
    with pytest.raises(BadInputError, match="gRPC option"):
        ServerTarget("192.0.2.1:8001", protocol="http", compression="gzip")
