"""Find, unpack, start and stop a local Triton Inference Server.

Three ways to a ``tritonserver`` binary, tried in this order:

1. one given explicitly (``--tritonserver PATH``);
2. one on ``PATH`` (a Triton container, a site install): a full build, loads every platform it ships;
3. the binary the ``nvidia-pytriton`` wheel bundles (Triton 2.51, Linux x86_64, glibc >= 2.35). It holds
   the **Python backend only**: it loads ``backend: "python"`` models (our Python-backend twins), and
   refuses ``onnxruntime_onnx``, ``tensorrt_plan``, ``pytorch_libtorch`` and ``tensorflow_savedmodel``
   models with the server's own message. PyTriton itself wants numpy < 2, so it is never pip-installed:
   the wheel is fetched with ``pip download`` at first use (or read from a local file) and unpacked into
   a cache folder (``$HEPDEPLOY_CACHE/tritonserver``, default ``~/.cache/hepdeploy/tritonserver``).

If none is found, :class:`DependencyMissingError` carries the container command lines a user would run.

:class:`TritonServer` is a context manager: it binds to 127.0.0.1 on free ports, waits for readiness,
loads the repository's models one by one (explicit model control, so each refusal comes back with the
server's own message), and stops the server by its own PID (SIGTERM, then SIGKILL after a grace time).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hepdeploy.errors import (
    BadInputError,
    DependencyMissingError,
    HepDeployError,
    ServerError,
)
from hepdeploy.fsutil import check_safe_name, sha256_file
from hepdeploy.lifetime import die_with_parent
from hepdeploy.platforms import USER_PLATFORMS, backend_of

log = logging.getLogger("hepdeploy.triton.server")

PYTRITON_VERSION = "0.7.0"
BUNDLED_TRITON_VERSION = "2.51.0"
# The one wheel we unpack; pinned by hash so a changed upload is refused rather than run.
PYTRITON_WHEEL = "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
PYTRITON_WHEEL_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
# The NGC image matching the bundled server's Triton version (24.10 = Triton 2.51).
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
BUNDLED_BACKENDS = frozenset({"python"})


class BundledServerUnavailable(DependencyMissingError):
    """The bundled server cannot be installed or run here; ``reason`` says why in one line."""

    def __init__(self, reason: str, repository: Path | str | None = None) -> None:
        self.reason = reason
        super().__init__(_no_server_message(repository, reason))


# --------------------------------------------------------------------------- finding a binary


@dataclass(frozen=True)
class ServerBinary:
    """A ``tritonserver`` executable and what it needs to run."""

    executable: Path
    origin: Literal["explicit", "path", "bundled"]
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    # Backends it can load; None for a full build whose backends we did not enumerate.
    backends: frozenset[str] | None = None
    version: str | None = None

    def can_load(self, platform_or_backend: str) -> bool:
        if self.backends is None:
            return True
        return backend_of(platform_or_backend) in self.backends

    def describe(self) -> str:
        what = {"explicit": "given", "path": "found on PATH", "bundled": "bundled with nvidia-pytriton"}[self.origin]
        text = f"tritonserver {self.version or ''} ({what}: {self.executable})".replace("  ", " ")
        if self.backends is not None:
            text += (f"; loads backend(s) {', '.join(sorted(self.backends))} only (platforms "
                     f"{', '.join(p for p in USER_PLATFORMS if not self.can_load(p))} are refused)")
        return text


def cache_root() -> Path:
    """Where hepdeploy caches downloads: ``$HEPDEPLOY_CACHE`` or ``~/.cache/hepdeploy``."""
    env = os.environ.get("HEPDEPLOY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hepdeploy"


def bundled_server_dir(cache: Path | None = None) -> Path:
    return (cache or cache_root() / "tritonserver") / f"pytriton-{PYTRITON_VERSION}"


def container_commands(repository: Path | str = "/path/to/model_repository", image: str = NGC_IMAGE) -> list[str]:
    """The command lines that serve ``repository`` from NVIDIA's Triton container."""
    repo = Path(repository).expanduser()
    serve = "tritonserver --model-repository=/models"
    return [
        f"docker run --rm --gpus=all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {repo}:/models {image} {serve}",
        f"podman run --rm --device nvidia.com/gpu=all -p 8000:8000 -p 8001:8001 -p 8002:8002 "
        f"-v {repo}:/models:Z {image} {serve}",
        f"apptainer exec --nv --bind {repo}:/models docker://{image} {serve}",
    ]


