"""Publishing models into a Triton model repository: versioned and atomic.

Each publish adds the next integer version folder and never touches an existing one.
Everything a publish changes (the new version, the config, the README, the warm-up
files) is assembled first in a private staging folder on the same file system, then
made visible by ONE rename:

* a new model: ``rename(staging/<name>, repo/<name>)``;
* a new version of an existing model: the staged folder is a full copy of the model
  folder in which the existing files are *hard links* (same inodes, same bytes, nothing
  copied) plus the new version and the new config; ``renameat2(RENAME_EXCHANGE)`` swaps
  it with ``repo/<name>`` in one step, so a polling server sees either the old model or
  the new one, never a new version with an old config. Where the file system cannot
  exchange (not Linux, NFS), it falls back to renames in a safe order: warm-up files,
  then the version folder, README, and last config.pbtxt (each rename atomic).

Where the staging folder lives: Triton treats *every* subfolder of the repository as a
model (hidden ones included) and would try to load a staging folder there, and a
leftover after a crash would change the repository. So staging is a hidden sibling of
the repository, ``<parent>/.<repo>.hepdeploy-staging/``, which is on the same file
system (checked); only if the parent is on another file system or not writable does it
fall back to ``<repo>/.hepdeploy-staging/`` (``triton check`` then warns about it).
A process killed at any moment leaves the repository exactly as it was; its staging
leftovers are removed by the next publish, which holds an exclusive lock on the staging
folder for its whole run.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hepdeploy import __version__
from hepdeploy.errors import BadInputError, RepositoryError
from hepdeploy.fsutil import (
    atomic_write_bytes,
    atomic_write_text,
    check_input_file,
    check_output_dir,
    fsync_dir,
    sha256_file,
)
from hepdeploy.spec import ModelSpec
from hepdeploy.triton.check import CheckEnvironment, CheckReport, check_model
from hepdeploy.triton.config import (
    LABEL_FILENAME,
    WARMUP_FOLDER,
    config_to_pbtxt,
    label_file_text,
    perf_analyzer_command,
    read_model_config,
    set_checksum_agent,
)
from hepdeploy.triton.layout import (
    CONFIG_NAME,
    INNER_STAGING,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    README_NAME,
    Manifest,
    ManifestSource,
    read_manifest,
    version_folders,
)
from hepdeploy.triton.plan import ModelPlan, ModelRequest, plan_model, python_twin_request

if TYPE_CHECKING:
    import numpy as np
    from tritonclient.grpc import model_config_pb2

log = logging.getLogger("hepdeploy.triton.repository")

# Tests only: seconds to sleep per copied MiB, so a test can SIGKILL a publish mid-copy.
_SLOW_COPY_ENV = "HEPDEPLOY_TEST_SLOW_COPY"
_CHUNK = 1 << 20
_FILE_MODE = 0o644


@dataclass
class PublishResult:
    name: str
    version: int
    model_dir: Path
    version_dir: Path
    config_changed: bool
    files: dict[str, str] = field(default_factory=dict)  # file in the version folder -> sha256

    def line(self) -> str:
        return f"published {self.name} version {self.version} -> {self.version_dir}"


# -- file helpers ---------------------------------------------------------------------------------


def _copy_file(src: Path, dst: Path) -> None:
    """Copy in chunks (so the test hook can slow it down) and fsync."""
    delay = float(os.environ.get(_SLOW_COPY_ENV, "0") or 0)
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while block := reader.read(_CHUNK):
            writer.write(block)
            if delay:
                writer.flush()
                time.sleep(delay)
        writer.flush()
        os.fsync(writer.fileno())


def _write(path: Path, data: bytes | str) -> None:
    """Atomic write, then world-readable: a server often runs as another user than the build."""
    if isinstance(data, str):
        atomic_write_text(path, data)
    else:
        atomic_write_bytes(path, data)
    os.chmod(path, _FILE_MODE)


def _copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir()
    for child in sorted(src.iterdir()):
        target = dst / child.name
        if child.is_dir() and not child.is_symlink():
            _copy_tree(child, target)
        else:
            _copy_file(child, target)


def _link_tree(src: Path, dst: Path) -> None:
    """Mirror ``src`` into ``dst`` with hard links (copies where links are refused)."""
    dst.mkdir()
    shutil.copymode(src, dst)
    for child in sorted(src.iterdir()):
        target = dst / child.name
        if child.is_symlink():
            os.symlink(os.readlink(child), target)
        elif child.is_dir():
            _link_tree(child, target)
        else:
            try:
                os.link(child, target)
            except OSError:
                _copy_file(child, target)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where the system cannot do it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


# -- staging ----------------------------------------------------------------------------------


def staging_root(repo: Path) -> Path:
    """Where this repository's publishes are assembled (see the module docstring)."""
    repo = repo.resolve()
    outside = repo.parent / f".{repo.name}.hepdeploy-staging"
    try:
        same_fs = os.stat(repo.parent).st_dev == os.stat(repo).st_dev
    except OSError:
        same_fs = False
    if same_fs and os.access(repo.parent, os.W_OK):
        return outside
    log.warning("staging inside %s (its parent is on another file system or read-only)", repo)
    return repo / INNER_STAGING


