"""Each variant really carries the precision it claims, runs in ONNX Runtime on the CPU,
stays close to FP32 on real data, and records how it was made."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from hepdeploy.artifacts import read_artifact
from hepdeploy.backend.onnxrt import run_once
from hepdeploy.optimize import optimize_artifact
from hepdeploy.optimize.graph import FLOAT, precision_summary
from hepdeploy.spec import VariantSpec
from hepdeploy.variants import variant_kind

OnnxModel = object  # tests/optimize/conftest.py: .path, .calibration, .spec


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_once(onnx.load(str(path)), feeds)


def _io_is_fp32(model: onnx.ModelProto) -> bool:
    inits = {i.name for i in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in inits] + list(model.graph.output)
    return all(v.type.tensor_type.elem_type == FLOAT for v in values)


@pytest.fixture(scope="module")
def cnn_variants(small_cnn: OnnxModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cnn-variants")
    made = {}
    for name in ("fp32", "fp16", "int8-trt", "int8-cpu"):
        path = out / variant_kind(name).filename("cnn")
        result = optimize_artifact(small_cnn.path, name, path, calibration=small_cnn.calibration, samples=256)
        assert result.status == "ok", result.line()
        assert result.outputs == [path, path.with_suffix(".json")]
        made[name] = path
    return made


@pytest.fixture(scope="module")
def cnn_feeds(toy_images) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {"image": toy_images(256, seed=11)}


@pytest.mark.slow
def test_fp32_is_simplified_and_unchanged(small_cnn: OnnxModel, cnn_variants: dict[str, Path], cnn_feeds) -> None:  # type: ignore[no-untyped-def]
    original = onnx.load(str(small_cnn.path))
    simplified = onnx.load(str(cnn_variants["fp32"]))
    ops = [n.op_type for n in simplified.graph.node]
    # The exported graph divides the input by a constant and runs BatchNorm after each
    # Conv in eval mode: ORT's basic pass folds them; no non-standard op appears.
    assert "BatchNormalization" not in ops
    assert len(simplified.graph.node) <= len(original.graph.node)
    assert {n.domain for n in simplified.graph.node} <= {"", "ai.onnx"}
    np.testing.assert_allclose(_outputs(cnn_variants["fp32"], cnn_feeds)["probs"],
                               _outputs(small_cnn.path, cnn_feeds)["probs"], atol=1e-5, rtol=1e-4)
    assert _io_is_fp32(simplified)


@pytest.mark.slow
def test_int8_variants_carry_qdq_and_int8_weights(cnn_variants: dict[str, Path], cnn_feeds) -> None:  # type: ignore[no-untyped-def]
    reference = _outputs(cnn_variants["fp32"], cnn_feeds)["probs"]
    for name in ("int8-trt", "int8-cpu"):
        model = onnx.load(str(cnn_variants[name]))
        summary = precision_summary(model)
        assert summary.quantize_nodes > 0 and summary.dequantize_nodes > 0, name
        assert summary.int8_weights >= 2, name  # both convolutions' weights are int8 initializers
        assert summary.quantized_compute >= 2, name
        assert _io_is_fp32(model), name
        got = _outputs(cnn_variants[name], cnn_feeds)["probs"]
        assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.95, name
        assert np.abs(got - reference).mean() < 0.03, name
    cpu = onnx.load(str(cnn_variants["int8-cpu"]))
    # ONNX Runtime CPU flavour: unsigned activations, signed weights.
    zero_point_types = {i.name: i.data_type for i in cpu.graph.initializer if i.name.endswith("zero_point")}
    assert onnx.TensorProto.UINT8 in zero_point_types.values() and onnx.TensorProto.INT8 in zero_point_types.values()


@pytest.mark.slow
def test_fp16_variant_has_fp16_weights_and_fp32_io(cnn_variants: dict[str, Path], cnn_feeds) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(str(cnn_variants["fp16"]))
    summary = precision_summary(model)
    assert summary.fp16_initializers >= 4 and summary.quantize_nodes == 0
    assert _io_is_fp32(model)
    got = _outputs(cnn_variants["fp16"], cnn_feeds)["probs"]
    reference = _outputs(cnn_variants["fp32"], cnn_feeds)["probs"]
    np.testing.assert_allclose(got, reference, atol=5e-3)


@pytest.mark.slow
def test_sidecars_record_precision_steps_and_tools(small_cnn: OnnxModel, cnn_variants: dict[str, Path]) -> None:
    source_sha = read_artifact(small_cnn.path).sidecar.source.sha256
    expected = {"fp32": ("fp32", "any"), "fp16": ("fp16", "tensorrt"),
                "int8-trt": ("int8", "tensorrt"), "int8-cpu": ("int8", "cpu")}
    for name, path in cnn_variants.items():
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert (sidecar["variant"]["precision"], sidecar["variant"]["target"]) == expected[name]
        assert sidecar["parent"] == source_sha
        steps = [s["name"] for s in sidecar["steps"]]
        assert steps[0] == "simplify" and (name == "fp32" or steps[-1] == name)
        assert all(s["tool_version"] for s in sidecar["steps"])
        assert read_artifact(path).sidecar.sha256 == sidecar["sha256"]
    int8 = json.loads(cnn_variants["int8-cpu"].with_suffix(".json").read_text())["steps"][-1]["parameters"]
    assert int8["calibration_samples"] == 256 and int8["per_channel"] is True and int8["weight_type"] == "QInt8"


@pytest.mark.slow
def test_variants_are_deterministic(small_cnn: OnnxModel, cnn_variants: dict[str, Path], tmp_path: Path) -> None:
    for name in ("fp32", "int8-cpu", "int8-trt"):
        again = tmp_path / f"again.{name}.onnx"
        optimize_artifact(small_cnn.path, name, again, calibration=small_cnn.calibration, samples=256)
        assert again.read_bytes() == cnn_variants[name].read_bytes(), name


@pytest.mark.slow
def test_fp16_user_kept_nodes_and_ops(small_cnn: OnnxModel, tmp_path: Path) -> None:
    simplified = onnx.load(str(small_cnn.path))
    conv_names = [n.name for n in simplified.graph.node if n.op_type == "Conv"]
    variant = VariantSpec(name="fp16", keep_op_types=["Gemm"], keep_nodes=[conv_names[0]])
    out = tmp_path / "forced.onnx"
    result = optimize_artifact(small_cnn.path, variant, out, calibration=small_cnn.calibration, samples=64)
    assert result.ok
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gemm" or node.name == conv_names[0]:
            assert types[node.output[0]] == FLOAT, node.name
            assert all(inits.get(i, FLOAT) == FLOAT for i in node.input[1:]), node.name
    other_conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.name != conv_names[0])
    assert types[other_conv.output[0]] == onnx.TensorProto.FLOAT16


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["int8-cpu", "int8-trt"])
def test_int8_exclusions_and_methods(small_cnn: OnnxModel, tmp_path: Path, variant: str, toy_images) -> None:  # type: ignore[no-untyped-def]
    excluded = VariantSpec(name=variant, keep_op_types=["Conv"], keep_edges_fp32=False)  # type: ignore[arg-type]
    out = tmp_path / "noconv.onnx"
    optimize_artifact(small_cnn.path, excluded, out, calibration=small_cnn.calibration, samples=64)
    model = onnx.load(str(out))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and not any(i in dequantized for n in convs for i in n.input)
    assert precision_summary(model).quantized_compute >= 1  # the Gemm layers still are
    feeds = {"image": toy_images(64, seed=5)}
    for method in ("entropy", "percentile"):
        path = tmp_path / f"{method}.onnx"
        result = optimize_artifact(small_cnn.path, VariantSpec(name=variant, calibration_method=method),  # type: ignore[arg-type]
                                   path, calibration=small_cnn.calibration, samples=128)
        assert result.details["calibration_method"] == method
        assert (_outputs(path, feeds)["probs"].argmax(1) == _outputs(small_cnn.path, feeds)["probs"].argmax(1)).mean() > 0.9


@pytest.mark.slow
def test_zoo_networks_quantized_stay_close_on_their_reference_data(zoo_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hepdeploy.data import load_tensors

    for name in ("jet_mlp", "facile"):
        model = zoo_onnx(name)
        reference = load_tensors(Path(model.spec.data.reference))
        feeds = {t.name: reference[t.name][:1000] for t in model.spec.inputs}
        fp32 = _outputs(model.path, feeds)
        for variant in ("int8-cpu", "fp16"):
            out = tmp_path / f"{name}.{variant}.onnx"
            optimize_artifact(model.path, variant, out, spec=model.spec)
            got = _outputs(out, feeds)
            for key, ref in fp32.items():
                if model.spec.validation.physics.task == "classification":
                    assert (got[key].argmax(-1) == ref.argmax(-1)).mean() > 0.95, (name, variant)
                else:  # regression: relative error of the prediction
                    rel = np.abs(got[key] - ref) / np.maximum(np.abs(ref), 1.0)
                    assert float(np.median(rel)) < 0.1, (name, variant)
