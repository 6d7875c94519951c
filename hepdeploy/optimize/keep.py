"""Keeping part of a graph in FP32 inside a low-precision variant, so that "kept" means what it says.

A quantizer told to exclude one Gemm still quantizes what surrounds it: ONNX Runtime folds the ReLU
after a quantized Gemm into the next Q/DQ pair, puts a Q/DQ pair on the tensor a kept Gemm reads when
another consumer of that tensor is quantized, and leaves the BiasAdd or ReLU of a kept layer free to be
quantized. Measured on FACILE, keeping five of six Gemms this way did worse than keeping one. Two rules
make a kept node really FP32:

* **A layer is a group.** Every node belongs to the group of one compute node (Conv, Gemm, MatMul, an
  RNN ...): the compute node with what follows it up to the next compute node (bias, activation,
  normalisation, reshapes), and the nodes before the first compute node with the first one. Keeping a
  compute node keeps its whole group, so no part of a kept layer is left for the quantizer.
* **A kept node reads FP32.** After the quantizer ran, every kept node that reads a Q/DQ pair whose
  FP32 tensor comes from a graph input or from another kept node reads that FP32 tensor instead; a kept
  node whose weight was quantized gets the original FP32 weight back. A Q/DQ pair that is still read
  stays: it sits on the boundary where a lowered layer's INT8 output enters a kept one (or the other
  way round), which is where the precision really changes.

With every group kept, the graph computes what the FP32 graph computes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hepdeploy.spec import VariantSpec

if TYPE_CHECKING:
    import onnx

# The nodes a precision decision is about: each carries most of its layer's arithmetic.
GROUP_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Einsum", "Attention")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class PrecisionGroup:
    """One layer: a compute node (its name names the group) and the nodes that go with it."""

    name: str
    op_type: str
    nodes: tuple[str, ...]  # the compute node first


def precision_groups(model: onnx.ModelProto) -> list[PrecisionGroup]:
    """The graph's layers in graph order (see the module docstring); every named node but a Constant or a
    Q/DQ node is in exactly one group, unless the graph has no compute node at all."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    owner: dict[str, str] = {}
    compute = [node for node in graph.node if node.op_type in GROUP_OP_TYPES]
    for node in graph.node:  # graph order is topological: a producer's owner is known first
        if node.op_type in GROUP_OP_TYPES:
            owner[node.name] = node.name
            continue
        if node.op_type == "Constant" or node.op_type in _QDQ:
            continue
        for name in node.input:
            source = producer.get(name)
            if name and name not in constants and source is not None and source.name in owner:
                owner[node.name] = owner[source.name]
                break
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in reversed(graph.node):  # what precedes the first layer goes with the layer it feeds
        if node.name in owner or node.op_type == "Constant" or node.op_type in _QDQ:
            continue
        owners = [owner[c.name] for out in node.output for c in consumers.get(out, []) if c.name in owner]
        if owners:
            owner[node.name] = owners[0]
    members: dict[str, list[str]] = {node.name: [node.name] for node in compute}
    for node in graph.node:
        group = owner.get(node.name)
        if group is not None and group != node.name:
            members[group].append(node.name)
    return [PrecisionGroup(node.name, node.op_type, tuple(members[node.name])) for node in compute]


def nodes_matching(model: onnx.ModelProto, patterns: list[str], op_types: list[str]) -> list[str]:
    """Names of the nodes whose name a pattern matches (a regex, anywhere in the name) or whose op type is listed."""
    regexes = [re.compile(p) for p in patterns]
    return [node.name for node in model.graph.node
            if node.op_type in op_types or any(r.fullmatch(node.name) or r.search(node.name) for r in regexes)]


def keep_in_fp32(variant: VariantSpec, names: Iterable[str]) -> VariantSpec:
    """``variant`` keeping the nodes ``names`` (exact) in FP32 as well (``keep_nodes``)."""
    patterns = [f"^{re.escape(name)}$" for name in sorted(names)]
    return variant.model_copy(update={"keep_nodes": [*variant.keep_nodes, *patterns]})


