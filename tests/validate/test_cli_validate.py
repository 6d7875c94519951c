"""`hepdeploy reference` and `hepdeploy validate`: exit 0 pass, 1 disagreement, 2 bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from hepdeploy.cli import main
from hepdeploy.data import save_tensors


def _run(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def golden(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> Path:
    path = tmp_path / "golden.npz"
    result = _run("reference", tiny_onnx, "--data", tiny_data, "-o", path, "--labels", "labels")
    assert result.exit_code == 0, result.output
    assert "300 samples" in result.stdout and path.is_file()
    return path


def _changed_copy(source: Path, target: Path, factor: float = 1.01) -> Path:
    model = onnx.load(str(source))
    init = next(i for i in model.graph.initializer if len(i.dims) == 2)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(target))
    return target


def test_pass_writes_reports(tiny_onnx: Path, golden: Path, tmp_path: Path) -> None:
    result = _run("validate", tiny_onnx, "--golden", golden, "--report-dir", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "prob" in result.stdout
    assert "fp32: atol=1e-05" in result.stdout  # the defaults per precision are printed
    for name in ("report.json", "junit.xml", "report.md", "report.html"):
        assert (tmp_path / "rep" / name).is_file()


def test_reference_made_on_the_fly(tiny_onnx: Path, tiny_data: Path) -> None:
    result = _run("validate", tiny_onnx, "--reference", tiny_onnx, "--data", tiny_data, "--labels", "labels")
    assert result.exit_code == 0, result.output


def test_disagreement_exits_1_and_localises(tiny_onnx: Path, golden: Path, tmp_path: Path) -> None:
    changed = _changed_copy(tiny_onnx, tmp_path / "changed.onnx")
    result = _run("validate", changed, "--golden", golden, "--localize", "--fp32-model", tiny_onnx)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "first divergent node" in result.stdout
    assert "1 of 1 candidate(s) disagree: changed" in result.stderr


def test_tolerance_options_per_output(tiny_onnx: Path, golden: Path, tmp_path: Path) -> None:
    changed = _changed_copy(tiny_onnx, tmp_path / "changed.onnx")
    loose = _run("validate", changed, "--golden", golden, "--atol", "1", "--rtol", "1")
    assert loose.exit_code == 0, loose.output
    only_prob = _run("validate", changed, "--golden", golden, "--atol", "prob:1", "--rtol", "prob:1")
    assert only_prob.exit_code == 1  # energy is still held to the FP32 default
    typo = _run("validate", changed, "--golden", golden, "--atol", "porb:1")
    assert typo.exit_code == 2 and "unknown output(s) porb" in typo.stderr


def test_onnx_test_data_folder_as_golden(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "test_data"
    made = _run("reference", tiny_onnx, "--data", tiny_data, "-o", folder, "--samples-per-set", "100")
    assert made.exit_code == 0, made.output
    assert (folder / "test_data_set_2" / "input_0.pb").is_file()
    assert _run("validate", tiny_onnx, "--golden", folder).exit_code == 0


# ------------------------------------------------------------------ bad input: exit 2, one line


def _bad(result: object, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_golden_with_other_tensor_names(tiny_onnx: Path, tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    save_tensors(path, {"input/features": np.zeros((4, 8), np.float32), "output/prob": np.zeros((4, 3)),
                        "output/energy": np.zeros((4, 1))})
    _bad(_run("validate", tiny_onnx, "--golden", path), "input 'x' is not in the reference set")
    renamed = tmp_path / "renamed.npz"
    save_tensors(renamed, {"input/x": np.zeros((4, 8), np.float32), "output/probability": np.zeros((4, 3))})
    _bad(_run("validate", tiny_onnx, "--golden", renamed), "no output named probability")


def test_golden_with_other_shapes(tiny_onnx: Path, tmp_path: Path) -> None:
    path = tmp_path / "shapes.npz"
    save_tensors(path, {"input/x": np.zeros((4, 7), np.float32), "output/prob": np.zeros((4, 3)),
                        "output/energy": np.zeros((4, 1))})
    _bad(_run("validate", tiny_onnx, "--golden", path), "axis 1 is 8 but the reference's is 7")
    outputs = tmp_path / "output_shapes.npz"
    save_tensors(outputs, {"input/x": np.zeros((4, 8), np.float32), "output/prob": np.zeros((4, 2)),
                           "output/energy": np.zeros((4, 1))})
    _bad(_run("validate", tiny_onnx, "--golden", outputs), "output 'prob' axis 1 is 3 but the reference's is 2")


def test_labels_of_another_length(tiny_onnx: Path, golden: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.npz"
    save_tensors(labels, {"labels": np.zeros(299, np.int64)})
    _bad(_run("validate", tiny_onnx, "--golden", golden, "--labels", labels), "299 rows but the inputs have 300")


def test_empty_data_set(tiny_onnx: Path, tmp_path: Path) -> None:
    data = tmp_path / "empty.npz"
    save_tensors(data, {"x": np.zeros((0, 8), np.float32)})
    _bad(_run("reference", tiny_onnx, "--data", data, "-o", tmp_path / "g.npz"), "is empty")
    assert not (tmp_path / "g.npz").exists()


def test_nan_in_reference_outputs(tiny_onnx: Path, tmp_path: Path) -> None:
    path = tmp_path / "nan.npz"
    save_tensors(path, {"input/x": np.zeros((4, 8), np.float32), "output/prob": np.full((4, 3), np.nan),
                        "output/energy": np.zeros((4, 1))})
    _bad(_run("validate", tiny_onnx, "--golden", path), "a reference must be finite")


def test_candidate_that_does_not_load(golden: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf \x00\x01\x02")
    _bad(_run("validate", broken, "--golden", golden), "not a readable ONNX model")
    _bad(_run("validate", tmp_path / "missing.onnx", "--golden", golden), "not found")


def test_usage_errors(tiny_onnx: Path, golden: Path, tiny_data: Path) -> None:
    assert _run("validate", tiny_onnx).exit_code == 2
    assert _run("validate", tiny_onnx, "--golden", golden, "--reference", tiny_onnx).exit_code == 2
    assert _run("validate", tiny_onnx, "--reference", tiny_onnx).exit_code == 2
