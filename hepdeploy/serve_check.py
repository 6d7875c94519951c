"""The serve check: start a local Triton server on a repository and validate what it serves.

Above both the triton stage (which writes and serves repositories) and the validate stage
(which judges a runner against a golden set): it starts a :class:`TritonServer`, opens a
:class:`~hepdeploy.backend.triton.TritonRunner` per loaded model and validates it.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hepdeploy.artifacts import load_onnx, tensor_specs_of
from hepdeploy.backend.triton import ServerTarget, TritonRunner
from hepdeploy.errors import DependencyMissingError, HepDeployError, ServerError
from hepdeploy.judgement import Judgement
from hepdeploy.triton.config import read_model_config
from hepdeploy.triton.layout import CONFIG_NAME, Manifest, newest_manifest, version_folders
from hepdeploy.triton.server import ServerBinary, TritonServer, find_tritonserver
from hepdeploy.validate import load_reference, validate_runner


@dataclass
class ServedModelResult:
    """What the serve check found for one model folder."""

    name: str
    loaded: bool
    load_error: str = ""
    validated: bool = False
    passed: bool | None = None
    verdict: str = ""

    def line(self) -> str:
        if not self.loaded:
            return f"{self.name}: not loaded by the server: {self.load_error}"
        if not self.validated:
            return f"{self.name}: loaded; not validated: {self.verdict}"
        return f"{self.name}: loaded; {self.verdict}"


@dataclass
class ServeCheckReport:
    repository: Path
    server: str = ""
    status: Literal["ok", "failed", "skipped"] = "ok"
    reason: str = ""
    models: list[ServedModelResult] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every model the server loaded and that had a golden set passed."""
        return self.status == "ok" and all(m.passed is not False for m in self.models)

    @property
    def not_loaded(self) -> dict[str, str]:
        return {m.name: m.load_error for m in self.models if not m.loaded}

    def lines(self) -> list[str]:
        head = f"serve check of {self.repository}: {self.status}"
        if self.reason:
            head += f": {self.reason}"
        if self.server:
            head += f" [{self.server}]"
        return [head, *(f"  {m.line()}" for m in self.models)]

    def to_dict(self) -> dict[str, Any]:
        return {"repository": str(self.repository), "server": self.server, "status": self.status,
                "reason": self.reason, "ok": self.ok, "log": str(self.log_path) if self.log_path else None,
                "models": [m.__dict__ for m in self.models]}


def _backend(model_dir: Path) -> str | None:
    """The backend (or platform) a model folder's config names; None when it cannot be read."""
    try:
        config = read_model_config(model_dir / CONFIG_NAME)
    except HepDeployError:
        return None
    return config.backend or config.platform or None


def _served_manifest(model_dir: Path) -> Manifest | None:
    """The newest version's manifest (None: none, or unreadable: the model is then judged as it is)."""
    try:
        return newest_manifest(model_dir)
    except HepDeployError:
        return None


def _golden_for(repo: Path, name: str, goldens: Mapping[str, Path], manifest: Manifest | None = None) -> Path | None:
    """The golden set of a served model: by its name, else that of the model it is the twin of (its
    ``manifest``, read here when not given, says which; a twin of a twin leads back to the model)."""
    seen: set[str] = set()
    while name not in goldens:
        manifest = manifest if manifest is not None and manifest.model == name else _served_manifest(repo / name)
        if manifest is None or manifest.twin_of is None or manifest.twin_of in seen:
            return None
        seen.add(name)
        name = manifest.twin_of
    return Path(goldens[name])


def _served_artifact_info(model_dir: Path, manifest: Manifest | None) -> tuple[Any, str]:
    """(expected tensor specs or None, precision) from the newest version's ONNX file and its ``manifest``."""
    versions = version_folders(model_dir)
    if not versions:
        return None, "fp32"
    precision = manifest.precision if manifest is not None else "fp32"
    onnx_file = model_dir / str(versions[-1]) / "model.onnx"
    if onnx_file.is_file():
        with contextlib.suppress(HepDeployError):
            return tensor_specs_of(load_onnx(onnx_file, load_weights=False)), precision
    return None, precision


def serve_check(repo: Path, goldens: Mapping[str, Path], timeout_s: float = 300.0,
                binary: ServerBinary | None = None, spec: Any | None = None) -> ServeCheckReport:
    """Start a local server on ``repo``, validate every model it loads against its golden set, stop it.

    ``goldens`` maps model names to reference sets (``.npz`` from ``hepdeploy reference``); a twin
    (its manifest's ``twin_of``: ``NAME_py``, ``NAME_cpu``) uses the golden set of the model it twins. Models the server refuses are listed
    with the server's own message. ``status`` is ``skipped`` (with the reason and the container command
    lines) when no server can run here, ``failed`` when the server would not start.
    """
    repo = Path(repo)
    report = ServeCheckReport(repository=repo)
    deadline = time.monotonic() + timeout_s
    try:
        binary = binary or find_tritonserver(repository=repo)
    except DependencyMissingError as error:
        report.status, report.reason = "skipped", str(error)
        return report
    report.server = binary.describe()
    server = TritonServer(repo, binary=binary, startup_timeout_s=min(120.0, timeout_s),
                          load_timeout_s=min(120.0, timeout_s))
    try:
        server.start()
    except ServerError as error:
        report.status, report.reason, report.log_path = "failed", str(error).splitlines()[0], server.log_path
        return report
    report.log_path = server.log_path
    try:
        errors = server.model_load_errors()
        ready = set(server.ready_models())
        for name in server.model_folders():
            if name not in ready:
                report.models.append(ServedModelResult(name, False, errors.get(name, "not ready (no message)")))
                continue
            result = ServedModelResult(name, True)
            report.models.append(result)
            manifest = _served_manifest(repo / name)
            golden = _golden_for(repo, name, goldens, manifest)
            if golden is None:
                result.verdict = "no golden set for this model"
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 1:
                result.verdict = f"serve check ran out of its {timeout_s:.0f} s"
                continue
            expected, precision = _served_artifact_info(repo / name, manifest)
            try:
                reference = load_reference(golden)
                target = ServerTarget(server.grpc_url, timeout_s=min(60.0, remaining))
                with TritonRunner(target, name, expected=expected) as runner:
                    verdict = validate_runner(runner, reference, name=name, candidate=f"{server.grpc_url}/{name}",
                                              spec=spec, judgement=Judgement(precision=precision))
                result.validated, result.passed, result.verdict = True, bool(verdict.passed), verdict.verdict
            except HepDeployError as error:
                result.validated, result.passed, result.verdict = True, False, f"FAIL: {error}"
    finally:
        server.stop()
    refused_python = [m.name for m in report.models if not m.loaded and _backend(repo / m.name) == "python"]
    disagreeing = [m.name for m in report.models if m.passed is False]
    reasons = []
    if not any(m.loaded for m in report.models):
        reasons.append("the server loaded no model" + (f" ({len(report.models)} refused)" if report.models else ""))
    if refused_python:  # the one backend every server here has: a refusal is the model's fault
        reasons.append("the server refused Python-backend model(s) " + ", ".join(refused_python))
    if disagreeing:
        reasons.append("served outputs disagree with the golden set for " + ", ".join(disagreeing))
    if reasons:
        report.status, report.reason = "failed", "; ".join(reasons)
    return report
