"""Judging one candidate against a reference set: any Runner (:func:`validate_runner`), or an artifact
file (:func:`validate_candidate`, which can also localise where an ONNX candidate loses precision)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.artifacts import read_artifact, read_engine_sidecar
from hepdeploy.backend.base import Runner
from hepdeploy.backend.onnxrt import ProviderList
from hepdeploy.backend.sources import artifact_runner
from hepdeploy.compare import compare_with_tolerances, precision_key, resolve_tolerances
from hepdeploy.errors import DataError, ModelLoadError
from hepdeploy.fsutil import missing
from hepdeploy.judgement import Judgement
from hepdeploy.validate.ancestry import find_fp32_model
from hepdeploy.validate.localize import LocalizeCriterion, Rule, localize
from hepdeploy.validate.physics import physics_checks
from hepdeploy.validate.reference import ReferenceSet
from hepdeploy.validate.report import MAX_PLOT_VALUES, VariantReport
from hepdeploy.validate.verdict import choose_policy, verdict_of

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec

log = logging.getLogger("hepdeploy.validate")


@dataclass(frozen=True)
class Localization:
    """Find the first node where an ONNX candidate loses precision: every intermediate tensor against
    ``fp32_model``'s (None: the FP32 ONNX the reference was made from, or the candidate's FP32 ancestor,
    see :func:`~hepdeploy.validate.ancestry.find_fp32_model`), by SQNR (``rule="tolerance"``: by the first
    output's atol/rtol)."""

    rule: Rule = "sqnr"
    fp32_model: Path | None = None


def validate_runner(runner: Runner, reference: ReferenceSet, *, name: str = "candidate", candidate: str | None = None,
                    spec: ModelSpec | None = None, judgement: Judgement | None = None) -> VariantReport:
    """Run ``runner`` on the reference inputs and judge its outputs (numerical + physics) as ``judgement`` says.

    ``runner`` is any backend's Runner (ONNX Runtime, TensorRT, a Triton client ...); ``judgement`` None
    judges as fp32 with the spec's (or the default) tolerances and policy.
    """
    start = time.perf_counter()
    judgement = judgement or Judgement()
    reference.check("reference")
    key = precision_key(judgement.precision)
    output_names = list(reference.outputs)
    tolerances = resolve_tolerances(key, output_names, spec.validation.tolerances if spec else None,
                                    judgement.atol, judgement.rtol)
    outputs, notes = _run_on_reference(runner, reference, judgement.chunk_for(spec))
    numerical = compare_with_tolerances(outputs, reference.outputs, tolerances)
    try:
        physics = physics_checks(outputs, reference.outputs, reference.labels,
                                 spec.validation.physics if spec is not None else None, reference.variables)
    except DataError as error:  # labels or targets that cannot belong to the outputs: bad input, not a note
        where = reference.provenance.get("file") or "reference set"
        raise DataError(f"{where}: {error}") from error
    if reference.labels and not physics.ran and not physics.notes:
        physics.notes.append("physics checks did not run")
    why_not = "no labels/targets" if not reference.labels else "physics checks did not run"
    chosen, why = choose_policy(key, physics.ran, spec, judgement.policy, why_not)
    report = VariantReport(
        variant=name, candidate=candidate or name, precision=key, policy=chosen, policy_reason=why,
        providers=runner.providers_used, tolerances=tolerances, numerical=numerical, physics=physics,
        passed=False, verdict="", n_samples=reference.n_samples, reference=dict(reference.provenance), notes=notes,
    )
    report.outcome, report.verdict = verdict_of(report)
    report.passed = report.outcome == "PASS"
    report.plot_values = {
        n: (_flat_sample(reference.outputs[n]), _flat_sample(outputs[n]))
        for n in output_names if np.asarray(outputs[n]).shape == reference.outputs[n].shape
    }
    report.elapsed_s = time.perf_counter() - start
    log.info("%s: %s", name, report.verdict)
    return report


def _run_on_reference(runner: Runner, reference: ReferenceSet, chunk: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """The runner's outputs on the reference inputs, ``chunk`` samples a call, and notes on outputs not compared.

    Names missing on either side are bad input, said before (inputs) or right after (outputs) the run."""
    input_names = list(runner.input_names or reference.inputs)
    absent = [n for n in input_names if n not in reference.inputs]
    if absent:
        raise DataError(
            f"the reference set has no input named {', '.join(absent)} (candidate inputs: {', '.join(input_names)}; "
            f"reference inputs: {', '.join(reference.inputs)})"
        )
    outputs = runner.run_chunked({n: reference.inputs[n] for n in input_names}, chunk)
    output_names = list(reference.outputs)
    absent_out = [n for n in output_names if n not in outputs]
    if absent_out:
        raise DataError(
            f"the candidate has no output named {', '.join(absent_out)} (candidate outputs: "
            f"{', '.join(outputs)}; reference outputs: {', '.join(output_names)})"
        )
    extra = sorted(set(outputs) - set(output_names))
    notes = [f"candidate outputs not in the reference, not compared: {', '.join(extra)}"] if extra else []
    return outputs, notes


def _flat_sample(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    return flat[:MAX_PLOT_VALUES]


def validate_candidate(candidate: Path, reference: ReferenceSet, *, spec: ModelSpec | None = None,
                       judgement: Judgement | None = None, localization: Localization | None = None,
                       providers: ProviderList | None = None, name: str | None = None) -> VariantReport:
    """Validate one artifact file (``.onnx`` + sidecar, or a TensorRT engine).

    ``judgement``'s precision defaults to the sidecar's variant precision (``X.plan.json`` for a plan);
    with ``localization`` the report also says where an ONNX candidate first loses precision (see
    :class:`Localization`).
    """
    candidate = Path(candidate)
    if not candidate.exists():
        raise ModelLoadError(missing(candidate, "candidate model"))
    sidecar = read_artifact(candidate).sidecar if candidate.suffix == ".onnx" else None
    if sidecar is not None:
        _check_against_sidecar(sidecar, reference, candidate)
    # A plan's precision is its graph's, recorded in its .plan.json (an FP16 plan is not judged as FP32).
    recorded = sidecar if candidate.suffix == ".onnx" else read_engine_sidecar(candidate)
    judgement = (judgement or Judgement()).with_precision(recorded.variant.precision if recorded is not None else None)
    with artifact_runner(candidate, providers) as runner:
        report = validate_runner(runner, reference, name=name or candidate.stem, candidate=str(candidate),
                                 spec=spec, judgement=judgement)
    if localization is not None:
        start = time.perf_counter()
        _localize_into(report, candidate, reference, localization)
        report.elapsed_s += time.perf_counter() - start
    return report


def _check_against_sidecar(sidecar: Any, reference: ReferenceSet, candidate: Path) -> None:
    """The golden tensors must be the candidate's: names, ranks and fixed dims (bad input otherwise).

    Checked before anything runs, so a golden file made for another model is refused with
    a clear line instead of failing as a "disagreement".
    """
    output_names = {t.name for t in sidecar.outputs}
    absent = [name for name in reference.outputs if name not in output_names]
    if absent:
        raise DataError(
            f"{candidate}: the candidate has no output named {', '.join(absent)} (candidate outputs: "
            f"{', '.join(sorted(output_names))}; reference outputs: {', '.join(reference.outputs)})"
        )
    leading = {t.shape[0] if t.shape else None for t in sidecar.inputs}
    fixed_batch = len(leading) == 1 and isinstance(next(iter(leading)), int)
    for kind, specs, arrays in (("input", sidecar.inputs, reference.inputs),
                                ("output", sidecar.outputs, reference.outputs)):
        for spec in specs:
            if spec.name not in arrays:
                if kind == "output":
                    continue  # an output the golden file does not hold is simply not compared
                raise DataError(
                    f"{candidate}: input {spec.name!r} is not in the reference set (reference inputs: "
                    f"{', '.join(arrays)})"
                )
            array = arrays[spec.name]
            if array.ndim != len(spec.shape):
                raise DataError(
                    f"{candidate}: {kind} {spec.name!r} has rank {len(spec.shape)} {spec.shape} but the "
                    f"reference's has shape {list(array.shape)}"
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
                if axis == 0 and isinstance(dim, int) and size % dim == 0 and fixed_batch:
                    continue  # a fixed-batch model is run on the reference's rows, batch by batch
                if isinstance(dim, int) and dim != size:
                    raise DataError(
                        f"{candidate}: {kind} {spec.name!r} axis {axis} is {dim} but the reference's is {size} "
                        f"(shape {list(array.shape)})"
                    )


def _localize_into(report: VariantReport, candidate: Path, reference: ReferenceSet, localization: Localization) -> None:
    if candidate.suffix != ".onnx":
        report.notes.append("localization needs an ONNX candidate: skipped")
        return
    fp32 = Path(localization.fp32_model) if localization.fp32_model is not None \
        else find_fp32_model(candidate, reference)
    if fp32 is None:
        report.notes.append("localization skipped: no other FP32 ONNX model to compare with was found "
                            "(give --fp32-model / fp32_model)")
        return
    # Under the tolerance rule, intermediate tensors are held to the first output's tolerance.
    tol = next(iter(report.tolerances.values()))
    report.localization = localize(candidate, fp32, reference.inputs, precision=report.precision,
                                   criterion=LocalizeCriterion(localization.rule, atol=tol.atol, rtol=tol.rtol))
