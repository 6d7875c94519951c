"""The Python-backend twin of an ONNX model: Triton's Python backend running the ONNX file with ONNX Runtime.

A twin folder holds ``config.pbtxt`` with ``backend: "python"`` and the *same* tensor names, data
types, dims, ``max_batch_size`` and dynamic batching as the ONNX model's config (it is derived from
that config message, never written by hand), and a version folder with ``model.py`` and
``model.onnx``. It serves where a Triton build lacks the ONNX Runtime backend (PyTriton-style
servers, the bundled binary in :mod:`hepdeploy.triton.server`) and lets tests drive a real server.

``model.py`` concatenates the requests that Triton's dynamic batcher hands it in one ``execute`` call
along the batch axis (when the model has one and the non-batch dims agree), runs ONNX Runtime once,
and splits the outputs back per request, so batching behaves as in the ONNX Runtime backend.
"""
from __future__ import annotations

import site
import sys
from typing import TYPE_CHECKING, Any

from hepdeploy import __version__
from hepdeploy.fsutil import check_safe_name
from hepdeploy.spec import TensorSpec
from hepdeploy.triton.config import numpy_dtype_of

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

ONNX_FILENAME = "model.onnx"
MODEL_PY_FILENAME = "model.py"

# Tensors in and out of a Python-backend model, shared by every model.py hepdeploy writes.
TENSOR_IO_SOURCE = '''_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def _input_array(request, name):
    # Through DLPack, for the same reason as _output_tensor: as_numpy() misreads buffers under numpy 2.
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"the request has no input {name!r}")
    try:
        return np.from_dlpack(tensor)
    except Exception:
        if _NUMPY_2:
            raise
        return tensor.as_numpy()


def _output_tensor(name, array):
    # Through DLPack: the stub's pybind11 numpy path (pb_utils.Tensor(name, array)) sends empty
    # buffers under numpy 2 (Triton 2.51 stubs were built for numpy 1); DLPack does not depend on it.
    try:
        return pb_utils.Tensor.from_dlpack(name, array)
    except Exception:
        if _NUMPY_2:
            raise
        return pb_utils.Tensor(name, array)
'''

_MODEL_PY = '''"""Triton Python-backend model written by hepdeploy {version}.

Runs {onnx_filename} (next to this file) with ONNX Runtime on the CPU, with the tensor names, dims and
batching of config.pbtxt. Requests that the dynamic batcher hands over together are run as one batch.
"""
import json
import os
import sys

sys.dont_write_bytecode = True  # nothing written into the model repository

ONNX_FILENAME = {onnx_filename!r}
# Where onnxruntime was installed when this file was written; used only when the stub's Python
# cannot import it (the stub ignores PYTHONPATH). $HEPDEPLOY_SITE_PACKAGES is tried first.
WRITER_SITE_PACKAGES = {site_packages!r}


def _import_onnxruntime():
    try:
        import onnxruntime
        return onnxruntime
    except ImportError:
        pass
    extra = [p for p in os.environ.get("HEPDEPLOY_SITE_PACKAGES", "").split(os.pathsep) if p]
    for path in extra + list(WRITER_SITE_PACKAGES):
        if os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)
    import onnxruntime
    return onnxruntime


import numpy as np  # noqa: E402  (the backend's utilities import numpy themselves)
import triton_python_backend_utils as pb_utils  # noqa: E402

{tensor_io}

class TritonPythonModel:
    def initialize(self, args):
        ort = _import_onnxruntime()
        config = json.loads(args["model_config"])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        parameters = {{k: v.get("string_value", "") for k, v in config.get("parameters", {{}}).items()}}
        options = ort.SessionOptions()
        options.log_severity_level = 3
        intra = int(parameters.get("intra_op_thread_count") or 0)
        inter = int(parameters.get("inter_op_thread_count") or 0)
        if intra > 0:
            options.intra_op_num_threads = intra
        if inter > 0:
            options.inter_op_num_threads = inter
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        path = os.path.join(args["model_repository"], args["model_version"], ONNX_FILENAME)
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        graph_inputs = {{i.name for i in self.session.get_inputs()}}
        graph_outputs = {{o.name for o in self.session.get_outputs()}}
        missing = [n for n, _ in self.inputs if n not in graph_inputs] + [
            n for n, _ in self.outputs if n not in graph_outputs]
        if missing:
            raise ValueError(f"{{ONNX_FILENAME}} has no tensor(s) {{', '.join(missing)}} named in config.pbtxt")

    def _run(self, feeds):
        values = self.session.run([n for n, _ in self.outputs], feeds)
        return [np.ascontiguousarray(v.astype(dtype, copy=False)) for v, (_, dtype) in zip(values, self.outputs)]

    def execute(self, requests):
        arrays = []
        for request in requests:
            arrays.append({{n: _input_array(request, n) for n, _ in self.inputs}})
        results = [None] * len(requests)
        if self.max_batch_size > 0 and len(requests) > 1:
            # One ONNX Runtime call per group of requests whose non-batch dims agree.
            groups = {{}}
            for index, feeds in enumerate(arrays):
                key = tuple((n, feeds[n].shape[1:]) for n, _ in self.inputs)
                groups.setdefault(key, []).append(index)
            for members in groups.values():
                if len(members) == 1:
                    continue
                try:
                    joined = {{n: np.concatenate([arrays[i][n] for i in members]) for n, _ in self.inputs}}
                    outputs = self._run(joined)
                except Exception:  # fall back to one call per request, which reports its own error
                    continue
                start = 0
                for i in members:
                    size = arrays[i][self.inputs[0][0]].shape[0]
                    results[i] = [o[start:start + size] for o in outputs]
                    start += size
        responses = []
        for index, feeds in enumerate(arrays):
            try:
                outputs = results[index] if results[index] is not None else self._run(feeds)
            except Exception as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"onnxruntime: {{first}}")))
                continue
            tensors = [_output_tensor(n, v) for (n, _), v in zip(self.outputs, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.session = None
'''


