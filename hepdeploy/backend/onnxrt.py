"""ONNX Runtime: the one module that creates inference sessions.

Every stage that runs an ONNX graph comes here: the conversion self-check, the optimize
checks and offline graph optimisation, validation and localisation, the repository
check. Sessions are made in one way (providers, threads, log level, offline optimisation)
and every failure of ONNX Runtime becomes a :class:`ModelLoadError` or :class:`DataError`
whose message is the meaningful line of ONNX Runtime's own, chained to it.

The GPU build of ONNX Runtime lists CUDA/TensorRT providers it cannot use on a machine
without a GPU and falls back to the CPU without raising: ``providers_used`` says what
really runs.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hepdeploy.artifacts import load_onnx
from hepdeploy.backend.base import Runner
from hepdeploy.environment import package_version
from hepdeploy.errors import (
    BadInputError,
    DataError,
    DependencyMissingError,
    HepDeployError,
    ModelLoadError,
    NativeCrashError,
    first_line,
)
from hepdeploy.fsutil import check_input_file
from hepdeploy.lifetime import work_folder
from hepdeploy.plan_compat import ort_tensorrt_problem
from hepdeploy.spec import TensorSpec

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
ProviderList = Sequence["str | tuple[str, dict[str, Any]]"]

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}


# ORT's messages carry the C++ source position and function signature of the check that failed.
_ORT_SOURCE_POSITION = re.compile(r"(failed:)?\S*onnxruntime_src\S*:\d+ .*?\) ")


def ort_error_line(error: BaseException) -> str:
    """The meaningful line of an ONNX Runtime error, without its '[ONNXRuntimeError] : N : CODE :' prefix
    and the C++ source position inside it."""
    text = first_line(error, limit=4000)
    for marker in (" : INVALID_GRAPH : ", " : INVALID_ARGUMENT : ", " : FAIL : ", " : NOT_IMPLEMENTED : ",
                   " : RUNTIME_EXCEPTION : ", " : NO_SUCHFILE : ", " : INVALID_PROTOBUF : "):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    text = _ORT_SOURCE_POSITION.sub("failed: ", text)
    # Whole, up to a generous bound: the cause is often at the end ("... of operator (DequantizeLinear) is invalid").
    return text if len(text) <= 1500 else text[:1500] + " ..."


def _check_tensorrt_provider(ort_version: str) -> None:
    """Refuse ONNX Runtime's TensorRT provider over a TensorRT it does not support (it would fail obscurely)."""
    tensorrt_version = package_version("tensorrt")
    reason = ort_tensorrt_problem(ort_version, tensorrt_version) if tensorrt_version else None
    if reason:
        raise DependencyMissingError(reason)


