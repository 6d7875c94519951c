"""System shared memory to a server on this host: the same answers as the gRPC path on every zoo model,
regions reused across requests and gone after the run, after Ctrl-C and after a killed client."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from hepdeploy.backend.triton import ServerTarget, TritonRunner
from hepdeploy.backend.triton_shm import REGION_PREFIX, SharedMemoryRegions, leaked_segments

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(1500)]


def _registered(url: str) -> list[str]:
    import tritonclient.grpc as grpc_client

    client = grpc_client.InferenceServerClient(url)
    try:
        status = client.get_system_shared_memory_status(as_json=True)
    finally:
        client.close()
    return [name for name in status.get("regions", {}) if name.startswith(REGION_PREFIX)]


@pytest.fixture(scope="module")
def zoo_server(zoo_export, triton_binary, tmp_path_factory):
    """A server on the Python-backend twins of the default zoo set, with each network's reference inputs."""
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.pipeline import DEFAULT_ZOO_SET
    from hepdeploy.triton.repository import publish_python_twin
    from hepdeploy.triton.server import TritonServer
    from hepdeploy.validate.reference import load_data_file

    work = tmp_path_factory.mktemp("shm-zoo")
    models = {}
    for name in DEFAULT_ZOO_SET:
        export = zoo_export(name)
        artifact = convert_from_spec(export.spec, work / f"{name}.onnx")
        publish_python_twin(work / "repo", artifact.path, spec=export.spec, verify=False)
        data = load_data_file(export.reference_path)
        rows = 300 if all(t.has_batch_axis for t in export.spec.inputs) else None  # a graph's tensors stay whole
        models[f"{export.spec.triton.model_name or name}_py"] = (export.spec, {t.name: data[t.name][:rows]
                                                                              for t in export.spec.inputs})
    with TritonServer(work / "repo", binary=triton_binary, startup_timeout_s=180, load_timeout_s=300) as server:
        assert server.model_load_errors() == {}
        yield server, models


def test_shared_memory_answers_equal_the_grpc_path_on_every_zoo_model(zoo_server) -> None:
    server, models = zoo_server
    assert len(models) == 5
    for model, (spec, inputs) in models.items():
        expected = (spec.inputs, spec.outputs)
        with TritonRunner(ServerTarget(server.grpc_url, shared_memory="off"), model, expected=expected) as plain:
            want = plain.run(inputs)
        # Requests of at most 64 rows: several requests reuse the same two regions.
        with TritonRunner(ServerTarget(server.grpc_url, shared_memory="auto"), model, expected=expected,
                          max_request_batch=64) as shared:
            got = shared.run(inputs)
            regions = shared.shared_memory_regions
            assert shared.uses_shared_memory and regions is not None
            # Inputs always go through the input region; outputs through the output region when their size is
            # known before the answer (the interaction network's edge count is not: its scores come in the answer).
            assert set(regions.regions) == ({"input"} if model == "interaction_network_py" else {"input", "output"})
            # One registration per region, however many requests used it.
            assert regions.registrations == len(regions.regions), model
            assert shared.requests_sent >= 2 or shared.max_batch_size == 0, model
            assert len(_registered(server.grpc_url)) == len(regions.regions)
        assert want.keys() == got.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{model}:{name}")
        assert _registered(server.grpc_url) == [] and leaked_segments() == []


def test_ctrl_c_mid_run_unregisters_and_unlinks_the_regions(zoo_server) -> None:
    server, models = zoo_server
    spec, inputs = models["facile_py"]
    with pytest.raises(KeyboardInterrupt):
        with TritonRunner(ServerTarget(server.grpc_url, shared_memory="on"), "facile_py") as runner:
            runner.run(inputs)
            assert len(leaked_segments()) == 2
            raise KeyboardInterrupt
    assert _registered(server.grpc_url) == [] and leaked_segments() == []


def test_perf_over_shared_memory_reports_its_transport_and_leaves_nothing(zoo_server, tmp_path) -> None:
    from hepdeploy.cli import main
    from hepdeploy.data import save_tensors

    server, models = zoo_server
    spec, inputs = models["jet_mlp_py"]
    save_tensors(tmp_path / "inputs.npz", inputs)
    result = CliRunner().invoke(main, [
        "perf", "--server", server.grpc_url, "--model", "jet_mlp_py", "--golden", str(tmp_path / "inputs.npz"),
        "--batch", "16", "--concurrency", "1,2", "--duration", "0.5", "--warmup-seconds", "0.2",
        "--shared-memory", "on", "--json-file", str(tmp_path / "perf.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "perf.json").read_text())
    assert data["transport"] == "grpc+shm" and "over grpc+shm" in result.output
    assert all(level["events"] > 0 and level["server"]["compute_infer_us"] > 0 for level in data["levels"])
    assert _registered(server.grpc_url) == [] and leaked_segments() == []


def test_perf_over_shared_memory_on_a_graph_model_with_a_dynamic_output(zoo_server) -> None:
    # The interaction network has no batch axis and an edge count known only from the answer: its inputs go
    # through shared memory, its scores come back in the answer.
    from hepdeploy.perf import PerfSettings, run_perf

    server, models = zoo_server
    spec, inputs = models["interaction_network_py"]
    report = run_perf(ServerTarget(server.grpc_url, timeout_s=120, shared_memory="on"), "interaction_network_py",
                      inputs, settings=PerfSettings(concurrency=(1, 2), duration_s=0.5, warmup_s=0.2),
                      expected=(spec.inputs, spec.outputs))
    assert report.transport == "grpc+shm" and all(level.events > 0 for level in report.levels)
    assert _registered(server.grpc_url) == [] and leaked_segments() == []


CLIENT = """
import sys, time
import numpy as np
from hepdeploy.backend.triton import ServerTarget, TritonRunner
runner = TritonRunner(ServerTarget(sys.argv[1], shared_memory="on"), "jet_mlp_py")
runner.run({"input_1": np.zeros((16, 16), np.float32)})
print("registered", flush=True)
time.sleep(600)
"""


def test_a_killed_client_leaves_no_segment_and_the_next_client_sweeps_its_registration(zoo_server) -> None:
    server, _ = zoo_server
    client = subprocess.Popen([sys.executable, "-c", CLIENT, server.grpc_url], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "registered"
        assert len(leaked_segments()) == 2 and len(_registered(server.grpc_url)) == 2
    finally:
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
    # Python's resource tracker, which outlives the client, unlinks its segments.
    deadline = time.monotonic() + 30
    while leaked_segments() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leaked_segments() == []
    stale = _registered(server.grpc_url)
    assert len(stale) == 2 and all(f"_{client.pid}_" in name for name in stale)
    import tritonclient.grpc as grpc_client

    connection = grpc_client.InferenceServerClient(server.grpc_url)
    try:
        with SharedMemoryRegions(connection, timeout_s=30, grpc=True) as regions:
            assert sorted(regions.swept) == sorted(stale)
    finally:
        connection.close()
    assert _registered(server.grpc_url) == []
