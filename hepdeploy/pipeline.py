"""`hepdeploy build`: the whole chain for one or more specs.

convert -> optimize (each variant) -> reference -> validate (each variant) -> triton
publish -> triton check [-> serve check]. Each step returns a StepResult (ok / failed /
skipped / rejected with a reason) and the stages meet only through files on disk: the
ONNX artifacts with their sidecars, the golden .npz and the model repository.

A build survives its own bugs: any exception in a step (ours or a dependency's) becomes a
failed step whose traceback, with the chain of causes, is written to
``<model>/logs/<step>.log``; the other models go on. ``build-summary.json`` (with the tool
and dependency versions) is rewritten after every step, so a build that is interrupted or
killed still leaves a summary of everything it did. At the end, also when it stops part-way, it
writes the build's page, ``index.html`` and ``index.md`` (:mod:`hepdeploy.build_page`), from those files.
Whoever shows the build (:mod:`hepdeploy.build_view`: the live grid, the line per step) is told of
each step as it starts, counts and ends, and of the steps planned.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.artifacts import read_artifact, read_engine_sidecar
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.backend.trt import tensorrt_unavailable
from hepdeploy.build_page import SUMMARY_NAME, write_build_page
from hepdeploy.build_view import REPOSITORY_ROW, BuildEvents, StepTimes
from hepdeploy.convert import convert_from_spec
from hepdeploy.data import CalibrationSet
from hepdeploy.environment import versions
from hepdeploy.errors import BadInputError, HepDeployError, NativeCrashError, first_line
from hepdeploy.fsutil import atomic_write_text
from hepdeploy.graph_bounds import DimBound, graph_dim_bounds, length_problems, minimums, spec_dim_problems
from hepdeploy.memory import peak_memory
from hepdeploy.model_zoo import get_network, zoo_source_spec
from hepdeploy.ntuple import load_preprocess, preprocess_file
from hepdeploy.optimize import optimize_artifact, resolve_calibration
from hepdeploy.optimize.modelopt_worker import ModelOptWorker
from hepdeploy.optimize.trt_precheck import precheck_model
from hepdeploy.plan_compat import (
    DEFAULT_SERVER_RELEASE,
    plan_metadata_of,
    plan_problems,
    server_release,
)
from hepdeploy.progress import progress
from hepdeploy.sampling import sample_inputs, typical_sizes
from hepdeploy.serve_check import serve_check
from hepdeploy.serving.profile import ProfileRequest, ProfileSettings, batches_of, profile_model, with_serving
from hepdeploy.serving.revalidate import validate_at_batches
from hepdeploy.spec import ModelSpec, load_spec
from hepdeploy.steps import StepResult
from hepdeploy.triton.check import CheckEnvironment, check_repository_report
from hepdeploy.triton.ensemble import ensemble_requests, plan_ensemble
from hepdeploy.triton.layout import typed_manifest
from hepdeploy.triton.plan import ModelRequest, plan_publication, spec_publication
from hepdeploy.triton.repository import publish
from hepdeploy.tune import TuneData, TuneSettings, describe, throughput_ratio, timing_feed, tune_variant
from hepdeploy.validate import (
    ReferenceSet,
    VariantReport,
    load_reference,
    validate_candidate,
)
from hepdeploy.validate.reference import make_reference, save_reference
from hepdeploy.validate.report import ModelDecisions, VariantDecision, write_reports
from hepdeploy.variants import BASELINE, variant_kind

log = logging.getLogger(__name__)

# What `hepdeploy build` with no spec builds: every zoo network with a fast path through
# the chain. ResNet-50 is in the zoo too; build it with `hepdeploy build --zoo resnet50`.
DEFAULT_ZOO_SET = ("facile", "jet_mlp", "particlenet", "deepjet", "interaction_network")
# Golden sets made without reference data: rows of seeded samples (at most the batch's max).
SAMPLED_REFERENCE_ROWS = 256
# An automatic CPU twin is INT8 only when INT8 is measured at least this much faster than FP32: closer
# than that, the order of two timings on a shared machine is noise.
TWIN_MARGIN = 0.10
TWIN_TIMING_SECONDS = 1.0


@dataclass
class ModelBuild:
    """Everything one spec's build produced."""

    name: str
    folder: Path
    steps: list[StepResult] = field(default_factory=list)
    on_step: Callable[[], None] | None = None  # called after every step (the build rewrites its summary)
    events: BuildEvents | None = None  # whoever shows the build (hepdeploy.build_view): told of every step

    def plan(self, steps: list[str]) -> None:
        if self.events is not None:
            self.events.plan(self.name, steps)

    @property
    def failed(self) -> bool:
        return any(step.status == "failed" for step in self.steps)

    def add(self, step: StepResult) -> StepResult:
        self.steps.append(step)
        # A failed step is a warning, unless a view of the build already shows it (one line per step in a log).
        warn = step.status == "failed" and self.events is None
        log.log(logging.WARNING if warn else logging.INFO, "%s: %s", self.name, step.line())
        if self.on_step is not None:
            self.on_step()
        if self.events is not None:
            self.events.finished(self.name, step)
        return step

    def run(self, name: str, action: Callable[[], StepResult], variant: str | None = None) -> StepResult:
        """Run one step under its pipeline name and record it (see :func:`run_step`)."""
        if self.events is not None:
            self.events.started(self.name, name)
        return self.add(run_step(name, action, self.folder / "logs", variant))

    def counter(self, step: str) -> Callable[[object, int, int], None] | None:
        """``(item, done, total)``: how a step with its own count (tune's evaluations) tells the view."""
        events = self.events
        if events is None:
            return None
        return lambda _item, done, total: events.advanced(self.name, step, done, total)