def create_session(
    model: Any,
    *,
    providers: ProviderList | None = None,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    optimization: Literal["default", "basic", "none"] = "default",
    optimized_model_path: Path | None = None,
    where: str | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` over a path, serialized bytes or a ModelProto.

    Threads default to ``$OMP_NUM_THREADS`` when set (ONNX Runtime's own choice otherwise).
    ``optimization="basic"`` with ``optimized_model_path`` writes ORT's provider-independent
    rewrite of the graph there. A model ONNX Runtime refuses raises ModelLoadError.
    """
    import onnxruntime as ort

    label = where or (str(model) if isinstance(model, (str, Path)) else "model")
    source: str | bytes
    if isinstance(model, (str, Path)):
        source = str(check_input_file(Path(model), "ONNX model"))  # by path: external data next to it is found
    elif isinstance(model, bytes):
        source = model
    else:
        source = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user through our own one-line messages
    if intra_op_threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        intra_op_threads = int(os.environ["OMP_NUM_THREADS"])
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads is not None:
        options.inter_op_num_threads = inter_op_threads
    if optimization == "basic":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif optimization == "none":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    wanted = list(providers) if providers else [CPU]
    if any((p if isinstance(p, str) else p[0]) == "TensorrtExecutionProvider" for p in wanted):
        _check_tensorrt_provider(ort.__version__)
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=wanted)
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
        raise ModelLoadError(f"{label}: ONNX Runtime cannot load the model: {ort_error_line(error)}") from error
    names = {p if isinstance(p, str) else p[0] for p in wanted}
    missing = sorted(names - set(session.get_providers()))
    if missing:
        log.warning("%s: requested provider(s) %s not available; running on %s", label, ", ".join(missing),
                    ", ".join(session.get_providers()))
    return session


class OnnxRuntimeRunner(Runner):
    """An ONNX model in ONNX Runtime.

    ``model`` is a path, serialized bytes or an ``onnx.ModelProto``. ``output_names``
    selects outputs; names that are not graph outputs (intermediate tensors) are added as
    outputs to an in-memory copy, so a localiser can read any tensor.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model: Any,
        providers: ProviderList | None = None,
        intra_op_threads: int | None = None,
        output_names: Sequence[str] | None = None,
        name: str | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        label = str(model) if isinstance(model, (str, Path)) else getattr(getattr(model, "graph", None), "name", "")
        label = label or "model"
        if output_names:
            proto = model if hasattr(model, "graph") else _load_proto(model)
            model = with_outputs(proto, output_names)
        self.session = create_session(model, providers=providers, intra_op_threads=intra_op_threads,
                                      inter_op_threads=inter_op_threads, where=label)
        self._model = model
        self._bytes_per_row: float | None = None
        inputs = [_tensor_spec(value) for value in self.session.get_inputs()]
        names = list(output_names) if output_names else [o.name for o in self.session.get_outputs()]
        super().__init__(name or f"onnxruntime:{label}", inputs, names)

    @property
    def providers_used(self) -> list[str]:
        return list(self.session.get_providers())

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {n: np.ascontiguousarray(v) for n, v in feed.items()}
        try:
            values = self.session.run(self.output_names, feed)
        except Exception as error:  # ORT's own error types
            raise DataError(f"{self.name}: ONNX Runtime failed to run: {ort_error_line(error)}") from error
        return dict(zip(self.output_names or [], values, strict=True))

    def rows_within(self, budget_bytes: int, inputs: dict[str, np.ndarray]) -> int | None:
        if self._bytes_per_row is None:
            self._bytes_per_row = activation_bytes_per_row(self._model, inputs)
        if self._bytes_per_row <= 0:
            return None
        return max(1, int(budget_bytes // self._bytes_per_row))

    def _close(self) -> None:
        del self.session
        self._model = None


def _load_proto(model: Any) -> onnx.ModelProto:
    import onnx

    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return load_onnx(Path(model))


def _tensor_spec(value: Any) -> TensorSpec:
    """A TensorSpec of a session input; the name is kept exactly as the graph has it."""
    shape = [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d.isidentifier() else f"dim{k}")
             for k, d in enumerate(value.shape or [])]
    dtype = _ORT_TYPES.get(value.type, value.type)
    return TensorSpec.model_construct(name=value.name, dtype=dtype, shape=shape, low=None, high=None, index_of=None)


PROBE_ROWS = 8


def intermediate_values(model: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every node output of ``model`` (a path, bytes or ModelProto) in one run on ``feed``, by name."""
    proto = model if hasattr(model, "graph") else _load_proto(model)
    names = list(dict.fromkeys(out for node in proto.graph.node for out in node.output if out))
    return run_once(with_outputs(proto, names), feed)


def activation_bytes_per_row(model: Any, inputs: dict[str, np.ndarray]) -> float:
    """Bytes of every intermediate tensor per row of batch-first ``inputs``: one run of the graph on its
    first ``PROBE_ROWS`` rows with every node output exposed (shapes as the data makes them, k-NN and
    masks included), divided by those rows. 0 when the probe does not run (the real run will say why)."""
    rows = min(PROBE_ROWS, min(np.shape(v)[0] for v in inputs.values()))
    probe = {name: np.ascontiguousarray(value[:rows]) for name, value in inputs.items()}
    try:
        values = intermediate_values(model, probe)
    except HepDeployError as error:
        log.debug("activation size probe failed: %s", error)
        return 0.0
    return sum(np.asarray(v).nbytes for v in values.values()) / max(rows, 1)


def run_once(model: Any, feeds: dict[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """Run once on the CPU provider with ``threads`` threads: every graph output, by name."""
    runner = OnnxRuntimeRunner(model, intra_op_threads=threads, inter_op_threads=1)
    with runner:
        return runner.run(feeds)


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names`` (intermediate tensors allowed).

    Typed outputs come from shape inference where it can type them; their shapes are
    dropped, since shapes inferred for one batch size must not constrain another.
    """
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
            inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=False)
            typed = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input]}
        except Exception as error:  # shape inference is only a help here
            log.debug("shape inference failed: %s", first_line(error))
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


def check_in_child(model: Any, feeds: dict[str, np.ndarray] | None = None, where: str = "model",
                   timeout_s: float = 600.0) -> None:
    """Create a session on ``model`` (and run ``feeds`` once) in a child process.

    A graph that makes ONNX Runtime crash natively (a segmentation fault or an abort inside
    session creation, as ModelOpt AutoCast output has done on a Particle Transformer) ends the
    child, not this process: the crash becomes a NativeCrashError naming the signal. A model
    ONNX Runtime refuses is a ModelLoadError with ONNX Runtime's own line. Costs one interpreter
    start with numpy and onnxruntime (~0.3 s).
    """
    with work_folder("ort-child") as folder:
        if isinstance(model, (str, Path)):
            path = str(check_input_file(Path(model), "ONNX model"))
        else:
            path = str(Path(folder) / "model.onnx")
            Path(path).write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        command = [sys.executable, "-m", "hepdeploy.backend.onnxrt_child", path]
        if feeds is not None:
            np.savez(Path(folder) / "feeds.npz", **feeds)
            command.append(str(Path(folder) / "feeds.npz"))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as error:
            raise NativeCrashError(f"{where}: ONNX Runtime did not finish within {timeout_s:.0f} s") from error
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise NativeCrashError(f"{where}: ONNX Runtime crashed ({name}) creating or running a session; "
                               "the model was not used")
    if done.returncode != 0:
        line = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelLoadError(f"{where}: ONNX Runtime cannot load or run the model: {ort_error_line(RuntimeError(line))}")


def optimize_offline(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's basic-level (provider-independent) rewrite of ``model``, saved back to ONNX."""
    import onnx

    with work_folder("ort") as folder:
        target = Path(folder) / "optimized.onnx"
        create_session(model, intra_op_threads=1, optimization="basic", optimized_model_path=target,
                       where="offline optimisation")
        return onnx.load(str(target))