@contextlib.contextmanager
def _staging(repo: Path) -> Iterator[Path]:
    """A fresh private staging folder, under an exclusive lock on the staging root; removes stale leftovers,
    and the root itself when it is left empty (still under the lock: a publish that waited for the lock
    and then finds its root gone starts over on a new one)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: publishes are not serialized against each other
        fcntl = None  # type: ignore[assignment]
    root = staging_root(repo)
    for _ in range(10):
        root.mkdir(exist_ok=True)
        try:
            lock_fd = os.open(root, os.O_RDONLY)
        except FileNotFoundError:  # removed by the publish that held it just before: try again
            continue
        if fcntl is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(lock_fd).st_ino == os.stat(root).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(lock_fd)
    else:
        raise RepositoryError(f"{root}: could not take the staging lock (the folder keeps disappearing)")
    try:
        # Holding the lock, no other publish runs: anything here is left from a killed one.
        for stale in root.iterdir():
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="publish-", dir=root))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                root.rmdir()  # only when empty; a waiting publish sees it gone and makes its own
    finally:
        os.close(lock_fd)  # releases the lock


# -- manifest and README ----------------------------------------------------------------------


def _version_files(version_dir: Path) -> dict[str, str]:
    files = {}
    for path in sorted(version_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            files[path.relative_to(version_dir).as_posix()] = sha256_file(path)
    return files


def _readme_text(config: model_config_pb2.ModelConfig, versions: list[int], spec: ModelSpec | None) -> str:
    batch = None
    if spec is not None and spec.triton.perf.batch_per_request > 1:
        batch = spec.triton.perf.batch_per_request
    dims: dict[str, int] = {}
    if spec is not None:
        for tensor in spec.inputs:
            named = [d for d in tensor.shape[1:] if isinstance(d, str)]
            if len(named) == 1:
                dims[tensor.name] = spec.dim_range(named[0]).opt or spec.dim_range(named[0]).min
    kind = ", ".join(sorted({g.Kind.Name(g.kind) for g in config.instance_group})) or "default instances"
    return (
        f"# {config.name}\n\n"
        f"Written by hepdeploy {__version__}: platform {config.platform or config.backend}, {kind}, "
        f"versions {', '.join(map(str, versions))}; each version folder holds {MANIFEST_NAME} (sha256 of every "
        f"file, toolkit version, validation verdict). Check with `hepdeploy triton check <repository>`.\n\n"
        f"Measure it against a running server:\n\n"
        f"    {perf_analyzer_command(config, dim_sizes=dims, batch=batch)}\n"
    )


# -- publish ----------------------------------------------------------------------------------


@dataclass
class _Staged:
    """One planned model staged as a full model folder, ready to be swapped in."""

    plan: ModelPlan
    staged: Path
    model_dir: Path
    version: int
    files: dict[str, str]
    config_changed: bool
    # Problems the model folder already had: they do not block a new version; new ones do.
    known: set[tuple[Path, str]]

    def result(self) -> PublishResult:
        return PublishResult(name=self.plan.name, version=self.version, model_dir=self.model_dir,
                             version_dir=self.model_dir / str(self.version), config_changed=self.config_changed,
                             files=self.files)


def publish_model(repo: Path, request: ModelRequest, *, verify: bool = True,
                  environment: CheckEnvironment | None = None) -> PublishResult:
    """Publish one model (``request``) as the next version of its name in ``repo``: planned, staged,
    checked and swapped in as :func:`publish` does."""
    return publish(repo, [plan_model(request)], verify=verify, environment=environment)[0]


def publish_python_twin(repo: Path, onnx_file: Path, *, model_name: str | None = None, spec: ModelSpec | None = None,
                        warmup_inputs: Mapping[str, np.ndarray] | None = None, verify: bool = True) -> PublishResult:
    """Only the Python-backend twin ``<model_name>_py`` of an ONNX model (for servers with the Python backend
    only), planned as every twin is. ``model_name`` defaults to the spec's Triton name, else its name."""
    model_name = model_name or (spec.triton.model_name or spec.name if spec is not None else None)
    if model_name is None:
        raise BadInputError(f"{onnx_file}: the twin of which model? (give model_name or a spec)")
    main = ModelRequest(Path(onnx_file), model_name, spec=spec, warmup_inputs=warmup_inputs)
    return publish(repo, [plan_model(python_twin_request(main, Path(onnx_file)))], verify=verify)[0]


