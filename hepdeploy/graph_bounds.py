"""Lower bounds that a graph puts on its dynamic dims, with where each one comes from.

A k-NN tagger (ParticleNet's EdgeConv) takes the k + 1 nearest points along the particle axis with a
TopK of constant K, so any particle count below K cannot run, though the exporter left the dim
dynamic. Nothing in a model's signature says so. This module walks the graph, with ONNX Runtime's
symbolic shape inference to follow a graph input's dim names into the tensors a node reads, and finds
the constants that bound a dim from below:

* TopK with a constant K over an axis of size ``d``: ``d >= K``;
* Gather with constant indices along ``d``: ``d > max(index)`` (``d >= -min(index)`` for negative ones);
* Conv, MaxPool, AveragePool, LpPool with explicit padding, over a spatial dim ``d``:
  ``d + pads >= dilation * (kernel - 1) + 1``;
* Split with constant sizes along ``d``: ``d >= sum(sizes)``.

(Slice clamps its ends and Reshape ties dims together rather than bounding one, so neither is read.)
Each bound names its source (``n_pf >= 17: TopK 'TopK_39' k=17``); a dim bounded twice keeps the
largest. ``bound_from_error`` reads the bound a failed run states, for the one retry a check may make
when the walk missed one.

The same inference shows which outputs share the inputs' batch dim when an exporter named it differently on
them (``proven_leading_dims``: DeepJet Run 3's ``jet_pt [Identityjet_pt_dim_0, 1]`` beside inputs ``[N, ...]``).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.spec import DimRange, TensorSpec
from hepdeploy.weaver import PreprocessConfig

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

_POOLS = ("MaxPool", "AveragePool", "LpPool")
# Ops that pass a constant through unchanged in value (a K written as Constant -> Unsqueeze or Cast).
_PASS_THROUGH = ("Unsqueeze", "Squeeze", "Reshape", "Cast", "Identity", "Flatten")


@dataclass(frozen=True)
class DimBound:
    """``dim >= minimum``, because of ``source``."""

    dim: str
    minimum: int
    source: str

    def line(self) -> str:
        return f"{self.dim} >= {self.minimum}: {self.source}"

    def as_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "min": self.minimum, "source": self.source}


def graph_dim_bounds(model: onnx.ModelProto | Path | str) -> dict[str, DimBound]:
    """The lower bound of every dynamic dim of the graph inputs that the graph constrains, by dim name."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    names = {d.dim_param for value in proto.graph.input for d in value.type.tensor_type.shape.dim if d.dim_param}
    if not names:
        return {}
    shapes = _symbolic_shapes(proto)
    constants = _constants(proto)
    bounds: dict[str, DimBound] = {}
    for node in proto.graph.node:
        for bound in _node_bounds(node, shapes, constants):
            if bound.dim in names and bound.minimum > 1 and (
                    bound.dim not in bounds or bound.minimum > bounds[bound.dim].minimum):
                bounds[bound.dim] = bound
    return bounds


def bounded_range(base: DimRange, bound: DimBound | int | None) -> DimRange:
    """``base`` raised to respect a lower bound: min at least the bound, opt and max at least as large
    (max twice the bound, so a check still sees two sizes above it)."""
    minimum = bound.minimum if isinstance(bound, DimBound) else bound
    if minimum is None or base.min >= minimum:
        return base
    opt = max(base.opt if base.opt is not None else base.min, minimum)
    top = max(base.max if base.max is not None else opt, 2 * minimum)
    return DimRange(min=minimum, opt=opt, max=top)


def minimums(bounds: Mapping[str, DimBound]) -> dict[str, int]:
    return {dim: bound.minimum for dim, bound in bounds.items()}


# ONNX Runtime's own words when a TopK's K exceeds the axis it takes from (the usual k-NN case).
_TOPK_ERROR = re.compile(r"k argument \[(\d+)\] should not be greater than specified axis dim value \[(\d+)\]")


