"""Serving shapes from the data: how many entries each event has along every dynamic non-batch dim, the
min/opt/max that lets at least 99.9 % of events through, and K bucketed TensorRT profiles.

Counts come from ROOT jagged branches through the spec's mapping (particles per jet before padding), or from
padded ``.npz`` arrays (the rows up to the last real one: a mask input's ones, else rows not all zero), or a
graph of concatenated events with an ``event`` array (edges per event, and the hits they join).
``plan_dim`` turns one dim's counts into a :class:`DimPlan` whose ``why`` says where each number comes from
and what happens to the events beyond ``max``: truncated, as weaver's ``max_length`` does, when the spec
reads the data with a length; refused otherwise. ``bucket_profiles`` cuts the counts into at most K profiles
by exact dynamic programming (expected padding per event + K times a per-profile cost). Nothing here draws
random numbers: the same counts give the same plans.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hepdeploy.data import load_tensors
from hepdeploy.errors import DataError, SpecError
from hepdeploy.graph_bounds import DimBound, graph_dim_bounds
from hepdeploy.ntuple import (
    is_root_source,
    load_preprocess,
    mask_inputs,
    open_root,
    plan_inputs,
    preprocess_file,
    read_counts,
)
from hepdeploy.spec import DimRange, ModelSpec, TensorSpec, infer_batch_axis
from hepdeploy.weaver import PreprocessConfig

BeyondPolicy = Literal["truncate", "refuse"]
COVERAGE = 0.999
# TensorRT picks its fastest kernels for sizes that are multiples of 8 (tensor cores).
ROUND_TO = 8


@dataclass(frozen=True)
class DimPlan:
    """One dynamic dim's TensorRT range from the data, and why."""

    dim: str
    min: int
    opt: int
    max: int
    coverage: float  # fraction of events whose count is at most max
    beyond_policy: BeyondPolicy
    beyond_fraction: float  # fraction of events with more than max entries
    why: str

    def dim_range(self) -> DimRange:
        return DimRange(min=self.min, opt=self.opt, max=self.max)

    def as_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "min": self.min, "opt": self.opt, "max": self.max, "coverage": self.coverage,
                "beyond_policy": self.beyond_policy, "beyond_fraction": self.beyond_fraction, "why": self.why}


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile: per dim min/opt/max, and the events of the data it serves."""

    ranges: dict[str, DimRange]
    events: int
    padding_waste: float  # padded entries / all entries of its events, each padded to the profile's max

    def as_dict(self) -> dict[str, Any]:
        return {"dims": {d: r.model_dump() for d, r in self.ranges.items()}, "events": self.events,
                "padding_waste": self.padding_waste}

    def line(self) -> str:
        dims = ", ".join(f"{d} {r.min}/{r.opt}/{r.max}" for d, r in self.ranges.items())
        return f"{dims}: {self.events} events, {self.padding_waste:.1%} padding"


# --------------------------------------------------------------------------- counts from the data


def dim_multiplicities(spec: ModelSpec, data: Path) -> dict[str, np.ndarray]:
    """Per event, the entries along each dynamic non-batch dim of the model's inputs, by dim name: ROOT
    jagged counts through the spec's mapping, or the used rows of padded ``.npz`` arrays."""
    preprocess = _preprocess(spec)
    if is_root_source(data):
        return _root_counts(spec, data, preprocess)
    return _padded_counts(spec, load_tensors(Path(data)), preprocess, str(data))


def _preprocess(spec: ModelSpec) -> PreprocessConfig | None:
    json_path = preprocess_file(spec.data)
    return load_preprocess(json_path) if json_path is not None else None


def _particle_dim(tensor: TensorSpec, layout: str) -> str | None:
    """The name of a [events, C, n] (channels_last: [events, n, C]) tensor's particle axis, if dynamic."""
    if len(tensor.shape) != 3:
        return None
    dim = tensor.shape[2 if layout == "channels_first" else 1]
    return dim if isinstance(dim, str) else None


def _merge(into: dict[str, np.ndarray], dim: str, counts: np.ndarray) -> None:
    """Tensors sharing a dim (points, features) must hold it: the larger count per event."""
    into[dim] = np.maximum(into[dim], counts) if dim in into else counts


