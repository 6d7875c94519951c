"""`hepdeploy build`: the whole chain for one or more specs.

convert -> optimize (each variant) -> reference -> validate (each variant) -> triton
publish -> triton check [-> serve check]. Each step returns a StepResult (ok / failed /
skipped with a reason) and the stages meet only through files on disk: the ONNX
artifacts with their sidecars, the golden .npz and the model repository.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from hepdeploy.errors import BadInputError, HepDeployError
from hepdeploy.fsutil import atomic_write_text
from hepdeploy.spec import ModelSpec, load_spec
from hepdeploy.steps import StepResult

log = logging.getLogger("hepdeploy.pipeline")

# What `hepdeploy build` with no spec builds: every zoo network with a fast path through
# the chain. ResNet-50 is in the zoo too; build it with `hepdeploy build --zoo resnet50`.
DEFAULT_ZOO_SET = ("facile", "jet_mlp", "particlenet", "deepjet", "interaction_network")


@dataclass
class ModelBuild:
    """Everything one spec's build produced."""

    name: str
    folder: Path
    steps: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(step.status == "failed" for step in self.steps)

    def add(self, step: StepResult) -> StepResult:
        self.steps.append(step)
        log.info("%s: %s", self.name, step.line())
        return step


@dataclass
class BuildOptions:
    out_dir: Path
    exporter: str = "auto"
    variants: list[str] | None = None
    publish: bool = True
    serve_check: bool = False
    require_gpu: bool = False
    budget: str = "full"


@dataclass
class BuildReport:
    out_dir: Path
    models: list[ModelBuild] = field(default_factory=list)
    repository: Path | None = None
    repository_steps: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(m.failed for m in self.models) or any(s.status == "failed" for s in self.repository_steps)

    def to_json(self) -> dict:
        def step_json(step: StepResult) -> dict:
            return {
                "step": step.step,
                "status": step.status,
                "reason": step.reason,
                "outputs": [str(p) for p in step.outputs],
                "details": step.details,
            }

        return {
            "out_dir": str(self.out_dir),
            "repository": str(self.repository) if self.repository else None,
            "passed": not self.failed,
            "models": [
                {"name": m.name, "folder": str(m.folder), "steps": [step_json(s) for s in m.steps]} for m in self.models
            ],
            "repository_steps": [step_json(s) for s in self.repository_steps],
        }


def _timed(name: str, action) -> StepResult:  # noqa: ANN001 - a zero-argument callable returning StepResult
    start = time.perf_counter()
    try:
        result = action()
    except HepDeployError as error:
        result = StepResult(name, "failed", str(error))
    result.details.setdefault("seconds", round(time.perf_counter() - start, 2))
    return result
