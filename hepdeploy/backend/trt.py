"""A serialized TensorRT engine (``.plan``) through the TensorRT 10/11 tensor-name API.

Memory and streams come from the CUDA runtime through ctypes (:mod:`hepdeploy.backend.cudart`),
so no CUDA build of torch is needed. The engine is deserialized with the wanted device
current, runs on its own non-blocking stream (the legacy default stream makes TensorRT
synchronise more and warn), and tensors TensorRT wants on the host (shape tensors, the
inputs whose *values* decide output shapes) are bound to host memory.

Every run stays inside the engine's optimisation profile: chunks are capped by the
profile's largest batch, and an input the profile cannot take (one event bigger than the
profile allows) is one line naming the bounds. Outputs whose shape depends on the data
(NonZero, NMS) get their memory through an ``IOutputAllocator``, as Polygraphy does.
Failures TensorRT reports by a return value are checked where they happen and carry
TensorRT's own error from its logger.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hepdeploy.backend.base import Runner
from hepdeploy.backend.cudart import CudaDevice, CudaRuntime, cuda_device
from hepdeploy.errors import (
    DataError,
    DependencyMissingError,
    HepDeployError,
    ModelLoadError,
    first_line,
)
from hepdeploy.fsutil import check_input_file
from hepdeploy.plan_compat import PlanMetadata, tensorrt_full_version, tensorrt_runtime_problem

log = logging.getLogger("hepdeploy.backend.trt")

Memory = Literal["host", "device"]
Shape = tuple[int, ...]


def tensorrt_unavailable(device: int = 0) -> str | None:
    """Why TensorRT cannot run here (not importable, no CUDA device), or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except Exception as error:  # ImportError, or OSError when libnvinfer is missing
        return f"tensorrt is not importable ({type(error).__name__}: {first_line(error)})"
    try:
        gpu = cuda_device(device)
    except DependencyMissingError as error:  # a device whose capability cannot be read
        return first_line(error)
    return "no CUDA device" if gpu is None else None


def recording_logger(trt: Any) -> Any:
    """A TensorRT logger that passes warnings to :mod:`logging` and keeps the errors, so that a failure
    TensorRT reports by a return value (None, False, -1) is said in TensorRT's own words: ``said()``."""

    class RecordingLogger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.error("tensorrt: %s", msg)
            elif int(severity) == int(trt.ILogger.Severity.WARNING):
                log.warning("tensorrt: %s", msg)

        def said(self) -> str:
            """TensorRT's last error, as the tail of a one-line message ("" when it said nothing)."""
            lines = self.errors[-1].strip().splitlines() if self.errors else []
            return f" (TensorRT: {lines[0]})" if lines else ""

    return RecordingLogger()


