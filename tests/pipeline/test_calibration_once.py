"""A build reads a model's calibration set once and hands the same arrays to every variant."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hepdeploy import pipeline
from hepdeploy.artifacts import read_artifact
from hepdeploy.data import save_tensors
from hepdeploy.errors import DataError
from hepdeploy.pipeline import BuildOptions, build
from hepdeploy.spec import spec_from_dict
from tests.pipeline.test_build_survives import _small_model


def _spec(tmp_path: Path, variants: list[object]):  # noqa: ANN202 - a ModelSpec
    _small_model(tmp_path / "small.onnx", 0)
    rng = np.random.default_rng(1)
    save_tensors(tmp_path / "calibration.npz", {"x": rng.standard_normal((300, 4)).astype(np.float32)})
    return spec_from_dict({
        "name": "small", "source": {"framework": "onnx", "path": "small.onnx"},
        "inputs": [{"name": "x", "shape": ["batch", 4]}], "outputs": [{"name": "y", "shape": ["batch", 3]}],
        "data": {"calibration": "calibration.npz"}, "variants": variants,
        "triton": {"variant": "fp32", "max_batch_size": 64},
    }, base_dir=tmp_path)


def test_every_variant_of_a_build_gets_the_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hepdeploy.optimize

    reads: list[object] = []
    real = hepdeploy.optimize.load_calibration

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the real reader, its reads counted
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(hepdeploy.optimize, "load_calibration", counted)
    # One layer: it is quantized only when the edges may be (they are the whole model).
    spec = _spec(tmp_path, ["fp32", {"name": "int8-cpu", "keep_edges_fp32": False}])
    report = build([spec], BuildOptions(out_dir=tmp_path / "out", publish=False))
    steps = {s.step: s for s in report.models[0].steps}
    assert steps["optimize:fp32"].ok and steps["optimize:int8-cpu"].ok
    assert reads == [tmp_path / "calibration.npz"]  # once, for both variants
    int8 = read_artifact(tmp_path / "out" / "small" / "variants" / "small_int8_cpu.onnx").sidecar
    # The variant still records where its calibration came from.
    assert int8.steps[-1].parameters["calibration_data"] == str(tmp_path / "calibration.npz")


def test_the_file_is_read_on_first_use_only(tmp_path: Path) -> None:
    calibration = pipeline._Calibration(_spec(tmp_path, ["fp32", "int8-cpu"]))
    first = calibration.for_variant("fp32")
    (tmp_path / "calibration.npz").unlink()
    again = calibration.for_variant("int8-cpu")
    assert first is not None and again is not None and again.arrays is first.arrays  # not a second read
    assert again.source == tmp_path / "calibration.npz"
    assert calibration.for_variant("tensorrt") is None  # an engine is built from its parent graph


def test_a_calibration_file_that_cannot_be_read_fails_every_variant_with_its_error(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["fp32", "int8-cpu"])
    (tmp_path / "calibration.npz").write_bytes(b"not a zip")
    calibration = pipeline._Calibration(spec)
    for variant in ("fp32", "int8-cpu"):
        with pytest.raises(DataError, match="calibration.npz"):
            calibration.for_variant(variant)
