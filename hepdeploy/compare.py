"""Numerical comparison of a candidate's tensors with reference tensors, and the tolerances.

Shared by the conversion self-check, the fp32 simplification check, validation and the
localiser. The elementwise rule is numpy.allclose's: |a - b| <= atol + rtol * |b| with b
the reference. NaN or Inf in the candidate where the reference is finite always fails.
:func:`sqnr_db` is the scale-free measure (signal-to-quantization-noise ratio) the
localiser ranks intermediate tensors by.
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
    # inf - inf and x / tiny are expected here and handled below; numpy need not warn.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _compare_arrays(name, candidate, reference, atol, rtol)


def _compare_arrays(name: str, candidate: np.ndarray, reference: np.ndarray, atol: float, rtol: float) -> OutputComparison:
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
    # Relative error means little where the reference is ~0 (softmax tails): the denominator
    # is floored at the reference dtype's machine epsilon, not at the smallest float.
    floor = float(np.finfo(reference.dtype).eps) if reference.dtype.kind == "f" else 1.0
    rel = finite_diff / np.maximum(np.abs(b[np.isfinite(diff)]), floor)
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


def sqnr_db(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-noise ratio of ``candidate`` against ``reference`` in dB: 10 log10(sum ref^2 / sum (ref-cand)^2).

    Scale-free, so a tensor of values near 1e3 and one near 1e-3 are judged alike (ONNX
    Runtime's QDQ debugger ranks tensors the same way). Identical tensors give +inf; a
    candidate with NaN/Inf where the reference is finite gives -inf.
    """
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(f"SQNR needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    finite = np.isfinite(b)
    if (~np.isfinite(a) & finite).any():
        return float("-inf")
    noise = float(np.sum((a[finite] - b[finite]) ** 2))
    signal = float(np.sum(b[finite] ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


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


# --------------------------------------------------------------------------------------
# Tolerances: defaults per precision (with the SQNR floor and the verdict policy), the spec's
# values, and command-line overrides.
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrecisionDefaults:
    """What a variant of one precision is held to unless the spec or the command line says otherwise."""

    tolerances: Tolerances  # elementwise atol/rtol against the reference outputs
    min_sqnr_db: float  # ``validate --localize``: a tensor below this SQNR has lost precision
    policy: str  # what must pass: numerical | physics | either | both (spec validation.policy overrides)


# THE one precision table. Tolerances: FP32 variants must reproduce their source like a fresh
# export does; FP16 keeps ~3 significant digits through a network; INT8 moves outputs by a few per
# cent. SQNR floors: FP32 graphs that only reorder sums stay above 100 dB; FP16 rounds at ~66 dB
# per operation and a few roundings accumulate to ~50 dB; INT8 tensors sit at 25-40 dB; below the
# floor, more than a trace of the signal is noise (1 % of its amplitude at 40 dB, 10 % at 20 dB).
# Policy: FP32 must agree numerically; FP16 and INT8 are judged by physics when labels exist.
PRECISION_TABLE: dict[str, PrecisionDefaults] = {
    "fp32": PrecisionDefaults(Tolerances(atol=CONVERSION_ATOL, rtol=CONVERSION_RTOL), min_sqnr_db=80.0,
                              policy="numerical"),
    "fp16": PrecisionDefaults(Tolerances(atol=5e-3, rtol=1e-2), min_sqnr_db=40.0, policy="physics"),
    "int8": PrecisionDefaults(Tolerances(atol=5e-2, rtol=1e-1), min_sqnr_db=20.0, policy="physics"),
}
PRECISIONS = tuple(PRECISION_TABLE)
# The table's columns, each read by one kind of reader (validation, the localiser, the verdict).
PRECISION_DEFAULTS: dict[str, Tolerances] = {key: entry.tolerances for key, entry in PRECISION_TABLE.items()}
MIN_SQNR_DB: dict[str, float] = {key: entry.min_sqnr_db for key, entry in PRECISION_TABLE.items()}
DEFAULT_POLICY: dict[str, str] = {key: entry.policy for key, entry in PRECISION_TABLE.items()}


def precision_key(precision: str | None) -> str:
    """Map an artifact precision (fp32|fp16|int8|mixed) onto a tolerance table key."""
    if precision is None:
        return "fp32"
    if precision == "mixed":  # INT8 layers with FP16 for the rest (int8-trt, high_precision_dtype: fp16):
        return "int8"  # judged as what its least precise layers are
    if precision not in PRECISION_TABLE:
        raise DataError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    return precision


@dataclass(frozen=True)
class ResolvedTolerance:
    """The tolerance one output is checked with, and where each number came from."""

    atol: float
    rtol: float
    atol_source: str
    rtol_source: str

    @property
    def tolerances(self) -> Tolerances:
        return Tolerances(self.atol, self.rtol)


@dataclass
class ToleranceOverrides:
    """User overrides of atol or rtol: one default value and/or values per output."""

    default: float | None = None
    per_output: dict[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.default is None and not self.per_output


def parse_tolerance_values(values: object, option: str = "--atol") -> ToleranceOverrides:
    """Parse ``['1e-5', 'softmax:1e-3']`` (also a float, a string or a {name: value} mapping).

    A bare number is the default for every output; ``NAME:VALUE`` sets one output (the
    last ``:`` splits, so TensorFlow names such as ``dense/Softmax:0:1e-3`` work).
    """
    result = ToleranceOverrides()
    if values is None:
        return result
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        result.default = _non_negative(float(values), option, str(values))
        return result
    if isinstance(values, dict):
        for name, value in values.items():
            result.per_output[str(name)] = _non_negative(_to_float(value, option, f"{name}:{value}"), option, str(value))
        return result
    if isinstance(values, str):
        values = [values]
    for item in values:  # type: ignore[union-attr]
        text = str(item).strip()
        if ":" in text:
            name, _, value_text = text.rpartition(":")
            if not name:
                raise DataError(f"{option} {text!r}: expected VALUE or NAME:VALUE")
            result.per_output[name] = _non_negative(_to_float(value_text, option, text), option, text)
        else:
            result.default = _non_negative(_to_float(text, option, text), option, text)
    return result


def _to_float(value: object, option: str, text: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise DataError(f"{option} {text!r}: {value!r} is not a number") from error


def _non_negative(value: float, option: str, text: str) -> float:
    if not np.isfinite(value) or value < 0:
        raise DataError(f"{option} {text!r}: a tolerance must be a finite number >= 0")
    return value


def resolve_tolerances(
    precision: str | None,
    output_names: list[str],
    spec_tolerances: object | None = None,
    atol: ToleranceOverrides | None = None,
    rtol: ToleranceOverrides | None = None,
) -> dict[str, ResolvedTolerance]:
    """Per-output tolerances: precision default < spec (``validation.tolerances``) < overrides.

    ``spec_tolerances`` is the spec's ``validation.tolerances`` mapping (precision ->
    PrecisionTolerance). Overrides naming an output that does not exist raise DataError,
    since a typo would otherwise silently check nothing.
    """
    key = precision_key(precision)
    base = PRECISION_DEFAULTS[key]
    atol = atol or ToleranceOverrides()
    rtol = rtol or ToleranceOverrides()
    for overrides, option in ((atol, "--atol"), (rtol, "--rtol")):
        unknown = sorted(set(overrides.per_output) - set(output_names))
        if unknown:
            raise DataError(
                f"{option} names unknown output(s) {', '.join(unknown)} (outputs: {', '.join(output_names)})"
            )
    spec_entry = None
    if spec_tolerances:
        spec_entry = spec_tolerances.get(key) if isinstance(spec_tolerances, dict) else None
    if spec_entry is not None:
        unknown = sorted(set(spec_entry.outputs) - set(output_names))
        if unknown:
            raise DataError(
                f"validation.tolerances.{key}.outputs names unknown output(s) {', '.join(unknown)} "
                f"(outputs: {', '.join(output_names)})"
            )

    resolved: dict[str, ResolvedTolerance] = {}
    for name in output_names:
        values = {"atol": (base.atol, f"default {key}"), "rtol": (base.rtol, f"default {key}")}
        if spec_entry is not None:
            for which in ("atol", "rtol"):
                if getattr(spec_entry, which) is not None:
                    values[which] = (float(getattr(spec_entry, which)), f"spec {key}")
                per = spec_entry.outputs.get(name)
                if per is not None and getattr(per, which) is not None:
                    values[which] = (float(getattr(per, which)), f"spec {key}.{name}")
        for which, overrides in (("atol", atol), ("rtol", rtol)):
            if overrides.default is not None:
                values[which] = (overrides.default, f"--{which}")
            if name in overrides.per_output:
                values[which] = (overrides.per_output[name], f"--{which} {name}")
        resolved[name] = ResolvedTolerance(values["atol"][0], values["rtol"][0], values["atol"][1], values["rtol"][1])
    return resolved


def compare_with_tolerances(
    candidate: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    tolerances: dict[str, ResolvedTolerance],
) -> list[OutputComparison]:
    """Compare every reference output with its resolved tolerance (see compare_outputs)."""
    first = next(iter(tolerances.values()), ResolvedTolerance(CONVERSION_ATOL, CONVERSION_RTOL, "", ""))
    per_output = {name: tol.tolerances for name, tol in tolerances.items()}
    return compare_outputs(candidate, reference, first.tolerances, per_output)
