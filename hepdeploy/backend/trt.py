"""A serialized TensorRT engine (``.plan``) through the TensorRT 10/11 tensor-name API.

Memory and streams come from the CUDA runtime through ctypes (:mod:`hepdeploy.backend.cudart`),
so no CUDA build of torch is needed. The engine is deserialized with the wanted device
current, runs on its own non-blocking stream (the legacy default stream makes TensorRT
synchronise more and warn), and tensors TensorRT wants on the host (shape tensors, the
inputs whose *values* decide output shapes) are bound to host memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hepdeploy.backend.base import Runner
from hepdeploy.backend.cudart import CudaDevice, CudaRuntime, cuda_device
from hepdeploy.errors import (
    DataError,
    DependencyMissingError,
    ModelLoadError,
    first_line,
)
from hepdeploy.fsutil import check_input_file
from hepdeploy.plan_compat import PlanMetadata, tensorrt_runtime_problem

Memory = Literal["host", "device"]


def tensorrt_unavailable(device: int = 0) -> str | None:
    """Why TensorRT cannot run here (not importable, no CUDA device), or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except Exception as error:  # ImportError, or OSError when libnvinfer is missing
        return f"tensorrt is not importable ({type(error).__name__}: {first_line(error)})"
    if cuda_device(device) is None:
        return "no CUDA device"
    return None


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

    @classmethod
    def here(cls, device: int = 0) -> PlanLoader:
        try:
            import tensorrt as trt
        except Exception as error:
            return cls(reason=f"tensorrt is not importable ({type(error).__name__}: {first_line(error)})")
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        except Exception as error:  # TypeError where CUDA cannot start
            return cls(reason=f"the TensorRT runtime cannot start ({type(error).__name__}: {first_line(error)})")
        gpu = cuda_device(device)
        if gpu is None:
            return cls(reason="no CUDA device")
        return cls(trt=trt, runtime=runtime, device=gpu)

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
        return tensorrt_runtime_problem(metadata, str(getattr(self.trt, "__version__", "")), "this machine")

    def io_names(self, data: bytes, metadata: PlanMetadata | None) -> set[str] | None:
        """The engine's I/O tensor names, or None where TensorRT cannot deserialize ``data``."""
        if metadata is not None and metadata.version_compatible:
            self.runtime.engine_host_code_allowed = True
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


class TensorRTEngineRunner(Runner):
    """Deserializes ``plan_path`` on CUDA device ``device`` and runs it.

    Raises DependencyMissingError where TensorRT, the CUDA runtime or the device is missing,
    ModelLoadError where the plan does not deserialize (other TensorRT version or GPU).
    """

    backend = "tensorrt"
    _NP_FROM_TRT = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                    "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}

    def __init__(self, plan_path: Path | str, device: int = 0, *, allow_host_code: bool = False) -> None:
        try:
            import tensorrt as trt
        except (ImportError, OSError) as error:
            raise DependencyMissingError(f"TensorRT is not available ({error}); install the [tensorrt] extra on a "
                                         "machine with an NVIDIA GPU") from error
        path = check_input_file(Path(plan_path), "TensorRT engine")
        self.cuda = CudaRuntime(device)  # selects the device: the engine is deserialized onto it
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        try:
            self.runtime = trt.Runtime(self._logger)
        except TypeError as error:  # "factory function returned nullptr": CUDA cannot start
            self.cuda.close()
            raise DependencyMissingError(f"TensorRT runtime cannot start on device {device}: {error}") from error
        if allow_host_code:  # version-compatible plans carry their lean runtime as host code
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            self.cuda.close()
            raise ModelLoadError(f"{path}: TensorRT cannot deserialize this engine (built for another TensorRT "
                                 "version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.memory = {n: tensor_memory(self.engine, n, trt) for n in names}
        self._device_buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        super().__init__(f"tensorrt:{path}", inputs, outputs)

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
            pointer = self.cuda.malloc(nbytes)
            self._device_buffers[name] = (pointer, nbytes)
        return pointer

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.cuda.select()
        keep: list[np.ndarray] = []  # host arrays must outlive the asynchronous execution
        for n, value in feed.items():
            array = np.ascontiguousarray(value.astype(self._np_dtype(n), copy=False))
            keep.append(array)
            if self.memory[n] == "host":
                if array.ndim and not self.context.set_input_shape(n, tuple(array.shape)):
                    raise DataError(f"{self.name}: shape tensor {n!r} of shape {list(array.shape)} is not accepted")
                self.context.set_tensor_address(n, array.ctypes.data)
                continue
            if not self.context.set_input_shape(n, tuple(array.shape)):
                raise DataError(f"{self.name}: input {n!r} shape {list(array.shape)} is outside the engine's profile")
            pointer = self._device_buffer(n, array.nbytes)
            self.cuda.to_device(pointer, array.ctypes.data, array.nbytes)
            self.context.set_tensor_address(n, pointer)
        results: dict[str, np.ndarray] = {}
        for n in self.output_names or []:
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise DataError(f"{self.name}: output {n!r} shape {shape} is unresolved")
            out = np.empty(shape, dtype=self._np_dtype(n))
            results[n] = out
            if self.memory[n] == "host":
                self.context.set_tensor_address(n, out.ctypes.data)
            else:
                self.context.set_tensor_address(n, self._device_buffer(n, out.nbytes))
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise DataError(f"{self.name}: TensorRT execution failed")
        for n, out in results.items():
            if self.memory[n] == "device":
                self.cuda.to_host(out.ctypes.data, self._device_buffers[n][0], out.nbytes)
        self.cuda.synchronize()
        del keep
        return results

    def _close(self) -> None:
        self.context = None
        self.engine = None
        self.cuda.close()
