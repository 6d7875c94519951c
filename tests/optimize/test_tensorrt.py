"""The TensorRT engine step: profiles from the spec, skip without TensorRT/CUDA, and a real
strongly typed build where TensorRT and a CUDA device exist (``-m gpu``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.errors import DependencyMissingError
from hepdeploy.optimize import optimize_artifact
from hepdeploy.optimize.tensorrt import profile_shapes, unavailable_reason
from hepdeploy.spec import spec_from_dict

SPEC = spec_from_dict({
    "name": "facile_like",
    "source": {"framework": "onnx", "path": "x.onnx"},
    "inputs": [{"name": "input", "shape": ["batch", 47]}, {"name": "hits", "shape": ["batch", "n_hits", 3]}],
    "outputs": [{"name": "output", "shape": ["batch", 1]}],
    "dims": {"batch": {"min": 1, "opt": 16000, "max": 160000}, "n_hits": {"min": 4, "opt": 32, "max": 64}},
})


def test_profile_comes_from_the_spec_dims() -> None:
    shapes = profile_shapes(SPEC.inputs, SPEC)
    assert shapes["input"] == ((1, 47), (16000, 47), (160000, 47))
    assert shapes["hits"] == ((1, 4, 3), (16000, 32, 3), (160000, 64, 3))


REASON = unavailable_reason()


@pytest.mark.skipif(REASON is None, reason="TensorRT and a CUDA device are available here")
def test_skipped_with_a_reason_without_tensorrt(small_cnn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = tmp_path / "cnn.plan"
    result = optimize_artifact(small_cnn.path, "tensorrt", plan)
    assert result.status == "skipped" and result.reason == REASON
    assert result.line().startswith("tensorrt: skipped: ")
    assert not plan.exists()
    with pytest.raises(DependencyMissingError, match="cannot build an engine"):
        optimize_artifact(small_cnn.path, "tensorrt", plan, require_gpu=True)
    cli = CliRunner().invoke(main, ["optimize", str(small_cnn.path), "--variant", "tensorrt", "--require-gpu",
                                    "-o", str(plan)])
    assert cli.exit_code == 2 and "cannot build an engine" in cli.stderr
    cli = CliRunner().invoke(main, ["optimize", str(small_cnn.path), "--variant", "tensorrt", "-o", str(plan)])
    assert cli.exit_code == 0 and "tensorrt: skipped:" in cli.stdout


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=f"TensorRT engine build needs TensorRT and CUDA: {REASON}")
@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8-trt"])
def test_builds_a_strongly_typed_engine(small_cnn, tmp_path: Path, variant: str) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import tensorrt as trt

    onnx_path = tmp_path / f"cnn.{variant}.onnx"
    optimize_artifact(small_cnn.path, variant, onnx_path, calibration=small_cnn.calibration, samples=128)
    plan = tmp_path / f"cnn.{variant}.plan"
    result = optimize_artifact(onnx_path, "tensorrt", plan, require_gpu=True)
    assert result.ok and plan.stat().st_size > 0
    record = json.loads((tmp_path / f"cnn.{variant}.plan.json").read_text())["steps"][-1]
    assert record["tool_version"] == trt.__version__ and record["parameters"]["compute_capability"]
    assert (tmp_path / "tensorrt.timing.cache").stat().st_size > 0
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2
    # A second build reuses (and keeps) the timing cache.
    again = optimize_artifact(onnx_path, "tensorrt", tmp_path / "again.plan", require_gpu=True)
    assert again.ok and np.isfinite(plan.stat().st_size)
