"""Stand-ins for the CUDA driver and runtime and for TensorRT's runtime objects, behaving as the
TensorRT 10 bindings and the CUDA 12 runtime document them, so the engine runner's own logic
(chunking, shapes, copies, addresses, clean-up) executes on a machine without a GPU.

- :class:`FakeCudart` is libcudart on host memory: ``cudaMalloc`` hands out ctypes buffers and
  work on a stream runs in order. ``cudaMemcpyAsync`` behaves as CUDA's "API synchronization
  behavior" page says it does with pageable host memory: to the device, the source is staged
  before the call returns and the copy waits its turn on the stream; to the host, the call
  returns once the stream's earlier work (the engine's execution) and the copy are done.
  It refuses what CUDA refuses (unknown pointers and streams, copies out of bounds or between the
  wrong kinds of memory) with CUDA's error codes, and ``cudaGetErrorString`` words them.
- :class:`FakeDriver` is libcuda's device queries.
- :func:`fake_tensorrt` is a ``tensorrt`` module whose ``Runtime`` deserializes the plans it was
  given (:class:`FakePlan`). The execution context enforces the optimisation profile as
  ``IExecutionContext::setInputShape`` does (False on a rank or a dim outside min..max, with an
  error to the logger), reports ``-1`` for output dims only the data decides, refuses to run with
  a shape or an address missing or an address in the wrong memory, and serves data-dependent
  outputs through the ``IOutputAllocator`` it is given (``reallocate_output_async`` then
  ``notify_shape``, before ``execute_async_v3`` returns).
"""
from __future__ import annotations

import ctypes
import enum
import itertools
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Shape = tuple[int, ...]

# cudaError_t values and the words cudaGetErrorString gives them (CUDA 12 runtime)
CUDA_ERRORS = {
    0: b"no error",
    1: b"invalid argument",
    2: b"out of memory",
    35: b"CUDA driver version is insufficient for CUDA runtime version",
    101: b"invalid device ordinal",
    400: b"invalid resource handle",
    700: b"an illegal memory access was encountered",
}
INVALID_VALUE, OUT_OF_MEMORY, INSUFFICIENT_DRIVER, INVALID_DEVICE, INVALID_HANDLE = 1, 2, 35, 101, 400


def _out(ref: Any) -> Any:
    """The ctypes object behind ``ctypes.byref(x)``: where a C function writes its result."""
    return ref._obj


def _value(arg: Any) -> int:
    """An integer argument as ctypes passes it (c_void_p, c_size_t, c_int or a plain int)."""
    value = getattr(arg, "value", arg)
    return int(value or 0)


