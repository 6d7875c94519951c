"""A served configuration validated at its batch sizes (serving/revalidate.py), on real ONNX models run in ONNX
Runtime: an old-exporter graph (opset 11, TensorFlow-style names, batch dim `unk__12`) whose rows are independent
passes at every size; the zoo's FACILE passes at its config's sizes; a graph that mixes rows along the batch axis
(what a batch norm left in training mode does) passes at the validated chunk size and fails at the others."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.errors import DataError
from hepdeploy.serving.revalidate import serving_batches, validate_at_batches, whole_batches


def _tf_style_classifier(path: Path, batch_mixing: bool) -> Path:
    """x [unk__12, 6] -> Softmax(x W + b) named as tf2onnx names it; with ``batch_mixing`` the logits are pulled
    towards their mean over the batch, so a row's output depends on the rows batched with it."""
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "W"),
               numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["input_1:0", "W"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["logits"])]
    if batch_mixing:
        weights.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
        nodes += [helper.make_node("ReduceMean", ["logits"], ["batch_mean"], axes=[0], keepdims=1),
                  helper.make_node("Sub", ["batch_mean", "logits"], ["pull"]),
                  helper.make_node("Mul", ["pull", "half"], ["pulled"]),
                  helper.make_node("Add", ["logits", "pulled"], ["mixed"])]
    nodes.append(helper.make_node("Softmax", ["mixed" if batch_mixing else "logits"], ["ID_pred/Softmax:0"], axis=1))
    graph = helper.make_graph(nodes, "tf_style", [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT,
                                                                                 ["unk__12", 6])],
                              [helper.make_tensor_value_info("ID_pred/Softmax:0", TensorProto.FLOAT, ["unk__12", 3])],
                              initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="tf2onnx")
    model.ir_version = 6
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _inputs(rows: int = 100) -> dict[str, np.ndarray]:
    return {"input_1:0": np.random.default_rng(0).normal(size=(rows, 6)).astype(np.float32)}


def test_the_batch_sizes_a_config_serves_at() -> None:
    assert serving_batches(1, 20, [40], 80) == [1, 20, 40, 80]
    assert serving_batches(1, 16_000, [], 16_000) == [1, 16_000]
    assert serving_batches(4, 1, [2], 8) == [1, 2, 4, 8]


def test_whole_batches_cut_or_repeat_the_rows() -> None:
    inputs = _inputs(100)
    cut = whole_batches(inputs, 7)["input_1:0"]
    assert cut.shape == (98, 6) and np.array_equal(cut, inputs["input_1:0"][:98])  # 14 whole batches of 7
    repeated = whole_batches(inputs, 300)["input_1:0"]
    assert repeated.shape == (300, 6) and np.array_equal(repeated[100:200], inputs["input_1:0"])
    with pytest.raises(DataError, match="no batch axis"):
        whole_batches({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}, 2)


def test_row_independent_old_exporter_model_passes_at_every_size(tmp_path: Path) -> None:
    model = _tf_style_classifier(tmp_path / "tagger.onnx", batch_mixing=False)
    checks = validate_at_batches({"fp32": model}, _inputs(), [1, 7, 64, 300], validated_chunk=4096)
    assert [(c.batch, c.passed) for c in checks] == [(1, True), (7, True), (64, True), (300, True)]
    assert "ID_pred/Softmax:0: ok" in checks[0].detail


def test_a_model_that_mixes_rows_fails_where_the_batch_differs(tmp_path: Path) -> None:
    model = _tf_style_classifier(tmp_path / "mixing.onnx", batch_mixing=True)
    inputs = _inputs(64)
    # Validated in chunks of 64, it is judged on whole batches of 64: equal there, different at 1 and 8.
    checks = {c.batch: c for c in validate_at_batches({"fp32": model}, inputs, [1, 8, 64], validated_chunk=64)}
    assert checks[64].passed and not checks[1].passed and not checks[8].passed
    assert checks[1].line().startswith("fp32 at batch 1: FAIL (ID_pred/Softmax:0: FAIL")


@pytest.mark.slow
def test_facile_at_its_configs_sizes(facile_onnx) -> None:  # noqa: ANN001
    checks = validate_at_batches({"facile": facile_onnx.onnx_path}, facile_onnx.inputs, serving_batches(1, 16_000, [], 16_000),
                                 validated_chunk=4096)
    assert [(c.batch, c.passed) for c in checks] == [(1, True), (16_000, True)], [c.line() for c in checks]
