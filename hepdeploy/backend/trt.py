"""A serialized TensorRT engine (``.plan``) through the TensorRT 10/11 tensor-name API."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.backend.base import Runner
from hepdeploy.errors import DataError, DependencyMissingError, ModelLoadError
from hepdeploy.fsutil import check_input_file


class TensorRTEngineRunner(Runner):
    """Deserializes ``plan_path`` on the CUDA device and runs it.

    Buffers are torch CUDA tensors (no pycuda). Raises DependencyMissingError where
    TensorRT or a CUDA device is missing.
    """

    backend = "tensorrt"
    _NP_FROM_TRT = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                    "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}

    def __init__(self, plan_path: Path | str, device: int = 0) -> None:
        try:
            import tensorrt as trt
        except (ImportError, OSError) as error:
            raise DependencyMissingError(f"TensorRT is not available ({error}); install the [tensorrt] extra on a "
                                         "machine with an NVIDIA GPU") from error
        import torch

        if not torch.cuda.is_available():
            raise DependencyMissingError("TensorRT engine needs a CUDA device; torch sees none")
        path = check_input_file(Path(plan_path), "TensorRT engine")
        self.device = torch.device("cuda", device)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelLoadError(f"{path}: TensorRT cannot deserialize this engine (built for another TensorRT "
                                 "version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
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

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        keep: list[Any] = []
        for n, value in feed.items():
            array = np.ascontiguousarray(value.astype(self._np_dtype(n), copy=False))
            tensor = torch.from_numpy(array).to(self.device)
            keep.append(tensor)
            if not self.context.set_input_shape(n, tuple(array.shape)):
                raise DataError(f"{self.name}: input {n!r} shape {list(array.shape)} is outside the engine's profile")
            self.context.set_tensor_address(n, tensor.data_ptr())
        outputs: dict[str, Any] = {}
        for n in self.output_names or []:
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise DataError(f"{self.name}: output {n!r} shape {shape} is unresolved")
            torch_dtype = torch.from_numpy(np.zeros(0, self._np_dtype(n))).dtype
            out = torch.empty(shape, dtype=torch_dtype, device=self.device)
            outputs[n] = out
            self.context.set_tensor_address(n, out.data_ptr())
        # The stream the input copies were queued on, so the engine sees the copied data.
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DataError(f"{self.name}: TensorRT execution failed")
        stream.synchronize()
        return {n: t.cpu().numpy() for n, t in outputs.items()}
