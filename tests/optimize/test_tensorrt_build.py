"""The TensorRT build's own decisions, with TensorRT's partners standing in as the bindings document them:
the builder config's flags (TF32 is on by default, ``NvInfer.h``) and the optimisation profile of a
parsed network whose inputs keep the dims the ONNX graph fixes (``network.get_input(i).shape``, -1 where
dynamic). Runs on any machine; the real build is ``tests/optimize/test_tensorrt.py -m gpu``."""
from __future__ import annotations

import types
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from hepdeploy.errors import ConversionError
from hepdeploy.optimize import tensorrt as build
from hepdeploy.optimize.tensorrt import _Profile, profile_shapes
from hepdeploy.spec import VariantSpec, spec_from_dict

TRT = types.SimpleNamespace(
    BuilderFlag=types.SimpleNamespace(TF32="TF32", FP16="FP16", VERSION_COMPATIBLE="VERSION_COMPATIBLE"),
    MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
)


class _Config:
    """IBuilderConfig's flags: TF32 set when the config is created, as ``NvInfer.h`` documents."""

    def __init__(self) -> None:
        self.flags = {TRT.BuilderFlag.TF32}
        self.pools: dict[str, int] = {}

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: str) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size


class _Builder:
    def create_builder_config(self) -> _Config:
        return _Config()


@pytest.mark.parametrize("version_compatible", [False, True])
def test_fp32_plans_are_built_without_tf32_and_the_sidecar_says_so(version_compatible: bool) -> None:
    # Defect 2: kTF32 is on by default and strong typing leaves it on; TF32 products miss FP32's 1e-5 by ~1e-3.
    variant = VariantSpec(name="tensorrt", workspace_mib=512, version_compatible=version_compatible)
    config, flags = build.builder_config(TRT, _Builder(), variant)
    assert not config.get_flag(TRT.BuilderFlag.TF32)
    assert "TF32=off" in flags
    assert config.get_flag(TRT.BuilderFlag.VERSION_COMPATIBLE) is version_compatible
    assert ("VERSION_COMPATIBLE" in flags) is version_compatible
    assert config.pools == {"WORKSPACE": 512 << 20}


class _Input:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape, self.is_shape_tensor = name, shape, False


class _Network:
    """The parsed network of an ONNX file: its inputs with the graph's dims (-1 where symbolic), as
    the ONNX parser makes them."""

    def __init__(self, path: Path) -> None:
        graph = onnx.load(str(path)).graph
        self.inputs = [_Input(v.name, tuple(d.dim_value if d.HasField("dim_value") else -1
                                            for d in v.type.tensor_type.shape.dim)) for v in graph.input]
        self.num_inputs = len(self.inputs)

    def get_input(self, index: int) -> _Input:
        return self.inputs[index]


class _OptimizationProfile:
    """IOptimizationProfile.set_shape: the bindings raise when min <= opt <= max does not hold."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...]) -> None:
        if not all(0 <= a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
            raise RuntimeError("setDimensions: min <= opt <= max does not hold\n(further TensorRT detail)")
        self.shapes[name] = (low, opt, high)


SPEC = spec_from_dict({
    "name": "fixed_batch", "source": {"framework": "onnx", "path": "x.onnx"},
    "inputs": [{"name": "x", "shape": ["batch", "width"]}], "outputs": [{"name": "y", "shape": ["batch", "width"]}],
    "dims": {"batch": {"min": 1, "opt": 256, "max": 1024}, "width": {"min": 8, "opt": 16, "max": 32}},
})


def _fixed_batch_1(tmp_path: Path, width: int | str = 16) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_dims_the_graph_fixes_pin_the_profile(tmp_path: Path) -> None:
    # Defect 7: a fixed-batch-1 graph got the spec's batch 1..1024, which TensorRT's builder refuses.
    profile = _Profile(_OptimizationProfile())
    profile.cover(_Network(_fixed_batch_1(tmp_path)), profile_shapes(SPEC.inputs, SPEC), {})
    assert profile.profile.shapes["x"] == ((1, 16), (1, 16), (1, 16))
    assert profile.recorded["x"].max == [1, 16]
    # A symbolic dim keeps the spec's range.
    profile = _Profile(_OptimizationProfile())
    profile.cover(_Network(_fixed_batch_1(tmp_path, "width")), profile_shapes(SPEC.inputs, SPEC), {})
    assert profile.profile.shapes["x"] == ((1, 8), (1, 16), (1, 32))


def test_a_spec_range_that_excludes_the_fixed_dim_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"axis 1 is fixed to 64 by the graph, outside the spec's range 8\.\.32"):
        _Profile(_OptimizationProfile()).cover(_Network(_fixed_batch_1(tmp_path, 64)),
                                               profile_shapes(SPEC.inputs, SPEC), {})


def test_a_profile_tensorrt_refuses_is_one_line(tmp_path: Path) -> None:
    shapes = {"x": ((1, 8), (1, 40), (1, 32))}  # opt above max: set_shape raises in the bindings
    with pytest.raises(ConversionError) as refused:
        _Profile(_OptimizationProfile()).cover(_Network(_fixed_batch_1(tmp_path, "width")), shapes, {})
    message = str(refused.value)
    assert "\n" not in message and "input 'x'" in message and "min <= opt <= max does not hold" in message


def test_a_profile_the_config_refuses_is_an_error_in_tensorrts_words(tmp_path: Path) -> None:
    # Defect 5: add_optimization_profile returns -1 on an invalid profile (NvInfer.h); the build used to go on.
    class Logger:
        def said(self) -> str:
            return " (TensorRT: Optimization profile is missing values for input x)"

    class Refusing:
        def add_optimization_profile(self, profile: object) -> int:
            return -1

    class Accepting:
        def add_optimization_profile(self, profile: object) -> int:
            return 0

    with pytest.raises(ConversionError, match=r"refused the optimisation profile for .*m\.onnx \(TensorRT: Optim"):
        build.add_profile(Refusing(), object(), Logger(), tmp_path / "m.onnx")
    assert build.add_profile(Accepting(), object(), Logger(), tmp_path / "m.onnx") == 0
