"""A batch axis the exporter named differently on different tensors (the real DeepJet Run 3 ONNX: inputs
``[N, ...]``, an extra output ``jet_pt [Identityjet_pt_dim_0, 1]``) is found through symbolic shape inference,
so a spec-less ``triton add`` publishes a batching config; a leading dim that is truly another dim is not."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.artifacts import load_onnx, save_onnx, tensor_specs_of
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.cli import main
from hepdeploy.spec import infer_batch_axis
from hepdeploy.triton.check import check_repository
from hepdeploy.triton.config import read_model_config

GLOBAL, CPF, CPF_FEATURES, CLASSES = 15, 25, 16, 6


def _deepjet_like(path: Path, jet_pt_shape: str = "slice") -> Path:
    """Inputs global_preproc [N, 15] and cpf_preproc [N, 25, 16]; outputs ``ID_pred/Softmax:0 [N, 6]`` and
    ``jet_pt``, declared ``[Identityjet_pt_dim_0, 1]``: the global input's first column (``slice``), or
    every global feature as its own row (``flatten``: a leading dim of 15 N, not the batch)."""
    import onnx

    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((GLOBAL + CPF * CPF_FEATURES, CLASSES)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "rows_flat"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "column"),
        numpy_helper.from_array(np.array([0], np.int64), "start"),
        numpy_helper.from_array(np.array([1], np.int64), "end"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
    ]
    jet_pt = [helper.make_node("Slice", ["global_preproc", "start", "end", "axis"], ["pt_column"])] \
        if jet_pt_shape == "slice" else [helper.make_node("Reshape", ["global_preproc", "column"], ["pt_column"])]
    nodes = [
        helper.make_node("Reshape", ["cpf_preproc", "rows_flat"], ["cpf_flat"]),
        helper.make_node("Concat", ["global_preproc", "cpf_flat"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["ID_pred/Softmax:0"], axis=-1),
        *jet_pt,
        helper.make_node("Identity", ["pt_column"], ["jet_pt"]),
    ]
    graph = helper.make_graph(
        nodes, "deepjet_like",
        [helper.make_tensor_value_info("global_preproc", TensorProto.FLOAT, ["N", GLOBAL]),
         helper.make_tensor_value_info("cpf_preproc", TensorProto.FLOAT, ["N", CPF, CPF_FEATURES])],
        [helper.make_tensor_value_info("ID_pred/Softmax:0", TensorProto.FLOAT, ["N", CLASSES]),
         helper.make_tensor_value_info("jet_pt", TensorProto.FLOAT, ["Identityjet_pt_dim_0", 1])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return save_onnx(model, path)


def test_spec_less_triton_add_finds_the_batch_axis_of_a_deepjet_like_model(tmp_path: Path) -> None:
    model = _deepjet_like(tmp_path / "deepjet.onnx")
    inputs, outputs = tensor_specs_of(load_onnx(model, load_weights=False))
    assert [t.shape for t in outputs] == [["N", CLASSES], ["N", 1]]
    assert infer_batch_axis([*inputs, *outputs])[0]

    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(model), "--name", "deepjet"])
    assert result.exit_code == 0, result.output
    config = read_model_config(repo / "deepjet" / "config.pbtxt")
    assert config.max_batch_size > 0
    assert {t.name: list(t.dims) for t in config.input} == {"global_preproc": [GLOBAL],
                                                            "cpf_preproc": [CPF, CPF_FEATURES]}
    assert {t.name: list(t.dims) for t in config.output} == {"ID_pred/Softmax:0": [CLASSES], "jet_pt": [1]}
    assert check_repository(repo) == []  # the config against the graph, and the model run at its shapes

    rng = np.random.default_rng(1)
    feeds = {"global_preproc": rng.standard_normal((3, GLOBAL)).astype(np.float32),
             "cpf_preproc": rng.standard_normal((3, CPF, CPF_FEATURES)).astype(np.float32)}
    with OnnxRuntimeRunner(repo / "deepjet" / "1" / "model.onnx") as runner:
        answers = runner.run(feeds)
    assert answers["ID_pred/Softmax:0"].shape == (3, CLASSES)
    np.testing.assert_array_equal(answers["jet_pt"], feeds["global_preproc"][:, :1])


def test_a_leading_dim_that_is_another_dim_is_not_taken_for_the_batch(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    model = _deepjet_like(tmp_path / "flat.onnx", jet_pt_shape="flatten")
    with caplog.at_level(logging.INFO, logger="hepdeploy.artifacts"):
        _, outputs = tensor_specs_of(load_onnx(model, load_weights=False))
    assert outputs[1].shape == ["Identityjet_pt_dim_0", 1]  # 15 N rows: kept as the graph names it
    assert "does not show these outputs' leading dim is the inputs' 'N': jet_pt" in caplog.text

    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(model), "--name", "flat"])
    assert result.exit_code == 0, result.output
    assert read_model_config(repo / "flat" / "config.pbtxt").max_batch_size == 0
