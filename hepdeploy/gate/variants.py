"""Variants: version N+1's own variants (fp16, int8-cpu, int8-trt, a TensorRT plan, the CPU twin's)
made from its ONNX file as the build makes them, and each judged against N+1 itself on the reference
events, as ``hepdeploy validate`` judges a variant against its source.

A variant that cannot be made or run here (a TensorRT plan without a GPU, a missing tool) is
UNDECIDED with the reason, so the gate never shows green for a variant it did not check: a spec that
lists TensorRT variants can only be gated on a machine with a GPU and TensorRT.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hepdeploy.errors import DependencyMissingError, HepDeployError, NativeCrashError, first_line
from hepdeploy.gate.non_inferiority import allowance_field, metric_family
from hepdeploy.gate.outcome import CheckResult, Finding, outcome_of
from hepdeploy.judgement import Judgement
from hepdeploy.optimize import optimize_artifact, resolve_calibration
from hepdeploy.optimize.modelopt_worker import ModelOptWorker
from hepdeploy.spec import ModelSpec
from hepdeploy.validate import ReferenceSet, VariantReport, load_reference, make_reference, validate_candidate
from hepdeploy.variants import BASELINE, variant_kind

log = logging.getLogger(__name__)

CHECK = "variants"
GPU_ONLY = ("a spec that lists TensorRT variants can only be gated on a machine with a GPU and TensorRT; "
            "this variant stays unchecked here")


def gated_variants(spec: ModelSpec) -> list[str]:
    """The variants the gate makes and judges: the spec's besides fp32, and the CPU twin's when it names one."""
    names = [v.name for v in spec.variants]
    twin = spec.triton.cpu_twin
    if twin is not None and twin.variant != "auto":
        names.append(twin.variant)
    return [name for name in dict.fromkeys(names) if name != BASELINE]


def check_variants(candidate_onnx: Path, spec: ModelSpec, reference: ReferenceSet | Path,
                   work_dir: Path) -> CheckResult:
    """Make each of :func:`gated_variants` from ``candidate_onnx`` into ``work_dir`` and validate it against
    the candidate's outputs on ``reference``'s inputs (labels and variables kept), one finding each."""
    names = gated_variants(spec)
    if not names:
        return CheckResult(CHECK, "INFO", "the spec asks for no variants besides fp32")
    if Path(candidate_onnx).suffix != ".onnx":
        return CheckResult(CHECK, "UNDECIDED", f"N+1 ({candidate_onnx}) is not an ONNX file: its variants "
                                               f"({', '.join(names)}) cannot be made from it here")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    events = load_reference(Path(reference)) if not isinstance(reference, ReferenceSet) else reference
    golden = make_reference(Path(candidate_onnx), {**events.inputs, **events.variables}, labels=dict(events.labels),
                            spec=spec, variables=list(events.variables))
    calibration = _calibration(spec, events) if any(variant_kind(n).needs_calibration for n in names) else None
    findings = []
    with ModelOptWorker() as modelopt:
        for name in names:
            findings.append(_variant_finding(name, Path(candidate_onnx), spec, golden,
                                             _VariantInputs(work_dir, calibration, modelopt)))
    outcome = outcome_of(findings)
    return CheckResult(CHECK, outcome, _reason(outcome, findings), findings,
                       {"variants": names, "events": golden.n_samples})


class _VariantInputs:
    """Where the variants are written, what they are calibrated on, and the ModelOpt worker they share."""

    def __init__(self, folder: Path, calibration: dict[str, np.ndarray] | None, modelopt: ModelOptWorker) -> None:
        self.folder, self.calibration, self.modelopt = folder, calibration, modelopt


def _calibration(spec: ModelSpec, events: ReferenceSet) -> dict[str, np.ndarray]:
    """The spec's calibration data (``data.calibration``, else ``data.reference``), as the build reads it;
    without either, the reference events' inputs."""
    source = spec.data.calibration or spec.data.reference
    arrays = resolve_calibration(Path(source), spec.inputs, spec) if source else None
    if arrays is None:
        log.warning("the spec names no calibration data: the variants are calibrated on the gate's reference events")
        return dict(events.inputs)
    return arrays


def _variant_finding(name: str, candidate: Path, spec: ModelSpec, golden: ReferenceSet,
                     made_with: _VariantInputs) -> Finding:
    kind = variant_kind(name)
    output = made_with.folder / kind.filename(spec.name)
    try:
        step = optimize_artifact(candidate, spec.variant(name), output,
                                 calibration=made_with.calibration if kind.needs_calibration else None,
                                 spec=spec, modelopt=made_with.modelopt)
    except (DependencyMissingError, NativeCrashError) as error:
        return Finding(name, "UNDECIDED", f"{name}: cannot be made here: {first_line(error)}", path=str(output))
    except HepDeployError as error:  # the candidate's graph defeats the variant's maker: the build would fail too
        return Finding(name, "FAIL", f"{name}: cannot be made from N+1: {first_line(error)}", path=str(output),
                       spec_key=f"variants.{name}")
    if not step.ok:
        why = step.reason or step.status
        extra = f"; {GPU_ONLY}" if kind.target == "tensorrt" else ""
        return Finding(name, "UNDECIDED", f"{name}: not made here ({why}){extra}", path=str(output))
    try:
        report = validate_candidate(output, golden, spec=spec, judgement=Judgement(), name=name)
    except (DependencyMissingError, NativeCrashError) as error:
        extra = f"; {GPU_ONLY}" if kind.is_engine else ""
        return Finding(name, "UNDECIDED", f"{name}: cannot run here: {first_line(error)}{extra}", path=str(output))
    tuned = ("; the build would search for a mix that passes (tune: true), the gate judges the plain variant"
             if report.outcome != "PASS" and spec.variant(name).tune else "")
    return Finding(name, report.outcome, f"{name}: {report.verdict}{tuned}",  # type: ignore[arg-type]
                   spec_key=_spec_key(report) if report.outcome == "FAIL" else None, path=str(output),
                   extra={"precision": report.precision, "policy": report.policy, "events": report.n_samples})


def _spec_key(report: VariantReport) -> str:
    """The allowance a failing variant breaks: a physics allowance when physics decided, else its tolerance."""
    failing = [c for c in report.physics.checks if c.outcome == "FAIL"] if report.counts_physics() else []
    allowance = allowance_field(metric_family(failing[0].metric)[0]) if failing else None
    if allowance is not None:
        return f"validation.physics.{allowance}"
    return f"validation.tolerances.{report.precision}"


def _reason(outcome: str, findings: list[Finding]) -> str:
    if outcome == "PASS":
        return f"{len(findings)} variant(s) of N+1 pass against N+1: {', '.join(f.name for f in findings)}"
    deciding = [f for f in findings if f.outcome == outcome]
    return "; ".join(f.message for f in deciding[:3]) + (f" (and {len(deciding) - 3} more)" if len(deciding) > 3 else "")