def _no_server_message(repository: Path | str | None, why: str) -> str:
    lines = "\n  ".join(container_commands(repository or "/path/to/model_repository"))
    return (f"no Triton server available ({why}). Put `tritonserver` on PATH, pass --tritonserver PATH, or run "
            f"NVIDIA's container (drop --gpus/--device/--nv on a machine without a GPU):\n  {lines}")


def bundled_platform_problem() -> str | None:
    """Why the bundled (PyTriton) server cannot run on this machine, or None when it can."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the bundled server is built for Linux x86_64 only, this is {sys.platform} {platform.machine()}"
    libc, version = platform.libc_ver()
    if libc == "glibc" and version:
        major, minor = (int(x) for x in version.split(".")[:2])
        if (major, minor) < (2, 35):
            return f"the bundled server needs glibc >= 2.35, this machine has {version}"
    if not _python_shared_library():
        return (f"the bundled server's Python backend needs a shared libpython{sysconfig.get_python_version()} "
                "(this Python was built without --enable-shared)")
    major, minor = sys.version_info[:2]
    if not (3, 8) <= (major, minor) <= (3, 13):
        return f"the bundled server has Python-backend stubs for Python 3.8-3.13, this is {major}.{minor}"
    return None


def _python_shared_library() -> Path | None:
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not ldlibrary.endswith(".so") and ".so." not in ldlibrary:
        return None
    candidate = Path(libdir) / ldlibrary
    return candidate if candidate.exists() else None


def install_bundled_server(cache: Path | None = None, wheel: Path | None = None, timeout_s: float = 600) -> Path:
    """Download (or take ``wheel``) and unpack the nvidia-pytriton wheel's server; return its folder.

    Idempotent and safe for several processes at once: a file lock serialises installers, the
    server is unpacked into a staging folder and renamed into place, so a killed install
    leaves nothing half-unpacked behind.
    """
    problem = bundled_platform_problem()
    if problem:
        raise BundledServerUnavailable(problem)
    target = bundled_server_dir(cache)
    if (target / "bin" / "tritonserver").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "bin" / "tritonserver").is_file():  # another process finished meanwhile
            return target
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=target.parent) as staging_text:
            staging = Path(staging_text)
            wheel_path = Path(wheel) if wheel else _download_wheel(staging / "download", timeout_s)
            digest = sha256_file(wheel_path)
            if digest != PYTRITON_WHEEL_SHA256:
                raise DependencyMissingError(
                    f"{wheel_path}: sha256 {digest} is not the nvidia-pytriton {PYTRITON_VERSION} wheel hepdeploy "
                    f"knows ({PYTRITON_WHEEL_SHA256})")
            unpacked = staging / "server"
            _unpack_server(wheel_path, unpacked)
            if target.exists():  # a broken earlier attempt: replace it
                shutil.rmtree(target)
            os.replace(unpacked, target)
    log.info("unpacked Triton %s (nvidia-pytriton %s) into %s", BUNDLED_TRITON_VERSION, PYTRITON_VERSION, target)
    return target


def _download_wheel(folder: Path, timeout_s: float) -> Path:
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", f"nvidia-pytriton=={PYTRITON_VERSION}", "-d", str(folder)]
    log.info("downloading nvidia-pytriton %s (about 55 MB) for its bundled tritonserver", PYTRITON_VERSION)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise BundledServerUnavailable(f"pip download timed out after {timeout_s:.0f} s") from error
    wheels = sorted(folder.glob("nvidia_pytriton-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise BundledServerUnavailable(f"pip download nvidia-pytriton failed: {last[0]}")
    return wheels[0]


def _unpack_server(wheel: Path, out: Path) -> None:
    """Extract only the server, its libraries, the Python backend and the stubs (not PyTriton's Python code)."""
    prefixes = {"pytriton/tritonserver/": "", "nvidia_pytriton.libs/": "lib/"}
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise BundledServerUnavailable(f"{wheel}: not a readable wheel") from error
    with archive:
        for info in archive.infolist():
            for prefix, dest in prefixes.items():
                if info.filename.startswith(prefix) and not info.is_dir():
                    relative = dest + info.filename[len(prefix):]
                    if ".." in Path(relative).parts:
                        continue
                    path = out / relative
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as source, open(path, "wb") as sink:
                        shutil.copyfileobj(source, sink)
                    mode = (info.external_attr >> 16) & 0o777
                    os.chmod(path, 0o755 if mode & 0o111 or path.parent.name == "bin" else 0o644)
    if not (out / "bin" / "tritonserver").is_file():
        raise BundledServerUnavailable(f"{wheel}: holds no pytriton/tritonserver/bin/tritonserver")


def _backend_directory(server_dir: Path) -> Path:
    """A backend folder whose ``python/`` holds the backend library and the stub for this Python."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    folder = server_dir / f"backends-py{version}"
    if (folder / "python" / "triton_python_backend_stub").is_file():
        return folder
    stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise BundledServerUnavailable(f"the bundled server has no Python-backend stub for Python {version}")
    with tempfile.TemporaryDirectory(prefix=".backends-", dir=server_dir) as staging_text:
        staging = Path(staging_text) / "b"
        shutil.copytree(server_dir / "backends", staging)
        shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
        os.chmod(staging / "python" / "triton_python_backend_stub", 0o755)
        with contextlib.suppress(OSError):  # another process won the race: use theirs
            os.replace(staging, folder)
    return folder


def bundled_server(cache: Path | None = None, install: bool = True, wheel: Path | None = None) -> ServerBinary:
    """The nvidia-pytriton server as a :class:`ServerBinary` (installing it first when allowed)."""
    problem = bundled_platform_problem()
    if problem:
        raise BundledServerUnavailable(problem)
    server_dir = bundled_server_dir(cache)
    if not (server_dir / "bin" / "tritonserver").is_file():
        if not install:
            raise BundledServerUnavailable("the bundled server is not installed; run `hepdeploy triton serve --install`")
        server_dir = install_bundled_server(cache, wheel)
    backends = _backend_directory(server_dir)
    libpython = _python_shared_library()
    library_path = [str(libpython.parent) if libpython else "", str(server_dir / "lib"),
                    os.environ.get("LD_LIBRARY_PATH", "")]
    # The Python-backend stub finds its interpreter's prefix through `python3` on PATH: putting this
    # environment's bin folder first makes the stub see this environment's site-packages (numpy,
    # onnxruntime), as PyTriton does. PYTHONPATH is not honoured by the stub.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {"LD_LIBRARY_PATH": os.pathsep.join(p for p in library_path if p), "PATH": path}
    return ServerBinary(
        executable=server_dir / "bin" / "tritonserver", origin="bundled", env=env,
        extra_args=(f"--backend-directory={backends}", f"--cache-directory={server_dir / 'caches'}",
                    # The stub's 30 s default start-up limit is too tight on a loaded 2-core machine.
                    "--backend-config=python,stub-timeout-seconds=120"),
        backends=BUNDLED_BACKENDS, version=BUNDLED_TRITON_VERSION,
    )


def find_tritonserver(explicit: Path | str | None = None, allow_bundled: bool = True, install: bool = True,
                      repository: Path | None = None, wheel: Path | None = None) -> ServerBinary:
    """An explicit binary, else ``tritonserver`` on PATH, else the bundled one, else a clear error."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise BadInputError(f"{path}: not an executable tritonserver")
        return ServerBinary(executable=path.resolve(), origin="explicit")
    on_path = shutil.which("tritonserver")
    if on_path:
        return ServerBinary(executable=Path(on_path), origin="path")
    if not allow_bundled:
        raise DependencyMissingError(_no_server_message(repository, "no tritonserver on PATH"))
    try:
        return bundled_server(install=install, wheel=wheel)
    except BundledServerUnavailable as error:
        raise BundledServerUnavailable(error.reason, repository) from error


# --------------------------------------------------------------------------- running a server


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago on ``host``."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ModelLoadResult:
    name: str
    loaded: bool
    message: str = ""


@dataclass(frozen=True)
class ServerAddress:
    """Where a started server listens; a port left None is picked free at start."""

    host: str = "127.0.0.1"
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None


class TritonServer:
    """A ``tritonserver`` process on one repository, started and stopped by this object.

    ``load``: ``"all"`` loads every model folder in the repository after start (one request per model,
    so a refused config returns the server's own message in :meth:`model_load_errors`); a list loads
    those; ``None`` loads none. The server always runs with explicit model control.
    """

    def __init__(
        self,
        repository: Path | str,
        binary: ServerBinary | None = None,
        address: ServerAddress | None = None,
        log_path: Path | None = None,
        load: Literal["all"] | Sequence[str] | None = "all",
        startup_timeout_s: float = 60.0,
        load_timeout_s: float = 120.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.repository = Path(repository).expanduser().resolve()
        if not self.repository.is_dir():
            raise BadInputError(f"{repository}: model repository folder not found")
        self.binary = binary
        address = address or ServerAddress()
        self.host = address.host
        self._ports = (address.http_port, address.grpc_port, address.metrics_port)
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._own_log_dir: Path | None = None
        self.log_path = Path(log_path) if log_path else None
        self.load = load
        self.startup_timeout_s = startup_timeout_s
        self.load_timeout_s = load_timeout_s
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._bytecode_before: set[Path] = set()
        self.load_results: dict[str, ModelLoadResult] = {}

    # -- addresses
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    # -- lifecycle
    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> TritonServer:
        if self.process is not None:
            raise ServerError("this TritonServer is already started")
        if self.binary is None:
            self.binary = find_tritonserver(repository=self.repository)
        for attempt in range(3):  # a free port can be taken between picking and binding: retry with new ones
            self._launch()
            try:
                self.wait_ready(self.startup_timeout_s)
                break
            except ServerError:
                text = self.log_tail(60)
                in_use = "address already in use" in text.lower() or "failed to start" in text.lower()
                self.stop()
                if attempt == 2 or not in_use:
                    raise
                log.info("port clash on start, retrying with other ports")
                self.process = None
        try:
            if self.load == "all":
                self.load_models(self.model_folders())
            elif self.load:
                self.load_models(list(self.load))
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        assert self.binary is not None
        wanted = [p for p in self._ports]
        picked = free_ports(3, self.host)
        self.http_port, self.grpc_port, self.metrics_port = (w or p for w, p in zip(wanted, picked, strict=True))
        if self.log_path is None:
            self._own_log_dir = Path(tempfile.mkdtemp(prefix="hepdeploy-triton-"))
            self.log_path = self._own_log_dir / "tritonserver.log"
        command = [
            str(self.binary.executable),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            "--strict-readiness=false",
            "--exit-on-error=false",
            "--exit-timeout-secs=5",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            *self.binary.extra_args,
            *self.extra_args,
        ]
        # No bytecode of a Python-backend model.py in the repository: it would be a stray file there.
        env = {**os.environ, **self.binary.env, "PYTHONDONTWRITEBYTECODE": "1"}
        self._bytecode_before = self._bytecode_folders()
        log.info("starting %s on %s (http %d, grpc %d, metrics %d), log %s", self.binary.executable.name,
                 self.host, self.http_port, self.grpc_port, self.metrics_port, self.log_path)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                # Own session: a terminal's Ctrl-C reaches us, and we stop the server in order.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the server answers /v2/health/ready; ServerError with the log's tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self.process.returncode if self.process else None
                raise ServerError(f"tritonserver exited (code {code}) before it was ready; log {self.log_path}:\n"
                                  f"{self.log_tail(15)}")
            status, _ = self._http("GET", "/v2/health/ready", timeout_s=1.0)
            if status == 200:
                return
            time.sleep(0.1)
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s; log {self.log_path}:\n{self.log_tail(15)}")

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Stop the server by its own PID: SIGTERM, then SIGKILL after ``grace_s``. Returns its exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver (pid %d) ignored SIGTERM for %.0f s; killing it", process.pid, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=grace_s)
        # The Python-backend stubs are the server's children in its own session; the server reaps them,
        # but a SIGKILLed server cannot: end whatever is left of its process group (its session id = pid).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self._remove_new_bytecode()
        return process.returncode

    def _bytecode_folders(self) -> set[Path]:
        with contextlib.suppress(OSError):
            return set(self.repository.glob("*/*/__pycache__"))
        return set()

    def _remove_new_bytecode(self) -> None:
        """The Python-backend stub imports model.py with bytecode writing on (it does not take our environment):
        the ``__pycache__`` folders it made in the repository are not part of any published model."""
        for folder in self._bytecode_folders() - self._bytecode_before:
            shutil.rmtree(folder, ignore_errors=True)

    # -- models
    def model_folders(self) -> list[str]:
        """Model folders in the repository (sub-folders with a safe name; hidden staging folders skipped)."""
        names = []
        for entry in sorted(self.repository.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                try:
                    names.append(check_safe_name(entry.name, "model folder"))
                except HepDeployError:
                    log.warning("%s: skipping a folder whose name Triton would not serve", entry)
        return names

    def load_model(self, name: str, timeout_s: float | None = None) -> ModelLoadResult:
        """Ask the server to load one model; the result carries the server's own message on refusal."""
        check_safe_name(name, "model name")
        status, body = self._http("POST", f"/v2/repository/models/{name}/load", b"{}",
                                  timeout_s=timeout_s or self.load_timeout_s)
        if status == 200:
            result = ModelLoadResult(name, True)
        else:
            message = _error_text(body).strip().rstrip(";").strip() if status else f"no answer from the server ({body})"
            if "failed to poll" in message:
                # The answer is generic; the server logged the real reason just before answering.
                message = _log_errors(self.log_tail(400)).get(name, message)
            result = ModelLoadResult(name, False, message)
        self.load_results[name] = result
        log.log(logging.INFO if result.loaded else logging.WARNING, "model %s: %s", name,
                "loaded" if result.loaded else f"not loaded: {result.message}")
        return result

    def load_models(self, names: Sequence[str]) -> dict[str, ModelLoadResult]:
        return {name: self.load_model(name) for name in names}

    def repository_index(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        status, body = self._http("POST", "/v2/repository/index", b"{}", timeout_s=timeout_s)
        if status != 200:
            raise ServerError(f"repository index failed: {_error_text(body) or body!r}")
        return json.loads(body)

    def ready_models(self) -> list[str]:
        return sorted({m["name"] for m in self.repository_index() if m.get("state") == "READY"})

    def model_load_errors(self) -> dict[str, str]:
        """Models that did not load, with the server's own message (load answers, index, then the log)."""
        errors = {n: r.message for n, r in self.load_results.items() if not r.loaded}
        if self.is_running():
            with contextlib.suppress(ServerError, ValueError):
                for entry in self.repository_index():
                    if entry.get("state") not in (None, "READY") and entry.get("reason") and entry["name"] not in errors:
                        if self.load == "all" or entry["name"] in self.load_results:
                            errors[entry["name"]] = entry["reason"]
        for name, message in _log_errors(self.log_tail(400)).items():
            errors.setdefault(name, message)
        return errors

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _http(self, method: str, path: str, body: bytes | None = None, timeout_s: float = 5.0) -> tuple[int, str]:
        """One HTTP call to the server; (0, reason) when it does not answer."""
        request = urllib.request.Request(f"http://{self.host}:{self.http_port}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            return 0, str(getattr(error, "reason", error))


def _error_text(body: str) -> str:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return str(json.loads(body).get("error", body))
    return body.strip()


def _log_errors(text: str) -> dict[str, str]:
    """Per-model errors the server wrote to its log ("Poll failed for model directory 'x': ...")."""
    import re

    found: dict[str, str] = {}
    patterns = [
        re.compile(r"Poll failed for model directory '([^']+)': (.*?)\"?$"),
        re.compile(r"failed to load '([^']+)' version \d+: (.*?)\"?$"),
    ]
    for line in text.splitlines():
        for pattern in patterns:
            match = pattern.search(line)
            if match:
                found.setdefault(match.group(1), match.group(2).strip())
    return found
