"""Reference sets: inputs, golden outputs of the source model, optional labels and per-event
variables, provenance.

Stored as one ``.npz`` (keys ``input/NAME``, ``output/NAME``, ``label/NAME``, ``variable/NAME``
and a JSON ``__provenance__``), and read/written in the ONNX test-data layout
(``test_data_set_N/input_K.pb``, ``output_K.pb``; labels as ``label_K.pb`` and variables as
``variable_K.pb``, which the ONNX test runners ignore). Variables are per-event arrays kept for
the physics checks: binning variables (jet pT, true energy) and ``event``, which groups the
rows of a graph network into the events the bootstrap resamples. A reference must be finite: NaN or Inf in golden outputs is
refused when a set is made, saved or loaded.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.backend.base import ACTIVATION_BUDGET, Runner
from hepdeploy.backend.onnxrt import activation_bytes_per_row
from hepdeploy.backend.sources import OpenedSource, open_source
from hepdeploy.data import common_batch_size, load_tensors, read_root_events, save_tensors
from hepdeploy.environment import versions
from hepdeploy.errors import BadInputError, DataError
from hepdeploy.fsutil import atomic_write_bytes, check_output_folder
from hepdeploy.judgement import Judgement
from hepdeploy.ntuple import is_root_source

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec

log = logging.getLogger("hepdeploy.validate.reference")

REFERENCE_FORMAT = 1
# provenance["inputs"] of a set of raw features for a served preprocessing (NaN/Inf are data there).
RAW_INPUTS = "raw"
_INPUT, _OUTPUT, _LABEL, _VARIABLE, _PROVENANCE = "input/", "output/", "label/", "variable/", "__provenance__"


@dataclass
class ReferenceSet:
    """Inputs, the source model's outputs for them, optional labels/targets, and who made them."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        first = next(iter(self.inputs.values()), None)
        return 0 if first is None or first.ndim == 0 else int(first.shape[0])

    @property
    def batched(self) -> bool:
        """True when every input shares one first dimension (the batch axis) that can be split."""
        return common_batch_size(self.inputs) is not None

    def check(self, where: str = "reference") -> ReferenceSet:
        """Raise DataError unless the set is usable: non-empty, finite outputs, labels of the right length."""
        if not self.inputs:
            raise DataError(f"{where}: no inputs")
        if not self.outputs:
            raise DataError(f"{where}: no reference outputs")
        for name, array in self.inputs.items():
            if array.size == 0 or (array.ndim > 0 and array.shape[0] == 0):
                raise DataError(f"{where}: input {name!r} is empty (shape {list(array.shape)})")
            raw = self.provenance.get("inputs") == RAW_INPUTS
            if not raw and array.dtype.kind in "fc" and not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).sum())
                raise DataError(f"{where}: input {name!r} has {bad} NaN/Inf values; the inputs of a reference set "
                                "must be finite (preprocess them as the model's inputs are)")
        for name, array in self.outputs.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).sum())
                raise DataError(
                    f"{where}: reference output {name!r} has {bad} NaN/Inf values; a reference must be finite"
                )
        n = self.n_samples
        # Labels go with samples, or (models without a batch axis, e.g. per-edge scores)
        # with the rows of an output.
        allowed = {n} if self.batched else {n} | {o.shape[0] for o in self.outputs.values() if o.ndim}
        for kind, group in (("labels", self.labels), ("variable", self.variables)):
            for name, array in group.items():
                if array.ndim == 0 or array.shape[0] not in allowed:
                    length = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
                    what = f"the inputs have {n} samples" if self.batched else (
                        f"neither the inputs ({n}) nor an output ({', '.join(str(a) for a in sorted(allowed - {n}))}) "
                        "have that many rows")
                    raise DataError(f"{where}: {kind} {name!r} have {length} but {what}")
                if kind == "variable" and array.dtype.kind in "fc" and not np.isfinite(array).all():
                    raise DataError(f"{where}: variable {name!r} has NaN/Inf values")
        return self

    def take(self, rows: np.ndarray) -> ReferenceSet:
        """The samples at ``rows`` (a batched set; labels and variables follow their samples)."""
        n = self.n_samples

        def pick(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: (v[rows] if v.ndim and v.shape[0] == n else v) for k, v in arrays.items()}

        return ReferenceSet(pick(self.inputs), pick(self.outputs), pick(self.labels), dict(self.provenance),
                            pick(self.variables))

    def split(self, seed: int) -> tuple[ReferenceSet, ReferenceSet]:
        """Two disjoint halves, each sample drawn into one of them by a seeded permutation (the order of
        the file does not matter): one to choose on, one to confirm the choice on. A set without a batch
        axis to split is bad input here."""
        if not self.batched or self.n_samples < 2:
            raise BadInputError("the reference set has no batch axis to split into two halves: give a second "
                                "reference set to confirm on")
        order = np.random.default_rng(seed).permutation(self.n_samples)
        half = self.n_samples // 2
        halves = []
        for k, rows in enumerate((np.sort(order[:half]), np.sort(order[half:])), start=1):
            part = self.take(rows)
            part.provenance["split"] = f"half {k} of 2 (seed {seed})"
            halves.append(part)
        return halves[0], halves[1]

    def subset(self, stop: int) -> ReferenceSet:
        """The first ``stop`` samples; a set without a common batch axis is returned whole."""
        if not self.batched:
            return self
        n = self.n_samples

        def cut(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: (v[:stop] if v.ndim and v.shape[0] == n else v) for k, v in arrays.items()}

        return ReferenceSet(cut(self.inputs), cut(self.outputs), cut(self.labels), dict(self.provenance),
                            cut(self.variables))


