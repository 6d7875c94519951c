"""Validating what a live Triton server returns: one served model against a golden set
(:func:`validate_served`), or a preprocessing ensemble fed raw ROOT events against the same events
preprocessed inline and run in ONNX Runtime (:func:`validate_served_ensemble`), with what the served
configs say about the preprocessing (ensemble steps, convention, the preprocess.json's sha256)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hepdeploy.artifacts import read_artifact
from hepdeploy.backend.served_preprocess import served_preprocess
from hepdeploy.backend.triton import ServerTarget, TritonRunner, parse_model_ref
from hepdeploy.errors import DataError
from hepdeploy.fsutil import sha256_file
from hepdeploy.judgement import Judgement
from hepdeploy.ntuple import load_preprocess
from hepdeploy.validate.candidate import validate_runner
from hepdeploy.validate.raw_events import inline_reference, preprocess_path
from hepdeploy.validate.reference import load_reference
from hepdeploy.validate.report import VariantReport

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec


def validate_served(target: ServerTarget, model_ref: str, golden: Path, *, spec: ModelSpec | None = None,
                    artifact: Path | None = None, judgement: Judgement | None = None) -> VariantReport:
    """Validate what the server ``target`` returns for ``model_ref`` (NAME[:VERSION]) against the golden set ``golden``.

    Tensors travel as ``target`` says (system shared memory for a server on this host under ``auto``,
    gRPC compression for a remote one). Same comparisons, physics checks and report as a file candidate.
    The served tensors are checked against ``artifact``'s sidecar when given (its precision picks the
    tolerances unless ``judgement``'s does), else against ``spec``'s inputs/outputs.
    """
    name, version = parse_model_ref(model_ref)
    judgement = judgement or Judgement()
    expected = None
    if artifact is not None:
        sidecar = read_artifact(artifact).sidecar
        expected = (sidecar.inputs, sidecar.outputs)
        judgement = judgement.with_precision(sidecar.variant.precision)
    elif spec is not None:
        expected = (spec.inputs, spec.outputs)
    reference = load_reference(golden)
    with TritonRunner(target, name, version, expected=expected) as runner:
        return validate_runner(runner, reference, name=model_ref, candidate=_served_name(runner, model_ref),
                               spec=spec, judgement=judgement)


def validate_served_ensemble(target: ServerTarget, model_ref: str, data: Path | str, *, spec: ModelSpec,
                             artifact: Path, judgement: Judgement | None = None) -> VariantReport:
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
    judgement = (judgement or Judgement()).with_precision(sidecar.variant.precision)
    json_path = preprocess_path(spec)
    config = load_preprocess(json_path)
    served = served_preprocess(config, sidecar.inputs, spec.data, where=str(json_path))
    expected = (served.raw_input_specs(), sidecar.outputs)
    with TritonRunner(target, name, version, expected=expected) as runner:
        preprocessing = _served_preprocessing(runner, target, model_ref, spec, json_path)
        request = min(runner.max_batch_size, judgement.chunk_for(spec))
        runner.max_request_batch = request
        reference = inline_reference(data, artifact, spec, preprocessing.convention, request, preprocessing.notes,
                                     config=config, served=served)
        report = validate_runner(runner, reference, name=model_ref, candidate=_served_name(runner, model_ref),
                                 spec=spec, judgement=replace(judgement, chunk_size=request))
    report.notes.extend(preprocessing.notes)
    report.notes.append(f"raw ROOT events sent to the ensemble in requests of {request}; reference: "
                        f"{json_path.name} ({preprocessing.convention}) inline + {Path(artifact).name} in ONNX Runtime")
    return report


def _served_name(runner: TritonRunner, model_ref: str) -> str:
    return f"{runner.protocol}://{runner.url}/{model_ref}"


@dataclass
class ServedPreprocessing:
    """What the served ensemble's first step says about its preprocessing, and how it differs from the spec's."""

    convention: str
    notes: list[str] = field(default_factory=list)


def _served_preprocessing(runner: TritonRunner, target: ServerTarget, model_ref: str, spec: ModelSpec,
                          json_path: Path) -> ServedPreprocessing:
    """Read the ensemble's config and its preprocessing step's: bad input unless ``model_ref`` is a batched
    ensemble with the expected raw inputs; the convention the inline path follows (the server's)."""
    steps = runner.model_config().get("ensemble_scheduling", {}).get("step", [])
    if not steps:
        raise DataError(f"{model_ref}: not an ensemble; ROOT events (--data) are sent raw to a preprocessing "
                        f"ensemble (hepdeploy triton add --preprocess)")
    runner.check_metadata()  # the raw inputs and the artifact's outputs, or ServedModelMismatchError
    if runner.max_batch_size <= 0:
        raise DataError(f"{model_ref}: the ensemble has no batch axis (max_batch_size 0); a preprocessing "
                        f"ensemble is batched")
    with TritonRunner(target, steps[0]["model_name"]) as step:
        parameters = step.model_config().get("parameters", {})
    spec_convention = spec.data.preprocess.convention if spec.data.preprocess is not None else "cmssw"
    found = ServedPreprocessing(parameters.get("convention", {}).get("string_value") or spec_convention)
    if found.convention != spec_convention:
        found.notes.append(f"the served preprocessing uses the {found.convention} convention, the spec "
                           f"{spec_convention}: the inline path follows the server")
    served_sha = parameters.get("preprocess_sha256", {}).get("string_value")
    if served_sha and served_sha != sha256_file(json_path):
        found.notes.append(f"the served preprocess.json differs from {json_path} (sha256 {served_sha[:12]})")
    return found
