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

from hepdeploy.convert import convert_from_spec, merge_zoo_spec
from hepdeploy.errors import BadInputError, HepDeployError
from hepdeploy.fsutil import atomic_write_text
from hepdeploy.model_zoo import export_network, get_network
from hepdeploy.optimize import optimize_artifact
from hepdeploy.progress import progress
from hepdeploy.sampling import sample_inputs
from hepdeploy.serve_check import serve_check
from hepdeploy.spec import ModelSpec, load_spec
from hepdeploy.steps import StepResult
from hepdeploy.triton.check import check_repository_report
from hepdeploy.triton.repository import publish_spec
from hepdeploy.validate import load_reference, validate_candidate
from hepdeploy.validate.reference import make_reference, save_reference
from hepdeploy.validate.report import write_reports

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
    strict: bool = False  # every variant must pass validation, not only the served ones


@dataclass
class BuildReport:
    out_dir: Path
    models: list[ModelBuild] = field(default_factory=list)
    repository: Path | None = None
    repository_steps: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(m.failed for m in self.models) or any(s.status == "failed" for s in self.repository_steps)

    @property
    def rejected(self) -> list[str]:
        """'model:variant' for every variant made but kept out of the repository by validation."""
        return [f"{m.name}:{s.step.split(':', 1)[1]}" for m in self.models for s in m.steps if s.status == "rejected"]

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
            "rejected_variants": self.rejected,
            "models": [
                {"name": m.name, "folder": str(m.folder), "steps": [step_json(s) for s in m.steps]} for m in self.models
            ],
            "repository_steps": [step_json(s) for s in self.repository_steps],
        }


def _timed(name: str, action) -> StepResult:  # noqa: ANN001 - a zero-argument callable returning StepResult
    """Run one step under its pipeline name; a library error becomes a failed step, not a crash."""
    start = time.perf_counter()
    try:
        with progress(name, "hepdeploy.pipeline"):
            result = action()
    except HepDeployError as error:
        result = StepResult(name, "failed", str(error))
    result.step = name
    result.details.setdefault("seconds", round(time.perf_counter() - start, 2))
    return result


def _variant_file(folder: Path, name: str, variant: str) -> Path:
    suffix = ".plan" if variant == "tensorrt" else ".onnx"
    return folder / "variants" / f"{name}_{variant.replace('-', '_')}{suffix}"


def _zoo_spec(name: str, folder: Path, budget: str) -> StepResult:
    """Export a zoo network (trained, cached) with its spec and labelled data sets."""

    exported = export_network(name, folder / "source", budget=budget)
    return StepResult(
        "zoo-export", "ok", outputs=[exported.spec_path, exported.source_path],
        details={"spec": exported.spec, "metrics": exported.metrics, "trained": exported.trained},
    )


def _reference_step(spec: ModelSpec, golden: Path) -> StepResult:
    """The golden set: the SOURCE model run on the spec's reference data (labels kept).

    Without reference data the conversion's own seeded sample inputs are used, and the
    golden set has no labels (physics checks then cannot run; the reports say so).
    """

    data_path = spec.resolve(spec.data.reference)
    if data_path is not None:
        reference = make_reference(spec, data_path, labels=spec.data.labels, spec=spec)
        note = f"source model on {data_path.name}"
    else:
        sizes = {dim: spec.dim_range(dim).opt or spec.dim_range(dim).min for t in spec.inputs for dim in t.dynamic_dims}
        if "batch" in sizes:
            sizes["batch"] = min(256, spec.dim_range("batch").max or 256)
        data = sample_inputs(spec.inputs, sizes, seed=spec.data.seed)
        reference = make_reference(spec, data, spec=spec)
        note = "source model on seeded sample inputs (no labels: numerical checks only)"
    save_reference(reference, golden)
    return StepResult("reference", "ok", note, outputs=[golden], details={"samples": reference.n_samples})


def served_variants(spec: ModelSpec) -> set[str]:
    """The variants the spec's Triton block publishes (the GPU model and its CPU twin)."""
    served = {spec.triton.variant}
    if spec.triton.cpu_twin is not None:
        served.add(spec.triton.cpu_twin.variant)
    return served


def _validate_step(variant: str, candidate: Path, reference, spec: ModelSpec, reports: list,  # noqa: ANN001
                   strict: bool) -> StepResult:
    """Validate one variant. A failing variant that is not served is *rejected* (kept out of the
    repository, reported, build still passes); a failing served variant, or any with --strict, fails."""

    report = validate_candidate(candidate, reference, spec=spec, name=variant)
    reports.append(report)
    if report.passed:
        status = "ok"
    else:
        status = "failed" if strict or variant in served_variants(spec) else "rejected"
    return StepResult(f"validate:{variant}", status, report.verdict,
                      details={"passed": report.passed, "policy": report.policy})


