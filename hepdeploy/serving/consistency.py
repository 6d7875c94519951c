"""Whether a serving configuration holds together before it is published: the batch sizes Triton may form
against the TensorRT profiles, and the data's shapes against the profiles.

Triton's dynamic batcher sends any batch from 1 to ``max_batch_size`` to an instance, and an instance runs
in one profile, so every profile must hold every batch size up to ``max_batch_size`` (Model Analyzer sweeps
past a plan's profile, model_analyzer #663 and #776); preferred sizes are batches the batcher aims for, so
they too lie inside every profile and at most ``max_batch_size`` (the server refuses a config otherwise).
The data's sizes along each dim must each fall in some profile, without gaps between profiles.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from hepdeploy.serving.shapes import DimPlan, ShapeProfile
from hepdeploy.spec import DimRange

Span = DimPlan | DimRange | tuple[int, int]


def serving_problems(max_batch_size: int, preferred: Sequence[int], profiles: Sequence[ShapeProfile],
                     data_dims: Mapping[str, Span], batch_dim: str = "batch") -> list[str]:
    """One plain line per inconsistency; empty when the configuration holds together. ``data_dims``: the
    sizes the data needs per dim (a plan, a range or (min, max)), the batch dim's being the rows one request
    carries (an event's natural batch); ``batch_dim``: the batch dim's name in the profiles and the data."""
    problems = [*_batch_problems(max_batch_size, list(preferred), profiles, batch_dim),
                *_data_problems(profiles, data_dims)]
    if batch_dim in data_dims and max_batch_size > 0 and _span(data_dims[batch_dim])[1] > max_batch_size:
        problems.append(f"a request of the data carries up to {_span(data_dims[batch_dim])[1]} rows: more than "
                        f"max_batch_size {max_batch_size} (Triton refuses it)")
    return problems


def _batch_problems(max_batch_size: int, preferred: list[int], profiles: Sequence[ShapeProfile],
                    batch_dim: str) -> list[str]:
    problems = []
    if max_batch_size < 0:
        problems.append(f"max_batch_size {max_batch_size} is negative")
    if max_batch_size <= 0 and preferred:
        problems.append(f"preferred_batch_size {preferred} needs batching (max_batch_size > 0)")
    if len(set(preferred)) != len(preferred):
        problems.append(f"preferred_batch_size {preferred} repeats a size")
    for size in sorted(set(preferred)):
        if size < 1 or (max_batch_size > 0 and size > max_batch_size):
            problems.append(f"preferred batch size {size} is outside 1..max_batch_size {max_batch_size}")
    for index, profile in enumerate(profiles):
        batch = profile.ranges.get(batch_dim)
        if batch is None or max_batch_size <= 0:
            continue
        top = batch.max if batch.max is not None else batch.min
        if max_batch_size > top:
            problems.append(f"max_batch_size {max_batch_size} exceeds profile {index}'s max {batch_dim} {top}: "
                            f"a full batch cannot run")
        if batch.min > 1:
            problems.append(f"profile {index}'s min {batch_dim} is {batch.min}: a batch of 1 (a lone request) "
                            f"cannot run")
        outside = [size for size in sorted(set(preferred)) if not batch.min <= size <= top]
        if outside:
            problems.append(f"preferred batch size {', '.join(map(str, outside))} outside profile {index}'s "
                            f"{batch_dim} range {batch.min}..{top}")
    return problems


def _data_problems(profiles: Sequence[ShapeProfile], data_dims: Mapping[str, Span]) -> list[str]:
    if not profiles:
        return []
    problems = []
    for dim, span in data_dims.items():
        low, high = _span(span)
        ranges = sorted((r.min, r.max if r.max is not None else r.min) for p in profiles
                        for d, r in p.ranges.items() if d == dim)
        if not ranges:
            problems.append(f"{dim}: the data needs {low}..{high} but no profile sets {dim}")
            continue
        for gap_low, gap_high in _gaps(low, high, ranges):
            sizes = f"{gap_low}" if gap_low == gap_high else f"{gap_low}..{gap_high}"
            problems.append(f"{dim}: the data's sizes {sizes} fall in no profile "
                            f"({', '.join(f'{a}..{b}' for a, b in ranges)})")
    return problems


def _span(span: Span) -> tuple[int, int]:
    if isinstance(span, tuple):
        return int(span[0]), int(span[1])
    top = span.max if span.max is not None else span.min
    return int(span.min), int(top)


def _gaps(low: int, high: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The runs of sizes in [low, high] that no range holds (ranges sorted by their min)."""
    gaps, next_free = [], low
    for start, stop in ranges:
        if start > next_free:
            gaps.append((next_free, min(start - 1, high)))
        next_free = max(next_free, stop + 1)
        if next_free > high:
            break
    if next_free <= high:
        gaps.append((next_free, high))
    return [(a, b) for a, b in gaps if a <= b and a <= high]
