"""One ModelOpt process per build: every fp16 and int8-trt variant of every model is made by the same
worker, which imports ModelOpt once; a worker that dies fails one job, and the next job gets a fresh one."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.errors import ConversionError, NativeCrashError
from hepdeploy.optimize.modelopt_worker import ModelOptWorker
from hepdeploy.pipeline import BuildOptions, build
from hepdeploy.spec import spec_from_dict

pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA ModelOpt is not installed")


def _mlp(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    nodes, initializers, previous = [], [], "x"
    for k, (n_in, n_out) in enumerate(((8, 16), (16, 16), (16, 3))):
        initializers += [numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), f"W{k}"),
                         numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), f"b{k}")]
        nodes += [helper.make_node("MatMul", [previous, f"W{k}"], [f"m{k}"], name=f"matmul{k}"),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"], name=f"add{k}")]
        previous = f"a{k}"
        if k < 2:
            nodes.append(helper.make_node("Relu", [previous], [f"r{k}"], name=f"relu{k}"))
            previous = f"r{k}"
    nodes.append(helper.make_node("Identity", [previous], ["y"], name="out"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                              initializer=initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def _spec(tmp_path: Path, name: str, seed: int):  # noqa: ANN202 - a ModelSpec
    source = _mlp(tmp_path / f"{name}.onnx", seed)
    np.savez(tmp_path / f"{name}_data.npz", x=np.random.default_rng(seed).standard_normal((256, 8)).astype(np.float32))
    return spec_from_dict({
        "name": name, "source": {"framework": "onnx", "path": str(source)},
        "inputs": [{"name": "x", "shape": ["batch", 8]}], "outputs": [{"name": "y", "shape": ["batch", 3]}],
        "data": {"calibration": f"{name}_data.npz", "reference": f"{name}_data.npz", "calibration_samples": 256},
        "variants": ["fp32", "fp16", "int8-trt"], "triton": {"variant": "fp32", "max_batch_size": 64},
    }, base_dir=tmp_path)


def test_one_worker_imports_modelopt_once_for_every_variant_of_every_model(tmp_path: Path) -> None:
    report = build([_spec(tmp_path, "first", 0), _spec(tmp_path, "second", 1)],
                   BuildOptions(out_dir=tmp_path / "out", publish=False))
    made = [s for m in report.models for s in m.steps if s.step in ("optimize:fp16", "optimize:int8-trt")]
    assert [s.status for s in made] == ["ok"] * 4, [s.reason for s in made]
    # The step records say which worker made each variant: one process, one import, jobs 1..4 in order.
    assert {s.details["modelopt_worker_pid"] for s in made} != {None}
    assert len({s.details["modelopt_worker_pid"] for s in made}) == 1
    assert [s.details["modelopt_worker_job"] for s in made] == [1, 2, 3, 4]
    assert {s.details["modelopt_imports"] for s in made} == {1}
    assert os.getpid() not in {s.details["modelopt_worker_pid"] for s in made}


def test_a_failed_job_leaves_the_worker_and_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    with ModelOptWorker() as worker:
        with pytest.raises(ConversionError, match="unknown job kind 'nonsense'"):
            worker.run({"step": "probe", "kind": "nonsense"})
        first_pid = worker._process.pid  # noqa: SLF001 - the test kills the real child
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(NativeCrashError, match="probe: ModelOpt crashed \\(SIGKILL\\)"):
            worker.run({"step": "probe", "kind": "nonsense"})
        with pytest.raises(ConversionError, match="unknown job kind"):
            worker.run({"step": "probe", "kind": "nonsense"})
        assert worker.starts == 2 and worker._process.pid != first_pid  # noqa: SLF001
    assert not worker.running
