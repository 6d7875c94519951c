"""The few CUDA calls a TensorRT engine needs, through ctypes: no torch, pycuda or cupy.

``cuda_device`` asks the driver (libcuda) which GPU is there and its compute capability.
:class:`CudaRuntime` wraps the runtime (libcudart, which the ``tensorrt`` wheels bring as
``nvidia-cuda-runtime``): select a device, make a non-default stream, allocate device memory
and copy asynchronously on that stream. Everything here fails with one clear line where
there is no CUDA, never with a ctypes traceback, and every CUDA error carries CUDA's own
description of it (``cudaGetErrorString`` / ``cuGetErrorString``).

Both take the loaded library as an argument (None loads the real one), so the code runs
against a stand-in where there is no GPU. What a runtime holds (device buffers, the stream)
is released by :meth:`CudaRuntime.close`, or by a finalizer when it is dropped unclosed.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any

from hepdeploy.errors import DataError, DependencyMissingError

log = logging.getLogger("hepdeploy.backend.cudart")

# cudaMemcpyKind
_HOST_TO_DEVICE = 1
_DEVICE_TO_HOST = 2
# CUdevice_attribute: COMPUTE_CAPABILITY_MAJOR / _MINOR
_CC_MAJOR, _CC_MINOR = 75, 76


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    compute_capability: str


def _load_first(names: list[str]) -> ctypes.CDLL | None:
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _driver_error(driver: Any, code: int) -> str:
    """The driver's own words for CUresult ``code`` (cuGetErrorString), else its number."""
    text = ctypes.c_char_p()
    if driver.cuGetErrorString(code, ctypes.byref(text)) == 0 and text.value:
        return f"{text.value.decode(errors='replace')} (CUresult {code})"
    return f"CUresult {code}"


def cuda_device(index: int = 0, driver: Any = None) -> CudaDevice | None:
    """GPU ``index`` via the driver API (``driver``: libcuda, loaded when None), or None where there
    is no driver or no such device. A device that is there but whose name or compute capability
    cannot be read raises DependencyMissingError: a capability of "0.0" would match no plan."""
    cuda = driver if driver is not None else _load_first(["libcuda.so.1", "libcuda.so", "nvcuda.dll"])
    if cuda is None:
        return None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or not 0 <= index < count.value:
        return None
    device = ctypes.c_int(0)
    if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    for what, code in (("cuDeviceGetName", cuda.cuDeviceGetName(name, 256, device)),
                       ("cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR)",
                        cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)),
                       ("cuDeviceGetAttribute(COMPUTE_CAPABILITY_MINOR)",
                        cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device))):
        if code != 0:
            raise DependencyMissingError(f"CUDA {what} failed on device {index}: {_driver_error(cuda, code)}")
    return CudaDevice(index, name.value.decode(errors="replace"), f"{major.value}.{minor.value}")


