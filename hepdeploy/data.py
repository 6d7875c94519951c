"""Reading and writing named tensors: ``.npz``, HDF5 (``.h5``) and ROOT (``.root``).

Two jobs live here:

* ``save_tensors`` / ``load_tensors``: whole ``.npz`` files of named arrays (reference
  sets, golden outputs).
* ``load_calibration``: a reproducible random subset of N samples for calibration,
  read from ``.npz``, HDF5 (one dataset per input name) or ROOT ntuples (through the spec's
  ``data.inputs`` mapping, :mod:`hepdeploy.ntuple`), validated against the model's tensor
  specs. HDF5 files are read in windows and ROOT files in chunks, so a large file is never
  loaded whole.

Axis 0 of every calibration array is the sample axis. For a batched input (first
dimension ``batch``) a sample is one row; for an unbatched input (e.g. a graph of
``n_hits`` nodes) the file holds samples stacked on a new leading axis.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.errors import DataError
from hepdeploy.fsutil import atomic_write_bytes, check_input_file
from hepdeploy.ntuple import (
    is_root_source,
    load_preprocess,
    open_root,
    plan_inputs,
    preprocess_file,
    read_events,
    target_sources,
)
from hepdeploy.spec import DataSpec, TensorSpec

# Entries read per window from HDF5/ROOT: bounds memory for large files.
READ_WINDOW = 65536
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def save_tensors(path: Path, arrays: dict[str, np.ndarray], compress: bool = False) -> Path:
    """Write arrays to an ``.npz`` file atomically (zip-compressed when ``compress``)."""
    buffer = io.BytesIO()
    save = np.savez_compressed if compress else np.savez
    save(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return atomic_write_bytes(Path(path), buffer.getvalue())


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (no pickles) or raise DataError."""
    path = check_input_file(Path(path), "data file")
    if path.suffix != ".npz":
        raise DataError(f"{path}: unsupported data format {path.suffix!r} (expected .npz)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz file ({type(error).__name__})") from error


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Draw:
    """A reproducible random subset of events: ``samples`` of them drawn with ``seed`` (fewer when the data
    holds fewer and ``allow_fewer``)."""

    samples: int
    seed: int = 0
    allow_fewer: bool = False


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration arrays read once (a build hands them to every variant) and the file or glob they came from."""

    arrays: dict[str, np.ndarray]
    source: Path | None = None


def load_calibration(
    path: Path | str,
    inputs: list[TensorSpec],
    samples: int,
    seed: int = 0,
    ignore: Iterable[str] = (),
    allow_fewer: bool = False,
    data_spec: DataSpec | None = None,
) -> dict[str, np.ndarray]:
    """``samples`` randomly chosen samples (reproducible with ``seed``) for each input.

    ROOT files (one, or a glob) are read through ``data_spec``'s mapping (its TTree, branches and
    ``data.inputs``, :mod:`hepdeploy.ntuple`). Names in ``ignore`` (labels, outputs) may be present in the
    file; any other name that is not an input is refused, as are missing names, wrong ranks, fixed dims or
    dtypes, NaN/Inf and too few samples (DataError).
    """
    if samples < 1:
        raise DataError(f"{path}: the sample count must be at least 1, got {samples}")
    if is_root_source(path) and all(t.has_batch_axis for t in inputs):
        arrays = read_root_events(path, inputs, data_spec or DataSpec(), draw=Draw(samples, seed, allow_fewer),
                                  targets=False)
        return check_tensors(arrays, inputs, where=str(path), sample_axis=True)
    path = check_input_file(Path(path), "calibration data")
    if not inputs:
        raise DataError(f"{path}: the model has no inputs to calibrate")
    suffix = path.suffix.lower()
    if not all(t.has_batch_axis for t in inputs):
        try:
            arrays = _read_unbatched(path, inputs, samples, seed, set(ignore), allow_fewer)
            return check_tensors(arrays, inputs, where=str(path), sample_axis=True)
        except DataError:
            if not _fixed_batch_one(inputs):
                raise
        # A model exported with a fixed batch of 1 ([1, 16]) calibrates from rows ([samples, 16]),
        # one row per run: read them as a batched model's data and give each its batch axis back.
        rows = [t.model_copy(update={"shape": ["batch", *t.shape[1:]]}) for t in inputs]
        arrays = load_calibration(path, rows, samples, seed, ignore, allow_fewer, data_spec)
        return {name: value[:, np.newaxis] for name, value in arrays.items()}
    if suffix == ".npz":
        arrays = _read_npz(path, inputs, samples, seed, set(ignore), allow_fewer)
    elif suffix in HDF5_SUFFIXES:
        arrays = _read_hdf5(path, inputs, samples, seed, set(ignore), allow_fewer)
    else:
        raise DataError(f"{path}: unsupported calibration data format {path.suffix!r} (.npz, .h5 or .root)")
    return check_tensors(arrays, inputs, where=str(path), sample_axis=True)


def read_root_events(
    source: Path | str,
    inputs: list[TensorSpec],
    data: DataSpec,
    *,
    draw: Draw | None = None,
    targets: bool = True,
    extra_variables: Iterable[str] = (),
    convention: str | None = None,
) -> dict[str, np.ndarray]:
    """The model inputs (and, with ``targets``, the labels and variables) of ROOT events through the
    mapping in ``data`` (:mod:`hepdeploy.ntuple`): every event, or the ones ``draw`` chooses.
    ``convention`` overrides the preprocess.json's (cmssw | weaver)."""
    json_path = preprocess_file(data)
    preprocess = load_preprocess(json_path) if json_path is not None else None
    plans = plan_inputs(inputs, data, preprocess, convention)
    root = open_root(source, data.root_tree)
    index = None if draw is None else _choose(root.total, draw.samples, draw.seed, root.describe(), draw.allow_fewer)
    wanted = target_sources(data, list(extra_variables)) if targets else None
    return read_events(root, plans, wanted, index)


