"""What TensorRT's ONNX parser would refuse, learned from the graph alone (no TensorRT, no GPU).

The rules are the onnx-tensorrt operator support list (``docs/operators.md`` of
onnx/onnx-tensorrt) for a TensorRT release, kept as data in ``tensorrt_ops/`` with the commit
it was read from. A graph is checked for:

- nodes of a custom domain (TensorRT needs a plugin for each);
- operators the list marks unsupported, or does not list at all;
- an opset outside the list's range;
- the restrictions the list documents that a graph can show: inputs that must be
  initializers / build-time constants (Reduce* ``axes``, CumSum ``axis``, OneHot ``depth``,
  Squeeze/Unsqueeze ``axes``, Dropout ``is_training``; Constant outputs, what constant folding
  resolves from them, and the initializers of If/Loop/Scan bodies count), TopK's ``sorted`` and ``K < 3840``,
  outputs TensorRT does not produce (MaxPool ``Indices``, LayerNormalization's statistics),
  and Q/DQ that TensorRT cannot take (a non-zero zero point; UINT8 is only a network I/O type,
  so u8 activations, as the int8-cpu variant has, are refused).

Findings are errors (the parser or builder refuses it) or warnings (it depends on values only
known at run time). Each names the list's TensorRT version.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hepdeploy.artifacts import load_onnx
from hepdeploy.errors import BadInputError

Severity = Literal["error", "warning"]

_OPS_PACKAGE = "hepdeploy.optimize"
_OPS_FOLDER = "tensorrt_ops"
_STANDARD_DOMAINS = {"", "ai.onnx"}
# Quantized types TensorRT computes in; UINT8 only as a network input or output.
_TENSOR_UINT8 = 2
_TOPK_MAX_K = 3840
# Inputs that must be initializers or build-time constants: op -> (input index, name, since opset).
_CONSTANT_INPUTS: dict[str, tuple[int, str, int]] = {
    **{op: (1, "axes", 18) for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                     "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare")},
    "ReduceSum": (1, "axes", 13),
    "Squeeze": (1, "axes", 13),
    "Unsqueeze": (1, "axes", 13),
    "CumSum": (1, "axis", 1),
    "OneHot": (1, "depth", 1),
    "Dropout": (2, "training_mode", 12),
}


@dataclass(frozen=True)
class OperatorList:
    """One onnx-tensorrt operator support list."""

    tensorrt_version: str
    commit: str
    opset_range: tuple[int, int]
    supported: dict[str, dict[str, Any]]
    unsupported: frozenset[str]

    def label(self) -> str:
        return f"onnx-tensorrt operators.md for TensorRT {self.tensorrt_version} ({self.commit[:12]})"


def available_lists() -> list[str]:
    folder = resources.files(_OPS_PACKAGE) / _OPS_FOLDER
    names = [p.name for p in folder.iterdir() if p.name.startswith("onnx_trt_ops_") and p.name.endswith(".json")]
    versions = [n.removeprefix("onnx_trt_ops_").removesuffix(".json") for n in names]
    return sorted(versions, key=_version_key)


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def operator_list(tensorrt_version: str | None = None) -> OperatorList:
    """The list for ``tensorrt_version`` (the newest list not newer than it; the oldest one below all)."""
    versions = available_lists()
    chosen = versions[-1]
    if tensorrt_version:
        wanted = _version_key(tensorrt_version)[:2]
        if not wanted:
            raise BadInputError(f"TensorRT version {tensorrt_version!r}: expected a version like 10.8")
        older = [v for v in versions if _version_key(v) <= wanted]
        chosen = older[-1] if older else versions[0]
    text = (resources.files(_OPS_PACKAGE) / _OPS_FOLDER / f"onnx_trt_ops_{chosen}.json").read_text(encoding="utf-8")
    data = json.loads(text)
    header = data["source"]["onnx_opset_supported"]
    numbers = [int(n) for n in header.replace("(", " ").split() if n.isdigit()]
    return OperatorList(
        tensorrt_version=chosen,
        commit=data["source"]["commit_or_branch"],
        opset_range=(min(numbers), max(numbers)),
        supported=data["supported"],
        unsupported=frozenset(data["unsupported"]),
    )


@dataclass(frozen=True)
class Finding:
    severity: Severity
    node: str
    op_type: str
    message: str

    def line(self) -> str:
        where = f"{self.op_type} node {self.node!r}" if self.node else self.op_type or "graph"
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class PrecheckReport:
    model: Path
    operators: OperatorList
    findings: list[Finding] = field(default_factory=list)
    target: str | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verdict = "would be refused" if self.errors else "passes"
        asked = f" (asked for {self.target})" if self.target and self.target != self.operators.tensorrt_version else ""
        return (f"{self.model}: {verdict} by the TensorRT ONNX parser precheck: {len(self.errors)} error(s), "
                f"{len(self.findings) - len(self.errors)} warning(s), per {self.operators.label()}{asked}")

    def lines(self) -> list[str]:
        return [finding.line() for finding in self.findings] + [self.summary()]


def _constants(graph: Any) -> dict[str, Any]:
    """Tensors whose value is known when the engine is built: initializers and Constant outputs, of
    ``graph`` and of every subgraph (If branches, Loop and Scan bodies see the outer scope's too)."""
    from onnx import numpy_helper

    values: dict[str, Any] = {}
    for tensor in graph.initializer:
        values[tensor.name] = numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS:
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
                elif attribute.name in ("value_int", "value_ints"):
                    values[node.output[0]] = attribute.i if attribute.name == "value_int" else list(attribute.ints)
        for subgraph in _subgraphs(node):
            values.update(_constants(subgraph))
    return values


# Nodes whose output is not a function of their inputs alone: never folded to a constant.
_NOT_FOLDABLE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
                 "If", "Loop", "Scan"}


