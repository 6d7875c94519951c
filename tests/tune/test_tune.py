"""`hepdeploy tune` on small real networks: one whose damage sits in one known layer (raw, unnormalised
inputs into the first Gemm), one that passes fully quantized, a budget no mix can meet (the answer is
FP32), one too small for INT8 to be modelled faster than FP32, and the search's order on a harm that
does not fall as more is kept."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.cli import main
from hepdeploy.data import save_tensors
from hepdeploy.pipeline import BuildOptions, build
from hepdeploy.spec import load_spec
from hepdeploy.tune import TuneData, Tuner, TuneSettings, pareto_front, tune_variant
from hepdeploy.validate.reference import make_reference

LAYERS = ("first", "second", "third", "head")


def _network(path: Path, raw_inputs: bool, width: int = 128) -> Path:
    """8 features -> width -> width -> width -> 4 (wide enough for INT8 to be modelled faster than FP32 on a
    CPU). With ``raw_inputs`` four features come in units ~1000 times larger than the four that matter: one
    INT8 scale for the first Gemm's input cannot hold both."""
    rng = np.random.default_rng(7)
    first = rng.normal(0, 0.5, (8, width))
    if raw_inputs:
        first[:4] *= 1e-4  # the huge features barely matter, the small ones carry the answer
    scale = 2.5 / np.sqrt(width)
    weights = [first, rng.normal(0, scale, (width, width)), rng.normal(0, scale, (width, width)),
               rng.normal(0, scale, (width, 4))]
    nodes, initializers, previous = [], [], "x"
    for name, weight in zip(LAYERS, weights):
        initializers += [numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"),
                         numpy_helper.from_array(rng.normal(0, 0.1, weight.shape[1]).astype(np.float32), f"{name}_b")]
        nodes.append(helper.make_node("Gemm", [previous, f"{name}_w", f"{name}_b"], [f"{name}_out"], name=name))
        previous = f"{name}_out"
        if name != "head":
            nodes.append(helper.make_node("Relu", [previous], [f"{name}_relu"], name=f"{name}_relu"))
            previous = f"{name}_relu"
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["batch", 4])],
                              initializer=initializers)
    graph.output[0].name = previous
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def _inputs(n: int, seed: int, raw_inputs: bool) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 1, (n, 8))
    if raw_inputs:
        x[:, :4] *= 1000.0
    return x.astype(np.float32)


def _spec(tmp_path: Path, raw_inputs: bool, atol: float = 0.6, tune: bool = False, width: int = 128) -> Path:
    name = "raw" if raw_inputs else "normalised"
    _network(tmp_path / f"{name}.onnx", raw_inputs, width)
    save_tensors(tmp_path / "calibration.npz", {"x": _inputs(4096, 1, raw_inputs)})
    save_tensors(tmp_path / "reference.npz", {"x": _inputs(4000, 2, raw_inputs)})
    # The calibration method is fixed: the search then decides on layers only (max ranges are what the
    # raw inputs break; percentile ranges would clip the huge features instead).
    variant = "{name: int8-cpu, calibration_method: max" + (", tune: true}" if tune else "}")
    text = f"""name: {name}
source: {{framework: onnx, path: {name}.onnx}}
inputs: [{{name: x, dtype: float32, shape: [batch, 8]}}]
outputs: [{{name: head_out, dtype: float32, shape: [batch, 4]}}]
dims: {{batch: {{min: 1, opt: 512, max: 4096}}}}
data: {{calibration: calibration.npz, reference: reference.npz, calibration_samples: 4096}}
variants: [fp32, {variant}]
validation:
  policy: {{int8: numerical}}
  tolerances: {{int8: {{atol: {atol}, rtol: 0.05}}}}
triton: {{variant: fp32, max_batch_size: 4096}}
"""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _tuner(tmp_path: Path, spec_path: Path, **kwargs) -> Tuner:  # noqa: ANN003
    spec = load_spec(spec_path)
    reference = make_reference(spec, Path(spec.data.reference), spec=spec)
    calibration = {"x": np.load(Path(spec.data.calibration))["x"]}
    return Tuner(Path(spec.source.path), spec.variant("int8-cpu"), TuneData(reference, calibration),
                 spec=spec, work_dir=tmp_path / "work", settings=TuneSettings(**kwargs))