@dataclass
class BuildOptions:
    out_dir: Path
    exporter: str = "auto"
    variants: list[str] | None = None
    publish: bool = True
    serve_check: bool = False
    require_gpu: bool = False
    # The tritonserver release that will serve the repository; overrides each spec's triton.server_release.
    server_release: str | None = None
    budget: str = "full"
    strict: bool = False  # every variant must pass validation, not only the served ones


@dataclass
class BuildReport:
    out_dir: Path
    models: list[ModelBuild] = field(default_factory=list)
    repository: Path | None = None
    repository_steps: list[StepResult] = field(default_factory=list)
    started: str = field(default_factory=lambda: _now())
    finished: str | None = None
    versions: dict[str, str] = field(default_factory=versions)  # of the tools this build ran with

    @property
    def failed(self) -> bool:
        return any(m.failed for m in self.models) or any(s.status == "failed" for s in self.repository_steps)

    @property
    def rejected(self) -> list[str]:
        """'model:variant' for every variant made but kept out of the repository by validation."""
        named = [f"{m.name}:{s.variant}" for m in self.models for s in m.steps if s.status == "rejected"]
        return list(dict.fromkeys(named))  # a variant rejected, then its tuning rejected, is named once

    @property
    def peak_rss_mib(self) -> float | None:
        """The largest resident memory any step took, in this process or a child (each step's own peak
        is in its details)."""
        steps = [*(s for m in self.models for s in m.steps), *self.repository_steps]
        peaks = [s.details.get(key) for s in steps for key in ("peak_rss_mib", "children_peak_rss_mib")]
        return max((p for p in peaks if p is not None), default=None)

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_NAME

    def to_json(self) -> dict[str, Any]:
        def step_json(step: StepResult) -> dict[str, Any]:
            return {
                "step": step.step,
                "status": step.status,
                "reason": step.reason,
                "variant": step.variant,
                "outputs": [str(p) for p in step.outputs],
                "details": step.details,
            }

        return {
            "out_dir": str(self.out_dir),
            "repository": str(self.repository) if self.repository else None,
            "peak_rss_mib": self.peak_rss_mib,
            "started": self.started,
            "finished": self.finished,
            "passed": not self.failed,
            "rejected_variants": self.rejected,
            "versions": self.versions,
            "models": [
                {"name": m.name, "folder": str(m.folder), "steps": [step_json(s) for s in m.steps]} for m in self.models
            ],
            "repository_steps": [step_json(s) for s in self.repository_steps],
        }

    def write_summary(self) -> Path:
        """Rewrite ``build-summary.json`` (atomically: a reader never sees half of it)."""
        return atomic_write_text(self.summary_path, json.dumps(self.to_json(), indent=2, default=str) + "\n")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_step(name: str, action: Callable[[], StepResult], log_dir: Path, variant: str | None = None) -> StepResult:
    """Run one step; any exception becomes a failed step (:func:`failed_step`), never the end of the build."""
    start = time.perf_counter()
    with peak_memory() as peak:
        try:
            with progress(name, __name__):
                result = action()
        except Exception as error:  # ours, a bug, or a dependency's own error: recorded, and the build goes on
            result = failed_step(name, error, log_dir)
    result.step = name
    result.variant = result.variant or variant
    result.details.setdefault("seconds", round(time.perf_counter() - start, 2))
    result.details.update(peak.as_dict())
    return result


def failed_step(name: str, error: Exception, log_dir: Path) -> StepResult:
    """The failed step an exception makes.

    A library error fails the step with its one-line message; any other exception (a bug,
    a dependency's error we did not wrap) with ``unexpected TYPE: first line``. Where there
    is a traceback worth reading (an unexpected error, or an error chained to a dependency's),
    it is written with its chain of causes to ``log_dir/<step>.log`` and logged at debug
    level (``-v``).
    """
    if isinstance(error, NativeCrashError):
        # A dependency crashed natively on this variant's graph, in a child process: the variant is
        # rejected with the signal's name and the build goes on with the others.
        return StepResult(name, "rejected", str(error))
    if isinstance(error, HepDeployError):
        result = StepResult(name, "failed", str(error))
        if error.__cause__ is None:
            return result
    else:
        result = StepResult(name, "failed", f"unexpected {type(error).__name__}: {first_line(error)}")
    result.details["log"] = str(_write_traceback(error, log_dir, name))
    return result