def _build_time_names(graph: Any, known: set[str]) -> set[str]:
    """Names whose value constant folding resolves before the build: ``known`` constants, and the
    outputs of every node (standard domain, deterministic, no subgraph) whose inputs all resolve.
    Nodes are in topological order, as ONNX requires, so one pass over each graph suffices."""
    resolved = set(known)
    for node in graph.node:
        if node.domain in _STANDARD_DOMAINS and node.op_type not in _NOT_FOLDABLE \
                and all(not name or name in resolved for name in node.input) and any(node.input):
            resolved.update(name for name in node.output if name)
        for subgraph in _subgraphs(node):
            resolved |= _build_time_names(subgraph, resolved)
    return resolved


def _subgraphs(node: Any) -> list[Any]:
    from onnx import AttributeProto

    graphs = []
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            graphs.append(attribute.g)
        elif attribute.type == AttributeProto.GRAPHS:
            graphs.extend(attribute.graphs)
    return graphs


def _attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _all_nodes(graph: Any) -> list[Any]:
    """The nodes of ``graph`` and of every subgraph (If branches, Loop and Scan bodies)."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for subgraph in _subgraphs(node):
            nodes += _all_nodes(subgraph)
    return nodes


def precheck_graph(model: Any, operators: OperatorList) -> list[Finding]:
    """Every finding for the ONNX ``model`` against ``operators``."""
    findings: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), None)
    low, high = operators.opset_range
    if opset is not None and not low <= opset <= high:
        findings.append(Finding("error", "", "", f"opset {opset} is outside opset {low} to {high} that the parser "
                                                 "supports (convert the graph with the onnx version converter)"))
    constants = _constants(model.graph)
    known = _Known(constants, _build_time_names(model.graph, set(constants)))
    for node in _all_nodes(model.graph):
        name, op = node.name, node.op_type
        if node.domain not in _STANDARD_DOMAINS:
            findings.append(Finding("error", name, op, f"custom domain {node.domain!r}: TensorRT's ONNX parser "
                                                       "needs a plugin for it"))
            continue
        if op in operators.unsupported:
            findings.append(Finding("error", name, op, "not supported by TensorRT's ONNX parser"))
            continue
        if op not in operators.supported:
            findings.append(Finding("error", name, op, "not in TensorRT's ONNX operator list"))
            continue
        findings += _restrictions(node, opset or high, known)
    return findings


@dataclass(frozen=True)
class _Known:
    """What the build knows of a graph: ``values`` of initializers and Constants (of every subgraph too),
    and ``folded``, every name constant folding resolves (those values and what is computed from them)."""

    values: dict[str, Any]
    folded: set[str]


def _restrictions(node: Any, opset: int, known: _Known) -> list[Finding]:
    name, op = node.name, node.op_type
    constants = known.values
    found: list[Finding] = []

    def error(message: str) -> None:
        found.append(Finding("error", name, op, message))

    if op in _CONSTANT_INPUTS:
        index, what, since = _CONSTANT_INPUTS[op]
        if opset >= since and len(node.input) > index and node.input[index] and node.input[index] not in known.folded:
            error(f"`{what}` is computed at run time; TensorRT needs it as an initializer (build-time constant)")
        elif op == "Dropout" and len(node.input) > index and np.any(constants.get(node.input[index], False)):
            error("`training_mode` must evaluate to False")
    if op == "TopK":
        if _attribute(node, "sorted", 1) != 1:
            error("`sorted` must be 1")
        k_name = node.input[1] if len(node.input) > 1 else None
        k = constants.get(k_name) if k_name else _attribute(node, "k")
        if k is None:
            found.append(Finding("warning", name, op, f"`K` is computed at run time; TensorRT needs K < "
                                                      f"{_TOPK_MAX_K}, which cannot be checked here"))
        elif int(max(list(getattr(k, "flat", [k])))) >= _TOPK_MAX_K:
            error(f"`K` = {int(max(list(getattr(k, 'flat', [k]))))} must be less than {_TOPK_MAX_K}")
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        error("the `Indices` output is not supported")
    if op == "LayerNormalization" and any(node.output[1:]):
        error("only the first output `Y` is supported")
    if op == "QuantizeLinear" and len(node.input) > 2 and node.input[2]:
        zero = constants.get(node.input[2])
        if zero is not None and getattr(zero, "dtype", None) is not None and zero.dtype.kind == "u":
            error("UINT8 quantization (u8 activations): TensorRT computes in INT8 and takes UINT8 only as a "
                  "network input or output; build the int8-trt variant for TensorRT")
        elif zero is not None and bool((zero != 0).any()):
            error("`y_zero_point` must be 0 (TensorRT quantizes symmetrically)")
    if op == "DequantizeLinear" and len(node.input) > 2 and node.input[2]:
        zero = constants.get(node.input[2])
        if zero is not None and bool((zero != 0).any()):
            error("`x_zero_point` must be zero")
    return found


def precheck_model(path: Path, tensorrt_version: str | None = None) -> PrecheckReport:
    """Read the ONNX file at ``path`` and check it against the list for ``tensorrt_version``."""
    model = load_onnx(Path(path), load_weights=True)
    operators = operator_list(tensorrt_version)
    findings = precheck_graph(model, operators)
    used = _version_key(operators.tensorrt_version)
    if tensorrt_version is None or _version_key(tensorrt_version)[:2] != used[:2]:
        wanted = f"TensorRT {tensorrt_version}" if tensorrt_version else "the target TensorRT (unknown)"
        findings.insert(0, Finding("warning", "", "", f"no operator list for {wanted}: checked against the nearest "
                                                      f"one, TensorRT {operators.tensorrt_version}; operators added "
                                                      "or restricted in between are not seen"))
    return PrecheckReport(Path(path), operators, findings, target=tensorrt_version)
