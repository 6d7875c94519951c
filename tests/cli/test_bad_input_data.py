"""Bad input, second campaign: the data commands (reference, validate, optimize, tune) and specs.

Each case goes through the real CLI on a real (reduced-budget) jet MLP and asserts the exit code, one
``error:`` line naming the file and the problem, and that nothing already written is lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest



def test_reference_refuses_to_overwrite_its_own_data(run, jet: dict[str, Path], tmp_path: Path) -> None:  # item 1
    data = tmp_path / "g.npz"
    shutil.copy(jet["golden"], data)
    before = data.read_bytes()
    code, lines = run("reference", jet["model"], "--data", data, "-o", data)
    assert code == 2 and lines == [f"error: {data}: the reference set would overwrite its own --data (its labels "
                                   "and variables with it); write it to another file"]
    assert data.read_bytes() == before


def test_labels_that_cannot_belong_to_the_output_are_bad_input(run, jet: dict[str, Path], tmp_path: Path) -> None:  # 2
    arrays = dict(np.load(jet["golden"]))
    arrays["label/labels"] = arrays["label/labels"] + 10  # 10..14 for a 5-class output
    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, **arrays)
    code, lines = run("validate", jet["model"], "--golden", shifted, "--spec", jet["spec"])
    assert code == 2, lines
    assert lines[-1].startswith(f"error: {shifted}: labels hold classes 10..14 but the output has 5 classes")


def test_nan_in_a_golden_sets_inputs_is_bad_input_not_a_disagreement(run, jet: dict[str, Path], tmp_path: Path) -> None:
    arrays = dict(np.load(jet["golden"]))  # item 12
    arrays["input/input_1"][3, 2] = np.nan
    bad = tmp_path / "nan_inputs.npz"
    np.savez(bad, **arrays)
    code, lines = run("validate", jet["model"], "--golden", bad)
    assert code == 2 and lines[-1].startswith(f"error: {bad}: input 'input_1' has 1 NaN/Inf values")


@pytest.mark.parametrize("rows", [0, 1])
@pytest.mark.parametrize("variant", ["int8-cpu", "int8-trt"])
def test_too_few_calibration_rows_are_refused_naming_the_file(run, jet: dict[str, Path], tmp_path: Path, rows: int,
                                                              variant: str) -> None:  # items 6, 14
    calibration = tmp_path / f"calib_{rows}.npz"
    np.savez(calibration, input_1=np.load(jet["calibration"])["input_1"][:rows])
    out = tmp_path / "q.onnx"
    code, lines = run("optimize", jet["model"], "--variant", variant, "-o", out, "--calibration", calibration)
    assert code == 2 and lines == [f"error: {calibration}: holds {rows} calibration row(s); {variant} needs at "
                                   "least 16 to set its INT8 ranges"]
    assert not out.exists()


def test_tune_with_no_calibration_rows_or_another_models_golden_is_bad_input(run, jet: dict[str, Path],
                                                                              tmp_path: Path) -> None:  # 12, 14
    empty = tmp_path / "calib_0.npz"
    np.savez(empty, input_1=np.zeros((0, 16), np.float32))
    code, lines = run("tune", jet["model"], "--variant", "int8-cpu", "--golden", jet["golden"], "--calibration",
                      empty, "-o", tmp_path / "t.onnx")
    assert code == 2 and lines[-1].startswith(f"error: {empty}: holds 0 calibration row(s)")
    other = tmp_path / "other_golden.npz"
    arrays = {k.replace("input/input_1", "input/features"): v for k, v in np.load(jet["golden"]).items()}
    np.savez(other, **arrays)
    code, lines = run("tune", jet["model"], "--variant", "int8-cpu", "--golden", other, "--calibration",
                      jet["calibration"], "-o", tmp_path / "t.onnx")
    assert code == 2 and lines[-1].startswith(f"error: {other}: has no input input_1 of the model")
    assert not (tmp_path / "t.onnx").exists()
    assert not list(Path("/tmp").glob("hepdeploy-ort-profile-*"))  # no profiler files any more


def test_a_spec_input_missing_from_the_data_names_the_data_file(run, jet: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "renamed.npz"  # item 14
    np.savez(data, features=np.load(jet["calibration"])["input_1"])
    code, lines = run("reference", jet["model"], "--data", data, "-o", tmp_path / "g.npz")
    assert code == 2 and lines[-1].startswith(f"error: {data}: has no array named input_1")


def test_a_duplicate_key_in_a_spec_is_refused(run, jet: dict[str, Path], tmp_path: Path) -> None:  # item 8
    spec = tmp_path / "dup.yaml"
    spec.write_text(jet["spec"].read_text() + "name: other\n")
    code, lines = run("convert", "--spec", spec, "-o", tmp_path / "x.onnx")
    assert code == 2 and len(lines) == 1 and "key 'name' appears twice (lines 1 and" in lines[0]
    assert lines[0].startswith(f"error: {spec}: not valid YAML")


def test_outputs_that_cannot_be_written_are_refused_before_the_work(run, jet: dict[str, Path], tmp_path: Path) -> None:
    cases = [  # item 13: named after the target with the reason, never after a temporary file
        (["optimize", jet["model"], "--variant", "fp32", "-o", "/proc/x.onnx"], "/proc/x.onnx: folder /proc is not"),
        (["reference", jet["model"], "--data", jet["golden"], "-o", "/proc/g.npz"], "/proc/g.npz: folder /proc"),
        (["convert", jet["folder"] / "jet_mlp.keras", "--spec", jet["spec"], "-o", "/proc/c.onnx"], "/proc/c.onnx:"),
        (["tune", jet["model"], "--variant", "int8-cpu", "--golden", jet["golden"], "--calibration",
          jet["calibration"], "-o", "/proc/t.onnx"], "/proc/t.onnx: folder /proc is not writable"),
        (["validate", jet["model"], "--golden", jet["golden"], "--report-dir", jet["spec"]],
         f"{jet['spec']}: is a file, not a folder"),
        (["optimize", jet["model"], "--variant", "fp32", "-o", jet["spec"] / "x.onnx"],
         f"{jet['spec']} is a file, not a folder"),
        (["optimize", jet["model"], "--variant", "fp32", "-o", tmp_path / ("a" * 250 + ".onnx")],
         "the file name is too long"),
    ]
    for args, message in cases:
        code, lines = run(*args)
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, lines)
        assert "unexpected" not in lines[0] and ".tmp" not in lines[0]


def test_paths_that_lead_nowhere_say_why(run, jet: dict[str, Path], tmp_path: Path) -> None:  # item 15
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    code, lines = run("validate", tmp_path / "loop1", "--golden", jet["golden"])
    assert code == 2 and lines == [f"error: {tmp_path / 'loop1'}: candidate model is a symbolic link that loops"]
    code, lines = run("validate", jet["spec"] / "m.onnx", "--golden", jet["golden"])
    assert code == 2 and "cannot be reached: its parent" in lines[0] and "is a file, not a folder" in lines[0]
    odd = tmp_path / "a\nb.onnx"
    code, lines = run("validate", odd, "--golden", jet["golden"])
    assert code == 2 and len(lines) == 1 and repr(str(odd)) in lines[0]  # a newline does not split the line
    truncated = tmp_path / "cut.keras"
    truncated.write_bytes((jet["folder"] / "jet_mlp.keras").read_bytes()[:300])
    code, lines = run("convert", truncated, "--spec", jet["spec"], "-o", tmp_path / "c.onnx")
    assert code == 2 and "truncated or of another kind" in lines[-1] and "File not found" not in lines[-1]


def test_usage_errors_are_one_line(run, jet: dict[str, Path]) -> None:  # item 15
    for args in (["reference", "--spec", "x"], ["frobnicate"], ["optimize"]):
        code, lines = run(*args)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], lines


def test_tune_json_is_strict_json(run, jet: dict[str, Path], tmp_path: Path) -> None:  # item 17
    out = tmp_path / "t.onnx"
    run("tune", jet["model"], "--variant", "int8-trt", "--golden", jet["golden"], "--calibration",
        jet["calibration"], "-o", out, "--max-evals", "2")
    text = (tmp_path / "t-tune" / "tune.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
