"""A native crash of ONNX Runtime on one variant's graph is contained: that variant is rejected with one
line naming the model, the step and the signal, and the build goes on with the others.

No ONNX graph that crashes the CPU provider of the ONNX Runtime installed here was found (the
candidates tried fail with exceptions, as they should). So the crash is made real another way:
the child interpreter that opens a *quantized* graph is replaced by one that dies of a genuine
SIGSEGV (a NULL read through ctypes). Everything else, parent side, is the code under test.
"""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.cli import main


def _segfaulting_python(folder: Path) -> Path:
    """A python that segfaults when asked to open a graph with QuantizeLinear in the ONNX Runtime child."""
    script = folder / "python-crashing-on-int8"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = "hepdeploy.backend.onnxrt_child" ] && grep -q QuantizeLinear "$3"; then\n'
        f'  exec "{sys.executable}" -c "import ctypes; ctypes.string_at(0)"\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _model(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) / 4, f"w{k}")
               for k, shape in enumerate([(16, 32), (32, 32), (32, 8)])]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="mm1"), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], initializer=weights)
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    data = folder / "data.npz"
    np.savez(data, x=rng.standard_normal((256, 16)).astype(np.float32))
    return path, data


@pytest.mark.slow
def test_a_crashing_variant_is_rejected_and_the_build_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = _model(tmp_path)
    monkeypatch.setattr(sys, "executable", str(_segfaulting_python(tmp_path)))

    result = CliRunner().invoke(main, ["optimize", str(model), "--variant", "int8-cpu", "-o", str(tmp_path / "q.onnx"),
                                       "--calibration", str(data)])
    assert result.exit_code == 2
    assert "error: int8-cpu of m.onnx: ONNX Runtime crashed (SIGSEGV)" in result.output
    assert not (tmp_path / "q.onnx").exists()

    spec = {"name": "m", "source": {"framework": "onnx", "path": str(model)},
            "inputs": [{"name": "x", "shape": ["N", 16]}], "outputs": [{"name": "y", "shape": ["N", 8]}],
            "data": {"calibration": str(data), "reference": str(data)},
            "variants": [{"name": "fp32"}, {"name": "int8-cpu"}]}
    spec_path = tmp_path / "m.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(spec_path), "-o", str(out)])
    summary = json.loads((out / "build-summary.json").read_text())
    steps = {s["step"]: s for s in summary["models"][0]["steps"]}
    assert steps["optimize:int8-cpu"]["status"] == "rejected"
    assert "ONNX Runtime crashed (SIGSEGV)" in json.dumps(steps["optimize:int8-cpu"])
    assert steps["optimize:fp32"]["status"] == "ok" and steps["validate:fp32"]["status"] == "ok"
    assert steps["publish"]["status"] == "ok"
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_user_supplied_graphs_that_crash_are_contained_in_validate_and_triton_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = _model(tmp_path)
    quantized, golden = tmp_path / "q.onnx", tmp_path / "golden.npz"
    for args in (["optimize", model, "--variant", "int8-cpu", "-o", quantized, "--calibration", data],
                 ["reference", model, "--data", data, "-o", golden]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(quantized), "--name", "q"])
    assert result.exit_code == 0, result.output

    monkeypatch.setattr(sys, "executable", str(_segfaulting_python(tmp_path)))  # from now on, it "crashes"
    result = CliRunner().invoke(main, ["validate", str(quantized), "--golden", str(golden)])
    assert result.exit_code == 2 and "q.onnx: ONNX Runtime crashed (SIGSEGV)" in result.output
    result = CliRunner().invoke(main, ["triton", "check", str(repo)])
    assert result.exit_code == 1 and "ONNX Runtime crashed (SIGSEGV)" in result.output
