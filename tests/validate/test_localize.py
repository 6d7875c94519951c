"""Localisation by SQNR on real (small) ONNX graphs built here with onnx.helper.

The candidates are copies of the FP32 graph with some initializers edited, so which
intermediate tensor loses how much precision is known in advance: a relative change r of
every element of a tensor gives an SQNR of -20 log10(r) dB (1e-6 -> 120 dB, 5 % -> 26 dB).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.compare import sqnr_db
from hepdeploy.errors import DataError
from hepdeploy.validate.localize import MIN_SQNR_DB, LocalizationReport, LocalizeCriterion, localize

N_FEATURES = 4


def _sqnr_of_relative_change(r: float) -> float:
    return -20.0 * math.log10(r)


# ----------------------------------------------------------------------------- builders


def _chain(stages: Sequence[tuple[str, str, np.ndarray | None]], n_in: int = N_FEATURES) -> onnx.ModelProto:
    """x[batch, n_in] -> a chain of nodes; stage = (node name, op, its second operand or None).

    Node ``name`` reads the previous tensor (and initializer ``w_<name>``) and writes ``t_<name>``;
    the last tensor is the graph output ``y``.
    """
    nodes, inits = [], []
    previous = "x"
    for i, (name, op, value) in enumerate(stages):
        out = "y" if i == len(stages) - 1 else f"t_{name}"
        inputs = [previous]
        if value is not None:
            inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), f"w_{name}"))
            inputs.append(f"w_{name}")
        nodes.append(helper.make_node(op, inputs, [out], name=name))
        previous = out
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def _edited(model: onnx.ModelProto, **changes: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` with initializers ``w_<name>`` replaced (same shape)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        name = init.name.removeprefix("w_")
        if name in changes:
            old = numpy_helper.to_array(init)
            new = np.asarray(changes.pop(name), dtype=np.float32)
            assert new.shape == old.shape
            init.CopyFrom(numpy_helper.from_array(new, init.name))
    assert not changes, f"no initializer for {sorted(changes)}"
    return copy


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == f"w_{name}")


def _inputs(n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).uniform(0.5, 1.5, (n, N_FEATURES)).astype(np.float32)}


def _row(report: LocalizationReport, node: str):
    return next(t for t in report.tensors if t.node == node)


@pytest.fixture(scope="module")
def two_scales() -> onnx.ModelProto:
    """An input normalisation to ~1e3 ("norm"), then layers producing ~1e-3 ("shrink", "bias")."""
    rng = np.random.default_rng(1)
    return _chain([
        ("norm", "Mul", 1000.0 * rng.uniform(0.9, 1.1, N_FEATURES)),
        ("shrink", "MatMul", 1e-6 * rng.uniform(0.5, 1.5, (N_FEATURES, 3))),
        ("bias", "Add", 1e-3 * rng.uniform(0.5, 1.5, 3)),
    ])


def _two_scale_candidate(model: onnx.ModelProto, early: float = 1e-6, late: float = 0.05) -> onnx.ModelProto:
    """The early large-scale tensor changed by ``early`` (relative), the later small one by ``late``."""
    return _edited(model, norm=_init(model, "norm") * (1 + early), shrink=_init(model, "shrink") * (1 + late))


# ----------------------------------------------------------------------------- sqnr_db


def test_sqnr_identical_is_infinite() -> None:
    ref = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
    assert sqnr_db(ref.copy(), ref) == math.inf


def test_sqnr_known_noise_gives_the_analytic_value() -> None:
    ones = np.ones((8, 3))
    assert sqnr_db(ones * 1.01, ones) == pytest.approx(40.0, abs=1e-6)
    assert sqnr_db(ones * 1.1, ones) == pytest.approx(20.0, abs=1e-6)
    # Noise power equal to signal power: 0 dB; more noise than signal: negative.
    assert sqnr_db(np.zeros(4), np.ones(4)) == pytest.approx(0.0, abs=1e-9)
    assert sqnr_db(np.full(4, 11.0), np.ones(4)) == pytest.approx(-20.0, abs=1e-9)


def test_sqnr_is_scale_invariant() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=1000)
    cand = ref + 1e-3 * rng.normal(size=1000)
    base = sqnr_db(cand, ref)
    assert 50.0 < base < 70.0
    for scale in (1e3, 1e-3):
        assert sqnr_db(cand * scale, ref * scale) == pytest.approx(base, abs=1e-9)


def test_sqnr_nan_or_inf_in_candidate_is_minus_infinity() -> None:
    ref = np.ones(6)
    for bad in (np.nan, np.inf):
        cand = ref.copy()
        cand[2] = bad
        assert sqnr_db(cand, ref) == -math.inf
    # A non-finite reference element that the candidate reproduces does not count.
    ref_inf, cand_inf = np.array([1.0, np.inf, 2.0]), np.array([1.0, np.inf, 2.0])
    assert sqnr_db(cand_inf, ref_inf) == math.inf


def test_sqnr_shape_mismatch_is_a_data_error() -> None:
    with pytest.raises(DataError, match="equal shapes"):
        sqnr_db(np.ones(3), np.ones(4))


# ----------------------------------------------------------------------------- localize


def test_sqnr_blames_the_real_loss_where_tolerance_blames_the_large_scale_tensor(two_scales) -> None:
    candidate = _two_scale_candidate(two_scales)
    # An absolute tolerance that suits the ~1e-3 outputs (as the first output's atol would).
    by_sqnr = localize(candidate, two_scales, _inputs(), criterion=LocalizeCriterion(rule="sqnr", atol=1e-5, rtol=0.0))
    by_tol = localize(candidate, two_scales, _inputs(), criterion=LocalizeCriterion(rule="tolerance", atol=1e-5, rtol=0.0))

    norm, shrink = _row(by_sqnr, "norm"), _row(by_sqnr, "shrink")
    # The large tensor moved by ~1e-3 absolute, far beyond atol, yet keeps ~120 dB ...
    assert norm.max_abs_error is not None and norm.max_abs_error > 100 * 1e-5
    assert norm.sqnr_db == pytest.approx(_sqnr_of_relative_change(1e-6), abs=2.0)
    assert not norm.exceeds
    # ... while the small one lost 5 % of its amplitude: ~26 dB.
    assert shrink.sqnr_db == pytest.approx(_sqnr_of_relative_change(0.05), abs=1.0)
    assert shrink.exceeds
    assert (by_sqnr.first_divergent_node, by_sqnr.first_divergent_op) == ("shrink", "MatMul")
    assert by_sqnr.first_divergent_tensor == "t_shrink"
    assert "shrink" in by_sqnr.summary() and "SQNR < 80 dB" in by_sqnr.summary()

    assert (by_tol.first_divergent_node, by_tol.first_divergent_op) == ("norm", "Mul")
    assert _row(by_tol, "norm").exceeds
    assert _row(by_tol, "norm").sqnr_db == pytest.approx(norm.sqnr_db)  # SQNR is reported under both rules
    assert "atol=1e-05" in by_tol.summary()


def test_the_precision_picks_the_sqnr_floor(two_scales) -> None:
    candidate = _two_scale_candidate(two_scales)  # "shrink" at ~26 dB
    for precision, blamed in (("fp32", "shrink"), ("fp16", "shrink"), ("int8", None)):
        report = localize(candidate, two_scales, _inputs(), precision=precision)
        assert report.min_sqnr_db == MIN_SQNR_DB[precision]
        assert report.first_divergent_node == blamed, (precision, report.summary())
    # An explicit floor overrides the precision's: above ~120 dB even "norm" has lost precision.
    strict = localize(candidate, two_scales, _inputs(), precision="int8", criterion=LocalizeCriterion(min_sqnr_db=130.0))
    assert strict.first_divergent_node == "norm"


@pytest.mark.parametrize("rule", ["sqnr", "tolerance"])
def test_identical_candidate_has_no_divergent_node(two_scales, rule: str) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(two_scales)
    report = localize(copy, two_scales, _inputs(), criterion=LocalizeCriterion(rule=rule))
    assert report.first_divergent_node is None and report.first_divergent_tensor is None
    assert report.largest_drop_node is None and report.largest_drop_db in (None, 0.0)
    assert [t.node for t in report.tensors] == ["norm", "shrink", "bias"]
    assert all(t.sqnr_db == math.inf and not t.exceeds and t.max_abs_error == 0.0 for t in report.tensors)
    assert report.unmatched == 0
    assert report.summary().startswith("no intermediate tensor exceeds")


def test_saved_models_are_read_from_paths(two_scales, tmp_path) -> None:
    fp32, cand = tmp_path / "fp32.onnx", tmp_path / "cand.onnx"
    onnx.save(two_scales, str(fp32))
    onnx.save(_two_scale_candidate(two_scales), str(cand))
    report = localize(cand, fp32, _inputs(n=300), max_samples=50)
    assert report.first_divergent_node == "shrink"
    assert report.n_samples == 50 and report.candidate == str(cand) and report.fp32_model == str(fp32)


def _zeros_model() -> onnx.ModelProto:
    """x -> "zero" (x * 0: an all-zero tensor) -> "shift" (+1) -> y."""
    return _chain([("zero", "Mul", np.zeros(N_FEATURES)), ("shift", "Add", np.ones(N_FEATURES))])


@pytest.mark.parametrize("rule", ["sqnr", "tolerance"])
def test_an_all_zero_fp32_tensor_is_judged_by_atol(rule: str) -> None:
    model = _zeros_model()
    tiny = _edited(model, zero=np.full(N_FEATURES, 1e-9))  # |d| ~ 1e-9 <= atol
    report = localize(tiny, model, _inputs(), criterion=LocalizeCriterion(rule=rule, atol=1e-5, rtol=0.0))
    zero = _row(report, "zero")
    # sqnr_db itself would say -inf here (no signal, some noise): localize must not.
    assert sqnr_db(np.full(4, 1e-9), np.zeros(4)) == -math.inf
    assert zero.sqnr_db is None and not zero.exceeds and "atol/rtol" in zero.note
    assert report.first_divergent_node is None, report.summary()

    big = _edited(model, zero=np.full(N_FEATURES, 1e-2))  # |d| ~ 1e-2 > atol
    report = localize(big, model, _inputs(), criterion=LocalizeCriterion(rule=rule, atol=1e-5, rtol=0.0))
    assert _row(report, "zero").sqnr_db is None and _row(report, "zero").exceeds
    assert report.first_divergent_node == "zero"


def test_a_zero_tensor_with_nans_the_candidate_reproduces_is_judged_by_atol() -> None:
    model = _zeros_model()
    tiny = _edited(model, zero=np.full(N_FEATURES, 1e-9))
    inputs = _inputs()
    inputs["x"][0, 0] = np.nan  # the FP32 "zero" tensor is NaN there and 0 elsewhere; so is ~the candidate's
    report = localize(tiny, model, inputs, criterion=LocalizeCriterion(atol=1e-5, rtol=0.0))
    zero = _row(report, "zero")
    assert zero.sqnr_db is None and not zero.exceeds, zero
    assert report.first_divergent_node is None, report.summary()


def test_largest_drop_names_the_node_where_sqnr_falls_most() -> None:
    rng = np.random.default_rng(2)
    model = _chain([
        ("early", "Mul", rng.uniform(0.5, 1.5, N_FEATURES)),   # 1e-6 relative: ~120 dB, from exact: -80 dB
        ("loss", "Mul", rng.uniform(0.5, 1.5, N_FEATURES)),    # 20 % relative: ~14 dB, -106 dB
        ("relu", "Relu", None),                                # passes the SQNR on: ~0 dB
        ("worse", "Mul", rng.uniform(0.5, 1.5, N_FEATURES)),   # doubled: the lowest SQNR (< 0 dB), -17 dB
    ])
    candidate = _edited(model, early=_init(model, "early") * (1 + 1e-6), loss=_init(model, "loss") * 1.2,
                        worse=_init(model, "worse") * 2.0)
    report = localize(candidate, model, _inputs(), criterion=LocalizeCriterion(min_sqnr_db=130.0))
    sqnr = {t.node: t.sqnr_db for t in report.tensors}
    assert sqnr["early"] == pytest.approx(120.0, abs=2.0)
    assert sqnr["loss"] == pytest.approx(_sqnr_of_relative_change(0.2), abs=1.0)
    assert sqnr["relu"] == pytest.approx(sqnr["loss"], abs=1e-6)
    assert min(sqnr, key=sqnr.get) == "worse"
    # The first tensor below the (strict) floor is "early"; the largest fall is at "loss".
    assert report.first_divergent_node == "early"
    assert report.largest_drop_node == "loss"
    assert report.largest_drop_db == pytest.approx(sqnr["early"] - sqnr["loss"], abs=0.01)
    assert "largest SQNR drop at loss" in report.summary()


def _nan_candidate(model: onnx.ModelProto) -> onnx.ModelProto:
    weights = _init(model, "shrink").copy()
    weights[0, 0] = np.nan  # column 0 of "shrink" (and of "bias") turns NaN; "norm" stays exact
    return _edited(model, shrink=weights)


def test_nan_in_the_candidate_is_divergent_under_both_rules(two_scales) -> None:
    for rule in ("sqnr", "tolerance"):
        report = localize(_nan_candidate(two_scales), two_scales, _inputs(), criterion=LocalizeCriterion(rule=rule))
        assert report.first_divergent_node == "shrink", rule
        assert _row(report, "shrink").sqnr_db == -math.inf
        assert "NaN" in _row(report, "shrink").note
        assert report.summary()  # formats with an infinite SQNR
    assert report.largest_drop_node == "shrink"


def test_report_to_dict_is_strict_json_with_infinite_sqnrs(two_scales) -> None:
    report = localize(_nan_candidate(two_scales), two_scales, _inputs())
    assert {t.sqnr_db for t in report.tensors} >= {math.inf, -math.inf}
    text = json.dumps(report.to_dict(), allow_nan=False)  # JSON has no NaN/Infinity
    loaded = json.loads(text)
    by_node = {t["node"]: t for t in loaded["tensors"]}
    assert by_node["norm"]["sqnr_db"] == "inf" and by_node["shrink"]["sqnr_db"] == "-inf"
    assert loaded["first_divergent_node"] == "shrink" and loaded["rule"] == "sqnr"
    assert loaded["min_sqnr_db"] == MIN_SQNR_DB["fp32"]
    # Finite values go through as numbers.
    finite = localize(_two_scale_candidate(two_scales), two_scales, _inputs())
    loaded = json.loads(json.dumps(finite.to_dict(), allow_nan=False))
    shrink = next(t for t in loaded["tensors"] if t["node"] == "shrink")
    assert isinstance(shrink["sqnr_db"], float) and isinstance(loaded["largest_drop_db"], float)


def test_an_activation_wrapped_in_qdq_is_compared_as_the_dequantized_tensor(two_scales) -> None:
    """A quantizer keeps node output names and puts Q/DQ after them: the DQ output is the value."""
    candidate = onnx.ModelProto()
    candidate.CopyFrom(two_scales)
    graph = candidate.graph
    shrink = next(n for n in graph.node if n.name == "shrink")
    shrink.input[0] = "t_norm_dq"
    # Values ~1e3 in uint8 steps of 50: ~35-40 dB, below the FP32 floor.
    graph.initializer.extend([numpy_helper.from_array(np.array(50.0, np.float32), "q_scale"),
                              numpy_helper.from_array(np.array(0, np.uint8), "q_zero")])
    index = list(graph.node).index(shrink)
    graph.node.insert(index, helper.make_node("DequantizeLinear", ["t_norm_q", "q_scale", "q_zero"], ["t_norm_dq"],
                                              name="norm_dq"))
    graph.node.insert(index, helper.make_node("QuantizeLinear", ["t_norm", "q_scale", "q_zero"], ["t_norm_q"],
                                              name="norm_q"))
    onnx.checker.check_model(candidate)
    report = localize(candidate, two_scales, _inputs())
    norm = _row(report, "norm")
    assert norm.candidate_tensor == "t_norm_dq"
    assert 15.0 < norm.sqnr_db < 45.0 and norm.exceeds
    assert report.first_divergent_node == "norm"


def test_an_unknown_rule_is_a_data_error(two_scales) -> None:
    with pytest.raises(DataError, match="unknown localization rule"):
        localize(two_scales, two_scales, _inputs(), criterion=LocalizeCriterion(rule="atol"))  # type: ignore[arg-type]


def test_a_real_loss_outranks_the_first_rounding_in_a_graph_that_rounds_everywhere() -> None:
    """FP16-like: every node rounds a little (the first one from exact to ~60 dB), one node loses 10 %.
    The largest drop is the real loss, not the first rounding."""
    rng = np.random.default_rng(3)
    model = _chain([
        ("first", "Mul", rng.uniform(0.5, 1.5, N_FEATURES)),   # 1e-3 relative: exact -> ~60 dB
        ("second", "Mul", rng.uniform(0.5, 1.5, N_FEATURES)),  # ~60 dB stays ~60 dB
        ("loss", "Mul", rng.uniform(0.5, 1.5, N_FEATURES)),    # 10 %: ~60 -> ~20 dB
    ])
    candidate = _edited(model, first=_init(model, "first") * (1 + 1e-3), loss=_init(model, "loss") * 1.1)
    report = localize(candidate, model, _inputs(), precision="fp16")
    assert report.first_divergent_node == "loss"  # below fp16's 40 dB floor
    assert report.largest_drop_node == "loss", report.summary()