def _fixed_batch_one(inputs: list[TensorSpec]) -> bool:
    return bool(inputs) and all(t.shape and t.shape[0] == 1 for t in inputs)


def check_tensors(
    arrays: dict[str, np.ndarray],
    inputs: list[TensorSpec],
    where: str = "data",
    sample_axis: bool = True,
    ignore: Iterable[str] = (),
) -> dict[str, np.ndarray]:
    """Check arrays against tensor specs; return them cast to the specs' dtypes.

    With ``sample_axis`` axis 0 counts samples (for unbatched specs it is an extra
    leading axis). Casting stays within a kind (float64 -> float32, int32 -> int64);
    crossing kinds (int data for a float input) is refused.
    """
    _check_names(set(arrays), inputs, where, set(ignore))
    checked: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    dim_sizes: dict[str, tuple[int, str]] = {}
    for tensor in inputs:
        array = np.asarray(arrays[tensor.name])
        dims = list(tensor.shape)
        if sample_axis and not tensor.has_batch_axis:
            dims = ["__sample__", *dims]
        if array.ndim != len(dims):
            raise DataError(
                f"{where}: {tensor.name!r} has rank {array.ndim} (shape {list(array.shape)}), "
                f"expected rank {len(dims)} for shape {_shape_text(dims)}"
            )
        for axis, (size, dim) in enumerate(zip(array.shape, dims)):
            if isinstance(dim, int) and size != dim:
                raise DataError(
                    f"{where}: {tensor.name!r} has size {size} on axis {axis}, expected {dim} "
                    f"(shape {list(array.shape)} vs {_shape_text(dims)})"
                )
            if isinstance(dim, str) and dim not in ("batch", "__sample__"):
                seen = dim_sizes.setdefault(dim, (size, tensor.name))
                if seen[0] != size:
                    raise DataError(
                        f"{where}: dimension {dim!r} is {size} in {tensor.name!r} but {seen[0]} in {seen[1]!r}"
                    )
        checked[tensor.name] = cast_to_spec(array, tensor, where)
        _check_finite(checked[tensor.name], tensor.name, where)
        counts[tensor.name] = array.shape[0] if array.ndim else 1
    if sample_axis and len(set(counts.values())) > 1:
        listing = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise DataError(f"{where}: inputs hold different sample counts ({listing})")
    return checked


