"""Numerical comparison: error figures, the allclose rule, non-finite values, tolerance resolution."""
from __future__ import annotations

import numpy as np
import pytest

from hepdeploy.compare import (
    PRECISION_DEFAULTS,
    Tolerances,
    compare_arrays,
    compare_outputs,
    parse_tolerance_values,
    precision_key,
    resolve_tolerances,
)
from hepdeploy.errors import DataError
from hepdeploy.spec import PrecisionTolerance, Tolerance


def test_error_figures_match_numpy() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 4)).astype(np.float32)
    cand = ref + rng.normal(scale=1e-3, size=ref.shape).astype(np.float32)
    result = compare_arrays("y", cand, ref, atol=1e-3, rtol=1e-3)
    diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64))
    assert result.max_abs_error == pytest.approx(diff.max())
    assert result.mean_abs_error == pytest.approx(diff.mean())
    assert result.median_abs_error == pytest.approx(np.median(diff))
    assert result.p99_abs_error == pytest.approx(np.percentile(diff, 99))
    expected_out = ~np.isclose(cand, ref, atol=1e-3, rtol=1e-3)
    assert result.fraction_out_of_tolerance == pytest.approx(expected_out.mean())
    assert result.passed is bool(np.allclose(cand, ref, atol=1e-3, rtol=1e-3))
    assert 0.999 < result.cosine_similarity <= 1.0


def test_nan_in_candidate_fails_even_with_huge_tolerance() -> None:
    ref = np.ones((10, 3), np.float32)
    cand = ref.copy()
    cand[4, 1] = np.nan
    result = compare_arrays("prob", cand, ref, atol=1e9, rtol=1e9)
    assert not result.passed
    assert "1 NaN/Inf" in result.problem


def test_same_infinities_agree() -> None:
    ref = np.array([1.0, np.inf, -np.inf])
    assert compare_arrays("y", ref.copy(), ref, 1e-6, 0).passed


def test_shape_and_dtype_mismatch_explained() -> None:
    shape = compare_arrays("y", np.zeros((4, 2)), np.zeros((4, 3)), 1, 1)
    assert not shape.passed and "shape [4, 2] differs from the reference's [4, 3]" in shape.problem
    dtype = compare_arrays("y", np.zeros(4, np.int64), np.zeros(4, np.float32), 1, 1)
    assert not dtype.passed and "dtype int64" in dtype.problem


def test_missing_output_is_bad_input() -> None:
    with pytest.raises(DataError, match="no output named b"):
        compare_outputs({"a": np.zeros(2)}, {"a": np.zeros(2), "b": np.zeros(2)}, Tolerances(1, 1))


def test_parse_tolerance_values() -> None:
    parsed = parse_tolerance_values(["1e-5", "softmax:1e-3", "dense/Softmax:0:2e-2"])
    assert parsed.default == 1e-5
    assert parsed.per_output == {"softmax": 1e-3, "dense/Softmax:0": 2e-2}
    assert parse_tolerance_values(0.5).default == 0.5
    assert parse_tolerance_values({"a": 0.1}).per_output == {"a": 0.1}
    for bad in (["x:abc"], ["-1"], ["nan"], [":1e-3"]):
        with pytest.raises(DataError):
            parse_tolerance_values(bad)


def test_resolution_order_default_spec_override() -> None:
    spec_tolerances = {"fp16": PrecisionTolerance(atol=1e-2, outputs={"energy": Tolerance(rtol=0.2)})}
    resolved = resolve_tolerances("fp16", ["prob", "energy"], spec_tolerances,
                                  parse_tolerance_values(["prob:3e-3"]), parse_tolerance_values(None))
    assert (resolved["prob"].atol, resolved["prob"].atol_source) == (3e-3, "--atol prob")
    assert (resolved["prob"].rtol, resolved["prob"].rtol_source) == (PRECISION_DEFAULTS["fp16"].rtol, "default fp16")
    assert (resolved["energy"].atol, resolved["energy"].atol_source) == (1e-2, "spec fp16")
    assert (resolved["energy"].rtol, resolved["energy"].rtol_source) == (0.2, "spec fp16.energy")
    # The spec's fp16 block does not apply to an int8 candidate.
    int8 = resolve_tolerances("int8", ["prob"], spec_tolerances)
    assert int8["prob"].atol == PRECISION_DEFAULTS["int8"].atol


def test_unknown_output_in_override_is_refused() -> None:
    with pytest.raises(DataError, match="unknown output"):
        resolve_tolerances("fp32", ["prob"], None, parse_tolerance_values(["porb:1e-3"]))


def test_precision_keys() -> None:
    assert precision_key("mixed") == "int8"  # INT8 layers with FP16 elsewhere: judged as INT8
    assert precision_key(None) == "fp32"
    assert set(PRECISION_DEFAULTS) == {"fp32", "fp16", "int8"}
    assert PRECISION_DEFAULTS["fp32"].atol < PRECISION_DEFAULTS["fp16"].atol < PRECISION_DEFAULTS["int8"].atol
    with pytest.raises(DataError):
        precision_key("int4")


def test_relative_error_is_not_blown_up_by_a_near_zero_reference() -> None:
    from hepdeploy.compare import compare_arrays

    reference = np.array([1e-300, 0.5], dtype=np.float64).astype(np.float32)  # 1e-300 underflows to 0
    candidate = np.array([1e-8, 0.5], dtype=np.float32)
    result = compare_arrays("softmax", candidate, reference, atol=1e-5, rtol=1e-4)
    assert result.passed
    # |d| / max(|b|, eps(float32)) = 1e-8 / 1.19e-7
    assert result.max_rel_error == pytest.approx(1e-8 / np.finfo(np.float32).eps, rel=1e-3)
