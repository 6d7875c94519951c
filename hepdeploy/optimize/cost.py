"""What a precision mix costs, modelled from the graph, never read from a clock.

A mix is a set of layers (``optimize.keep`` groups) kept in FP32; the others run in the variant's low
precision. Its cost, in units of one FP32 multiply-accumulate, is

    sum over layers:   MACs x mac(precision) + compute node's input and output elements x io(precision)
                       + other nodes' output elements x element + nodes x node
    + sum over tensors that cross between precisions:   elements x quantize + node (into low precision)
                                                        or elements x dequantize + node (out of it)

with MACs and tensor sizes from the graph at the typical batch, and the per-unit costs from a fixed
table per serving target. The same graph, batch and table give the same number on every machine and
at any load, so a search that ranks mixes by it gives the same answer everywhere; the clock is left to
report how fast the answer really is.

Tensor sizes come from one run of the FP32 graph on a slice of the typical batch (at most
``PROBE_ROWS`` rows), every intermediate tensor exposed, scaled to the typical batch: every layer of a
batched model costs in proportion to its rows. Running the graph rather than inferring shapes gives
the sizes of data-dependent shapes (k-NN, masks) as the data makes them.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hepdeploy.backend.onnxrt import intermediate_values
from hepdeploy.errors import BadInputError
from hepdeploy.optimize.keep import PrecisionGroup

if TYPE_CHECKING:
    import onnx

PROBE_ROWS = 64


@dataclass(frozen=True)
class TargetCosts:
    """Per-unit costs on one serving target, in FP32 MACs."""

    name: str
    mac: dict[str, float]  # one multiply-accumulate, per precision: fp32 (1.0 by definition), fp16, int8
    io: dict[str, float]  # one element a compute node reads or writes, per precision
    element: float  # one output element of an elementwise or data-movement node
    quantize: float  # one element converted into the low precision (QuantizeLinear, a Cast to FP16)
    dequantize: float  # one element converted back to FP32
    node: float  # dispatching one node
    source: str  # where the numbers come from


# cpu: `.venv/bin/python benchmarks/cost_table.py --out benchmarks/results/cost_table.json` on a 2-core x86_64
# with AVX-512 VNNI, ONNX Runtime 1.31 CPU provider, one thread (FP16 runs through casts there: no gain).
# tensorrt: NVIDIA's documented dense Tensor Core throughput ratios (A100/H100 datasheets: FP16 = 2x TF32,
# INT8 = 2x FP16) with memory traffic in proportion to the element size; not measured here (no GPU).
TARGETS: dict[str, TargetCosts] = {
    "cpu": TargetCosts("cpu", mac={"fp32": 1.0, "fp16": 1.0, "int8": 0.175},
                       io={"fp32": 19.7, "fp16": 19.7, "int8": 24.6}, element=12.9, quantize=8.1, dequantize=12.0,
                       node=416000.0,
                       source="measured once on this project's CPU (benchmarks/cost_table.py: ONNX Runtime, one "
                              "thread, AVX-512 VNNI)"),
    "tensorrt": TargetCosts("tensorrt", mac={"fp32": 1.0, "fp16": 0.5, "int8": 0.25},
                            io={"fp32": 4.0, "fp16": 2.0, "int8": 1.0}, element=4.0, quantize=4.0, dequantize=4.0,
                            node=0.0,
                            source="documented Tensor Core ratios (FP16 2x, INT8 4x TF32), memory by element size; "
                                   "not measured here (no GPU)"),
}


@dataclass
class _Layer:
    name: str
    macs: float
    io: float  # elements the compute node reads and writes
    elements: float  # output elements of the layer's other nodes
    nodes: int
    # Tensors the layer reads from outside itself: (elements, the layer that makes it; None: a graph input).
    reads: list[tuple[float, str | None]] = field(default_factory=list)
    writes_output: float = 0.0  # elements of graph outputs it makes


class CostModel:
    """Modelled cost of every mix of one graph's layers on one target (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, feed: dict[str, np.ndarray], groups: list[PrecisionGroup],
                 target: str, low_precision: str, batched: bool, always_kept: Iterable[str] = ()) -> None:
        if target not in TARGETS:
            raise BadInputError(f"no cost table for target {target!r} (one of {', '.join(TARGETS)})")
        self.table = TARGETS[target]
        self.low_precision = low_precision
        self.always_kept = frozenset(always_kept)
        sizes, scale = _tensor_sizes(model, feed, batched)
        self.layers = _layers(model, groups, sizes, scale)
        self.fp32 = self.cost(frozenset(layer.name for layer in self.layers))

    @property
    def target(self) -> str:
        return self.table.name

    def cost(self, kept: Iterable[str]) -> float:
        """The modelled cost of the mix keeping ``kept`` (layer names; ``always_kept`` ones, such as the
        edges, are FP32 in every mix) in FP32 MACs."""
        kept = set(kept) | self.always_kept
        table = self.table
        total = 0.0
        for layer in self.layers:
            low = layer.name not in kept
            precision = self.low_precision if low else "fp32"
            total += layer.macs * table.mac[precision] + layer.io * table.io[precision]
            total += layer.elements * table.element + layer.nodes * table.node
            for elements, source in layer.reads:
                source_low = source is not None and source not in kept
                if low and not source_low:
                    total += elements * table.quantize + table.node
                elif source_low and not low:
                    total += elements * table.dequantize + table.node
            if low and layer.writes_output:
                total += layer.writes_output * table.dequantize + table.node
        return total

    def share(self, name: str) -> float:
        """Layer ``name``'s part of the FP32 graph's modelled cost (what it costs in FP32, over the total)."""
        table = self.table
        layer = next(layer for layer in self.layers if layer.name == name)
        own = layer.macs * table.mac["fp32"] + layer.io * table.io["fp32"] + layer.elements * table.element \
            + layer.nodes * table.node
        return own / self.fp32 if self.fp32 > 0 else 0.0

    def relative(self, kept: Iterable[str]) -> float:
        """The mix's cost as a fraction of FP32's (below 1: modelled faster than FP32)."""
        return self.cost(kept) / self.fp32 if self.fp32 > 0 else 1.0