def _root_counts(spec: ModelSpec, data: Path, preprocess: PreprocessConfig | None) -> dict[str, np.ndarray]:
    plans = plan_inputs(list(spec.inputs), spec.data, preprocess)
    counts = read_counts(open_root(data, spec.data.root_tree), plans)
    tensors = {t.name: t for t in spec.inputs}
    found: dict[str, np.ndarray] = {}
    for plan in plans:
        dim = _particle_dim(tensors[plan.name], plan.layout) if plan.name in counts else None
        if dim is not None:
            _merge(found, dim, counts[plan.name])
    return found


def _padded_counts(spec: ModelSpec, arrays: Mapping[str, np.ndarray], preprocess: PreprocessConfig | None,
                   where: str) -> dict[str, np.ndarray]:
    """Used rows per event of padded arrays; a mask input's count wins over the other tensors' of its dim."""
    batched = infer_batch_axis([*spec.inputs, *spec.outputs])[0]
    masks = set(mask_inputs(spec.data, preprocess)) | {t.name for t in spec.inputs if "mask" in t.name.lower()}
    missing = [t.name for t in spec.inputs if t.name not in arrays]
    if missing:
        raise DataError(f"{where}: no array {', '.join(missing)} (it has {', '.join(sorted(arrays))})")
    if not batched and "event" in arrays:
        return _graph_event_counts(spec, arrays, np.asarray(arrays["event"]).reshape(-1))
    from_masks: dict[str, np.ndarray] = {}
    from_rows: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        events, padded = _events_axis(np.asarray(arrays[tensor.name]), tensor, batched, where)
        for position, dim in enumerate(tensor.shape):
            if not isinstance(dim, str) or (batched and position == 0):
                continue
            axis = position if batched else position + 1
            counts = _used_rows(events, axis) if padded else np.full(len(events), events.shape[axis], np.int64)
            _merge(from_masks if tensor.name in masks else from_rows, dim, counts)
    return {**from_rows, **from_masks}


def _graph_event_counts(spec: ModelSpec, arrays: Mapping[str, np.ndarray], event: np.ndarray) -> dict[str, np.ndarray]:
    """Events concatenated into one graph, ``event`` naming each row's event (the interaction network's edges):
    per event, the rows of every dim as long as ``event``, and of a dim another input's values index
    (``index_of``: hits that edges join) the block of entries its rows use (each event's hits stored
    together) or, where blocks overlap, the distinct entries."""
    _, rows_event = np.unique(event, return_inverse=True)
    events = int(rows_event.max()) + 1
    found: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        for position, dim in enumerate(tensor.shape):
            if isinstance(dim, str) and np.asarray(arrays[tensor.name]).shape[position] == len(event):
                found[dim] = np.bincount(rows_event, minlength=events).astype(np.int64)
    for tensor in spec.inputs:
        values = np.asarray(arrays[tensor.name])
        if tensor.index_of is None or tensor.index_of in found or len(event) not in values.shape:
            continue
        axis = values.shape.index(len(event))
        flat = np.moveaxis(values, axis, -1).reshape(-1, len(event))
        owner = np.broadcast_to(rows_event, flat.shape).reshape(-1)
        low = np.full(events, np.iinfo(np.int64).max)
        high = np.full(events, -1)
        np.minimum.at(low, owner, flat.reshape(-1))
        np.maximum.at(high, owner, flat.reshape(-1))
        spans = np.where(high >= 0, high - low + 1, 0)
        order = np.argsort(low)
        if np.all(low[order][1:] > high[order][:-1]):
            found[tensor.index_of] = spans.astype(np.int64)
        else:
            pairs = np.unique(np.stack([owner, flat.reshape(-1)]), axis=1)
            found[tensor.index_of] = np.bincount(pairs[0], minlength=events).astype(np.int64)
    return found


def _events_axis(array: np.ndarray, tensor: TensorSpec, batched: bool, where: str) -> tuple[np.ndarray, bool]:
    """The array with one event per row of its first axis, and whether events are padded to a common size
    (a batched model's rows, or graphs stacked on a new axis) rather than one whole graph."""
    rank = len(tensor.shape)
    if batched and array.ndim == rank:
        return array, True
    if not batched and array.ndim == rank:
        return array[np.newaxis], False
    if not batched and array.ndim == rank + 1:
        return array, True
    raise DataError(f"{where}: {tensor.name} has {array.ndim} axes; the model's input has {rank}")


def _used_rows(events: np.ndarray, axis: int) -> np.ndarray:
    """Per event, the rows along ``axis`` up to the last one that is not all zero (padding is zeros)."""
    real = events != 0
    others = tuple(a for a in range(1, events.ndim) if a != axis)
    rows = real.any(axis=others) if others else real  # [events, n]
    last = rows.shape[1] - np.argmax(rows[:, ::-1], axis=1)
    return np.where(rows.any(axis=1), last, 0).astype(np.int64)


