"""The gate's performance check: N and N+1 timed side by side in ONNX Runtime on this CPU. No assertion
rests on how fast anything is: an unjudged comparison is INFO with its figures, a judged one fails
only for a candidate that does many times the work, and a model that is not ONNX is not timed."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hepdeploy.gate.performance import check_performance
from hepdeploy.spec import GateSpec

pytestmark = pytest.mark.slow


def _gate(**performance: Any) -> GateSpec:
    return GateSpec.model_validate({"performance": {"seconds": 0.5, **performance}})


def test_the_same_model_twice_is_reported_with_its_figures(jet_versions: Any) -> None:
    result = check_performance(jet_versions.onnx, jet_versions.onnx, jet_versions.events.inputs, _gate())
    assert result.check == "performance" and result.outcome == "INFO"
    assert "not judged (gate.performance.max_slowdown is not set)" in result.reason
    details = result.details
    assert math.isfinite(details["ratio"]) and details["ratio"] > 0 and details["noise_band"] == 0.10
    for side in ("baseline", "candidate"):
        figures = details[side]
        assert figures["throughput_per_s"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert figures["runs"] == details["pairs"] >= 10
    assert details["batch"] == 256
    [finding] = result.findings
    assert finding.outcome == "INFO" and finding.spec_key is None


def _matmul_chain(path: Path, layers: int) -> Path:
    """x [batch, 256] through ``layers`` 256x256 MatMuls: the work grows with ``layers``, the interface does not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(layers)
    weights, nodes, current = [], [], "x"
    for k in range(layers):
        weights.append(numpy_helper.from_array((rng.normal(size=(256, 256)) / 16).astype(np.float32), f"w{k}"))
        out = "y" if k == layers - 1 else f"h{k}"
        nodes.append(helper.make_node("MatMul", [current, f"w{k}"], [out]))
        current = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_a_candidate_doing_forty_times_the_work_fails_an_allowance(tmp_path: Path) -> None:
    light, heavy = _matmul_chain(tmp_path / "n.onnx", 1), _matmul_chain(tmp_path / "n1.onnx", 40)
    inputs = {"x": np.random.default_rng(0).normal(size=(512, 256)).astype(np.float32)}
    result = check_performance(light, heavy, inputs, _gate(max_slowdown=1.0))
    assert result.outcome == "FAIL", result.reason
    assert "slowdown" in result.reason and "allowance 100% plus the noise band" in result.reason
    [finding] = result.findings
    assert finding.spec_key == "gate.performance.max_slowdown" and finding.allowance == 1.0
    # The other way round N+1 is faster: within any allowance, and reported as such.
    reverse = check_performance(heavy, light, inputs, _gate(max_slowdown=1.0))
    assert reverse.outcome == "PASS" and "faster by" in reverse.reason and reverse.findings[0].improved


def test_a_model_that_is_not_onnx_is_not_timed(jet_versions: Any, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    judged = check_performance(plan, jet_versions.onnx, jet_versions.events.inputs, _gate(max_slowdown=0.2))
    assert judged.outcome == "UNDECIDED" and "is not an ONNX file" in judged.reason and not judged.findings
    reported = check_performance(plan, jet_versions.onnx, jet_versions.events.inputs, _gate())
    assert reported.outcome == "INFO" and "is not an ONNX file" in reported.reason


def test_a_graph_model_is_timed_on_its_whole_graph(tmp_path: Path) -> None:
    """Edges index nodes: dropping node rows to a batch would make the graph invalid, so nothing is dropped."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["nodes", "edges"], ["picked"], axis=0)], "graph",
        [helper.make_tensor_value_info("nodes", TensorProto.FLOAT, ["n_nodes", 4]),
         helper.make_tensor_value_info("edges", TensorProto.INT64, ["n_edges"])],
        [helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["n_edges", 4])])
    model = tmp_path / "graph.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(model))
    rng = np.random.default_rng(1)
    inputs = {"nodes": rng.normal(size=(300, 4)).astype(np.float32), "edges": rng.integers(0, 300, 900)}
    result = check_performance(model, model, inputs, _gate())
    assert result.outcome == "INFO" and result.details["batch"] is None and result.details["ratio"] > 0
