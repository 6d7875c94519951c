"""The gate's acceptance table, end to end through the CLI, on zoo networks published with our own publisher.

| case                                                  | exit                        |
|-------------------------------------------------------|-----------------------------|
| identical candidate                                   | 0                           |
| worse beyond an allowance in one pT bin only          | 1, naming the bin           |
| reference set too small to decide                     | 3, with the K estimate      |
| one flipped byte in an existing ``1/model.onnx``      | 1, integrity                |
| a renamed output                                      | 1, interface                |
| swapped class order with unchanged tensors            | 1, change map -> interface  |
| missing baseline                                      | 2; with --first-version: 0  |

Version N+1 is a real network each time: the same one, the same one retrained with another seed, or N's
graph with one layer changed (outputs permuted, renamed, or two classes swapped for the jets of one pT bin).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

pytestmark = pytest.mark.slow


def gate(*args: Any, env: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any] | None]:
    """``hepdeploy gate ...`` as CI runs it: (exit code, stdout + stderr, gate.json or None)."""
    import os

    args = [str(a) for a in args]
    done = subprocess.run([sys.executable, "-m", "hepdeploy", "gate", *args], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})
    report = Path(args[args.index("--report-dir") + 1]) / "gate.json" if "--report-dir" in args else None
    data = json.loads(report.read_text()) if report is not None and report.is_file() else None
    return done.returncode, done.stdout + done.stderr, data


def check(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in data["checks"] if c["check"] == name)


def publish(repo: Path, onnx_file: Path, name: str, spec: Any) -> None:
    from hepdeploy.triton.plan import ModelRequest
    from hepdeploy.triton.repository import publish_model

    publish_model(repo, ModelRequest(onnx_file, name, spec=spec))


def with_layer(source: Path, target: Path, add: Any) -> Path:
    """N's graph with one more layer at its output: ``add(graph, inner, output)`` makes ``output`` from
    ``inner`` (what N's last node now writes)."""
    model = onnx.load(str(source))
    graph = model.graph
    output = graph.output[0].name
    inner = output + "_inner"
    for node in graph.node:
        node.output[:] = [inner if o == output else o for o in node.output]
    add(graph, inner, output)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def jet(jet_versions: Any, write_gate_spec: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """jet_mlp version 1 (N) published; the gate's specs; N+1 retrained with seed 1 (tests/gate/conftest.py)."""
    folder = tmp_path_factory.mktemp("gate-jet")
    repo = folder / "repo"
    jet_versions.publish(repo)
    allowances = {"physics": {"max_auc_drop": 0.002}}
    return {"versions": jet_versions, "n": jet_versions.onnx, "repo": repo, "retrained": jet_versions.retrained,
            "data": jet_versions.zoo.reference_path,
            "spec": write_gate_spec(jet_versions.spec, folder, "gate.yaml", ["fp32"], allowances),
            "spec_fp16": write_gate_spec(jet_versions.spec, folder, "gate-fp16.yaml", ["fp32", "fp16"], allowances)}


def test_identical_candidate_passes(jet: dict[str, Any], tmp_path: Path) -> None:
    code, text, data = gate(jet["n"], "--against", f"{jet['repo']}/jet_mlp", "--spec", jet["spec_fp16"],
                            "--data", jet["data"], "--report-dir", tmp_path / "r")
    assert code == 0, text
    assert data["outcome"] == "PASS" and data["baseline"]["version"] == 1 and data["candidate"]["version"] == 2
    assert data["baseline"]["sha256"] == data["candidate"]["sha256"]
    assert check(data, "non_inferiority")["outcome"] == "PASS"
    assert check(data, "variants")["outcome"] == "PASS"  # fp16 made from N+1 and validated against it
    assert check(data, "change_map")["details"]["flip_fraction"] == 0.0
    for name in ("gate.json", "gate.md", "metrics.txt"):
        assert (tmp_path / "r" / name).is_file()


def test_too_few_events_is_undecided_with_k(jet: dict[str, Any], tmp_path: Path) -> None:
    code, text, data = gate(jet["retrained"], "--against", f"{jet['repo']}/jet_mlp", "--spec", jet["spec"],
                            "--data", jet["data"], "--max-events", 300, "--report-dir", tmp_path / "r")
    assert code == 3, text
    decided = check(data, "non_inferiority")
    assert decided["outcome"] == "UNDECIDED"
    assert "events would decide it" in json.dumps(decided)


def test_flipped_byte_in_published_version_fails_integrity(jet: dict[str, Any], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(jet["repo"], repo)
    published = repo / "jet_mlp" / "1" / "model.onnx"
    raw = bytearray(published.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    published.write_bytes(bytes(raw))
    code, text, data = gate(jet["n"], "--against", f"{repo}/jet_mlp@1", "--spec", jet["spec"], "--data", jet["data"],
                            "--report-dir", tmp_path / "r")
    assert code == 1, text
    integrity = check(data, "integrity")
    assert integrity["outcome"] == "FAIL" and "1/model.onnx" in json.dumps(integrity)
    code, text, data = gate(jet["n"], "--against", f"{repo}/jet_mlp@1", "--spec", jet["spec"], "--data", jet["data"],
                            "--allow-overwrite", "re-exported weights, see PR 7", "--report-dir", tmp_path / "r2")
    assert check(data, "integrity")["outcome"] != "FAIL", text
    assert data["allowed"]["overwrite"] == "re-exported weights, see PR 7"


def test_renamed_output_fails_interface(jet: dict[str, Any], tmp_path: Path) -> None:
    renamed = jet["versions"].renamed_output("scores")
    code, text, data = gate(renamed, "--against", f"{jet['repo']}/jet_mlp", "--spec", jet["spec"],
                            "--data", jet["data"], "--report-dir", tmp_path / "r")
    assert code == 1, text
    interface = check(data, "interface")
    assert interface["outcome"] == "FAIL" and "scores" in json.dumps(interface)
    code, text, data = gate(renamed, "--against", f"{jet['repo']}/jet_mlp", "--spec", jet["spec"],
                            "--data", jet["data"], "--allow-interface-change", "CMSSW 15_1 reads 'scores'",
                            "--report-dir", tmp_path / "r2")
    assert check(data, "interface")["outcome"] != "FAIL", text


def test_swapped_class_order_fails_interface_through_the_change_map(jet: dict[str, Any], tmp_path: Path) -> None:
    order = list(range(len(jet["versions"].labels)))
    order[0], order[1] = order[1], order[0]
    swapped = jet["versions"].permuted(order)
    code, text, data = gate(swapped, "--against", f"{jet['repo']}/jet_mlp", "--spec", jet["spec"],
                            "--data", jet["data"], "--report-dir", tmp_path / "r")
    assert code == 1, text
    assert check(data, "change_map")["details"]["permutation"] is not None
    interface = check(data, "interface")
    assert interface["outcome"] == "FAIL" and "class order" in interface["reason"] + json.dumps(interface["findings"])


def test_missing_baseline_is_bad_input_unless_first_version(jet: dict[str, Any], tmp_path: Path) -> None:
    code, text, _ = gate(jet["n"], "--against", f"{jet['repo']}/jet_mlp_new", "--spec", jet["spec"],
                         "--data", jet["data"], "--report-dir", tmp_path / "r")
    assert code == 2, text
    assert "--first-version" in text
    code, text, data = gate(jet["n"], "--against", f"{jet['repo']}/jet_mlp_new", "--spec", jet["spec"],
                            "--data", jet["data"], "--first-version", "--report-dir", tmp_path / "r2")
    assert code == 0, text
    assert data["first_version"] and data["baseline"] is None


@pytest.fixture(scope="module")
def deepjet(zoo_export: Any, write_gate_spec: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """DeepJet version 1 published; its inputs carry log(jet pT) (input_5), so a layer can act on one pT bin."""
    pytest.importorskip("tensorflow", reason="the DeepJet zoo network is a Keras model")
    from hepdeploy.convert import convert_from_spec

    exported = zoo_export("deepjet")
    folder = tmp_path_factory.mktemp("gate-deepjet")
    n = convert_from_spec(exported.spec, folder / "n.onnx").path
    repo = folder / "repo"
    publish(repo, n, "deepjet", exported.spec)
    spec = write_gate_spec(exported.spec, folder, "gate.yaml", ["fp32"], {"physics": {"max_auc_drop": 0.002}})
    return {"n": n, "repo": repo, "data": exported.reference_path, "spec": spec,
            "bins": exported.spec.validation.physics.bins["jet_pt"]}


def swap_classes_in_pt_bin(graph: Any, inner: str, output: str, low: float, high: float) -> None:
    """Classes 0 and 1 swapped for the jets whose pT (exp of input_5) lies in [low, high): a layer gone wrong."""
    n = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    order = list(range(n))
    order[0], order[1] = order[1], order[0]
    graph.initializer.extend([
        helper.make_tensor("swap_idx", onnx.TensorProto.INT64, [n], order),
        helper.make_tensor("log_low", onnx.TensorProto.FLOAT, [], [float(np.log(low))]),
        helper.make_tensor("log_high", onnx.TensorProto.FLOAT, [], [float(np.log(high))]),
    ])
    graph.node.extend([
        helper.make_node("Gather", [inner, "swap_idx"], ["swapped_scores"], axis=1),
        helper.make_node("GreaterOrEqual", ["input_5", "log_low"], ["above_low"]),
        helper.make_node("Less", ["input_5", "log_high"], ["below_high"]),
        helper.make_node("And", ["above_low", "below_high"], ["in_bin"]),
        helper.make_node("Where", ["in_bin", "swapped_scores", inner], [output]),
    ])


def test_worse_in_one_pt_bin_fails_naming_the_bin(deepjet: dict[str, Any], tmp_path: Path) -> None:
    edges = deepjet["bins"]
    low, high = edges[-2], edges[-1]
    worse = with_layer(deepjet["n"], tmp_path / "worse.onnx",
                       lambda graph, inner, old: swap_classes_in_pt_bin(graph, inner, old, low, high))
    code, text, data = gate(worse, "--against", f"{deepjet['repo']}/deepjet", "--spec", deepjet["spec"],
                            "--data", deepjet["data"], "--report-dir", tmp_path / "r")
    assert code == 1, text
    decided = check(data, "non_inferiority")
    assert decided["outcome"] == "FAIL"
    failing = [f for f in decided["findings"] if f["outcome"] == "FAIL"]
    binned = {f["bin"] for f in failing if f.get("bin")}
    # The bad bin fails; no other bin does (the inclusive metric may, since it holds the bad bin's jets).
    assert binned and all(f"{low:g}" in label for label in binned), failing
    assert f"{low:g}" in text
