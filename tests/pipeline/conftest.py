"""One real two-model build shared by the pipeline tests: a reduced-budget FACILE (FP32 and FP16 only) and
the jet MLP with its zoo spec's four variants (INT8 ones rejected, then tuned)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hepdeploy.cli import main

FACILE_SPEC = """\
name: facile
source: {framework: zoo, zoo: facile}
inputs: [{name: input, shape: [batch, 47]}]
outputs: [{name: output, shape: [batch, 1]}]
variants: [fp32, fp16]
"""


@dataclass
class TwoModelBuild:
    out: Path
    result: Result  # the CLI's run: exit code and output
    summary: dict[str, Any]

    def steps(self, model: str) -> dict[str, dict[str, Any]]:
        """One model's steps by name."""
        found = next(m for m in self.summary["models"] if m["name"] == model)
        return {step["step"]: step for step in found["steps"]}


@pytest.fixture(scope="session")
def two_model_build(tmp_path_factory: pytest.TempPathFactory, zoo_cache_dir: Path) -> TwoModelBuild:
    """``hepdeploy build facile.yaml --zoo jet_mlp --budget reduced``: about 80 s on two cores with the networks
    trained (most of it the jet MLP's validation and INT8 tuning; FACILE's two variants add about 20 s)."""
    folder = tmp_path_factory.mktemp("two-model-build")
    spec = folder / "facile.yaml"
    spec.write_text(FACILE_SPEC)
    out = folder / "out"
    with pytest.MonkeyPatch.context() as patch:  # the build trains (or reuses) the zoo networks in the shared cache
        patch.setenv("HEPDEPLOY_CACHE", str(zoo_cache_dir))
        patch.delenv("GITHUB_STEP_SUMMARY", raising=False)
        result = CliRunner().invoke(main, ["build", str(spec), "--zoo", "jet_mlp", "--budget", "reduced",
                                           "-o", str(out)], catch_exceptions=False)
    summary = json.loads((out / "build-summary.json").read_text())
    return TwoModelBuild(out, result, summary)
