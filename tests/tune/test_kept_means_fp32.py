"""Kept means FP32, on the real FACILE network (trained zoo weights): a kept layer runs in FP32 on FP32
inputs, keeping more layers along a nested chain never harms more than the intervals' noise, and
keeping every layer gives the FP32 graph."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from hepdeploy.backend.onnxrt import run_once
from hepdeploy.convert import convert_from_spec
from hepdeploy.model_zoo import get_network
from hepdeploy.optimize import optimize_artifact, resolve_calibration
from hepdeploy.optimize.int8 import lowered_graph
from hepdeploy.spec import load_spec
from hepdeploy.tune import decision_groups
from hepdeploy.validate import validate_candidate
from hepdeploy.validate.reference import make_reference
from hepdeploy.validate.report import VariantReport, harm_of

CHANNELS = 40_000  # enough HCAL channels that the intervals resolve changes well below the allowances


def _noise(report: VariantReport) -> float:
    """The half width of the interval of the check that sets the harm (the worst use of an allowance), in
    units of that allowance: how far the harm moves when the reference set is redrawn."""
    judged = [check for check in report.physics.checks if not check.informational and check.limit]
    worst = max(judged, key=lambda check: harm_of_check(check))
    return worst.half_width / float(worst.limit) if worst.half_width is not None else 0.0


def harm_of_check(check) -> float:  # noqa: ANN001
    low, high = check.interval or (check.change, check.change)
    if check.kind == "increase":
        return max(high, 0.0) / check.limit
    if check.kind == "drop":
        return max(-low, 0.0) / check.limit
    return max(abs(low), abs(high)) / check.limit


@pytest.fixture(scope="module")
def facile(zoo_export, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    exported = zoo_export("facile")
    folder = tmp_path_factory.mktemp("facile-keep")
    spec = load_spec(exported.spec_path)
    fp32 = folder / "facile_fp32.onnx"
    optimize_artifact(convert_from_spec(spec, folder / "facile.onnx").path, "fp32", fp32, spec=spec)
    data = get_network("facile").generate(CHANNELS, seed=11)
    reference = make_reference(fp32, {"input": data.inputs["input"], "true_energy": data.variables["true_energy"]},
                               labels=data.targets, spec=spec)
    calibration = resolve_calibration(None, spec.inputs, spec)
    return spec, fp32, reference, calibration, folder


@pytest.mark.slow
def test_keeping_more_layers_never_harms_more_than_the_noise(facile) -> None:  # noqa: ANN001
    spec, fp32, reference, calibration, folder = facile
    variant = spec.variant("int8-cpu").model_copy(update={"calibration_method": "max", "tune": False})
    layers = [group.name for group in decision_groups(onnx.load(str(fp32)), variant)[0]]
    assert len(layers) == 6  # dense_0 .. dense_5; the output layer is an edge, FP32 anyway
    chain = []
    for k in range(len(layers)):  # nested: nothing, dense_0, dense_0..1, ... dense_0..4
        kept = layers[:k]
        candidate = folder / f"keep_{k}.onnx"
        optimize_artifact(fp32, variant.model_copy(update={"keep_nodes": [f"^{n}$" for n in kept]}), candidate,
                          calibration=calibration, spec=spec)
        report = validate_candidate(candidate, reference, spec=spec, name=f"keep {k}")
        chain.append((k, harm_of(report), _noise(report)))
    for (k, harm, noise), (_, more_kept, more_noise) in zip(chain, chain[1:]):
        assert math.isfinite(harm) and math.isfinite(more_kept)
        assert more_kept <= harm + noise + more_noise, (k, chain)
    assert chain[-1][1] < chain[0][1]  # and keeping five of six is clearly better than keeping none


@pytest.mark.slow
def test_keeping_every_layer_is_the_fp32_graph_and_a_kept_layer_reads_fp32(facile) -> None:  # noqa: ANN001
    spec, fp32, reference, calibration, folder = facile
    model = onnx.load(str(fp32))
    variant = spec.variant("int8-cpu").model_copy(update={"tune": False})
    layers = [group.name for group in decision_groups(model, variant)[0]]
    every = variant.model_copy(update={"keep_nodes": [f"^{n}$" for n in layers]})
    graph, parameters, _ = lowered_graph("int8-cpu", fp32, every, spec.inputs, calibration)
    assert not any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.graph.node)
    feed = {"input": reference.inputs["input"][:4096]}
    ours, theirs = run_once(graph, feed)["output"], run_once(fp32, feed)["output"]
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-4)

    # One layer lowered among kept ones: its neighbours read FP32 (the lowered layer's output comes back
    # dequantized, with the ReLU the quantizer folded into its Q/DQ pair applied again).
    lowered = layers[2]
    some = variant.model_copy(update={"keep_nodes": [f"^{n}$" for n in layers if n != lowered]})
    graph, parameters, _ = lowered_graph("int8-cpu", fp32, some, spec.inputs, calibration)
    assert parameters["fp32_inputs_restored"] >= 1
    producer = {out: node for node in graph.graph.node for out in node.output}
    for node in graph.graph.node:
        if node.op_type == "Gemm" and node.name != lowered:
            assert producer.get(node.input[0]) is None or producer[node.input[0]].op_type != "DequantizeLinear", \
                node.name
    after = next(node for node in graph.graph.node if node.name == layers[3])
    assert producer[after.input[0]].op_type == "Relu"