@dataclass
class PlanLoader:
    """Deserializes plans on this machine, or says why a plan cannot be loaded here.

    Why not is information, not a defect of the plan: no TensorRT, a runtime that cannot
    start (the bindings raise TypeError "factory function returned nullptr" where CUDA does
    not), a GPU of another compute capability than the plan's (Triton picks the
    ``cc_model_filenames`` entry of its own GPU), or another TensorRT version.
    """

    trt: Any = None
    runtime: Any = None
    device: CudaDevice | None = None
    reason: str | None = None
    cuda: CudaRuntime | None = None

    @classmethod
    def here(cls, device: int = 0, *, driver: Any = None, cudart: Any = None) -> PlanLoader:
        """A loader for CUDA device ``device`` (``driver``/``cudart``: libcuda and libcudart, loaded when None)."""
        try:
            import tensorrt as trt
        except Exception as error:
            return cls(reason=f"tensorrt is not importable ({type(error).__name__}: {first_line(error)})")
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        except Exception as error:  # TypeError where CUDA cannot start
            return cls(reason=f"the TensorRT runtime cannot start ({type(error).__name__}: {first_line(error)})")
        try:
            gpu = cuda_device(device, driver)
            if gpu is None:
                return cls(reason="no CUDA device")
            cuda = CudaRuntime(device, cudart, stream=False)  # selected before each deserialization
        except DependencyMissingError as error:
            return cls(reason=first_line(error))
        return cls(trt=trt, runtime=runtime, device=gpu, cuda=cuda)

    def why_not(self, metadata: PlanMetadata | None, capability: str | None = None) -> str | None:
        """Why a plan (its recorded metadata, else the cc_model_filenames key it is listed under) cannot load here."""
        if self.reason is not None:
            return self.reason
        if self.device is None:
            return None
        built_for = metadata.compute_capability if metadata is not None else capability
        if built_for is not None and built_for != self.device.compute_capability:
            return (f"built for compute capability {built_for}, this GPU ({self.device.name}) is "
                    f"{self.device.compute_capability}; Triton loads the plan listed for its own GPU")
        if metadata is None:
            return None
        return tensorrt_runtime_problem(metadata, tensorrt_full_version(self.trt).text, "this machine")

    def io_names(self, data: bytes, metadata: PlanMetadata | None) -> set[str] | None:
        """The engine's I/O tensor names, or None where TensorRT cannot deserialize ``data``."""
        if metadata is not None and metadata.version_compatible:
            self.runtime.engine_host_code_allowed = True
        if self.cuda is not None:
            self.cuda.select()  # the plan is loaded on the device asked for, whatever is current
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            return None
        return {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}


def tensor_memory(engine: Any, name: str, trt: Any) -> Memory:
    """Where TensorRT wants tensor ``name``: shape tensors live on the host, the rest on the device.

    ``get_tensor_location`` is authoritative; ``is_shape_inference_io`` covers bindings of
    releases where the location of a shape tensor input is reported late.
    """
    location = engine.get_tensor_location(name)
    if location == trt.TensorLocation.HOST:
        return "host"
    if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and engine.is_shape_inference_io(name) \
            and len(engine.get_tensor_shape(name)) <= 1:
        return "host"
    return "device"


def output_allocator(trt: Any, allocate: Callable[[str, int], int]) -> Any:
    """An ``IOutputAllocator`` for outputs whose shape only the data decides (NonZero, NMS, top-k of
    dynamic size): TensorRT asks it for ``size`` bytes once the size is known and tells it the shape.
    ``allocate(name, nbytes)`` gives a device pointer; where it cannot, TensorRT is answered None."""

    class DeviceOutputAllocator(trt.IOutputAllocator):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.shapes: dict[str, Shape] = {}
            self.problem: str | None = None

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int | None:
            try:
                return allocate(tensor_name, int(size))
            except HepDeployError as error:  # an exception cannot cross TensorRT: say None, report after
                self.problem = first_line(error)
                return None

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                    stream: int) -> int | None:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return DeviceOutputAllocator()