def test_the_damaged_layer_alone_is_kept_and_everything_else_is_quantized(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, raw_inputs=True)
    out = tmp_path / "raw_int8.onnx"
    result = CliRunner().invoke(main, ["tune", str(spec_path), "--variant", "int8-cpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "raw_int8-tune" / "tune.json").read_text())
    searched = [e for e in report["evaluations"] if e["phase"] == "search"]
    assert searched[0]["outcome"] == "FAIL" and searched[0]["kept"] == []
    # "head" is an edge layer int8 keeps in FP32 anyway: the search decides on the three others.
    assert [g["name"] for g in report["groups"]] == ["first", "second", "third"]
    assert report["groups"][0]["nodes"] == ["first", "first_relu"]  # a layer: the Gemm and its ReLU
    assert report["passed"] and report["best"]["kept"] == ["first"]
    # Chosen on one half of the reference set, confirmed on the other.
    assert report["confirmation"]["phase"] == "confirm" and report["confirmation"]["outcome"] == "PASS"
    assert report["confirmation"]["kept"] == ["first"] and "other half" in report["split"]
    assert len(searched) <= 2 * 3 + 10
    # Cheapest first: keeping the 8-input first layer is modelled cheaper than keeping a 128 x 128 one.
    assert searched[1]["kept"] == ["first"] and searched[1]["modelled_cost"] < 1.0
    # The written variant: the first Gemm reads the raw FP32 input, the second and third read Q/DQ tensors.
    model = onnx.load(str(out))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    gemm_inputs = {n.name: producer.get(n.input[0], "graph input") for n in model.graph.node if n.op_type == "Gemm"}
    assert gemm_inputs["first"] == "graph input"
    assert gemm_inputs["second"] == gemm_inputs["third"] == "DequantizeLinear"
    # Kept means FP32: the kept ReLU is still there, and the head (an edge) reads FP32, not a Q/DQ pair.
    assert producer[next(n.input[0] for n in model.graph.node if n.name == "second").replace(
        "_DequantizeLinear_Output", "")] in ("Relu", "QuantizeLinear")
    assert "first_relu" in {n.name for n in model.graph.node}
    assert gemm_inputs["head"] != "DequantizeLinear"
    sidecar = json.loads(out.with_suffix(".json").read_text())
    tune_step = sidecar["steps"][-1]
    assert tune_step["name"] == "tune" and tune_step["parameters"]["kept_high_precision"] == ["first"]
    assert tune_step["parameters"]["confirmation_verdict"].startswith("PASS")
    assert tune_step["parameters"]["spec_fragment"] == {
        "variants": [{"name": "int8-cpu", "keep_nodes": ["^first$"]}]}
    assert (tmp_path / "raw_int8-tune" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "keep_nodes" in (tmp_path / "raw_int8-tune" / "tune.yaml").read_text()
    # A rerun costs no evaluation: every point comes from the content-hash cache.
    again = CliRunner().invoke(main, ["tune", str(spec_path), "--variant", "int8-cpu", "-o", str(out)])
    assert again.exit_code == 0 and "(cached)" in again.output
    assert json.loads((tmp_path / "raw_int8-tune" / "tune.json").read_text())["evaluations"][0]["cached"]


def test_the_same_inputs_give_the_same_ranking_without_a_clock(tmp_path: Path) -> None:
    first = _tuner(tmp_path / "a", _spec(tmp_path, raw_inputs=True))
    second = _tuner(tmp_path / "b", _spec(tmp_path, raw_inputs=True))
    assert first.candidates() == second.candidates()
    costs = [relative for relative, _ in first.candidates()]
    assert costs == sorted(costs) and all(c < 1.0 for c in costs)
    # The wider layers cost more to keep than the 8-input first one.
    single = {next(iter(kept)): relative for relative, kept in first.candidates() if len(kept) == 1}
    assert single["first"] < single["second"] and single["first"] < single["third"]


def test_a_network_that_passes_fully_quantized_costs_one_evaluation(tmp_path: Path) -> None:
    tuner = _tuner(tmp_path, _spec(tmp_path, raw_inputs=False, atol=2.0))
    result = tuner.run()
    assert result.passed and result.best is not None and result.best.kept == []
    searched = [e for e in result.evaluations if e.phase == "search"]
    assert len(searched) == 1 and result.confirmation is not None and result.confirmation.passed
    assert result.best.speed is not None and result.best.speed > 0


def test_when_no_mix_passes_the_answer_is_fp32_and_exit_0(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, raw_inputs=True, atol=1e-9)
    out = tmp_path / "never.onnx"
    result = CliRunner().invoke(main, ["tune", str(spec_path), "--variant", "int8-cpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    last = [line for line in result.output.splitlines() if line.strip()][-1]
    assert last.startswith("answer: FP32: no mix of int8-cpu modelled faster than FP32 passes"), last
    assert "closest: keep [" in last and f"nothing was written to {out}" in last
    assert not out.exists()
    report = json.loads((tmp_path / "never-tune" / "tune.json").read_text())
    assert report["outcome"] == "FP32" and not report["passed"]
    json.loads((tmp_path / "never-tune" / "tune.json").read_text(), parse_constant=pytest.fail)  # strict JSON


def test_a_layer_too_small_for_int8_to_pay_is_answered_fp32_without_evaluating(tmp_path: Path) -> None:
    # 16 units wide at a batch of 512: on a CPU the Q/DQ nodes and the INT8 kernels' overhead cost more
    # than the multiply-accumulates they save, so no mix is modelled faster than FP32.
    tuner = _tuner(tmp_path, _spec(tmp_path, raw_inputs=True, width=16))
    result = tuner.run()
    assert result.answer_is_fp32 and result.candidates == 0 and result.evaluations == []
    assert result.reason.startswith("FP32: no mix of int8-cpu is modelled faster than FP32 on cpu")


def test_the_search_does_not_assume_harm_falls_as_more_is_kept(tmp_path: Path) -> None:
    # The outcome of every mix is set by a table (the validation is not what is tested here): the only
    # passing mix keeps "first" and "third", while keeping all three FAILs and so does every single layer.
    # A search that followed harm downhill (or bisected a ranking) would not find it; the search in
    # modelled-cost order does, and stops there.
    tuner = _tuner(tmp_path, _spec(tmp_path, raw_inputs=True))
    harms = {(): 3.0, ("first",): 2.0, ("second",): 3.5, ("third",): 2.5, ("first", "second"): 1.5,
             ("first", "third"): 0.8, ("second", "third"): 2.0, ("first", "second", "third"): 1.2}
    judged = []
    real = tuner.evaluate

    def table(kept, method):  # noqa: ANN001, ANN202
        key = tuple(sorted(kept, key=["first", "second", "third"].index))
        judged.append(key)
        evaluation = real(kept, method)  # a real candidate file (confirmed for real), its outcome from the table
        evaluation.harm = harms[key]
        evaluation.outcome = "PASS" if harms[key] < 1 else "FAIL"
        return evaluation

    tuner.evaluate = table  # type: ignore[method-assign]
    result = tuner.run()
    assert result.best is not None and result.best.kept == ["first", "third"]
    assert ("first", "second", "third") not in judged
    assert judged[-1] == ("first", "third")
    assert result.confirmation is not None and result.confirmation.kept == ["first", "third"]


def test_ctrl_c_writes_no_variant_and_keeps_the_points_so_far(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, raw_inputs=True))
    reference = make_reference(spec, Path(spec.data.reference), spec=spec)

    def interrupt(evaluation, done, budget):  # noqa: ANN001, ANN202 - Ctrl-C during the third evaluation's report
        if done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "interrupted.onnx"
    data = TuneData(reference, {"x": np.load(tmp_path / "calibration.npz")["x"]})
    result = tune_variant(Path(spec.source.path), spec.variant("int8-cpu"), data, out,
                          tmp_path / "report", spec=spec, settings=TuneSettings(on_evaluation=interrupt))
    assert result.stopped == "interrupted (Ctrl-C)" and len(result.evaluations) == 3
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert len(json.loads((tmp_path / "report" / "tune.json").read_text())["evaluations"]) == 3


def test_build_publishes_the_tuned_variant_when_the_plain_one_fails(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, raw_inputs=True, tune=True))
    report = build([spec], BuildOptions(out_dir=tmp_path / "out"))
    steps = {s.step: s for s in report.models[0].steps}
    assert steps["validate:int8-cpu"].status == "rejected" and "tuning follows" in steps["validate:int8-cpu"].reason
    assert steps["tune:int8-cpu"].status == "ok", steps["tune:int8-cpu"].reason
    assert steps["tune:int8-cpu"].details["kept_high_precision"] == ["first"]
    assert steps["tune:int8-cpu"].details["confirmation_verdict"] == "PASS"
    assert not report.failed
    tuned = tmp_path / "out" / "raw" / "variants" / "raw_int8_cpu_tuned.onnx"
    assert steps["tune:int8-cpu"].outputs == [tuned]


def test_pareto_front_keeps_the_points_nothing_beats() -> None:
    points = [(1.0, 0.5), (1.2, 0.9), (1.1, 0.4), (0.9, 0.3), (1.2, 2.0)]
    assert pareto_front(points) == [3, 2, 1]


@pytest.mark.parametrize("variant", ["fp32", "tensorrt"])
def test_only_variants_with_a_precision_to_tune_are_accepted(tmp_path: Path, variant: str) -> None:
    spec_path = _spec(tmp_path, raw_inputs=False)
    result = CliRunner().invoke(main, ["tune", str(spec_path), "--variant", variant, "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "Invalid value for '--variant'" in result.output
