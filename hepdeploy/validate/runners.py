"""Runners: one interface over every backend that can execute a model.

``run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]``. The validator and the
conversion self-check compare runners without knowing which backend each holds.
Framework imports (torch, tensorflow, onnxruntime, tensorrt) happen inside the runners,
so importing this module is cheap.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from hepdeploy.errors import BadInputError, DataError, DependencyMissingError, ModelLoadError, SpecError, first_line

if TYPE_CHECKING:
    import onnx

    from hepdeploy.spec import ModelSpec

log = logging.getLogger("hepdeploy.validate.runners")


@runtime_checkable
class Runner(Protocol):
    """Something that runs a model on named numpy inputs and returns named numpy outputs."""

    name: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def run_chunked(
    runner: Runner, inputs: dict[str, np.ndarray], chunk_size: int, batched: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Run ``inputs`` in chunks of ``chunk_size`` along the batch axis (axis 0) and concatenate.

    ``batched`` names the inputs that carry the batch axis (default: all inputs whose
    first dimension equals the largest first dimension). Other inputs are passed whole
    to every chunk. Outputs are concatenated along axis 0.
    """
    if chunk_size < 1:
        raise BadInputError(f"chunk size must be >= 1, got {chunk_size}")
    if not inputs:
        return runner.run(inputs)
    if batched is None:
        n = max((a.shape[0] for a in inputs.values() if np.ndim(a) > 0), default=0)
        batched = [k for k, a in inputs.items() if np.ndim(a) > 0 and a.shape[0] == n]
    if not batched:
        return runner.run(inputs)
    sizes = {inputs[k].shape[0] for k in batched}
    if len(sizes) != 1:
        raise DataError(f"batched inputs disagree on the batch size: {sorted(sizes)}")
    total = sizes.pop()
    if total <= chunk_size:
        return runner.run(inputs)
    pieces: list[dict[str, np.ndarray]] = []
    for start in range(0, total, chunk_size):
        chunk = {k: (v[start : start + chunk_size] if k in batched else v) for k, v in inputs.items()}
        pieces.append(runner.run(chunk))
    return {name: np.concatenate([p[name] for p in pieces], axis=0) for name in pieces[0]}


def _to_numpy_outputs(values: Any, output_names: Sequence[str] | None, who: str) -> dict[str, np.ndarray]:
    """Flatten a framework's outputs (tensor, list/tuple, dict) into named numpy arrays."""
    if isinstance(values, dict):
        if output_names and all(n in values for n in output_names):
            items = [values[n] for n in output_names]
        else:
            items = [values[k] for k in _natural_sorted(values)]
    elif isinstance(values, (list, tuple)):
        items = list(values)
    else:
        items = [values]
    arrays = [_as_numpy(v) for v in items]
    names = list(output_names) if output_names else [f"output_{k}" for k in range(len(arrays))]
    if len(names) != len(arrays):
        raise SpecError(f"{who}: the model returns {len(arrays)} output(s) but the spec lists {len(names)}")
    return dict(zip(names, arrays, strict=True))


def _natural_sorted(keys: Any) -> list[Any]:
    import re

    def key(text: Any) -> list[Any]:
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text))]

    return sorted(keys, key=key)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy"):  # tf.Tensor
        return np.asarray(value.numpy())
    return np.asarray(value)