def publish(repo: Path, plans: Sequence[ModelPlan], *, verify: bool = True,
            environment: CheckEnvironment | None = None) -> list[PublishResult]:
    """Publish every planned model as the next version of its name in ``repo``, together.

    All models are staged first; with ``verify`` every staged folder goes through ``check_model``
    (including an ONNX Runtime run; ``environment``: the target server and how plans load, as for
    ``triton check``, and an ensemble's steps are found among the staged models). Only when all pass
    are they swapped in, in the plan's order, one rename each; if a swap fails the ones already made
    are swapped back. Any problem leaves the repository as it was.
    """
    repo = check_output_dir(Path(repo))
    known = {plan.name: _existing_problems(repo / plan.name) for plan in plans}
    made_repo = not repo.exists()
    repo.mkdir(exist_ok=True)
    try:
        with _staging(repo) as work:
            staged = [_stage(work, plan, repo / plan.name, known[plan.name]) for plan in plans]
            if verify:
                for item in staged:
                    _verify(item, repo, work, environment)
            _commit_all(staged)
    except OSError as error:  # disk full, permission denied ... while staging
        what = error.strerror or type(error).__name__
        raise RepositoryError(f"{repo}: cannot stage the new version(s) ({what}); nothing changed") from error
    finally:
        if made_repo and not any(repo.iterdir()):  # "nothing changed" includes no new empty repository
            with contextlib.suppress(OSError):
                repo.rmdir()
    return [item.result() for item in staged]


def _existing_problems(model_dir: Path) -> set[tuple[Path, str]]:
    """Problems the model folder has before this publish; a broken existing config stops the publish."""
    if model_dir.exists() and not model_dir.is_dir():
        raise RepositoryError(f"{model_dir}: exists and is not a model folder")
    if not model_dir.is_dir():
        return set()
    if (model_dir / CONFIG_NAME).is_file():
        try:
            read_model_config(model_dir / CONFIG_NAME)
        except RepositoryError as error:  # reported, and left exactly as it is
            raise RepositoryError(f"{error}; not publishing into {model_dir} (nothing changed)") from error
    return {(p.path.relative_to(model_dir), p.message) for p in check_model(model_dir, run_models=False)}


def _stage(work: Path, plan: ModelPlan, model_dir: Path, known: set[tuple[Path, str]]) -> _Staged:
    """The model folder as it will be: the existing one (hard links) plus the new version, config and README."""
    existing = version_folders(model_dir)
    version = (existing[-1] + 1) if existing else 1
    staged = work / plan.name
    if model_dir.is_dir():
        _link_tree(model_dir, staged)
    else:
        staged.mkdir()
    version_dir = staged / str(version)
    version_dir.mkdir()
    for filename, content in plan.files.items():
        if isinstance(content, bytes):
            _write(version_dir / filename, content)
        elif content.is_dir():
            _copy_tree(content, version_dir / filename)
        else:
            _copy_file(check_input_file(content, "model file"), version_dir / filename)
    files = _version_files(version_dir)
    _write(version_dir / MANIFEST_NAME, _manifest(plan, version, files).text())
    for sample in plan.warmup:
        (staged / WARMUP_FOLDER).mkdir(exist_ok=True)
        _write(staged / WARMUP_FOLDER / sample.file_name, sample.data)
    if plan.labels:
        _write(staged / LABEL_FILENAME, label_file_text(plan.labels))
    config = plan.config
    if plan.checksum_agent:
        config = type(plan.config)()
        config.CopyFrom(plan.config)
        set_checksum_agent(config, staged)
    old_config = model_dir / CONFIG_NAME
    old_serving = _serving_text(read_model_config(old_config)) if old_config.is_file() else None
    _write(staged / CONFIG_NAME, config_to_pbtxt(config))
    _write(staged / README_NAME, _readme_text(config, [*existing, version], plan.spec))
    return _Staged(plan, staged, model_dir, version, files, old_serving != _serving_text(config), known)


