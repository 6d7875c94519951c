"""Model inputs, labels and binning variables from ROOT ntuples, through the spec's ``data`` mapping.

Read with uproot and awkward-array, chunk by chunk (``uproot.iterate``), so files larger than memory
work; one file, several (a glob), a tree in a folder (``dir/Events``). One entry is one event (a jet).

* A tensor stacked from scalar branches: ``input_1: {branches: [jet_pt, jet_eta, ...]}`` -> [events, C].
* A padded particle tensor from jagged branches that share their counts per entry:
  ``pf_features: {branches: [...], length: 50, pad: 0, sort_by: PFCands_pt, layout: channels_first}``
  -> [events, C, length] (``channels_last``: [events, length, C]); particles keep their stored order
  unless ``sort_by`` names a branch (descending).
* A mask from another input's counts: ``pf_mask: {mask_of: pf_features}`` -> 1 for particles, 0 for pads.
* With ``data.preprocess`` (a weaver preprocess.json, see :mod:`hepdeploy.weaver`) the json's groups
  centre/scale/clip/pad the mapped variables; its lengths and pads win over the mapping's, and an
  input's branches default to the json's ``var_names``.
* Labels: a branch (the class index or target) or one-hot branches (turned into the class index);
  binning variables the same way.
"""
from __future__ import annotations

import glob
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.errors import DataError
from hepdeploy.fsutil import atomic_path
from hepdeploy.spec import ColumnSource, DataSpec, InputMapping, TensorSpec
from hepdeploy.weaver import (
    IDENTITY,
    InputGroup,
    PreprocessConfig,
    PreprocessFormatError,
    group_tensor,
    load_config,
    mask_owners,
)

log = logging.getLogger("hepdeploy.ntuple")

ROOT_SUFFIXES = (".root",)
# Entries read per chunk: bounds memory for files larger than memory.
CHUNK_ENTRIES = 100_000


def is_root_source(path: Path | str) -> bool:
    """A ``.root`` file or a glob of them."""
    return Path(str(path)).suffix.lower() in ROOT_SUFFIXES


def root_files(source: Path | str) -> list[Path]:
    """The files of a ROOT source: one path, or every match of a glob (sorted)."""
    text = str(source)
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text))
        if not files:
            raise DataError(f"{text}: no file matches")
    else:
        files = [Path(text)]
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: no such data file")
    return files


