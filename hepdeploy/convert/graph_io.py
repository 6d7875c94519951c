"""Make an exported graph's inputs and outputs match the spec.

Exporters name things their own way (``x``, ``input_1:0``, ``unk__17``). Here the graph's
real inputs and outputs are renamed positionally to the spec's tensor names, every
reference to them follows, and dynamic dimensions get the spec's dimension names.
A spec whose rank or fixed sizes disagree with the model is a SpecError naming the tensor.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hepdeploy.artifacts import onnx_elem_type_name
from hepdeploy.errors import ConversionError, SpecError

if TYPE_CHECKING:
    import onnx

    from hepdeploy.spec import ModelSpec, TensorSpec

_DTYPE_TO_ONNX = {
    "float32": 1, "uint8": 2, "int8": 3, "int16": 5, "int32": 6, "int64": 7, "bool": 9,
    "float16": 10, "float64": 11, "bfloat16": 16,
}


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _rename_everywhere(model: onnx.ModelProto, old: str, new: str) -> None:
    if old == new:
        return
    graph = model.graph
    taken = {n for node in graph.node for n in [*node.input, *node.output]} | {i.name for i in graph.initializer}
    if new in taken:
        # Another tensor already has the spec's name: move it out of the way first.
        _rename_everywhere(model, new, f"{new}__renamed")
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for k, name in enumerate(node.output):
            if name == old:
                node.output[k] = new
        for attribute in node.attribute:  # control flow subgraphs (If/Loop/Scan) capture outer names
            for sub in [attribute.g, *attribute.graphs]:
                for sub_node in sub.node:
                    for k, name in enumerate(sub_node.input):
                        if name == old:
                            sub_node.input[k] = new
    for collection in (graph.input, graph.output, graph.value_info):
        for value in collection:
            if value.name == old:
                value.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def _check_and_name_dims(value: onnx.ValueInfoProto, tensor: TensorSpec, kind: str, where: str) -> None:
    dims = value.type.tensor_type.shape.dim
    if not value.type.tensor_type.HasField("shape"):
        return  # rank unknown: nothing to check against
    if len(dims) != len(tensor.shape):
        raise SpecError(
            f"{where}: {kind} {tensor.name!r} has rank {len(tensor.shape)} in the spec {tensor.shape} "
            f"but the model's {kind} has rank {len(dims)} {_shape_text(value)}"
        )
    for k, (dim, wanted) in enumerate(zip(dims, tensor.shape, strict=True)):
        if isinstance(wanted, str):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                raise ConversionError(
                    f"{where}: {kind} {tensor.name!r} dimension {k} is {wanted!r} in the spec, but the model fixes "
                    f"it to {dim.dim_value} (was it exported/traced with a static shape?)"
                )
            dim.Clear()
            dim.dim_param = wanted
        else:
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != wanted:
                raise SpecError(
                    f"{where}: {kind} {tensor.name!r} dimension {k} is {wanted} in the spec but {dim.dim_value} "
                    "in the model"
                )
            dim.Clear()
            dim.dim_value = wanted


def _shape_text(value: onnx.ValueInfoProto) -> str:
    parts = []
    for dim in value.type.tensor_type.shape.dim:
        parts.append(str(dim.dim_value) if dim.HasField("dim_value") else dim.dim_param or "?")
    return "[" + ", ".join(parts) + "]"


def check_dtypes(model: onnx.ModelProto, spec: ModelSpec, where: str) -> None:
    for value, tensor, kind in [*zip(real_inputs(model), spec.inputs, ["input"] * len(spec.inputs)),
                                *zip(model.graph.output, spec.outputs, ["output"] * len(spec.outputs))]:
        elem = value.type.tensor_type.elem_type
        want = _DTYPE_TO_ONNX.get(tensor.dtype)
        if elem and want and elem != want:
            raise SpecError(f"{where}: {kind} {tensor.name!r} is {tensor.dtype} in the spec but "
                            f"{onnx_elem_type_name(elem)} in the model")


def apply_spec_io(model: onnx.ModelProto, spec: ModelSpec, where: str) -> onnx.ModelProto:
    """Rename inputs/outputs positionally to the spec, check ranks and dtypes, name dynamic dims."""
    inputs = real_inputs(model)
    if len(inputs) != len(spec.inputs):
        raise SpecError(f"{where}: the model has {len(inputs)} input(s) ({', '.join(v.name for v in inputs)}) "
                        f"but the spec lists {len(spec.inputs)} ({', '.join(t.name for t in spec.inputs)})")
    outputs = list(model.graph.output)
    if len(outputs) != len(spec.outputs):
        raise SpecError(f"{where}: the model has {len(outputs)} output(s) ({', '.join(v.name for v in outputs)}) "
                        f"but the spec lists {len(spec.outputs)} ({', '.join(t.name for t in spec.outputs)})")
    check_dtypes(model, spec, where)
    for value, tensor in zip(inputs, spec.inputs, strict=True):
        _check_and_name_dims(value, tensor, "input", where)
    for value, tensor in zip(outputs, spec.outputs, strict=True):
        _check_output_dims(value, tensor, where)
    # Two passes through temporary names so swapping names (a->b, b->a) cannot collide.
    old_names = [v.name for v in inputs] + [v.name for v in outputs]
    new_names = [t.name for t in spec.inputs] + [t.name for t in spec.outputs]
    if old_names != new_names:
        temporary = [f"__hepdeploy_io_{k}" for k in range(len(old_names))]
        for old, tmp in zip(old_names, temporary, strict=True):
            _rename_everywhere(model, old, tmp)
        for tmp, new in zip(temporary, new_names, strict=True):
            _rename_everywhere(model, tmp, new)
    return model


def _check_output_dims(value: onnx.ValueInfoProto, tensor: TensorSpec, where: str) -> None:
    """Outputs: rank must agree when known; dims named from the spec where the model leaves them dynamic."""
    if not value.type.tensor_type.HasField("shape"):
        return
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(tensor.shape):
        raise SpecError(
            f"{where}: output {tensor.name!r} has rank {len(tensor.shape)} in the spec {tensor.shape} "
            f"but the model's output has rank {len(dims)} {_shape_text(value)}"
        )
    for dim, wanted in zip(dims, tensor.shape, strict=True):
        fixed = dim.HasField("dim_value") and dim.dim_value > 0
        if isinstance(wanted, str) and not fixed:
            dim.Clear()
            dim.dim_param = wanted
        elif isinstance(wanted, int) and fixed and dim.dim_value != wanted:
            raise SpecError(f"{where}: output {tensor.name!r} has size {dim.dim_value} in the model where the "
                            f"spec says {wanted}")
        elif isinstance(wanted, int) and not fixed:
            dim.Clear()
            dim.dim_value = wanted
