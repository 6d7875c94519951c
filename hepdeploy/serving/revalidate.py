"""A serving configuration validated at its shapes before it is published.

Validation judges a variant at one chunk size (the spec's ``validation.chunk_size``); Triton runs it at
whatever batch the dynamic batcher forms, from the batch profile's min to ``max_batch_size``. A model whose
rows are not independent along the batch axis (a mean over the batch, a batch norm left in training mode, a
reshape that folds the batch into features) passes at one size and fails at another. So each variant is run
again at exactly the config's batch sizes (min, one request, each preferred size, max), on the reference
inputs cut, or repeated, to whole batches, and compared with its own outputs at the validated chunk size under
its precision's tolerances: equal there, it computes at the served shapes what validation judged."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hepdeploy.artifacts import read_artifact, read_engine_sidecar
from hepdeploy.backend.sources import artifact_runner
from hepdeploy.compare import compare_with_tolerances, precision_key, resolve_tolerances
from hepdeploy.data import common_batch_size
from hepdeploy.errors import DataError

# Rows run at each batch size: enough for every output to be compared over many events, few enough that a
# batch of 1 stays a second's work.
SAMPLE_ROWS = 256


@dataclass(frozen=True)
class ShapeCheck:
    """One variant run at one batch size against its own outputs at the validated chunk size."""

    variant: str
    batch: int
    passed: bool
    detail: str  # the worst output's comparison, or why it could not be compared

    def line(self) -> str:
        return f"{self.variant} at batch {self.batch}: {'ok' if self.passed else 'FAIL'} ({self.detail})"


def serving_batches(batch_min: int, rows_per_request: int, preferred: Sequence[int], max_batch_size: int) -> list[int]:
    """The batch sizes a served config runs at: the profile's min, one request, each preferred size, the max."""
    sizes = {batch_min, rows_per_request, *preferred, max_batch_size}
    return sorted(size for size in sizes if 1 <= size <= max(max_batch_size, 1))


def whole_batches(inputs: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The inputs cut, or repeated along the batch axis, to a whole number of ``batch`` rows (at least one batch,
    up to about SAMPLE_ROWS rows)."""
    total = common_batch_size(inputs)
    if total is None or total < 1:
        raise DataError("the inputs share no batch axis: a batching config cannot be validated at its shapes")
    rows = batch * max(1, min(total, SAMPLE_ROWS) // batch)
    order = np.arange(rows) % total
    return {name: np.asarray(array)[order] for name, array in inputs.items()}


def validate_at_batches(variants: Mapping[str, Path], inputs: Mapping[str, np.ndarray], batches: Sequence[int],
                        validated_chunk: int, spec_tolerances: object | None = None) -> list[ShapeCheck]:
    """Each variant (an ``.onnx`` artifact or a TensorRT plan) at each batch size, batch by batch, against its
    outputs on the same rows run ``validated_chunk`` at a time, under its precision's tolerances."""
    checks = []
    for name, path in variants.items():
        key = precision_key(_precision_of(Path(path)))
        with artifact_runner(path) as runner:
            for batch in batches:
                rows = whole_batches(inputs, batch)
                expected = runner.run_chunked(rows, validated_chunk)
                total = len(next(iter(rows.values())))
                pieces = [runner.run({k: v[start:start + batch] for k, v in rows.items()})
                          for start in range(0, total, batch)]
                served = {out: np.concatenate([np.asarray(p[out]) for p in pieces], axis=0) for out in expected}
                tolerances = resolve_tolerances(key, list(expected), spec_tolerances)
                compared = compare_with_tolerances(served, expected, tolerances)
                worst = next((c for c in compared if not c.passed), max(compared, key=lambda c: c.max_abs_error))
                checks.append(ShapeCheck(name, batch, all(c.passed for c in compared),
                                         f"{worst.summary()}; {total} rows against chunks of {validated_chunk}"))
    return checks


def _precision_of(path: Path) -> str | None:
    recorded = read_artifact(path).sidecar if path.suffix == ".onnx" else read_engine_sidecar(path)
    return recorded.variant.precision if recorded is not None and recorded.variant is not None else None