class OnnxRuntimeRunner:
    """An ONNX model in ONNX Runtime.

    ``model`` is a path, serialized bytes or an ``onnx.ModelProto``. ``output_names``
    selects outputs; names that are not graph outputs (intermediate tensors) are added
    as outputs to an in-memory copy, so a localiser can read any tensor.
    ``providers_used`` says which execution providers the session really has: the GPU
    build silently falls back to CPU when CUDA is unavailable.
    """

    def __init__(
        self,
        model: Path | str | bytes | onnx.ModelProto,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        intra_op_threads: int | None = None,
        output_names: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.requested_providers = list(providers) if providers else ["CPUExecutionProvider"]
        data, label = self._model_bytes(model, output_names)
        self.name = name or f"onnxruntime:{label}"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
            options.intra_op_num_threads = int(os.environ["OMP_NUM_THREADS"])
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=self.requested_providers)
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            first = first_line(error)
            raise ModelLoadError(f"{label}: ONNX Runtime cannot load the model: {first}") from None
        self.providers_used: list[str] = list(self.session.get_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = list(output_names) if output_names else [o.name for o in self.session.get_outputs()]
        wanted = {p if isinstance(p, str) else p[0] for p in self.requested_providers}
        missing = sorted(wanted - set(self.providers_used))
        if missing:
            log.warning("%s: requested provider(s) %s not available; running on %s",
                        label, ", ".join(missing), ", ".join(self.providers_used))

    @staticmethod
    def _model_bytes(model: Any, output_names: Sequence[str] | None) -> tuple[bytes | str, str]:
        import onnx

        if isinstance(model, (str, Path)):
            from hepdeploy.artifacts import load_onnx

            path = Path(model)
            if not output_names:
                from hepdeploy.fsutil import check_input_file

                check_input_file(path, "ONNX model")
                return str(path), str(path)  # by path, so external-data files next to it are found
            proto = load_onnx(path)
            label = str(path)
        elif isinstance(model, bytes):
            if not output_names:
                return model, "model"
            proto = onnx.load_from_string(model)
            label = "model"
        else:
            proto = model
            label = proto.graph.name or "model"
            if not output_names:
                return proto.SerializeToString(), label
        return _with_outputs(proto, output_names).SerializeToString(), label

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"{self.name}: no data for input(s) {', '.join(missing)}")
        feed = {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}
        try:
            values = self.session.run(self.output_names, feed)
        except Exception as error:
            first = first_line(error)
            raise DataError(f"{self.name}: ONNX Runtime failed to run: {first}") from None
        return dict(zip(self.output_names, values, strict=True))


class RenamedRunner:
    """Runs a model whose tensors have other names, translating the names (spec name -> model name)."""

    def __init__(self, inner: Runner, inputs: dict[str, str], outputs: dict[str, str], name: str | None = None):
        self.inner, self.inputs, self.outputs = inner, dict(inputs), dict(outputs)
        self.name = name or inner.name
        self.input_names = list(self.inputs)
        self.output_names = list(self.outputs)

    @property
    def providers_used(self) -> list[str]:
        return list(getattr(self.inner, "providers_used", []))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise DataError(f"{self.name}: no data for input(s) {', '.join(missing)}")
        produced = self.inner.run({self.inputs[k]: inputs[k] for k in self.inputs})
        return {new: produced[old] for new, old in self.outputs.items()}


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names`` (intermediates allowed)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    known = {o.name: o for o in copy.graph.output}
    produced = {out for node in copy.graph.node for out in node.output} | {i.name for i in copy.graph.input}
    produced |= {init.name for init in copy.graph.initializer}
    unknown = [n for n in names if n not in known and n not in produced]
    if unknown:
        raise BadInputError(f"the model has no tensor named {', '.join(unknown)}")
    typed: dict[str, onnx.ValueInfoProto] = {}
    if any(n not in known for n in names):
        try:
            inferred = onnx.shape_inference.infer_shapes(copy)
            typed = {v.name: v for v in inferred.graph.value_info}
        except Exception:  # shape inference is only a help here
            typed = {}
    new_outputs = []
    for n in names:
        if n in known:
            new_outputs.append(known[n])
        elif n in typed and typed[n].type.tensor_type.elem_type:
            value = onnx.ValueInfoProto()
            value.CopyFrom(typed[n])
            value.type.tensor_type.ClearField("shape")
            new_outputs.append(value)
        else:
            new_outputs.append(onnx.ValueInfoProto(name=n))
    del copy.graph.output[:]
    copy.graph.output.extend(new_outputs)
    return copy


def _torch_dtype_input(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


class TorchModuleRunner:
    """A ``torch.nn.Module`` (or ScriptModule, or an ExportedProgram's module) on the CPU."""

    def __init__(self, module: Any, input_names: Sequence[str], output_names: Sequence[str] | None = None,
                 name: str = "torch") -> None:
        self.module = module
        self.input_names = list(input_names)
        self.output_names = list(output_names) if output_names else None
        self.name = name
        if hasattr(module, "eval"):
            try:
                module.eval()
            except NotImplementedError:  # an ExportedProgram's module() is already in eval form
                pass

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"{self.name}: no data for input(s) {', '.join(missing)}")
        args = [_torch_dtype_input(inputs[n]) for n in self.input_names]
        with torch.inference_mode():
            values = self.module(*args)
        return _to_numpy_outputs(values, self.output_names, self.name)


