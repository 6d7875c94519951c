"""The runner base class: one interface over every backend that executes a model.

``run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` is a template: the base
class checks the feed once (every input present; rank, fixed dims and dtype kind against
the runner's declared input specs, with a cast inside a kind such as float64 -> float32)
and hands the checked feed to the subclass's ``_run``. Subclasses declare metadata
(``input_names``, ``output_names``, ``providers_used``), may release resources in
``_close`` and are context managers. A runner is built from an already loaded model
(loading is :mod:`hepdeploy.backend.loaders`' job), so a converter can wrap the object it
has just exported without loading it twice.
"""
from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from hepdeploy.data import cast_to_spec, common_batch_size
from hepdeploy.errors import BadInputError, DataError, SpecError
from hepdeploy.spec import TensorSpec

# Memory the intermediate tensors of one run may take (the sum of every intermediate tensor, an upper
# bound of what is alive at once); chunked runs stay inside it.
ACTIVATION_BUDGET = 512 << 20


class Runner(abc.ABC):
    """Runs a model on named numpy inputs and returns named numpy outputs."""

    #: What executes the model (``providers_used`` says more where a backend has providers).
    backend = "runner"

    def __init__(self, name: str, inputs: Sequence[TensorSpec] | Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None) -> None:
        """``inputs``: the model's inputs in order, as tensor specs (checked and conformed before
        each run) or as bare names (checked for presence only); None accepts any feed."""
        self.name = name
        self._input_names = None if inputs is None else [t if isinstance(t, str) else t.name for t in inputs]
        specs = [t for t in inputs or () if isinstance(t, TensorSpec)]
        self.input_specs: list[TensorSpec] | None = specs if inputs is not None and len(specs) == len(inputs) else None
        self.output_names: list[str] | None = list(output_names) if output_names else None
        self.closed = False

    # -- metadata ----------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str] | None:
        """The inputs the model takes, in its order (None: it accepts whatever it is given)."""
        return self._input_names

    @property
    def providers_used(self) -> list[str]:
        """What really ran the model (ONNX Runtime lists its execution providers here)."""
        return [self.backend]

    def describe(self) -> str:
        return f"{type(self).__name__}({', '.join(self.providers_used)})"

    # -- running -----------------------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the model's inputs, run, return the outputs by name."""
        if self.closed:
            raise BadInputError(f"{self.name}: the runner was closed")
        return self._run(self._checked_feed(inputs))

    @abc.abstractmethod
    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on a checked feed (exactly the model's inputs, conformed to their specs)."""

    def _checked_feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.input_names
        if names is None:
            return dict(inputs)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise DataError(f"{self.name}: no data for input(s) {', '.join(missing)}")
        if self.input_specs is None:
            return {n: inputs[n] for n in names}
        return {spec.name: conform(inputs[spec.name], spec, self.name) for spec in self.input_specs}

    def fixed_batch(self, inputs: dict[str, np.ndarray]) -> int | None:
        """The leading dim every input fixes (a model exported with batch 1), when the data is batch-first
        with more rows than that; None otherwise."""
        if not self.input_specs:
            return None
        leading = {spec.shape[0] if spec.shape else None for spec in self.input_specs}
        if len(leading) != 1:
            return None
        fixed = leading.pop()
        if not isinstance(fixed, int) or isinstance(fixed, bool):
            return None
        ranks_match = all(spec.name in inputs and np.ndim(inputs[spec.name]) == len(spec.shape)
                          for spec in self.input_specs)
        return fixed if ranks_match else None

    def rows_within(self, budget_bytes: int, inputs: dict[str, np.ndarray]) -> int | None:
        """How many rows of ``inputs`` one run may take for its intermediate tensors to fit in
        ``budget_bytes``; None where the runner cannot tell (then only the chunk size asked for counts)."""
        return None

    def run_chunked(self, inputs: dict[str, np.ndarray], chunk_size: int) -> dict[str, np.ndarray]:
        """Run batch-first inputs in chunks of ``chunk_size`` and concatenate the outputs on axis 0.

        A chunk is also kept small enough for the run's intermediate tensors to fit in
        ``ACTIVATION_BUDGET`` where the runner can tell (a k-NN tagger's edge features grow with k
        times the particles: 4096 jets of them would take gigabytes). Inputs without one common
        first dimension (a whole graph per call: hits, edges) are run in one call, since
        splitting them would cut the graph.
        """
        if chunk_size < 1:
            raise DataError(f"chunk size must be >= 1, got {chunk_size}")
        total = common_batch_size(inputs)
        fixed = self.fixed_batch(inputs)
        if fixed is not None and total is not None and total > fixed and total % fixed == 0:
            chunk_size = fixed  # a model exported with a fixed batch (often 1) runs sample by sample
        elif total is not None and total > 1:
            limit = self.rows_within(ACTIVATION_BUDGET, inputs)
            chunk_size = min(chunk_size, limit) if limit is not None else chunk_size
        if total is None or total <= chunk_size:
            return {k: np.asarray(v) for k, v in self.run(inputs).items()}
        pieces = [self.run({k: v[start:start + chunk_size] for k, v in inputs.items()})
                  for start in range(0, total, chunk_size)]
        return {name: np.concatenate([np.asarray(p[name]) for p in pieces], axis=0) for name in pieces[0]}

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release what the runner holds (sessions, connections); running afterwards is refused."""
        if not self.closed:
            self.closed = True
            self._close()

    def _close(self) -> None:
        """Subclasses release their resources here."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def conform(array: Any, spec: TensorSpec, who: str) -> np.ndarray:
    """``array`` as input ``spec`` takes it: rank and fixed dims checked, dtype cast inside its kind."""
    array = np.asarray(array)
    if array.ndim != len(spec.shape):
        raise DataError(f"{who}: input {spec.name!r} has shape {list(array.shape)}, the model takes rank "
                        f"{len(spec.shape)} {spec.shape}")
    for axis, (size, dim) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if isinstance(dim, int) and size != dim:
            raise DataError(f"{who}: input {spec.name!r} has size {size} on axis {axis}, the model takes {dim} "
                            f"(shape {spec.shape})")
    return cast_to_spec(array, spec, f"{who}: input")


class RenamedRunner(Runner):
    """Runs a model whose tensors have other names, translating them (outer name -> model name)."""

    def __init__(self, inner: Runner, inputs: dict[str, str], outputs: dict[str, str], name: str | None = None):
        super().__init__(name or inner.name, output_names=list(outputs))
        self.inner, self.inputs, self.outputs = inner, dict(inputs), dict(outputs)
        self.backend = inner.backend

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def providers_used(self) -> list[str]:
        return self.inner.providers_used

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        produced = self.inner.run({self.inputs[k]: v for k, v in feed.items()})
        return {new: produced[old] for new, old in self.outputs.items()}

    def _close(self) -> None:
        self.inner.close()


def named_outputs(values: Any, output_names: Sequence[str] | None, who: str) -> dict[str, np.ndarray]:
    """A framework's outputs (tensor, list/tuple, dict) as named numpy arrays."""
    if isinstance(values, dict):
        if output_names and all(n in values for n in output_names):
            items = [values[n] for n in output_names]
        else:
            items = [values[k] for k in _natural_sorted(values)]
    elif isinstance(values, (list, tuple)):
        items = list(values)
    else:
        items = [values]
    arrays = [_as_numpy(v) for v in items]
    names = list(output_names) if output_names else [f"output_{k}" for k in range(len(arrays))]
    if len(names) != len(arrays):
        raise SpecError(f"{who}: the model returns {len(arrays)} output(s) but the spec lists {len(names)}")
    return dict(zip(names, arrays, strict=True))


def _natural_sorted(keys: Any) -> list[Any]:
    def key(text: Any) -> list[Any]:
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text))]

    return sorted(keys, key=key)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy"):  # tf.Tensor
        return np.asarray(value.numpy())
    return np.asarray(value)