def _write_traceback(error: BaseException, log_dir: Path, step: str) -> Path:
    text = "".join(traceback.format_exception(error))
    log.debug("%s failed:\n%s", step, text)
    log_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', step)}.log", text)


def variant_file(folder: Path, name: str, variant: str, tuned: bool = False) -> Path:
    """Where a build keeps a model's variant (file name and suffix from the variant registry); ``tuned``:
    the mix ``tune`` found for it."""
    return folder / "variants" / variant_kind(variant).filename(name, tuned=tuned)


def _zoo_step(spec: ModelSpec, folder: Path, budget: str) -> StepResult:
    """Export a zoo network (trained, cached) with its spec and labelled data sets; ``details["spec"]`` is the
    spec the rest of the build runs on (:func:`hepdeploy.model_zoo.zoo_source_spec`)."""
    merged, exported = zoo_source_spec(spec, folder / "source", budget=budget)
    return StepResult(
        "zoo-export", "ok", outputs=[exported.spec_path, exported.source_path],
        details={"spec": merged, "metrics": exported.metrics, "trained": exported.trained},
    )


class _Calibration:
    """A model's calibration set (``data.calibration``, else ``data.reference``), read once, when a variant
    first asks, and handed to every variant of the build (and its tuning); a file that cannot be read fails
    every step that asks, with the same error."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        source = spec.data.calibration or spec.data.reference
        self.source = Path(source) if source else None
        self._read: tuple[dict[str, np.ndarray] | None, HepDeployError | None] | None = None

    def arrays(self) -> dict[str, np.ndarray] | None:
        if self._read is None:
            try:
                self._read = (resolve_calibration(self.source, self.spec.inputs, self.spec), None)
            except HepDeployError as error:
                self._read = (None, error)
        arrays, error = self._read
        if error is not None:
            raise error
        return arrays

    def for_variant(self, variant: str) -> CalibrationSet | None:
        """The arrays ``variant`` is made with, and their file (an engine is built from its parent graph: none)."""
        if variant_kind(variant).is_engine:
            return None
        arrays = self.arrays()
        return CalibrationSet(arrays, self.source) if arrays is not None else None


def _convert_step(spec: ModelSpec, output: Path, exporter: str) -> StepResult:
    artifact = convert_from_spec(spec, output, exporter)
    export = artifact.sidecar.steps[0].parameters if artifact.sidecar.steps else {}
    details = {"exporter": artifact.sidecar.exporter, "exporter_choice": export.get("exporter_choice")}
    return StepResult("convert", "ok", outputs=[artifact.path],
                      details={k: v for k, v in details.items() if v is not None})


def _bounds_step(spec: ModelSpec, converted: Path, bounds: dict[str, DimBound], strict: bool) -> StepResult:
    """The lower bounds the graph puts on its dims, against the sizes the spec and its preprocess.json let
    through: a problem is a warning line, or fails the build with --strict."""
    inputs = read_artifact(converted).sidecar.inputs
    problems = spec_dim_problems(spec.dims, bounds, where=f"spec {spec.name}")
    preprocess = preprocess_file(spec.data)
    if preprocess is not None:
        problems += length_problems(load_preprocess(preprocess), inputs, bounds, where=preprocess.name)
    for line in problems:
        log.warning("%s", line)
    found = "; ".join(bound.line() for bound in bounds.values())
    if problems:
        return StepResult("dim-bounds", "failed" if strict else "ok", "; ".join(problems) + f" [{found}]",
                          details={"bounds": [b.as_dict() for b in bounds.values()], "problems": problems})
    return StepResult("dim-bounds", "ok", found, details={"bounds": [b.as_dict() for b in bounds.values()]})


def _reference_step(spec: ModelSpec, golden: Path, converted: Path) -> StepResult:
    """The golden set: the SOURCE model run on the spec's reference data (labels kept).

    Without reference data the one sampler's seeded inputs are used, and the golden set
    has no labels (physics checks then cannot run; the reports say so).
    """
    data_path = Path(spec.data.reference) if spec.data.reference else None
    if data_path is not None:
        reference = make_reference(spec, data_path, labels=spec.data.label_array, spec=spec, sizing_model=converted)
        note = f"source model on {data_path.name}"
    else:
        rows = min(SAMPLED_REFERENCE_ROWS, spec.dim_range("batch").max or SAMPLED_REFERENCE_ROWS)
        sizes = typical_sizes(spec.inputs, spec, batch=rows, bounds=minimums(graph_dim_bounds(converted)))
        data = sample_inputs(spec.inputs, sizes, seed=spec.data.seed)
        reference = make_reference(spec, data, spec=spec)
        note = "source model on seeded sample inputs (no labels: numerical checks only)"
    save_reference(reference, golden)
    return StepResult("reference", "ok", note, outputs=[golden], details={"samples": reference.n_samples})


def served_variants(spec: ModelSpec) -> set[str]:
    """The variants the spec's Triton block publishes by name (the GPU model and a CPU twin that is not
    ``auto``: an automatic twin is whichever CPU variant passes and is fastest)."""
    served = {spec.triton.variant}
    if spec.triton.cpu_twin is not None and spec.triton.cpu_twin.variant != "auto":
        served.add(spec.triton.cpu_twin.variant)
    return served


def _validate_step(variant: str, candidate: Path, reference: ReferenceSet, spec: ModelSpec,
                   reports: list[VariantReport], strict: bool) -> StepResult:
    """Validate one variant; only a PASS is published. A failing variant that is not served is
    *rejected* (kept out of the repository, reported, build still passes), a failing served one
    fails the build; an UNDECIDED one is rejected with the reason. --strict fails on any but PASS."""
    report = validate_candidate(candidate, reference, spec=spec, name=variant)
    reports.append(report)
    tuning = spec.variant(variant).tune
    if report.passed:
        status = "ok"
    elif not tuning and (strict or (report.outcome == "FAIL" and variant in served_variants(spec))):
        status = "failed"
    else:  # a variant with `tune: true` is judged again after its tuning
        status = "rejected"
    verdict = report.verdict + ("; tuning follows (tune: true)" if tuning and not report.passed else "")
    return StepResult(f"validate:{variant}", status, verdict,  # type: ignore[arg-type]
                      details={"passed": report.passed, "outcome": report.outcome, "policy": report.policy},
                      variant=variant)


def _wanted_variants(spec: ModelSpec, options: BuildOptions) -> list[str]:
    return options.variants or [v.name for v in spec.variants]


@dataclass(frozen=True)
class _TuneContext:
    """What the tune step of one model's build works from."""

    spec: ModelSpec
    folder: Path  # the model's build folder
    fp32_path: Path
    reference: ReferenceSet
    calibration: _Calibration
    modelopt: ModelOptWorker | None
    strict: bool
    on_evaluation: Callable[[Any, int, int], None] | None = None  # tune's count, for the build's view