def _tensor_sizes(model: onnx.ModelProto, feed: dict[str, np.ndarray], batched: bool) -> tuple[dict[str, tuple[int, ...]], float]:
    """Every tensor's shape in one run of the graph on (a slice of) ``feed``, and the factor that scales
    element counts from that slice to the whole feed."""
    rows = next(iter(feed.values())).shape[0] if batched and feed else 1
    probe = min(rows, PROBE_ROWS) if batched else rows
    sliced = {name: np.ascontiguousarray(value[:probe]) for name, value in feed.items()} if batched else feed
    values = intermediate_values(model, sliced)
    shapes = {name: tuple(int(d) for d in np.shape(value)) for name, value in values.items()}
    shapes.update({name: tuple(value.shape) for name, value in sliced.items()})
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes, (rows / probe if batched and probe else 1.0)


def _elements(shape: tuple[int, ...] | None) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def _macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> float:
    """Multiply-accumulates of one compute node (0 where its shapes are unknown)."""
    out = _elements(shapes.get(node.output[0])) if node.output else 0
    first = shapes.get(node.input[0]) if node.input else None
    second = shapes.get(node.input[1]) if len(node.input) > 1 else None
    attributes = {a.name: a for a in node.attribute}
    if node.op_type == "Gemm" and first:
        trans_a = attributes["transA"].i if "transA" in attributes else 0
        return out * first[0 if trans_a else -1]
    if node.op_type == "MatMul" and first:
        return out * first[-1]
    if node.op_type == "Conv" and second:
        return out * _elements(second[1:])
    if node.op_type == "ConvTranspose" and second and first:
        return _elements(first) * _elements(second[1:])
    if node.op_type in ("LSTM", "GRU", "RNN") and first and second:
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[node.op_type]
        directions, hidden_gates, size = second[0], second[1], second[2]
        steps_times_batch = _elements(first[:-1])
        hidden = hidden_gates // gates
        return directions * steps_times_batch * hidden_gates * (size + hidden)
    if node.op_type == "Einsum" and "equation" in attributes:
        return out * _contracted(attributes["equation"].s.decode(), [shapes.get(n) for n in node.input])
    return float(out)


def _contracted(equation: str, shapes: list[tuple[int, ...] | None]) -> int:
    """The product of the sizes an Einsum sums over (letters of its inputs missing from its output)."""
    inputs, _, output = equation.replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for letters, shape in zip(inputs.split(","), shapes):
        letters = re.sub(r"\.\.\.", "", letters)
        if shape is None:
            continue
        for letter, size in zip(letters[::-1], shape[::-1]):
            sizes[letter] = size
    return int(math.prod(size for letter, size in sizes.items() if letter not in output)) or 1


def _layers(model: onnx.ModelProto, groups: list[PrecisionGroup], shapes: dict[str, tuple[int, ...]],
            scale: float) -> list[_Layer]:
    group_of = {name: group.name for group in groups for name in group.nodes}
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    outputs = {value.name for value in model.graph.output}
    by_name = {node.name: node for node in model.graph.node}
    layers = []
    for group in groups:
        layer = _Layer(group.name, 0.0, 0.0, 0.0, len(group.nodes))
        seen: set[str] = set()
        for name in group.nodes:
            node = by_name[name]
            if name == group.name:
                layer.macs = _macs(node, shapes) * scale
                activations = [t for t in node.input if t and t not in constants] + list(node.output)
                layer.io = sum(_elements(shapes.get(t)) for t in activations) * scale
            else:
                layer.elements += sum(_elements(shapes.get(o)) for o in node.output) * scale
            for tensor in node.input:
                if not tensor or tensor in constants or tensor in seen:
                    continue
                source = producer.get(tensor)
                if source is not None and source.op_type == "Constant":
                    continue
                source_group = group_of.get(source.name) if source is not None else None
                if source is not None and source_group == group.name:
                    continue
                seen.add(tensor)
                layer.reads.append((_elements(shapes.get(tensor)) * scale, source_group))
            layer.writes_output += sum(_elements(shapes.get(o)) for o in node.output if o in outputs) * scale
        layers.append(layer)
    return layers