# ---------------------------------------------------------------------------- npz


def save_reference(reference: ReferenceSet, path: Path) -> Path:
    """Write a reference set to ``.npz`` atomically (refused when its outputs are not finite)."""
    path = Path(path)
    reference.check(str(path))
    if path.suffix != ".npz":
        raise BadInputError(f"{path}: a reference set is written as .npz")
    check_output_folder(path)
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in ((_INPUT, reference.inputs), (_OUTPUT, reference.outputs), (_LABEL, reference.labels),
                          (_VARIABLE, reference.variables)):
        for name, value in group.items():
            arrays[prefix + name] = np.asarray(value)
    provenance = {"format": REFERENCE_FORMAT, **reference.provenance}
    arrays[_PROVENANCE] = np.array(json.dumps(provenance, default=str))
    return save_tensors(path, arrays, compress=True)


def load_reference(path: Path) -> ReferenceSet:
    """Read a reference set from ``.npz`` or from an ONNX test-data folder; checked before use."""
    path = Path(path)
    if path.is_dir():
        return read_onnx_test_data(path)
    arrays = load_tensors(path)
    if not any(k.startswith(_OUTPUT) for k in arrays):
        raise DataError(
            f"{path}: not a hepdeploy reference set (no 'output/NAME' arrays; make one with `hepdeploy reference`)"
        )
    provenance: dict[str, Any] = {}
    if _PROVENANCE in arrays:
        try:
            provenance = json.loads(str(arrays.pop(_PROVENANCE)))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: provenance record is not valid JSON") from error
    reference = ReferenceSet(
        inputs={k[len(_INPUT):]: v for k, v in arrays.items() if k.startswith(_INPUT)},
        outputs={k[len(_OUTPUT):]: v for k, v in arrays.items() if k.startswith(_OUTPUT)},
        labels={k[len(_LABEL):]: v for k, v in arrays.items() if k.startswith(_LABEL)},
        provenance=provenance,
        variables={k[len(_VARIABLE):]: v for k, v in arrays.items() if k.startswith(_VARIABLE)},
    )
    reference.provenance.setdefault("file", str(path))
    return reference.check(str(path))