def _tune_step(variant: str, context: _TuneContext, reports: list[VariantReport]) -> StepResult:
    """``tune: true``: the cheapest mix of a failed variant that passes, confirmed on data it was not chosen
    on, is published in its place; when the answer is FP32 the step is ok and says so (nothing published
    for the variant)."""
    spec, folder, strict = context.spec, context.folder, context.strict
    arrays = context.calibration.arrays()
    output = variant_file(folder, spec.name, variant, tuned=True)
    result = tune_variant(context.fp32_path, spec.variant(variant), TuneData(context.reference, arrays), output,
                          folder / "reports" / f"tune-{variant}", spec=spec,
                          settings=TuneSettings(modelopt=context.modelopt, on_evaluation=context.on_evaluation))
    best = result.best
    details: dict[str, Any] = {"evaluations": len(result.evaluations), "groups": len(result.groups),
                               "outcome": result.outcome, "target": result.target, "cost_model": result.cost_source,
                               "kept_high_precision": best.kept if best and best.passed else None,
                               "calibration_method": best.calibration_method if best and best.passed else None,
                               "modelled_cost": best.modelled_cost if best and best.passed else None,
                               "speed": best.speed if best and best.passed else None,
                               "tuning_verdict": best.outcome if best else None,
                               "confirmation_verdict": result.confirmation.outcome if result.confirmation else None}
    if result.answer_is_fp32:
        return StepResult(f"tune:{variant}", "ok", f"answer: {result.reason}", details=details)
    for report, label in ((result.best_report, "chosen on the tuning half"),
                          (result.confirmation_report, "confirmation half")):
        if report is not None:
            report.variant = f"{variant} (tuned, {label})"
            reports.append(report)
    if not result.passed:
        not_passed = "failed" if strict or variant in served_variants(spec) else "rejected"
        return StepResult(f"tune:{variant}", not_passed, result.reason, details=details)  # type: ignore[arg-type]
    assert best is not None
    proxy = (f"measured {best.speed:.2f}x fp32 here" if best.speed is not None else
             f"modelled {1 / best.modelled_cost:.2f}x fp32 ({result.target} cost table: {result.cost_source})")
    details.update(passed=True, policy=result.confirmation_report.policy if result.confirmation_report else None)
    return StepResult(f"tune:{variant}", "ok", f"PASS, confirmed; {describe(best)}; speed: {proxy}",
                      outputs=[output], details=details, variant=variant)


