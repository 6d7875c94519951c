"""Where did a candidate go wrong? Compare intermediate tensors with the FP32 model.

Every tensor the nodes of both graphs compute is made a graph output; both models run
on the same inputs; each FP32 tensor is matched with the candidate's tensor of the same
name (quantizers and autocast keep node output names and add QuantizeLinear/
DequantizeLinear/Cast nodes around them: an activation wrapped in Q/DQ is compared as the
DequantizeLinear output its consumers read, a graph output behind a Cast by its final
name) or, when renamed, with the same output of the node of the same name and op type.

Each tensor is judged by its signal-to-quantization-noise ratio (SQNR, dB) against the
FP32 one, as ONNX Runtime's QDQ debugger does: scale-free, so an input normalisation
producing values of 1e3 and a softmax producing 1e-3 are held to the same standard. In
the FP32 graph's order, the first tensor whose SQNR falls below the precision's floor
(:data:`MIN_SQNR_DB`) is where precision is first lost. With ``rule="tolerance"`` the
elementwise atol/rtol rule of the outputs decides instead. The report also names the node
that loses the most SQNR between its inputs and its output.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hepdeploy.artifacts import load_onnx
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner, with_outputs
from hepdeploy.compare import MIN_SQNR_DB, PRECISION_DEFAULTS, compare_arrays, precision_key, sqnr_db
from hepdeploy.data import common_batch_size
from hepdeploy.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_LOCALIZE_SAMPLES = 256
Rule = Literal["sqnr", "tolerance"]
# When drops are ranked, SQNR is clipped to [-40, floor + 40] dB: an exact input (+inf) or a NaN
# output (-inf) would otherwise make a drop infinite, and in a graph that loses a little precision
# everywhere the first rounded node (exact -> ~60 dB) would always outrank a real loss further on
# (60 -> 20 dB).
_DROP_RANGE_DB = 40.0


@dataclass
class TensorError:
    """One intermediate tensor of the FP32 graph and the candidate's error on it."""

    node: str
    op_type: str
    tensor: str
    candidate_tensor: str | None
    sqnr_db: float | None = None
    max_abs_error: float | None = None
    p99_abs_error: float | None = None
    fraction_out_of_tolerance: float | None = None
    exceeds: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        # JSON has no infinities or NaN: an infinite SQNR is written as "inf"/"-inf"; an error that is
        # not finite (NaN where the candidate has NaN) as null, like the outputs' comparisons.
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                values[key] = ("inf" if value > 0 else "-inf") if key == "sqnr_db" and not math.isnan(value) else None
        return values


@dataclass
class LocalizationReport:
    candidate: str
    fp32_model: str
    rule: Rule
    min_sqnr_db: float
    atol: float
    rtol: float
    n_samples: int
    tensors: list[TensorError] = field(default_factory=list)
    first_divergent_node: str | None = None
    first_divergent_op: str | None = None
    first_divergent_tensor: str | None = None
    largest_drop_node: str | None = None
    largest_drop_db: float | None = None
    unmatched: int = 0

    @property
    def criterion(self) -> str:
        if self.rule == "sqnr":
            return f"SQNR < {self.min_sqnr_db:g} dB"
        return f"atol={self.atol:g} rtol={self.rtol:g}"

    def summary(self) -> str:
        drop = ""
        if self.largest_drop_node is not None and self.largest_drop_db is not None and self.largest_drop_db > 0:
            drop = f"; largest SQNR drop at {self.largest_drop_node} ({self.largest_drop_db:.1f} dB)"
        if self.first_divergent_node is None:
            return f"no intermediate tensor exceeds {self.criterion}{drop}"
        row = next(t for t in self.tensors if t.node == self.first_divergent_node and t.exceeds)
        sqnr = f"SQNR {row.sqnr_db:.1f} dB, " if row.sqnr_db is not None and math.isfinite(row.sqnr_db) else ""
        max_abs = f"max|d|={row.max_abs_error:.3g}" if row.max_abs_error is not None else row.note
        return (
            f"first divergent node ({self.criterion}): {self.first_divergent_node} ({self.first_divergent_op}) "
            f"output {self.first_divergent_tensor}: {sqnr}{max_abs}{drop}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate, "fp32_model": self.fp32_model, "rule": self.rule,
            "min_sqnr_db": self.min_sqnr_db, "atol": self.atol, "rtol": self.rtol, "n_samples": self.n_samples,
            "first_divergent_node": self.first_divergent_node, "first_divergent_op": self.first_divergent_op,
            "first_divergent_tensor": self.first_divergent_tensor, "largest_drop_node": self.largest_drop_node,
            "largest_drop_db": self.largest_drop_db, "unmatched": self.unmatched,
            "tensors": [t.to_dict() for t in self.tensors],
        }


