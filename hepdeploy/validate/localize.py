"""Where did a candidate go wrong? Compare intermediate tensors with the FP32 model.

Every tensor the nodes of both graphs compute is made a graph output; both models run
on the same inputs; each FP32 tensor is matched with the candidate's tensor of the same
name (quantizers and autocast keep node output names and add QuantizeLinear/
DequantizeLinear/Cast nodes around them: an activation wrapped in Q/DQ is compared as the
DequantizeLinear output its consumers read, a graph output behind a Cast by its final
name) or, when renamed, with the same output of the node of the same name and op type.
In the FP32 graph's order, the first node whose output exceeds the tolerance is where
the disagreement starts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.errors import DataError
from hepdeploy.validate.compare import compare_arrays

log = logging.getLogger("hepdeploy.validate.localize")

DEFAULT_LOCALIZE_SAMPLES = 256


@dataclass
class TensorError:
    """One intermediate tensor of the FP32 graph and the candidate's error on it."""

    node: str
    op_type: str
    tensor: str
    candidate_tensor: str | None
    max_abs_error: float | None = None
    p99_abs_error: float | None = None
    fraction_out_of_tolerance: float | None = None
    exceeds: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LocalizationReport:
    candidate: str
    fp32_model: str
    atol: float
    rtol: float
    n_samples: int
    tensors: list[TensorError] = field(default_factory=list)
    first_divergent_node: str | None = None
    first_divergent_op: str | None = None
    first_divergent_tensor: str | None = None
    unmatched: int = 0

    def summary(self) -> str:
        if self.first_divergent_node is None:
            return f"no intermediate tensor exceeds atol={self.atol:g} rtol={self.rtol:g}"
        row = next(t for t in self.tensors if t.node == self.first_divergent_node and t.exceeds)
        return (
            f"first divergent node: {self.first_divergent_node} ({self.first_divergent_op}) output "
            f"{self.first_divergent_tensor}: max|d|={row.max_abs_error:.3g}, "
            f"{100 * (row.fraction_out_of_tolerance or 0):.3g}% of its elements out of tolerance"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate, "fp32_model": self.fp32_model, "atol": self.atol, "rtol": self.rtol,
            "n_samples": self.n_samples, "first_divergent_node": self.first_divergent_node,
            "first_divergent_op": self.first_divergent_op, "first_divergent_tensor": self.first_divergent_tensor,
            "unmatched": self.unmatched, "tensors": [t.to_dict() for t in self.tensors],
        }


def localize(
    candidate: Any,
    fp32_model: Any,
    inputs: dict[str, np.ndarray],
    atol: float,
    rtol: float,
    max_samples: int = DEFAULT_LOCALIZE_SAMPLES,
) -> LocalizationReport:
    """Compare every intermediate tensor of ``candidate`` (path or ModelProto) with ``fp32_model``."""
    from hepdeploy.artifacts import load_onnx

    cand_model = candidate if hasattr(candidate, "graph") else load_onnx(Path(candidate))
    ref_model = fp32_model if hasattr(fp32_model, "graph") else load_onnx(Path(fp32_model))
    from hepdeploy.validate.reference import common_batch_size

    n = next(iter(inputs.values())).shape[0] if inputs else 0
    if n == 0:
        raise DataError("localization needs at least one input sample")
    # Only a common batch axis may be cut; a graph (hits + edges) is used whole.
    batched = common_batch_size(inputs) is not None
    feed = {k: v[:max_samples] for k, v in inputs.items()} if batched else dict(inputs)
    n = min(n, max_samples) if batched else n

    ref_values = _run_all_tensors(ref_model, feed)
    cand_values = _run_all_tensors(cand_model, feed)
    matching = match_tensors(ref_model, cand_model)

    report = LocalizationReport(
        candidate=str(candidate) if not hasattr(candidate, "graph") else "(model)",
        fp32_model=str(fp32_model) if not hasattr(fp32_model, "graph") else "(model)",
        atol=atol, rtol=rtol, n_samples=int(n),
    )
    for node in ref_model.graph.node:
        if node.op_type == "Constant":
            continue
        for tensor in node.output:
            if not tensor or tensor not in ref_values:
                continue
            target = matching.get(tensor)
            row = TensorError(node.name or f"({node.op_type})", node.op_type, tensor, target)
            if target is None or target not in cand_values:
                row.note = "no matching tensor in the candidate"
                report.unmatched += 1
                report.tensors.append(row)
                continue
            ref_value, cand_value = ref_values[tensor], cand_values[target]
            if ref_value.dtype.kind not in "fiub" or cand_value.dtype.kind not in "fiub":
                row.note = f"not numeric ({ref_value.dtype})"
                report.tensors.append(row)
                continue
            cmp = compare_arrays(tensor, cand_value.astype(np.float64) if cand_value.dtype.kind == "f" else cand_value,
                                 ref_value.astype(np.float64) if ref_value.dtype.kind == "f" else ref_value, atol, rtol)
            if cmp.problem and cmp.n_elements == 0 and "shape" in cmp.problem:
                row.note = cmp.problem
                row.exceeds = True
            else:
                row.max_abs_error = cmp.max_abs_error
                row.p99_abs_error = cmp.p99_abs_error
                row.fraction_out_of_tolerance = cmp.fraction_out_of_tolerance
                row.exceeds = not cmp.passed
                row.note = cmp.problem or ""
            report.tensors.append(row)
            if row.exceeds and report.first_divergent_node is None:
                report.first_divergent_node = row.node
                report.first_divergent_op = row.op_type
                report.first_divergent_tensor = tensor
    log.info("localize: %s", report.summary())
    return report


