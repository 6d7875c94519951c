"""hepdeploy.validate: does an exported or optimized model still compute what the source did?

Entry points (the CLI and ``hepdeploy build`` call these):

- ``make_reference`` / ``save_reference`` / ``load_reference``: the golden set.
- ``validate_runner(runner, reference, ...)``: any Runner (ONNX Runtime, Triton client,
  TensorRT engine ...) against a reference set -> VariantReport.
- ``validate_candidate(path, reference, ...)``: an artifact file; reads the variant's
  precision from its sidecar, can localise the first divergent node (ONNX).
- ``validate_served(server, model, golden, ...)``: what a live Triton server returns.
- ``validate_served_ensemble(server, model, data, ...)``: a preprocessing ensemble fed raw ROOT
  events, against the same events preprocessed inline and run in ONNX Runtime.
- ``write_reports(reports, folder)``: JSON, JUnit XML, Markdown, HTML with plots.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.artifacts import read_artifact
from hepdeploy.backend.base import Runner
from hepdeploy.backend.onnxrt import ProviderList
from hepdeploy.backend.served_preprocess import served_preprocess
from hepdeploy.backend.sources import artifact_runner
from hepdeploy.backend.triton import Compression, Protocol, TritonRunner, parse_model_ref
from hepdeploy.backend.triton_shm import SharedMemoryMode
from hepdeploy.compare import (
    DEFAULT_POLICY,
    PRECISION_DEFAULTS,
    ToleranceOverrides,
    compare_with_tolerances,
    parse_tolerance_values,
    precision_key,
    resolve_tolerances,
)
from hepdeploy.errors import DataError, HepDeployError, ModelLoadError
from hepdeploy.fsutil import missing, sha256_file
from hepdeploy.ntuple import load_preprocess
from hepdeploy.validate.localize import Rule, localize
from hepdeploy.validate.physics import physics_checks
from hepdeploy.validate.raw_events import inline_reference, preprocess_path
from hepdeploy.validate.reference import (
    ReferenceSet,
    load_reference,
    make_reference,
    read_onnx_test_data,
    save_reference,
    write_onnx_test_data,
)
from hepdeploy.validate.report import (
    MAX_PLOT_VALUES,
    VariantReport,
    console_table,
    write_reports,
)

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec

log = logging.getLogger("hepdeploy.validate")

POLICIES = ("numerical", "physics", "either", "both")

__all__ = [
    "DEFAULT_POLICY", "POLICIES", "PRECISION_DEFAULTS", "ReferenceSet", "VariantReport", "console_table",
    "load_reference", "make_reference", "read_onnx_test_data", "save_reference", "validate_candidate",
    "validate_runner", "validate_served", "validate_served_ensemble", "write_onnx_test_data", "write_reports",
]


def choose_policy(
    precision: str, physics_ran: bool, spec: ModelSpec | None, policy: str | None, why_not: str = "no labels/targets"
) -> tuple[str, str]:
    """(policy, why): explicit > spec.validation.policy > default; physics falls back without labels."""
    key = precision_key(precision)
    if policy is not None:
        if policy not in POLICIES:
            raise DataError(f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")
        chosen, why = policy, "asked for"
    elif spec is not None and key in spec.validation.policy:
        chosen, why = spec.validation.policy[key], f"spec validation.policy.{key}"
    else:
        chosen, why = DEFAULT_POLICY[key], f"default for {key}"
    if chosen in ("physics", "either", "both") and not physics_ran:
        return "numerical", f"{why} was {chosen}, but {why_not}: numerical checks decide"
    return chosen, why


def validate_runner(
    runner: Runner,
    reference: ReferenceSet,
    *,
    name: str = "candidate",
    candidate: str | None = None,
    precision: str = "fp32",
    spec: ModelSpec | None = None,
    atol: Any = None,
    rtol: Any = None,
    policy: str | None = None,
    chunk_size: int | None = None,
) -> VariantReport:
    """Run ``runner`` on the reference inputs and judge its outputs (numerical + physics).

    ``runner`` is any backend's Runner (ONNX Runtime, TensorRT, a Triton client ...).
    ``atol``/``rtol`` take ``1e-5``, ``'softmax:1e-3'``, a list of those, or ``{output: value}``.
    """
    start = time.perf_counter()
    reference.check("reference")
    key = precision_key(precision)
    atol_o = atol if isinstance(atol, ToleranceOverrides) else parse_tolerance_values(atol, "--atol")
    rtol_o = rtol if isinstance(rtol, ToleranceOverrides) else parse_tolerance_values(rtol, "--rtol")
    output_names = list(reference.outputs)
    tolerances = resolve_tolerances(key, output_names, spec.validation.tolerances if spec else None, atol_o, rtol_o)

    input_names = list(runner.input_names or reference.inputs)
    missing = [n for n in input_names if n not in reference.inputs]
    if missing:
        raise DataError(
            f"the reference set has no input named {', '.join(missing)} (candidate inputs: {', '.join(input_names)}; "
            f"reference inputs: {', '.join(reference.inputs)})"
        )
    chunk = chunk_size or (spec.validation.chunk_size if spec is not None else 4096)
    feed = {n: reference.inputs[n] for n in input_names}
    outputs = runner.run_chunked(feed, chunk)
    notes: list[str] = []
    missing_out = [n for n in output_names if n not in outputs]
    if missing_out:
        raise DataError(
            f"the candidate has no output named {', '.join(missing_out)} (candidate outputs: "
            f"{', '.join(outputs)}; reference outputs: {', '.join(output_names)})"
        )
    extra = sorted(set(outputs) - set(output_names))
    if extra:
        notes.append(f"candidate outputs not in the reference, not compared: {', '.join(extra)}")
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
    chosen, why = choose_policy(key, physics.ran, spec, policy, why_not)
    report = VariantReport(
        variant=name, candidate=candidate or name, precision=key, policy=chosen, policy_reason=why,
        providers=runner.providers_used, tolerances=tolerances, numerical=numerical, physics=physics,
        passed=False, verdict="", n_samples=reference.n_samples, reference=dict(reference.provenance), notes=notes,
    )
    report.outcome, report.verdict = _verdict(report)
    report.passed = report.outcome == "PASS"
    report.plot_values = {
        n: (_flat_sample(reference.outputs[n]), _flat_sample(outputs[n]))
        for n in output_names if np.asarray(outputs[n]).shape == reference.outputs[n].shape
    }
    report.elapsed_s = time.perf_counter() - start
    log.info("%s: %s", name, report.verdict)
    return report


def _flat_sample(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    return flat[:MAX_PLOT_VALUES]


def _verdict(report: VariantReport) -> tuple[str, str]:
    """(PASS | FAIL | UNDECIDED, the verdict in one line): the policy combines the numerical outcome
    (PASS or FAIL) with the physics one (PASS, FAIL or UNDECIDED, see validate.physics)."""
    hard = report.hard_failures
    if hard:
        return "FAIL", "FAIL: " + "; ".join(c.summary() for c in hard)
    failed_outputs = [c.name for c in report.numerical if not c.passed]
    numerical = "PASS" if not failed_outputs else "FAIL"
    num_text = "numerical checks pass" if not failed_outputs else f"numerical checks fail on {', '.join(failed_outputs)}"
    phys = report.physics
    physics = phys.outcome if phys.ran else None
    if physics is None:
        phys_text = "physics checks did not run"
    elif physics == "PASS":
        phys_text = "physics checks pass"
    else:
        deciding = phys.deciding()
        word = "fail" if physics == "FAIL" else "are undecided"
        names = ", ".join(c.name for c in deciding[:3]) + (f" and {len(deciding) - 3} more" if len(deciding) > 3 else "")
        phys_text = f"physics checks {word} on {names}"
        if physics == "UNDECIDED" and deciding[0].reason:
            phys_text += f" ({deciding[0].name}: {deciding[0].reason})"
    outcome = _combine(report.policy, numerical, physics)
    return outcome, f"{outcome} (policy {report.policy}): {num_text}; {phys_text}"


def _combine(policy: str, numerical: str, physics: str | None) -> str:
    if policy == "numerical" or physics is None:
        return numerical
    if policy == "physics":
        return physics
    outcomes = {numerical, physics}
    if policy == "either":
        return "PASS" if "PASS" in outcomes else "FAIL" if outcomes == {"FAIL"} else "UNDECIDED"
    return "FAIL" if "FAIL" in outcomes else "PASS" if outcomes == {"PASS"} else "UNDECIDED"  # both


def validate_candidate(
    candidate: Path,
    reference: ReferenceSet,
    *,
    spec: ModelSpec | None = None,
    precision: str | None = None,
    atol: Any = None,
    rtol: Any = None,
    policy: str | None = None,
    localize: bool = False,
    chunk_size: int | None = None,
    fp32_model: Path | None = None,
    providers: ProviderList | None = None,
    name: str | None = None,
    localize_rule: Rule = "sqnr",
) -> VariantReport:
    """Validate one artifact file (``.onnx`` + sidecar, or a TensorRT engine).

    ``precision`` defaults to the sidecar's variant precision; ``localize`` compares every
    intermediate tensor with ``fp32_model`` (default: the FP32 ONNX the reference was
    made from, or the FP32 ancestor artifact next to the candidate, found by sidecar sha256)
    by SQNR (``localize_rule="tolerance"``: by the first output's atol/rtol).
    """
    candidate = Path(candidate)
    if not candidate.exists():
        raise ModelLoadError(missing(candidate, "candidate model"))
    sidecar = read_artifact(candidate).sidecar if candidate.suffix == ".onnx" else None
    if sidecar is not None:
        _check_against_sidecar(sidecar, reference, candidate)
    chosen_precision = precision or (sidecar.variant.precision if sidecar is not None else "fp32")
    with artifact_runner(candidate, providers) as runner:
        report = validate_runner(
            runner, reference, name=name or candidate.stem, candidate=str(candidate), precision=chosen_precision,
            spec=spec, atol=atol, rtol=rtol, policy=policy, chunk_size=chunk_size,
        )
    if localize:
        start = time.perf_counter()
        _localize_into(report, candidate, reference, fp32_model, localize_rule)
        report.elapsed_s += time.perf_counter() - start
    return report


def validate_served(server: str, model_ref: str, golden: Path, *, protocol: Protocol = "grpc",
                    timeout_s: float = 30.0, spec: ModelSpec | None = None, artifact: Path | None = None,
                    precision: str | None = None, atol: Any = None, rtol: Any = None, policy: str | None = None,
                    chunk_size: int | None = None, shared_memory: SharedMemoryMode = "auto",
                    compression: Compression | None = None) -> VariantReport:
    """Validate what ``server`` returns for ``model_ref`` (NAME[:VERSION]) against the golden set ``golden``.

    Tensors go through Triton's system shared memory when the server is on this host (``shared_memory``
    auto) or as ``shared_memory`` says; ``compression`` is gRPC compression for a remote server.

    Same comparisons, physics checks and report as a file candidate. The served tensors are checked
    against ``artifact``'s sidecar when given (its precision picks the tolerances unless ``precision``
    does), else against ``spec``'s inputs/outputs.
    """
    name, version = parse_model_ref(model_ref)
    expected = None
    chosen_precision = precision
    if artifact is not None:
        sidecar = read_artifact(artifact).sidecar
        expected = (sidecar.inputs, sidecar.outputs)
        chosen_precision = chosen_precision or sidecar.variant.precision
    elif spec is not None:
        expected = (spec.inputs, spec.outputs)
    reference = load_reference(golden)
    with TritonRunner(server, name, version, protocol=protocol, timeout_s=timeout_s, expected=expected,
                      shared_memory=shared_memory, compression=compression) as runner:
        return validate_runner(runner, reference, name=model_ref, candidate=f"{protocol}://{runner.url}/{model_ref}",
                               precision=chosen_precision or "fp32", spec=spec, atol=atol, rtol=rtol, policy=policy,
                               chunk_size=chunk_size)


def validate_served_ensemble(server: str, model_ref: str, data: Path | str, *, spec: ModelSpec, artifact: Path,
                             protocol: Protocol = "grpc", timeout_s: float = 30.0, precision: str | None = None,
                             atol: Any = None, rtol: Any = None, policy: str | None = None,
                             chunk_size: int | None = None, shared_memory: SharedMemoryMode = "auto",
                             compression: Compression | None = None) -> VariantReport:
    """Validate a preprocessing ensemble (``hepdeploy triton add --preprocess``) end to end.

    The raw per-particle arrays and lengths of the ROOT events in ``data`` (read through ``spec``'s data
    mapping) go to ``model_ref``; its answers are compared with the inline path: the same events read
    with preprocessing (:func:`hepdeploy.data.read_root_events`, in the convention the served
    preprocess model records) and run through ``artifact`` in ONNX Runtime, request by request (see
    :mod:`hepdeploy.validate.raw_events`). Same comparisons, physics checks, report and exit codes as
    :func:`validate_served`.
    """
    name, version = parse_model_ref(model_ref)
    sidecar = read_artifact(artifact).sidecar
    json_path = preprocess_path(spec)
    config = load_preprocess(json_path)
    served = served_preprocess(config, sidecar.inputs, spec.data, where=str(json_path))
    expected = (served.raw_input_specs(), sidecar.outputs)
    with TritonRunner(server, name, version, protocol=protocol, timeout_s=timeout_s, expected=expected,
                      shared_memory=shared_memory, compression=compression) as runner:
        steps = runner.model_config().get("ensemble_scheduling", {}).get("step", [])
        if not steps:
            raise DataError(f"{model_ref}: not an ensemble; ROOT events (--data) are sent raw to a preprocessing "
                            f"ensemble (hepdeploy triton add --preprocess)")
        runner.check_metadata()  # the raw inputs and the artifact's outputs, or ServedModelMismatchError
        if runner.max_batch_size <= 0:
            raise DataError(f"{model_ref}: the ensemble has no batch axis (max_batch_size 0); a preprocessing "
                            f"ensemble is batched")
        with TritonRunner(server, steps[0]["model_name"], protocol=protocol, timeout_s=timeout_s) as step:
            parameters = step.model_config().get("parameters", {})
        notes: list[str] = []
        spec_convention = spec.data.preprocess.convention if spec.data.preprocess is not None else "cmssw"
        convention = parameters.get("convention", {}).get("string_value") or spec_convention
        if convention != spec_convention:
            notes.append(f"the served preprocessing uses the {convention} convention, the spec {spec_convention}: "
                         f"the inline path follows the server")
        served_sha = parameters.get("preprocess_sha256", {}).get("string_value")
        if served_sha and served_sha != sha256_file(json_path):
            notes.append(f"the served preprocess.json differs from {json_path} (sha256 {served_sha[:12]})")
        request = min(runner.max_batch_size, chunk_size or spec.validation.chunk_size)
        runner.max_request_batch = request
        reference = inline_reference(data, artifact, spec, convention, request, notes, config=config, served=served)
        report = validate_runner(runner, reference, name=model_ref, candidate=f"{protocol}://{runner.url}/{model_ref}",
                                 precision=precision or sidecar.variant.precision, spec=spec, atol=atol, rtol=rtol,
                                 policy=policy, chunk_size=request)
    report.notes.extend(notes)
    report.notes.append(f"raw ROOT events sent to the ensemble in requests of {request}; reference: "
                        f"{json_path.name} ({convention}) inline + {Path(artifact).name} in ONNX Runtime")
    return report


def _check_against_sidecar(sidecar: Any, reference: ReferenceSet, candidate: Path) -> None:
    """The golden tensors must be the candidate's: names, ranks and fixed dims (bad input otherwise).

    Checked before anything runs, so a golden file made for another model is refused with
    a clear line instead of failing as a "disagreement".
    """
    output_names = {t.name for t in sidecar.outputs}
    missing = [name for name in reference.outputs if name not in output_names]
    if missing:
        raise DataError(
            f"{candidate}: the candidate has no output named {', '.join(missing)} (candidate outputs: "
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


def find_fp32_model(candidate: Path, reference: ReferenceSet) -> Path | None:
    """The FP32 ONNX model to localise against: the reference's source, or the FP32 ancestor artifact."""
    source = reference.provenance.get("path")
    if source and str(source).endswith(".onnx") and Path(source).is_file():
        if Path(source).resolve() != Path(candidate).resolve():
            return Path(source)
    try:
        sidecar = read_artifact(candidate).sidecar
    except HepDeployError:  # an unreadable sidecar only means no ancestor can be found
        return None
    by_sha: dict[str, tuple[Path, dict[str, Any]]] = {}
    for side in Path(candidate).parent.glob("*.json"):
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("sha256") and side.with_suffix(".onnx").is_file():
            by_sha[data["sha256"]] = (side.with_suffix(".onnx"), data)
    parent = sidecar.parent
    seen: set[str] = set()
    while parent and parent in by_sha and parent not in seen:
        seen.add(parent)
        path, data = by_sha[parent]
        if (data.get("variant") or {}).get("precision", "fp32") == "fp32":
            return path
        parent = data.get("parent")
    return None


def _localize_into(report: VariantReport, candidate: Path, reference: ReferenceSet, fp32_model: Path | None,
                   rule: Rule) -> None:
    if candidate.suffix != ".onnx":
        report.notes.append("localization needs an ONNX candidate: skipped")
        return
    fp32 = Path(fp32_model) if fp32_model is not None else find_fp32_model(candidate, reference)
    if fp32 is None:
        report.notes.append("localization skipped: no other FP32 ONNX model to compare with was found "
                            "(give --fp32-model / fp32_model)")
        return
    # Under the tolerance rule, intermediate tensors are held to the first output's tolerance.
    tol = next(iter(report.tolerances.values()))
    report.localization = localize(candidate, fp32, reference.inputs, precision=report.precision, rule=rule,
                                   atol=tol.atol, rtol=tol.rtol)
