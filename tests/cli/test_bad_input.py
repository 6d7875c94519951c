"""Every bad input of the foundation issue, through the real CLI.

Each one must give exit code 2 (1 for a disagreement), one clear ``error:`` line that
names the file and the problem, no traceback without -v, and nothing (partial) written.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from hepdeploy.cli import main

os.environ.setdefault("OMP_NUM_THREADS", "1")
FIXTURES = Path(__file__).resolve().parents[1] / "convert"
FACTORY = "hepdeploy_convert_fixture_models:jet_mlp"
JET_TENSORS = {"inputs": [{"name": "input_1", "shape": ["batch", 16]}],
               "outputs": [{"name": "probs", "shape": ["batch", 5]}]}


class _Payload:
    """Unpickling this creates a marker file: proof that the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def jet_onnx(tmp_path_factory) -> Path:
    import torch

    sys.path.insert(0, str(FIXTURES))
    import hepdeploy_convert_fixture_models as models

    path = tmp_path_factory.mktemp("bad_input_sources") / "jet.onnx"
    torch.onnx.export(models.jet_mlp(), (torch.randn(3, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["features"], output_names=["scores"],
                      dynamic_axes={"features": {0: "N"}, "scores": {0: "N"}})
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_clean_failure(code: int, stderr: str, expected_code: int, *needles: str) -> str:
    assert code == expected_code, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    line = errors[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def write_spec(folder: Path, data: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_missing_file(out_dir):
    code, _, err = invoke("convert", out_dir / "nope.onnx", "-o", out_dir / "model.onnx")
    assert_clean_failure(code, err, 2, "nope.onnx", "not found")
    assert list(out_dir.iterdir()) == []
    code, _, err = invoke("inspect", out_dir / "nope.onnx")
    assert_clean_failure(code, err, 2, "nope.onnx", "not found")


@pytest.mark.parametrize("filename,problem", [
    ("notes.onnx", "not a readable ONNX model"),
    ("notes.pt", "not a PyTorch file"),
    ("notes.txt", "cannot tell the framework"),
])
def test_a_file_that_is_not_a_model(tmp_path, out_dir, filename, problem):
    source = tmp_path / filename
    source.write_text("these are my analysis notes, not a model\n")
    code, _, err = invoke("convert", source, "-o", out_dir / "model.onnx")
    assert_clean_failure(code, err, 2, filename, problem)
    assert list(out_dir.iterdir()) == []


def test_inspect_a_file_that_is_not_a_model(tmp_path):
    source = tmp_path / "notes.onnx"
    source.write_text("not a model")
    code, _, err = invoke("inspect", source)
    assert_clean_failure(code, err, 2, "notes.onnx", "not a readable ONNX model")


@pytest.mark.slow
def test_a_keras_file_that_is_not_a_model(tmp_path, out_dir):
    pytest.importorskip("tensorflow")
    source = tmp_path / "broken.keras"
    source.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = invoke("convert", source, "-o", out_dir / "model.onnx")
    assert_clean_failure(code, err, 2, "broken.keras", "not a readable Keras model")
    assert list(out_dir.iterdir()) == []


def test_a_truncated_onnx_file(jet_onnx, tmp_path, out_dir):
    data = jet_onnx.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    code, _, err = invoke("convert", truncated, "-o", out_dir / "model.onnx")
    assert_clean_failure(code, err, 2, "truncated.onnx", "not a readable ONNX model")
    assert list(out_dir.iterdir()) == []
    code, _, err = invoke("inspect", truncated)
    assert_clean_failure(code, err, 2, "truncated.onnx")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("with_factory", [True, False])
def test_a_pickle_that_is_not_weights_only_is_refused_and_never_run(tmp_path, out_dir, monkeypatch, layout,
                                                                     with_factory):
    import torch

    marker = tmp_path / "payload_ran"
    evil = tmp_path / "weights.pt"
    if layout == "zip":
        torch.save({"linear.weight": _Payload(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps({"linear.weight": _Payload(marker)}, protocol=2))
    # The payload is real: unpickling a twin with a different marker does create it.
    twin_marker = tmp_path / "twin_ran"
    pickle.loads(pickle.dumps(_Payload(twin_marker)))
    assert twin_marker.exists()

    monkeypatch.chdir(FIXTURES)
    args = ["convert", evil, "-o", out_dir / "model.onnx", "--input", "input_1:float32:batch,16"]
    if with_factory:
        args += ["--factory", FACTORY]
    code, _, err = invoke(*args)
    assert_clean_failure(code, err, 2, "weights.pt", "refused", "not weights-only")
    assert not marker.exists(), "the pickle's code was executed"
    assert list(out_dir.iterdir()) == []


def test_a_spec_with_an_unknown_key(jet_onnx, tmp_path, out_dir):
    spec = write_spec(tmp_path, {"name": "jet", "source": {"framework": "onnx", "path": str(jet_onnx),
                                                            "wieghts": "w.pt"}, **JET_TENSORS})
    code, _, err = invoke("convert", "--spec", spec, "-o", out_dir / "jet.onnx")
    assert_clean_failure(code, err, 2, "spec.yaml", "source.wieghts", "unknown key")
    assert list(out_dir.iterdir()) == []


def test_a_spec_with_a_wrong_dtype(jet_onnx, tmp_path, out_dir):
    tensors = {"inputs": [{"name": "input_1", "dtype": "float33", "shape": ["batch", 16]}],
               "outputs": JET_TENSORS["outputs"]}
    spec = write_spec(tmp_path, {"name": "jet", "source": {"framework": "onnx", "path": str(jet_onnx)}, **tensors})
    code, _, err = invoke("convert", "--spec", spec, "-o", out_dir / "jet.onnx")
    assert_clean_failure(code, err, 2, "spec.yaml", "inputs.0.dtype", "float33")
    assert list(out_dir.iterdir()) == []


def test_a_spec_dtype_that_disagrees_with_the_model(jet_onnx, tmp_path, out_dir):
    tensors = {"inputs": [{"name": "input_1", "dtype": "int64", "shape": ["batch", 16]}],
               "outputs": JET_TENSORS["outputs"]}
    spec = write_spec(tmp_path, {"name": "jet", "source": {"framework": "onnx", "path": str(jet_onnx)}, **tensors})
    code, _, err = invoke("convert", "--spec", spec, "-o", out_dir / "jet.onnx")
    assert_clean_failure(code, err, 2, "jet.onnx", "'input_1' is int64 in the spec but float32")


def test_a_spec_whose_rank_disagrees_with_the_model(jet_onnx, tmp_path, out_dir):
    tensors = {"inputs": [{"name": "input_1", "shape": ["batch", 4, 4]}], "outputs": JET_TENSORS["outputs"]}
    spec = write_spec(tmp_path, {"name": "jet", "source": {"framework": "onnx", "path": str(jet_onnx)}, **tensors})
    code, _, err = invoke("convert", "--spec", spec, "-o", out_dir / "jet.onnx")
    assert_clean_failure(code, err, 2, "jet.onnx", "'input_1'", "rank 3", "rank 2")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("bad", ["../x", "/abs", ""])
def test_names_that_could_escape_their_folder(jet_onnx, tmp_path, out_dir, bad):
    base = {"name": "jet", "source": {"framework": "onnx", "path": str(jet_onnx)}, **JET_TENSORS}
    as_model = write_spec(tmp_path, {**base, "name": bad}, "model_name.yaml")
    code, _, err = invoke("convert", "--spec", as_model, "-o", out_dir / "jet.onnx")
    assert_clean_failure(code, err, 2, "model_name.yaml", "model name")
    code, _, err = invoke("convert", jet_onnx, "-o", out_dir / "jet.onnx", "--name", bad)
    assert_clean_failure(code, err, 2, "model name")
    assert list(out_dir.iterdir()) == []
    # A tensor name is never a path: ONNX and Triton take any text, so it is kept verbatim, and the
    # files named after it (Triton warm-up files) are escaped instead. Only an empty name is refused.
    as_tensor = write_spec(tmp_path, {**base, "inputs": [{"name": bad, "shape": ["batch", 16]}]}, "tensor.yaml")
    code, _, err = invoke("convert", "--spec", as_tensor, "-o", out_dir / "jet.onnx")
    if bad == "":
        assert_clean_failure(code, err, 2, "tensor.yaml", "tensor name")
        return
    assert code == 0, err
    import onnx

    assert [i.name for i in onnx.load(str(out_dir / "jet.onnx")).graph.input] == [bad]
    golden = tmp_path / "golden.npz"
    np.savez(golden, **{bad: np.zeros((2, 16), np.float32)})
    code, _, err = invoke("triton", "add", tmp_path / "repo", out_dir / "jet.onnx", "--name", "jet", "--warmup", golden)
    assert code == 0, err
    warm = [p.relative_to(tmp_path / "repo") for p in (tmp_path / "repo").rglob("*") if "warmup" in p.parts and p.is_file()]
    assert len(warm) == 1 and warm[0].parent.as_posix() == "jet/warmup"  # one file, inside its folder


def test_an_output_path_whose_folder_does_not_exist(jet_onnx, tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "jet.onnx"
    code, _, err = invoke("convert", jet_onnx, "-o", target)
    assert_clean_failure(code, err, 2, "jet.onnx", "does not exist")
    assert not (tmp_path / "no").exists()


def test_a_disagreeing_conversion_exits_1_and_keeps_the_existing_output(tmp_path, out_dir, monkeypatch):
    import torch

    sys.path.insert(0, str(FIXTURES))
    import hepdeploy_convert_fixture_models as models

    monkeypatch.chdir(FIXTURES)
    good_weights, bad_weights = tmp_path / "jet.pt", tmp_path / "scaled.pt"
    torch.save(models.jet_mlp().state_dict(), good_weights)
    torch.save(models.batch_scaled().state_dict(), bad_weights)
    target = out_dir / "model.onnx"
    code, out, err = invoke("convert", good_weights, "--factory", FACTORY, "-o", target, "--exporter", "torchscript",
                            "--input", "input_1:float32:batch,16")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    assert set(before) == {"model.onnx", "model.json"}
    code, _, err = invoke("convert", bad_weights, "--factory", "hepdeploy_convert_fixture_models:batch_scaled",
                          "-o", target, "--exporter", "torchscript", "--input", "x:float32:batch,4")
    assert_clean_failure(code, err, 1, "disagrees with its source")
    after = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    assert after == before


def test_traceback_only_with_verbose(tmp_path):
    """In a real process: -v shows the traceback; without it the user sees one line."""
    source = tmp_path / "notes.onnx"
    source.write_text("nope")
    result = subprocess.run([sys.executable, "-m", "hepdeploy", "-v", "inspect", str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    result = subprocess.run([sys.executable, "-m", "hepdeploy", "inspect", str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines()
                                                  if line.startswith("error:")]