class TorchScriptRunner(TorchModuleRunner):
    def __init__(self, path: Path | str, input_names: Sequence[str], output_names: Sequence[str] | None = None):
        from hepdeploy.convert.loaders import load_torchscript

        super().__init__(load_torchscript(Path(path)), input_names, output_names, name=f"torchscript:{path}")


class ExportedProgramRunner(TorchModuleRunner):
    def __init__(self, path: Path | str, input_names: Sequence[str], output_names: Sequence[str] | None = None):
        from hepdeploy.convert.loaders import load_exported_program

        program = load_exported_program(Path(path))
        super().__init__(program.module(), input_names, output_names, name=f"exported_program:{path}")


class KerasRunner:
    """A Keras model (object or ``.keras``/``.h5`` path); inputs passed positionally in spec order."""

    def __init__(self, model_or_path: Any, input_names: Sequence[str], output_names: Sequence[str] | None = None):
        if isinstance(model_or_path, (str, Path)):
            from hepdeploy.convert.loaders import load_keras

            self.model = load_keras(Path(model_or_path))
            self.name = f"keras:{model_or_path}"
        else:
            self.model = model_or_path
            self.name = "keras"
        self.input_names = list(input_names)
        self.output_names = list(output_names) if output_names else None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"{self.name}: no data for input(s) {', '.join(missing)}")
        args = [inputs[n] for n in self.input_names]
        # Pass the inputs in the structure the model was built with (a list, or one tensor).
        as_list = len(args) > 1 or isinstance(getattr(self.model, "input", None), (list, tuple))
        values = self.model(args if as_list else args[0], training=False)
        names = self.output_names or [n for n in getattr(self.model, "output_names", None) or [] if n.isidentifier()]
        return _to_numpy_outputs(values, names or None, self.name)


class SavedModelRunner:
    """A TensorFlow SavedModel, called through the same function the converter exports."""

    def __init__(self, path: Path | str, input_names: Sequence[str], output_names: Sequence[str] | None = None,
                 input_specs: Sequence[Any] | None = None):
        from hepdeploy.convert.loaders import load_savedmodel_callable

        self.function: Callable[..., Any] = load_savedmodel_callable(Path(path), input_specs)
        self.input_names = list(input_names)
        self.output_names = list(output_names) if output_names else None
        self.name = f"savedmodel:{path}"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"{self.name}: no data for input(s) {', '.join(missing)}")
        values = self.function(*[inputs[n] for n in self.input_names])
        return _to_numpy_outputs(values, self.output_names, self.name)


class TensorRTEngineRunner:
    """A serialized TensorRT engine (``.plan``), TensorRT 10/11 tensor-name API.

    Buffers are torch CUDA tensors (no pycuda). Raises DependencyMissingError where
    TensorRT or a CUDA device is missing.
    """

    _NP_FROM_TRT = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                    "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}

    def __init__(self, plan_path: Path | str, device: int = 0) -> None:
        try:
            import tensorrt as trt
        except (ImportError, OSError) as error:
            raise DependencyMissingError(f"TensorRT is not available ({error}); install the [tensorrt] extra on a "
                                         "machine with an NVIDIA GPU") from None
        import torch

        if not torch.cuda.is_available():
            raise DependencyMissingError("TensorRT engine needs a CUDA device; torch sees none")
        from hepdeploy.fsutil import check_input_file

        path = check_input_file(Path(plan_path), "TensorRT engine")
        self.name = f"tensorrt:{path}"
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
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.providers_used = ["TensorRT"]

    def _np_dtype(self, name: str) -> np.dtype:
        trt_type = self.engine.get_tensor_dtype(name)
        try:
            return np.dtype(self._trt.nptype(trt_type))
        except (TypeError, KeyError):  # e.g. BF16/FP8 have no numpy type in some releases
            if trt_type.name not in self._NP_FROM_TRT:
                raise DataError(f"{self.name}: tensor {name!r} has TensorRT type {trt_type.name}, "
                                "which has no numpy equivalent here") from None
            return np.dtype(self._NP_FROM_TRT[trt_type.name])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"{self.name}: no data for input(s) {', '.join(missing)}")
        keep: list[torch.Tensor] = []
        for n in self.input_names:
            array = np.ascontiguousarray(inputs[n].astype(self._np_dtype(n), copy=False))
            tensor = torch.from_numpy(array).to(self.device)
            keep.append(tensor)
            if not self.context.set_input_shape(n, tuple(array.shape)):
                raise DataError(f"{self.name}: input {n!r} shape {list(array.shape)} is outside the engine's profile")
            self.context.set_tensor_address(n, tensor.data_ptr())
        outputs: dict[str, torch.Tensor] = {}
        for n in self.output_names:
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


