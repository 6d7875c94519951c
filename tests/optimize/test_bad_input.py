"""Bad input to the optimize stage: one clear line, exit code 2, nothing written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from hepdeploy.artifacts import save_onnx
from hepdeploy.cli import main
from hepdeploy.errors import BadInputError, DataError
from hepdeploy.optimize import optimize_artifact


@pytest.fixture
def add_relu(tmp_path: Path) -> tuple[Path, Path]:
    """A real but unquantizable model: y = relu(x + c)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    c = helper.make_tensor("c", TensorProto.FLOAT, [4], [1.0, -2.0, 3.0, -4.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["y"], name="relu")],
        "add_relu", [x], [y], [c],
    )
    path = save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                     tmp_path / "add_relu.onnx")
    data = tmp_path / "add_relu_calibration.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
    return path, data


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["int8-cpu", "int8-trt"])
def test_nothing_quantizable_is_refused_not_copied(add_relu: tuple[Path, Path], tmp_path: Path, variant: str) -> None:
    model, data = add_relu
    out = tmp_path / f"out.{variant}.onnx"
    code, _, err = _run("optimize", str(model), "--variant", variant, "--calibration", str(data),
                        "--samples", "32", "-o", str(out))
    assert code == 2
    assert "nothing to quantize" in err and "Add, Relu" in err and "not written as an INT8 variant" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_unknown_variant(add_relu: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = add_relu
    code, _, err = _run("optimize", str(model), "--variant", "int4", "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and "unknown variant 'int4'" in err
    with pytest.raises(BadInputError, match="unknown variant"):
        optimize_artifact(model, "bf16", tmp_path / "x.onnx")


def test_int8_without_calibration_data(add_relu: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = add_relu
    code, _, err = _run("optimize", str(model), "--variant", "int8-cpu", "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and "needs calibration data" in err


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"x": np.zeros((64, 4), np.float32), "z": np.zeros((64, 4), np.float32)}, "unexpected tensor z"),
        ({"y": np.zeros((64, 4), np.float32)}, "no tensor named x"),
        ({"x": np.zeros((64, 5), np.float32)}, "size 5 on axis 1, expected 4"),
        ({"x": np.zeros((64, 4), np.int32)}, "dtype int32, expected float32"),
        ({"x": np.full((64, 4), np.nan, np.float32)}, "128 NaN"),
        ({"x": np.zeros((16, 4), np.float32)}, "holds 16 samples, fewer than the 32 asked for"),
    ],
)
def test_bad_calibration_data_through_the_cli(add_relu: tuple[Path, Path], tmp_path: Path,
                                              arrays: dict[str, np.ndarray], needle: str) -> None:
    model, _ = add_relu
    data = tmp_path / "bad.npz"
    np.savez(data, **arrays)
    out = tmp_path / "out.onnx"
    code, _, err = _run("optimize", str(model), "--variant", "int8-cpu", "--calibration", str(data),
                        "--samples", "32", "-o", str(out))
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_calibration_dict_through_the_library(add_relu: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = add_relu
    with pytest.raises(DataError, match="Inf"):
        optimize_artifact(model, "int8-cpu", tmp_path / "o.onnx",
                          calibration={"x": np.full((8, 4), np.inf, np.float32)})


def test_existing_output_survives_a_failed_run(add_relu: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = add_relu
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"previous result")
    data = tmp_path / "nan.npz"
    np.savez(data, x=np.full((64, 4), np.nan, np.float32))
    code, _, _ = _run("optimize", str(model), "--variant", "int8-cpu", "--calibration", str(data), "-o", str(out))
    assert code == 2 and out.read_bytes() == b"previous result"


def test_refuses_to_overwrite_the_source_and_odd_suffixes(add_relu: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = add_relu
    with pytest.raises(BadInputError, match="overwrite the source"):
        optimize_artifact(model, "fp32", model)
    with pytest.raises(BadInputError, match=r"\.onnx file"):
        optimize_artifact(model, "fp32", tmp_path / "x.plan")
    with pytest.raises(BadInputError, match=r"\.plan file"):
        optimize_artifact(model, "tensorrt", tmp_path / "x.onnx")


def test_corrupt_model(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    code, _, err = _run("optimize", str(broken), "--variant", "fp32", "-o", str(tmp_path / "o.onnx"))
    assert code == 2 and "error:" in err


def test_fp16_node_pattern_that_matches_nothing(add_relu: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = add_relu
    code, _, err = _run("optimize", str(model), "--variant", "fp16", "--keep-node", "no_such_node",
                        "-o", str(tmp_path / "o.onnx"))
    assert code == 2 and "--keep-node 'no_such_node' matches no node" in err
    code, _, err = _run("optimize", str(model), "--variant", "fp16", "--keep-op", "NotAnOp",
                        "-o", str(tmp_path / "o.onnx"))
    assert code == 2 and "--keep-op 'NotAnOp' is not an ONNX operator type" in err
    # The older spellings of the one pair (fp16's --fp32-node, INT8's --exclude-op) are the same options.
    code, _, err = _run("optimize", str(model), "--variant", "fp16", "--fp32-node", "no_such_node",
                        "-o", str(tmp_path / "o.onnx"))
    assert code == 2 and "--keep-node 'no_such_node' matches no node" in err
    code, _, err = _run("optimize", str(model), "--variant", "fp16", "--exclude-op", "NotAnOp",
                        "-o", str(tmp_path / "o.onnx"))
    assert code == 2 and "--keep-op 'NotAnOp' is not an ONNX operator type" in err
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(("variant", "option", "value"), [
    ("int8-cpu", "--workspace-mib", "1024"), ("fp32", "--keep-node", "add"), ("fp16", "--method", "entropy"),
    ("int8-trt", "--per-tensor", None), ("tensorrt", "--quantize-op", "Conv"), ("int8-cpu", "--high-precision", "fp16"),
])
def test_an_option_that_does_not_apply_to_the_variant_is_refused(add_relu: tuple[Path, Path], tmp_path: Path,
                                                                  variant: str, option: str, value: str | None) -> None:
    model, data = add_relu
    out = tmp_path / "o.onnx"
    code, _, err = _run("optimize", str(model), "--variant", variant, option, *([value] if value else []),
                        "--calibration", str(data), "-o", str(out))
    assert code == 2 and f"{option} does not apply to the {variant} variant" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_cli_fp32_and_fp16_write_artifacts(add_relu: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = add_relu
    code, out, err = _run("optimize", str(model), "--variant", "fp32", "-o", str(tmp_path))
    assert code == 0, err
    # An output folder gets the registry's file name, the one a build gives the variant.
    assert out.startswith("fp32: ok") and (tmp_path / "add_relu_fp32.onnx").is_file()
    code, out, err = _run("optimize", str(tmp_path / "add_relu_fp32.onnx"), "--variant", "fp16",
                          "--calibration", str(data), "--samples", "32", "-o", str(tmp_path / "half.onnx"))
    assert code == 0, err
    half = onnx.load(str(tmp_path / "half.onnx"))
    assert any(i.data_type == TensorProto.FLOAT16 for i in half.graph.initializer)