# --------------------------------------------------------------------------- one dim's plan


def plan_dim(counts: np.ndarray | Sequence[int], coverage: float = COVERAGE, policy: BeyondPolicy = "refuse", *,
             dim: str = "dim", lower_bound: DimBound | int | None = None, truncate_at: int | None = None) -> DimPlan:
    """min = the smallest count (at least ``lower_bound``, at least 1), opt = the median, max = the
    ``coverage`` quantile rounded up to a multiple of 8 (never past the largest count, nor past ``truncate_at``,
    the length a truncating read cuts events to); the events beyond max are truncated
    (``policy='truncate'``) or refused."""
    values = _counts(counts, dim)
    if not 0.0 < coverage <= 1.0:
        raise SpecError(f"{dim}: coverage {coverage} must lie in (0, 1]")
    if policy not in ("truncate", "refuse"):
        raise SpecError(f"{dim}: policy {policy!r} is neither 'truncate' nor 'refuse'")
    if policy == "truncate" and truncate_at is None:
        raise SpecError(f"{dim}: truncating needs the length events are cut to")
    floor = lower_bound.minimum if isinstance(lower_bound, DimBound) else (lower_bound or 0)
    smallest = int(values.min())
    low = max(smallest, floor, 1)
    if policy == "truncate" and truncate_at is not None and truncate_at < low:  # type: ignore[operator]
        raise SpecError(f"{dim}: events are cut to {truncate_at} entries, below the smallest size {low} that runs")
    ordered = np.sort(values)
    quantile = int(ordered[max(math.ceil(coverage * len(ordered)) - 1, 0)])
    top, top_why = _top(quantile, low, truncate_at if policy == "truncate" else None, int(ordered[-1]), coverage)
    median = float(np.median(values))
    opt = int(min(max(math.ceil(median), low), top))
    beyond = float(np.mean(values > top))
    why = "; ".join([
        _min_why(low, smallest, floor, lower_bound),
        f"opt {opt} = the median of {len(values)} events ({median:g})" + _clamped(opt, math.ceil(median)),
        top_why,
        _beyond_why(values, top, policy),
    ])
    return DimPlan(dim, low, opt, top, float(np.mean(values <= top)), policy, beyond, f"{dim}: {why}")


def _clamped(value: int, wanted: int) -> str:
    return " raised to min" if value > wanted else (" lowered to max" if value < wanted else "")


def _counts(counts: np.ndarray | Sequence[int], dim: str) -> np.ndarray:
    values = np.asarray(counts)
    if values.ndim != 1 or values.size == 0:
        raise DataError(f"{dim}: no counts (need one per event)")
    if values.dtype.kind not in "iu" or np.any(values < 0):
        raise DataError(f"{dim}: counts must be non-negative integers")
    return values.astype(np.int64)


def _min_why(low: int, smallest: int, floor: int, lower_bound: DimBound | int | None) -> str:
    if low == smallest:
        return f"min {low} = the smallest count seen"
    if low == floor:
        source = lower_bound.source if isinstance(lower_bound, DimBound) else "the lower bound given"
        return f"min {low} = {source} (the smallest count seen is {smallest})"
    return f"min 1 (the smallest count seen is {smallest}; a dim holds at least one entry)"