def match_tensors(ref_model: Any, cand_model: Any) -> dict[str, str]:
    """FP32 tensor name -> candidate tensor name, looking through Q/DQ and Cast nodes.

    A tensor is compared as the candidate's next nodes consume it: when the candidate's
    same-named tensor only feeds a QuantizeLinear -> DequantizeLinear pair (a quantizer
    wrapping an activation), the DequantizeLinear output is that tensor's value (this also
    covers quantizers that fold a Relu into an unsigned QuantizeLinear).
    """
    cand_produced = {out: node for node in cand_model.graph.node for out in node.output if out}
    consumers: dict[str, list[Any]] = {}
    for node in cand_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    cand_nodes_by_name = {node.name: node for node in cand_model.graph.node if node.name}
    ref_produced = {out for node in ref_model.graph.node for out in node.output if out}
    graph_outputs = {o.name for o in cand_model.graph.output}

    def as_consumed(name: str) -> str:
        users = consumers.get(name, [])
        if name in graph_outputs or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            return name
        q_out = users[0].output[0]
        dq_users = consumers.get(q_out, [])
        if len(dq_users) == 1 and dq_users[0].op_type == "DequantizeLinear":
            return dq_users[0].output[0]
        return name

    mapping: dict[str, str] = {}
    for node in ref_model.graph.node:
        for index, tensor in enumerate(node.output):
            if not tensor:
                continue
            if tensor in cand_produced:
                mapping[tensor] = as_consumed(tensor)
                continue
            twin = cand_nodes_by_name.get(node.name) if node.name else None
            if twin is not None and twin.op_type == node.op_type and index < len(twin.output):
                renamed = twin.output[index]
                if renamed and renamed not in ref_produced:
                    mapping[tensor] = as_consumed(renamed)
    return mapping


def _run_all_tensors(model: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model with every node output exposed as a graph output."""
    import onnx

    from hepdeploy.validate.runner_access import onnx_runner

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    graph = exposed.graph
    existing = {o.name for o in graph.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(exposed, strict_mode=False)
        types = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    except Exception:  # shape inference is only a help here
        types = {}
    for node in graph.node:
        for out in node.output:
            if not out or out in existing:
                continue
            info = types.get(out)
            if info is not None and info.type.tensor_type.elem_type:
                value = onnx.ValueInfoProto()
                value.CopyFrom(info)
                # Shapes inferred for one batch size must not constrain another.
                value.type.tensor_type.ClearField("shape")
                graph.output.append(value)
            else:
                graph.output.append(onnx.ValueInfoProto(name=out))
            existing.add(out)
    runner = onnx_runner(exposed)
    input_names = getattr(runner, "input_names", None) or list(feed)
    missing = [n for n in input_names if n not in feed]
    if missing:
        raise DataError(f"localization: inputs {', '.join(missing)} missing from the reference set")
    return {k: np.asarray(v) for k, v in runner.run({n: feed[n] for n in input_names}).items()}