class TensorRTEngineRunner(Runner):
    """Deserializes ``plan_path`` on CUDA device ``device`` and runs it.

    Raises DependencyMissingError where TensorRT, the CUDA runtime or the device is missing,
    ModelLoadError where the plan does not deserialize (other TensorRT version or GPU) or no
    execution context can be made. ``cudart``: the CUDA runtime library, loaded when None.
    """

    backend = "tensorrt"
    _NP_FROM_TRT = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                    "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}

    def __init__(self, plan_path: Path | str, device: int = 0, *, allow_host_code: bool = False,
                 cudart: Any = None) -> None:
        try:
            import tensorrt as trt
        except (ImportError, OSError) as error:
            raise DependencyMissingError(f"TensorRT is not available ({error}); install the [tensorrt] extra on a "
                                         "machine with an NVIDIA GPU") from error
        path = check_input_file(Path(plan_path), "TensorRT engine")
        self.cuda = CudaRuntime(device, cudart)  # selects the device: the engine is deserialized onto it
        self._trt = trt
        try:
            self._open(path, allow_host_code)
        except BaseException:
            self.context = self.engine = None
            with contextlib.suppress(HepDeployError):  # the load's own error is the one to report
                self.cuda.close()
            raise
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.memory = {n: tensor_memory(self.engine, n, trt) for n in names}
        # min/opt/max of every device input in profile 0, the one a context uses unless told otherwise
        self.profile: dict[str, tuple[Shape, Shape, Shape]] = {}
        for n in inputs:
            shapes = self.engine.get_tensor_profile_shape(n, 0) if self.memory[n] == "device" else []
            if len(shapes) == 3:
                low, opt, high = (tuple(int(d) for d in dims) for dims in shapes)
                self.profile[n] = (low, opt, high)
        self._device_buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        self._allocator: Any = None  # made when an output's shape depends on the data
        super().__init__(f"tensorrt:{path}", inputs, outputs)

    def _open(self, path: Path, allow_host_code: bool) -> None:
        """Runtime, engine and execution context, each checked where TensorRT can fail."""
        trt = self._trt
        self._logger = recording_logger(trt)
        try:
            self.runtime = trt.Runtime(self._logger)
        except TypeError as error:  # "factory function returned nullptr": CUDA cannot start
            raise DependencyMissingError(f"TensorRT runtime cannot start on device {self.cuda.device}: "
                                         f"{first_line(error)}") from error
        if allow_host_code:  # version-compatible plans carry their lean runtime as host code
            self.runtime.engine_host_code_allowed = True
        try:
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        except (RuntimeError, TypeError, ValueError) as error:  # the bindings raise where the C++ side throws
            raise ModelLoadError(f"{path}: TensorRT cannot deserialize this engine ({type(error).__name__}: "
                                 f"{first_line(error)})") from error
        if self.engine is None:
            raise ModelLoadError(f"{path}: TensorRT cannot deserialize this engine (built for another TensorRT "
                                 f"version or GPU?){self._logger.said()}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ModelLoadError(f"{path}: TensorRT cannot create an execution context (not enough device memory "
                                 f"for the profile's largest shapes?){self._logger.said()}")

    def _np_dtype(self, name: str) -> np.dtype:
        trt_type = self.engine.get_tensor_dtype(name)
        try:
            return np.dtype(self._trt.nptype(trt_type))
        except (TypeError, KeyError) as error:  # e.g. BF16/FP8 have no numpy type in some releases
            if trt_type.name not in self._NP_FROM_TRT:
                raise DataError(f"{self.name}: tensor {name!r} has TensorRT type {trt_type.name}, "
                                "which has no numpy equivalent here") from error
            return np.dtype(self._NP_FROM_TRT[trt_type.name])

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name``, reused across runs."""
        pointer, capacity = self._device_buffers.get(name, (0, -1))
        if capacity < nbytes:
            if pointer:
                self.cuda.free(pointer)
                del self._device_buffers[name]
            pointer = self.cuda.malloc(nbytes)
            self._device_buffers[name] = (pointer, nbytes)
        return pointer

    # -- the profile ---------------------------------------------------------------------------
    def profile_rows(self) -> int | None:
        """The most rows one run may take: the smallest maximum of the inputs' leading dims in the profile."""
        highs = [high[0] for _, _, high in self.profile.values() if high]
        return min(highs) if highs else None

    def rows_within(self, budget_bytes: int, inputs: dict[str, np.ndarray]) -> int | None:
        """No chunk larger than the engine's profile allows (TensorRT refuses a shape outside it)."""
        rows = self.profile_rows()
        return rows if rows is not None and rows >= 1 else None

    def _outside_profile(self, name: str, shape: Shape) -> str:
        """One line: which input, its shape, and the profile's bounds (what to widen and rebuild)."""
        bounds = self.profile.get(name)
        where = f" (profile min {list(bounds[0])}, max {list(bounds[2])})" if bounds else ""
        return (f"{self.name}: input {name!r} shape {list(shape)} is outside the engine's profile{where}; "
                f"widen the spec's dims and rebuild the plan{self._logger.said()}")

    # -- running -------------------------------------------------------------------------------
    def _bind(self, name: str, pointer: int) -> None:
        if not self.context.set_tensor_address(name, pointer):
            raise DataError(f"{self.name}: TensorRT refused the address of tensor {name!r}{self._logger.said()}")

    def _bind_input(self, name: str, value: np.ndarray) -> np.ndarray:
        """Give input ``name`` its shape and memory; the host array returned must outlive the run."""
        # np.require keeps a rank-0 tensor rank 0 (np.ascontiguousarray makes it shape (1,))
        array = np.require(value, self._np_dtype(name), "C")
        shape = tuple(array.shape)
        if self.memory[name] == "host":
            if array.ndim and not self.context.set_input_shape(name, shape):
                raise DataError(f"{self.name}: shape tensor {name!r} of shape {list(shape)} is not accepted"
                                f"{self._logger.said()}")
            self._bind(name, array.ctypes.data)
            return array
        if not self.context.set_input_shape(name, shape):  # False outside the profile (or of another rank)
            raise DataError(self._outside_profile(name, shape))
        pointer = self._device_buffer(name, array.nbytes)
        self.cuda.to_device(pointer, array.ctypes.data, array.nbytes)
        self._bind(name, pointer)
        return array

    def _bind_outputs(self) -> dict[str, np.ndarray | None]:
        """Host arrays for the outputs whose shape the input shapes decide; None for those the data decides,
        which get their memory from the output allocator during the run."""
        results: dict[str, np.ndarray | None] = {}
        for n in self.output_names or []:
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                if self._allocator is None:
                    self._allocator = output_allocator(self._trt, self._device_buffer)
                if not self.context.set_output_allocator(n, self._allocator):
                    raise DataError(f"{self.name}: TensorRT refused an output allocator for {n!r}"
                                    f"{self._logger.said()}")
                results[n] = None
                continue
            out = np.empty(shape, dtype=self._np_dtype(n))
            results[n] = out
            self._bind(n, out.ctypes.data if self.memory[n] == "host" else self._device_buffer(n, out.nbytes))
        return results

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.cuda.select()
        self._logger.errors.clear()
        if self._allocator is not None:  # what it was told in the last run is not this run's
            self._allocator.shapes.clear()
            self._allocator.problem = None
        keep: list[np.ndarray] = []  # host arrays the queued copies read: they outlive the stream's work
        try:
            results = self._enqueue(feed, keep)
        except BaseException:
            with contextlib.suppress(HepDeployError):
                self.cuda.synchronize()  # copies already queued still read ``keep``
            raise
        self.cuda.synchronize()
        del keep
        return results

    def _enqueue(self, feed: dict[str, np.ndarray], keep: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Queue the inputs' copies, the execution and the outputs' copies on the stream."""
        for n, value in feed.items():
            keep.append(self._bind_input(n, value))
        bound = self._bind_outputs()
        keep.extend(out for out in bound.values() if out is not None)
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            problem = self._allocator.problem if self._allocator is not None else None
            raise DataError(f"{self.name}: TensorRT execution failed"
                            f"{f' ({problem})' if problem else ''}{self._logger.said()}")
        results: dict[str, np.ndarray] = {}
        for n, out in bound.items():
            sized_by_data = out is None
            if out is None:  # the allocator has its shape and memory now
                if n not in self._allocator.shapes or n not in self._device_buffers:
                    raise DataError(f"{self.name}: TensorRT did not report the shape of output {n!r}")
                out = np.empty(self._allocator.shapes[n], dtype=self._np_dtype(n))
                keep.append(out)  # sized by the data: made here, read back into by a queued copy
            results[n] = out
            if sized_by_data or self.memory[n] == "device":
                self.cuda.to_host(out.ctypes.data, self._device_buffers[n][0], out.nbytes)
        return results

    def _close(self) -> None:
        self.context = None
        self.engine = None
        self._allocator = None
        self.cuda.close()
