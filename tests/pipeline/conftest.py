"""The pipeline tests' shared build: ``hepdeploy build --zoo facile --zoo jet_mlp --budget reduced`` as
CI runs it (stderr not a terminal), once per session, for every test that reads a real two-model build."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.cli import main

PAIR = ("facile", "jet_mlp")


@dataclass(frozen=True)
class BuiltPair:
    out: Path
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def zoo_pair_build(tmp_path_factory: pytest.TempPathFactory, zoo_cache_dir: Path) -> BuiltPair:
    out = tmp_path_factory.mktemp("zoo-pair-build") / "out"
    with pytest.MonkeyPatch.context() as patch:
        # The build trains (or reuses) the zoo networks in the session's shared test cache.
        patch.setenv("HEPDEPLOY_CACHE", str(zoo_cache_dir))
        args = ["build", *(a for name in PAIR for a in ("--zoo", name)), "--budget", "reduced", "-o", str(out)]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    return BuiltPair(out, result.exit_code, result.stdout, result.stderr)
