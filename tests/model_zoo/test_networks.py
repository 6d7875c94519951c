"""Every zoo network builds, trains on the reduced budget, exports, converts and round-trips."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hepdeploy.data import load_tensors
from hepdeploy.model_zoo import get_network, list_networks
from hepdeploy.spec import load_spec

ALL = [
    ("facile", None),
    ("jet_mlp", None),
    ("jet_mlp", "torch"),
    ("interaction_network", None),
    ("particlenet", None),
    ("deepjet", None),
    pytest.param("resnet50", None, marks=pytest.mark.slow),
]

# What a reduced-budget training must reach on its synthetic test set (full budget: see zoo list).
CHANCE_BEATEN = {"classification": ("auc", 0.7), "edge_classification": ("auc", 0.7)}
# ResNet-50's reduced budget is two optimizer steps (a conversion test, not a physics one):
# its metric is only required to be computed; the full budget's AUC is in `hepdeploy zoo list`.
NO_FLOOR_WHEN_REDUCED = {"resnet50"}


def test_registry_lists_the_six_networks() -> None:
    assert set(list_networks()) == {"facile", "jet_mlp", "resnet50", "particlenet", "deepjet", "interaction_network"}
    assert get_network("jet_mlp").flavours == ("keras", "torch")


def _self_check(artifact: Any) -> dict[str, Any]:
    steps = [s for s in artifact.sidecar.steps if s.name == "self-check"]
    assert steps, "the conversion recorded no self-check"
    return steps[-1].parameters


@pytest.mark.slow
@pytest.mark.parametrize("name,flavour", ALL)
def test_export_and_convert(name: str, flavour: str | None, zoo_export: Any, tmp_path: Path) -> None:
    from hepdeploy.convert import convert_from_spec

    exported = zoo_export(name, flavour)
    net = get_network(name)

    # The spec on disk is loadable, relative paths resolve, and it names the exported files.
    spec = load_spec(exported.spec_path)
    assert Path(spec.data.reference) == exported.reference_path.resolve()
    assert Path(spec.data.calibration) == exported.calibration_path.resolve()
    assert [t.name for t in spec.inputs] == [t.name for t in net.inputs]
    assert spec.validation.physics.task == net.task
    if spec.source.framework == "torch":
        assert Path(spec.source.weights) == exported.source_path.resolve()
        assert spec.source.factory == net.torch_factory
    else:
        assert Path(spec.source.path) == exported.source_path.resolve()

    # Reference: inputs under the spec's names plus labels/targets; calibration: inputs only.
    reference = load_tensors(exported.reference_path)
    calibration = load_tensors(exported.calibration_path)
    truth_key = spec.data.labels
    # ... and the per-event variables the physics checks bin in (jet pT, true energy) or group by (event).
    assert truth_key in reference and set(reference) == {t.name for t in spec.inputs} | {truth_key} | set(
        spec.data.variables)
    assert set(spec.validation.physics.bins) <= set(spec.data.variables) == set(net.variable_names)
    assert set(calibration) == {t.name for t in spec.inputs}
    first = spec.inputs[0].name
    assert not np.array_equal(reference[first][: len(calibration[first])], calibration[first][: len(reference[first])])

    # Trained weights, and the physics metric beats chance.
    assert exported.trained and exported.budget == "reduced"
    if net.task == "regression":
        assert exported.metrics["resolution"] < exported.metrics["linear_resolution"]
    elif name in NO_FLOOR_WHEN_REDUCED:
        assert 0.0 <= exported.metrics["auc"] <= 1.0
    else:
        key, floor = CHANCE_BEATEN[net.task]
        assert exported.metrics[key] > floor, exported.metrics

    # Conversion with its self-check at batch 1 and 64 (graphs: two sizes; particle counts: two).
    artifact = convert_from_spec(spec, tmp_path / f"{spec.name}.onnx")
    check = _self_check(artifact)
    assert check["passed"]
    sizes = check["sizes"]
    if spec.batched:
        assert {s["batch"] for s in sizes} >= {1, 64}
    else:
        assert len({tuple(sorted(s.items())) for s in sizes}) >= 2
    for dim in ("n_pf", "n_sv", "n_cpf", "n_npf", "n_hits", "n_edges"):
        if dim in spec.dims:
            assert len({s[dim] for s in sizes}) >= 2, (dim, sizes)

    # Round trip: the ONNX artifact reproduces the trained source on the labelled reference data.
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    feed = {t.name: reference[t.name][: 16 if spec.batched else None] for t in spec.inputs}
    produced = session.run(None, feed)[0]
    model = net.load(flavour or net.default_flavour, exported.source_path)
    expected = net.predict(model, flavour or net.default_flavour, feed)
    np.testing.assert_allclose(produced, expected, atol=1e-4, rtol=1e-3)

    _check_export_traps(name, artifact.path)


def _check_export_traps(name: str, path: Path) -> None:
    """The graph constructs each network is in the zoo for."""
    import onnx

    model = onnx.load(str(path))
    ops = Counter(node.op_type for node in model.graph.node)
    if name == "particlenet":
        constants = {i.name for i in model.graph.initializer} | {
            out for node in model.graph.node if node.op_type == "Constant" for out in node.output
        }
        topk = [node for node in model.graph.node if node.op_type == "TopK"]
        assert len(topk) == 2 and all(node.input[1] in constants for node in topk), "k must be a constant"
        assert ops["GatherElements"] >= 2
    if name == "interaction_network":
        assert ops["ScatterElements"] + ops["ScatterND"] >= 2
    if name == "deepjet":
        assert ops["LSTM"] == 3 and ops["ReverseSequence"] >= 1