def load_preprocess(path: Path) -> PreprocessConfig:
    try:
        return load_config(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read the preprocess.json ({type(error).__name__})") from error
    except PreprocessFormatError as error:
        raise DataError(f"{path}: {error}") from error


# --------------------------------------------------------------------------- the plan


@dataclass
class TensorPlan:
    """How one model input is made: its branches and rules, or the counts of another input."""

    name: str
    branches: list[str] = field(default_factory=list)
    group: InputGroup | None = None  # None: scalar branches stacked, or one array branch as it is
    convention: str = "raw"
    length: int | None = None  # fixed by the mapping or the model; None: the group's min/max rule
    sort_by: str | None = None
    layout: str = "channels_first"
    mask_of: str | None = None
    dtype: str = "float32"  # the model input's: scalar columns are cast to it (ints and bools to floats)
    rank: int = 2


def plan_inputs(inputs: list[TensorSpec], data: DataSpec, preprocess: PreprocessConfig | None = None,
                convention: str | None = None) -> list[TensorPlan]:
    """One plan per model input from the spec's mapping and the preprocess.json (if any)."""
    known = {t.name for t in inputs}
    unknown = sorted((set(data.inputs) | set(data.root_branches)) - known)
    if unknown:
        raise DataError(f"data.inputs names {', '.join(unknown)}, not an input of the model ({', '.join(sorted(known))})")
    chosen = convention or (data.preprocess.convention if data.preprocess else "raw")
    masks = mask_inputs(data, preprocess)
    plans = []
    for tensor in inputs:
        mapping = data.inputs.get(tensor.name) or (
            InputMapping(mask_of=masks[tensor.name]) if tensor.name in masks else InputMapping())
        group = preprocess.groups.get(tensor.name) if preprocess else None
        fixed = _fixed_particle_dim(tensor, mapping.layout)
        if mapping.mask_of is not None:
            if mapping.mask_of not in known or mapping.mask_of == tensor.name:
                raise DataError(f"data.inputs.{tensor.name}.mask_of: {mapping.mask_of!r} is not another model input")
            plans.append(TensorPlan(tensor.name, group=group, convention=chosen if group else "raw",
                                    length=fixed, layout=mapping.layout, mask_of=mapping.mask_of))
            continue
        # --root-branch INPUT=B1,B2,... stacks several scalar branches, as data.inputs.INPUT.branches does.
        branches = mapping.branches or (list(group.var_names) if group else None) \
            or [b.strip() for b in data.root_branches.get(tensor.name, tensor.name).split(",") if b.strip()]
        if group is not None and len(branches) != len(group.var_names):
            raise DataError(f"data.inputs.{tensor.name}: {len(branches)} branches for the preprocess.json's "
                            f"{len(group.var_names)} variables ({', '.join(group.var_names)})")
        length = fixed
        if group is not None and not group.flat and fixed is not None and not (
                (group.min_length or 0) <= fixed <= group.max_length):  # type: ignore[operator]
            raise DataError(f"{tensor.name}: the model's fixed length {fixed} is outside the preprocess.json's "
                            f"{group.min_length}..{group.max_length}")
        if group is None:
            length = length or mapping.length
            if length is not None or mapping.sort_by is not None:
                group = InputGroup(tensor.name, tuple(branches), tuple(replace(IDENTITY, pad=mapping.pad) for _ in branches),
                                   length, length)
        plans.append(TensorPlan(tensor.name, list(branches), group, chosen if tensor.name in (
            preprocess.groups if preprocess else {}) else "raw", length, mapping.sort_by, mapping.layout,
            dtype=tensor.dtype, rank=len(tensor.shape)))
    by_name = {p.name: p for p in plans}
    for plan in plans:  # a mask follows its input's length rule (the json may give it its own group)
        if plan.mask_of is None:
            continue
        owner = by_name[plan.mask_of]
        if owner.group is None or owner.group.flat:
            raise DataError(f"data.inputs.{plan.name}.mask_of: {owner.name!r} has no particle axis "
                            f"(give it a length or a preprocess.json group with one)")
        if plan.group is None:
            plan.group = InputGroup(plan.name, ("mask",), (replace(IDENTITY, pad=0.0),),
                                    owner.group.min_length, owner.group.max_length)
    return plans


def mask_inputs(data: DataSpec, preprocess: PreprocessConfig | None) -> dict[str, str]:
    """Mask input -> the input whose counts make it: ``data.inputs.NAME.mask_of`` where the spec maps an
    input, else the preprocess.json's mask groups (:func:`hepdeploy.weaver.mask_owners`)."""
    masks = {name: m.mask_of for name, m in data.inputs.items() if m.mask_of is not None}
    if preprocess is not None:
        masks.update({name: owner for name, owner in mask_owners(preprocess).items() if name not in data.inputs})
    return masks


def preprocess_file(data: DataSpec) -> Path | None:
    """The spec's preprocess.json, or None."""
    return Path(data.preprocess.file) if data.preprocess is not None else None


def _fixed_particle_dim(tensor: TensorSpec, layout: str) -> int | None:
    if len(tensor.shape) != 3:
        return None
    dim = tensor.shape[2] if layout == "channels_first" else tensor.shape[1]
    return dim if isinstance(dim, int) else None


def _column_branches(source: ColumnSource | str) -> list[str]:
    if isinstance(source, str):
        return [source]
    return [source.branch] if source.branch is not None else list(source.branches or [])


def target_sources(data: DataSpec, extra_variables: list[str] = ()) -> dict[str, ColumnSource | str]:
    """Labels and binning variables by the name they get in a reference set."""
    sources: dict[str, ColumnSource | str] = {}
    if data.labels is not None:
        sources[data.label_array] = data.labels  # type: ignore[index]
    if isinstance(data.variables, dict):
        sources.update(data.variables)
    else:
        sources.update({name: name for name in data.variables})
    for name in extra_variables:
        sources.setdefault(name, name)
    return sources


# --------------------------------------------------------------------------- reading


@dataclass
class RootSource:
    files: list[Path]
    tree: str
    entries: list[int]

    @property
    def total(self) -> int:
        return sum(self.entries)

    def describe(self) -> str:
        return f"{self.files[0]}:{self.tree}" if len(self.files) == 1 else f"{len(self.files)} files:{self.tree}"


def open_root(source: Path | str, tree: str | None) -> RootSource:
    """The files, the tree (named, or the only one in the first file) and each file's entry count."""
    import uproot

    files = root_files(source)
    entries = []
    for path in files:
        try:
            with uproot.open(path) as handle:
                trees = sorted({key.split(";")[0] for key, cls in handle.classnames().items()
                                if cls.startswith("TTree") or cls == "ROOT::RNTuple"})
                if tree is None:
                    if len(trees) != 1:
                        raise DataError(f"{path}: name the tree to read (data.root_tree / --tree); "
                                        f"the file has {', '.join(trees) or 'none'}")
                    tree = trees[0]
                if tree not in trees:
                    raise DataError(f"{path}: no tree named {tree!r} (it has {', '.join(trees) or 'none'})")
                entries.append(int(handle[tree].num_entries))
        except DataError:
            raise
        except Exception as error:  # uproot raises several kinds on a corrupt or truncated file
            raise DataError(f"{path}: not a readable ROOT file ({type(error).__name__})") from error
    if sum(entries) == 0:
        raise DataError(f"{source}: tree {tree!r} holds no events")
    return RootSource(files, tree, entries)  # type: ignore[arg-type]


def branch_names(source: RootSource) -> set[str]:
    import uproot

    with uproot.open(source.files[0]) as handle:
        return set(handle[source.tree].keys())


def read_events(source: RootSource, plans: list[TensorPlan], targets: dict[str, ColumnSource | str] | None = None,
                index: np.ndarray | None = None, counts_out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every planned input (and the labels/variables in ``targets``) for the events at ``index`` (sorted
    global entry numbers; None: all events). ``counts_out`` receives each particle input's particles per
    event, before any truncation."""
    targets = targets or {}
    wanted = sorted({b for p in plans for b in p.branches} | {p.sort_by for p in plans if p.sort_by}
                    | {b for s in targets.values() for b in _column_branches(s)})
    present = branch_names(source)
    missing = [b for b in wanted if b not in present]
    if missing:
        listing = ", ".join(sorted(present)[:12]) + (" ..." if len(present) > 12 else "")
        raise DataError(f"{source.describe()}: no branch {', '.join(missing)} (it has {listing})")
    by_name = {p.name: p for p in plans}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*by_name, *targets]}
    counts: dict[str, list[np.ndarray]] = {p.name: [] for p in plans}
    for chunk in _chunks(source, wanted, index):
        chunk_counts: dict[str, np.ndarray | None] = {}
        for plan in plans:
            if plan.mask_of is not None:
                continue
            tensor, plan_counts = _plan_tensor(plan, chunk, source)
            parts[plan.name].append(tensor)
            chunk_counts[plan.name] = plan_counts
            if plan_counts is not None:
                counts[plan.name].append(plan_counts)
        for plan in plans:
            if plan.mask_of is None:
                continue
            target_counts = chunk_counts.get(plan.mask_of)
            if target_counts is None:
                raise DataError(f"data.inputs.{plan.name}.mask_of: {plan.mask_of!r} has no particles (scalar branches)")
            ones = np.ones(int(target_counts.sum()), np.float32)
            parts[plan.name].append(group_tensor(plan.group, [ones], target_counts, plan.convention,  # type: ignore[arg-type]
                                                 _chunk_length(by_name[plan.mask_of])))
            counts[plan.name].append(target_counts)
        for name, column in targets.items():
            parts[name].append(_target(name, column, chunk, source))
    out: dict[str, np.ndarray] = {}
    for name, chunks in parts.items():
        out[name] = np.concatenate(chunks) if chunks else np.empty((0,), np.float32)
    for plan in plans:
        if plan.group is None or plan.group.flat or not counts[plan.name]:
            continue
        owner = by_name[plan.mask_of] if plan.mask_of else plan
        length = owner.length if owner.length is not None else owner.group.target_length(  # type: ignore[union-attr]
            np.concatenate(counts[owner.name]))
        tensor = out[plan.name][..., :length]
        out[plan.name] = np.ascontiguousarray(tensor.transpose(0, 2, 1)) if plan.layout == "channels_last" else tensor
    if counts_out is not None:
        counts_out.update({name: np.concatenate(chunks) for name, chunks in counts.items() if chunks})
    return out


def read_counts(source: RootSource, plans: list[TensorPlan]) -> dict[str, np.ndarray]:
    """Entries per event along each jagged input's particle axis, before any padding or truncation, by input
    name. Reads one branch per input (an input's branches share their counts); masks, scalar and fixed-size
    inputs have none."""
    import awkward as ak

    first = {p.name: p.branches[0] for p in plans
             if p.mask_of is None and p.branches and p.group is not None and not p.group.flat}
    present = branch_names(source) if first else set()
    missing = sorted({b for b in first.values() if b not in present})
    if missing:
        raise DataError(f"{source.describe()}: no branch {', '.join(missing)}")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in first}
    for chunk in _chunks(source, sorted(set(first.values())), None):
        for name, branch in first.items():
            if _branch_kind(chunk[branch], branch, source) == "jagged":
                parts[name].append(ak.to_numpy(ak.num(chunk[branch], axis=1)).astype(np.int64))
    return {name: np.concatenate(chunks) for name, chunks in parts.items() if chunks}


def _chunk_length(plan: TensorPlan) -> int:
    """The padded length a chunk is built at: the final length when fixed, else the group's maximum
    (cut to the longest event of the whole read at the end)."""
    if plan.length is not None:
        return plan.length
    return plan.group.max_length  # type: ignore[union-attr,return-value]


def _chunks(source: RootSource, branches: list[str], index: np.ndarray | None) -> Iterator[Any]:
    import awkward as ak
    import uproot

    files = {str(path): source.tree for path in source.files}
    try:
        for chunk, report in uproot.iterate(files, branches, step_size=CHUNK_ENTRIES, library="ak", report=True):
            if index is None:
                yield chunk
                continue
            start, stop = report.global_entry_start, report.global_entry_stop
            local = index[(index >= start) & (index < stop)] - start
            if len(local):
                yield chunk[ak.Array(local)]
    except DataError:
        raise
    except Exception as error:  # a file that opened but whose baskets cannot be read
        raise DataError(f"{source.describe()}: cannot read the branches ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:160] if str(error) else ''})") from error


def _plan_tensor(plan: TensorPlan, chunk: Any, source: RootSource) -> tuple[np.ndarray, np.ndarray | None]:
    """One chunk of one input, and its particle counts (None for scalar columns)."""
    import awkward as ak

    arrays = [chunk[b] for b in plan.branches]
    kinds = [_branch_kind(a, b, source) for a, b in zip(arrays, plan.branches)]
    if all(k == "scalar" for k in kinds):
        columns = [ak.to_numpy(a) for a in arrays]
        if plan.group is None:
            stacked = columns[0] if len(columns) == 1 and plan.rank == 1 else np.stack(columns, axis=1)
            return _cast(stacked, plan, source), None
        if plan.group.flat:
            return group_tensor(plan.group, columns, None, plan.convention), None
        ones = np.ones(len(columns[0]), np.int64)  # one value per event: a particle axis of length 1
        return group_tensor(plan.group, columns, ones, plan.convention, _chunk_length(plan)), ones
    if kinds == ["array"] and plan.convention == "raw":
        return ak.to_numpy(arrays[0]), None  # one fixed-size array branch, as it is
    if "array" in kinds or "scalar" in kinds:
        mixed = ", ".join(f"{b} ({k})" for b, k in zip(plan.branches, kinds))
        raise DataError(f"{source.describe()}: {plan.name}: its branches mix kinds ({mixed}); stack scalar or jagged branches only")
    if plan.group is None or plan.group.flat:
        raise DataError(f"{source.describe()}: {plan.name}: branch {plan.branches[0]!r} is jagged; give data.inputs.{plan.name}.length "
                        f"(or a preprocess.json group with a length)")
    counts = ak.to_numpy(ak.num(arrays[0], axis=1)).astype(np.int64)
    for branch, array in zip(plan.branches[1:], arrays[1:]):
        other = ak.to_numpy(ak.num(array, axis=1))
        if not np.array_equal(other, counts):
            entry = int(np.flatnonzero(other != counts)[0])
            raise DataError(f"{source.describe()}: {plan.name}: branches {plan.branches[0]!r} and {branch!r} differ in length at event "
                            f"{entry} ({counts[entry]} vs {other[entry]}); one input's branches must share their counts")
    if plan.sort_by is not None:
        key = chunk[plan.sort_by]
        if _branch_kind(key, plan.sort_by, source) != "jagged" or not np.array_equal(
                ak.to_numpy(ak.num(key, axis=1)), counts):
            raise DataError(f"{source.describe()}: {plan.name}: sort_by {plan.sort_by!r} must be a jagged branch with the same counts")
        order = ak.argsort(key, axis=1, ascending=False, stable=True)
        arrays = [a[order] for a in arrays]
    columns = [ak.to_numpy(ak.flatten(a, axis=1)) for a in arrays]
    return group_tensor(plan.group, columns, counts, plan.convention, _chunk_length(plan)), counts


def _cast(values: np.ndarray, plan: TensorPlan, source: RootSource) -> np.ndarray:
    """Scalar columns in the input's dtype: integer and boolean branches feed float inputs; floats are not
    truncated into an integer input."""
    target = np.dtype("float32" if plan.dtype == "bfloat16" else plan.dtype)
    if values.dtype.kind == "f" and target.kind in "iub":
        raise DataError(f"{source.describe()}: {plan.name}: its branches hold floating-point values but the input "
                        f"is {plan.dtype}")
    return values.astype(target, copy=False)


def _branch_kind(array: Any, branch: str, source: RootSource) -> str:
    """scalar | jagged | array (fixed size per entry); anything else (strings, nested lists) refused."""
    import awkward as ak

    layout_type = ak.type(array).content
    text = str(layout_type)
    numeric = text.split("*")[-1].strip().replace("?", "") in {
        "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"}
    if not numeric:
        raise DataError(f"{source.describe()}: branch {branch!r} has type {text}; expected numbers, or lists of numbers")
    depth = text.count("*")
    if depth == 0:
        return "scalar"
    if depth == 1:
        return "jagged" if text.startswith("var") else "array"
    if all(part.strip().isdigit() for part in text.split("*")[:-1]):
        return "array"
    raise DataError(f"{source.describe()}: branch {branch!r} has type {text}; lists of lists are not read")


def _target(name: str, column: ColumnSource | str, chunk: Any, source: RootSource) -> np.ndarray:
    """Labels or a binning variable: one scalar branch, or one-hot branches -> class index."""
    import awkward as ak

    branches = _column_branches(column)
    for branch in branches:
        if _branch_kind(chunk[branch], branch, source) != "scalar":
            raise DataError(f"{source.describe()}: {name}: branch {branch!r} is not one number per event")
    values = [ak.to_numpy(chunk[b]) for b in branches]
    if isinstance(column, ColumnSource) and column.branches is not None:
        onehot = np.stack(values, axis=1)
        hot = (onehot != 0).sum(axis=1)
        if np.any(hot != 1):
            bad = int(np.sum(hot != 1))
            raise DataError(f"{source.describe()}: {name}: {bad} events do not have exactly one of "
                            f"{', '.join(branches)} set (labels from one-hot branches)")
        return np.argmax(onehot != 0, axis=1).astype(np.int64)
    value = values[0]
    return value.astype(np.int64) if value.dtype.kind in "iub" else value.astype(np.float32)


# --------------------------------------------------------------------------- writing


def write_ntuple(path: Path, tree: str, branches: dict[str, Any], chunk: int = CHUNK_ENTRIES) -> Path:
    """Write a NanoAOD-like TTree atomically: numpy arrays become scalar branches; an awkward record of
    jagged fields (``ak.zip({"pt": ..., "eta": ...})`` under ``PFCands``) becomes ``nPFCands`` and
    ``PFCands_pt``, ``PFCands_eta``. ``tree`` may sit in a folder (``dir/Events``)."""
    import awkward as ak
    import uproot

    total = len(next(iter(branches.values())))
    with atomic_path(Path(path), suffix=".root") as tmp:
        with uproot.recreate(tmp) as handle:
            if "/" in tree:
                handle.mkdir(tree.rsplit("/", 1)[0])
            types = {k: v.type if isinstance(v, ak.Array) else _numpy_type(np.asarray(v)) for k, v in branches.items()}
            out = handle.mktree(tree, types)
            for start in range(0, max(total, 1), chunk):
                out.extend({k: v[start:start + chunk] for k, v in branches.items()})
    return Path(path)


def _numpy_type(array: np.ndarray) -> np.dtype:
    """A scalar branch, or a fixed-size array branch (``float[16]``) for a multi-dimensional array."""
    return array.dtype if array.ndim <= 1 else np.dtype((array.dtype, array.shape[1:]))