def _twin_step(spec: ModelSpec, passing: dict[str, Path], reference: ReferenceSet) -> StepResult:
    """``cpu_twin: {variant: auto}``: FP32 and every passing CPU variant timed side by side in this process
    (alternating runs, one thread each, on the spec's typical batch); the fastest serves, and an INT8
    variant only when it is measured at least ``TWIN_MARGIN`` faster than FP32."""
    candidates = {v: p for v, p in passing.items()
                  if variant_kind(v).target in ("cpu", "any") and p.suffix == ".onnx" and v != BASELINE}
    if BASELINE not in passing:
        if not candidates:
            return StepResult("twin", "skipped", "no CPU variant passed validation: no CPU twin")
        chosen = min(candidates)
        return StepResult("twin", "ok", f"{chosen} (FP32 did not pass; not timed)", details={"chosen": chosen})
    feed = timing_feed(reference, spec.inputs, spec)
    ratios: dict[str, float] = {}
    with OnnxRuntimeRunner(passing[BASELINE], intra_op_threads=1, inter_op_threads=1) as baseline:
        for variant, path in sorted(candidates.items()):
            ratios[variant] = round(throughput_ratio(baseline, path, feed, seconds=TWIN_TIMING_SECONDS), 3)
    faster = {v: r for v, r in ratios.items() if r >= 1.0 + TWIN_MARGIN}
    chosen = max(faster, key=lambda v: faster[v]) if faster else BASELINE
    measured = ", ".join(f"{v} {r:.2f}x fp32" for v, r in ratios.items()) or "no other CPU variant passed"
    why = (f"{chosen}: measured {ratios[chosen]:.2f}x fp32" if chosen != BASELINE else
           f"fp32: no CPU variant that passes is measured {1 + TWIN_MARGIN:.2f}x fp32 or faster")
    return StepResult("twin", "ok", f"{why} ({measured}; one thread, alternating runs, batch "
                      f"{next(iter(feed.values())).shape[0] if feed else '-'})",
                      details={"chosen": chosen, "throughput_vs_fp32": ratios})


def build_model(build: ModelBuild, spec: ModelSpec, options: BuildOptions, repository: Path | None,
                goldens: dict[str, Path], modelopt: ModelOptWorker | None = None) -> None:
    """Run the chain for one spec into ``build``; every step's outcome is recorded, none is hidden.

    ``modelopt``: the build's ModelOpt worker, shared by every fp16 and int8-trt variant."""
    folder = build.folder
    (folder / "variants").mkdir(parents=True, exist_ok=True)

    if spec.source.framework == "zoo":
        user_spec = spec
        exported = build.run("zoo-export", lambda: _zoo_step(user_spec, folder, options.budget))
        if not exported.ok:
            return
        spec = exported.details.pop("spec")
        build.plan(planned_steps(spec, options, repository))

    fp32_path = folder / f"{spec.name}.onnx"
    converted = build.run("convert", lambda: _convert_step(spec, fp32_path, options.exporter))
    if not converted.ok:
        return

    bounds = graph_dim_bounds(fp32_path)
    if bounds:
        build.run("dim-bounds", lambda: _bounds_step(spec, fp32_path, bounds, options.strict))

    golden = folder / "golden.npz"
    referenced = build.run("reference", lambda: _reference_step(spec, golden, fp32_path))

    wanted = _wanted_variants(spec, options)
    calibration = _Calibration(spec)
    made: dict[str, Path] = {}
    for variant in wanted:
        output = variant_file(folder, spec.name, variant)
        step = build.run(f"optimize:{variant}", lambda v=variant, o=output: optimize_artifact(
            fp32_path, spec.variant(v), o, calibration=calibration.for_variant(v), spec=spec,
            require_gpu=options.require_gpu, modelopt=modelopt),
            variant=variant)
        if step.ok:
            made[variant] = output
    _tensorrt_checks(build, spec, options, fp32_path, made, plan_wanted=any(variant_kind(v).is_engine for v in wanted))

    if not referenced.ok:
        build.add(StepResult("validate", "skipped", "no golden set: nothing was validated or published"))
        return
    reference = load_reference(golden)
    goldens[spec.triton.model_name or spec.name] = golden
    verdicts: dict[str, dict[str, Any]] = {}
    passing: dict[str, Path] = {}
    reports: list[VariantReport] = []
    judged: dict[str, tuple[StepResult, bool]] = {}  # variant -> the step that judged it last, kept or not
    for variant, path in made.items():  # a TensorRT .plan runs in the TensorRT engine runner
        step = build.run(f"validate:{variant}", lambda v=variant, p=path: _validate_step(
            v, p, reference, spec, reports, options.strict), variant=variant)
        if not step.ok and spec.variant(variant).tune:
            context = _TuneContext(spec, folder, fp32_path, reference, calibration, modelopt, options.strict,
                                   on_evaluation=build.counter(f"tune:{variant}"))
            step = build.run(f"tune:{variant}", lambda v=variant, c=context: _tune_step(v, c, reports),
                             variant=variant)
            path = step.outputs[0] if step.ok and step.outputs else None
        published = step.ok and path is not None
        verdicts[variant] = {"passed": published, "outcome": step.details.get("outcome"), "verdict": step.reason}
        judged[variant] = (step, published)
        if published:
            passing[variant] = path
    publishing = repository is not None and options.publish
    if publishing:
        assert repository is not None
        _publish_passing(build, spec, repository, passing, verdicts, reference)
    if reports:
        outcome = _model_decisions(spec.name, judged, build.steps, publishing)
        build.run("reports", lambda: StepResult("reports", "ok",
                                                outputs=write_reports(reports, folder / "reports", outcome)))