def _top(quantile: int, low: int, cap: int | None, largest: int, coverage: float) -> tuple[int, str]:
    """The quantile (at least min), rounded up to a multiple of 8 unless that passes the truncation length
    ``cap`` or admits sizes larger than any event has."""
    share = f"{coverage * 100:g} % quantile"
    needed = max(quantile, low)
    rounded = -(-needed // ROUND_TO) * ROUND_TO
    stated = f"the {share}" + ("" if needed == quantile else f" {quantile} raised to min")
    if cap is not None and needed >= cap:
        return cap, f"max {cap} = the truncation length (the {share} {quantile} reaches it)"
    if rounded == needed:
        return needed, f"max {needed} = {stated}"
    if cap is not None and rounded > cap:
        return needed, f"max {needed} = {stated} (a multiple of {ROUND_TO} would pass the truncation length {cap})"
    if rounded > max(largest, low):
        return needed, f"max {needed} = {stated} (no event has more than {largest}: not rounded up to a multiple " \
                       f"of {ROUND_TO})"
    return rounded, f"max {rounded} = {stated} {needed} rounded up to a multiple of {ROUND_TO}"


def _beyond_why(values: np.ndarray, top: int, policy: BeyondPolicy) -> str:
    over = int(np.sum(values > top))
    if over == 0:
        return "every event fits"
    fate = f"truncated to {top} entries, as weaver's max_length does" if policy == "truncate" else \
        "refused (no profile runs them)"
    events = f"{over} events ({over / len(values):.3%}) have" if over > 1 else f"1 event ({1 / len(values):.3%}) has"
    return f"{events} more, up to {int(values.max())}: {fate}"


def plan_dims(spec: ModelSpec, counts: Mapping[str, np.ndarray], *, model: Path | None = None,
              coverage: float = COVERAGE) -> dict[str, DimPlan]:
    """A plan per dim of ``counts`` with the spec's rules: truncation at a preprocess.json's ``max_length``
    (or ``data.inputs.NAME.length``), min raised to its ``min_length`` (every batch is padded to at least
    it) and to the lower bound the graph of ``model`` puts on the dim."""
    bounds = graph_dim_bounds(model) if model is not None else {}
    preprocess = _preprocess(spec)
    plans = {}
    for dim, values in counts.items():
        truncate_at, pad_to = _length_rule(spec, preprocess, dim)
        floor = bounds.get(dim)
        if pad_to is not None and (floor is None or pad_to.minimum > floor.minimum):
            floor = pad_to
        plans[dim] = plan_dim(values, coverage, "truncate" if truncate_at is not None else "refuse", dim=dim,
                              lower_bound=floor, truncate_at=truncate_at)
    return plans


def _length_rule(spec: ModelSpec, preprocess: PreprocessConfig | None, dim: str) -> tuple[int | None, DimBound | None]:
    """The length a read cuts ``dim`` to, and the length it pads every batch to at least (as a bound)."""
    for tensor in spec.inputs:
        mapping = spec.data.inputs.get(tensor.name)
        if _particle_dim(tensor, mapping.layout if mapping else "channels_first") != dim:
            continue
        group = preprocess.groups.get(tensor.name) if preprocess is not None else None
        if group is not None and not group.flat:
            pad_to = DimBound(dim, group.min_length, f"the preprocess.json's min_length for {tensor.name} (every "
                                                     f"batch is padded to at least it)") if group.min_length else None
            return group.max_length, pad_to
        if mapping is not None and mapping.length is not None:
            return mapping.length, None
    return None, None


# --------------------------------------------------------------------------- K profiles


def bucket_profiles(counts: np.ndarray | Mapping[str, np.ndarray], k: int, profile_cost: float,
                    plans: Mapping[str, DimPlan] | DimPlan | None = None) -> list[ShapeProfile]:
    """At most ``k`` profiles over the first dim of ``counts`` that minimise the expected padding per event
    (each event padded to its profile's max) + ``profile_cost`` (in padded entries per event) per profile;
    exact (dynamic programming over the distinct counts), ties to fewer profiles and earlier cuts. The
    profiles tile [min, max] of the dim's plan (``plan_dim`` when none is given), so K = 1 is the plan's
    range; another dim of ``counts`` gets its plan's min and max in every profile, its opt the median of the
    profile's events. Events beyond a plan's max are in no profile."""
    given = {plans.dim: plans} if isinstance(plans, DimPlan) else dict(plans or {})
    if isinstance(counts, np.ndarray):
        table = {next(iter(given)) if len(given) == 1 else "dim": counts}
    else:
        table = dict(counts)
    if k < 1 or profile_cost < 0 or not table:
        raise SpecError(f"bucketing needs counts, k >= 1 and a profile cost >= 0 (got {k}, {profile_cost})")
    plans = {dim: given.get(dim) or plan_dim(values, dim=dim) for dim, values in table.items()}
    inside = np.all([_counts(v, d) <= plans[d].max for d, v in table.items()], axis=0)
    clipped = {d: np.maximum(np.asarray(v)[inside], plans[d].min) for d, v in table.items()}
    dim = next(iter(table))
    distinct, weights = np.unique(clipped[dim], return_counts=True)
    if distinct.size == 0 or distinct[-1] != plans[dim].max:  # the top profile ends at the plan's max
        distinct, weights = np.append(distinct, plans[dim].max), np.append(weights, 0)
    ends = _best_ends(distinct.astype(np.int64), weights.astype(np.int64), k, profile_cost * int(inside.sum()))
    profiles, low = [], plans[dim].min
    for end in ends:
        high = int(distinct[end])
        members = (clipped[dim] >= low) & (clipped[dim] <= high)
        ranges = {d: _member_range(clipped[d][members], low, high) if d == dim else
                  _member_range(clipped[d][members], plans[d].min, plans[d].max) for d in table}
        profiles.append(ShapeProfile(ranges, int(members.sum()), _waste(clipped[dim][members], high)))
        low = high + 1
    return profiles


def _member_range(values: np.ndarray, low: int, high: int) -> DimRange:
    opt = min(max(math.ceil(float(np.median(values))), low), high) if values.size else high
    return DimRange(min=low, opt=opt, max=high)


def _waste(values: np.ndarray, top: int) -> float:
    return float(np.sum(top - values) / (top * values.size)) if values.size else 0.0


def _best_ends(values: np.ndarray, weights: np.ndarray, k: int, cost_per_profile: float) -> list[int]:
    """Indices (into the sorted distinct ``values``) where each profile ends, the last one at the top:
    the fewest profiles of least padding + ``cost_per_profile`` each (padding summed over events)."""
    m = len(values)
    count = np.concatenate([[0], np.cumsum(weights)])
    total = np.concatenate([[0], np.cumsum(weights * values)])
    layers = min(k, m)
    best = np.full((layers + 1, m), np.iinfo(np.int64).max, np.int64)
    start = np.zeros((layers + 1, m), np.int64)
    best[1] = values * count[1:] - total[1:]  # one profile over values[0..j]
    for t in range(2, layers + 1):
        for j in range(t - 1, m):
            starts = np.arange(t - 1, j + 1)  # the last profile holds values[i..j]
            padding = values[j] * (count[j + 1] - count[starts]) - (total[j + 1] - total[starts])
            options = best[t - 1][starts - 1] + padding
            pick = int(np.argmin(options))
            best[t][j], start[t][j] = options[pick], starts[pick]
    scores = [float(best[t][m - 1]) + t * cost_per_profile for t in range(1, layers + 1)]
    chosen = 1 + int(np.argmin(scores))
    ends, j = [], m - 1
    for t in range(chosen, 0, -1):
        ends.append(j)
        j = int(start[t][j]) - 1
    return ends[::-1]


def padding_waste(counts: np.ndarray | Mapping[str, np.ndarray], profiles: Sequence[ShapeProfile]) -> float:
    """Padded entries / all entries when every event that fits is padded, along every dim of the profiles,
    to the max of the first profile that holds it."""
    padded = slots = 0
    for profile, index in _routes(counts, profiles):
        for dim, values in _table(counts, profiles).items():
            top = profile.ranges[dim].max
            held = np.maximum(values[index], profile.ranges[dim].min)
            padded += int(np.sum(top - held))
            slots += top * held.size
    return padded / slots if slots else 0.0


def profile_coverage(counts: np.ndarray | Mapping[str, np.ndarray], profiles: Sequence[ShapeProfile]) -> float:
    """The fraction of events some profile holds (every dim at most that profile's max)."""
    table = _table(counts, profiles)
    held = sum(index.size for _, index in _routes(counts, profiles))
    return held / len(next(iter(table.values())))


def _table(counts: np.ndarray | Mapping[str, np.ndarray], profiles: Sequence[ShapeProfile]) -> dict[str, np.ndarray]:
    if not profiles:
        raise SpecError("no profiles")
    if isinstance(counts, np.ndarray):
        dims = list(profiles[0].ranges)
        if len(dims) != 1:
            raise SpecError(f"profiles over {', '.join(dims)} need counts per dim")
        return {dims[0]: counts.astype(np.int64)}
    return {d: np.asarray(v, np.int64) for d, v in counts.items() if d in profiles[0].ranges}


def _routes(counts: np.ndarray | Mapping[str, np.ndarray],
            profiles: Sequence[ShapeProfile]) -> list[tuple[ShapeProfile, np.ndarray]]:
    """Each profile with the events (indices) it takes: those no earlier profile holds."""
    table = _table(counts, profiles)
    free = np.ones(len(next(iter(table.values()))), bool)
    routes = []
    for profile in profiles:
        fits = free & np.all([values <= profile.ranges[d].max for d, values in table.items()], axis=0)
        routes.append((profile, np.flatnonzero(fits)))
        free &= ~fits
    return routes