class FakeCudart:
    """libcudart's calls as :class:`hepdeploy.backend.cudart.CudaRuntime` makes them, on host memory.

    ``fail`` maps a function name to the cudaError_t it returns from then on."""

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.current = 0
        self.allocations: dict[int, tuple[Any, int, int]] = {}  # address -> (buffer, size, device)
        self.streams: dict[int, list[Callable[[], None]]] = {}  # handle -> queued work
        self.stream_device: dict[int, int] = {}
        self.frees: list[tuple[int, int]] = []  # (device of the allocation, device current at cudaFree)
        self.destroys: list[tuple[int, int]] = []  # (device of the stream, device current at cudaStreamDestroy)
        self.fail: dict[str, int] = {}
        self._handles = itertools.count(0x1000)

    # -- bookkeeping the tests read ------------------------------------------------------------
    def live(self) -> tuple[int, int]:
        """(device buffers, streams) not released."""
        return len(self.allocations), len(self.streams)

    def device_block(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies inside one device allocation."""
        return any(start <= address and address + nbytes <= start + size
                   for start, (_, size, _) in self.allocations.items())

    def enqueue(self, stream: int, work: Callable[[], None]) -> bool:
        if stream not in self.streams:
            return False
        self.streams[stream].append(work)
        return True

    def flush(self, stream: int) -> None:
        queue = self.streams.get(stream, [])
        while queue:
            queue.pop(0)()

    # -- libcudart -------------------------------------------------------------------------------
    def cudaGetErrorString(self, code: int) -> bytes:  # noqa: N802 (CUDA's names)
        return CUDA_ERRORS.get(int(code), b"unrecognized error code")

    def cudaGetDeviceCount(self, count: Any) -> int:  # noqa: N802
        if "cudaGetDeviceCount" in self.fail:
            return self.fail["cudaGetDeviceCount"]
        _out(count).value = self.devices
        return 0

    def cudaSetDevice(self, device: int) -> int:  # noqa: N802
        if not 0 <= int(device) < self.devices:
            return INVALID_DEVICE
        self.current = int(device)
        return 0

    def cudaStreamCreateWithFlags(self, stream: Any, flags: int) -> int:  # noqa: N802
        handle = next(self._handles)
        self.streams[handle] = []
        self.stream_device[handle] = self.current
        _out(stream).value = handle
        return 0

    def cudaStreamSynchronize(self, stream: Any) -> int:  # noqa: N802
        handle = _value(stream)
        if handle not in self.streams:
            return INVALID_HANDLE
        self.flush(handle)
        return 0

    def cudaStreamDestroy(self, stream: Any) -> int:  # noqa: N802
        handle = _value(stream)
        if handle not in self.streams:
            return INVALID_HANDLE
        self.flush(handle)  # work already queued still completes
        del self.streams[handle]
        self.destroys.append((self.stream_device.pop(handle), self.current))
        return self.fail.get("cudaStreamDestroy", 0)

    def cudaMalloc(self, pointer: Any, size: Any) -> int:  # noqa: N802
        if "cudaMalloc" in self.fail:
            return self.fail["cudaMalloc"]
        nbytes = _value(size)
        buffer = ctypes.create_string_buffer(nbytes)
        address = ctypes.addressof(buffer)
        self.allocations[address] = (buffer, nbytes, self.current)
        _out(pointer).value = address
        return 0

    def cudaFree(self, pointer: Any) -> int:  # noqa: N802
        address = _value(pointer)
        if address not in self.allocations:
            return INVALID_VALUE
        for handle in self.streams:  # cudaFree synchronizes the device first
            self.flush(handle)
        _, _, device = self.allocations.pop(address)
        self.frees.append((device, self.current))
        return self.fail.get("cudaFree", 0)

    def cudaMemcpyAsync(self, dst: Any, src: Any, count: Any, kind: int, stream: Any) -> int:  # noqa: N802
        to, frm, nbytes = _value(dst), _value(src), _value(count)
        device_side, host_side = (to, frm) if kind == 1 else (frm, to) if kind == 2 else (0, 0)
        if not device_side or not self.device_block(device_side, nbytes) or self.device_block(host_side, 1):
            return INVALID_VALUE
        handle = _value(stream)
        if handle not in self.streams:
            return INVALID_HANDLE
        if kind == 1:  # pageable host memory is staged before the call returns; the device copy waits its turn
            staged = ctypes.create_string_buffer(ctypes.string_at(frm, nbytes), nbytes)
            self.enqueue(handle, lambda: ctypes.memmove(to, staged, nbytes))
        else:  # into pageable host memory the call returns once the stream's earlier work and the copy are done
            self.flush(handle)
            ctypes.memmove(to, frm, nbytes)
        return 0


class FakeDriver:
    """libcuda's device queries; ``fail`` maps a function name to the CUresult it returns."""

    ERRORS = {1: b"invalid argument", 100: b"no CUDA-capable device is detected", 101: b"invalid device ordinal"}

    def __init__(self, devices: int = 1, name: bytes = b"NVIDIA H100 80GB HBM3", capability: tuple[int, int] = (9, 0)):
        self.devices, self.name, self.capability = devices, name, capability
        self.fail: dict[str, int] = {}

    def cuInit(self, flags: int) -> int:  # noqa: N802
        return 0

    def cuDeviceGetCount(self, count: Any) -> int:  # noqa: N802
        _out(count).value = self.devices
        return 0

    def cuDeviceGet(self, device: Any, ordinal: int) -> int:  # noqa: N802
        if not 0 <= ordinal < self.devices:
            return 101
        _out(device).value = ordinal
        return 0

    def cuDeviceGetName(self, buffer: Any, length: int, device: Any) -> int:  # noqa: N802
        if "cuDeviceGetName" in self.fail:
            return self.fail["cuDeviceGetName"]
        ctypes.memmove(buffer, self.name + b"\0", min(len(self.name) + 1, length))
        return 0

    def cuDeviceGetAttribute(self, value: Any, attribute: int, device: Any) -> int:  # noqa: N802
        if "cuDeviceGetAttribute" in self.fail:
            return self.fail["cuDeviceGetAttribute"]
        _out(value).value = {75: self.capability[0], 76: self.capability[1]}[attribute]
        return 0

    def cuGetErrorString(self, code: int, text: Any) -> int:  # noqa: N802
        if code not in self.ERRORS:
            return 1
        _out(text).value = self.ERRORS[code]
        return 0


# -- TensorRT ------------------------------------------------------------------------------------


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.Enum):
    FLOAT = np.float32
    HALF = np.float16
    INT32 = np.int32
    INT64 = np.int64
    BOOL = np.bool_


