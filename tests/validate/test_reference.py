"""Reference sets: making, saving, loading, the ONNX test-data layout, and refusing bad ones."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hepdeploy.data import save_tensors
from hepdeploy.errors import DataError
from hepdeploy.fsutil import sha256_file
from hepdeploy.validate import (
    load_reference,
    make_reference,
    read_onnx_test_data,
    save_reference,
    write_onnx_test_data,
)
from hepdeploy.validate.reference import ReferenceSet


def test_make_save_load_roundtrip(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    ref = make_reference(tiny_onnx, tiny_data, labels="labels", chunk_size=64)
    assert set(ref.inputs) == {"x"} and set(ref.outputs) == {"prob", "energy"} and set(ref.labels) == {"labels"}
    assert ref.outputs["prob"].shape == (300, 3)
    np.testing.assert_allclose(ref.outputs["prob"].sum(axis=1), 1.0, rtol=1e-5)
    prov = ref.provenance
    assert prov["sha256"] == sha256_file(tiny_onnx) and prov["framework"] == "onnx"
    assert prov["versions"]["onnx"] == onnx.__version__ and prov["created"].startswith("20")
    path = save_reference(ref, tmp_path / "golden.npz")
    back = load_reference(path)
    for group in ("inputs", "outputs", "labels"):
        for name, value in getattr(ref, group).items():
            np.testing.assert_array_equal(getattr(back, group)[name], value)
    assert back.provenance["sha256"] == prov["sha256"]


def test_the_runner_opened_for_a_reference_is_closed_and_a_given_one_is_not(
        tiny_onnx: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hepdeploy.validate.reference as reference_module
    from hepdeploy.backend.sources import artifact_runner, open_source

    opened = []
    monkeypatch.setattr(reference_module, "open_source", lambda source: opened.append(open_source(source)) or opened[-1])
    make_reference(tiny_onnx, tiny_data)
    assert opened[0].runner.closed
    with artifact_runner(tiny_onnx) as given:
        make_reference(given, tiny_data)
        assert not given.closed
        assert set(given.run({"x": np.zeros((2, 8), np.float32)})) == {"prob", "energy"}


def test_chunking_does_not_change_outputs(tiny_onnx: Path, tiny_data: Path) -> None:
    whole = make_reference(tiny_onnx, tiny_data, chunk_size=10_000)
    chunked = make_reference(tiny_onnx, tiny_data, chunk_size=7)
    np.testing.assert_allclose(chunked.outputs["prob"], whole.outputs["prob"], rtol=1e-6, atol=1e-7)


def test_onnx_test_data_layout(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    ref = make_reference(tiny_onnx, tiny_data, labels="labels")
    folder = tmp_path / "tiny_test_data"
    write_onnx_test_data(ref, folder, samples_per_set=128)
    sets = sorted(p.name for p in folder.glob("test_data_set_*"))
    assert sets == ["test_data_set_0", "test_data_set_1", "test_data_set_2"]
    proto = onnx.TensorProto()
    proto.ParseFromString((folder / "test_data_set_1" / "output_0.pb").read_bytes())
    assert proto.name == "prob"
    np.testing.assert_array_equal(numpy_helper.to_array(proto), ref.outputs["prob"][128:256])
    back = read_onnx_test_data(folder)
    np.testing.assert_array_equal(back.inputs["x"], ref.inputs["x"])
    np.testing.assert_array_equal(back.labels["labels"], ref.labels["labels"])
    assert back.provenance["sha256"] == ref.provenance["sha256"]
    assert load_reference(folder).n_samples == 300  # a folder is accepted wherever a golden file is


def test_reading_the_layout_onnx_itself_writes(tmp_path: Path) -> None:
    """Sets written with only numpy_helper (as the ONNX model zoo ships them) are read too."""
    set_dir = tmp_path / "test_data_set_0"
    set_dir.mkdir()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (set_dir / "input_0.pb").write_bytes(numpy_helper.from_array(x, "x").SerializeToString())
    (set_dir / "output_0.pb").write_bytes(numpy_helper.from_array(x * 2, "y").SerializeToString())
    ref = read_onnx_test_data(tmp_path)
    np.testing.assert_array_equal(ref.outputs["y"], x * 2)


def test_nan_reference_is_refused(tmp_path: Path) -> None:
    bad = ReferenceSet({"x": np.zeros((3, 2), np.float32)}, {"y": np.array([1.0, np.nan, 2.0])})
    with pytest.raises(DataError, match="NaN/Inf.*must be finite"):
        save_reference(bad, tmp_path / "golden.npz")
    assert not (tmp_path / "golden.npz").exists()
    # A golden file written by something else is checked on loading.
    save_tensors(tmp_path / "other.npz", {"input/x": np.zeros((3, 2)), "output/y": np.array([np.inf, 0, 0])})
    with pytest.raises(DataError, match="must be finite"):
        load_reference(tmp_path / "other.npz")


def test_labels_of_the_wrong_length_are_refused(tiny_onnx: Path, tiny_data: Path) -> None:
    with pytest.raises(DataError, match="labels 'labels' have 299 rows but the inputs have 300"):
        make_reference(tiny_onnx, tiny_data, labels={"labels": np.zeros(299)})


def test_empty_data_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        make_reference(tiny_onnx, {"x": np.zeros((0, 8), np.float32)})
    with pytest.raises(DataError, match="empty"):
        make_reference(tiny_onnx, {})


def test_data_without_the_model_inputs(tiny_onnx: Path) -> None:
    with pytest.raises(DataError, match="no array named x"):
        make_reference(tiny_onnx, {"features": np.zeros((4, 8), np.float32)})


def test_a_plain_data_file_is_not_a_golden_file(tiny_data: Path) -> None:
    with pytest.raises(DataError, match="not a hepdeploy reference set"):
        load_reference(tiny_data)