def cudart_candidates() -> list[str]:
    """Where libcudart may be: the nvidia-cuda-runtime wheel next to tensorrt, then the loader's path."""
    found: list[str] = []
    for root in sys.path:
        found += sorted(glob.glob(os.path.join(root, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    return [*found, "libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]


def _runtime_error(lib: Any, code: int) -> str:
    """The runtime's own words for cudaError_t ``code`` (cudaGetErrorString)."""
    text = lib.cudaGetErrorString(code)
    return f"{text.decode(errors='replace') if text else 'unknown error'} (cudaError {code})"


def _release(lib: Any, device: int, stream: ctypes.c_void_p, buffers: list[int]) -> list[str]:
    """Free ``buffers`` and destroy ``stream`` on ``device``; what failed, in CUDA's words.

    The device is selected first: a finalizer may run on a thread whose current device is another."""
    problems: list[str] = []
    code = lib.cudaSetDevice(device)
    if code != 0:
        return [f"cudaSetDevice: {_runtime_error(lib, code)}"]
    while buffers:
        code = lib.cudaFree(ctypes.c_void_p(buffers.pop()))
        if code != 0:
            problems.append(f"cudaFree: {_runtime_error(lib, code)}")
    if stream.value:
        code = lib.cudaStreamDestroy(stream)
        stream.value = None
        if code != 0:
            problems.append(f"cudaStreamDestroy: {_runtime_error(lib, code)}")
    return problems


def _release_unclosed(lib: Any, device: int, stream: ctypes.c_void_p, buffers: list[int]) -> None:
    """The finalizer of a runtime dropped without close(): release, and warn rather than raise."""
    for problem in _release(lib, device, stream, buffers):
        log.warning("CUDA device %d: releasing an unclosed runtime: %s", device, problem)


class CudaRuntime:
    """One device, one non-default stream, and device buffers allocated on it.

    ``library``: libcudart, loaded when None. ``stream=False`` makes no stream (to select the
    device only, as loading a plan needs)."""

    def __init__(self, device: int = 0, library: Any = None, *, stream: bool = True) -> None:
        lib = library if library is not None else _load_first(cudart_candidates())
        if lib is None:
            raise DependencyMissingError("the CUDA runtime (libcudart) is not found; install the [tensorrt] extra, "
                                         "which brings nvidia-cuda-runtime")
        self._lib = lib
        if isinstance(lib, ctypes.CDLL):
            lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.device = device
        self.stream = ctypes.c_void_p()
        self._buffers: list[int] = []
        count = ctypes.c_int(0)
        code = lib.cudaGetDeviceCount(ctypes.byref(count))
        if code != 0:
            raise DependencyMissingError(f"the CUDA runtime cannot count devices: {_runtime_error(lib, code)} "
                                         "(a driver older than the CUDA runtime says so)")
        if not 0 <= device < count.value:
            raise DependencyMissingError(f"no CUDA device {device} (the CUDA runtime sees {count.value})")
        self.select()
        if stream:
            self._check(lib.cudaStreamCreateWithFlags(ctypes.byref(self.stream), 1), "cudaStreamCreate")  # non-blocking
        self._finalizer = weakref.finalize(self, _release_unclosed, lib, device, self.stream, self._buffers)
        self._finalizer.atexit = False  # at exit the process's CUDA context goes with it

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise DataError(f"CUDA {what} failed on device {self.device}: {_runtime_error(self._lib, code)}")

    @property
    def stream_handle(self) -> int:
        return int(self.stream.value or 0)

    def held(self) -> tuple[int, bool]:
        """(device buffers, whether a stream) this runtime still holds: (0, False) once released."""
        return len(self._buffers), bool(self.stream.value)

    def select(self) -> None:
        """Make this device current in the calling thread (TensorRT deserializes on the current device)."""
        self._check(self._lib.cudaSetDevice(self.device), "cudaSetDevice")

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        self._buffers.append(int(pointer.value or 0))
        return int(pointer.value or 0)

    def free(self, pointer: int) -> None:
        if pointer in self._buffers:
            self._buffers.remove(pointer)
            self.select()
            self._check(self._lib.cudaFree(ctypes.c_void_p(pointer)), "cudaFree")

    def to_device(self, pointer: int, host: int, nbytes: int) -> None:
        self._check(self._lib.cudaMemcpyAsync(ctypes.c_void_p(pointer), ctypes.c_void_p(host), ctypes.c_size_t(nbytes),
                                              _HOST_TO_DEVICE, self.stream), "cudaMemcpyAsync to the device")

    def to_host(self, host: int, pointer: int, nbytes: int) -> None:
        self._check(self._lib.cudaMemcpyAsync(ctypes.c_void_p(host), ctypes.c_void_p(pointer), ctypes.c_size_t(nbytes),
                                              _DEVICE_TO_HOST, self.stream), "cudaMemcpyAsync to the host")

    def synchronize(self) -> None:
        self._check(self._lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        """Free every buffer and the stream (once); a failure is one DataError in CUDA's words."""
        if not self._finalizer.detach():
            return
        problems = _release(self._lib, self.device, self.stream, self._buffers)
        if problems:
            raise DataError(f"CUDA device {self.device}: releasing memory failed: {'; '.join(problems)}")
