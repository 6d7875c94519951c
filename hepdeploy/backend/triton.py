"""A runner over a model served by a live Triton server (gRPC through tritonclient, or HTTP).

Same interface as every runner (:class:`hepdeploy.backend.base.Runner`): ``run(inputs) -> outputs``.
Before the first request it reads the server's model metadata and config and checks them against
the artifact's tensor specs (names, dtypes, fixed dims, batch axis), so a wrong model behind the
right name is refused before any number is compared. A reference set is split into requests no
larger than the model's ``max_batch_size``. Every call has a timeout: a dead or hung server gives a
clear :class:`~hepdeploy.errors.ServerError` within it, never a hang.

The server and how to reach it travel as one :class:`ServerTarget` (address, protocol, timeout, shared
memory, compression), the bundle the CLI's server options build and validation, perf and the serve
check take.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hepdeploy.backend.base import Runner
from hepdeploy.backend.triton_shm import SharedMemoryMode, SharedMemoryRegions, layout, shared_memory_wanted
from hepdeploy.errors import (
    BadInputError,
    DataError,
    DependencyMissingError,
    DisagreementError,
    ServerError,
)
from hepdeploy.fsutil import check_safe_name
from hepdeploy.spec import TensorSpec

log = logging.getLogger(__name__)

Protocol = Literal["grpc", "http"]
PROTOCOLS: tuple[str, ...] = ("grpc", "http")
Compression = Literal["gzip", "deflate"]

TRITON_TO_NUMPY = {
    "FP32": "float32", "FP16": "float16", "FP64": "float64", "BF16": "bfloat16", "INT8": "int8",
    "UINT8": "uint8", "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "UINT32": "uint32",
    "INT64": "int64", "UINT64": "uint64", "BOOL": "bool",
}
NUMPY_TO_TRITON = {v: k for k, v in TRITON_TO_NUMPY.items()}


class ServedModelMismatchError(DisagreementError):
    """The server's model does not have the artifact's tensors (exit 1)."""


def parse_model_ref(text: str) -> tuple[str, str]:
    """``NAME[:VERSION]`` -> (name, version or '')."""
    name, _, version = text.partition(":")
    check_safe_name(name, "Triton model name")
    if version and not version.isdigit():
        raise BadInputError(f"model {text!r}: the version after ':' must be a number")
    return name, version


def parse_server_url(text: str) -> str:
    """``HOST:PORT`` (an ``http://``/``grpc://`` prefix is dropped)."""
    for prefix in ("grpc://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    host, _, port = text.rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"server {text!r}: expected HOST:PORT such as 127.0.0.1:8001")
    return f"{host}:{port}"


def triton_error_line(error: BaseException) -> str:
    """The first line of a tritonclient/gRPC error's message."""
    text = getattr(error, "message", None)
    text = text() if callable(text) else text
    text = str(text or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class ServerTarget:
    """A live Triton server and how every call to it is made; checked when made (bad input otherwise).

    ``url``: ``HOST:PORT`` (a ``grpc://``/``http://`` prefix is dropped); ``protocol``: gRPC or HTTP;
    ``timeout_s``: bounds every network call; ``shared_memory``: tensors go through Triton's system shared
    memory (auto: when ``url`` is a loopback address; ``on`` refuses a remote one; see
    :mod:`hepdeploy.backend.triton_shm`); ``compression``: gRPC request/response compression for a remote
    server (``gzip`` or ``deflate``).
    """

    url: str
    protocol: Protocol = "grpc"
    timeout_s: float = 30.0
    shared_memory: SharedMemoryMode = "auto"
    compression: Compression | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", parse_server_url(self.url))
        if self.protocol not in PROTOCOLS:
            raise BadInputError(f"protocol {self.protocol!r}: use grpc or http")
        if not self.timeout_s > 0:
            raise BadInputError(f"timeout {self.timeout_s!r} s: must be > 0")
        object.__setattr__(self, "timeout_s", float(self.timeout_s))
        object.__setattr__(self, "compression", check_compression(self.compression, self.protocol))
        shared_memory_wanted(self.shared_memory, self.url)  # an unknown mode, or `on` for a remote server

    @property
    def uses_shared_memory(self) -> bool:
        return shared_memory_wanted(self.shared_memory, self.url)

    @property
    def transport(self) -> str:
        """``grpc``, ``grpc+shm``, ``grpc+gzip`` ...: how the tensors travel."""
        return self.protocol + ("+shm" if self.uses_shared_memory else "") + (
            f"+{self.compression}" if self.compression else "")


class TritonRunner(Runner):
    """Runs inputs through ``model`` on the Triton server ``target`` (its address, protocol, per-call timeout,
    shared memory and compression: :class:`ServerTarget`).

    ``expected``: the artifact's (inputs, outputs) tensor specs; checked against the served model
    on first use (:meth:`check_metadata`). ``max_request_batch`` caps request size below the
    model's ``max_batch_size``.
    """

    def __init__(
        self,
        target: ServerTarget,
        model: str,
        version: str = "",
        *,
        expected: tuple[Sequence[TensorSpec], Sequence[TensorSpec]] | None = None,
        max_request_batch: int | None = None,
        name: str | None = None,
    ) -> None:
        self.target = target
        self.model, parsed_version = parse_model_ref(model) if ":" in model else (model, "")
        self.version = str(version or parsed_version)
        self.expected = expected
        self.max_request_batch = max_request_batch
        self.uses_shared_memory = target.uses_shared_memory
        self._regions: SharedMemoryRegions | None = None
        super().__init__(name or f"triton:{self.protocol}://{self.url}/{self.model}" + (
            f":{self.version}" if self.version else ""))
        self._client = self._connect()
        self._checked = False
        self.max_batch_size = 0
        self.served_inputs: list[tuple[str, str, list[int]]] = []
        self.served_outputs: list[tuple[str, str, list[int]]] = []
        self.requests_sent = 0

    @property
    def url(self) -> str:
        return self.target.url

    @property
    def protocol(self) -> Protocol:
        return self.target.protocol

    @property
    def timeout_s(self) -> float:
        return self.target.timeout_s

    @property
    def compression(self) -> Compression | None:
        return self.target.compression

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc as client_module

            return client_module.InferenceServerClient(self.url)
        try:
            import tritonclient.http as client_module
        except (ImportError, RuntimeError) as error:
            raise DependencyMissingError(
                "the HTTP protocol needs tritonclient's http support: pip install 'tritonclient[http]' "
                "(or use the default gRPC protocol)") from error
        return client_module.InferenceServerClient(
            self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)

    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """One client call with the timeout; any failure becomes one clear ServerError line."""
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        except Exception as error:  # tritonclient raises InferenceServerException, grpc/gevent errors
            elapsed = time.monotonic() - started
            line = triton_error_line(error)
            if "deadline" in line.lower() or "timed out" in line.lower() or elapsed >= self.timeout_s * 0.95:
                raise ServerError(f"{self.name}: {what}: no answer within {self.timeout_s:g} s ({line})") from error
            lowered = line.lower()
            if any(k in lowered for k in ("unavailable", "connect", "connection", "socket closed", "broken pipe",
                                          "reset by peer", "failed to connect")):
                raise ServerError(f"{self.name}: {what}: server not reachable ({line})") from error
            raise ServerError(f"{self.name}: {what}: {line}") from error

    def _close(self) -> None:
        if self._regions is not None:
            self._regions.close()  # unregistered while the connection is still open
            self._regions = None
        closer = getattr(self._client, "close", None)
        if closer:
            try:
                closer()
            except Exception:  # closing a dead connection may raise; nothing to do about it
                log.debug("closing the client failed", exc_info=True)

    def __enter__(self) -> TritonRunner:
        return self

    # -- metadata -----------------------------------------------------------------------------
    def model_config(self) -> dict[str, Any]:
        if self.protocol == "grpc":
            answer = self._call("model config", self._client.get_model_config, self.model, self.version, as_json=True)
            return dict(answer.get("config", answer))
        return dict(self._call("model config", self._client.get_model_config, self.model, self.version))

    def model_metadata(self) -> dict[str, Any]:
        if self.protocol == "grpc":
            return dict(self._call("model metadata", self._client.get_model_metadata, self.model, self.version,
                                   as_json=True))
        return dict(self._call("model metadata", self._client.get_model_metadata, self.model, self.version))

    def check_metadata(self) -> None:
        """Read the served model's metadata and config; raise ServedModelMismatchError if they differ from the specs."""
        ready = self._call("model ready", self._client.is_model_ready, self.model, self.version)
        if not ready:
            raise ServerError(f"{self.name}: the server has no ready model {self.model!r}"
                              + (f" version {self.version}" if self.version else ""))
        metadata = self.model_metadata()
        config = self.model_config()
        self.max_batch_size = int(config.get("max_batch_size", 0) or 0)
        served_inputs = [(t["name"], TRITON_TO_NUMPY.get(t["datatype"], t["datatype"]), [int(d) for d in t["shape"]])
                         for t in metadata.get("inputs", [])]
        served_outputs = [(t["name"], TRITON_TO_NUMPY.get(t["datatype"], t["datatype"]), [int(d) for d in t["shape"]])
                          for t in metadata.get("outputs", [])]
        self.served_inputs = served_inputs
        self.served_outputs = served_outputs
        self.output_names = [name for name, _, _ in served_outputs]
        if self.expected is not None:
            problems = _compare_specs("input", served_inputs, self.expected[0], self.max_batch_size)
            problems += _compare_specs("output", served_outputs, self.expected[1], self.max_batch_size)
            if problems:
                raise ServedModelMismatchError(f"{self.name}: the served model differs from the artifact: "
                                               + "; ".join(problems))
        self._checked = True

    @property
    def input_names(self) -> list[str]:
        """The served model's input names (reading them runs the metadata check)."""
        if not self._checked:
            self.check_metadata()
        return [name for name, _, _ in self.served_inputs]

    @property
    def providers_used(self) -> list[str]:
        return [f"triton-{self.protocol}{'+shm' if self.uses_shared_memory else ''}:{self.url}"]

    @property
    def shared_memory_regions(self) -> SharedMemoryRegions | None:
        """The client's registered regions (None before the first request, or without shared memory)."""
        return self._regions

    # -- inference ----------------------------------------------------------------------------
    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {n: _as_served_dtype(n, np.asarray(feed[n]), dtype) for n, dtype, _ in self.served_inputs}
        if self.max_batch_size <= 0:
            return self._infer(arrays)
        sizes = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise DataError(f"{self.name}: batched inputs need one common, non-zero first dimension, got "
                            f"{ {n: list(a.shape) for n, a in arrays.items()} }")
        total = sizes.pop()
        step = min(self.max_batch_size, self.max_request_batch or self.max_batch_size)
        if total <= step:
            return self._infer(arrays)
        pieces = [self._infer({n: a[start:start + step] for n, a in arrays.items()})
                  for start in range(0, total, step)]
        return {name: np.concatenate([p[name] for p in pieces], axis=0) for name in pieces[0]}

    def make_request_inputs(self, arrays: dict[str, np.ndarray], with_data: bool = True) -> list[Any]:
        """The request's InferInputs; ``with_data=False``: shapes only (the data goes by shared memory)."""
        module = self._module()
        tensors = []
        for name, dtype, _ in self.served_inputs:
            array = np.ascontiguousarray(arrays[name])
            tensor = module.InferInput(name, list(array.shape), NUMPY_TO_TRITON[dtype])
            if with_data:
                options = {"binary_data": True} if self.protocol == "http" else {}
                tensor.set_data_from_numpy(array, **options)
            tensors.append(tensor)
        return tensors

    def _infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self._module()
        inputs = self.make_request_inputs(arrays, with_data=not self.uses_shared_memory)
        outputs = [module.InferRequestedOutput(n) for n in self.output_names]
        in_memory: dict[str, tuple[str, int]] = {}  # output name -> (dtype, offset) in the output region
        if self.uses_shared_memory:
            in_memory = self._through_shared_memory(arrays, inputs, outputs)
        options = {"compression_algorithm": self.compression} if self.compression else {}
        result = self._call("inference", self._client.infer, self.model, inputs,
                            model_version=self.version, outputs=outputs, **options)
        self.requests_sent += 1
        values = {}
        for name in self.output_names:
            if name in in_memory:
                dtype, offset = in_memory[name]
                value = self._regions.regions["output"].read(dtype, _output_shape(result, name), offset)  # type: ignore[union-attr]
            else:
                value = result.as_numpy(name)
            if value is None:
                raise ServerError(f"{self.name}: the answer has no output {name!r}")
            values[name] = value
        return values

    def _through_shared_memory(self, arrays: dict[str, np.ndarray], inputs: list[Any],
                               outputs: list[Any]) -> dict[str, tuple[str, int]]:
        """Put the request's tensors into the client's regions; the outputs that come back through them.

        Inputs always do; the outputs do when their size is known before the answer (every dim fixed
        but the batch), the others come back in the answer itself."""
        if self._regions is None:
            self._regions = SharedMemoryRegions(self._client, self.timeout_s, grpc=self.protocol == "grpc")
        ordered = [np.ascontiguousarray(arrays[name]) for name, _, _ in self.served_inputs]
        offsets, total = layout([a.nbytes for a in ordered])
        region = self._regions.region("input", total)
        region.write(ordered, offsets)
        for tensor, array, offset in zip(inputs, ordered, offsets):
            tensor.set_shared_memory(region.name, array.nbytes, offset)
        rows = next(iter(ordered)).shape[0] if ordered and ordered[0].ndim and self.max_batch_size > 0 else None
        sizes = {name: output_nbytes(dtype, shape, rows) for name, dtype, shape in self.served_outputs}
        known = [(name, dtype) for name, dtype, _ in self.served_outputs if sizes[name] is not None]
        if not known:
            return {}
        offsets, total = layout([sizes[name] for name, _ in known])  # type: ignore[misc]
        region = self._regions.region("output", total)
        placed = {}
        for (name, dtype), offset in zip(known, offsets):
            outputs[self.output_names.index(name)].set_shared_memory(region.name, sizes[name], offset)
            placed[name] = (dtype, offset)
        return placed


def check_compression(compression: str | None, protocol: str) -> Compression | None:
    if compression in (None, "", "none"):
        return None
    if compression not in ("gzip", "deflate"):
        raise BadInputError(f"compression {compression!r}: use none, gzip or deflate")
    if protocol != "grpc":
        raise BadInputError("compression is a gRPC option (use the default gRPC protocol)")
    return compression  # type: ignore[return-value]


def output_nbytes(dtype: str, shape: list[int], rows: int | None) -> int | None:
    """Bytes of an output whose dims are all known once the batch is (``rows``), else None."""
    dims = list(shape)
    if rows is not None and dims and dims[0] == -1:
        dims[0] = rows
    if any(d < 0 for d in dims) or dtype not in NUMPY_TO_TRITON or dtype == "bool":
        return None
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize


def _output_shape(result: Any, name: str) -> list[int]:
    tensor = result.get_output(name)
    if tensor is None:
        raise ServerError(f"the answer has no output {name!r}")
    return [int(d) for d in (tensor["shape"] if isinstance(tensor, dict) else tensor.shape)]


def _as_served_dtype(name: str, array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype not in NUMPY_TO_TRITON or dtype == "bfloat16":
        raise DataError(f"input {name!r}: the served data type {dtype} cannot be sent from numpy")
    wanted = np.dtype(dtype)
    if array.dtype == wanted:
        return array
    if array.dtype.kind != wanted.kind and not (array.dtype.kind in "iu" and wanted.kind in "iu"):
        raise DataError(f"input {name!r}: data of dtype {array.dtype} but the served model takes {dtype}")
    return array.astype(wanted)


def _compare_specs(kind: str, served: list[tuple[str, str, list[int]]], expected: Sequence[TensorSpec],
                   max_batch_size: int) -> list[str]:
    problems = []
    served_by_name = {n: (d, s) for n, d, s in served}
    expected_names = [t.name for t in expected]
    missing = [n for n in expected_names if n not in served_by_name]
    extra = [n for n in served_by_name if n not in expected_names]
    if missing:
        problems.append(f"{kind}(s) {', '.join(missing)} not served (server has {', '.join(served_by_name) or 'none'})")
    if extra and kind == "input":
        problems.append(f"served {kind}(s) {', '.join(extra)} not in the artifact")
    for spec in expected:
        if spec.name not in served_by_name:
            continue
        dtype, shape = served_by_name[spec.name]
        if dtype != spec.dtype:
            problems.append(f"{kind} {spec.name!r}: served dtype {dtype}, artifact {spec.dtype}")
        wanted = list(spec.shape)
        if len(shape) != len(wanted):
            problems.append(f"{kind} {spec.name!r}: served rank {len(shape)} {shape}, artifact {wanted}")
            continue
        if max_batch_size > 0 and not isinstance(wanted[0], str):
            problems.append(f"{kind} {spec.name!r}: served with a batch axis, the artifact's first dim is fixed "
                            f"({wanted[0]})")
        for axis, (got, want) in enumerate(zip(shape, wanted, strict=True)):
            if isinstance(want, int) and got not in (want, -1):
                problems.append(f"{kind} {spec.name!r}: axis {axis} served as {got}, artifact has {want}")
            elif isinstance(want, int) and got == -1 and not (axis == 0 and max_batch_size > 0):
                log.info("%s %r axis %d is dynamic on the server, fixed (%d) in the artifact", kind, spec.name, axis,
                         want)
    return problems