def expand_to_groups(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """``names`` with every compute node among them replaced by all the nodes of its group (sorted)."""
    groups = {group.name: group.nodes for group in precision_groups(model)}
    expanded: set[str] = set()
    for name in names:
        expanded.update(groups.get(name, (name,)))
    return sorted(expanded)


def restore_fp32_inputs(quantized: onnx.ModelProto, original: onnx.ModelProto, kept: Iterable[str]) -> int:
    """Make every node of ``kept`` read FP32 in ``quantized`` (in place; see the module docstring); the
    number of inputs restored. ``original`` is the FP32 graph the quantizer started from (same node names)."""
    kept = set(kept)
    graph = quantized.graph
    view = _GraphView(quantized, original)
    restored = 0
    for node in list(graph.node):
        if node.name not in kept:
            continue
        for position, name in enumerate(node.input):
            dequantize = view.producer.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = view.producer.get(dequantize.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                fp32 = view.fp32_tensor(quantize.input[0])
            else:  # a weight stored in INT8: the FP32 graph's own weight
                fp32 = view.original_weight(node.name, position)
            if fp32 is not None:
                node.input[position] = fp32
                restored += 1
    if restored:
        remove_unused(quantized)
    return restored


# Activations a quantizer may fold into the Q/DQ pair that follows them (the clamp of the INT8 range
# does their work); a kept reader of that tensor gets them applied again.
_FOLDED_ACTIVATIONS = ("Relu", "Clip")


class _GraphView:
    """Where each tensor of the quantized graph comes from, next to where it came from in the FP32 graph."""

    def __init__(self, quantized: onnx.ModelProto, original: onnx.ModelProto) -> None:
        self.graph = quantized.graph
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.initializers = {init.name for init in self.graph.initializer}
        self.original_producer = {out: node for node in original.graph.node for out in node.output}
        self.original_nodes = {node.name: node for node in original.graph.node}
        self.original_initializers = {init.name: init for init in original.graph.initializer}
        self.reapplied: dict[str, str] = {}

    def fp32_tensor(self, name: str) -> str | None:
        """The FP32 value of tensor ``name`` that a Q node reads, as the FP32 graph computes it: the tensor
        itself, or the activation the quantizer folded away applied again; None when it cannot be told."""
        before, now = self.original_producer.get(name), self.producer.get(name)
        if before is None or now is None or before.name == now.name:
            return name
        if name in self.reapplied:
            return self.reapplied[name]
        feeding = self.original_producer.get(before.input[0]) if before.input else None
        if before.op_type not in _FOLDED_ACTIVATIONS or feeding is None or feeding.name != now.name:
            return None
        from onnx import helper

        for extra in before.input[1:]:  # Clip's bounds
            if extra and extra not in self.initializers and extra not in self.producer:
                if not self._copy_initializer(extra):
                    return None
        output = f"{name}/fp32"
        node = helper.make_node(before.op_type, [name, *before.input[1:]], [output], name=f"{before.name}/fp32")
        node.attribute.extend(before.attribute)
        self.graph.node.insert(list(self.graph.node).index(now) + 1, node)
        self.producer[output] = node
        self.reapplied[name] = output
        return output

    def original_weight(self, node_name: str, position: int) -> str | None:
        """The FP32 graph's initializer at input ``position`` of ``node_name`` (copied back when the
        quantizer replaced it); None when that input was no initializer."""
        before = self.original_nodes.get(node_name)
        weight = before.input[position] if before is not None and position < len(before.input) else None
        if weight is None or weight not in self.original_initializers:
            return None
        if weight not in self.initializers:
            self._copy_initializer(weight)
        return weight

    def _copy_initializer(self, name: str) -> bool:
        init = self.original_initializers.get(name)
        if init is None:
            return False
        copy = self.graph.initializer.add()
        copy.CopyFrom(init)
        self.initializers.add(name)
        return True


def remove_unused(model: onnx.ModelProto) -> None:
    """Drop Q/DQ nodes nothing reads any more, then initializers nothing reads (in place)."""
    graph = model.graph
    outputs = {value.name for value in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if node.op_type in _QDQ and not any(o in read for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | outputs
    unused = [init for init in graph.initializer if init.name not in read]
    for init in unused:
        graph.initializer.remove(init)