def _manifest(plan: ModelPlan, version: int, files: dict[str, str]) -> Manifest:
    sidecar = plan.sidecar
    return Manifest(
        manifest_schema=MANIFEST_SCHEMA, model=plan.name, version=version, platform=plan.platform, kind=plan.kind,
        role=plan.role, twin_of=plan.twin_of, files=files, hepdeploy_version=__version__,
        published_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        source=ManifestSource(
            path=plan.source_path,
            variant=sidecar.variant.model_dump() if sidecar is not None else None,
            sha256=sidecar.sha256 if sidecar is not None else None,
            steps=[step.name for step in sidecar.steps] if sidecar is not None else [],
        ),
        verdict=json.loads(json.dumps(dict(plan.verdict), default=str)) if plan.verdict is not None else None,
        plans={n: m.model_dump(mode="json") for n, m in sorted(plan.plans.items())} or None,
    )


def _verify(item: _Staged, repo: Path, work: Path, environment: CheckEnvironment | None) -> None:
    report = CheckReport(repo, staged=work)  # an ensemble's steps: staged with it, or in the repository
    problems = [p for p in check_model(item.staged, run_models=True, environment=environment, report=report)
                if (p.path.relative_to(item.staged), p.message) not in item.known]
    if problems:
        raise RepositoryError(f"model {item.plan.name!r} failed its check before publishing (nothing changed): "
                              + "; ".join(p.message for p in problems[:3]))


def _commit_all(staged: Sequence[_Staged]) -> None:
    """Swap every staged model in, in order; on a failure swap back the ones already in."""
    undo: list[Callable[[], None]] = []
    try:
        for item in staged:
            undo.append(_commit(item.staged, item.model_dir, item.version, [s.file_name for s in item.plan.warmup]))
    except BaseException:  # a failed swap, or an interrupt between two swaps
        for step in reversed(undo):
            try:
                step()
            except OSError as error:
                log.error("could not take back a model swapped in before the failure: %s", error)
        raise


def _serving_text(config: model_config_pb2.ModelConfig) -> str:
    """The config without its checksum agent, which changes with every version: did *serving* change?"""
    plain = type(config)()
    plain.CopyFrom(config)
    plain.ClearField("model_repository_agents")
    return config_to_pbtxt(plain)


def _commit(staged: Path, model_dir: Path, version: int, warmup_names: list[str]) -> Callable[[], None]:
    """Make the staged model folder visible in one rename (see module docstring); returns how to take it back."""
    try:
        if not model_dir.exists():
            os.rename(staged, model_dir)
            undo: Callable[[], None] = lambda: os.rename(model_dir, staged)  # noqa: E731
        elif _exchange(staged, model_dir):
            undo = lambda: _exchange(staged, model_dir) and None  # noqa: E731
        else:
            _commit_by_renames(staged, model_dir, version, warmup_names)
            undo = lambda: log.error("%s: version %d stays (renamed in piece by piece)", model_dir, version)  # noqa: E731
        fsync_dir(model_dir.parent)
    except OSError as error:
        raise RepositoryError(f"{model_dir}: cannot publish ({error.strerror or error}); nothing changed") from error
    return undo


def _commit_by_renames(staged: Path, model_dir: Path, version: int, warmup_names: list[str]) -> None:
    """Fallback without RENAME_EXCHANGE: each rename atomic, config last."""
    if warmup_names:
        (model_dir / WARMUP_FOLDER).mkdir(exist_ok=True)
        for item in warmup_names:
            os.replace(staged / WARMUP_FOLDER / item, model_dir / WARMUP_FOLDER / item)
    os.rename(staged / str(version), model_dir / str(version))
    if (staged / LABEL_FILENAME).is_file():
        os.replace(staged / LABEL_FILENAME, model_dir / LABEL_FILENAME)
    os.replace(staged / README_NAME, model_dir / README_NAME)
    os.replace(staged / CONFIG_NAME, model_dir / CONFIG_NAME)


__all__ = [
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "PublishResult",
    "publish",
    "publish_model",
    "publish_python_twin",
    "read_manifest",
    "staging_root",
    "version_folders",
]
