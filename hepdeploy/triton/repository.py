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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepdeploy import __version__
from hepdeploy.artifacts import Sidecar, read_artifact, read_engine_sidecar
from hepdeploy.errors import BadInputError, ModelLoadError, RepositoryError
from hepdeploy.fsutil import (
    atomic_write_bytes,
    atomic_write_text,
    check_input_file,
    check_output_dir,
    check_safe_name,
    fsync_dir,
    missing,
    sha256_file,
)
from hepdeploy.plan_compat import PlanMetadata, check_capability_key, plan_metadata_of
from hepdeploy.spec import ModelSpec, TensorSpec, TritonSpec
from hepdeploy.triton.check import CheckEnvironment, CheckReport, check_model
from hepdeploy.triton.config import (
    DEFAULT_MODEL_FILENAMES,
    LABEL_FILENAME,
    WARMUP_FOLDER,
    Kind,
    build_model_config,
    config_to_pbtxt,
    label_file_text,
    perf_analyzer_command,
    read_model_config,
    set_checksum_agent,
    warmup_samples,
)
from hepdeploy.triton.layout import (
    CONFIG_NAME,
    INNER_STAGING,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    README_NAME,
    read_manifest,
    version_folders,
)
from hepdeploy.triton.python_backend import (
    MODEL_PY_FILENAME,
    model_py_text,
    python_backend_config,
    twin_name,
)

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