# ---------------------------------------------------------------------------- ONNX layout


def write_onnx_test_data(
    reference: ReferenceSet,
    folder: Path,
    input_order: list[str] | None = None,
    output_order: list[str] | None = None,
    samples_per_set: int | None = None,
) -> list[Path]:
    """Write ``folder/test_data_set_N/{input,output,label}_K.pb`` (TensorProto files).

    ``samples_per_set`` splits the batch into several sets (all in one set when None).
    The orders give K (the model's input/output order); default: the set's own order.
    """
    from onnx import numpy_helper

    reference.check(str(folder))
    folder = Path(folder)
    check_output_folder(folder)
    folder.mkdir(exist_ok=True)
    inputs = input_order or list(reference.inputs)
    outputs = output_order or list(reference.outputs)
    n = reference.n_samples
    step = samples_per_set or max(n, 1)
    written = []
    for index, start in enumerate(range(0, max(n, 1), step)):
        part = _slice(reference, start, start + step)
        set_dir = folder / f"test_data_set_{index}"
        set_dir.mkdir(exist_ok=True)
        for kind, names, arrays in (("input", inputs, part.inputs), ("output", outputs, part.outputs),
                                    ("label", list(part.labels), part.labels),
                                    ("variable", list(part.variables), part.variables)):
            for k, name in enumerate(names):
                if name not in arrays:
                    raise DataError(f"{kind} {name!r} is not in the reference set")
                proto = numpy_helper.from_array(np.ascontiguousarray(arrays[name]), name=name)
                written.append(atomic_write_bytes(set_dir / f"{kind}_{k}.pb", proto.SerializeToString()))
    if reference.provenance:
        written.append(atomic_write_bytes(folder / "provenance.json",
                                          json.dumps(reference.provenance, indent=2, default=str).encode()))
    return written


