"""A model spec from command-line options (``hepdeploy convert SOURCE --input ...``).

When no spec file is given, the source's framework comes from ``--framework`` or the
file itself, and tensors from ``--input``/``--output``; where they are left out they
are read from the model (ONNX, Keras) or found by running it (outputs of any model).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.artifacts import load_onnx, tensor_specs_of
from hepdeploy.backend.loaders import load_keras, load_state_dict, sniff_framework
from hepdeploy.backend.sources import source_runner
from hepdeploy.errors import ModelLoadError, SpecError, first_line
from hepdeploy.fsutil import missing
from hepdeploy.sampling import sample_inputs, self_check_sizes, trace_sizes
from hepdeploy.spec import ModelSpec, TensorSpec, parse_tensor_option, spec_from_dict


def _identifier(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return text if text and text[0].isalpha() else f"t_{text}"


def _dim_name(tensor: str, axis: int) -> str:
    return "batch" if axis == 0 else f"{_identifier(tensor)}_dim{axis}"


def _onnx_tensors(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    model = load_onnx(path, load_weights=False)
    inputs, outputs = tensor_specs_of(model)
    return ([_validated(t) for t in inputs], [_validated(t) for t in outputs])


def _validated(tensor: TensorSpec) -> TensorSpec:
    """Re-validate a tensor read from a model (its name must be safe for our files)."""
    return TensorSpec(**tensor.model_dump())


def _keras_inputs(path: Path) -> list[TensorSpec]:
    model = load_keras(path)
    tensors = []
    for value in model.inputs:
        name = value.name.split(":")[0]
        shape = [d if d is not None else _dim_name(name, k) for k, d in enumerate(value.shape)]
        tensors.append(TensorSpec(name=name, dtype=str(np.dtype(value.dtype)), shape=shape))
    return tensors


def infer_outputs(spec: ModelSpec, loaded: Any | None = None) -> list[TensorSpec]:
    """Output tensor specs found by running the source model at two different sizes.

    A dimension that follows an input dimension's size between the two runs takes its
    name; one that stays the same is fixed.
    """
    runner = source_runner(spec, loaded)
    runner.output_names = None  # discover them
    first = trace_sizes(spec)
    candidates = [s for s in self_check_sizes(spec) if all(s.get(k) != v for k, v in first.items())]
    second = candidates[-1] if candidates else None
    try:
        outs_a = runner.run(sample_inputs(spec.inputs, first, 0))
        outs_b = runner.run(sample_inputs(spec.inputs, second, 1)) if second else outs_a
    except Exception as error:
        text = first_line(error)
        raise SpecError(f"{spec.source.path or spec.name}: the model does not run on inputs shaped "
                        f"{[t.shape for t in spec.inputs]}: {text}") from error
    tensors = []
    for k, (name, a) in enumerate(outs_a.items()):
        b = outs_b[name]
        shape: list[int | str] = []
        for axis, (size_a, size_b) in enumerate(zip(a.shape, b.shape, strict=False)):
            if size_a == size_b:
                shape.append(int(size_a))
                continue
            named = [d for d, v in first.items() if v == size_a and second and second.get(d) == size_b]
            shape.append(named[0] if named else f"output_{k}_dim{axis}")
        tensors.append(TensorSpec(name=name if name.isidentifier() else f"output_{k}", dtype=str(a.dtype),
                                  shape=shape))
    return tensors


def spec_from_options(
    source: Path,
    framework: str | None = None,
    factory: str | None = None,
    inputs: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    name: str = "model",
    opset: int | None = None,
) -> ModelSpec:
    """Build a ModelSpec for ``hepdeploy convert SOURCE`` without a spec file."""
    source = Path(source)
    if not source.exists():
        raise ModelLoadError(missing(source, "model file"))
    kind = framework or (
        "torch" if factory and source.suffix == ".py" else sniff_framework(source)
    )
    source_block: dict[str, Any] = {"framework": kind, "path": str(source.resolve())}
    if kind == "torch_pickle" or (kind == "torch" and source.suffix != ".py"):
        if not factory:
            load_state_dict(source)  # refuses a pickle that is not weights-only, with its own message
            raise SpecError(f"{source}: is a PyTorch state dict, not a model; give --factory module:function "
                            "to build the nn.Module it belongs to")
        source_block = {"framework": "torch", "factory": factory, "weights": str(source.resolve())}
    elif kind == "torch":
        if not factory:
            raise SpecError(f"{source}: a .py source needs --factory module:function")
        source_block = {"framework": "torch", "factory": factory, "path": str(source.resolve())}
    elif factory:
        raise SpecError(f"--factory is only for PyTorch state dicts and .py modules, not {kind} models")
    input_specs = [parse_tensor_option(text) for text in inputs]
    output_specs = [parse_tensor_option(text) for text in outputs]
    if not input_specs:
        if source_block["framework"] == "onnx":
            input_specs = _onnx_tensors(source)[0]
        elif source_block["framework"] == "keras":
            input_specs = _keras_inputs(source)
        else:
            raise SpecError(f"{source}: give the inputs (--input name:dtype:shape, e.g. x:float32:batch,16) "
                            "or a spec (--spec)")
    if not output_specs and source_block["framework"] == "onnx":
        output_specs = _onnx_tensors(source)[1]
    data: dict[str, Any] = {
        "name": name,
        "source": source_block,
        "inputs": [t.model_dump(exclude_none=True) for t in input_specs],
        "outputs": [t.model_dump(exclude_none=True) for t in output_specs] or [{"name": "output_0", "shape": [1]}],
    }
    if opset is not None:
        data["opset"] = opset
    spec = spec_from_dict(data, where="command line", base_dir=Path.cwd())
    if not output_specs:
        spec = spec.model_copy(update={"outputs": infer_outputs(spec)})
    return spec
