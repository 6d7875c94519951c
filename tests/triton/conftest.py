"""Small real ONNX models for the triton tests, built with onnx.helper (fast, no torch import).

* ``facile_onnx``: a FACILE-shaped MLP, input [batch, 47] -> output [batch, 1];
* ``interaction_onnx``: an interaction-network-shaped graph without batch axis,
  x [n_hits, 3] float32 and edge_index [2, n_edges] int64 -> edge_weight [n_edges].
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.artifacts import save_onnx
from hepdeploy.spec import ModelSpec, spec_from_dict

OPSET = [helper.make_opsetid("", 17)]


def make_mlp(path: Path, *, seed: int = 0, hidden: int = 8, features: int = 47) -> Path:
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 1)).astype(np.float32) / hidden, "w2")
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "facile_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w1, w2],
    )
    return save_onnx(helper.make_model(graph, opset_imports=OPSET, ir_version=10), path)


def make_interaction(path: Path, *, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.standard_normal((6, 1)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Gather", ["edge_index", "zero"], ["src"], axis=0),
        helper.make_node("Gather", ["edge_index", "one"], ["dst"], axis=0),
        helper.make_node("Gather", ["x", "src"], ["xs"], axis=0),
        helper.make_node("Gather", ["x", "dst"], ["xd"], axis=0),
        helper.make_node("Concat", ["xs", "xd"], ["pair"], axis=1),
        helper.make_node("MatMul", ["pair", "w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Squeeze", ["p", "axes"], ["edge_weight"]),
    ]
    graph = helper.make_graph(
        nodes,
        "interaction_like",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n_hits", 3]),
            helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "n_edges"]),
        ],
        [helper.make_tensor_value_info("edge_weight", TensorProto.FLOAT, ["n_edges"])],
        initializer=[weights, zero, one, axes],
    )
    return save_onnx(helper.make_model(graph, opset_imports=OPSET, ir_version=10), path)


FACILE_SPEC = {
    "name": "facile",
    "source": {"framework": "onnx", "path": "facile.onnx"},
    "inputs": [{"name": "input", "shape": ["batch", 47]}],
    "outputs": [{"name": "output", "shape": ["batch", 1]}],
    "triton": {
        "max_batch_size": 160000,
        "dynamic_batching": {"preferred_batch_size": [16000], "max_queue_delay_microseconds": 100},
        "tensorrt_accelerator": "FP16",
        "cpu_twin": {"variant": "int8-cpu", "count": 2, "intra_op_threads": 1},
    },
}

INTERACTION_SPEC = {
    "name": "interaction_network",
    "source": {"framework": "onnx", "path": "in.onnx"},
    "inputs": [
        {"name": "x", "shape": ["n_hits", 3]},
        {"name": "edge_index", "dtype": "int64", "shape": [2, "n_edges"], "index_of": "n_hits"},
    ],
    "outputs": [{"name": "edge_weight", "shape": ["n_edges"]}],
    "dims": {"n_hits": {"min": 2, "opt": 40, "max": 400}, "n_edges": {"min": 1, "opt": 160, "max": 4000}},
}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("triton_models")
    return {
        "facile": make_mlp(folder / "facile.onnx"),
        "facile_other": make_mlp(folder / "facile_other.onnx", seed=1),
        "interaction": make_interaction(folder / "in.onnx"),
    }


@pytest.fixture()
def facile_spec() -> ModelSpec:
    return spec_from_dict(FACILE_SPEC)


@pytest.fixture()
def interaction_spec() -> ModelSpec:
    return spec_from_dict(INTERACTION_SPEC)


@pytest.fixture()
def facile_golden() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(3).standard_normal((16, 47)).astype(np.float32)}


@pytest.fixture()
def interaction_golden() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    return {
        "x": rng.standard_normal((30, 3)).astype(np.float32),
        "edge_index": rng.integers(0, 30, size=(2, 90)).astype(np.int64),
    }


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of files ('dir' for folders)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        snapshot[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return snapshot


@pytest.fixture()
def snapshot():
    """``snapshot(root)`` -> {relative path: sha256 or 'dir'}."""
    return tree_snapshot


@pytest.fixture()
def build_mlp():
    """``build_mlp(path, seed=..., hidden=...)`` writes a FACILE-shaped ONNX model."""
    return make_mlp
