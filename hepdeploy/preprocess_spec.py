"""A spec made from an ONNX model and its weaver ``preprocess.json``, for commands given no spec.

A weaver preprocess.json names every input group, its variables (the channels), the ``min_length`` and
``max_length`` of its particle axis and, in ``output_names``, what the outputs are: it *is* the data
mapping a spec would repeat. ``spec_from_preprocess`` makes that spec, and says where each field came
from: tensors and their dims from the graph; each particle dim's sizes from its groups' lengths; the
preprocessing from the json; the class labels from ``output_names``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hepdeploy.artifacts import read_artifact
from hepdeploy.errors import BadInputError
from hepdeploy.fsutil import check_safe_name
from hepdeploy.ntuple import load_preprocess
from hepdeploy.spec import ModelSpec, TensorSpec
from hepdeploy.weaver import PreprocessConfig


@dataclass
class DerivedSpec:
    """A spec and, per field, where it came from."""

    spec: ModelSpec
    provenance: dict[str, str]

    def lines(self) -> list[str]:
        return [f"{field}: {source}" for field, source in self.provenance.items()]


def spec_from_preprocess(model: Path, preprocess: Path, name: str | None = None) -> DerivedSpec:
    """The spec of ``model`` served with the weaver preprocessing ``preprocess`` (BadInputError, one line,
    when the json's groups are not the model's inputs)."""
    model, preprocess = Path(model), Path(preprocess)
    config = load_preprocess(preprocess)
    sidecar = read_artifact(model).sidecar
    inputs, outputs = sidecar.inputs, sidecar.outputs
    if set(config.input_names) != {t.name for t in inputs}:
        raise BadInputError(f"{preprocess}: its groups ({', '.join(config.input_names)}) are not the inputs of "
                            f"{model.name} ({', '.join(t.name for t in inputs)})")
    provenance = {"inputs, outputs": f"the graph of {model.name}"}
    dims = {}
    for dim, (low, high, groups) in _particle_dims(config, inputs).items():
        dims[dim] = {"min": low, "opt": high, "max": high}
        provenance[f"dims.{dim}"] = f"{preprocess.name}: min_length {low}, max_length {high} of {', '.join(groups)}"
    labels, why = _labels(config, outputs)
    if labels:
        provenance["triton.labels"] = f"{preprocess.name}: output_names ({why})"
    provenance["data.preprocess"] = f"{preprocess.name} (cmssw convention unless --convention says otherwise)"
    spec = ModelSpec.model_validate({
        "name": check_safe_name(name or model.stem, "model name"),
        "source": {"framework": "onnx", "path": str(model.resolve())},
        "inputs": [t.model_dump(exclude_none=True) for t in inputs],
        "outputs": [t.model_dump(exclude_none=True) for t in outputs],
        "dims": dims,
        "data": {"preprocess": {"file": str(preprocess.resolve())}},
        "triton": {"labels": labels} if labels else {},
    })
    return DerivedSpec(spec, provenance)


def _particle_dims(config: PreprocessConfig, inputs: list[TensorSpec]) -> dict[str, tuple[int, int, list[str]]]:
    """Each named particle dim of the inputs with its groups' lengths (the widest range when groups that
    share the dim differ); channels-first [batch, C, n] as weaver writes them."""
    found: dict[str, tuple[int, int, list[str]]] = {}
    for tensor in inputs:
        group = config.groups[tensor.name]
        if group.flat or len(tensor.shape) != 3 or not isinstance(tensor.shape[2], str):
            continue
        dim = tensor.shape[2]
        low, high = max(group.min_length or 1, 1), int(group.max_length or 1)
        if dim in found:
            low, high = min(low, found[dim][0]), max(high, found[dim][1])
        found[dim] = (low, high, [*found.get(dim, (0, 0, []))[2], tensor.name])
    return found


def _labels(config: PreprocessConfig, outputs: list[TensorSpec]) -> tuple[list[str], str]:
    """The class labels of the first output whose last dim is fixed: the json's ``label_*`` output names
    when there are as many, else its first names; none when the json has too few."""
    names = list(config.output_names)
    for tensor in outputs:
        classes = tensor.shape[-1] if tensor.shape else None
        if not isinstance(classes, int) or classes < 2:
            continue
        tagged = [n for n in names if n.startswith("label_")]
        if len(tagged) == classes:
            return tagged, f"its {classes} label_* names, for output {tensor.name!r} [.., {classes}]"
        if len(names) >= classes:
            return names[:classes], f"its first {classes} names, for output {tensor.name!r} [.., {classes}]"
        return [], ""
    return [], ""
