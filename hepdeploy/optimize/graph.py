"""What precision a graph really carries, and small helpers every optimize step shares.

``precision_summary`` reads a model and counts what proves its precision (Q/DQ nodes,
int8 weight initializers, FP16 initializers, the dtypes of graph inputs/outputs), so a
step can refuse to call an FP32 copy "INT8" and tests can assert the claim.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.errors import ConversionError, first_line
from hepdeploy.sampling import sample_inputs, typical_sizes
from hepdeploy.spec import ModelSpec, TensorSpec

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("hepdeploy.optimize.graph")

FLOAT, UINT8, INT8, FLOAT16 = 1, 2, 3, 10
# The ops whose INT8 kernels make quantization worth it; Q/DQ around only Add or Relu is not.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class PrecisionSummary:
    """Counts that show which precision a graph computes in."""

    op_counts: dict[str, int] = field(default_factory=dict)
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    int8_weights: int = 0  # int8 initializers feeding a DequantizeLinear (quantized weights)
    quantized_compute: int = 0  # Conv/ConvTranspose/Gemm/MatMul nodes fed by a DequantizeLinear
    fp16_initializers: int = 0
    fp32_initializers: int = 0
    input_dtypes: dict[str, int] = field(default_factory=dict)
    output_dtypes: dict[str, int] = field(default_factory=dict)

    @property
    def has_qdq(self) -> bool:
        return self.quantize_nodes > 0 and self.dequantize_nodes > 0

    @property
    def io_is_fp32(self) -> bool:
        """Every floating graph input and output is FP32 (integer inputs such as indices are fine)."""
        dtypes = [*self.input_dtypes.values(), *self.output_dtypes.values()]
        return all(d == FLOAT or d not in (FLOAT16, 11, 16) for d in dtypes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "quantize_nodes": self.quantize_nodes,
            "dequantize_nodes": self.dequantize_nodes,
            "int8_weights": self.int8_weights,
            "quantized_compute_nodes": self.quantized_compute,
            "fp16_initializers": self.fp16_initializers,
            "fp32_initializers": self.fp32_initializers,
            "nodes": sum(self.op_counts.values()),
        }


def precision_summary(model: onnx.ModelProto) -> PrecisionSummary:
    graph = model.graph
    init_types = {init.name: init.data_type for init in graph.initializer}
    # Constants written as Constant nodes count as initializers too.
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t is not None:
                    init_types[node.output[0]] = attribute.t.data_type
    summary = PrecisionSummary(op_counts=dict(Counter(node.op_type for node in graph.node)))
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            summary.quantize_nodes += 1
        elif node.op_type == "DequantizeLinear":
            summary.dequantize_nodes += 1
            if init_types.get(node.input[0]) in (INT8, UINT8):
                summary.int8_weights += 1
    summary.quantized_compute = len(lowered_nodes(model, COMPUTE_OPS))
    summary.fp16_initializers = sum(1 for t in init_types.values() if t == FLOAT16)
    summary.fp32_initializers = sum(1 for t in init_types.values() if t == FLOAT)
    initializers = {init.name for init in graph.initializer}
    summary.input_dtypes = {
        v.name: v.type.tensor_type.elem_type for v in graph.input if v.name not in initializers
    }
    summary.output_dtypes = {v.name: v.type.tensor_type.elem_type for v in graph.output}
    return summary


def lowered_nodes(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """Names of the nodes of ``op_types`` that a quantizer really lowered: those reading a DequantizeLinear."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [node.name for node in model.graph.node
            if node.op_type in op_types and any(i in dequantized for i in node.input)]


