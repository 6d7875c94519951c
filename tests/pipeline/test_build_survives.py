"""A build survives its own bugs: a failing step is recorded with its traceback, the other models
are built, and the summary on disk is current after every step."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hepdeploy import pipeline
from hepdeploy.cli import main
from hepdeploy.pipeline import BuildOptions, build
from hepdeploy.spec import spec_from_dict
from hepdeploy.triton.check import check_repository


def _small_model(path: Path, seed: int) -> Path:
    """y = relu(x @ W + b): a real ONNX graph with a batch axis."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
         helper.make_node("Add", ["h", "b"], ["z"], name="add"),
         helper.make_node("Relu", ["z"], ["y"], name="relu")],
        "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def _spec(tmp_path: Path, name: str, seed: int):  # noqa: ANN202 - a ModelSpec
    source = _small_model(tmp_path / f"{name}_source.onnx", seed)
    return spec_from_dict({
        "name": name, "source": {"framework": "onnx", "path": str(source)},
        "inputs": [{"name": "x", "shape": ["batch", 4]}], "outputs": [{"name": "y", "shape": ["batch", 3]}],
        "variants": ["fp32"], "triton": {"variant": "fp32", "max_batch_size": 64},
    }, base_dir=tmp_path)


@pytest.fixture
def failing_optimize(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """The optimize step of model 'broken' raises an exception that is not ours (as a bug would)."""
    real = pipeline.optimize_artifact

    def optimize(source: Path, variant, output: Path, **kwargs):  # noqa: ANN001, ANN202
        if kwargs["spec"].name == "broken":
            raise ValueError("boom inside a dependency")
        return real(source, variant, output, **kwargs)

    monkeypatch.setattr(pipeline, "optimize_artifact", optimize)


def test_an_unexpected_error_fails_one_step_and_the_other_models_are_built(tmp_path: Path, failing_optimize) -> None:
    specs = [_spec(tmp_path, "broken", 0), _spec(tmp_path, "healthy", 1)]
    report = build(specs, BuildOptions(out_dir=tmp_path / "out"))

    broken = {s.step: s for s in report.models[0].steps}
    step = broken["optimize:fp32"]
    assert step.status == "failed" and step.variant == "fp32"
    assert step.reason == "unexpected ValueError: boom inside a dependency"
    log = Path(step.details["log"])
    assert log.parent == tmp_path / "out" / "broken" / "logs"
    assert "Traceback" in log.read_text() and "boom inside a dependency" in log.read_text()
    assert broken["publish"].status == "skipped"  # nothing passed validation: nothing published

    healthy = report.models[1]
    assert not healthy.failed and {s.step for s in healthy.steps} >= {"convert", "optimize:fp32", "validate:fp32",
                                                                       "publish"}
    repository = tmp_path / "out" / "model_repository"
    assert sorted(p.name for p in repository.iterdir()) == ["healthy"]
    assert check_repository(repository) == []
    assert report.failed

    summary = json.loads((tmp_path / "out" / "build-summary.json").read_text())
    assert summary["passed"] is False and summary["finished"]
    assert summary["versions"]["hepdeploy"] and summary["versions"]["onnx"]
    failed = [s for s in summary["models"][0]["steps"] if s["status"] == "failed"]
    assert [s["step"] for s in failed] == ["optimize:fp32"] and "boom" in failed[0]["reason"]
    # The build's page says so: the broken model's failed step, the healthy model's published variant.
    page = (tmp_path / "out" / "index.md").read_text()
    assert "- failed: optimize:fp32: unexpected ValueError: boom inside a dependency" in page
    assert "| healthy | fp32 | PASS |" in page and "| broken | fp32 | - | - | failed | - | - | - | - |" in page
    assert "## broken: FAIL" in page
    assert (tmp_path / "out" / "index.html").is_file()


def test_the_summary_is_on_disk_after_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted build (Ctrl-C in the second model) still leaves a summary of what it did."""
    real = pipeline.convert_from_spec

    def convert(spec, output: Path, exporter: str = "auto"):  # noqa: ANN001, ANN202
        if spec.name == "second":
            raise KeyboardInterrupt
        return real(spec, output, exporter)

    monkeypatch.setattr(pipeline, "convert_from_spec", convert)
    with pytest.raises(KeyboardInterrupt):
        build([_spec(tmp_path, "first", 0), _spec(tmp_path, "second", 1)], BuildOptions(out_dir=tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "build-summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["first", "second"]
    assert {s["step"] for s in summary["models"][0]["steps"]} >= {"convert", "optimize:fp32", "publish"}
    assert summary["finished"] is None


def test_verbose_build_shows_the_original_error(tmp_path: Path, failing_optimize) -> None:
    spec_file = tmp_path / "broken.yaml"
    source = _small_model(tmp_path / "broken_source.onnx", 0)
    spec_file.write_text(f"name: broken\nsource: {{framework: onnx, path: {source}}}\n"
                         "inputs: [{name: x, shape: [batch, 4]}]\noutputs: [{name: y, shape: [batch, 3]}]\n"
                         "variants: [fp32]\n")
    quiet = CliRunner().invoke(main, ["build", str(spec_file), "-o", str(tmp_path / "quiet")])
    assert quiet.exit_code == 1
    assert "unexpected ValueError: boom inside a dependency" in quiet.stdout
    assert "Traceback" not in quiet.stderr
    verbose = CliRunner().invoke(main, ["-v", "build", str(spec_file), "-o", str(tmp_path / "verbose")])
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr and 'raise ValueError("boom inside a dependency")' in verbose.stderr


def test_verbose_shows_the_dependency_error_a_library_error_was_chained_to(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf message" * 3)
    quiet = CliRunner().invoke(main, ["inspect", str(corrupt)])
    assert quiet.exit_code == 2
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a readable ONNX model" in lines[0] and "-v" in lines[0]
    verbose = CliRunner().invoke(main, ["-v", "inspect", str(corrupt)])
    assert verbose.exit_code == 2
    assert "The above exception was the direct cause of the following exception" in verbose.stderr
    assert "DecodeError" in verbose.stderr


@pytest.mark.parametrize("strict", [False, True])
def test_an_undecided_variant_is_rejected_with_its_reason_and_strict_fails(tmp_path: Path, strict: bool) -> None:
    """300 labelled events cannot resolve a 1 % background working point: the fp16 variant is
    UNDECIDED, kept out of the repository with the reason; only --strict fails the build on it."""
    from hepdeploy.data import save_tensors

    source = _small_model(tmp_path / "tiny_source.onnx", 0)
    rng = np.random.default_rng(1)
    save_tensors(tmp_path / "reference.npz", {"x": rng.normal(size=(300, 4)).astype(np.float32),
                                              "labels": rng.integers(0, 3, 300)})
    spec = spec_from_dict({
        "name": "tiny", "source": {"framework": "onnx", "path": str(source)},
        "inputs": [{"name": "x", "shape": ["batch", 4]}], "outputs": [{"name": "y", "shape": ["batch", 3]}],
        "data": {"reference": "reference.npz", "calibration": "reference.npz", "labels": "labels"},
        "variants": ["fp32", "fp16"], "triton": {"variant": "fp32", "max_batch_size": 64},
    }, base_dir=tmp_path)
    report = build([spec], BuildOptions(out_dir=tmp_path / "out", strict=strict))
    steps = {s.step: s for s in report.models[0].steps}
    undecided = steps["validate:fp16"]
    assert undecided.details["outcome"] == "UNDECIDED"
    assert undecided.status == ("failed" if strict else "rejected")
    assert "not enough events" in undecided.reason
    assert steps["validate:fp32"].status == "ok" and report.failed is strict
    assert report.rejected == ([] if strict else ["tiny:fp16"])
    manifest = json.loads((tmp_path / "out" / "model_repository" / "tiny" / "1" / "hepdeploy-manifest.json").read_text())
    assert manifest["source"]["variant"]["name"] == "fp32" and manifest["verdict"]["outcome"] == "PASS"