def source_runner(spec: ModelSpec, loaded: Any | None = None) -> Runner:
    """A runner over the spec's source model (loaded by the convert stage's loaders).

    ``loaded`` reuses an already loaded model object (nn.Module, Keras model, SavedModel
    function) instead of loading it again.
    """
    from hepdeploy.convert import loaders

    inputs = [t.name for t in spec.inputs]
    outputs = [t.name for t in spec.outputs]
    framework = spec.source.framework
    if framework == "zoo":
        raise SpecError(f"{spec.name}: a 'zoo' source must be exported first (convert does this); "
                        "use the exported spec")
    if framework in ("torch", "torchscript", "exported_program"):
        module = loaded if loaded is not None else loaders.load_torch_source(spec)
        if hasattr(module, "module") and framework == "exported_program" and not hasattr(module, "forward"):
            module = module.module()
        return TorchModuleRunner(module, inputs, outputs, name=f"{framework}:{spec.source.path or spec.source.factory}")
    if framework == "keras":
        model = loaded if loaded is not None else loaders.load_keras(spec.resolve(spec.source.path))
        runner = KerasRunner(model, inputs, outputs)
        runner.name = f"keras:{spec.source.path}"
        return runner
    if framework == "savedmodel":
        runner = SavedModelRunner.__new__(SavedModelRunner)
        runner.function = loaded if loaded is not None else loaders.load_savedmodel_callable(
            spec.resolve(spec.source.path), loaders.tf_input_signature(spec))
        runner.input_names, runner.output_names = inputs, outputs
        runner.name = f"savedmodel:{spec.source.path}"
        return runner
    if framework == "onnx":
        runner = OnnxRuntimeRunner(spec.resolve(spec.source.path), name=f"onnx:{spec.source.path}")
        if runner.input_names == inputs and [o for o in runner.output_names] == outputs:
            return runner
        # The file's own tensor names differ from the spec's: translate positionally, as convert does.
        if len(runner.input_names) != len(inputs) or len(runner.output_names) != len(outputs):
            raise SpecError(f"{spec.source.path}: the model has {len(runner.input_names)} input(s) and "
                            f"{len(runner.output_names)} output(s); the spec lists {len(inputs)} and {len(outputs)}")
        return RenamedRunner(runner, dict(zip(inputs, runner.input_names, strict=True)),
                             dict(zip(outputs, runner.output_names, strict=True)), name=runner.name)
    raise SpecError(f"{spec.name}: no runner for framework {framework!r}")


def artifact_runner(path: Path | str, providers: Sequence[str] | None = None,
                    intra_op_threads: int | None = None) -> Runner:
    """A runner over a deployable artifact: ``.onnx`` in ONNX Runtime (CPU unless ``providers``
    say otherwise), ``.plan``/``.engine`` in TensorRT."""
    path = Path(path)
    if path.suffix in (".plan", ".engine"):
        return TensorRTEngineRunner(path)
    if path.suffix != ".onnx":
        raise ModelLoadError(f"{path}: not a deployable artifact (.onnx, or a TensorRT .plan/.engine); "
                             "convert the model first or give its spec")
    return OnnxRuntimeRunner(path, providers=providers, intra_op_threads=intra_op_threads)
