"""Which models of a model repository kept in git changed since a ref (``hepdeploy gate REPO --changed-since``).

Compares the working tree (committed or not, untracked files included) with ``REF`` through ``git``: per
model folder, the version folders that are new, the files that changed inside version folders that
existed at the ref (what integrity judges) and the files N's interface reads as they were at the ref
(config.pbtxt, label files, preprocess.json, read with ``git show``), so N is compared as it was published.
"""
from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hepdeploy.errors import RepositoryError
from hepdeploy.fsutil import shown
from hepdeploy.triton.config import LABEL_FILENAME
from hepdeploy.triton.ensemble import PREPROCESS_JSON
from hepdeploy.triton.layout import CONFIG_NAME, version_folders

log = logging.getLogger(__name__)
_LABEL_FILE = re.compile(r'label_filename\s*:\s*"([^"\\/]+)"')  # a file beside config.pbtxt


@dataclass
class ChangedModel:
    """One model folder with changes since the ref. Paths in ``changed_files`` / ``changed_model_files``
    are relative to the model folder (``1/model.onnx``), each with git's status letter (A, M, D, T)."""

    name: str
    folder: Path
    new_versions: list[int] = field(default_factory=list)
    removed_versions: list[int] = field(default_factory=list)
    versions_at_ref: list[int] = field(default_factory=list)
    changed_files: dict[str, str] = field(default_factory=dict)
    changed_model_files: dict[str, str] = field(default_factory=dict)
    # What N's interface reads, as the ref had it (None: absent there), keyed by model-folder-relative path:
    # config.pbtxt, labels.txt and the label files the config names, preprocess.json (the model's and N's).
    files_at_ref: dict[str, bytes | None] = field(default_factory=dict)

    @property
    def config_at_ref(self) -> str | None:
        return _text(self.files_at_ref.get(CONFIG_NAME))

    @property
    def labels_at_ref(self) -> str | None:
        return _text(self.files_at_ref.get(LABEL_FILENAME))

    @property
    def changed_existing(self) -> list[str]:
        """The changed files inside published versions, relative to the model repository (``jet_a/1/model.onnx``):
        what the integrity check is given."""
        return [f"{self.name}/{path}" for path in self.changed_files]

    @property
    def baseline_version(self) -> int | None:
        """The newest version the ref had (what a new version is gated against), or None."""
        return max(self.versions_at_ref) if self.versions_at_ref else None


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


def _git(work_tree: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(work_tree), "-c", "core.quotepath=off", *args],
                              capture_output=True, check=False)
    except FileNotFoundError as error:
        raise RepositoryError("git is not installed: --changed-since needs it") from error


def _error_line(process: subprocess.CompletedProcess[bytes]) -> str:
    text = process.stderr.decode(errors="replace").strip()
    return text.splitlines()[0] if text else f"git exited {process.returncode}"


def _git_root(repo: Path) -> tuple[Path, str]:
    """The work tree's top folder and the repository's path inside it (posix, '' at the top)."""
    if not repo.is_dir():
        raise RepositoryError(f"{shown(repo)}: model repository not found")
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise RepositoryError(f"{shown(repo)}: not inside a git work tree ({_error_line(top)})")
    root = Path(top.stdout.decode().strip()).resolve()
    inside = repo.resolve().relative_to(root).as_posix()
    return root, "" if inside == "." else inside


def _check_ref(root: Path, ref: str) -> None:
    if ref.startswith("-") or _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        raise RepositoryError(f"--changed-since {ref!r}: not a commit in the git repository at {shown(root)}")


def _changed_paths(root: Path, ref: str, inside: str) -> dict[str, str]:
    """Paths under ``inside`` (relative to it) that differ between ``ref`` and the working tree -> status."""
    scope = inside or "."
    diff = _git(root, "diff", "--no-renames", "--name-status", "-z", ref, "--", scope)
    if diff.returncode != 0:
        raise RepositoryError(f"git diff {ref} failed in {shown(root)}: {_error_line(diff)}")
    fields = diff.stdout.decode("utf-8", errors="surrogateescape").split("\0")
    changes = {fields[i + 1]: fields[i][:1] for i in range(0, len(fields) - 1, 2) if fields[i]}
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", scope)
    if untracked.returncode != 0:
        raise RepositoryError(f"git ls-files failed in {shown(root)}: {_error_line(untracked)}")
    for path in untracked.stdout.decode("utf-8", errors="surrogateescape").split("\0"):
        if path:
            changes.setdefault(path, "A")
    prefix = PurePosixPath(inside) if inside else None
    return {(PurePosixPath(p).relative_to(prefix).as_posix() if prefix else p): status
            for p, status in changes.items()}


def _bytes_at(root: Path, ref: str, path: str) -> bytes | None:
    shown_file = _git(root, "show", f"{ref}:{path}")
    return shown_file.stdout if shown_file.returncode == 0 else None


def _files_at_ref(root: Path, ref: str, model_path: str, baseline: int | None) -> dict[str, bytes | None]:
    """The files N's interface reads, as ``ref`` had them (see ChangedModel.files_at_ref)."""
    files = {CONFIG_NAME: _bytes_at(root, ref, f"{model_path}/{CONFIG_NAME}")}
    named = _LABEL_FILE.findall(_text(files[CONFIG_NAME]) or "")
    wanted = [LABEL_FILENAME, *named, PREPROCESS_JSON] + ([f"{baseline}/{PREPROCESS_JSON}"] if baseline is not None else [])
    for relative in dict.fromkeys(wanted):
        files[relative] = _bytes_at(root, ref, f"{model_path}/{relative}")
    return files


def _versions_at(root: Path, ref: str, model_path: str) -> list[int]:
    listing = _git(root, "ls-tree", "-d", "--name-only", "-z", ref, f"{model_path}/")
    names = [PurePosixPath(p).name for p in listing.stdout.decode(errors="replace").split("\0") if p]
    return sorted(int(n) for n in names if n.isdigit() and (n == "0" or not n.startswith("0")))


def changed_models(repo: Path, ref: str) -> list[ChangedModel]:
    """The model folders under ``repo`` with changes between ``ref`` and the working tree, sorted by name.

    Raises RepositoryError when ``repo`` is not in a git work tree or ``ref`` is not a commit.
    """
    repo = Path(repo)
    root, inside = _git_root(repo)
    _check_ref(root, ref)
    by_model: dict[str, dict[str, str]] = {}
    for path, status in _changed_paths(root, ref, inside).items():
        parts = path.split("/")
        if len(parts) < 2 or parts[0].startswith("."):  # a file beside the models, or a hidden folder
            continue
        by_model.setdefault(parts[0], {})["/".join(parts[1:])] = status
    models = []
    for name, changes in sorted(by_model.items()):
        model_path = f"{inside}/{name}" if inside else name
        model = ChangedModel(name=name, folder=repo / name, versions_at_ref=_versions_at(root, ref, model_path))
        now = version_folders(repo / name)
        model.new_versions = [v for v in now if v not in model.versions_at_ref]
        model.removed_versions = [v for v in model.versions_at_ref if v not in now]
        for path, status in sorted(changes.items()):
            top = path.split("/")[0]
            if "/" not in path:
                model.changed_model_files[path] = status
            elif top.isdigit() and int(top) in model.versions_at_ref and str(int(top)) == top:
                model.changed_files[path] = status
        model.files_at_ref = _files_at_ref(root, ref, model_path, model.baseline_version)
        log.info("%s: new versions %s, %d changed files in existing versions", name, model.new_versions,
                 len(model.changed_files))
        models.append(model)
    return models
