"""The whole gate: version N+1 of a model against version N, the one published in a repository.

``run_gate(request)`` reads version N through its folder (config, manifest, files), runs N and N+1 on the
same reference events, and runs the checks of :data:`~hepdeploy.gate.outcome.CHECK_ORDER` in that order;
``run_changed(...)`` gates every new version a git change added to a repository (a merge-request job).
A missing baseline is bad input (exit 2) unless the candidate is declared the model's first version.
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.environment import versions as tool_versions
from hepdeploy.errors import BadInputError, HepDeployError, first_line
from hepdeploy.fsutil import check_safe_name, sha256_file
from hepdeploy.gate.change_map import change_map
from hepdeploy.gate.changed import changed_models
from hepdeploy.gate.integrity import check_integrity
from hepdeploy.gate.interface import ServedInterface, check_interface, interface_of_plan, interface_of_published
from hepdeploy.gate.non_inferiority import check_non_inferiority
from hepdeploy.gate.outcome import CheckResult, GateModel, GateResult
from hepdeploy.gate.performance import check_performance
from hepdeploy.gate.variants import check_variants
from hepdeploy.spec import GateSpec, ModelSpec, PhysicsSpec
from hepdeploy.triton.config import model_filename, parse_model_config, read_model_config
from hepdeploy.triton.layout import CONFIG_NAME, version_folders
from hepdeploy.triton.plan import ModelRequest, plan_model
from hepdeploy.validate import ReferenceSet, make_reference

log = logging.getLogger(__name__)

_AGAINST = re.compile(r"^(?P<repo>.+)/(?P<name>[^/@]+)(?:@(?P<version>latest|\d+))?$")


@dataclass(frozen=True)
class Against:
    """``REPO/NAME[@VERSION|@latest]``: the published model the candidate must be at least as good as."""

    repo: Path
    name: str
    version: int | None = None  # None: the newest published version

    @classmethod
    def parse(cls, text: str) -> Against:
        match = _AGAINST.match(text.rstrip("/"))
        if match is None:
            raise BadInputError(f"--against {text!r}: expected REPO/NAME, REPO/NAME@VERSION or REPO/NAME@latest")
        version = match["version"]
        return cls(Path(match["repo"]), check_safe_name(match["name"], "model name"),
                   None if version in (None, "latest") else int(version))

    @property
    def model_dir(self) -> Path:
        return self.repo / self.name


@dataclass(frozen=True)
class GateRequest:
    """What one gate compares, and the declared exceptions to its rules.

    ``candidate``: the N+1 model file; ``candidate_version``: its version folder when it is already in the
    repository (a git change added it), else it would go into the next free version. ``changed_existing``,
    ``baseline_config_text`` and ``baseline_files_at_ref`` come from git: files changed inside existing
    versions, and the model's config.pbtxt, labels and preprocess.json as they were before the change (what
    clients of N were built against: a publish of N+1 rewrites the model folder's shared files).
    """

    candidate: Path
    against: Against
    data: Path
    spec: ModelSpec | None = None
    spec_path: Path | None = None
    labels: str | None = None
    allow_overwrite: str | None = None
    allow_interface_change: str | None = None
    first_version: bool = False
    candidate_version: int | None = None
    changed_existing: tuple[str, ...] = ()
    baseline_config_text: str | None = None
    baseline_files_at_ref: Mapping[str, bytes | None] | None = None
    work_dir: Path | None = None
    max_events: int | None = None

    @property
    def gate(self) -> GateSpec:
        return self.spec.gate if self.spec is not None else GateSpec()

    @property
    def physics(self) -> PhysicsSpec:
        return self.spec.validation.physics if self.spec is not None else PhysicsSpec()


@dataclass
class _Sides:
    """Both models and the events they ran on."""

    baseline: GateModel | None
    candidate: GateModel
    baseline_file: Path | None
    reference: ReferenceSet  # inputs, labels, variables; outputs: version N's (N+1's when there is no N)
    candidate_outputs: dict[str, np.ndarray]
    baseline_interface: ServedInterface | None = None
    candidate_interface: ServedInterface | None = None
    notes: list[str] = field(default_factory=list)


def served_file(model_dir: Path, version: int, config_text: str | None = None) -> Path:
    """The file a version folder serves that ONNX Runtime can run (a Python twin's ONNX file included)."""
    config = parse_model_config(config_text) if config_text is not None else read_model_config(model_dir / CONFIG_NAME)
    folder = model_dir / str(version)
    named = model_filename(config)
    for candidate in ([folder / named] if named else []) + sorted(folder.glob("*.onnx")):
        if candidate.suffix == ".onnx" and candidate.is_file():
            return candidate
    if named and (folder / named).exists():
        return folder / named
    raise BadInputError(f"{folder}: no model file the gate can run (config names {named!r})")


def baseline_version(request: GateRequest) -> int | None:
    """Version N: the one asked for, else the newest below the candidate's folder; None when there is none."""
    model_dir = request.against.model_dir
    published = version_folders(model_dir)
    if request.candidate_version is not None:
        published = [v for v in published if v < request.candidate_version]
    if request.against.version is not None:
        if request.against.version not in published:
            raise BadInputError(f"{model_dir}: no version {request.against.version} (published: "
                                f"{', '.join(map(str, published)) or 'none'})")
        return request.against.version
    if published:
        return published[-1]
    if request.first_version:
        return None
    raise BadInputError(f"{model_dir}: no published version to gate against; give --first-version if this is "
                        "the model's first version")


def _model(name: str, version: int | None, path: Path) -> GateModel:
    return GateModel(name, version, str(path), sha256_file(path) if path.is_file() else None)


def _load_sides(request: GateRequest, version: int | None) -> _Sides:
    """Run N (when there is one) and N+1 on the same events."""
    model_dir, name = request.against.model_dir, request.against.name
    candidate_version = request.candidate_version or (max(version_folders(model_dir), default=0) + 1)
    candidate = _model(name, candidate_version, request.candidate)
    chunk = request.spec.validation.chunk_size if request.spec is not None else None
    baseline_file = None if version is None else served_file(model_dir, version, request.baseline_config_text)
    first = baseline_file or request.candidate
    reference = make_reference(first, request.data, labels=request.labels, spec=request.spec, chunk_size=chunk,
                               max_samples=request.max_events)
    if baseline_file is None:
        candidate_outputs = dict(reference.outputs)
    else:
        events = {**reference.inputs, **reference.labels, **reference.variables}  # the same events, read once
        candidate_outputs = make_reference(request.candidate, events, labels=request.labels, spec=request.spec,
                                           chunk_size=chunk).outputs
    return _Sides(None if version is None else _model(name, version, baseline_file), candidate, baseline_file,
                  reference, candidate_outputs)


def _candidate_interface(request: GateRequest) -> ServedInterface:
    """N+1's interface: its folder's when it is published, else what publishing it would write."""
    if request.candidate_version is not None:
        return interface_of_published(request.against.model_dir, request.candidate_version)
    # The tensors are the file's own (a spec written for N may not name N+1's); the triton block is the spec's.
    triton = request.spec.triton if request.spec is not None else None
    plan = plan_model(ModelRequest(request.candidate, request.against.name, triton=triton))
    return interface_of_plan(plan)


def _timed(name: str, make: Callable[[], CheckResult]) -> CheckResult:
    """Run one check; a check that raises could not be made: UNDECIDED with the reason, never PASS."""
    start = time.perf_counter()
    try:
        result = make()
    except HepDeployError as error:
        log.warning("gate: the %s check could not be made: %s", name, first_line(error))
        result = CheckResult(name, "UNDECIDED", f"could not be made: {first_line(error)}")
    result.seconds = time.perf_counter() - start
    log.info("gate: %s %s: %s", name, result.outcome, result.reason)
    return result


def _no_baseline(name: str) -> CheckResult:
    return CheckResult(name, "INFO", "first version: there is no version N to compare with")


def run_gate(request: GateRequest) -> GateResult:
    """Every check of one gate, in order, with both models' identities, the seed and the tool versions."""
    start = time.perf_counter()
    if not request.candidate.exists():
        raise BadInputError(f"{request.candidate}: the candidate model does not exist")
    version = baseline_version(request)
    sides = _load_sides(request, version)
    checks = [_timed("integrity", lambda: check_integrity(
        request.against.model_dir, candidate_version=sides.candidate.version,
        changed_existing=request.changed_existing, allow_overwrite=request.allow_overwrite,
        candidate_in_repository=request.candidate_version is not None))]
    mapped = _timed("change_map", lambda: _change_map(request, sides)) if version is not None else None
    checks.append(_timed("interface", lambda: _interface(request, version, mapped)))
    checks.append(_timed("variants", lambda: _variants(request, sides)))
    if version is None:
        checks += [_no_baseline("non_inferiority"), _no_baseline("change_map"), _no_baseline("performance")]
    else:
        checks.append(_timed("non_inferiority", lambda: check_non_inferiority(
            sides.reference.outputs, _paired_outputs(sides), sides.reference.labels, sides.reference.variables,
            request.gate, request.physics)))
        checks.append(mapped)  # type: ignore[arg-type]
        checks.append(_timed("performance", lambda: check_performance(
            sides.baseline_file, request.candidate, _timing_inputs(sides.reference), request.gate)))  # type: ignore[arg-type]
    allowed = {key: reason for key, reason in (("overwrite", request.allow_overwrite),
                                               ("interface_change", request.allow_interface_change)) if reason}
    return GateResult(sides.baseline, sides.candidate, checks, seed=request.gate.seed,
                      events=sides.reference.n_samples, spec_path=None if request.spec_path is None
                      else str(request.spec_path), versions=tool_versions(), allowed=allowed,
                      first_version=version is None, seconds=time.perf_counter() - start)


def _paired_outputs(sides: _Sides) -> dict[str, np.ndarray]:
    """N+1's outputs under N's names: renamed outputs (the interface check judges the renaming) are paired
    in order, so the physics of a renamed output is still compared."""
    baseline, candidate = list(sides.reference.outputs), list(sides.candidate_outputs)
    if baseline == candidate or len(baseline) != len(candidate):
        return sides.candidate_outputs
    log.info("gate: N+1's outputs %s are compared with N's %s in order", candidate, baseline)
    return {old: sides.candidate_outputs[new] for old, new in zip(baseline, candidate, strict=True)}


def _change_map(request: GateRequest, sides: _Sides) -> CheckResult:
    physics = request.physics
    return change_map(sides.reference.outputs, _paired_outputs(sides), output=physics.output,
                      class_names=physics.class_names or (request.spec.triton.labels if request.spec else []),
                      seed=request.gate.seed)


def _interface(request: GateRequest, version: int | None, mapped: CheckResult | None) -> CheckResult:
    if version is None:
        return CheckResult("interface", "INFO", "first version: no clients of an earlier version to break")
    baseline = interface_of_published(request.against.model_dir, version, config_text=request.baseline_config_text,
                                      files_at_ref=request.baseline_files_at_ref)
    permutation = mapped.details.get("permutation") if mapped is not None else None
    return check_interface(baseline, _candidate_interface(request), allow_change=request.allow_interface_change,
                           permutation=permutation)


def _variants(request: GateRequest, sides: _Sides) -> CheckResult:
    if request.spec is None:
        return CheckResult("variants", "UNDECIDED", "no --spec: the candidate's variants were not made or validated")
    if request.candidate.suffix != ".onnx":
        return CheckResult("variants", "UNDECIDED", f"the candidate {request.candidate.name} is not an ONNX file: "
                           "its variants cannot be made from it")
    # The candidate's own outputs are the golden set its variants are judged against.
    reference = replace(sides.reference, outputs=sides.candidate_outputs,
                        provenance={"model": str(request.candidate), "sha256": sides.candidate.sha256})
    if request.work_dir is not None:
        return check_variants(request.candidate, request.spec, reference, request.work_dir)
    with tempfile.TemporaryDirectory(prefix="hepdeploy-gate-") as work:  # the variants are judged, not kept
        return check_variants(request.candidate, request.spec, reference, Path(work))


def _timing_inputs(reference: ReferenceSet, rows: int = 4096) -> dict[str, np.ndarray]:
    return {name: array[:rows] for name, array in reference.inputs.items()}


# ----------------------------------------------------------------------------- a git change


@dataclass(frozen=True)
class ChangedGate:
    """One gate a git change asks for: a model's new version (or a change to existing versions only)."""

    name: str
    version: int | None
    result: GateResult


def run_changed(repo: Path, ref: str, template: GateRequest, *, data_for: Mapping[str, Path] | Path,
                spec_for: Mapping[str, tuple[ModelSpec, Path]] | tuple[ModelSpec, Path] | None = None
                ) -> list[ChangedGate]:
    """Gate every new version the change since ``ref`` added to ``repo``, each against the version before it.

    ``template`` carries the options every gate shares (declared exceptions, work folder); ``data_for`` and
    ``spec_for`` give each changed model its reference data and spec (one for all, or per model name).
    A model whose existing versions changed without a new version gets the integrity check alone.
    """
    gates: list[ChangedGate] = []
    for changed in changed_models(repo, ref):
        if not changed.new_versions:
            check = check_integrity(repo / changed.name, candidate_version=None,
                                    changed_existing=tuple(changed.changed_existing),
                                    allow_overwrite=template.allow_overwrite)
            model = GateModel(changed.name, None, str(repo / changed.name))
            gates.append(ChangedGate(changed.name, None, GateResult(None, model, [check], versions=tool_versions(),
                                                                    allowed=_allowed(template))))
            continue
        for version in sorted(changed.new_versions):
            request = _changed_request(repo, changed, version, template, data_for, spec_for)
            gates.append(ChangedGate(changed.name, version, run_gate(request)))
    return gates


def _allowed(template: GateRequest) -> dict[str, str]:
    return {key: reason for key, reason in (("overwrite", template.allow_overwrite),
                                            ("interface_change", template.allow_interface_change)) if reason}


def _for(name: str, table: Mapping[str, Any] | Any, what: str) -> Any:
    if not isinstance(table, Mapping):
        return table
    if name not in table:
        raise BadInputError(f"model {name} changed but no {what} was given for it (give {what} {name}=...)")
    return table[name]


def _changed_request(repo: Path, changed: Any, version: int, template: GateRequest,
                     data_for: Mapping[str, Path] | Path,
                     spec_for: Mapping[str, tuple[ModelSpec, Path]] | tuple[ModelSpec, Path] | None) -> GateRequest:
    spec_pair = _for(changed.name, spec_for, "--spec") if spec_for is not None else None
    model_dir = repo / changed.name
    return replace(template, candidate=served_file(model_dir, version), against=Against(repo, changed.name),
                   data=Path(_for(changed.name, data_for, "--data")),
                   spec=None if spec_pair is None else spec_pair[0],
                   spec_path=None if spec_pair is None else spec_pair[1],
                   candidate_version=version, changed_existing=tuple(changed.changed_existing),
                   baseline_config_text=changed.config_at_ref, baseline_files_at_ref=changed.files_at_ref)