def _publish_passing(build: ModelBuild, spec: ModelSpec, repository: Path, passing: dict[str, Path],
                     verdicts: dict[str, dict[str, Any]], reference: ReferenceSet) -> None:
    """The automatic CPU twin's timing, then the publication of what passed."""
    twin = spec.triton.cpu_twin
    if twin is not None and twin.variant == "auto" and passing:
        chosen = build.run("twin", lambda: _twin_step(spec, passing, reference))
        served = chosen.details.get("chosen")
        spec = spec.model_copy(update={"triton": spec.triton.model_copy(update={
            "cpu_twin": twin.model_copy(update={"variant": served}) if served else None})})
    if passing and spec.triton.serving == "auto":
        fp32 = build.folder / f"{spec.name}.onnx"
        profiled = build.run("serving", lambda: _serving_step(spec, fp32, build.folder / "serving",
                                                              passing, reference.inputs))
        if profiled.status == "failed":
            build.add(StepResult("publish", "skipped", "the profiled serving configuration failed validation at "
                                 "its batch sizes: nothing is published with it"))
            return
        spec = profiled.details.pop("spec", spec)
    if passing:
        build.run("publish", lambda: _publish_step(repository, spec, passing, verdicts, reference.inputs))
    else:
        build.add(StepResult("publish", "skipped", "no variant passed validation"))


def _model_decisions(name: str, judged: dict[str, tuple[StepResult, bool]], steps: list[StepResult],
                     publishing: bool) -> ModelDecisions:
    """What the build did with each judged variant, for its report's opening table: published (in the roles
    the repository's manifests record), passed (not served), rejected or failed. A tuned variant was judged
    last on its confirmation half (the report section :func:`_tune_step` names)."""
    publish = next((s for s in reversed(steps) if s.step == "publish"), None)
    roles: dict[str, list[str]] = {}
    for version_dir in publish.outputs if publish is not None and publish.ok else []:
        manifest = typed_manifest(Path(version_dir))
        if manifest is not None and manifest.source.variant:
            roles.setdefault(str(manifest.source.variant.get("name")), []).append(
                f"{manifest.role} {manifest.model} v{manifest.version}")
    decisions = []
    for variant, (step, kept) in judged.items():
        decision = ("published" if variant in roles else "passed") if kept else \
            "failed" if step.status == "failed" else "rejected"
        tuned = step.step.startswith("tune:") and step.details.get("confirmation_verdict") is not None
        decisions.append(VariantDecision(variant, decision, step.reason,  # type: ignore[arg-type]
                                         report=f"{variant} (tuned, confirmation half)" if tuned else None,
                                         roles=tuple(roles.get(variant, ()))))
    unpublished = None
    if publishing and not roles:
        unpublished = f"publish {publish.status}: {publish.reason}" if publish is not None else "publish did not run"
    return ModelDecisions(name, decisions, unpublished)


def _serving_step(spec: ModelSpec, model: Path, out_dir: Path, passing: Mapping[str, Path] | None = None,
                  inputs: Mapping[str, np.ndarray] | None = None) -> StepResult:
    """``triton: {serving: auto}``: profile the FP32 model on the spec's reference data (the live confirmation
    when the local server runs; the clients-per-instance figure is left to `hepdeploy profile`), validate every
    ``passing`` variant again at the chosen config's batch sizes on ``inputs``, and publish its batching and
    instances (failed: a variant computes otherwise at one of them). The spec's ``details['spec']`` carries
    them to the publish step. Its dims stay the spec's: the chosen batching lies inside the profile the
    TensorRT plan was built for (the consistency check), so no engine needs rebuilding for it."""
    data = spec.data.reference
    if not data:
        return StepResult("serving", "skipped", "serving: auto needs data.reference to profile on; the spec's own "
                          "numbers are published")
    settings = ProfileSettings(sonic=False, tb_seconds=4.0, confirm_seconds=10.0)  # a build's few seconds each
    report = profile_model(ProfileRequest(spec, model, Path(data), out_dir, settings))
    choice = report.choice
    confirmed = (f"measured p99 {report.confirmation.measured_p99_s * 1e3:.1f} ms" if report.confirmation else
                 "not confirmed: no local server")
    reason = (f"max_batch_size {choice.max_batch_size}, preferred {choice.preferred_batch_size}, delay "
              f"{choice.max_queue_delay_us} µs, {report.instances} instance(s); predicted p99 "
              f"{choice.predicted_p99_s * 1e3:.1f} ms of {settings.budget_s * 1e3:g} ms at {report.rate_per_s:g} "
              f"events/s; {confirmed}")
    checks = validate_at_batches(passing or {}, inputs or {}, batches_of(spec, choice, report.rows_per_request),
                                 spec.validation.chunk_size, spec.validation.tolerances)
    lines = [check.line() for check in checks]
    if not all(check.passed for check in checks):
        failed = "; ".join(line for line, check in zip(lines, checks, strict=True) if not check.passed)
        return StepResult("serving", "failed", f"{reason}; not served at these shapes: {failed}",
                          outputs=report.files, details={"shape_checks": lines})
    sizes = ", ".join(str(size) for size in sorted({check.batch for check in checks}))
    reason += f"; {len(passing or {})} variant(s) validated again at batch {sizes}" if checks else ""
    return StepResult("serving", "ok", reason, outputs=report.files,
                      details={"spec": with_serving(spec, report), "shape_checks": lines})


