"""What a build shows while it runs, on real builds: one line per finished step where stderr is not a
terminal (the INFO log lines only with -v), the live grid fed by the build's step events, and the step
times a build keeps for the next one's ETA."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.build_view import REPOSITORY_ROW, TIMES_NAME, BuildProgress, StepTimes, step_line
from hepdeploy.cli import main
from hepdeploy.pipeline import SUMMARY_NAME, BuildOptions, build
from hepdeploy.spec import load_spec
from hepdeploy.steps import StepResult


def _spec_file(folder: Path, name: str, seed: int, variants: str = "fp32, fp16") -> Path:
    """A spec for y = relu(x @ W + b), a real ONNX graph with a batch axis, made as ``variants``."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
                     numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
              str(folder / f"{name}.onnx"))
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\nsource: {{framework: onnx, path: {name}.onnx}}\n"
                    "inputs: [{name: x, shape: [batch, 4]}]\noutputs: [{name: y, shape: [batch, 3]}]\n"
                    f"variants: [{variants}]\ntriton: {{variant: fp32, max_batch_size: 64}}\n")
    return spec


def _summary_lines(summary: dict) -> list[str]:  # type: ignore[type-arg]
    """The CI line of every step the summary records, in the order the build ran them."""
    rows = [(m["name"], m["steps"]) for m in summary["models"]] + [(REPOSITORY_ROW, summary["repository_steps"])]
    return [step_line(model, StepResult(s["step"], s["status"], s["reason"], details=s["details"]))
            for model, steps in rows for s in steps]


def test_the_live_grid_is_fed_by_the_build_and_the_next_build_knows_its_step_times(tmp_path: Path) -> None:
    specs = [load_spec(_spec_file(tmp_path, name, seed)) for seed, name in enumerate(("alpha", "beta"))]
    options = BuildOptions(out_dir=tmp_path / "out")
    first = BuildProgress(StepTimes.from_folder(options.out_dir, SUMMARY_NAME))
    report = build(specs, options, events=first)
    assert list(first.rows) == ["alpha", "beta", REPOSITORY_ROW]
    for model in report.models:
        row = first.rows[model.name]
        assert {s: r.status for s, r in row.results.items()} == {s.step: s.status for s in model.steps}
        assert row.running is None and set(row.planned) >= set(row.results)
    assert first.remaining() == 0.0 and first.now_text() == "now: -"
    kinds = first.kinds()
    # Columns in the order a build runs them (a precheck of the fp16 graph where there is no GPU).
    assert [k for k in kinds if k != "precheck"] == ["convert", "reference", "optimize", "validate", "publish",
                                                     "reports", "triton-check"]
    # The next build into the same folder estimates each step from this one's times.
    second = BuildProgress(StepTimes.from_folder(options.out_dir, SUMMARY_NAME))
    measured = {m.name: {s.step: s.details["seconds"] for s in m.steps} for m in report.models}
    assert {k: v for k, v in second.times.seconds.items() if k != REPOSITORY_ROW} == measured
    build(specs, options, events=second)
    kept = json.loads((options.out_dir / TIMES_NAME).read_text())["seconds"]
    assert kept["alpha"] == measured["alpha"]  # folded from the first build's summary before it was overwritten


def test_a_ci_log_gets_one_line_per_step_and_the_info_lines_only_with_v(tmp_path: Path) -> None:
    spec = _spec_file(tmp_path, "alpha", 0, variants="fp32")
    quiet = CliRunner().invoke(main, ["build", str(spec), "-o", str(tmp_path / "out")])
    assert quiet.exit_code == 0, quiet.output
    summary = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert quiet.stderr.splitlines() == _summary_lines(summary)
    verbose = CliRunner().invoke(main, ["-v", "build", str(spec), "-o", str(tmp_path / "verbose")])
    assert "INFO hepdeploy.pipeline: alpha: validate:fp32: ok" in verbose.stderr
    assert "alpha  validate:fp32  ok  PASS" in verbose.stderr
    silent = CliRunner().invoke(main, ["-q", "build", str(spec), "-o", str(tmp_path / "silent")])
    assert silent.exit_code == 0 and silent.stderr == ""


@pytest.mark.slow
def test_a_two_model_build_writes_one_line_per_finished_step_and_a_short_table(two_model_build) -> None:  # noqa: ANN001
    summary = json.loads((two_model_build.out / SUMMARY_NAME).read_text())
    lines = [line for line in two_model_build.result.stderr.splitlines() if line.strip()]
    expected = _summary_lines(summary)
    assert len(lines) <= len(expected), two_model_build.result.stderr
    assert [line for line in lines if line in expected] == expected
    assert "INFO" not in two_model_build.result.stderr
    # The final table (stdout) says each verdict's outcome; the reasons behind it are in the reports.
    validations = [s for m in summary["models"] for s in m["steps"] if s["step"].startswith("validate:")]
    assert validations
    for step in validations:
        assert step["reason"][:60] not in two_model_build.result.stdout
    assert "result:" in two_model_build.result.stdout
