"""Shared fixtures: trained zoo networks, exported once per test session.

``zoo_export(name, flavour=None)`` returns a :class:`hepdeploy.model_zoo.ZooExport`
(spec, spec_path, source_path, reference_path, calibration_path, metrics) of the
network trained with the *reduced* budget. Training results are cached in
``zoo_cache_dir`` (shared by pytest-xdist workers of one session; set
``HEPDEPLOY_TEST_CACHE`` to keep it across sessions), so each network trains at most
once per session. Treat the exported folder as read-only: copy files you modify.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def zoo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training cache for this session (the parent of per-worker temp folders under xdist)."""
    if os.environ.get("HEPDEPLOY_TEST_CACHE"):
        path = Path(os.environ["HEPDEPLOY_TEST_CACHE"])
    else:
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
        path = root / "hepdeploy-zoo-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory: pytest.TempPathFactory, zoo_cache_dir: Path) -> Callable[..., object]:
    """Factory: ``zoo_export("facile")``, ``zoo_export("jet_mlp", flavour="torch")``."""
    from hepdeploy.model_zoo import ExportOptions, export_network, get_network

    made: dict[tuple[str, str | None], object] = {}

    def export(name: str, flavour: str | None = None) -> object:
        key = (name, flavour)
        if key not in made:
            out = tmp_path_factory.mktemp(f"zoo-{name}-{flavour or 'default'}")
            # Smaller reference sets than the zoo's defaults (tens of thousands of jets): tests check
            # behaviour, not the size of the intervals.
            size = min(get_network(name).reference_samples, 2000)
            made[key] = export_network(name, out, ExportOptions(
                flavour=flavour, budget="reduced", cache_dir=zoo_cache_dir,
                reference_samples=size if name != "interaction_network" else 4))
        return made[key]

    return export


@pytest.fixture(scope="session")
def triton_binary():
    """The bundled server (downloaded once into the cache); skipped only where it cannot run at all."""
    from hepdeploy.errors import DependencyMissingError
    from hepdeploy.triton.server import bundled_platform_problem, bundled_server

    problem = bundled_platform_problem()
    if problem:
        pytest.skip(f"the bundled Triton server cannot run here: {problem}")
    try:
        return bundled_server(install=True)
    except DependencyMissingError as error:
        if "Linux x86_64" in str(error) or "glibc" in str(error) or "libpython" in str(error):
            pytest.skip(f"the bundled Triton server cannot run here: {str(error).splitlines()[0]}")
        raise