def read_onnx_test_data(folder: Path) -> ReferenceSet:
    """Read every ``test_data_set_N`` of a folder (or one set folder); sets are concatenated on axis 0."""
    from onnx import TensorProto, numpy_helper

    folder = Path(folder)
    sets = sorted(folder.glob("test_data_set_*"), key=lambda p: _index(p.name))
    if not sets and list(folder.glob("input_*.pb")):
        sets = [folder]
    if not sets:
        raise DataError(f"{folder}: no test_data_set_N folders and no input_K.pb files")
    parts: list[ReferenceSet] = []
    for set_dir in sets:
        groups: dict[str, dict[str, np.ndarray]] = {"input": {}, "output": {}, "label": {}, "variable": {}}
        for kind in groups:
            for k, pb in enumerate(sorted(set_dir.glob(f"{kind}_*.pb"), key=lambda p: _index(p.stem))):
                proto = TensorProto()
                try:
                    proto.ParseFromString(pb.read_bytes())
                    array = numpy_helper.to_array(proto)
                except Exception as error:  # protobuf DecodeError, ValueError on odd dtypes
                    raise DataError(f"{pb}: not a readable TensorProto ({type(error).__name__})") from error
                groups[kind][proto.name or f"{kind}_{k}"] = array
        parts.append(ReferenceSet(groups["input"], groups["output"], groups["label"], variables=groups["variable"]))
    provenance: dict[str, Any] = {}
    prov_file = folder / "provenance.json"
    if prov_file.is_file():
        try:
            provenance = json.loads(prov_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("%s: ignoring unreadable provenance.json", prov_file)
    provenance.setdefault("file", str(folder))
    merged = parts[0] if len(parts) == 1 else _concatenate(parts, folder)
    merged.provenance = provenance
    return merged.check(str(folder))


def _index(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _slice(reference: ReferenceSet, start: int, stop: int) -> ReferenceSet:
    n = reference.n_samples

    def cut(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: (v[start:stop] if v.ndim and v.shape[0] == n else v) for k, v in arrays.items()}

    return ReferenceSet(cut(reference.inputs), cut(reference.outputs), cut(reference.labels),
                        variables=cut(reference.variables))


def _concatenate(parts: list[ReferenceSet], where: Path) -> ReferenceSet:
    def join(group: str) -> dict[str, np.ndarray]:
        names = list(getattr(parts[0], group))
        out = {}
        for name in names:
            arrays = [getattr(p, group).get(name) for p in parts]
            if any(a is None for a in arrays):
                raise DataError(f"{where}: {group[:-1]} {name!r} is missing from some test_data_set folders")
            try:
                out[name] = np.concatenate(arrays, axis=0)
            except ValueError as error:
                raise DataError(f"{where}: {group[:-1]} {name!r} has different shapes across test data sets") from error
        return out

    return ReferenceSet(join("inputs"), join("outputs"), join("labels"), variables=join("variables"))


# ---------------------------------------------------------------------------- making one


def load_data_file(data: Mapping[str, np.ndarray] | Path | str, spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
    """Arrays from a dict or a data file (.npz via hepdeploy.data; a reference set gives its inputs, labels and
    variables; ROOT files, or a glob of them, are read through the spec's data mapping)."""
    if isinstance(data, Mapping):
        return {str(k): np.asarray(v) for k, v in data.items()}
    if is_root_source(data):
        if spec is None:
            raise DataError(f"{data}: reading ROOT data needs the model's spec (its data.inputs mapping)")
        return read_root_events(data, list(spec.inputs), spec.data,
                                extra_variables=list(spec.validation.physics.bins))
    path = Path(data)
    if path.is_dir():
        ref = read_onnx_test_data(path)
        return {**ref.inputs, **ref.labels, **ref.variables}
    arrays = load_tensors(path)
    if any(k.startswith(_OUTPUT) for k in arrays):  # a golden file given as data: use its inputs and labels
        ref = load_reference(path)
        return {**ref.inputs, **ref.labels, **ref.variables}
    return arrays


def resolve_labels(
    labels: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    arrays: dict[str, np.ndarray],
    spec_label_name: str | None = None,
) -> dict[str, np.ndarray]:
    """Labels/targets: a name inside the data, a file (.npz: every array), an array, or the spec's name."""
    if labels is None:
        if spec_label_name and spec_label_name in arrays:
            return {spec_label_name: arrays[spec_label_name]}
        return {}
    if isinstance(labels, np.ndarray):
        return {"labels": labels}
    if isinstance(labels, Mapping):
        return {str(k): np.asarray(v) for k, v in labels.items()}
    text = str(labels)
    if text in arrays:
        return {text: arrays[text]}
    path = Path(text)
    if path.suffix == ".npz" or path.exists():
        loaded = load_tensors(path)
        if not loaded:
            raise DataError(f"{path}: no arrays in the labels file")
        return loaded
    raise DataError(f"labels {text!r}: neither an array in the data ({', '.join(sorted(arrays))}) nor a file")


def make_reference(
    source: Runner | ModelSpec | Path | str,
    data: Mapping[str, np.ndarray] | Path | str,
    *,
    labels: str | Path | Mapping[str, np.ndarray] | np.ndarray | None = None,
    spec: ModelSpec | None = None,
    chunk_size: int | None = None,
    max_samples: int | None = None,
    variables: Sequence[str] | None = None,
    sizing_model: Path | None = None,
) -> ReferenceSet:
    """Run the source model on ``data`` and return the reference set.

    ``sizing_model``: an ONNX graph of the same network (the converted artifact); chunks are kept small
    enough for its intermediate tensors to fit ``ACTIVATION_BUDGET`` (the source runner cannot tell).

    ``source``: a Runner, a ModelSpec, or a model path (``.onnx``, ``.yaml`` spec, or a
    TensorRT engine).
    ``data``: a dict of arrays or a data file; arrays not consumed as inputs may hold
    labels (``labels='NAME'`` or the spec's ``data.labels``) and per-event variables
    (``variables``, default: the spec's ``data.variables`` and the variables its physics
    checks bin in).
    """
    opened = open_source(source)
    # A runner handed in belongs to the caller; one opened here is closed here.
    with nullcontext() if isinstance(source, Runner) else opened.runner:
        return _run_reference(opened, data, spec or opened.spec, labels=labels, chunk_size=chunk_size,
                              max_samples=max_samples, variables=variables, sizing_model=sizing_model)


def _run_reference(opened: OpenedSource, data: Mapping[str, np.ndarray] | Path | str, spec_obj: ModelSpec | None, *,
                   labels: str | Path | Mapping[str, np.ndarray] | np.ndarray | None, chunk_size: int | None,
                   max_samples: int | None, variables: Sequence[str] | None,
                   sizing_model: Path | None) -> ReferenceSet:
    runner, source_info = opened.runner, opened.provenance
    arrays = load_data_file(data, spec_obj)
    if not arrays:
        raise DataError(f"{data}: the data set is empty")
    input_names = _input_names(runner, spec_obj, arrays)
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise DataError(
            f"{data if not isinstance(data, Mapping) else 'data'}: has no array named {', '.join(missing)} "
            f"(model inputs: {', '.join(input_names)}; data: {', '.join(sorted(arrays))})"
        )
    inputs = {n: arrays[n] for n in input_names}
    label_arrays = resolve_labels(labels, arrays, spec_obj.data.label_array if spec_obj is not None else None)
    variable_arrays = _variables(variables, spec_obj, arrays)
    where = str(data) if not isinstance(data, Mapping) else "data"
    if max_samples is not None and common_batch_size(inputs) is not None:
        inputs = {k: v[:max_samples] for k, v in inputs.items()}
        label_arrays = {k: v[:max_samples] for k, v in label_arrays.items()}
        variable_arrays = {k: v[:max_samples] for k, v in variable_arrays.items()}
    probe = ReferenceSet(inputs, {"_": np.zeros(1)}, {})
    probe.check(where)
    if common_batch_size(inputs) is not None:  # labels and variables checked before the (maybe long) run
        ReferenceSet(inputs, {"_": np.zeros(1)}, label_arrays, variables=variable_arrays).check(where)
    chunk = Judgement(chunk_size=chunk_size or None).chunk_for(spec_obj)
    if sizing_model is not None and common_batch_size(inputs) is not None:
        per_row = activation_bytes_per_row(sizing_model, inputs)
        chunk = min(chunk, max(1, int(ACTIVATION_BUDGET // per_row))) if per_row > 0 else chunk
    outputs = runner.run_chunked(inputs, chunk)
    provenance = {
        **source_info,
        "runner": runner.describe(),
        "n_samples": probe.n_samples,
        "data": None if isinstance(data, Mapping) else str(data),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    reference = ReferenceSet(inputs, outputs, label_arrays, provenance, variable_arrays)
    return reference.check(where)


def _variables(names: Sequence[str] | None, spec: ModelSpec | None, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-event variables asked for (or the spec's), each one present in the data."""
    if names is None:
        names = [] if spec is None else [*spec.data.variable_names, *spec.validation.physics.bins]
    missing = sorted({n for n in names if n not in arrays})
    if missing:
        raise DataError(f"the data has no variable {', '.join(missing)} (it has {', '.join(sorted(arrays))})")
    return {name: np.asarray(arrays[name]) for name in dict.fromkeys(names)}


def _input_names(runner: Runner, spec: ModelSpec | None, arrays: dict[str, np.ndarray]) -> list[str]:
    names = runner.input_names
    if names:
        return list(names)
    if spec is not None:
        return [t.name for t in spec.inputs]
    raise DataError("cannot tell which data arrays are the model inputs: give a spec or an ONNX model")
