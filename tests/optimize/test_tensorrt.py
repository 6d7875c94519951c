"""The TensorRT engine step: profiles from the spec, the timing cache, the engine runner's memory
and stream handling, skip without TensorRT/CUDA, and a real strongly typed build where TensorRT
and a CUDA device exist (``-m gpu``).

Where the logic is ours and only its partner is TensorRT's (the builder config's timing-cache
calls, the engine's tensor locations), the partner is a small object that behaves as the
TensorRT 10/11 bindings document it, so the logic is tested on any machine.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.backend.trt import TensorRTEngineRunner, tensor_memory
from hepdeploy.cli import main
from hepdeploy.errors import DependencyMissingError
from hepdeploy.optimize import optimize_artifact
from hepdeploy.optimize.tensorrt import (
    attach_timing_cache,
    profile_shapes,
    save_timing_cache,
    timing_cache_path,
    unavailable_reason,
)
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


class _Cache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return self.blob or b"fresh cache"


class _BuilderConfig:
    """IBuilderConfig's timing-cache calls as documented: a cache from another GPU or TensorRT version is
    refused by ``set_timing_cache(..., ignore_mismatch=False)`` (returns False, no cache attached), so that
    ``get_timing_cache()`` is None; garbage makes ``create_timing_cache`` raise."""

    def __init__(self, this_gpu: bytes = b"sm80") -> None:
        self.this_gpu = this_gpu
        self.cache: _Cache | None = None

    def create_timing_cache(self, blob: bytes) -> _Cache:
        if blob and not blob.startswith(b"sm"):
            raise RuntimeError("Failed to deserialize the timing cache")
        return _Cache(blob)

    def set_timing_cache(self, cache: _Cache, ignore_mismatch: bool) -> bool:
        if cache.blob and cache.blob != self.this_gpu and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> _Cache | None:
        return self.cache


@pytest.mark.parametrize("stale", [b"sm90", b"garbage from an old release"])
def test_a_foreign_timing_cache_is_replaced_and_never_breaks_the_build(tmp_path: Path, stale: bytes) -> None:
    # Finding 1: the refused cache left get_timing_cache() None, and .serialize() raised after the plan was written.
    path = tmp_path / "tensorrt.timing.cache"
    path.write_bytes(stale)
    config = _BuilderConfig(this_gpu=b"sm80")
    assert attach_timing_cache(config, path) is False  # refused, reported, replaced by an empty cache
    assert config.get_timing_cache() is not None
    assert save_timing_cache(config, path) and path.read_bytes() == b"fresh cache"
    # A matching cache is used as it is.
    path.write_bytes(b"sm80")
    config = _BuilderConfig(this_gpu=b"sm80")
    assert attach_timing_cache(config, path) is True and config.get_timing_cache().blob == b"sm80"
    # Nothing to save is a warning, not an exception.
    assert save_timing_cache(_BuilderConfig(), tmp_path / "none.cache") is False


def test_one_timing_cache_per_gpu_architecture_and_tensorrt_release(tmp_path: Path) -> None:
    a = timing_cache_path(tmp_path, "8.0", "10.5.0.18")
    b = timing_cache_path(tmp_path, "9.0", "10.5.0.18")
    c = timing_cache_path(tmp_path, "8.0", "10.8.0.43")
    assert len({a, b, c}) == 3 and a.name == "tensorrt.sm80.trt10.5.0.timing.cache"


class _Engine:
    """ICudaEngine's tensor queries for a network with a data input, a shape-tensor input and an output."""

    def __init__(self, trt: types.SimpleNamespace) -> None:
        self.trt = trt

    def get_tensor_location(self, name: str) -> str:
        return self.trt.TensorLocation.HOST if name == "target_shape" else self.trt.TensorLocation.DEVICE

    def get_tensor_mode(self, name: str) -> str:
        return self.trt.TensorIOMode.OUTPUT if name == "y" else self.trt.TensorIOMode.INPUT

    def is_shape_inference_io(self, name: str) -> bool:
        return name in ("target_shape", "late_shape")

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (2,) if name in ("target_shape", "late_shape") else (-1, 47)


def test_shape_tensors_are_bound_to_host_memory() -> None:
    # Finding 7: every input used to be copied to the device, shape tensors included.
    trt = types.SimpleNamespace(TensorLocation=types.SimpleNamespace(HOST="host", DEVICE="device"),
                                TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"))
    engine = _Engine(trt)
    assert tensor_memory(engine, "target_shape", trt) == "host"
    assert tensor_memory(engine, "late_shape", trt) == "host"  # a shape input whose location is reported late
    assert tensor_memory(engine, "x", trt) == "device"
    assert tensor_memory(engine, "y", trt) == "device"


def test_the_engine_runner_does_not_need_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Finding 8: buffers came from a CUDA build of torch; now from the CUDA runtime itself.
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    class Runtime:  # where CUDA cannot start, as the bindings behave then
        def __init__(self, logger: object) -> None:
            raise TypeError("pybind11::init(): factory function returned nullptr")

    class Logger:
        WARNING = 1

        def __init__(self, level: int = 0) -> None:
            self.level = level

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.5.0", Logger=Logger,
                                                                       ILogger=Logger, Runtime=Runtime))
    # Here: no CUDA runtime library; on a GPU machine: the runtime that cannot start. Never an ImportError of torch.
    with pytest.raises(DependencyMissingError, match="CUDA|runtime cannot start"):
        TensorRTEngineRunner(plan)


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
    assert record["parameters"]["profiles"] and record["parameters"]["precision"]
    assert list(tmp_path.glob("tensorrt.sm*.trt*.timing.cache"))
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2
    # The engine runner (CUDA runtime buffers, its own stream) computes what ONNX Runtime computes.
    from hepdeploy.backend.onnxrt import OnnxRuntimeRunner

    images = np.load(small_cnn.calibration)["image"][:32]
    with TensorRTEngineRunner(plan) as runner, OnnxRuntimeRunner(onnx_path) as reference:
        got, want = runner.run({"image": images})["probs"], reference.run({"image": images})["probs"]
    assert got.shape == want.shape and np.abs(got - want).max() < (1e-3 if variant == "fp32" else 5e-2)
    # A second build reuses (and keeps) the timing cache.
    again = optimize_artifact(onnx_path, "tensorrt", tmp_path / "again.plan", require_gpu=True)
    assert again.ok and np.isfinite(plan.stat().st_size)