@dataclass(frozen=True)
class LocalizeCriterion:
    """How a tensor is judged: the rule, and the SQNR floor and atol/rtol that override the precision's defaults."""

    rule: Rule = "sqnr"
    min_sqnr_db: float | None = None
    atol: float | None = None
    rtol: float | None = None

    def resolved(self, precision: str) -> tuple[float, float, float]:
        """(SQNR floor, atol, rtol) for a candidate of ``precision``: the overrides, else its defaults."""
        if self.rule not in ("sqnr", "tolerance"):
            raise DataError(f"unknown localization rule {self.rule!r} (sqnr or tolerance)")
        key = precision_key(precision)
        floor = MIN_SQNR_DB[key] if self.min_sqnr_db is None else float(self.min_sqnr_db)
        atol = PRECISION_DEFAULTS[key].atol if self.atol is None else float(self.atol)
        rtol = PRECISION_DEFAULTS[key].rtol if self.rtol is None else float(self.rtol)
        return floor, atol, rtol


def localize(
    candidate: Any,
    fp32_model: Any,
    inputs: dict[str, np.ndarray],
    *,
    precision: str = "fp32",
    criterion: LocalizeCriterion | None = None,
    max_samples: int = DEFAULT_LOCALIZE_SAMPLES,
) -> LocalizationReport:
    """Compare every intermediate tensor of ``candidate`` (path or ModelProto) with ``fp32_model``.

    ``precision`` (the candidate's) picks the SQNR floor and the default atol/rtol; ``criterion``
    names the rule and may override them. A tensor whose FP32 value is all zeros has no SQNR; it is
    judged by atol/rtol under either rule.
    """
    criterion = criterion or LocalizeCriterion()
    rule = criterion.rule
    floor, atol, rtol = criterion.resolved(precision)
    cand_model = candidate if hasattr(candidate, "graph") else load_onnx(Path(candidate))
    ref_model = fp32_model if hasattr(fp32_model, "graph") else load_onnx(Path(fp32_model))
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
        rule=rule, min_sqnr_db=floor, atol=atol, rtol=rtol, n_samples=int(n),
    )
    sqnr_of: dict[str, float] = {}
    worst_drop = 0.0
    for node in ref_model.graph.node:
        if node.op_type == "Constant":
            continue
        for tensor in node.output:
            if not tensor or tensor not in ref_values:
                continue
            row = _judge(node, tensor, matching.get(tensor), ref_values, cand_values, report)
            report.tensors.append(row)
            if row.sqnr_db is not None:
                sqnr_of[tensor] = float(np.clip(row.sqnr_db, -_DROP_RANGE_DB, floor + _DROP_RANGE_DB))
                before = min((sqnr_of[i] for i in node.input if i in sqnr_of), default=floor + _DROP_RANGE_DB)
                if before - sqnr_of[tensor] > worst_drop:
                    worst_drop = before - sqnr_of[tensor]
                    report.largest_drop_node, report.largest_drop_db = row.node, round(worst_drop, 2)
            if row.exceeds and report.first_divergent_node is None:
                report.first_divergent_node = row.node
                report.first_divergent_op = row.op_type
                report.first_divergent_tensor = tensor
    log.info("localize: %s", report.summary())
    return report


def _judge(node: Any, tensor: str, target: str | None, ref_values: dict[str, np.ndarray],
           cand_values: dict[str, np.ndarray], report: LocalizationReport) -> TensorError:
    """One FP32 tensor against its candidate twin, under the report's rule."""
    row = TensorError(node.name or f"({node.op_type})", node.op_type, tensor, target)
    if target is None or target not in cand_values:
        row.note = "no matching tensor in the candidate"
        report.unmatched += 1
        return row
    ref_value, cand_value = ref_values[tensor], cand_values[target]
    if ref_value.dtype.kind not in "fiub" or cand_value.dtype.kind not in "fiub":
        row.note = f"not numeric ({ref_value.dtype})"
        return row
    as_float = [v.astype(np.float64) if v.dtype.kind == "f" else v for v in (cand_value, ref_value)]
    cmp = compare_arrays(tensor, as_float[0], as_float[1], report.atol, report.rtol)
    if cmp.problem and cmp.n_elements == 0 and "shape" in cmp.problem:
        row.note, row.exceeds = cmp.problem, True
        return row
    row.max_abs_error = cmp.max_abs_error
    row.p99_abs_error = cmp.p99_abs_error
    row.fraction_out_of_tolerance = cmp.fraction_out_of_tolerance
    row.note = cmp.problem or ""
    # The signal is the finite part of the reference (as in sqnr_db): all zeros there (NaN/Inf aside)
    # leaves nothing to measure noise against.
    signal = bool(np.any(np.where(np.isfinite(as_float[1]), as_float[1], 0)))
    if signal:
        row.sqnr_db = sqnr_db(as_float[0], as_float[1])
    if report.rule == "sqnr" and signal:
        row.exceeds = row.sqnr_db < report.min_sqnr_db  # type: ignore[operator]
    else:
        row.exceeds = not cmp.passed
        if not signal:
            row.note = row.note or "FP32 value is all zeros: judged by atol/rtol"
    return row


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
    names = [o.name for o in model.graph.output] + [out for node in model.graph.node for out in node.output if out]
    with OnnxRuntimeRunner(with_outputs(model, list(dict.fromkeys(names))), name="localization") as runner:
        return {k: np.asarray(v) for k, v in runner.run(feed).items()}
