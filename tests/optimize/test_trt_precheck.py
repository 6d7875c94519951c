"""The TensorRT ONNX parser precheck: what TensorRT would refuse, from the graph alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.cli import main
from hepdeploy.optimize import optimize_artifact
from hepdeploy.optimize.trt_precheck import (
    available_lists,
    operator_list,
    precheck_model,
)
from hepdeploy.variants import variant_kind


def _model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)


def test_the_lists_are_kept_with_their_source() -> None:
    assert {"10.8", "11.0"} <= set(available_lists())
    listed = operator_list("10.5")  # Triton 24.10's TensorRT: the nearest list is the oldest we keep
    assert listed.tensorrt_version == "10.8" and len(listed.commit) == 40 and listed.opset_range == (9, 22)
    assert operator_list("11.1").tensorrt_version == "11.0"
    assert "Unique" in listed.unsupported and "Conv" in listed.supported


def test_custom_domain_unsupported_and_unlisted_ops_are_errors(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("FusedGemm", ["x"], ["a"], name="ms_gemm", domain="com.microsoft"),
        helper.make_node("Unique", ["a"], ["b"], name="unique"),
        helper.make_node("NotAnOnnxOp", ["b"], ["y"], name="mystery"),
    ]
    model = _model(nodes, [X], [Y], extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    report = precheck_model(_save(model, tmp_path / "m.onnx"), "10.5")
    lines = report.lines()
    assert not report.ok and len(report.errors) == 3
    assert any("FusedGemm node 'ms_gemm': custom domain 'com.microsoft'" in line for line in lines)
    assert any("Unique node 'unique': not supported by TensorRT's ONNX parser" in line for line in lines)
    assert any("NotAnOnnxOp node 'mystery': not in TensorRT's ONNX operator list" in line for line in lines)
    assert "for TensorRT 10.8" in report.summary() and "asked for 10.5" in report.summary()


def test_documented_restrictions(tmp_path: Path) -> None:
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape")
    axes_from_data = helper.make_node("Slice", ["s", "one", "two"], ["axes"], name="slice")
    nodes = [
        shape, axes_from_data,
        # ReduceMean (opset 18): `axes` must be an initializer.
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="mean_runtime_axes"),
        helper.make_node("ReduceMean", ["x", "axes_const"], ["m2"], name="mean_const_axes"),
        # TopK: K must be less than 3840; a run-time K is a warning; `sorted` must be 1.
        helper.make_node("TopK", ["x", "k_big"], ["v1", "i1"], name="topk_big"),
        helper.make_node("TopK", ["x", "k_ok"], ["v2", "i2"], name="topk_ok", sorted=0),
        helper.make_node("TopK", ["x", "k_runtime"], ["v3", "i3"], name="topk_runtime"),
        helper.make_node("Identity", ["m"], ["y"], name="out"),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([1], np.int64), "axes_const"),
             numpy_helper.from_array(np.array([5000], np.int64), "k_big"),
             numpy_helper.from_array(np.array([8], np.int64), "k_ok")]
    k_runtime = helper.make_tensor_value_info("k_runtime", TensorProto.INT64, [1])
    model = _model(nodes, [X, k_runtime], [Y], inits, opset=18)
    report = precheck_model(_save(model, tmp_path / "m.onnx"), "11.0")
    lines = report.lines()
    assert any("mean_runtime_axes" in line and "`axes` is computed at run time" in line for line in lines)
    assert not any("mean_const_axes" in line for line in lines)
    assert any("topk_big" in line and "`K` = 5000 must be less than 3840" in line for line in lines)
    assert any("topk_ok" in line and "`sorted` must be 1" in line for line in lines)
    assert any(line.startswith("warning: TopK node 'topk_runtime'") for line in lines)
    assert len(report.errors) == 3


def test_opset_outside_the_list_is_an_error(tmp_path: Path) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [X], [Y], opset=8)
    report = precheck_model(_save(model, tmp_path / "m.onnx"), "10.8")
    assert any("opset 8 is outside opset 9 to 22" in f.message for f in report.errors)


@pytest.mark.slow
def test_variants_for_tensorrt_pass_and_cpu_int8_is_refused(small_cnn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for variant in ("fp16", "int8-trt", "int8-cpu"):
        optimize_artifact(small_cnn.path, variant, tmp_path / variant_kind(variant).filename("cnn"),
                          calibration=small_cnn.calibration, samples=128)
    assert precheck_model(small_cnn.path, "10.5").ok
    assert precheck_model(tmp_path / "cnn_fp16.onnx", "10.5").ok
    assert precheck_model(tmp_path / "cnn_int8_trt.onnx", "10.5").ok
    refused = precheck_model(tmp_path / "cnn_int8_cpu.onnx", "10.5")
    assert not refused.ok and "UINT8 quantization" in refused.errors[0].message
    cli = CliRunner().invoke(main, ["optimize", str(tmp_path / "cnn_int8_cpu.onnx"), "--variant", "tensorrt",
                                    "--precheck"])
    assert cli.exit_code == 1 and "would be refused" in cli.output
    cli = CliRunner().invoke(main, ["optimize", str(tmp_path / "cnn_int8_trt.onnx"), "--variant", "tensorrt",
                                    "--precheck", "--server-release", "24.10"])
    assert cli.exit_code == 0 and "passes" in cli.output
    cli = CliRunner().invoke(main, ["optimize", str(small_cnn.path), "--variant", "fp16", "--precheck"])
    assert cli.exit_code == 2 and "use it with --variant tensorrt" in cli.output


def test_subgraphs_are_checked_and_a_missing_list_is_said(tmp_path: Path) -> None:
    inner = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="unique_in_branch")], "then", [],
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["v"], name="identity")], "else", [],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=inner, else_branch=other)
    report = precheck_model(_save(_model([node], [X, cond], [Y]), tmp_path / "m.onnx"), "10.5")
    assert any(f.node == "unique_in_branch" for f in report.errors)
    # 10.5 has no list of its own: the nearest (10.8) is used, and the report says so.
    assert any("no operator list for TensorRT 10.5" in f.message for f in report.findings if f.severity == "warning")
    exact = precheck_model(_save(_model([node], [X, cond], [Y]), tmp_path / "m.onnx"), "10.8")
    assert not any("no operator list" in f.message for f in exact.findings)


def test_folded_constants_and_subgraph_initializers_are_build_time_constants(tmp_path: Path) -> None:
    # Defect 11 (second read): `axes` from a Constant through foldable nodes, and an initializer of an If
    # branch, were reported as "computed at run time" though constant folding resolves them.
    axes_value = helper.make_tensor("axes_value", TensorProto.INT64, [1], [1])
    branch_axes = numpy_helper.from_array(np.array([0], np.int64), "branch_axes")
    branch = helper.make_graph([helper.make_node("Unsqueeze", ["x", "branch_axes"], ["u"], name="unsqueeze_in_branch")],
                               "then", [], [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
                               [branch_axes])
    other = helper.make_graph([helper.make_node("Unsqueeze", ["x", "folded_axes"], ["v"], name="outer_axes_in_branch")],
                              "else", [], [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Constant", [], ["axes_c"], name="const", value=axes_value),
        helper.make_node("Cast", ["axes_c"], ["axes_cast"], name="cast", to=TensorProto.INT64),
        helper.make_node("Identity", ["axes_cast"], ["folded_axes"], name="ident"),
        helper.make_node("Unsqueeze", ["x", "folded_axes"], ["x3"], name="unsqueeze_folded"),
        helper.make_node("Squeeze", ["x3", "folded_axes"], ["x2"], name="squeeze_folded"),
        helper.make_node("If", ["cond"], ["b"], name="branch", then_branch=branch, else_branch=other),
        # Still an error: axes computed from a graph input's shape at run time.
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "one", "two"], ["runtime_axes"], name="slice"),
        helper.make_node("Unsqueeze", ["x2", "runtime_axes"], ["y"], name="unsqueeze_runtime"),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2], np.int64), "two")]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    report = precheck_model(_save(_model(nodes, [X, cond], [Y], inits), tmp_path / "m.onnx"), "10.8")
    flagged = {f.node for f in report.errors}
    assert flagged == {"unsqueeze_runtime"}, report.lines()