def planned_steps(spec: ModelSpec, options: BuildOptions, repository: Path | None) -> list[str]:
    """The steps :func:`build_model` will run for ``spec`` when nothing fails (a tune step runs only after a
    failed validation, a precheck only without a GPU: the view learns of those when they start)."""
    wanted = _wanted_variants(spec, options)
    steps = ["zoo-export"] if spec.source.framework == "zoo" else []
    steps += ["convert", "reference", *(f"optimize:{v}" for v in wanted), *(f"validate:{v}" for v in wanted)]
    if repository is not None and options.publish:
        twin = spec.triton.cpu_twin
        steps += ["twin"] if twin is not None and twin.variant == "auto" else []
        steps += ["serving"] if spec.triton.serving == "auto" else []
        steps.append("publish")
    return [*steps, "reports"]  # the reports name what was published


def _tensorrt_checks(build: ModelBuild, spec: ModelSpec, options: BuildOptions, fp32_path: Path,
                     made: dict[str, Path], plan_wanted: bool) -> None:
    """The plan against the target server where one was built; the ONNX parser precheck where none could be.

    Without a GPU a user still learns what TensorRT would refuse: the graphs a plan is built
    from (the TensorRT-targeted ONNX variants, and the fp32 parent when a plan was asked for)
    are prechecked against the target release's operator list; findings reject the tensorrt
    variant with the reason (the ONNX variants are still validated and served by ONNX Runtime).
    """
    release_name = options.server_release or spec.triton.server_release or DEFAULT_SERVER_RELEASE
    release = server_release(release_name)
    plan = made.get("tensorrt")
    if plan is not None:
        sidecar = read_engine_sidecar(plan)
        metadata = plan_metadata_of(sidecar) if sidecar is not None else None
        problems = plan_problems(plan.name, metadata, release=release) if metadata is not None else []
        if problems:
            made.pop("tensorrt")
            build.add(StepResult("compat:tensorrt", "rejected", "; ".join(problems), variant="tensorrt"))
        return
    graphs = {v: p for v, p in made.items() if variant_kind(v).target == "tensorrt" and p.suffix == ".onnx"}
    if plan_wanted and fp32_path.is_file():
        graphs = {"fp32": fp32_path, **graphs}
    if not graphs or tensorrt_unavailable() is None:
        return  # nothing for TensorRT, or a GPU here: the plan itself is the check

    def precheck() -> StepResult:
        reports = {label: precheck_model(path, release.tensorrt) for label, path in graphs.items()}
        refused = {label: r for label, r in reports.items() if not r.ok}
        list_label = next(iter(reports.values())).operators.label()
        details = {label: [f.line() for f in r.findings] for label, r in reports.items()}
        if refused:
            reason = "; ".join(f"{label}: {r.errors[0].line()} (+{len(r.errors) - 1} more)" if len(r.errors) > 1
                               else f"{label}: {r.errors[0].line()}" for label, r in refused.items())
            return StepResult("precheck:tensorrt", "rejected", f"{reason} [{list_label}]", details=details,
                              variant="tensorrt")
        return StepResult("precheck:tensorrt", "ok", f"{', '.join(graphs)} pass the TensorRT ONNX parser precheck "
                          f"for Triton {release.release} [{list_label}]", details=details, variant="tensorrt")

    build.run("precheck:tensorrt", precheck, variant="tensorrt")


def _publish_step(repository: Path, spec: ModelSpec, variants: dict[str, Path], verdicts: dict[str, dict[str, Any]],
                  warmup: dict[str, np.ndarray]) -> StepResult:
    """The spec's models, twins and preprocessing ensemble: one publication plan, swapped in together."""
    request = spec_publication(spec, variants, verdicts=verdicts, warmup_inputs=warmup)
    if spec.data.preprocess is not None:
        request = replace(request, extra=_ensemble_requests(spec, variants, verdicts))
    results = publish(repository, plan_publication(request))
    return StepResult("publish", "ok", ", ".join(f"{r.name} v{r.version}" for r in results),
                      outputs=[r.version_dir for r in results])


def _ensemble_requests(spec: ModelSpec, variants: dict[str, Path],
                       verdicts: dict[str, dict[str, Any]]) -> list[ModelRequest]:
    """A spec with data.preprocess also publishes its preprocessing ensemble (raw features in), whose tensors
    are checked against the served variant's ONNX file (its FP32 graph when the served one is a plan)."""
    served = spec.triton.variant if spec.triton.variant in variants else "fp32"
    onnx_variant = served if served in variants and variants[served].suffix == ".onnx" else "fp32"
    if onnx_variant not in variants:
        log.warning("%s: no ONNX variant to check the preprocessing ensemble against; not published", spec.name)
        return []
    plan = plan_ensemble(variants[onnx_variant], preprocess_file(spec.data),  # type: ignore[arg-type]
                         name=spec.triton.model_name or spec.name, spec=spec, triton=spec.triton,
                         python_backend=spec.triton.python_backend)
    return ensemble_requests(plan, verdict=verdicts.get(served))