def calibration_feeds(
    arrays: dict[str, np.ndarray], inputs: list[TensorSpec], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts for one model run each: slices of ``batch_size`` rows for batched
    inputs, one stacked sample at a time for unbatched inputs."""
    batched = all(t.has_batch_axis for t in inputs)
    total = next(iter(arrays.values())).shape[0]
    step = max(1, batch_size) if batched else 1
    for start in range(0, total, step):
        if batched:
            yield {t.name: arrays[t.name][start:start + step] for t in inputs}
        else:
            yield {t.name: arrays[t.name][start] for t in inputs}


def batch_size_for(arrays: dict[str, np.ndarray], largest: int = 32, budget_bytes: int = 4 << 20) -> int:
    """Rows per calibration run: up to ``largest``, fewer for big samples (a 224x224x3 image
    is 0.6 MB), since calibrators keep every intermediate tensor of a run in memory."""
    per_sample = sum(value[0].nbytes for value in arrays.values()) if arrays else 1
    return int(max(1, min(largest, budget_bytes // max(per_sample, 1))))


def sample_count(arrays: dict[str, np.ndarray]) -> int:
    return int(next(iter(arrays.values())).shape[0]) if arrays else 0


def common_batch_size(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The first dimension all inputs share, or None (a graph-per-call model such as a GNN)."""
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in inputs.values()}
    if len(sizes) != 1:
        return None
    size = sizes.pop()
    return size if size >= 0 else None


# --------------------------------------------------------------------------- readers


def _choose(total: int, samples: int, seed: int, where: str, allow_fewer: bool = False) -> np.ndarray:
    """Sorted indices of ``samples`` entries drawn without replacement (reproducible)."""
    if allow_fewer:
        samples = min(samples, total)
    if total < samples:
        raise DataError(f"{where}: holds {total} samples, fewer than the {samples} asked for")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=samples, replace=False))


def _check_names(present: set[str], inputs: list[TensorSpec], where: str, ignore: set[str]) -> None:
    wanted = {t.name for t in inputs}
    missing = sorted(wanted - present)
    if missing:
        raise DataError(
            f"{where}: no tensor named {', '.join(missing)} (it has {', '.join(sorted(present)) or 'nothing'})"
        )
    extra = sorted(present - wanted - ignore)
    if extra:
        raise DataError(
            f"{where}: unexpected tensor {', '.join(extra)} (the model's inputs are {', '.join(sorted(wanted))})"
        )