@dataclass
class FakeTensor:
    """One I/O tensor of a plan. Inputs carry their profile (min, opt, max); an output's ``shape_of``
    gives its shape from the input shapes, None where only the data decides it (dims reported -1)."""

    name: str
    mode: str  # "INPUT" | "OUTPUT"
    shape: Shape  # as the engine reports it: -1 for a dynamic dim
    dtype: DataType = DataType.FLOAT
    profile: tuple[Shape, Shape, Shape] | None = None
    location: str = "DEVICE"
    shape_of: Callable[[dict[str, Shape]], Shape] | None = None


@dataclass
class FakePlan:
    """What a serialized plan deserializes to: its tensors and what the engine computes.

    ``context_memory``: False where ``create_execution_context`` cannot get the memory of the
    profile's largest shapes (it returns None and logs why); ``raises``: what deserializing throws."""

    tensors: list[FakeTensor]
    compute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    context_memory: bool = True
    raises: Exception | None = None
    refused_addresses: set[str] = field(default_factory=set)  # refused as a null or misaligned one is
    loaded_on: list[int] = field(default_factory=list)  # the device current at each deserialization


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    ERROR, WARNING = Severity.ERROR, Severity.WARNING

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity
        self.messages: list[str] = []

    def log(self, severity: Severity, msg: str) -> None:
        self.messages.append(msg)


class IOutputAllocator:
    def __init__(self) -> None:
        pass


class FakeEngine:
    """ICudaEngine's tensor queries and ``create_execution_context``."""

    def __init__(self, plan: FakePlan, logger: ILogger, cudart: FakeCudart) -> None:
        self.plan, self.logger, self.cudart = plan, logger, cudart
        self.tensors = {t.name: t for t in plan.tensors}
        self.num_io_tensors = len(plan.tensors)

    def get_tensor_name(self, index: int) -> str:
        return self.plan.tensors[index].name

    def get_tensor_mode(self, name: str) -> str:
        return self.tensors[name].mode

    def get_tensor_location(self, name: str) -> str:
        return self.tensors[name].location

    def is_shape_inference_io(self, name: str) -> bool:
        return self.tensors[name].location == "HOST"

    def get_tensor_shape(self, name: str) -> Shape:
        return self.tensors[name].shape

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name].dtype

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Shape]:
        tensor = self.tensors[name]
        if profile_index != 0 or tensor.profile is None:
            self.logger.log(Severity.ERROR, f"getProfileShape: {name} has no profile {profile_index}")
            return []
        return list(tensor.profile)

    def create_execution_context(self) -> FakeContext | None:
        if not self.plan.context_memory:
            self.logger.log(Severity.ERROR, "Error Code 2: OutOfMemory (Requested size was 34359738368 bytes.)")
            return None
        return FakeContext(self)


