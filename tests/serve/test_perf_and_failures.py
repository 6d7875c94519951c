"""perf at 1, 2 and 4 clients; a server killed mid-run gives a clear error, not a hang; serve_check;
`hepdeploy triton serve` stops cleanly on Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

# Generous limits: they only stop a hang; a loaded 2-core CI machine can take minutes to train and start.
pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_perf_at_1_2_and_4_clients_returns_positive_throughput(triton_server, serve_repository, tmp_path):
    from hepdeploy.cli import main

    model = serve_repository.models["jet_mlp"]
    json_path, plot_path = tmp_path / "perf.json", tmp_path / "perf.png"
    result = CliRunner().invoke(main, [
        "perf", "--server", triton_server.grpc_url, "--model", "jet_mlp_py", "--golden", str(model.golden),
        "--spec", str(Path(model.spec.data.reference).parent / "jet_mlp.yaml"),
        "--concurrency", "1,2,4", "--duration", "0.6", "--warmup-seconds", "0.2",
        "--json-file", str(json_path), "--plot", str(plot_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    assert [level["clients"] for level in data["levels"]] == [1, 2, 4]
    # One event of the jet MLP spec is one request of 16 jets.
    assert data["event"] == {"batch_per_request": 16, "requests_per_event": 1}
    for level in data["levels"]:
        assert level["events"] > 0 and level["events_per_s"] > 0
        assert level["inferences"] == level["events"] * 16
        assert 0 < level["latency_ms_p50"] <= level["latency_ms_p95"] <= level["latency_ms_p99"]
        # Where the served time goes, from the server's statistics extension (perf_analyzer's split).
        split = level["server"]
        assert split["requests"] >= level["requests"] and split["compute_infer_us"] > 0
        assert split["queue_us"] >= 0 and split["compute_input_us"] >= 0 and split["compute_output_us"] >= 0
        parts = split["queue_us"] + split["compute_input_us"] + split["compute_infer_us"] + split["compute_output_us"]
        assert parts <= split["server_us"] * 1.05 + 1  # the parts of the server's time do not exceed it
        assert 0 <= split["client_us"] <= level["latency_ms_mean"] * 1e3
    assert "client     queue        in     infer       out" in result.output
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perf_sends_facile_events_of_the_specs_request_batch(triton_server, serve_repository):
    from hepdeploy.backend.triton import ServerTarget
    from hepdeploy.perf import EventDefinition, PerfSettings, run_perf

    model = serve_repository.models["facile"]
    event = EventDefinition.from_spec(model.spec, batch=4000)  # 16000 in the spec; smaller keeps the test short
    assert event.requests_per_event == 1
    target = ServerTarget(triton_server.grpc_url)
    report = run_perf(target, "facile_py", model.inputs, settings=PerfSettings((2,), 0.8, 0.2, event),
                      expected=(model.spec.inputs, model.spec.outputs))
    level = report.levels[0]
    assert level.events > 0 and level.inferences == level.events * 4000

    # An event of two requests (e.g. two sub-detectors) counts once, with both requests' rows.
    two = EventDefinition(batch_per_request=1000, requests_per_event=2)
    level = run_perf(target, "facile_py", model.inputs, settings=PerfSettings((1,), 0.5, 0.1, two)).levels[0]
    assert level.events > 0 and level.requests == 2 * level.events and level.inferences == 2000 * level.events


def test_killing_the_server_mid_run_gives_a_clear_error_not_a_hang(triton_binary, serve_repository, tmp_path):
    from hepdeploy.backend.triton import ServerTarget, TritonRunner
    from hepdeploy.errors import ServerError
    from hepdeploy.perf import PerfSettings, run_perf
    from hepdeploy.triton.server import TritonServer

    model = serve_repository.models["jet_mlp"]
    with TritonServer(serve_repository.path, binary=triton_binary, load=["jet_mlp_py"], startup_timeout_s=180) as server:
        target = ServerTarget(server.grpc_url, timeout_s=10)
        runner = TritonRunner(target, "jet_mlp_py")
        runner.run({k: v[:8] for k, v in model.inputs.items()})
        killer = threading.Timer(1.5, os.kill, args=(server.pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        try:
            with pytest.raises(ServerError) as perf_error:
                run_perf(target, "jet_mlp_py", model.inputs,
                         settings=PerfSettings(concurrency=(2,), duration_s=120, warmup_s=0.1))
        finally:
            # Wait for the kill rather than cancel it: on a loaded machine perf may give up first, and
            # the checks below are about a server that is really gone.
            killer.join(timeout=30)
        # The measurement would run 120 s; the dead server is noticed within one request timeout instead.
        assert time.monotonic() - started < 60
        assert "jet_mlp_py" in str(perf_error.value) and "inference failed" in str(perf_error.value)
        with pytest.raises(ServerError, match="not reachable|no answer"):
            runner.run({k: v[:8] for k, v in model.inputs.items()})
        runner.close()
        assert not server.is_running()


def test_serve_check_validates_loadable_models_and_lists_the_refused_ones(triton_binary, serve_repository, tmp_path):
    from hepdeploy.cli import main

    goldens = {name: m.golden for name, m in serve_repository.models.items()}
    goldens["jet_mlp_wrong"] = serve_repository.models["jet_mlp"].golden
    args = [f"--golden-for={name}={path}" for name, path in goldens.items()]
    result = CliRunner().invoke(main, ["triton", "serve-check", str(serve_repository.path), *args,
                                       "--json-file", str(tmp_path / "check.json")])
    assert result.exit_code == 1, result.output  # the perturbed twin disagrees
    assert "refused_py: not loaded by the server: " in result.output
    report = json.loads((tmp_path / "check.json").read_text())
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["facile_py"]["passed"] and by_name["jet_mlp_py"]["passed"]
    assert by_name["jet_mlp_wrong_py"]["passed"] is False
    assert not by_name[serve_repository.refused]["loaded"]
    assert "preferred size must be <= max batch size" in by_name[serve_repository.refused]["load_error"]
    refused = by_name["jet_mlp"]["load_error"]
    assert not by_name["jet_mlp"]["loaded"] and ("backend 'onnxruntime'" in refused or "repo agent 'checksum'" in refused)
    assert report["status"] == "failed" and not report["ok"]
    assert "jet_mlp_wrong_py" in report["reason"]


def test_triton_serve_command_starts_and_stops_cleanly_on_ctrl_c(triton_binary, serve_repository, tmp_path):
    from hepdeploy.backend.triton import ServerTarget, TritonRunner

    command = [sys.executable, "-m", "hepdeploy", "triton", "serve", str(serve_repository.path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PATH": os.environ.get("PATH", "")})
    try:
        ready_line = ""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            if line.startswith("ready:"):
                ready_line = line
                break
        assert ready_line, process.stderr.read() if process.poll() is not None else "no ready line"
        grpc_url = ready_line.split()[2]
        assert grpc_url.startswith("127.0.0.1:")
        server_pid = int(ready_line.split("(pid ")[1].split(",")[0])
        with TritonRunner(ServerTarget(grpc_url, timeout_s=30), "jet_mlp_py") as runner:
            inputs = serve_repository.models["jet_mlp"].inputs
            assert runner.run({k: v[:4] for k, v in inputs.items()})["output"].shape == (4, 5)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert "not loaded: refused_py: " in stderr
        with pytest.raises(ProcessLookupError):
            os.kill(server_pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_perf_can_start_its_own_server_on_a_repository(triton_binary, serve_repository, tmp_path):
    from hepdeploy.cli import main

    model = serve_repository.models["facile"]
    result = CliRunner().invoke(main, [
        "perf", "--repo", str(serve_repository.path), "--model", "facile_py", "--golden", str(model.golden),
        "--batch", "1000", "--concurrency", "1", "--duration", "0.5", "--warmup-seconds", "0.1",
        "--json-file", str(tmp_path / "perf.json")])
    assert result.exit_code == 0, result.output
    level = json.loads((tmp_path / "perf.json").read_text())["levels"][0]
    assert level["clients"] == 1 and level["inferences"] == level["events"] * 1000 > 0

    refused = CliRunner().invoke(main, [
        "perf", "--repo", str(serve_repository.path), "--model", serve_repository.refused, "--golden",
        str(model.golden), "--concurrency", "1", "--duration", "0.2"])
    assert refused.exit_code == 1
    assert "preferred size must be <= max batch size" in refused.output
