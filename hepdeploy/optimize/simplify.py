"""The fp32 variant: constant folding and graph clean-up, outputs unchanged.

Tool choice: **onnxslim**, not onnxsim. onnxslim is pure Python (no C++ build, so it
installs wherever onnx does, Python 3.10-3.13), is maintained against current onnx
releases (1.23 here) and opsets, folds constants and removes dead/identity nodes
without changing graph I/O. onnxsim needs a compiled wheel per Python/onnx version and
lags new onnx releases; its extra value (shape-based folding via onnxruntime) is what
ONNX Runtime's own offline pass below gives us anyway.

After onnxslim, ONNX Runtime's offline graph optimisation runs at the *basic* level only:
those rewrites (constant folding, Conv+BatchNorm/Add/Mul fusion, redundant node
elimination) are provider-independent and emit standard ONNX ops. Extended/all levels
emit CPU-specific fused ops (``com.microsoft``) and are never used. The result is
refused (and the onnxslim-only model kept) if it holds any non-standard op domain.

Either way the outputs are compared with the input model's on sample inputs
(``hepdeploy.compare``, conversion tolerance); a pass that changes them is
dropped, and if even onnxslim alone changes them the step fails.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.backend.onnxrt import optimize_offline, run_once
from hepdeploy.compare import (
    CONVERSION_ATOL,
    CONVERSION_RTOL,
    Tolerances,
    compare_outputs,
)
from hepdeploy.environment import onnxruntime_version, package_version
from hepdeploy.errors import ConversionError, HepDeployError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("hepdeploy.optimize.simplify")

STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class SimplifyResult:
    model: onnx.ModelProto
    parameters: dict[str, Any]


def simplify_model(model: onnx.ModelProto, sample: dict[str, np.ndarray], use_ort: bool = True) -> SimplifyResult:
    """onnxslim, then ORT basic-level offline optimisation; each kept only if outputs agree."""
    import onnx
    import onnxslim

    reference = run_once(model, sample)
    nodes_before = len(model.graph.node)
    try:
        slimmed = onnxslim.slim(_copy(model), no_shape_infer=False)
    except Exception as error:  # onnxslim raises plain exceptions on graphs it cannot fold
        log.warning("onnxslim failed (%s: %s); keeping the graph as is", type(error).__name__, error)
        slimmed = _copy(model)
    _restore_io_names(model, slimmed)
    slim_error = _max_error(slimmed, sample, reference)
    if slim_error is None:
        raise ConversionError("simplify: onnxslim changed the model's outputs beyond the conversion tolerance")
    result, passes, errors = slimmed, ["onnxslim"], {"onnxslim": slim_error}
    if use_ort:
        optimized = _ort_basic(slimmed)
        if optimized is not None:
            ort_error = _max_error(optimized, sample, reference)
            if ort_error is None:
                log.warning("ONNX Runtime basic optimisation changed the outputs; keeping the onnxslim graph")
            else:
                result, errors["onnxruntime_basic"] = optimized, ort_error
                passes.append("onnxruntime_basic")
    onnx.checker.check_model(result)
    parameters = {
        "passes": passes,
        "nodes_before": nodes_before,
        "nodes_after": len(result.graph.node),
        "max_abs_error": max(errors.values()),
        "checked_on_samples": int(next(iter(sample.values())).shape[0]) if sample else 0,
        "onnxslim_version": package_version("onnxslim"),
        "onnxruntime_version": onnxruntime_version(),
    }
    return SimplifyResult(result, parameters)


def _ort_basic(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ORT's basic-level rewrite saved back to ONNX, or None where it would not stay portable."""
    try:
        optimized = optimize_offline(model)
    except HepDeployError as error:  # ORT refuses some graphs it can still run unoptimized
        log.warning("ONNX Runtime offline optimisation failed (%s); skipped", error)
        return None
    domains = {node.domain for node in optimized.graph.node} - set(STANDARD_DOMAINS)
    if domains:
        log.info("ONNX Runtime basic optimisation introduced %s ops; skipped", ", ".join(sorted(domains)))
        return None
    # ORT writes its own producer; keep the exporter's so provenance stays readable.
    optimized.producer_name, optimized.producer_version = model.producer_name, model.producer_version
    _restore_io_names(model, optimized)
    return optimized


def _restore_io_names(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> None:
    """Keep named dynamic dims (``batch``) that a rewrite may have replaced."""
    for before_list, after_list in ((original.graph.input, rewritten.graph.input),
                                    (original.graph.output, rewritten.graph.output)):
        after = {v.name: v for v in after_list}
        for value in before_list:
            if value.name in after:
                after[value.name].type.CopyFrom(value.type)


def _max_error(model: onnx.ModelProto, sample: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float | None:
    """Largest absolute output difference, or None if any output is outside the tolerance."""
    try:
        outputs = run_once(model, sample)
    except HepDeployError as error:  # a rewrite that breaks the model counts as a change
        log.warning("rewritten model does not run (%s)", error)
        return None
    comparisons = compare_outputs(outputs, reference, Tolerances(CONVERSION_ATOL, CONVERSION_RTOL))
    if not all(c.passed for c in comparisons):
        log.debug("; ".join(c.summary() for c in comparisons))
        return None
    return max((c.max_abs_error for c in comparisons), default=0.0)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