def _read_unbatched(
    path: Path, inputs: list[TensorSpec], samples: int, seed: int, ignore: set[str], allow_fewer: bool = False
) -> dict[str, np.ndarray]:
    """Unbatched inputs (a graph of ``n_hits`` nodes ...): either one graph, with each array
    of the spec's rank (used whole: ``samples`` does not apply), or graphs of equal size
    stacked on a new leading axis (a random subset of ``samples`` of them)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        full = load_tensors(path)
    elif suffix in HDF5_SUFFIXES:
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                full = {name: handle[name][()] for name, item in handle.items() if isinstance(item, h5py.Dataset)}
        except OSError as error:
            raise DataError(f"{path}: not a readable HDF5 file ({type(error).__name__})") from error
    else:
        raise DataError(f"{path}: unbatched (graph) inputs are read from .npz or .h5 files, not {path.suffix!r}")
    _check_names(set(full), inputs, str(path), ignore)
    full = {t.name: full[t.name] for t in inputs}
    if all(full[t.name].ndim == len(t.shape) for t in inputs):
        return {name: value[None] for name, value in full.items()}  # one whole graph
    return _random_subset(full, samples, seed, str(path), allow_fewer)


def _read_npz(
    path: Path, inputs: list[TensorSpec], samples: int, seed: int, ignore: set[str], allow_fewer: bool = False
) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            _check_names(set(archive.files), inputs, str(path), ignore)
            # .npz members cannot be read partially; only the inputs' members are read.
            full = {t.name: archive[t.name] for t in inputs}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz file ({type(error).__name__})") from error
    return _random_subset(full, samples, seed, str(path), allow_fewer)


def _random_subset(full: dict[str, np.ndarray], samples: int, seed: int, where: str,
                   allow_fewer: bool) -> dict[str, np.ndarray]:
    """The same ``samples`` randomly chosen rows of every array (reproducible with ``seed``)."""
    index = _choose(_common_count(full, where), samples, seed, where, allow_fewer)
    return {name: array[index] for name, array in full.items()}


def _read_hdf5(
    path: Path, inputs: list[TensorSpec], samples: int, seed: int, ignore: set[str], allow_fewer: bool = False
) -> dict[str, np.ndarray]:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({type(error).__name__})") from error
    with handle:
        datasets = {name for name, item in handle.items() if isinstance(item, h5py.Dataset)}
        _check_names(datasets, inputs, str(path), ignore)
        counts = {t.name: (handle[t.name].shape[0] if handle[t.name].shape else 1) for t in inputs}
        total = _common_count_from(counts, str(path))
        index = _choose(total, samples, seed, str(path), allow_fewer)
        out: dict[str, np.ndarray] = {}
        for tensor in inputs:
            dataset = handle[tensor.name]
            if not dataset.shape:
                out[tensor.name] = np.asarray(dataset[()])[None]
                continue
            parts = [dataset[start:stop][local] for start, stop, local in _windows(index)]
            out[tensor.name] = np.concatenate(parts) if parts else np.empty((0, *dataset.shape[1:]), dataset.dtype)
        return out


def _windows(index: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """Contiguous read windows (start, stop, positions inside the window) covering sorted ``index``."""
    position = 0
    while position < len(index):
        start = int(index[position])
        stop = start + READ_WINDOW
        end = int(np.searchsorted(index, stop, side="left"))
        stop = int(index[end - 1]) + 1
        yield start, stop, index[position:end] - start
        position = end


def _common_count(arrays: dict[str, np.ndarray], where: str) -> int:
    return _common_count_from({name: (a.shape[0] if a.ndim else 1) for name, a in arrays.items()}, where)


def _common_count_from(counts: dict[str, int], where: str) -> int:
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise DataError(f"{where}: inputs hold different sample counts ({listing})")
    return next(iter(counts.values()))


def cast_to_spec(array: np.ndarray, tensor: TensorSpec, where: str) -> np.ndarray:
    """``array`` in ``tensor``'s dtype: cast inside a kind (float64 -> float32), refused across kinds."""
    target = np.dtype("float32" if tensor.dtype == "bfloat16" else tensor.dtype)
    if array.dtype == target:
        return array
    same_kind = _kind(array.dtype) == _kind(target)
    if not same_kind:
        raise DataError(f"{where}: {tensor.name!r} has dtype {array.dtype}, expected {tensor.dtype}")
    return array.astype(target)


def _kind(dtype: np.dtype) -> str:
    return {"f": "float", "i": "int", "u": "int", "b": "bool"}.get(dtype.kind, dtype.kind)


def _check_finite(array: np.ndarray, name: str, where: str) -> None:
    if array.dtype.kind != "f":
        return
    flat = array.reshape(-1)
    for start in range(0, flat.size, 1 << 22):  # in chunks: no full-size boolean copy
        chunk = flat[start:start + (1 << 22)]
        if not np.isfinite(chunk).all():
            n_nan = int(np.isnan(array).sum())
            n_inf = int(np.isinf(array).sum())
            raise DataError(f"{where}: {name!r} contains {n_nan} NaN and {n_inf} Inf values")


def _shape_text(dims: list[Any]) -> str:
    return "[" + ", ".join("samples" if d == "__sample__" else str(d) for d in dims) + "]"