def platform_for_file(path: Path) -> str:
    """Guess the Triton platform from a model file."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "tensorflow_savedmodel"
        raise ModelLoadError(f"{path}: a folder but not a TensorFlow SavedModel (no saved_model.pb)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime_onnx"
    if suffix in (".plan", ".engine", ".trt"):
        return "tensorrt_plan"
    if suffix in (".pt", ".pts", ".torchscript"):
        return "pytorch_libtorch"
    raise ModelLoadError(f"{path}: cannot tell the Triton platform from the suffix {suffix!r}; pass --platform")


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


def _plans_metadata(model_file: Path, filename: str, sidecar: Sidecar | None, cc_model_files: Mapping[str, Path],
                    cc_names: Mapping[str, str]) -> dict[str, PlanMetadata]:
    """Every published plan's recorded metadata (file name in the version -> metadata).

    A cc_model_filenames key is checked against the compute capability its plan was built
    on, so a plan for 9.0 can never be listed under 8.0 (Triton would load it there and fail).
    """
    plans: dict[str, PlanMetadata] = {}
    own = plan_metadata_of(sidecar) if sidecar is not None else None
    if own is not None:
        plans[filename] = own
    for capability, path in cc_model_files.items():
        check_capability_key(capability)
        metadata = plan_metadata_of(read_engine_sidecar(Path(path)))
        if metadata is None:
            continue
        if metadata.compute_capability != capability:
            raise BadInputError(f"{path}: built on compute capability {metadata.compute_capability} "
                                f"({metadata.gpu_name or 'GPU'}), cannot be published for {capability}")
        plans[cc_names[capability]] = metadata
    return plans


def _tensors_for(model_file: Path, platform: str, spec: ModelSpec | None) -> tuple[list[TensorSpec], list[TensorSpec], Any]:
    """Tensor specs for the config and the sidecar (if any) of the model file."""
    if model_file.suffix.lower() == ".onnx" and model_file.is_file():
        artifact = read_artifact(model_file)
        inputs, outputs = list(artifact.sidecar.inputs), list(artifact.sidecar.outputs)
        problems = spec.tensor_problems(inputs, outputs, str(model_file)) if spec is not None else []
        if problems:  # the config is written from the model's tensors: a spec that says otherwise is wrong
            raise BadInputError(problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        return inputs, outputs, artifact.sidecar
    sidecar = read_engine_sidecar(model_file)
    if sidecar is not None:
        return list(sidecar.inputs), list(sidecar.outputs), sidecar
    if spec is None:
        raise BadInputError(f"{model_file}: a {platform} model needs --spec for its input and output tensors")
    return list(spec.inputs), list(spec.outputs), None


def publish_model(
    repo: Path,
    model_file: Path,
    *,
    name: str,
    spec: ModelSpec | None = None,
    triton: TritonSpec | None = None,
    kind: Kind = "gpu",
    verdict: Mapping[str, Any] | None = None,
    warmup_inputs: Mapping[str, np.ndarray] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    platform: str | None = None,
    config: model_config_pb2.ModelConfig | None = None,
    model_filename: str | None = None,
    cc_model_files: Mapping[str, Path] | None = None,
    verify: bool = True,
    environment: CheckEnvironment | None = None,
    dry_run: bool = False,
) -> PublishResult | None:
    """Publish ``model_file`` as the next version of model ``name`` in ``repo``.

    ``dry_run``: every check that needs no staging (names, tensors against the spec, the config, the
    warm-up data), then return None with nothing written: a set of models is checked this way in full
    before any of them is published.

    ``triton`` defaults to ``spec.triton``. ``config`` replaces the generated config (its
    name must be ``name``), e.g. for a Python-backend twin that also ships ``model.py`` via
    ``extra_files`` (file name -> bytes, placed in the version folder). ``cc_model_files``
    maps compute capabilities ("8.0") to TensorRT plans built for them. With ``verify``
    the staged model folder goes through ``check_model`` (including an ONNX Runtime run)
    before it is made visible; any problem aborts the publish with the repository untouched
    (``environment``: the target server and how plans load, as for ``triton check``).
    """
    check_safe_name(name, "Triton model name")
    repo = check_output_dir(Path(repo))
    model_file = Path(model_file)
    if not model_file.exists():
        raise BadInputError(missing(model_file, "model file"))
    if not model_file.is_dir():
        check_input_file(model_file, "model file")
    triton = triton or (spec.triton if spec is not None else TritonSpec())
    platform = platform or (config.platform or config.backend if config is not None else None)
    platform = platform or triton.platform or platform_for_file(model_file)
    if platform == "python":
        filename = model_filename or DEFAULT_MODEL_FILENAMES[platform_for_file(model_file)]
    else:
        filename = model_filename or DEFAULT_MODEL_FILENAMES[platform]
    check_safe_name(filename, "model file name")
    for extra in extra_files or {}:
        check_safe_name(extra, "extra file name")
        if extra in (filename, MANIFEST_NAME):
            raise BadInputError(f"extra file {extra!r} would overwrite the model file or the manifest")

    inputs, outputs, sidecar = _tensors_for(model_file, platform, spec)
    cc_names = {check_capability_key(cap): f"model_sm{cap.replace('.', '')}.plan" for cap in (cc_model_files or {})}
    plans = _plans_metadata(model_file, filename, sidecar, cc_model_files or {}, cc_names) \
        if platform == "tensorrt_plan" else {}
    if config is None:
        config = build_model_config(
            (inputs, outputs),
            triton,
            name=name,
            platform=platform,
            kind=kind,
            warmup_inputs=warmup_inputs,
            default_model_filename=filename if platform != "python" else None,
            cc_model_filenames=cc_names or None,
            plan=plans.get(filename),
        )
    elif config.name != name:
        raise BadInputError(f"config name {config.name!r} differs from the model name {name!r}")
    batched = config.max_batch_size > 0
    samples = warmup_samples(inputs, warmup_inputs, batched) if (config.model_warmup and warmup_inputs) else []
    if dry_run:
        return None

    model_dir = repo / name
    if model_dir.exists() and not model_dir.is_dir():
        raise RepositoryError(f"{model_dir}: exists and is not a model folder")
    if model_dir.is_dir() and (model_dir / CONFIG_NAME).is_file():
        # A broken existing config is reported, and left exactly as it is.
        try:
            read_model_config(model_dir / CONFIG_NAME)
        except RepositoryError as error:
            raise RepositoryError(f"{error}; not publishing into {model_dir} (nothing changed)") from error
    # Problems the model folder already has do not block a new version; new ones do.
    known = {(p.path.relative_to(model_dir), p.message) for p in check_model(model_dir, run_models=False)} \
        if model_dir.is_dir() else set()

    made_repo = not repo.exists()
    repo.mkdir(exist_ok=True)
    try:
        with _staging(repo) as work:
            existing = version_folders(model_dir)
            version = (existing[-1] + 1) if existing else 1
            staged = work / name
            if model_dir.is_dir():
                _link_tree(model_dir, staged)
            else:
                staged.mkdir()
            version_dir = staged / str(version)
            version_dir.mkdir()
            if model_file.is_dir():
                _copy_tree(model_file, version_dir / filename)
            else:
                _copy_file(model_file, version_dir / filename)
            for capability, path in (cc_model_files or {}).items():
                _copy_file(check_input_file(Path(path), "TensorRT plan"), version_dir / cc_names[capability])
            for extra, data in (extra_files or {}).items():
                _write(version_dir / extra, data)
            files = _version_files(version_dir)
            manifest = {
                "schema": MANIFEST_SCHEMA,
                "model": name,
                "version": version,
                "platform": platform,
                "kind": kind,
                "files": files,
                "hepdeploy_version": __version__,
                "published_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "source": {
                    "path": str(model_file.resolve()),
                    "variant": sidecar.variant.model_dump() if sidecar is not None else None,
                    "sha256": sidecar.sha256 if sidecar is not None else None,
                    "steps": [step.name for step in sidecar.steps] if sidecar is not None else [],
                },
                "verdict": dict(verdict) if verdict is not None else None,
            }
            if plans:
                manifest["plans"] = {n: m.model_dump(mode="json") for n, m in sorted(plans.items())}
            _write(version_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, default=str) + "\n")
            if samples:
                (staged / WARMUP_FOLDER).mkdir(exist_ok=True)
                for sample in samples:
                    _write(staged / WARMUP_FOLDER / sample.file_name, sample.data)
            if any(output.label_filename for output in config.output):
                _write(staged / LABEL_FILENAME, label_file_text(triton.labels))
            if triton.checksum_agent and config.backend != "python":
                set_checksum_agent(config, staged)
            config_text = config_to_pbtxt(config)
            old_config = model_dir / CONFIG_NAME
            old_serving = _serving_text(read_model_config(old_config)) if old_config.is_file() else None
            _write(staged / CONFIG_NAME, config_text)
            _write(staged / README_NAME, _readme_text(config, [*existing, version], spec))

            if verify:
                problems = [
                    # the report's repository is the real one: an ensemble's steps are looked up there
                    p for p in check_model(staged, run_models=True, environment=environment, report=CheckReport(repo))
                    if (p.path.relative_to(staged), p.message) not in known
                ]
                if problems:
                    raise RepositoryError(
                        f"model {name!r} failed its check before publishing (nothing changed): "
                        + "; ".join(p.message for p in problems[:3])
                    )
            _commit(staged, model_dir, version, [s.file_name for s in samples])
    except OSError as error:  # disk full, permission denied ... while staging
        what = error.strerror or type(error).__name__
        raise RepositoryError(f"{model_dir}: cannot stage the new version ({what}); nothing changed") from error
    finally:
        if made_repo and not any(repo.iterdir()):  # "nothing changed" includes no new empty repository
            with contextlib.suppress(OSError):
                repo.rmdir()
    return PublishResult(
        name=name,
        version=version,
        model_dir=model_dir,
        version_dir=model_dir / str(version),
        config_changed=old_serving != _serving_text(config),
        files=files,
    )


def _serving_text(config: model_config_pb2.ModelConfig) -> str:
    """The config without its checksum agent, which changes with every version: did *serving* change?"""
    plain = type(config)()
    plain.CopyFrom(config)
    plain.ClearField("model_repository_agents")
    return config_to_pbtxt(plain)


def _commit(staged: Path, model_dir: Path, version: int, warmup_names: list[str]) -> None:
    """Make the staged model folder visible in one rename (see module docstring)."""
    try:
        if not model_dir.exists():
            os.rename(staged, model_dir)
        elif not _exchange(staged, model_dir):
            _commit_by_renames(staged, model_dir, version, warmup_names)
        fsync_dir(model_dir.parent)
    except OSError as error:
        raise RepositoryError(f"{model_dir}: cannot publish ({error.strerror or error}); nothing changed") from error


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


def publish_python_twin(
    repo: Path | str,
    onnx_path: Path | str,
    *,
    name: str | None = None,
    spec: ModelSpec | None = None,
    triton: TritonSpec | None = None,
    onnx_config: model_config_pb2.ModelConfig | None = None,
    warmup_inputs: Mapping[str, Any] | None = None,
    verdict: Mapping[str, Any] | None = None,
    verify: bool = True,
    dry_run: bool = False,
) -> PublishResult | None:
    """Publish the Python-backend twin of ``onnx_path`` as the next version of ``name`` in ``repo``
    (``dry_run``: as :func:`publish_model`'s).

    ``name`` defaults to ``<model name>_py``. The config is the ONNX model's config (``onnx_config``,
    else built from the artifact's sidecar and ``triton``/``spec.triton`` exactly as ``triton add``
    builds it) turned into a Python-backend config; publishing goes through the triton stage's
    atomic, versioned :func:`publish_model`.
    """
    artifact = read_artifact(Path(onnx_path))
    settings = triton or (spec.triton if spec is not None else None) or TritonSpec()
    base = (settings.model_name if settings.model_name else None) or (spec.name if spec is not None else None) \
        or artifact.sidecar.model_name
    name = name or twin_name(base)
    if onnx_config is None:
        onnx_config = build_model_config(artifact, settings, name=base, platform="onnxruntime_onnx", kind="cpu",
                                         warmup_inputs=warmup_inputs)
    config = python_backend_config(onnx_config, name)
    return publish_model(
        Path(repo), artifact.path, name=name, spec=spec, triton=settings, kind="cpu", verdict=verdict,
        warmup_inputs=warmup_inputs, extra_files={MODEL_PY_FILENAME: model_py_text().encode("utf-8")},
        platform="python", config=config, verify=verify, dry_run=dry_run,
    )


def publish_twins(
    repo: Path,
    gpu_model: Path,
    cpu_model: Path | None,
    *,
    name: str,
    spec: ModelSpec | None,
    triton: TritonSpec | None = None,
    verdicts: Mapping[str, Mapping[str, Any] | None] | None = None,
    warmup_inputs: Mapping[str, np.ndarray] | None = None,
    platform: str | None = None,
) -> list[PublishResult]:
    """``<name>`` for GPU servers and, with ``cpu_model``, ``<name>_cpu`` for CPU fallback servers."""
    verdicts = verdicts or {}
    results = [
        publish_model(
            repo, gpu_model, name=name, spec=spec, triton=triton, kind="gpu",
            verdict=verdicts.get("gpu"), warmup_inputs=warmup_inputs, platform=platform,
        )
    ]
    if cpu_model is not None:
        cpu_triton = (triton or (spec.triton if spec else TritonSpec())).model_copy(update={"platform": None})
        results.append(
            publish_model(
                repo, cpu_model, name=f"{name}_cpu", spec=spec, triton=cpu_triton, kind="cpu",
                verdict=verdicts.get("cpu"), warmup_inputs=warmup_inputs,
            )
        )
    return results


def publish_spec(
    repo: Path,
    spec: ModelSpec,
    variants: Mapping[str, Path],
    *,
    verdicts: Mapping[str, Mapping[str, Any] | None] | None = None,
    warmup_inputs: Mapping[str, np.ndarray] | None = None,
    fallback_variant: str = "fp32",
) -> list[PublishResult]:
    """Everything one spec publishes, from the variant files a build made (variant name -> file).

    ``<name>`` (``triton.model_name`` or the spec's name) serves ``triton.variant`` on GPUs (a
    ``tensorrt`` variant is a .plan; when the wanted variant was not built, e.g. no GPU for the
    plan, ``fallback_variant`` is served and a warning logged); with ``triton.cpu_twin``,
    ``<name>_cpu`` serves the twin's variant on CPUs; with ``triton.python_backend``, the
    serve stage's ``<name>_py`` twin runs the GPU model's ONNX file in Triton's Python backend.
    Each version's manifest records the verdict of the variant it serves.
    """
    triton = spec.triton
    name = triton.model_name or spec.name
    verdicts = verdicts or {}
    wanted = triton.variant
    if wanted not in variants:
        if fallback_variant not in variants:
            tried = repr(wanted) if wanted == fallback_variant else f"{wanted!r} nor {fallback_variant!r}"
            raise BadInputError(f"{name}: no variant to serve: {tried} was not built or did not pass validation")
        log.warning("%s: variant %s was not built; serving %s instead", name, wanted, fallback_variant)
        wanted = fallback_variant
    gpu_file = Path(variants[wanted])
    results = [
        publish_model(repo, gpu_file, name=name, spec=spec, triton=triton, kind="gpu",
                      verdict=verdicts.get(wanted), warmup_inputs=warmup_inputs)
    ]
    twin = triton.cpu_twin
    if twin is not None:
        if twin.variant in variants and Path(variants[twin.variant]).suffix == ".onnx":
            results.append(
                publish_model(repo, Path(variants[twin.variant]), name=f"{name}_cpu", spec=spec,
                              triton=triton.model_copy(update={"platform": None}), kind="cpu",
                              verdict=verdicts.get(twin.variant), warmup_inputs=warmup_inputs)
            )
        else:
            log.warning("%s: CPU twin variant %s was not built; no %s_cpu published", name, twin.variant, name)
    if triton.python_backend:
        onnx_file = gpu_file if gpu_file.suffix == ".onnx" else variants.get(fallback_variant)
        if onnx_file is None:
            log.warning("%s: no ONNX variant for the Python-backend twin; not published", name)
        else:
            results.append(publish_python_twin(repo, Path(onnx_file), spec=spec, triton=triton,
                                               warmup_inputs=warmup_inputs, verdict=verdicts.get(wanted)))
    return results


__all__ = [
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "PublishResult",
    "platform_for_file",
    "publish_model",
    "publish_python_twin",
    "publish_spec",
    "publish_twins",
    "read_manifest",
    "staging_root",
    "version_folders",
]