def zoo_build_spec(name: str) -> ModelSpec:
    """A minimal spec that builds a zoo network with the zoo's own settings."""
    network = get_network(name)
    return ModelSpec.model_validate({
        "name": name,
        "source": {"framework": "zoo", "zoo": name},
        "inputs": [t.model_dump(exclude_none=True) for t in network.inputs],
        "outputs": [t.model_dump(exclude_none=True) for t in network.outputs],
    })


def build(specs: list[ModelSpec], options: BuildOptions, events: BuildEvents | None = None) -> BuildReport:
    """Build every spec into ``options.out_dir`` and publish into ``OUT/model_repository``; ``events``
    (:mod:`hepdeploy.build_view`) is told of every step as it starts and ends."""
    out_dir = options.out_dir
    if not out_dir.parent.is_dir():
        raise BadInputError(f"{out_dir}: its parent folder does not exist")
    out_dir.mkdir(exist_ok=True)
    repository = out_dir / "model_repository" if options.publish else None
    if repository is not None:
        repository.mkdir(exist_ok=True)
    # The step times of the builds before this one, kept before its summary is overwritten: the next
    # build's ETA.
    StepTimes.from_folder(out_dir, SUMMARY_NAME).save(out_dir)
    report = BuildReport(out_dir, repository=repository)
    try:
        _build_into(report, specs, options, events)
    finally:  # also when the build stops part-way (Ctrl-C, a bug between the steps): the page shows what it did
        _write_page(out_dir)
    return report


def _write_page(out_dir: Path) -> None:
    """``index.html`` and ``index.md`` (:mod:`hepdeploy.build_page`); a page that cannot be written is a
    warning, never the build's outcome."""
    try:
        log.info("build page: %s", write_build_page(out_dir))
    except Exception as error:  # the page only shows the build: its own failure must not fail the build
        log.warning("build page not written: %s", first_line(error))


def _build_into(report: BuildReport, specs: list[ModelSpec], options: BuildOptions,
                events: BuildEvents | None) -> None:
    """Every spec's chain, then the repository's checks, recorded into ``report`` step by step."""
    out_dir, repository = report.out_dir, report.repository
    goldens: dict[str, Path] = {}
    if options.serve_check:
        # The bundled server has only the Python backend: publish Python-backend twins
        # so the serve check has models it can load.
        specs = [s.model_copy(update={"triton": s.triton.model_copy(update={"python_backend": True})}) for s in specs]
    with ModelOptWorker() as modelopt:
        if any(variant_kind(v).uses_modelopt for spec in specs for v in _wanted_variants(spec, options)):
            modelopt.start()  # imports ModelOpt on the other core while the first model is exported
        models = [ModelBuild(spec.name, out_dir / spec.name, on_step=report.write_summary, events=events)
                  for spec in specs]
        for spec, model in zip(specs, models):
            model.plan(planned_steps(spec, options, repository))
        if repository is not None:
            repository_row = ModelBuild(REPOSITORY_ROW, out_dir, events=events)
            repository_row.plan(["triton-check", *(["serve-check"] if options.serve_check else [])])
        for spec, model in zip(specs, models):
            report.models.append(model)
            report.write_summary()
            try:
                build_model(model, spec, options, repository, goldens, modelopt)
            except Exception as error:  # whatever escapes between the steps ends this model only
                model.add(failed_step("build", error, model.folder / "logs"))
    if repository is not None:
        release = _repository_release(specs, options)
        report.repository_steps.append(repository_row.run("triton-check", lambda: _check_step(repository, release)))
        report.write_summary()
        if options.serve_check:
            report.repository_steps.append(repository_row.run("serve-check",
                                                              lambda: _serve_check_step(repository, goldens)))
    report.finished = _now()
    report.write_summary()


def _repository_release(specs: list[ModelSpec], options: BuildOptions) -> str | None:
    """The server release the whole repository is checked against: --server-release, else the one every spec names."""
    if options.server_release:
        return options.server_release
    named = {spec.triton.server_release for spec in specs}
    return named.pop() if len(named) == 1 else None


def _check_step(repository: Path, release: str | None) -> StepResult:
    environment = CheckEnvironment(release=server_release(release) if release else None)
    checked = check_repository_report(repository, environment=environment)
    if checked.problems:
        return StepResult("triton-check", "failed", f"{len(checked.problems)} problem(s)",
                          details={"problems": [p.line() for p in checked.problems]})
    return StepResult("triton-check", "ok", checked.summary())


def _serve_check_step(repository: Path, goldens: dict[str, Path]) -> StepResult:
    checked = serve_check(repository, goldens)
    status = "skipped" if checked.status == "skipped" else "ok" if checked.ok else "failed"
    return StepResult("serve-check", status, checked.reason,  # type: ignore[arg-type]
                      details={"lines": checked.lines(), "not_loaded": checked.not_loaded})


def load_specs(paths: list[Path]) -> list[ModelSpec]:
    """Load every spec first, so a bad one fails the build before any work starts."""
    return [load_spec(path) for path in paths]
