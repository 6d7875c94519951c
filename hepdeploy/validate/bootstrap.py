"""Paired bootstrap of physics metrics, vectorised over replicas.

Candidate and reference are judged on the same events, so what matters is the uncertainty of
the *difference* of a metric between them: every bootstrap replica reweights the events (a
Poisson(1) multiplicity each, seeded) and recomputes the metric for both models on that same
replica.

A replica is a column of event weights, so no replica needs a sort of its own: each kernel
orders its rows once and turns that order into sparse 0/1 matrices (rows -> segments of the
ordering); a chunk of replicas then costs a few sparse products and cumulative sums over the
segments (AUC, efficiency at a fixed background, weighted quantiles) or one product (means,
ratios). Chunks are drawn and evaluated on every core at once.

Rows and events: a per-edge score of a graph network is one row, but the edges of one event
are not independent; ``groups`` maps rows to events, and whole events are reweighted.
"""
from __future__ import annotations

import abc
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from hepdeploy.errors import DataError

# Floats in one chunk of weights (rows x replicas): ~16 MB.
CHUNK_ELEMENTS = 4_000_000


# The Poisson(1) distribution's CDF on 16-bit uniform integers: a draw at or above _POISSON_CDF[k]
# means a multiplicity above k (multiplicities above 8 have probability 1e-6 and are cut there).
_POISSON_CDF = np.minimum(np.round(np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(8)]) * 65536),
                          65535).astype(np.uint16)


