"""Numerical comparison of a candidate's outputs with reference outputs.

The elementwise rule is numpy.allclose's: |a - b| <= atol + rtol * |b| with b the
reference. NaN or Inf in the candidate where the reference is finite always fails.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hepdeploy.errors import DataError

# Conversion self-check tolerance (foundation issue): a freshly exported FP32 graph must
# reproduce its source to this.
CONVERSION_ATOL = 1e-5
CONVERSION_RTOL = 1e-4


@dataclass(frozen=True)
class Tolerances:
    atol: float
    rtol: float


@dataclass
class OutputComparison:
    """How one output of a candidate compares with the reference."""

    name: str
    atol: float
    rtol: float
    passed: bool
    max_abs_error: float = float("nan")
    mean_abs_error: float = float("nan")
    median_abs_error: float = float("nan")
    p99_abs_error: float = float("nan")
    max_rel_error: float = float("nan")
    fraction_out_of_tolerance: float = float("nan")
    cosine_similarity: float = float("nan")
    n_elements: int = 0
    problem: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        verdict = "ok" if self.passed else "FAIL"
        return (
            f"{self.name}: {verdict} max|d|={self.max_abs_error:.3g} p99|d|={self.p99_abs_error:.3g} "
            f"out-of-tol={self.fraction_out_of_tolerance:.3g} (atol={self.atol:g}, rtol={self.rtol:g})"
        )


def compare_arrays(name: str, candidate: np.ndarray, reference: np.ndarray, atol: float, rtol: float) -> OutputComparison:
    """Compare one output; shape/dtype-kind mismatches and non-finite values fail with a reason."""
    candidate = np.asarray(candidate)
    reference = np.asarray(reference)
    if candidate.shape != reference.shape:
        return OutputComparison(
            name, atol, rtol, False,
            problem=f"shape {list(candidate.shape)} differs from the reference's {list(reference.shape)}",
        )
    if _dtype_kind(candidate) != _dtype_kind(reference):
        return OutputComparison(
            name, atol, rtol, False, problem=f"dtype {candidate.dtype} differs from the reference's {reference.dtype}"
        )
    if reference.size == 0:
        return OutputComparison(name, atol, rtol, True, max_abs_error=0.0, mean_abs_error=0.0, median_abs_error=0.0,
                                p99_abs_error=0.0, max_rel_error=0.0, fraction_out_of_tolerance=0.0,
                                cosine_similarity=1.0, n_elements=0)
    a = candidate.astype(np.float64, copy=False)
    b = reference.astype(np.float64, copy=False)
    ref_finite = np.isfinite(b)
    bad_nonfinite = ~np.isfinite(a) & ref_finite
    diff = np.abs(a - b)
    # Where both are the same non-finite value (e.g. +inf and +inf) the element agrees.
    same_nonfinite = ~ref_finite & (a == b) | (np.isnan(a) & np.isnan(b))
    diff = np.where(same_nonfinite, 0.0, diff)
    within = (diff <= atol + rtol * np.abs(np.where(ref_finite, b, 0.0))) | same_nonfinite
    finite_diff = diff[np.isfinite(diff)]
    rel = finite_diff / np.maximum(np.abs(b[np.isfinite(diff)]), np.finfo(np.float64).tiny)
    result = OutputComparison(
        name=name,
        atol=atol,
        rtol=rtol,
        passed=bool(within.all()) and not bad_nonfinite.any(),
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        mean_abs_error=float(finite_diff.mean()) if finite_diff.size else float("nan"),
        median_abs_error=float(np.median(finite_diff)) if finite_diff.size else float("nan"),
        p99_abs_error=float(np.percentile(finite_diff, 99)) if finite_diff.size else float("nan"),
        max_rel_error=float(rel.max()) if rel.size else float("nan"),
        fraction_out_of_tolerance=float(1.0 - within.mean()),
        cosine_similarity=_cosine(a, b),
        n_elements=int(b.size),
    )
    if bad_nonfinite.any():
        result.problem = f"{int(bad_nonfinite.sum())} NaN/Inf values where the reference is finite"
    return result


def compare_outputs(
    candidate: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    default: Tolerances,
    per_output: dict[str, Tolerances] | None = None,
) -> list[OutputComparison]:
    """Compare every reference output; a missing or unexpected name raises DataError."""
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise DataError(f"candidate has no output named {', '.join(missing)} (it has {', '.join(sorted(candidate))})")
    per_output = per_output or {}
    results = []
    for name, ref in reference.items():
        tol = per_output.get(name, default)
        results.append(compare_arrays(name, candidate[name], ref, tol.atol, tol.rtol))
    return results


def _dtype_kind(array: np.ndarray) -> str:
    kind = array.dtype.kind
    return "f" if kind in "fc" else "i" if kind in "iu" else kind


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    mask = np.isfinite(a) & np.isfinite(b)
    x, y = a[mask].ravel(), b[mask].ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))
