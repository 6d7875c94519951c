"""Seeded sample inputs and the sizes at which models are traced and self-checked.

The one input sampler of every stage (conversion self-check and tracing, the optimize
checks and AutoCast's reference run without calibration data, the build's golden set
without reference data), so a spec is always checked on the same kind of data.
Sample inputs follow the spec: dtype, shape (named dimensions filled in from a size
table), value range (``low``/``high``; floats are N(0,1) and integers 0..10 without one)
and index tensors (``index_of``: integer values that index a named dimension, e.g. edge
indices into ``n_hits``), so a model sees data it can run on. Sizes are chosen so that
every dynamic dimension is seen at two values and none is ever traced at 1 (which can
bake it into the graph).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from hepdeploy.errors import SpecError
from hepdeploy.graph_bounds import bounded_range
from hepdeploy.spec import DimRange, default_dim_range

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec, TensorSpec

SELF_CHECK_BATCH = 64


def dynamic_dims(spec: ModelSpec) -> list[str]:
    """Names of the dynamic dimensions of the spec's inputs, in order of first appearance."""
    return _dims_of(spec.inputs)


def _dims_of(inputs: list[TensorSpec]) -> list[str]:
    seen: list[str] = []
    for tensor in inputs:
        for dim in tensor.dynamic_dims:
            if dim not in seen:
                seen.append(dim)
    return seen


def concrete_shape(tensor: TensorSpec, sizes: dict[str, int]) -> tuple[int, ...]:
    shape = []
    for dim in tensor.shape:
        if isinstance(dim, str):
            if dim not in sizes:
                raise SpecError(f"tensor {tensor.name!r}: no size given for dimension {dim!r}")
            shape.append(int(sizes[dim]))
        else:
            shape.append(int(dim))
    return tuple(shape)


def sample_inputs(inputs: list[TensorSpec], sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs shaped by ``sizes``; floats are N(0,1) unless low/high are set."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for tensor in inputs:
        shape = concrete_shape(tensor, sizes)
        dtype = np.dtype("float32" if tensor.dtype == "bfloat16" else tensor.dtype)
        if tensor.index_of is not None:
            if tensor.index_of not in sizes:
                raise SpecError(
                    f"tensor {tensor.name!r}: index_of names dimension {tensor.index_of!r}, which has no size"
                )
            upper = int(sizes[tensor.index_of])
            arrays[tensor.name] = rng.integers(0, upper, size=shape).astype(dtype)
        elif dtype == np.bool_:
            arrays[tensor.name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            low = int(tensor.low) if tensor.low is not None else max(0, int(info.min))
            high = int(tensor.high) if tensor.high is not None else min(int(info.max), low + 10)
            arrays[tensor.name] = rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
        else:
            if tensor.low is not None or tensor.high is not None:
                low = tensor.low if tensor.low is not None else (tensor.high or 0.0) - 1.0
                high = tensor.high if tensor.high is not None else low + 1.0
                values = rng.uniform(low, high, size=shape)
            else:
                values = rng.standard_normal(size=shape)
            arrays[tensor.name] = values.astype(dtype)
    return arrays


def dim_range(spec: ModelSpec | None, dim: str, bounds: Mapping[str, int] | None = None) -> DimRange:
    """The spec's sizes for ``dim``, or the defaults when there is no spec, raised to the lower bound the
    graph puts on the dim (``bounds``: dim -> smallest size it runs at, :mod:`hepdeploy.graph_bounds`)."""
    base = spec.dim_range(dim) if spec is not None else default_dim_range(dim)
    return bounded_range(base, (bounds or {}).get(dim))


def typical_sizes(inputs: list[TensorSpec], spec: ModelSpec | None, batch: int | None = None,
                  bounds: Mapping[str, int] | None = None) -> dict[str, int]:
    """Every dynamic dim of ``inputs`` at its typical (``opt``) size, at least the graph's bound;
    ``batch`` overrides the batch dim."""
    sizes = {}
    for dim in _dims_of(inputs):
        rng = dim_range(spec, dim, bounds)
        sizes[dim] = rng.opt if rng.opt is not None else rng.min
    if batch is not None and "batch" in sizes:
        sizes["batch"] = batch
    return sizes


def _bounds(spec: ModelSpec, dim: str, bounds: Mapping[str, int] | None = None) -> tuple[int, int, int]:
    rng = dim_range(spec, dim, bounds)
    opt = rng.opt if rng.opt is not None else rng.min
    top = rng.max if rng.max is not None else max(opt, rng.min)
    return rng.min, opt, top


def _two_values(spec: ModelSpec, dim: str, bounds: Mapping[str, int] | None = None) -> list[int]:
    """Two different sizes >= 2 inside the dimension's range (one when the range allows only one)."""
    low, opt, top = _bounds(spec, dim, bounds)
    low = max(2, low)
    if top < low:
        return [top]
    first = min(max(opt, low), top)
    for other in (min(top, 2 * first), max(low, first // 2), low, top):
        if other != first and low <= other <= top:
            return [first, other]
    return [first]


def self_check_sizes(spec: ModelSpec, bounds: Mapping[str, int] | None = None) -> list[dict[str, int]]:
    """Size combinations for the conversion self-check.

    Batch at 1 and at 64 (or the spec's max when smaller); every other dynamic dimension
    at two values >= 2 (and at least the bound the graph puts on it), so each dimension is
    exercised at two sizes.
    """
    dims = dynamic_dims(spec)
    batch_values = [1, SELF_CHECK_BATCH]
    if "batch" in dims:
        low, _, top = _bounds(spec, "batch")
        batch_values = sorted({max(low, 1), max(low, min(SELF_CHECK_BATCH, top))})
    others = {dim: _two_values(spec, dim, bounds) for dim in dims if dim != "batch"}
    combos: list[dict[str, int]] = []
    lengths = [len(v) for v in others.values()] + ([len(batch_values)] if "batch" in dims else [])
    for k in range(max(lengths, default=1)):
        combo = {dim: values[min(k, len(values) - 1)] for dim, values in others.items()}
        if "batch" in dims:
            combo["batch"] = batch_values[min(k, len(batch_values) - 1)]
        if combo not in combos:
            combos.append(combo)
    # One more mix: the large batch with the first value of the other dimensions, so a
    # batch-times-length interaction is not hidden by always changing both together.
    if "batch" in dims and others and len(batch_values) > 1:
        mix = {dim: values[0] for dim, values in others.items()}
        mix["batch"] = batch_values[-1]
        if mix not in combos:
            combos.append(mix)
    return combos


def trace_sizes(spec: ModelSpec) -> dict[str, int]:
    """Sizes to trace/export with: >= 2 on every dynamic dimension, distinct where the ranges allow.

    Distinct values keep a tracer from mistaking two dimensions for one.
    """
    sizes: dict[str, int] = {}
    used: set[int] = set()
    candidates = [2, 3, 5, 7, 11, 13, 17, 19, 23]
    for dim in dynamic_dims(spec):
        low, _, top = _bounds(spec, dim)
        low = max(2, low)
        choice = next((c for c in candidates if low <= c <= top and c not in used), None)
        if choice is None:
            choice = min(max(low, 2), max(top, 2))
        sizes[dim] = choice
        used.add(choice)
    return sizes
