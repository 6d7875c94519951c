"""The registries are complete: every Triton platform has a checker (and its filler, where it names one,
resolves), every variant an importable maker, every physics metric a kernel. A registry entry that names a function that does not
exist would otherwise fail only when a user first asks for that platform or variant."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hepdeploy.platforms import REGISTRY as PLATFORMS
from hepdeploy.platforms import USER_PLATFORMS, platform_for_file, platform_of_config
from hepdeploy.registry import named_function
from hepdeploy.variants import REGISTRY as VARIANTS


def _resolve(target: str) -> Callable[..., Any]:
    return named_function(target)  # an ImportError, AttributeError or TypeError fails the test


@pytest.mark.parametrize("entry", PLATFORMS, ids=lambda e: e.name)
def test_every_platform_has_a_checker_and_its_filler_resolves(entry) -> None:  # noqa: ANN001
    assert entry.checker is not None, f"{entry.name}: a served version of it would go unchecked"
    assert _resolve(entry.checker).__module__ == "hepdeploy.triton.check"
    if entry.filler is not None:
        assert _resolve(entry.filler).__module__ == "hepdeploy.triton.config"
    # A config written for the platform reads back as it, and so does one that names only its backend.
    written = (entry.name, "") if entry.config_field == "platform" else ("", entry.name)
    assert platform_of_config(*written) == entry.name
    assert platform_of_config("", entry.backend) == entry.name


@pytest.mark.parametrize("entry", [e for e in PLATFORMS if e.user_choice], ids=lambda e: e.name)
def test_a_model_file_is_recognised_as_its_platform(entry, tmp_path: Path) -> None:  # noqa: ANN001
    assert entry.name in USER_PLATFORMS and entry.default_filename
    if entry.folder_marker:
        folder = tmp_path / "model"
        folder.mkdir()
        (folder / entry.folder_marker).write_bytes(b"")
        assert platform_for_file(folder) == entry.name
    for suffix in entry.suffixes:
        assert platform_for_file(tmp_path / f"model{suffix}") == entry.name


@pytest.mark.parametrize("kind", VARIANTS, ids=lambda k: k.name)
def test_every_variant_has_an_importable_maker(kind) -> None:  # noqa: ANN001
    if kind.maker is None:
        assert kind.name == "fp32"  # the simplified FP32 graph is the variant itself
    else:
        assert _resolve(kind.maker).__module__.startswith("hepdeploy.optimize")


def test_every_physics_metric_has_a_kernel_and_a_scalar() -> None:
    from hepdeploy.spec import PhysicsSpec
    from hepdeploy.validate.metric_registry import PHYSICS_METRICS

    assert len({m.name for m in PHYSICS_METRICS}) == len(PHYSICS_METRICS)
    for metric in PHYSICS_METRICS:
        assert callable(metric.kernel) and callable(metric.scalar) and callable(metric.title), metric.name
        assert metric.allowance is None or metric.allowance in PhysicsSpec.model_fields, metric.name