def check_batch(
    inputs: list[TensorSpec],
    spec: ModelSpec | None,
    calibration: dict[str, np.ndarray] | None,
    count: int = 8,
    seed: int = 0,
    bounds: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """A small batch to check a step on: the first calibration samples, else the one sampler's
    seeded values (:mod:`hepdeploy.sampling`) at the dims' typical sizes with ``count`` rows, each
    dim at least the lower bound the graph puts on it (``bounds``)."""
    if calibration:
        if all(t.has_batch_axis for t in inputs):
            return {t.name: calibration[t.name][:count] for t in inputs}
        return {t.name: calibration[t.name][0] for t in inputs}
    return sample_inputs(inputs, typical_sizes(inputs, spec, batch=count, bounds=bounds), seed)


# Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) exist from opset 13.
PER_CHANNEL_OPSET = 13


def normalize_for_tools(model: onnx.ModelProto, min_opset: int | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A graph from any exporter (IR >= 3, opset >= 9) made fit for the optimizers; what changed.

    IR 3 requires every initializer to be listed as a graph input, which ONNX Runtime's
    rewrites do not do, so an IR 3 graph is lifted to the lowest IR its opsets allow with its
    initializers no longer posing as inputs (they are weights, not tensors a user feeds).
    Below ``min_opset`` the ONNX version converter upgrades the graph; names are kept.
    """
    from onnx import helper, version_converter

    changes: dict[str, Any] = {}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if min_opset is not None and opset is not None and opset < min_opset:
        try:
            model = version_converter.convert_version(model, min_opset)
        except Exception as error:  # the converter raises RuntimeError/ValueError with C++ text
            raise ConversionError(f"cannot upgrade the graph from opset {opset} to {min_opset} (per-channel Q/DQ "
                                  f"needs it): {first_line(error)}") from error
        changes["opset"] = [opset, min_opset]
    if model.ir_version < 4:
        initializers = {init.name for init in model.graph.initializer}
        kept = [value for value in model.graph.input if value.name not in initializers]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        old = int(model.ir_version)
        model.ir_version = max(4, helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))
        changes["ir_version"] = [old, int(model.ir_version)]
    elif "opset" in changes:
        wanted = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        model.ir_version = max(int(model.ir_version), wanted)
    return model, changes


def prune_opset_imports(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop opset imports of domains no node uses (ORT and quantizers add a dozen)."""
    used = {node.domain for node in model.graph.node} | {""}
    for function in model.functions:
        used |= {node.domain for node in function.node} | {function.domain}
    kept = [entry for entry in model.opset_import if entry.domain in used or entry.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    """Silence ModelOpt's and ONNX Runtime's Python logging (e.g. "NVML not found",
    "consider pre-processing") unless hepdeploy runs at debug level."""
    if logging.getLogger("hepdeploy").isEnabledFor(logging.DEBUG):
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        # ORT's histogram calibrators print progress to stdout, which is ours for data.
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def name_unnamed_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (exclusion lists and quantizers address nodes by name)."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
    return model


def edge_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Nodes kept in FP32 by default when quantizing: (head, tail).

    head: non-compute nodes between the graph inputs and the first Conv/Gemm/MatMul
    (input normalisation such as a folded BatchNorm's Mul/Add, index arithmetic): the raw
    inputs mix features of very different scales, which one per-tensor INT8 scale
    cannot hold. tail: the last compute layer(s) and what follows them to the outputs,
    so regression outputs and logits are not rounded to 256 levels.
    """
    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    producer: dict[str, Any] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    initializers = {init.name for init in graph.initializer}

    head: list[str] = []
    seen: set[int] = set()
    frontier = [v.name for v in graph.input if v.name not in initializers]
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if id(node) in seen or node.op_type in COMPUTE_OPS:
                continue
            seen.add(id(node))
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                head.append(node.name)
            frontier.extend(node.output)

    tail: list[str] = []
    seen = set()
    frontier = [v.name for v in graph.output]
    while frontier:
        tensor = frontier.pop()
        node = producer.get(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        tail.append(node.name)
        if node.op_type not in COMPUTE_OPS:
            frontier.extend(i for i in node.input if i not in initializers)
    return sorted(set(head)), sorted(set(tail))