def build_model(spec: ModelSpec, options: BuildOptions, repository: Path | None, goldens: dict[str, Path]) -> ModelBuild:
    """Run the chain for one spec; every step's outcome is recorded, none is hidden."""

    folder = options.out_dir / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "variants").mkdir(exist_ok=True)
    build = ModelBuild(spec.name, folder)

    if spec.source.framework == "zoo" and spec.source.zoo:
        exported = build.add(_timed("zoo-export", lambda: _zoo_spec(spec.source.zoo, folder, options.budget)))
        if not exported.ok:
            return build

        spec = merge_zoo_spec(spec, exported.details.pop("spec"))

    fp32_path = folder / f"{spec.name}.onnx"
    converted = build.add(_timed("convert", lambda: StepResult(
        "convert", "ok", outputs=[convert_from_spec(spec, fp32_path, options.exporter).path])))
    if not converted.ok:
        return build

    golden = folder / "golden.npz"
    referenced = build.add(_timed("reference", lambda: _reference_step(spec, golden)))

    wanted = options.variants or [v.name for v in spec.variants]
    calibration = spec.resolve(spec.data.calibration) or spec.resolve(spec.data.reference)
    made: dict[str, Path] = {}
    for variant in wanted:
        output = _variant_file(folder, spec.name, variant)
        step = build.add(_timed(f"optimize:{variant}", lambda v=variant, o=output: optimize_artifact(
            fp32_path, spec.variant(v), o, calibration=calibration, spec=spec, require_gpu=options.require_gpu)))
        if step.ok:
            made[variant] = output

    verdicts: dict[str, dict] = {}
    passing: dict[str, Path] = {}
    if referenced.ok:
        reference = load_reference(golden)
        goldens[spec.triton.model_name or spec.name] = golden
        reports: list = []
        for variant, path in made.items():  # a TensorRT .plan runs in the TensorRT engine runner
            step = build.add(_timed(f"validate:{variant}", lambda v=variant, p=path: _validate_step(
                v, p, reference, spec, reports, options.strict)))
            verdicts[variant] = {"passed": step.ok, "verdict": step.reason}
            if step.ok:
                passing[variant] = path
        if reports:
            written = write_reports(reports, folder / "reports")
            build.add(StepResult("reports", "ok", outputs=written))
    else:
        build.add(StepResult("validate", "skipped", "no golden set: nothing was validated or published"))

    if repository is not None and options.publish and passing:
        build.add(_timed("publish", lambda: _publish_step(repository, spec, passing, verdicts, reference.inputs)))
    elif repository is not None and options.publish:
        build.add(StepResult("publish", "skipped", "no variant passed validation"))
    return build


def _publish_step(repository: Path, spec: ModelSpec, variants: dict[str, Path], verdicts: dict, warmup) -> StepResult:  # noqa: ANN001

    results = publish_spec(repository, spec, variants, verdicts=verdicts, warmup_inputs=warmup)
    return StepResult("publish", "ok", ", ".join(f"{r.name} v{r.version}" for r in results),
                      outputs=[r.version_dir for r in results])


def zoo_build_spec(name: str) -> ModelSpec:
    """A minimal spec that builds a zoo network with the zoo's own settings."""

    network = get_network(name)
    return ModelSpec.model_validate({
        "name": name,
        "source": {"framework": "zoo", "zoo": name},
        "inputs": [t.model_dump(exclude_none=True) for t in network.inputs],
        "outputs": [t.model_dump(exclude_none=True) for t in network.outputs],
    })


def build(specs: list[ModelSpec], options: BuildOptions) -> BuildReport:
    """Build every spec into ``options.out_dir`` and publish into ``OUT/model_repository``."""
    out_dir = options.out_dir
    if not out_dir.parent.is_dir():
        raise BadInputError(f"{out_dir}: its parent folder does not exist")
    out_dir.mkdir(exist_ok=True)
    repository = out_dir / "model_repository" if options.publish else None
    if repository is not None:
        repository.mkdir(exist_ok=True)
    report = BuildReport(out_dir, repository=repository)
    goldens: dict[str, Path] = {}
    if options.serve_check:
        # The bundled server has only the Python backend: publish Python-backend twins
        # so the serve check has models it can load.
        specs = [s.model_copy(update={"triton": s.triton.model_copy(update={"python_backend": True})}) for s in specs]
    for spec in specs:
        report.models.append(build_model(spec, options, repository, goldens))
    if repository is not None:
        report.repository_steps.append(_timed("triton-check", lambda: _check_step(repository)))
        if options.serve_check:
            report.repository_steps.append(_timed("serve-check", lambda: _serve_check_step(repository, goldens)))
    summary = out_dir / "build-summary.json"
    atomic_write_text(summary, json.dumps(report.to_json(), indent=2, default=str) + "\n")
    return report


def _check_step(repository: Path) -> StepResult:
    checked = check_repository_report(repository)
    if checked.problems:
        return StepResult("triton-check", "failed", f"{len(checked.problems)} problem(s)",
                          details={"problems": [p.line() for p in checked.problems]})
    return StepResult("triton-check", "ok", checked.summary())


def _serve_check_step(repository: Path, goldens: dict[str, Path]) -> StepResult:
    checked = serve_check(repository, goldens)
    status = "skipped" if checked.status == "skipped" else "ok" if checked.ok else "failed"
    return StepResult("serve-check", status, checked.reason,
                      details={"lines": checked.lines(), "not_loaded": checked.not_loaded})


def load_specs(paths: list[Path]) -> list[ModelSpec]:
    """Load every spec first, so a bad one fails the build before any work starts."""
    return [load_spec(path) for path in paths]