def bound_from_error(message: str, sizes: Mapping[str, int]) -> dict[str, int] | None:
    """The dims a failed run's message says were too small, at the size it needs: a TopK asking for more
    elements than the axis has raises every dim that had exactly that axis's size. None when the message
    states no such bound."""
    match = _TOPK_ERROR.search(message)
    if match is None:
        return None
    needed, had = int(match.group(1)), int(match.group(2))
    raised = {dim: needed for dim, size in sizes.items() if size == had}
    return raised or None


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, list[Any]]:
    """Every tensor's shape, dims as ints or names (ONNX Runtime's symbolic inference, else ONNX's)."""
    inferred = None
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception as error:  # a dependency's inference on a graph we did not make: only a help
        log.debug("symbolic shape inference failed: %s", error)
    if inferred is None:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as error:  # noqa: BLE001 - as above
            log.debug("ONNX shape inference failed: %s", error)
            inferred = model
    shapes: dict[str, list[Any]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                                  for d in value.type.tensor_type.shape.dim]
    return shapes


def proven_leading_dims(model: onnx.ModelProto, dim: str) -> tuple[dict[str, str], str]:
    """Graph outputs whose leading dim ONNX Runtime's symbolic shape inference proves to be ``dim`` (the
    inputs' shared leading dim), however the exporter named it there (DeepJet Run 3's
    ``jet_pt [Identityjet_pt_dim_0, 1]`` beside inputs ``[N, ...]``): output name -> ``dim``, and why the
    others are not. The outputs' declared shapes are cleared first, so only the graph's arithmetic speaks."""
    import onnx

    cleared = onnx.ModelProto()
    cleared.CopyFrom(model)
    for value in cleared.graph.output:
        value.type.tensor_type.ClearField("shape")
    shapes = _symbolic_shapes(cleared)
    proven: dict[str, str] = {}
    unproven = []
    for value in model.graph.output:
        shape = shapes.get(value.name)
        if shape and shape[0] == dim:
            proven[value.name] = dim
        else:
            unproven.append(f"{value.name} {shape if shape else 'unknown'}")
    why = (f"symbolic shape inference gives every output the inputs' leading dim {dim!r}" if not unproven else
           f"symbolic shape inference does not show these outputs' leading dim is the inputs' {dim!r}: "
           + ", ".join(unproven))
    return proven, why


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values known without running the graph: initializers, Constant nodes and what passes them on."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
                elif attribute.name in ("value_int", "value_ints"):
                    values[node.output[0]] = np.asarray(attribute.i if attribute.name == "value_int" else attribute.ints)
        elif node.op_type in _PASS_THROUGH and node.input and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _named(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else node.op_type


def _dim_at(shape: list[Any] | None, axis: int) -> str | None:
    if not shape or not -len(shape) <= axis < len(shape):
        return None
    dim = shape[axis]
    return dim if isinstance(dim, str) else None


def _node_bounds(node: onnx.NodeProto, shapes: dict[str, list[Any]],
                 constants: dict[str, np.ndarray]) -> list[DimBound]:
    data = shapes.get(node.input[0]) if node.input else None
    if node.op_type == "TopK" and len(node.input) > 1 and node.input[1] in constants:
        k = int(np.asarray(constants[node.input[1]]).reshape(-1)[0])
        dim = _dim_at(data, int(_attribute(node, "axis", -1)))
        return [DimBound(dim, k, f"{_named(node)} k={k}")] if dim else []
    if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in constants:
        indices = np.asarray(constants[node.input[1]])
        dim = _dim_at(data, int(_attribute(node, "axis", 0)))
        if dim is None or indices.size == 0:
            return []
        need = max(int(indices.max()) + 1, -int(indices.min()))
        return [DimBound(dim, need, f"{_named(node)} reads index {need - 1 if need > 0 else 0}")]
    if node.op_type == "Split" and data is not None:
        sizes = constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        sizes = sizes if sizes is not None else _attribute(node, "split", None)
        dim = _dim_at(data, int(_attribute(node, "axis", 0)))
        if dim is None or sizes is None or len(sizes) == 0:
            return []
        total = int(np.sum(sizes))
        return [DimBound(dim, total, f"{_named(node)} splits {total} along it")]
    if node.op_type in ("Conv", "ConvTranspose", *_POOLS) and data is not None:
        return _window_bounds(node, data, shapes, constants)
    return []


def _window_bounds(node: onnx.NodeProto, data: list[Any], shapes: dict[str, list[Any]],
                   constants: dict[str, np.ndarray]) -> list[DimBound]:
    """A sliding window needs its input at least as wide as the (dilated) window, less the padding."""
    if _attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return []
    kernel = _attribute(node, "kernel_shape", None)
    if kernel is None and node.op_type.startswith("Conv") and len(node.input) > 1:
        weight = constants.get(node.input[1])
        shape = list(weight.shape) if weight is not None else shapes.get(node.input[1])
        kernel = shape[2:] if shape and all(isinstance(k, int) for k in shape[2:]) else None
    if not kernel or node.op_type == "ConvTranspose":
        return []
    spatial = len(kernel)
    dilations = list(_attribute(node, "dilations", [1] * spatial))
    pads = list(_attribute(node, "pads", [0] * 2 * spatial))
    bounds = []
    for axis, size in enumerate(kernel):
        dim = _dim_at(data, 2 + axis)
        need = dilations[axis] * (int(size) - 1) + 1 - pads[axis] - pads[axis + spatial]
        if dim is not None and need > 1:
            bounds.append(DimBound(dim, need, f"{_named(node)} window {int(size)}"
                                              + (f" (dilation {dilations[axis]})" if dilations[axis] > 1 else "")))
    return bounds


def spec_dim_problems(dims: Mapping[str, DimRange], bounds: Mapping[str, DimBound], where: str = "spec") -> list[str]:
    """One line per dim whose declared range starts below the bound the graph puts on it."""
    return [f"{where}: dims.{dim}.min {dims[dim].min} < {bound.minimum} needed by {bound.source}: sizes below "
            f"{bound.minimum} cannot run; raise dims.{dim}.min to {bound.minimum}"
            for dim, bound in bounds.items() if dim in dims and dims[dim].min < bound.minimum]


def length_problems(config: PreprocessConfig, inputs: list[TensorSpec], bounds: Mapping[str, DimBound],
                    where: str = "preprocess.json") -> list[str]:
    """One line per dim whose groups' ``min_length`` in a weaver preprocess.json lies below the bound the
    graph puts on it: under the padding rule (a batch's longest event clamped into [min_length,
    max_length]), a batch of short events is padded to ``min_length`` and cannot run."""
    by_dim: dict[str, list[str]] = {}
    for tensor in inputs:
        group = config.groups.get(tensor.name)
        if group is None or group.flat or group.min_length is None:
            continue
        for dim in tensor.shape[1:]:
            bound = bounds.get(dim) if isinstance(dim, str) else None
            if bound is not None and group.min_length < bound.minimum:
                by_dim.setdefault(dim, []).append(tensor.name)
    lines = []
    for dim, names in by_dim.items():
        bound = bounds[dim]
        low = min(config.groups[n].min_length or 0 for n in names)
        shown = _common_prefix(names)
        lines.append(f"{where}: {shown} min_length {low} < {bound.minimum} needed by {bound.source}: batches whose "
                     f"longest event has <= {low} entries along {dim} cannot run; raise min_length to {bound.minimum}")
    return lines


def _common_prefix(names: list[str]) -> str:
    """``pf_*`` for pf_points, pf_features, pf_mask; the name itself when there is one."""
    if len(names) == 1:
        return names[0]
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return f"{prefix}*" if prefix else ", ".join(names)