class FakeContext:
    """IExecutionContext's tensor-name API (TensorRT 10)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, Shape] = {}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, Any] = {}
        self.runs = 0

    def _error(self, message: str) -> bool:
        self.engine.logger.log(Severity.ERROR, message)
        return False

    def set_input_shape(self, name: str, shape: Any) -> bool:
        tensor = self.engine.tensors.get(name)
        shape = tuple(int(d) for d in shape)
        if tensor is None or tensor.mode != "INPUT":
            return self._error(f"IExecutionContext::setInputShape: Error Code 3: {name} is not an input")
        low, _, high = tensor.profile or (tensor.shape, tensor.shape, tensor.shape)
        if len(shape) != len(tensor.shape):
            return self._error(f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Parameter check "
                               f"failed, condition: engineDims.nbDims == dims.nbDims. {name}: rank {len(shape)}, "
                               f"expected {len(tensor.shape)})")
        for axis, (a, d, b) in enumerate(zip(low, shape, high, strict=True)):
            if not a <= d <= b:
                return self._error(f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Parameter "
                                   f"check failed, condition: profileMinDims.d[i] <= dimensions.d[i]. {name} "
                                   f"dim {axis} is {d}, profile allows {a}..{b})")
        self.shapes[name] = shape
        return True

    def _input_shapes(self) -> dict[str, Shape] | None:
        inputs = [t for t in self.engine.plan.tensors if t.mode == "INPUT"]
        if any(t.name not in self.shapes and -1 in t.shape for t in inputs):
            return None
        return {t.name: self.shapes.get(t.name, t.shape) for t in inputs}

    def get_tensor_shape(self, name: str) -> Shape:
        tensor = self.engine.tensors[name]
        if tensor.mode == "INPUT":
            return self.shapes.get(name, tensor.shape)
        inputs = self._input_shapes()
        if inputs is None or tensor.shape_of is None:  # not yet known, or known only from the data
            return tuple(-1 if d < 0 or inputs is None else d for d in tensor.shape)
        return tensor.shape_of(inputs)

    def set_tensor_address(self, name: str, address: int) -> bool:
        tensor = self.engine.tensors.get(name)
        if tensor is None:
            return self._error(f"IExecutionContext::setTensorAddress: Error Code 3: {name} is not an I/O tensor")
        if address % np.dtype(tensor.dtype.value).itemsize or name in self.engine.plan.refused_addresses:
            return self._error(f"IExecutionContext::setTensorAddress: Error Code 3: {name}'s address is misaligned")
        self.addresses[name] = int(address)
        return True

    def set_output_allocator(self, name: str, allocator: Any) -> bool:
        tensor = self.engine.tensors.get(name)
        if tensor is None or tensor.mode != "OUTPUT":
            return self._error(f"IExecutionContext::setOutputAllocator: Error Code 3: {name} is not an output")
        self.allocators[name] = allocator
        return True

    def _memory_problem(self, tensor: FakeTensor, shape: Shape) -> str | None:
        """Why the address bound to ``tensor`` cannot hold ``shape`` in the memory TensorRT wants it in."""
        address = self.addresses.get(tensor.name)
        if address is None:
            return f"{tensor.name} has no address"
        nbytes = int(np.prod(shape)) * np.dtype(tensor.dtype.value).itemsize
        on_device = self.engine.cudart.device_block(address, max(nbytes, 1))
        if (tensor.location == "DEVICE") != on_device:
            return f"{tensor.name} is bound to {'device' if on_device else 'host'} memory, or too little of it"
        return None

    def execute_async_v3(self, stream: int) -> bool:
        inputs = self._input_shapes()
        if inputs is None:
            return self._error("IExecutionContext::enqueueV3: Error Code 3: not all input shapes are specified")
        for tensor in self.engine.plan.tensors:
            if tensor.mode == "OUTPUT" and tensor.name in self.allocators:
                continue
            shape = inputs[tensor.name] if tensor.mode == "INPUT" else self.get_tensor_shape(tensor.name)
            problem = self._memory_problem(tensor, shape)
            if problem is not None:
                return self._error(f"IExecutionContext::enqueueV3: Error Code 3: {problem}")
        if stream not in self.engine.cudart.streams:
            return self._error("IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (invalid resource handle)")
        self.runs += 1
        if self.allocators:  # the data decides some output sizes: TensorRT waits for them before returning
            self.engine.cudart.flush(stream)
            return self._compute(inputs, stream)
        self.engine.cudart.enqueue(stream, lambda: self._compute(inputs, stream))
        return True

    def _compute(self, inputs: dict[str, Shape], stream: int) -> bool:
        feed = {}
        for name, shape in inputs.items():
            dtype = np.dtype(self.engine.tensors[name].dtype.value)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            raw = (ctypes.c_char * nbytes).from_address(self.addresses[name]) if nbytes else b""
            feed[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        for name, value in self.engine.plan.compute(feed).items():
            tensor = self.engine.tensors[name]
            value = np.ascontiguousarray(value, dtype=tensor.dtype.value)
            address = self.addresses.get(name)
            if name in self.allocators:
                allocator = self.allocators[name]
                address = allocator.reallocate_output_async(name, address or 0, value.nbytes, 256, stream)
                if address is None:
                    return self._error(f"IExecutionContext::enqueueV3: Error Code 2: no memory for {name}")
                allocator.notify_shape(name, value.shape)
            ctypes.memmove(address, value.ctypes.data, value.nbytes)
        return True


def fake_tensorrt(plans: dict[bytes, FakePlan], cudart: FakeCudart, version: str = "10.5.0") -> types.ModuleType:
    """A ``tensorrt`` module whose Runtime deserializes ``plans`` (by their bytes) on ``cudart``'s current device."""
    module = types.ModuleType("tensorrt")

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            if not isinstance(logger, ILogger):
                raise TypeError("Runtime(): incompatible constructor arguments")
            self.logger = logger
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            plan = plans.get(bytes(data))
            if plan is None:
                self.logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                                "(Serialization assertion plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.)")
                return None
            if plan.raises is not None:
                raise plan.raises
            plan.loaded_on.append(cudart.current)
            return FakeEngine(plan, self.logger, cudart)

    module.__version__ = version
    module.ILogger, module.Logger, module.IOutputAllocator, module.Runtime = ILogger, Logger, IOutputAllocator, Runtime
    module.DataType = DataType
    module.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    module.TensorLocation = types.SimpleNamespace(DEVICE="DEVICE", HOST="HOST")
    module.nptype = lambda data_type: data_type.value
    return module
