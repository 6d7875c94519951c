"""Which TensorRT can load a plan, by its recorded version: all four parts, as TensorRT compares them, and the
major-release jumps NVIDIA supports for version-compatible plans. The version read from a ``tensorrt``
module that stands in for the bindings (with or without ``get_version``) and for libnvinfer's C entry points."""
from __future__ import annotations

import types

import pytest

from hepdeploy import plan_compat
from hepdeploy.plan_compat import PlanMetadata, tensorrt_runtime_problem


def _plan(version: str, version_compatible: bool = False) -> PlanMetadata:
    return PlanMetadata(tensorrt_version=version, compute_capability="8.0", version_compatible=version_compatible)


def test_a_plan_loads_only_in_the_same_four_part_version() -> None:
    # Defect 9: TensorRT refuses a plan of 10.5.0.18 in 10.5.0.25; comparing three parts called them equal.
    assert tensorrt_runtime_problem(_plan("10.5.0.18"), "10.5.0.18", "Triton 24.10") is None
    problem = tensorrt_runtime_problem(_plan("10.5.0.18"), "10.5.0.25", "this machine")
    assert problem is not None and "built with TensorRT 10.5.0.18, this machine has 10.5.0.25" in problem
    # A record with three parts (a wheel's __version__) cannot tell builds apart: equal on what it has.
    assert tensorrt_runtime_problem(_plan("10.5.0"), "10.5.0.18", "Triton 24.10") is None
    assert tensorrt_runtime_problem(_plan("10.5"), "10.5.0.18", "Triton 24.10") is not None


@pytest.mark.parametrize(("built", "runtime", "loads"), [
    ("10.5.0.18", "10.8.0.43", True),    # a later release of the same major
    ("10.5.0.18", "10.5.0.25", True),    # a later build
    ("10.5.0.18", "10.5.0.10", False),   # an older build
    ("10.8.0.43", "10.5.0.18", False),   # an older release
    ("8.6.1.6", "10.5.0.18", True),      # 8 -> 10, supported
    ("10.5.0.18", "11.0.0.1", True),     # 10 -> 11, supported
    ("8.6.1.6", "11.0.0.1", False),      # 8 -> 11: not a supported jump
    ("10.5.0.18", "12.0.0.1", False),    # any later major: not supported
    ("11.0.0.1", "12.0.0.1", False),
])
def test_version_compatible_plans_cross_only_the_supported_major_jumps(built: str, runtime: str, loads: bool) -> None:
    # Defect 9: version-compatible plans were accepted in any later major release.
    problem = tensorrt_runtime_problem(_plan(built, version_compatible=True), runtime, "Triton")
    assert (problem is None) is loads, problem


class _Library:
    """libnvinfer's version entry points: NV_TENSORRT_VERSION packed as major*10000+minor*100+patch, and the build."""

    def getInferLibVersion(self) -> int:  # noqa: N802 (the C name)
        return 100500

    def getInferLibBuildVersion(self) -> int:  # noqa: N802
        return 18


def test_the_full_version_is_recorded_where_it_can_be_read() -> None:
    wheel = types.SimpleNamespace(__version__="10.5.0")  # the pip wheel: three parts
    with_getter = types.SimpleNamespace(__version__="10.5.0", get_version=lambda: "10.5.0.18")
    assert plan_compat.tensorrt_full_version(with_getter) == plan_compat.TensorRTVersion("10.5.0.18", "library")
    from_library = plan_compat.tensorrt_full_version(wheel, library=_Library())
    assert (from_library.text, from_library.source) == ("10.5.0.18", "library")
    # No way to the fourth part (here: no libnvinfer): the three parts, marked as such.
    bare = plan_compat.tensorrt_full_version(wheel, library=types.SimpleNamespace())
    assert (bare.text, bare.source) == ("10.5.0", "__version__")
    assert PlanMetadata(tensorrt_version=bare.text, tensorrt_version_source=bare.source,
                        compute_capability="8.0").tensorrt_version_source == "__version__"