def environment_site_packages() -> list[str]:
    """This environment's site-packages folders (where onnxruntime and numpy live)."""
    paths = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    return [p for p in dict.fromkeys([*paths, *[p for p in sys.path if p.endswith("site-packages")]]) if p]


def model_py_text(onnx_filename: str = ONNX_FILENAME, site_packages: list[str] | None = None) -> str:
    """The ``model.py`` of a twin (deterministic for a given environment)."""
    check_safe_name(onnx_filename, "ONNX file name")
    return _MODEL_PY.format(version=__version__, onnx_filename=onnx_filename, tensor_io=TENSOR_IO_SOURCE,
                            site_packages=list(site_packages if site_packages is not None else environment_site_packages()))


def python_backend_config(onnx_config: model_config_pb2.ModelConfig, name: str | None = None) -> model_config_pb2.ModelConfig:
    """The twin's config from an ONNX Runtime model's config: same tensors, dims and batching.

    Kept: inputs/outputs (names, data types, dims, reshape), max_batch_size, dynamic batching,
    sequence batching, warm-up, version policy and ONNX Runtime thread parameters (model.py reads
    them). Changed: ``backend: "python"``, CPU instances (the twin runs ONNX Runtime on the CPU),
    no ONNX Runtime/TensorRT optimization block, no default_model_filename.
    """
    from tritonclient.grpc import model_config_pb2 as pb2

    config = pb2.ModelConfig()
    config.CopyFrom(onnx_config)
    if name is not None:
        config.name = check_safe_name(name, "Triton model name")
    config.ClearField("platform")
    config.backend = "python"
    config.ClearField("optimization")
    config.ClearField("default_model_filename")
    config.ClearField("cc_model_filenames")
    kept = {k: v for k, v in onnx_config.parameters.items()
            if k in ("intra_op_thread_count", "inter_op_thread_count")}
    config.ClearField("parameters")
    for key, value in kept.items():
        config.parameters[key].string_value = value.string_value
    count = sum(g.count for g in onnx_config.instance_group) or 1
    config.ClearField("instance_group")
    group = config.instance_group.add()
    group.kind = pb2.ModelInstanceGroup.Kind.Value("KIND_CPU")
    group.count = max(1, count)
    return config


def same_interface(a: model_config_pb2.ModelConfig, b: model_config_pb2.ModelConfig) -> list[str]:
    """Differences in tensor names, types, dims and batching between two configs (empty when equal)."""
    problems = []
    if a.max_batch_size != b.max_batch_size:
        problems.append(f"max_batch_size {a.max_batch_size} != {b.max_batch_size}")
    for kind in ("input", "output"):
        left = [(t.name, t.data_type, list(t.dims)) for t in getattr(a, kind)]
        right = [(t.name, t.data_type, list(t.dims)) for t in getattr(b, kind)]
        if left != right:
            problems.append(f"{kind}s differ: {left} != {right}")
    if a.HasField("dynamic_batching") != b.HasField("dynamic_batching") or (
            a.dynamic_batching != b.dynamic_batching):
        problems.append("dynamic_batching differs")
    return problems


def tensor_specs_of_config(config: model_config_pb2.ModelConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Tensor specs as a served model announces them (batch axis named ``batch`` when batched)."""
    from tritonclient.grpc import model_config_pb2 as pb2

    def spec(tensor: Any, position: int) -> TensorSpec:
        shape: list[int | str] = [d if d > 0 else f"dim{position}_{k}" for k, d in enumerate(tensor.dims)]
        if config.max_batch_size > 0:
            shape = ["batch", *shape]
        dtype = numpy_dtype_of(pb2.DataType.Name(tensor.data_type))
        return TensorSpec.model_construct(name=tensor.name, dtype=dtype, shape=shape)

    return ([spec(t, i) for i, t in enumerate(config.input)], [spec(t, i) for i, t in enumerate(config.output)])
