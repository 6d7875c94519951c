"""Calibration data readers: .npz, HDF5 and ROOT; reproducible subsets; validation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hepdeploy import data as data_module
from hepdeploy.data import load_calibration, save_tensors
from hepdeploy.errors import DataError
from hepdeploy.spec import DataSpec, TensorSpec

INPUTS = [
    TensorSpec(name="points", shape=["batch", 2, "n_particles"]),
    TensorSpec(name="features", shape=["batch", 4, "n_particles"]),
]


def _arrays(n: int = 500) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "points": rng.normal(size=(n, 2, 10)).astype(np.float32),
        "features": rng.normal(size=(n, 4, 10)).astype(np.float32),
    }


def _write_h5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    import h5py

    with h5py.File(path, "w") as handle:
        for name, value in arrays.items():
            handle.create_dataset(name, data=value, chunks=True)
    return path


def _write_root_ttree(path: Path, arrays: dict[str, np.ndarray], tree: str = "events") -> Path:
    import uproot

    with uproot.recreate(path) as handle:
        branches = {name: (value.dtype, value.shape[1:]) for name, value in arrays.items()}
        handle.mktree(tree, branches).extend(arrays)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    arrays = _arrays()
    return {
        "npz": save_tensors(tmp_path / "calib.npz", arrays),
        "h5": _write_h5(tmp_path / "calib.h5", arrays),
        "root": _write_root_ttree(tmp_path / "calib.root", arrays),
    }


@pytest.mark.parametrize("kind", ["npz", "h5", "root"])
def test_subset_is_reproducible_and_made_of_real_rows(files: dict[str, Path], kind: str) -> None:
    full = _arrays()
    tree = DataSpec(root_tree="events" if kind == "root" else None)
    first = load_calibration(files[kind], INPUTS, samples=64, seed=7, data_spec=tree)
    again = load_calibration(files[kind], INPUTS, samples=64, seed=7, data_spec=tree)
    other = load_calibration(files[kind], INPUTS, samples=64, seed=8, data_spec=tree)
    assert first["points"].shape == (64, 2, 10) and first["features"].dtype == np.float32
    np.testing.assert_array_equal(first["points"], again["points"])
    assert not np.array_equal(first["points"], other["points"])
    # Every row is a row of the file, and points/features stay paired.
    index = [int(np.flatnonzero((full["points"] == row).all(axis=(1, 2)))[0]) for row in first["points"]]
    np.testing.assert_array_equal(full["features"][index], first["features"])
    assert len(set(index)) == 64


@pytest.mark.parametrize("kind", ["npz", "h5", "root"])
def test_every_format_draws_the_same_subset(files: dict[str, Path], kind: str) -> None:
    reference = load_calibration(files["npz"], INPUTS, samples=50, seed=1)
    got = load_calibration(files[kind], INPUTS, samples=50, seed=1)
    np.testing.assert_array_equal(reference["features"], got["features"])


@pytest.mark.parametrize("kind", ["h5"])
def test_large_files_are_read_in_windows(files: dict[str, Path], kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = load_calibration(files[kind], INPUTS, samples=200, seed=2)
    reads: list[tuple[int, int]] = []
    original = data_module._windows

    def spying_windows(index: np.ndarray):  # type: ignore[no-untyped-def]
        for start, stop, local in original(index):
            reads.append((start, stop))
            yield start, stop, local

    monkeypatch.setattr(data_module, "READ_WINDOW", 37)
    monkeypatch.setattr(data_module, "_windows", spying_windows)
    windowed = load_calibration(files[kind], INPUTS, samples=200, seed=2)
    np.testing.assert_array_equal(whole["points"], windowed["points"])
    assert len(reads) > 5 and all(stop - start <= 37 for start, stop in reads)


def test_large_root_files_are_read_in_chunks(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from hepdeploy import ntuple

    whole = load_calibration(files["root"], INPUTS, samples=200, seed=2)
    chunks: list[int] = []
    original = ntuple._chunks

    def spying_chunks(*args):  # type: ignore[no-untyped-def]
        for chunk in original(*args):
            chunks.append(len(chunk))
            yield chunk

    monkeypatch.setattr(ntuple, "CHUNK_ENTRIES", 37)
    monkeypatch.setattr(ntuple, "_chunks", spying_chunks)
    chunked = load_calibration(files["root"], INPUTS, samples=200, seed=2)
    np.testing.assert_array_equal(whole["points"], chunked["points"])
    assert len(chunks) > 5 and all(n <= 37 for n in chunks) and sum(chunks) == 200


def test_root_branch_mapping_and_rntuple(tmp_path: Path) -> None:
    import uproot

    arrays = _arrays(100)
    path = tmp_path / "renamed.root"
    with uproot.recreate(path) as handle:  # uproot >= 5.5 writes an RNTuple here
        handle["Events"] = {"pts": arrays["points"], "feats": arrays["features"], "label": np.zeros(100)}
    got = load_calibration(path, INPUTS, samples=20, seed=0, data_spec=DataSpec(
        root_tree="Events", root_branches={"points": "pts", "features": "feats"}))
    assert got["points"].shape == (20, 2, 10)
    with pytest.raises(DataError, match="no branch"):
        load_calibration(path, INPUTS, samples=20, seed=0, data_spec=DataSpec(root_tree="Events"))
    with pytest.raises(DataError, match="no tree named 'Nope'"):
        load_calibration(path, INPUTS, samples=20, seed=0, data_spec=DataSpec(
            root_tree="Nope", root_branches={"points": "pts", "features": "feats"}))


def test_float64_data_is_cast_to_the_spec_dtype(tmp_path: Path) -> None:
    arrays = {k: v.astype(np.float64) for k, v in _arrays(30).items()}
    got = load_calibration(save_tensors(tmp_path / "f64.npz", arrays), INPUTS, samples=30, seed=0)
    assert got["points"].dtype == np.float32


def _bad(tmp_path: Path, arrays: dict[str, np.ndarray], samples: int = 10, **kwargs) -> str:  # type: ignore[no-untyped-def]
    path = save_tensors(tmp_path / "bad.npz", arrays)
    with pytest.raises(DataError) as caught:
        load_calibration(path, INPUTS, samples=samples, seed=0, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_tensor(tmp_path: Path) -> None:
    assert "no tensor named features" in _bad(tmp_path, {"points": _arrays()["points"]})


def test_extra_tensor(tmp_path: Path) -> None:
    arrays = {**_arrays(), "jets": np.zeros((500, 3), np.float32)}
    assert "unexpected tensor jets" in _bad(tmp_path, arrays)
    # Names the spec knows to be labels/outputs are allowed.
    got = load_calibration(save_tensors(tmp_path / "ok.npz", arrays), INPUTS, samples=5, seed=0, ignore=["jets"])
    assert set(got) == {"points", "features"}


def test_wrong_rank(tmp_path: Path) -> None:
    arrays = {**_arrays(), "points": np.zeros((500, 20), np.float32)}
    assert "'points' has rank 2" in _bad(tmp_path, arrays)


def test_wrong_fixed_dim(tmp_path: Path) -> None:
    arrays = {**_arrays(), "points": np.zeros((500, 3, 10), np.float32)}
    assert "size 3 on axis 1, expected 2" in _bad(tmp_path, arrays)


def test_inconsistent_named_dim(tmp_path: Path) -> None:
    arrays = {**_arrays(), "points": np.zeros((500, 2, 11), np.float32)}
    assert "dimension 'n_particles' is" in _bad(tmp_path, arrays)


def test_wrong_dtype(tmp_path: Path) -> None:
    arrays = {**_arrays(), "features": np.zeros((500, 4, 10), np.int64)}
    assert "'features' has dtype int64, expected float32" in _bad(tmp_path, arrays)


@pytest.mark.parametrize("value,word", [(np.nan, "1 NaN"), (np.inf, "1 Inf")])
def test_non_finite(tmp_path: Path, value: float, word: str) -> None:
    arrays = _arrays(20)
    arrays["features"][3, 1, 2] = value
    assert word in _bad(tmp_path, arrays, samples=20)


def test_fewer_samples_than_asked(tmp_path: Path) -> None:
    assert "holds 500 samples, fewer than the 600 asked for" in _bad(tmp_path, _arrays(), samples=600)


def test_unknown_format_and_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported calibration data format"):
        load_calibration(tmp_path / "x.csv", INPUTS, samples=1)
    for name in ("broken.npz", "broken.h5", "broken.root"):
        (tmp_path / name).write_bytes(b"not really a data file")
        with pytest.raises(DataError, match="not a readable"):
            load_calibration(tmp_path / name, INPUTS, samples=1)


def test_a_default_count_adapts_to_a_smaller_file(tmp_path: Path) -> None:
    path = save_tensors(tmp_path / "small.npz", _arrays(40))
    got = load_calibration(path, INPUTS, samples=512, seed=0, allow_fewer=True)
    assert got["points"].shape[0] == 40
    with pytest.raises(DataError, match="fewer than the 512 asked for"):
        load_calibration(path, INPUTS, samples=512, seed=0)
