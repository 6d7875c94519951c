"""The few CUDA calls a TensorRT engine needs, through ctypes: no torch, pycuda or cupy.

``cuda_device`` asks the driver (libcuda) which GPU is there and its compute capability.
:class:`CudaRuntime` wraps the runtime (libcudart, which the ``tensorrt`` wheels bring as
``nvidia-cuda-runtime``): select a device, make a non-default stream, allocate device memory
and copy asynchronously on that stream. Everything here fails with one clear line where
there is no CUDA, never with a ctypes traceback.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
from dataclasses import dataclass

from hepdeploy.errors import DataError, DependencyMissingError

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


def cuda_device(index: int = 0) -> CudaDevice | None:
    """GPU ``index`` via the driver API, or None where there is no driver or no such device."""
    cuda = _load_first(["libcuda.so.1", "libcuda.so", "nvcuda.dll"])
    if cuda is None:
        return None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or not 0 <= index < count.value:
        return None
    device = ctypes.c_int(0)
    if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    return CudaDevice(index, name.value.decode(errors="replace"), f"{major.value}.{minor.value}")


def cudart_candidates() -> list[str]:
    """Where libcudart may be: the nvidia-cuda-runtime wheel next to tensorrt, then the loader's path."""
    found: list[str] = []
    for root in sys.path:
        found += sorted(glob.glob(os.path.join(root, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    return [*found, "libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]


class CudaRuntime:
    """One device, one non-default stream, and device buffers allocated on it."""

    def __init__(self, device: int = 0) -> None:
        lib = _load_first(cudart_candidates())
        if lib is None:
            raise DependencyMissingError("the CUDA runtime (libcudart) is not found; install the [tensorrt] extra, "
                                         "which brings nvidia-cuda-runtime")
        self._lib = lib
        self._lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.device = device
        count = ctypes.c_int(0)
        if self._lib.cudaGetDeviceCount(ctypes.byref(count)) != 0 or not 0 <= device < count.value:
            raise DependencyMissingError(f"no CUDA device {device} (the CUDA runtime sees {count.value})")
        self.select()
        stream = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreateWithFlags(ctypes.byref(stream), 1), "cudaStreamCreate")  # non-blocking
        self.stream = stream
        self._buffers: list[int] = []

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            message = self._lib.cudaGetErrorString(code).decode(errors="replace")
            raise DataError(f"CUDA {what} failed on device {self.device}: {message}")

    @property
    def stream_handle(self) -> int:
        return int(self.stream.value or 0)

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
            self._lib.cudaFree(ctypes.c_void_p(pointer))

    def to_device(self, pointer: int, host: int, nbytes: int) -> None:
        self._check(self._lib.cudaMemcpyAsync(ctypes.c_void_p(pointer), ctypes.c_void_p(host), ctypes.c_size_t(nbytes),
                                              _HOST_TO_DEVICE, self.stream), "cudaMemcpyAsync to the device")

    def to_host(self, host: int, pointer: int, nbytes: int) -> None:
        self._check(self._lib.cudaMemcpyAsync(ctypes.c_void_p(host), ctypes.c_void_p(pointer), ctypes.c_size_t(nbytes),
                                              _DEVICE_TO_HOST, self.stream), "cudaMemcpyAsync to the host")

    def synchronize(self) -> None:
        self._check(self._lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for pointer in list(self._buffers):
            self.free(pointer)
        if self.stream.value:
            self._lib.cudaStreamDestroy(self.stream)
            self.stream = ctypes.c_void_p()