@dataclass(frozen=True)
class Resampling:
    """The bootstrap replicas of ``n_events`` events: every replica draws every event a Poisson(1) number of times.

    The Poisson bootstrap (HEP's usual one) gives each event an independent multiplicity, so a
    chunk of replicas is generated on its own (seeded per chunk: the same seed gives the same
    replicas in any order) and never has to be stored whole. ``groups[row]`` is the event of a
    row when several rows make one event (edges of a graph); without it each row is an event.
    """

    n_events: int
    replicas: int
    seed: int
    groups: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.groups.shape[0]) if self.groups is not None else self.n_events

    @property
    def chunk_size(self) -> int:
        return int(np.clip(CHUNK_ELEMENTS // max(self.n_rows, 1), 8, 256))

    def chunk_starts(self) -> range:
        return range(0, self.replicas, self.chunk_size)

    def weights(self, start: int) -> np.ndarray:
        """Row weights ``[rows, replicas]`` (float32: exact for these small integers) of the chunk at ``start``."""
        size = min(self.chunk_size, self.replicas - start)
        rng = np.random.default_rng([self.seed, start])
        uniform = rng.integers(0, 1 << 16, size=(self.n_events, size), dtype=np.uint16)
        counts = np.zeros((self.n_events, size), dtype=np.uint8)
        for threshold in _POISSON_CDF:
            counts += uniform >= threshold
        weights = counts.astype(np.float32)
        return weights[self.groups] if self.groups is not None else weights

    def first(self, replicas: int) -> Resampling:
        """The first ``replicas`` replicas (the same ones)."""
        return Resampling(self.n_events, min(replicas, self.replicas), self.seed, self.groups)


def resample(n_events: int, replicas: int, seed: int, groups: np.ndarray | None = None) -> Resampling:
    """``replicas`` seeded bootstrap resamples of ``n_events`` events."""
    if n_events < 1:
        raise DataError("the bootstrap needs at least one event")
    return Resampling(n_events, replicas, seed, None if groups is None else np.asarray(groups, dtype=np.int64))


def sample_weights(n_rows: int) -> np.ndarray:
    """The weights of the sample itself: every row once (one 'replica')."""
    return np.ones((n_rows, 1), dtype=np.float32)


# ----------------------------------------------------------------------------- kernels


class Kernel(abc.ABC):
    """Some metrics of a set of rows, for a chunk of replicas at once: ``kernel(weights[all rows, b]) -> [names, b]``.

    A kernel prepares sparse 0/1 matrices once (rows -> ordered segments, in the original row
    numbering, so a bin is only a choice of columns); every chunk then costs a few sparse
    products with the weights, which read each row once.
    """

    names: tuple[str, ...]

    @abc.abstractmethod
    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """The kernel's metrics for every replica column of ``weights``."""


def _rows(rows: np.ndarray | None, length: int) -> np.ndarray:
    return np.arange(length) if rows is None else np.asarray(rows, dtype=np.int64)


def _selector(group_of_row: np.ndarray, columns: np.ndarray, n_groups: int, n_rows: int) -> Any:
    """A sparse [groups, all rows] matrix summing the weights of ``columns[i]`` into ``group_of_row[i]``."""
    from scipy import sparse

    return sparse.csr_matrix((np.ones(len(columns), dtype=np.float32), (group_of_row, columns)),
                             shape=(n_groups, n_rows))


class RocKernel(Kernel):
    """ROC AUC and the signal efficiency at fixed background efficiencies, one-vs-rest.

    In descending score order the rows fall into groups of equal scores; a group holding
    signal is a point where signal is counted, and the background between two such groups
    only moves the curve sideways, so it is summed as one segment. The ROC curve through (0, 0)
    and the point after every group is then exact with one vertex pair per signal group:

    - AUC = P(signal score > background score) with ties counting one half (Mann-Whitney);
    - the efficiency at background efficiency t is the curve interpolated linearly at t (for
      unit weights exactly ``numpy.interp`` on the group-by-group curve).
    """

    def __init__(self, scores: np.ndarray, is_signal: np.ndarray, background_efficiencies: Sequence[float] = (),
                 rows: np.ndarray | None = None, n_rows: int | None = None) -> None:
        s = np.asarray(scores, dtype=np.float64).ravel()
        y = np.asarray(is_signal, dtype=bool).ravel()
        columns = _rows(rows, len(s))
        n_rows = n_rows if n_rows is not None else (len(s) if rows is None else int(columns.max()) + 1)
        self.targets = tuple(float(t) for t in background_efficiencies)
        self.names = ("auc", *(f"efficiency@{t:g}" for t in self.targets))
        order = np.argsort(-s, kind="mergesort")
        s_sorted, y_sorted, columns = s[order], y[order], columns[order]
        group = np.cumsum(np.r_[False, np.diff(s_sorted) != 0])  # tie group of every sorted row
        group_has_signal = np.bincount(group, weights=y_sorted, minlength=int(group[-1]) + 1) > 0 if len(s) else []
        signal_group_index = np.cumsum(group_has_signal) - 1  # k of a signal group (its number among them)
        n_signal_groups = int(np.sum(group_has_signal))
        in_signal_group = np.asarray(group_has_signal)[group]
        # Background before signal group k (and after k-1) -> segment k; the trailing one is segment K.
        segment = np.where(in_signal_group, 0, signal_group_index[group] + 1)
        background = ~y_sorted
        self.signal = _selector(signal_group_index[group][y_sorted], columns[y_sorted], n_signal_groups, n_rows)
        tied = background & in_signal_group
        self.within = _selector(signal_group_index[group][tied], columns[tied], n_signal_groups, n_rows)
        alone = background & ~in_signal_group
        self.segments = _selector(segment[alone], columns[alone], n_signal_groups + 1, n_rows)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        signal = np.asarray(self.signal @ weights)  # [K, b]: signal weight of each signal group
        segments = np.asarray(self.segments @ weights)  # [K+1, b]: background between signal groups
        total_signal = signal.sum(axis=0, dtype=np.float64)
        total_background = segments.sum(axis=0, dtype=np.float64)
        steps = segments[:-1]
        within = None
        if self.within.nnz:  # background tied with signal (sums of integers: float32 stays exact)
            within = np.asarray(self.within @ weights)
            total_background += within.sum(axis=0, dtype=np.float64)
            steps = steps.copy()
            steps[1:] += within[:-1]
        above = np.cumsum(steps, axis=0)  # background weight above each signal group
        pairs = np.einsum("ij,ij->j", signal, above, dtype=np.float64)
        if within is not None:
            pairs += 0.5 * np.einsum("ij,ij->j", signal, within, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = [1.0 - pairs / (total_signal * total_background)]
        if self.targets:
            values += self._efficiencies(signal, within, above, total_signal, total_background)
        return np.stack(values)

    def _efficiencies(self, signal: np.ndarray, within: np.ndarray | None, above: np.ndarray,
                      total_signal: np.ndarray, total_background: np.ndarray) -> list[np.ndarray]:
        """The curve at background weight t*B: signal group k's point lies on the curve's diagonal from
        (above_k, cs_{k-1}) to (above_k + within_k, cs_k); between groups the curve runs flat."""
        replicas = signal.shape[1]
        after = above if within is None else above + within  # x after each signal group
        wanted = np.outer(self.targets, total_background)  # [targets, replicas]
        # Per replica: the first signal group whose end reaches each target (a sorted search down its column).
        first = np.stack([np.searchsorted(after[:, j], wanted[:, j], side="left") for j in range(replicas)], axis=1)
        n_groups = len(signal)
        if n_groups == 0:
            return [np.full(replicas, np.nan) for _ in self.targets]
        # Only the top of the ranking is summed: as far as the deepest group any target reaches.
        deepest = int(min(first.max(), n_groups - 1))
        cum_signal = np.cumsum(signal[:deepest + 1], axis=0)
        columns = np.arange(replicas)
        out = []
        for t in range(len(self.targets)):
            k = np.minimum(first[t], deepest)
            before = np.where(k > 0, cum_signal[np.maximum(k - 1, 0), columns], 0.0)
            on_diagonal = np.zeros(replicas)
            if within is not None:
                start, width = above[k, columns], within[k, columns]
                with np.errstate(invalid="ignore", divide="ignore"):
                    on_diagonal = np.where((width > 0) & (wanted[t] > start),
                                           (wanted[t] - start) / width * signal[k, columns], 0.0)
            value = np.where(first[t] >= n_groups, total_signal, before + on_diagonal)
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(value / total_signal)
        return out


class RatioKernel(Kernel):
    """sum(w * numerator) / sum(w * denominator) for several per-row value pairs (means, efficiencies, purities)."""

    def __init__(self, names: Sequence[str], numerators: np.ndarray, denominators: np.ndarray,
                 rows: np.ndarray | None = None, n_rows: int | None = None) -> None:
        from scipy import sparse

        self.names = tuple(names)
        numerators = np.asarray(numerators, dtype=np.float32).reshape(len(self.names), -1)
        denominators = np.asarray(denominators, dtype=np.float32).reshape(len(self.names), -1)
        columns = _rows(rows, numerators.shape[1])
        n_rows = n_rows if n_rows is not None else (numerators.shape[1] if rows is None else int(columns.max()) + 1)

        def spread(values: np.ndarray) -> Any:
            rows_index = np.repeat(np.arange(len(values)), values.shape[1])
            return sparse.csr_matrix((values.ravel(), (rows_index, np.tile(columns, len(values)))),
                                     shape=(len(values), n_rows))

        self.numerators, self.denominators = spread(numerators), spread(denominators)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (np.asarray(self.numerators @ weights, dtype=np.float64)
                    / np.asarray(self.denominators @ weights, dtype=np.float64))


class QuantileKernel(Kernel):
    """Weighted quantiles of per-row values: the smallest value whose cumulative weight reaches q (inverted CDF).

    The sorted rows are summed in blocks (one sparse product); the block where a quantile falls
    is found per replica, and only that block's rows are summed one by one.
    """

    BLOCK = 256

    def __init__(self, names: Sequence[str], values: np.ndarray, quantiles: Sequence[float],
                 rows: np.ndarray | None = None, n_rows: int | None = None) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        columns = _rows(rows, len(v))
        n_rows = n_rows if n_rows is not None else (len(v) if rows is None else int(columns.max()) + 1)
        self.names = tuple(names)
        order = np.argsort(v, kind="mergesort")
        self.sorted_values = v[order]
        self.sorted_columns = columns[order]
        self.quantiles = tuple(float(q) for q in quantiles)
        n_blocks = -(-len(v) // self.BLOCK)
        self.blocks = _selector(np.arange(len(v)) // self.BLOCK, self.sorted_columns, n_blocks, n_rows)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        replicas = weights.shape[1]
        cumulative = np.cumsum(np.asarray(self.blocks @ weights, dtype=np.float64), axis=0)
        total = cumulative[-1]
        offsets = np.arange(self.BLOCK)[:, None]
        columns = np.arange(replicas)
        out = []
        for q in self.quantiles:
            target = q * total
            block = np.minimum((cumulative < target).sum(axis=0), len(cumulative) - 1)
            before = np.where(block > 0, cumulative[np.maximum(block - 1, 0), columns], 0.0)
            position = block * self.BLOCK + offsets  # [BLOCK, replicas] sorted positions in that block
            inside = position < len(self.sorted_values)
            rows = self.sorted_columns[np.minimum(position, len(self.sorted_values) - 1)]
            running = np.cumsum(np.where(inside, weights[rows, columns], 0.0), axis=0) + before
            index = block * self.BLOCK + (running < target).sum(axis=0)
            out.append(self.sorted_values[np.minimum(index, len(self.sorted_values) - 1)])
        return np.stack(out)


def evaluate(kernels: Sequence[Kernel], n_rows: int,
             resampling: Resampling | None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per kernel: (its values on the sample itself ``[names]``, its values per replica ``[names, replicas]``).

    Replicas are None without a resampling (the bootstrap turned off). Chunks of replicas are
    drawn and evaluated on every core at once (numpy releases the GIL in its loops).
    """
    points = [kernel(sample_weights(n_rows))[:, 0] for kernel in kernels]
    if resampling is None:
        return [(p, None) for p in points]

    def chunk(start: int) -> list[np.ndarray]:
        weights = resampling.weights(start)
        return [kernel(weights) for kernel in kernels]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pieces = list(pool.map(chunk, resampling.chunk_starts()))
    return [(p, np.concatenate([piece[k] for piece in pieces], axis=1)) for k, p in enumerate(points)]
