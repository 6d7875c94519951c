"""The gate's integrity check: published versions are untouched, and the candidate goes into a new folder.

SonicTriton's ``cmsTritonConfigTool versioncheck`` policy, made automatic: a file of a version that is
already published must never change (a server, or CMSSW's local copy, may hold that version), so any
change is FAIL unless ``--allow-overwrite REASON`` declares it; then it is reported (INFO) with the
reason. The digests are checked by the repository checker (:meth:`ModelChecker.check_recorded_digests`):
each version's manifest (sha256) and the config's checksum agent (MD5).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from hepdeploy.errors import RepositoryError
from hepdeploy.gate.outcome import CheckResult, Finding, GateOutcome, outcome_of
from hepdeploy.triton.check import CheckReport, ModelChecker
from hepdeploy.triton.config import CHECKSUM_AGENT, read_model_config
from hepdeploy.triton.layout import CONFIG_NAME, read_manifest, version_folders

CHECK = "integrity"


def check_integrity(model_dir: Path, *, candidate_version: int | None, changed_existing: Sequence[str] = (),
                    allow_overwrite: str | None = None, candidate_in_repository: bool = False) -> CheckResult:
    """Every published version of ``model_dir`` against its recorded digests, and the candidate's version.

    ``candidate_version`` None: the candidate goes into the next free folder (as a publish picks it).
    ``changed_existing``: repository-relative paths of files in existing version folders that a git change
    modified (``--changed-since``). ``candidate_in_repository``: the candidate's folder is already there
    (the ``--changed-since`` form); it is then checked against its own manifest, never forgiven by
    ``allow_overwrite``, and only the versions below it count as existing.
    """
    model_dir = Path(model_dir)
    existing = [v for v in version_folders(model_dir) if not (candidate_in_repository and v == candidate_version)]
    overwrite: GateOutcome = "INFO" if allow_overwrite else "FAIL"
    digest_problems = _digest_findings(model_dir, existing, overwrite)
    keys = _agent_keys(model_dir)
    unverifiable = _unverifiable_findings(model_dir, [v for v in existing if not _verifiable(model_dir / str(v), keys)],
                                          keys)
    touched = {f.path or "" for f in [*digest_problems, *unverifiable]}
    verified = [Finding(name=f"{model_dir.name}/{v}", outcome="PASS", path=f"{model_dir.name}/{v}",
                        message="every file matches what was recorded when it was published")
                for v in existing if not any(_inside(p, f"{model_dir.name}/{v}") for p in touched)]
    # The commit's other changes (the candidate's own folder, config.pbtxt and labels.txt that every
    # publish rewrites, other models) are not changes to a published version.
    judged = [p for p in changed_existing
              if _published_file(p, model_dir.name, candidate_version, candidate_in_repository)]
    findings = [_candidate_finding(model_dir.name, existing, candidate_version), *digest_problems,
                *_changed_findings(judged, overwrite), *unverifiable, *verified]
    details: dict = {"versions": existing, "candidate_version": candidate_version, "changed_existing": judged,
                     "changed_elsewhere": [p for p in changed_existing if p not in judged]}
    if allow_overwrite:
        details["allow_overwrite"] = allow_overwrite
    outcome = outcome_of(findings)
    return CheckResult(CHECK, outcome, _reason(outcome, findings, allow_overwrite), findings, details)


def _candidate_finding(model: str, existing: list[int], candidate_version: int | None) -> Finding:
    """The candidate goes into a folder above every existing version (never over one)."""
    newest = max(existing, default=0)
    if candidate_version is None:
        return Finding(name="candidate version", outcome="PASS", candidate=newest + 1, baseline=existing or None,
                       message=f"the candidate goes into the next free version folder {newest + 1}/")
    if candidate_version > newest:
        return Finding(name="candidate version", outcome="PASS", candidate=candidate_version,
                       baseline=existing or None,
                       message=f"the candidate goes into the new folder {candidate_version}/")
    where = "would overwrite" if candidate_version in existing else "is not above"
    return Finding(name="candidate version", outcome="FAIL", candidate=candidate_version, baseline=existing,
                   path=f"{model}/{candidate_version}",
                   message=f"the candidate's version {candidate_version} {where} the published version(s) "
                           f"{', '.join(map(str, existing))}: a new version needs a new folder above {newest}")


def _digest_findings(model_dir: Path, existing: list[int], overwrite: GateOutcome) -> list[Finding]:
    """One finding per file whose digest (manifest sha256, checksum agent MD5) no longer matches."""
    if not model_dir.is_dir():
        return []
    checker = ModelChecker(model_dir, CheckReport(repo=model_dir.parent), run_models=False)
    findings = []
    for problem in checker.check_recorded_digests():
        relative = _relative(problem.path, model_dir.parent)
        version = _version_of(relative)
        # A problem in the candidate's own folder is a broken candidate, not an overwrite to forgive.
        outcome = "FAIL" if version is not None and version not in existing else overwrite
        findings.append(Finding(name=relative, outcome=outcome, path=relative, message=problem.message,
                                extra={"version": version} if version is not None else {}))
    return findings


def _published_file(path: str, model: str, candidate_version: int | None, candidate_in_repository: bool) -> bool:
    """A repository-relative path lies in one of ``model``'s version folders other than the candidate's
    (a removed version's folder counts: git still names its files)."""
    parts, version = PurePosixPath(path).parts, _version_of(path)
    return bool(parts) and parts[0] == model and version is not None \
        and not (candidate_in_repository and version == candidate_version)


def _changed_findings(changed: Sequence[str], overwrite: GateOutcome) -> list[Finding]:
    return [Finding(name=path, outcome=overwrite, path=path, extra={"version": _version_of(path)},
                    message=f"changed or removed in the published version {_version_of(path)} (a published "
                            "version must never change)")
            for path in changed]


def _unverifiable_findings(model_dir: Path, versions: list[int], agent_keys: set[str]) -> list[Finding]:
    """Versions without a manifest whose files the checksum agent does not all cover: nothing to verify
    them against, so UNDECIDED (not PASS)."""
    findings = []
    for version in versions:
        version_dir = model_dir / str(version)
        uncovered = sorted(p.relative_to(model_dir).as_posix() for p in version_dir.rglob("*")
                           if p.is_file() and p.relative_to(model_dir).as_posix() not in agent_keys)
        relative = _relative(version_dir, model_dir.parent)
        findings.append(Finding(name=relative, outcome="UNDECIDED", path=relative, extra={"uncovered": uncovered},
                                message="no hepdeploy manifest and the checksum agent does not cover "
                                        f"{', '.join(uncovered)}: cannot verify this version is unchanged"))
    return findings


def _verifiable(version_dir: Path, agent_keys: set[str]) -> bool:
    """A version can be verified: it has a manifest, or the checksum agent covers every file in it."""
    try:
        if read_manifest(version_dir) is not None:
            return True
    except RepositoryError:
        return True  # unreadable manifest: reported as a digest problem
    model_dir = version_dir.parent
    files = [p.relative_to(model_dir).as_posix() for p in version_dir.rglob("*") if p.is_file()]
    return bool(files) and all(f in agent_keys for f in files)


def _agent_keys(model_dir: Path) -> set[str]:
    """Model-folder-relative paths the config's checksum agent records (empty without config or agent)."""
    try:
        config = read_model_config(model_dir / CONFIG_NAME)
    except RepositoryError:
        return set()
    return {key.partition(":")[2] for agent in config.model_repository_agents.agents if agent.name == CHECKSUM_AGENT
            for key in agent.parameters}


def _relative(path: Path, repo: Path) -> str:
    try:
        return Path(path).relative_to(repo).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(f"{folder}/")


def _version_of(relative: str) -> int | None:
    """The version folder a repository-relative path lies in (``jet_mlp/1/model.onnx`` -> 1)."""
    parts = PurePosixPath(relative).parts
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


def _reason(outcome: GateOutcome, findings: list[Finding], allow_overwrite: str | None) -> str:
    forgiven = [f for f in findings if f.outcome == "INFO"]
    allowed = f"; {len(forgiven)} change(s) to published files allowed: {allow_overwrite}" if forgiven else ""
    if outcome == "PASS":
        verified = [f for f in findings if f.outcome == "PASS" and f.name != "candidate version"]
        return f"{len(verified)} published version(s) verified unchanged; {findings[0].message}{allowed}"
    deciding = [f for f in findings if f.outcome == outcome]
    first = deciding[0]
    more = f" (and {len(deciding) - 1} more)" if len(deciding) > 1 else ""
    return f"{first.path or first.name}: {first.message}{more}{allowed}"
